"""The report of a training run: ``OUT/report.html``, a short physics note on one page.

``mlaas4hep train`` writes it with the plots (``training.plots``) for binary
classifiers; every figure is embedded in the page (base64 PNG) and also kept in
``OUT/plots/``:

* the performance table: validation AUC and signal efficiency at background
  efficiencies of 1% and 10%, each with its bootstrap uncertainty
  (:func:`.evaluation.performance`);
* ``roc_rejection.png``: the ROC curve, and the background rejection 1/ε_B on a
  log scale against ε_S (:func:`.plots.roc_comparison`);
* ``overtraining.png`` and the Kolmogorov–Smirnov p-values of the scores on
  training vs validation events, per class (:func:`.evaluation.overtraining`;
  at most :data:`KS_EVENTS` training events are scored again);
* ``inputs.png``: the inputs that separate the classes best, per class, as the
  model sees them;
* the loss curves (``loss.png``).

The numbers also go into ``metrics.json`` under ``performance`` and ``overtraining``.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Any

import numpy as np

from . import evaluation
from .plots import roc_comparison

log = logging.getLogger(__name__)

FRAMEWORK_NAMES = {"pytorch": "PyTorch", "keras": "Keras", "sklearn": "scikit-learn", "xgboost": "XGBoost"}
#: Training events scored again for the overtraining check.
KS_EVENTS = 200_000


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def with_unc(x: float, unc: float, percent: bool = False) -> str:
    """``0.812 ± 0.004`` or ``12.3% ± 0.5%``: the value keeps its usual rounding."""
    if percent:
        return f"{pct(x)} ± {pct(unc)}" if np.isfinite(unc) else pct(x)
    return f"{x:.3f} ± {unc:.3f}" if np.isfinite(unc) else f"{x:.3f}"


def pvalue(p: float) -> str:
    return "< 0.001" if p < 1e-3 else f"{p:.2f}" if p >= 0.01 else f"{p:.3f}"


def png(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def figure(title: str, path: Path, caption: str) -> str:
    return (
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{png(path)}">'
        f"<figcaption><b>{html.escape(title)}.</b> {caption}</figcaption></figure>"
    )


STYLE = """body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f4f6f8; } td { font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 10px; vertical-align: top; max-width: 1060px; } img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #444; }"""


def write_report(result: Any, out: Path) -> list[Path]:
    """Write ``OUT/report.html`` and its figures for a finished binary run; returns the files."""
    from .figures import input_distributions, overtraining_figure

    labels = list(result.metrics.get("labels") or [])
    y = np.asarray(result.val_labels)
    scores = np.asarray(result.val_scores)
    if len(labels) != 2 or (scores.ndim == 2 and scores.shape[1] > 1):
        log.info("report.html skipped: written for binary classifiers only")
        return []
    plots = Path(out) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    m = result.metrics
    perf = evaluation.performance(y, scores, result.val_weights)
    ot = evaluation.overtraining(result, KS_EVENTS)
    m["performance"] = perf
    m["overtraining"] = {k: v for k, v in ot.items() if k.startswith("ks_")}
    m["overtraining"]["training_events"] = len(ot["train"][1])

    from .metrics import roc_curve

    fpr, tpr = roc_curve(y == 1, scores.reshape(-1), result.val_weights)
    name = m.get("name", "model")
    files = [
        roc_comparison(
            plots / "roc_rejection.png",
            [(f"{name} (AUC {with_unc(perf['auc'], perf['auc_unc'])})", fpr, tpr)],
            labels,
        ),
        overtraining_figure(ot, f"{name} network", labels, plots / "overtraining.png"),
    ]
    shown: list[str] = []
    x = getattr(getattr(result.source, "val", None), "x", None)
    if isinstance(x, np.ndarray) and x.ndim == 2 and len(x):
        names = list(result.dataset.preprocessor.feature_names) if result.dataset is not None else []
        path, shown = input_distributions(x, y, names, labels, plots / "inputs.png")
        files.append(path)
    page = _page(result, perf, ot, files, shown, plots)
    report = Path(out) / "report.html"
    report.write_text(page)
    return [*files, report]


def _page(
    result: Any, perf: dict[str, Any], ot: dict[str, Any], files: list[Path], shown: list[str], plots: Path
) -> str:
    m = result.metrics
    labels = m["labels"]
    bkg, sig = html.escape(labels[0]), html.escape(labels[1])
    y = np.asarray(result.val_labels)
    ths = "".join(
        f"<th>ε<sub>S</sub> at ε<sub>B</sub> = {b:.0%}</th>" for b in evaluation.BACKGROUND_EFFICIENCIES
    )
    effs = "".join(
        f"<td>{with_unc(perf['eff'][f'{b:g}'], perf['eff_unc'][f'{b:g}'], percent=True)}</td>"
        for b in evaluation.BACKGROUND_EFFICIENCIES
    )
    name = html.escape(str(m.get("name", "model")))
    ks = (
        f"<tr><td>{name}</td><td>{pvalue(ot['ks_p_signal'])}</td><td>{pvalue(ot['ks_p_background'])}</td>"
        f"<td>{html.escape(evaluation.ks_verdict(ot))}</td></tr>"
    )
    figs = {p.stem: p for p in files}
    parts = [
        figure(
            "ROC curve",
            figs["roc_rejection"],
            "Left: signal efficiency against background efficiency on the validation events. "
            "Right: background rejection 1/ε<sub>B</sub> on a log scale against the signal efficiency.",
        )
    ]
    over = figure(
        "Overtraining check",
        figs["overtraining"],
        "Network output for training events (points) and validation events (lines), each normalised "
        "to unit area; the legend gives the Kolmogorov–Smirnov p-value per class.",
    )
    inputs = (
        figure(
            "Input variables",
            figs["inputs"],
            f"The {len(shown)} inputs that separate the classes best (largest Kolmogorov–Smirnov distance), "
            "validation events normalised to unit area, as the model sees them (after the preprocessing).",
        )
        if "inputs" in figs
        else ""
    )
    loss = (
        figure("Loss curves", plots / "loss.png", "Training and validation loss per epoch.")
        if (plots / "loss.png").exists()
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name}: {html.escape(labels[1])} vs {html.escape(labels[0])}</title>
<style>{STYLE}</style></head><body>
<h1>{name}: {html.escape(labels[1])} (signal) vs {html.escape(labels[0])} (background)</h1>
<p>{html.escape(FRAMEWORK_NAMES.get(str(m.get("framework")), str(m.get("framework"))))} model from <code>{html.escape(Path(str(m.get("model_file"))).name)}</code>,
{m.get("n_features")} input features, {m.get("epochs_trained")} epochs (best: epoch {m.get("best_epoch")}),
{m.get("n_train") or 0:,} training events per epoch. All numbers are for the {len(y):,} validation events
({int((y == 1).sum()):,} signal, {int((y == 0).sum()):,} background), held out by a hash of the event id;
uncertainties are the standard deviation of {perf["bootstrap"]} bootstrap resamples.</p>
<h2>Performance</h2>
<table id="performance"><tr><th>model</th><th>validation AUC</th>{ths}</tr>
<tr><td>{name}</td><td>{with_unc(perf["auc"], perf["auc_unc"])}</td>{effs}</tr></table>
{"".join(parts)}
<h2>Overtraining check</h2>
<table id="overtraining"><tr><th>model</th><th>KS p-value, signal ({sig})</th><th>KS p-value, background ({bkg})</th>
<th>verdict</th></tr>{ks}</table>
<p>Kolmogorov–Smirnov test of the network output on {len(ot["train"][1]):,} training events vs the validation
events, per class.</p>
{over}
<h2>Input variables</h2>
{inputs}
<h2>Training</h2>
{loss}
</body></html>
"""
