"""The demo's figures, as base64 PNG strings for the self-contained report.

The ROC comparison and the overtraining check are the training report's
(:mod:`mlaas4hep.train.plots`, :mod:`mlaas4hep.train.figures`). Same style and wording as the training plots:
mplhep's CMS style, signal in orange, background in blue, efficiencies named as
physicists name them, units on the axes.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..train import figures as train_figures
from ..train.metrics import roc_curve
from ..train.plots import (
    BACKGROUND_COLOR,
    SIGNAL_COLOR,
    _style,
    display_label,
    fraction_hist,
    roc_comparison,
    tag,
)
from .physics import INPUT_AXES

TTBAR = display_label("ttbar")  # mathtext: matplotlib misplaces a Unicode combining macron
SIGNAL, BACKGROUND = "ttH(bb) (signal)", f"{TTBAR} (background)"


def _png(fig, path: Path | None = None) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    if path is not None:
        Path(path).write_bytes(buf.getvalue())
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def roc_figure(models: list[tuple[str, Any, str]], cuts: dict[str, Any], path: Path) -> str:
    """Every network of the demo on one figure, ε_S against ε_B and the background rejection
    1/ε_B on a log scale; the cuts are one working point. ``models``: (legend, result, line style)."""
    curves, styles = [], []
    for label, res, ls in models:
        fpr, tpr = roc_curve(res.val_labels == 1, np.asarray(res.val_scores).reshape(-1), res.val_weights)
        curves.append((f"{label} (AUC {res.metrics['val_auc']:.3f})", fpr, tpr))
        styles.append(ls)
    point = (
        f"cuts: ≥4 jets, ≥3 b-tags (ε$_S$ {cuts['tpr']:.0%}, ε$_B$ {cuts['fpr']:.0%})",
        cuts["fpr"],
        cuts["tpr"],
    )
    roc_comparison(path, curves, ["ttbar", "ttH"], points=[point], styles=styles)
    return base64.b64encode(Path(path).read_bytes()).decode()


def overtraining_figure(ot: dict[str, Any], title: str, path: Path) -> str:
    """Training (points) vs validation (lines) score distributions per class, with KS p-values."""
    train_figures.overtraining_figure(ot, title, ["ttbar", "ttH"], path)
    return base64.b64encode(Path(path).read_bytes()).decode()


def inputs_figure(sig: dict[str, np.ndarray], bkg: dict[str, np.ndarray]) -> str:
    """Four key input variables, signal and background normalised to unit area."""
    with _style():
        fig, axes = plt.subplots(2, 2, figsize=(14, 11))
        for ax, (key, (xlabel, bins)) in zip(axes.ravel(), INPUT_AXES.items()):
            for vals, name, color in (
                (bkg[key], BACKGROUND, BACKGROUND_COLOR),
                (sig[key], SIGNAL, SIGNAL_COLOR),
            ):
                v = vals[np.isfinite(vals)]
                fraction_hist(ax, v, bins, color=color, label=name)
            width = bins[1] - bins[0]
            unit = " GeV" if "GeV" in xlabel else ""
            ax.set_ylabel(
                f"fraction of events / {width:g}{unit}" if unit else "fraction of events", fontsize=18
            )
            ax.set_xlabel(xlabel, fontsize=18)
            ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
            if key == "nbtag":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=13, loc="upper right")
            tag(ax)
        fig.tight_layout()
        return _png(fig)


def loss_figure(stream, memory) -> str:
    """Training and validation loss per epoch, both networks."""
    with _style():
        fig, ax = plt.subplots(figsize=(8, 6))
        for res, label, ls in ((stream, "streamed", "-"), (memory, "in memory", "--")):
            ep = [e["epoch"] for e in res.metrics["epochs"]]
            ax.plot(
                ep,
                [e["train_loss"] for e in res.metrics["epochs"]],
                ls,
                marker="o",
                label=f"training, {label}",
            )
            ax.plot(
                ep,
                [e["val_loss"] for e in res.metrics["epochs"]],
                ls,
                marker="s",
                label=f"validation, {label}",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (binary cross-entropy)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        tag(ax)
        ax.legend(fontsize=13)
        return _png(fig)


def _k(x: float, _pos: Any = None) -> str:
    return f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k" if x >= 1e3 else f"{x:g}"


def throughput_figure(summary: dict[str, Any], stream) -> str:
    """Events per second of the specs pass, each streamed epoch, and in-memory training."""
    rows = [("specs pass", summary["events_per_s_specs"])]
    for e in stream.metrics["epochs"]:
        src = "decoding ROOT" if e.get("source") == "stream" else f"from {e.get('source', '')}"
        rows.append((f"streamed, epoch {e['epoch']} ({src})", e["events_per_s"]))
    rows.append(("in memory (mean of epochs)", summary["events_per_s_memory"]))
    with _style():
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 2))
        ax.barh([r[0] for r in rows][::-1], [r[1] for r in rows][::-1], color=BACKGROUND_COLOR)
        ax.xaxis.set_major_formatter(FuncFormatter(_k))
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel("throughput [events/s]")
        ax.tick_params(axis="y", labelsize=12, which="both", right=False)
        ax.tick_params(axis="y", which="minor", left=False)
        return _png(fig)
