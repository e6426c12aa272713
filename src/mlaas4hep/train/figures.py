"""The report's figures (:mod:`.report`, and the demo's): overtraining check and input distributions.

Same style as :mod:`.plots`: mplhep's CMS style, signal orange, background blue,
legends that say which class is which (``ttH (signal)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np

from .evaluation import ks_distance
from .plots import BACKGROUND_COLOR, SIGNAL_COLOR, _style, class_names, fraction_hist, save, tag


def overtraining_figure(ot: dict[str, Any], title: str, labels: Sequence[str], path: Path) -> Path:
    """Training (points) vs validation (lines) score distributions per class, with KS p-values."""
    bins = np.linspace(0, 1, 26)
    centres, width = 0.5 * (bins[1:] + bins[:-1]), bins[1] - bins[0]
    background, signal = class_names(labels)
    with _style():
        fig, ax = plt.subplots(figsize=(8, 6.5))
        (ts, ty), (vs, vy) = ot["train"], ot["val"]
        for cls, name, color, key in (
            (0, background, BACKGROUND_COLOR, "background"),
            (1, signal, SIGNAL_COLOR, "signal"),
        ):
            fraction_hist(ax, vs[vy == cls], bins, color=color, label=f"{name}, validation")
            t = ts[ty == cls]
            counts, _ = np.histogram(t, bins=bins)
            n = max(len(t), 1)
            ax.errorbar(
                centres,
                counts / n,
                yerr=np.sqrt(counts) / n,
                xerr=width / 2,
                fmt="o",
                ms=4,
                color=color,
                label=f"{name}, training (KS p = {ot[f'ks_p_{key}']:.2g})",
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.35)
        ax.set_xlabel(f"output of the {title}")
        ax.set_ylabel(f"fraction of events / {width:.2g}")
        tag(ax)
        ax.legend(loc="upper center", fontsize=12)
        save(fig, path, dpi=90)
    return Path(path)


def input_distributions(
    x: np.ndarray, y: np.ndarray, names: Sequence[str], labels: Sequence[str], path: Path, most: int = 9
) -> tuple[Path, list[str]]:
    """The ``most`` inputs that separate the classes best (KS distance), signal and
    background normalised to unit area, as the model sees them (after the
    preprocessing). Returns the path and the names shown."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    sep = [ks_distance(x[y == 1, j], x[y == 0, j]) for j in range(x.shape[1])]
    order = [int(j) for j in np.argsort(sep)[::-1][:most]]
    background, signal = class_names(labels)
    ncol = 3 if len(order) > 4 else max(len(order), 1)
    nrow = int(np.ceil(len(order) / ncol))
    with _style():
        fig, axes = plt.subplots(nrow, ncol, figsize=(6.5 * ncol, 5.2 * nrow), squeeze=False)
        for ax, j in zip(axes.ravel(), order):
            col = x[:, j]
            finite = col[np.isfinite(col)]
            lo, hi = np.percentile(finite, [0.5, 99.5]) if len(finite) else (0.0, 1.0)
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            bins = np.linspace(lo, hi, 31)
            fraction_hist(ax, col[y == 0], bins, color=BACKGROUND_COLOR, label=background)
            fraction_hist(ax, col[y == 1], bins, color=SIGNAL_COLOR, label=signal)
            ax.set_xlabel(names[j] if j < len(names) else f"feature {j}", fontsize=16)
            ax.set_ylabel("fraction of events", fontsize=16)
            ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
            ax.text(0.03, 0.93, f"KS distance {sep[j]:.2f}", transform=ax.transAxes, fontsize=12, va="top")
            ax.legend(fontsize=11, loc="upper right")
            tag(ax)
        for ax in axes.ravel()[len(order) :]:
            ax.set_visible(False)
        save(fig, path, dpi=70, tight_layout=True)
    return Path(path), [names[j] if j < len(names) else f"feature {j}" for j in order]
