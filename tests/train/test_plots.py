"""plots.save: the PNG ``savefig(bbox_inches="tight")`` writes, from one draw of the figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from mlaas4hep.train import plots


def _figure(panels: int, twin: bool = False, log: bool = False):
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5.2), squeeze=False)
    rng = np.random.default_rng(1)
    for ax in axes.ravel():
        plots.fraction_hist(
            ax, rng.normal(size=500), np.linspace(-3, 3, 31), label=plots.class_names(["ttbar", "ttH"])[0]
        )
        ax.set_xlabel("jet $p_T$ [GeV]")
        ax.legend()
        plots.tag(ax)
        if log:  # less than a decade: matplotlib labels the minor ticks, which the crop must keep
            ax.set_yscale("log")
            ax.set_ylim(0.2, 0.9)
            ax.set_ylabel("fraction of events")
        if twin:  # a second y axis shares the x axis's locators (plots.loss_curves)
            other = ax.twinx()
            other.plot([-3, 0, 3], [0.5, 0.7, 0.8], color="k")
            other.set_ylabel("validation AUC")
    draws = []
    fig.canvas.mpl_connect("draw_event", lambda event: draws.append(event))
    return fig, draws


@pytest.mark.parametrize(
    "panels, tight_layout, twin, log",
    [(1, False, False, False), (3, True, False, False), (1, True, True, False), (1, False, False, True)],
)
def test_save_writes_the_tight_png_in_one_draw(tmp_path, panels, tight_layout, twin, log):
    """The same bytes as matplotlib's own tight crop, minor ticks included (save measures without
    the unlabelled ones)."""
    with plots._style():
        fig, _ = _figure(panels, twin, log)
        if tight_layout:
            fig.tight_layout()
        fig.savefig(tmp_path / "reference.png", dpi=70, bbox_inches="tight")
        plt.close(fig)
        fig, draws = _figure(panels, twin, log)
        plots.save(fig, tmp_path / "saved.png", dpi=70, tight_layout=tight_layout)
    assert (tmp_path / "saved.png").read_bytes() == (tmp_path / "reference.png").read_bytes()
    assert len(draws) == 1  # savefig(bbox_inches="tight") draws twice
    assert not plt.fignum_exists(fig.number)
