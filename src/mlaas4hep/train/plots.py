"""Training plots as PNG, in the CMS style of mplhep.

* ``loss.png``: training and validation loss per epoch (and validation AUC);
* ``roc.png``: the ROC curve of the validation events, with its AUC
  (binary classifiers; one-vs-rest per class otherwise);
* ``scores.png``: the score distribution of each class, normalised.

matplotlib runs with the non-interactive Agg backend, so this works on a batch
node without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np

from .metrics import roc_auc, roc_curve


def _style():
    try:
        import mplhep

        return plt.style.context(mplhep.style.CMS)
    except ImportError:  # pragma: no cover
        return plt.style.context("default")


def loss_curves(path: Path, history: Sequence[dict[str, Any]]) -> Path:
    """Training and validation loss per epoch; validation AUC on a second axis."""
    with _style():
        fig, ax = plt.subplots(figsize=(8, 6))
        ep = [h["epoch"] for h in history]
        ax.plot(ep, [h.get("train_loss") for h in history], "o-", label="training loss")
        ax.plot(ep, [h.get("val_loss") for h in history], "s-", label="validation loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if history and history[0].get("val_auc") is not None:
            ax2 = ax.twinx()
            ax2.plot(
                ep, [h.get("val_auc") for h in history], "^--", color="tab:green", label="validation AUC"
            )
            ax2.set_ylabel("validation AUC")
            lines = ax.get_legend_handles_labels()
            lines2 = ax2.get_legend_handles_labels()
            ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right")
        else:
            ax.legend()
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
    return path


def roc(path: Path, y: np.ndarray, scores: np.ndarray, w: np.ndarray | None, labels: Sequence[str]) -> Path:
    """ROC curve(s) with their AUC."""
    with _style():
        fig, ax = plt.subplots(figsize=(8, 8))
        s = np.asarray(scores)
        curves = (
            [(labels[-1] if len(labels) else "1", y == 1, s.reshape(-1))]
            if s.ndim == 1
            else [(labels[k], y == k, s[:, k]) for k in range(s.shape[1])]
        )
        for name, truth, sc in curves:
            fpr, tpr = roc_curve(truth, sc, w)
            ax.plot(fpr, tpr, label=f"{name}: AUC = {roc_auc(truth, sc, w):.3f}")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right")
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
    return path


def score_distributions(path: Path, y: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> Path:
    """Normalised histograms of the classifier output, one per true class."""
    with _style():
        fig, ax = plt.subplots(figsize=(8, 6))
        s = np.asarray(scores)
        s = s if s.ndim == 1 else s.max(axis=1)
        bins = np.linspace(0, 1, 41)
        for k in np.unique(y):
            name = labels[int(k)] if int(k) < len(labels) else str(k)
            ax.hist(s[y == k], bins=bins, histtype="step", density=True, linewidth=2, label=name)
        ax.set_xlabel("classifier output" if np.asarray(scores).ndim == 1 else "highest class probability")
        ax.set_ylabel("normalised events")
        ax.legend()
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
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
