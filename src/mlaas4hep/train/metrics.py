"""Classifier metrics in plain NumPy: log loss, ROC curve and AUC, accuracy, and
the signal efficiency at a fixed background efficiency (a working point).

Kept free of scikit-learn so that a PyTorch-only installation can train. The AUC
is the Mann-Whitney statistic with ties counted one half, weighted when event
weights are given (negative weights are clipped to zero for the ROC).
"""

from __future__ import annotations

import numpy as np


def log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None, eps: float = 1e-7) -> float:
    """Mean (weighted) cross-entropy of probabilities ``p``: ``(n,)`` binary or ``(n, K)``."""
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, np.float64)
    if p.ndim == 2 and p.shape[1] > 1:
        q = np.clip(p[np.arange(len(y)), y], eps, 1.0)
        losses = -np.log(q)
    else:
        p = np.clip(p.reshape(-1), eps, 1 - eps)
        losses = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
    return float((losses * w).sum() / max(w.sum(), 1e-12))


def roc_curve(y: np.ndarray, s: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (from (0, 0) to (1, 1))."""
    y = np.asarray(y).reshape(-1).astype(bool)
    s = np.asarray(s, np.float64).reshape(-1)
    w = np.ones(len(y)) if w is None else np.clip(np.asarray(w, np.float64), 0, None)
    order = np.argsort(-s, kind="mergesort")
    s, y, w = s[order], y[order], w[order]
    tp, fp = np.cumsum(w * y), np.cumsum(w * ~y)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tpr = np.r_[0.0, tp[last] / max(tp[-1], 1e-12)] if len(s) else np.array([0.0, 1.0])
    fpr = np.r_[0.0, fp[last] / max(fp[-1], 1e-12)] if len(s) else np.array([0.0, 1.0])
    return fpr, tpr


def roc_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray | None = None) -> float:
    """Area under the ROC curve (trapezoids = ties count one half)."""
    y = np.asarray(y).reshape(-1)
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr = roc_curve(y, s, w)
    return float(np.trapezoid(tpr, fpr))


def signal_efficiency_at(
    y: np.ndarray, s: np.ndarray, background_efficiency: float, w: np.ndarray | None = None
) -> float:
    """Signal efficiency (true-positive rate) where the background efficiency is ``background_efficiency``.

    The working point a physicist quotes: "at 1% background, the network keeps
    12% of the signal". Between two neighbouring thresholds of the ROC curve the
    efficiency is interpolated linearly; where several thresholds share exactly
    that background efficiency, the best signal efficiency counts.
    """
    fpr, tpr = roc_curve(y, s, w)
    return efficiency_on_curve(fpr, tpr, background_efficiency)


def efficiency_on_curve(fpr: np.ndarray, tpr: np.ndarray, background_efficiency: float) -> float:
    """:func:`signal_efficiency_at` on a ROC curve already computed (``roc_curve``'s output)."""
    i = int(np.searchsorted(fpr, background_efficiency, side="right"))  # first point beyond
    if i >= len(fpr):
        return float(tpr[-1])
    j = i - 1  # the last point at or below (tpr grows along the curve: the best one)
    if fpr[j] == background_efficiency or j < 0:
        return float(tpr[max(j, 0)])
    t = (background_efficiency - fpr[j]) / (fpr[i] - fpr[j])
    return float(tpr[j] + t * (tpr[i] - tpr[j]))


def accuracy(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Share of events whose most probable class is the true one (binary: ``p > 0.5``)."""
    p = np.asarray(p)
    pred = (p.reshape(-1) > 0.5).astype(np.int64) if p.ndim == 1 or p.shape[1] == 1 else p.argmax(1)
    w = np.ones(len(pred)) if w is None else np.asarray(w, np.float64)
    return float(((pred == np.asarray(y)) * w).sum() / max(w.sum(), 1e-12))


def summary(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> dict[str, float]:
    """``val_loss``, ``val_accuracy``, and ``val_auc`` (binary) for validation probabilities."""
    out = {"val_loss": log_loss(y, p, w), "val_accuracy": accuracy(y, p, w)}
    p = np.asarray(p)
    if p.ndim == 1 or p.shape[1] == 1:
        out["val_auc"] = roc_auc(y, p.reshape(-1), w)
    return out
