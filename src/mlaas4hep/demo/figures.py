"""The demo's figures, as base64 PNG strings for the self-contained report.

Same style and wording as the training plots (:mod:`mlaas4hep.train.plots`):
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

from ..train.metrics import roc_curve
from ..train.plots import BACKGROUND_COLOR, SIGNAL_COLOR, _style, display_label, fraction_hist, tag
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


def roc_figure(stream, memory, cuts: dict[str, Any], path: Path | None = None) -> str:
    """Signal vs background efficiency of both networks; the cuts are one working point."""
    with _style():
        fig, ax = plt.subplots(figsize=(8, 7))
        for res, label, ls in ((stream, "network, streamed", "-"), (memory, "network, in memory", "--")):
            fpr, tpr = roc_curve(res.val_labels, res.val_scores, res.val_weights)
            ax.plot(fpr, tpr, ls, lw=2, label=f"{label} (AUC {res.metrics['val_auc']:.3f})")
        ax.plot(
            [cuts["fpr"]],
            [cuts["tpr"]],
            "o",
            color="black",
            ms=9,
            label=f"cuts: ≥4 jets, ≥3 b-tags\n(ε$_S$ {cuts['tpr']:.0%}, ε$_B$ {cuts['fpr']:.0%})",
        )
        ax.plot([0, 1], [0, 1], ":", color="lightgray", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"background efficiency ε$_B$ ({TTBAR})")
        ax.set_ylabel("signal efficiency ε$_S$ (ttH)")
        tag(ax)
        ax.legend(loc="lower right", fontsize=14)
        return _png(fig, path)


def overtraining_figure(ot: dict[str, Any], title: str) -> str:
    """Training (points) vs validation (lines) score distributions per class, with KS p-values."""
    bins = np.linspace(0, 1, 26)
    centres, width = 0.5 * (bins[1:] + bins[:-1]), bins[1] - bins[0]
    with _style():
        fig, ax = plt.subplots(figsize=(8, 6.5))
        (ts, ty), (vs, vy) = ot["train"], ot["val"]
        for cls, name, color, key in (
            (0, BACKGROUND, BACKGROUND_COLOR, "background"),
            (1, SIGNAL, SIGNAL_COLOR, "signal"),
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
        return _png(fig)


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
