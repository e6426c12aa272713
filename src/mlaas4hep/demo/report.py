"""The demo's plots and its self-contained HTML report (images embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np
import yaml

from ..train.metrics import roc_curve
from ..train.plots import _style


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def roc_figure(stream, memory, cuts, path: Path | None = None) -> str:
    with _style():
        fig, ax = plt.subplots(figsize=(8, 7))
        for res, label, ls in ((stream, "network, streamed", "-"), (memory, "network, in memory", "--")):
            fpr, tpr = roc_curve(res.val_labels, res.val_scores, res.val_weights)
            ax.plot(fpr, tpr, ls, lw=2, label=f"{label} (AUC {res.metrics['val_auc']:.4f})")
        ax.plot([0, cuts["fpr"], 1], [0, cuts["tpr"], 1], ":", color="gray")
        ax.plot(
            [cuts["fpr"]],
            [cuts["tpr"]],
            "o",
            color="black",
            label=f"cuts: ≥4 jets, ≥3 b-tags (AUC {cuts['auc']:.4f})",
        )
        ax.plot([0, 1], [0, 1], "--", color="lightgray", lw=1)
        ax.set_xlabel("background efficiency (tt̄)")
        ax.set_ylabel("signal efficiency (ttH)")
        ax.legend(loc="lower right", fontsize=14)
        if path:
            fig.savefig(path, dpi=90, bbox_inches="tight")
        return _png(fig)


def scores_figure(stream) -> str:
    with _style():
        fig, ax = plt.subplots(figsize=(8, 6))
        bins = np.linspace(0, 1, 41)
        for cls, name in ((0, "tt̄"), (1, "ttH(bb)")):
            sel = stream.val_labels == cls
            ax.hist(stream.val_scores[sel], bins=bins, density=True, histtype="step", lw=2, label=name)
        ax.set_xlabel("network score (streamed training)")
        ax.set_ylabel("normalised events")
        ax.legend()
        return _png(fig)


def loss_figure(stream, memory) -> str:
    with _style():
        fig, ax = plt.subplots(figsize=(8, 6))
        for res, label, ls in ((stream, "streamed", "-"), (memory, "in memory", "--")):
            ep = [e["epoch"] for e in res.metrics["epochs"]]
            ax.plot(
                ep, [e["train_loss"] for e in res.metrics["epochs"]], ls, marker="o", label=f"train, {label}"
            )
            ax.plot(
                ep,
                [e["val_loss"] for e in res.metrics["epochs"]],
                ls,
                marker="s",
                label=f"validation, {label}",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("binary cross-entropy")
        ax.legend(fontsize=13)
        return _png(fig)


def throughput_figure(summary: dict[str, Any], stream, memory) -> str:
    rows = [("specs pass", summary["events_per_s_specs"])]
    for e in stream.metrics["epochs"]:
        rows.append((f"stream ep {e['epoch']} ({e.get('source', '')})", e["events_per_s"]))
    rows.append(("in memory (mean)", summary["events_per_s_memory"]))
    with _style():
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 2))
        ax.barh([r[0] for r in rows][::-1], [r[1] for r in rows][::-1], color="#5790fc")
        ax.set_xlabel("events / s")
        ax.tick_params(axis="y", labelsize=12)
        return _png(fig)


def write_report(path: Path, summary: dict[str, Any], stream, memory, cuts, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = {
        "ROC curves": roc_figure(stream, memory, cuts, path.with_name("roc.png")),
        "Score distributions": scores_figure(stream),
        "Loss curves": loss_figure(stream, memory),
        "Throughput": throughput_figure(summary, stream, memory),
    }
    s = summary
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v}</td><td>{r}</td></tr>"
        for k, v, r in (
            ("network, streamed from ROOT", f"{s['auc_stream']:.4f}", f"{s['events_per_s_stream']:,.0f}"),
            (
                "network, in memory (traditional)",
                f"{s['auc_memory']:.4f}",
                f"{s['events_per_s_memory']:,.0f}",
            ),
            ("cuts: ≥ 4 jets, ≥ 3 b-tags", f"{s['auc_cuts']:.4f}", "–"),
        )
    )
    figs = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b64}"><figcaption>{html.escape(t)}</figcaption></figure>'
        for t, b64 in images.items()
    )
    served = s["served"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mlaas4hep demo: ttH(bb) vs tt̄</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
figure {{ display: inline-block; margin: 10px; vertical-align: top; }} img {{ max-width: 520px; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>mlaas4hep demo: ttH(→bb) vs tt̄</h1>
<p>{s["events_total"]:,} events after selection, {s["n_features"]} features, {s["epochs"]} epochs;
data read {"through root:// from a local XRootD server" if s["remote"] else "from local ROOT files"}.</p>
<table><tr><th>method</th><th>validation AUC</th><th>training events/s</th></tr>{rows}</table>
<p>Served model: {served["matched"]}/{served["requests"]} query types matched the in-process scores
(TFaaS <code>/json</code>, v2 infer with raw branch values, <code>predict_root</code>).</p>
<div id="figures">{figs}</div>
<h2>Summary</h2><pre>{html.escape(json.dumps({k: v for k, v in s.items() if k != "served"}, indent=1, default=str))}</pre>
<h2>Configuration</h2><pre>{html.escape(yaml.safe_dump(cfg, sort_keys=False))}</pre>
</body></html>
"""
    path.write_text(page)
    return path
