"""The plots of a scan (:mod:`.scan`), in the style of the training plots (:mod:`.plots`).

* ``scan.png``: the metric of each trial against the trial number, with the
  best value so far as a line (is the scan still improving?), and against each
  scanned parameter (log axis for a log-uniform one);
* ``roc.png``: every trial's ROC curve on one figure, ε_S against ε_B and the
  background rejection 1/ε_B on a log scale (binary classifiers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator, NullFormatter

from .plots import _style, roc_comparison, save, tag

METRIC_NAMES = {
    "val_auc": "validation AUC",
    "val_loss": "validation loss",
    "val_accuracy": "validation accuracy",
}


def write_plots(result: Any, labels: list[str]) -> list[Path]:
    """Write ``scan.png`` and ``roc.png`` into the scan's directory; returns their paths."""
    out = [metric_figure(result, result.out_dir / "scan.png")]
    curves = [
        (_legend(t, result), np.asarray(t.roc["fpr"]), np.asarray(t.roc["tpr"]))
        for t in result.trials
        if t.roc
    ]
    if curves:
        if not labels and result.bundle_path is not None and (result.bundle_path / "labels.txt").exists():
            labels = (result.bundle_path / "labels.txt").read_text().split()
        best = result.best.number if result.best is not None else None
        styles = ["-" if t.number == best else "--" for t in result.trials if t.roc]
        out.append(roc_comparison(result.out_dir / "roc.png", curves, labels, styles=styles))
    return out


def _legend(t: Any, result: Any) -> str:
    auc = t.metrics.get("val_auc")
    best = " (best)" if result.best is not None and t.number == result.best.number else ""
    return f"trial {t.number}{best}" + (f", AUC {auc:.3f}" if auc is not None else "")


def metric_figure(result: Any, path: Path) -> Path:
    """The metric against the trial number and against each parameter."""
    space, trials = result.space, [t for t in result.trials if t.value is not None]
    name = METRIC_NAMES.get(space.metric, space.metric)
    n = 1 + len(space.params)
    with _style():
        fig, axes = plt.subplots(1, n, figsize=(7 * n, 6), squeeze=False)
        ax = axes[0][0]
        x = [t.number for t in trials]
        y = [t.value for t in trials]
        ax.plot(x, y, "o", ms=8, label="trial")
        best_so_far: list[float] = []
        for v in y:
            best_so_far.append(v if not best_so_far or space.better(v, best_so_far[-1]) else best_so_far[-1])
        ax.step(x, best_so_far, where="post", color="black", lw=1.5, label="best so far")
        if result.best is not None:
            ax.plot(
                [result.best.number], [result.best.value], "*", color="tab:red", ms=18, label="best trial"
            )
        ax.set_xlabel("trial")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=13)
        tag(ax)
        for ax, p in zip(axes[0][1:], space.params):
            values = [t.params.get(p.name) for t in trials]
            if p.kind == "choice":
                cats = [str(c) for c in p.values]
                xs = [cats.index(str(v)) if str(v) in cats else np.nan for v in values]
                ax.set_xticks(range(len(cats)), cats)
            else:
                xs = [float(v) for v in values]
                if p.log:
                    ax.set_xscale("log")
                    ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^-4, 3x10^-4 ... overlap
            ax.scatter(xs, y, s=60, c=x, cmap="viridis", label="trial (colour: number)")
            if result.best is not None:
                bx = result.best.params.get(p.name)
                bx = [str(c) for c in p.values].index(str(bx)) if p.kind == "choice" else bx
                ax.plot([bx], [result.best.value], "*", color="tab:red", ms=18, label="best trial")
            ax.set_xlabel(p.name)
            ax.set_ylabel(name)
            ax.legend(fontsize=12)
            tag(ax)
        save(fig, path, dpi=80, tight_layout=True)
    return Path(path)
