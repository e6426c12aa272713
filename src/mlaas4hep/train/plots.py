"""Training plots as PNG, in the CMS style of mplhep, worded as in a physics note.

* ``loss.png``: training and validation loss per epoch (and validation AUC);
* ``roc.png``: signal efficiency against background efficiency for the
  validation events, with the AUC (binary classifiers; one class against the
  others for several classes);
* ``scores.png``: the classifier output of each class, as the fraction of events per bin.

For two classes, label 1 is the signal and label 0 the background; the legends
say so: ``ttH (signal)``, ``tt̄ (background)``. Label names are typeset as
physicists write them (:func:`display_label`: ``ttbar`` → tt̄).

matplotlib runs with the non-interactive Agg backend, so this works on a batch
node without a display. The same helpers style the demo's report.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.layout_engine import TightLayoutEngine
from matplotlib.ticker import MaxNLocator, NullFormatter, NullLocator

from .metrics import roc_auc, roc_curve

#: Colours of the two classes in every plot: background blue, signal orange (mplhep's CMS cycle).
BACKGROUND_COLOR, SIGNAL_COLOR = "#5790fc", "#f89c20"


def _style():
    try:
        import mplhep

        return plt.style.context(mplhep.style.CMS)
    except ImportError:  # pragma: no cover
        return plt.style.context("default")


def display_label(name: str) -> str:
    """A class name as physicists typeset it in a plot: ``ttbar`` → tt̄, ``bbbar`` → bb̄.

    The bar is drawn by matplotlib's mathtext (``$\\mathrm{\\bar{t}}$``): its text
    renderer does not place Unicode combining marks over the right letter.
    """
    return re.sub(r"([a-zA-Z])bar\b", r"$\\mathrm{\\bar{\1}}$", str(name))


def class_names(labels: Sequence[str]) -> tuple[str, str]:
    """(background, signal) legend names of a binary classifier: ``tt̄ (background)``, ``ttH (signal)``."""
    bkg = display_label(labels[0]) if len(labels) > 0 else "label 0"
    sig = display_label(labels[1]) if len(labels) > 1 else "label 1"
    return f"{bkg} (background)", f"{sig} (signal)"


def tag(ax, text: str = "mlaas4hep", sub: str = "simulation") -> None:
    """The experiment-style tag above the axes' top left corner: bold name, italic qualifier."""
    name = ax.text(0.0, 1.01, text, transform=ax.transAxes, fontweight="bold", va="bottom", fontsize=18)
    fig = ax.figure
    box = name.get_window_extent(fig.canvas.get_renderer()).transformed(ax.transAxes.inverted())
    ax.text(box.x1 + 0.02, 1.01, sub, transform=ax.transAxes, style="italic", va="bottom", fontsize=16)


def save(fig, path: Path, dpi: int, tight_layout: bool = False) -> Path:
    """Save ``fig`` as a PNG cropped to its contents, as ``savefig(bbox_inches="tight")``, and close it.

    ``bbox_inches="tight"`` lays the whole figure out twice: once to measure it
    (a draw that paints nothing) and once to paint it. The tight box needs only
    the sizes of the artists (:meth:`~matplotlib.figure.Figure.get_tightbbox`),
    so it is measured here at the dpi of the file and handed to ``savefig``: one
    layout pass fewer, and the same pixels. ``tight_layout`` first spaces the
    panels as :meth:`~matplotlib.figure.Figure.tight_layout` does, without
    leaving a layout engine on the figure (``savefig`` would lay it out again).
    Both are measured without the unlabelled minor ticks that point inwards,
    which cannot change them (:func:`_inward_minor_ticks_left_out`).
    """
    with _inward_minor_ticks_left_out(fig):
        if tight_layout:
            TightLayoutEngine().execute(fig)
        fig.set_dpi(dpi)
        bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
    fig.savefig(path, dpi=dpi, bbox_inches=bbox)
    plt.close(fig)
    return Path(path)


@contextlib.contextmanager
def _inward_minor_ticks_left_out(fig) -> Iterator[None]:
    """Leave unlabelled minor ticks that point into the axes out while the layout and the crop are measured.

    Without a label and inside the axes they cannot move either, but measuring
    places every one of them (mplhep's styles draw them on all four sides): a
    third of a figure's time. They are back for the drawing. Minor ticks with
    labels (a log axis spanning less than a decade labels them) stay.
    """
    swapped = []
    x_in, y_in = plt.rcParams["xtick.direction"] == "in", plt.rcParams["ytick.direction"] == "in"
    for ax in fig.axes:
        for axis, inward in ((ax.xaxis, x_in), (ax.yaxis, y_in)):
            if inward and isinstance(axis.get_minor_formatter(), NullFormatter):
                swapped.append((axis, axis.get_minor_locator()))
                axis.set_minor_locator(NullLocator())
    try:
        yield
    finally:
        for axis, locator in reversed(swapped):  # shared axes (twinx) share one locator
            axis.set_minor_locator(locator)


def fraction_hist(ax, values: np.ndarray, bins: np.ndarray, **kw: Any) -> None:
    """Histogram normalised to the fraction of events per bin (sums to 1 inside the range)."""
    values = np.asarray(values, np.float64)
    w = np.full(len(values), 1.0 / max(len(values), 1))
    ax.hist(values, bins=bins, weights=w, histtype="step", linewidth=2, **kw)


def loss_curves(path: Path, history: Sequence[dict[str, Any]]) -> Path:
    """Training and validation loss per epoch; validation AUC on a second axis."""
    with _style():
        fig, ax = plt.subplots(figsize=(8, 6))
        ep = [h["epoch"] for h in history]
        ax.plot(ep, [h.get("train_loss", np.nan) for h in history], "o-", label="training loss")
        ax.plot(ep, [h.get("val_loss", np.nan) for h in history], "s-", label="validation loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (cross-entropy)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        tag(ax)
        if history and history[0].get("val_auc") is not None:
            ax2 = ax.twinx()
            ax2.plot(
                ep,
                [h.get("val_auc", np.nan) for h in history],
                "^--",
                color="tab:green",
                label="validation AUC",
            )
            ax2.set_ylabel("validation AUC")
            lines = ax.get_legend_handles_labels()
            lines2 = ax2.get_legend_handles_labels()
            ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right")
        else:
            ax.legend()
        save(fig, path, dpi=90)
    return path


def roc(path: Path, y: np.ndarray, scores: np.ndarray, w: np.ndarray | None, labels: Sequence[str]) -> Path:
    """Signal efficiency against background efficiency, with the AUC."""
    with _style():
        fig, ax = plt.subplots(figsize=(8, 8))
        s = np.asarray(scores)
        if s.ndim == 1 or s.shape[1] == 1:
            bkg, sig = class_names(labels)
            fpr, tpr = roc_curve(y == 1, s.reshape(-1), w)
            ax.plot(
                fpr, tpr, color=SIGNAL_COLOR, lw=2, label=f"AUC = {roc_auc(y == 1, s.reshape(-1), w):.3f}"
            )
            ax.set_xlabel(f"background efficiency, {bkg.split(' (')[0]}")
            ax.set_ylabel(f"signal efficiency, {sig.split(' (')[0]}")
        else:  # one class against the others
            for k in range(s.shape[1]):
                name = display_label(labels[k]) if k < len(labels) else str(k)
                fpr, tpr = roc_curve(y == k, s[:, k], w)
                ax.plot(fpr, tpr, lw=2, label=f"{name}: AUC = {roc_auc(y == k, s[:, k], w):.3f}")
            ax.set_xlabel("efficiency for the other classes")
            ax.set_ylabel("efficiency for the class")
        ax.plot([0, 1], [0, 1], ":", color="grey", label="random guess")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        tag(ax)
        ax.legend(loc="lower right")
        save(fig, path, dpi=90)
    return path


def score_distributions(path: Path, y: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> Path:
    """The classifier output of each true class, as the fraction of events per bin."""
    with _style():
        fig, ax = plt.subplots(figsize=(8, 6))
        s = np.asarray(scores)
        binary = s.ndim == 1 or s.shape[1] == 1
        s = s.reshape(-1) if binary else s.max(axis=1)
        bins = np.linspace(0, 1, 41)
        if binary:
            bkg, sig = class_names(labels)
            fraction_hist(ax, s[y == 0], bins, color=BACKGROUND_COLOR, label=bkg)
            fraction_hist(ax, s[y == 1], bins, color=SIGNAL_COLOR, label=sig)
            sig_name = display_label(labels[1]) if len(labels) > 1 else "label 1"
            ax.set_xlabel(f"classifier output (probability of {sig_name})")
        else:
            for k in np.unique(y):
                name = display_label(labels[int(k)]) if int(k) < len(labels) else str(k)
                fraction_hist(ax, s[y == k], bins, label=name)
            ax.set_xlabel("highest class probability")
        ax.set_ylabel(f"fraction of events / {bins[1] - bins[0]:.3g}")
        ax.set_xlim(0, 1)
        tag(ax)
        ax.legend(loc="upper center")
        save(fig, path, dpi=90)
    return path


def write_all(directory: Path, history, y, scores, w, labels) -> list[Path]:
    """Write the three plots into ``directory``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y)
    out = []
    if history and "train_loss" in history[0]:
        out.append(loss_curves(directory / "loss.png", history))
    if scores is not None and len(y):
        out.append(roc(directory / "roc.png", y, scores, w, labels))
        out.append(score_distributions(directory / "scores.png", y, scores, labels))
    return out


def roc_comparison(
    path: Path,
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    labels: Sequence[str],
    points: Sequence[tuple[str, float, float]] = (),
    styles: Sequence[str] | None = None,
) -> Path:
    """Several classifiers on one figure, as a physics note shows them.

    Left: signal efficiency ε_S against background efficiency ε_B. Right: the
    background rejection 1/ε_B on a log scale against ε_S, where the working
    points of an analysis (ε_B of 1% or less) can be read. ``curves`` are
    ``(legend, fpr, tpr)`` (the legend carries the AUC); ``points`` are single
    working points ``(legend, ε_B, ε_S)`` such as a cut-based selection.
    """
    bkg, sig = (n.split(" (")[0] for n in class_names(labels))
    with _style():
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(16, 7.5))
        cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", [None])
        for i, (name, fpr, tpr) in enumerate(curves):
            fpr, tpr = np.asarray(fpr, np.float64), np.asarray(tpr, np.float64)
            ls = styles[i] if styles is not None and i < len(styles) else "-"
            color = cycle[i % len(cycle)]
            ax.plot(fpr, tpr, ls, lw=2, color=color, label=name)
            keep = fpr > 0
            ax2.plot(tpr[keep], 1.0 / fpr[keep], ls, lw=2, color=color, label=name)
        for name, fpr_pt, tpr_pt in points:
            ax.plot([fpr_pt], [tpr_pt], "o", color="black", ms=9, label=name)
            if fpr_pt > 0:
                ax2.plot([tpr_pt], [1.0 / fpr_pt], "o", color="black", ms=9, label=name)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="random guess")
        grid = np.linspace(0.01, 1, 100)
        ax2.plot(grid, 1 / grid, ":", color="grey", lw=1, label="random guess")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"background efficiency ε$_B$ ({bkg})")
        ax.set_ylabel(f"signal efficiency ε$_S$ ({sig})")
        ax2.set_yscale("log")
        ax2.set_xlim(0, 1)
        ax2.set_xlabel(f"signal efficiency ε$_S$ ({sig})")
        ax2.set_ylabel(f"background rejection 1/ε$_B$ ({bkg})")
        for a in (ax, ax2):
            tag(a)
        fontsize = 14 if len(curves) <= 6 else 10
        ax.legend(loc="lower right", fontsize=fontsize)
        ax2.legend(loc="upper right", fontsize=fontsize)
        save(fig, path, dpi=90, tight_layout=True)
    return Path(path)
