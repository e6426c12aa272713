"""The demo's self-contained HTML report (figures embedded as base64 PNG), and number formatting.

The page reads like a short physics note: the samples, the performance table
(AUC, signal efficiency at fixed background efficiency, the cut-based selection
as its one working point), the overtraining check, the key input variables, the
training curves, the throughput, and the check of the served model. Numbers are
rounded to what they mean (AUC to 3 digits, efficiencies in %, rates in k
events/s, times in s); the raw values are in ``summary.json``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import yaml

from ..train.evaluation import ks_verdict
from . import figures
from .physics import BACKGROUND_EFFICIENCIES

__all__ = ["ks_verdict", "pct", "performance_rows", "pvalue", "rate", "write_report"]


def rate(x: float) -> str:
    """Events per second, rounded: ``69k events/s``, ``1.2M events/s``, ``850 events/s``."""
    if x >= 1e6:
        return f"{x / 1e6:.1f}M events/s"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k events/s"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k events/s"
    return f"{x:.0f} events/s"


def pct(x: float) -> str:
    """An efficiency in percent, to 0.1%."""
    return f"{100 * x:.1f}%"


def secs(x: float) -> str:
    return f"{x:.1f} s"


def pvalue(p: float) -> str:
    return "< 0.001" if p < 1e-3 else f"{p:.2f}" if p >= 0.01 else f"{p:.3f}"


def _unc(s: dict[str, Any], key: str) -> dict[str, float]:
    return (s.get("uncertainty") or {}).get(key, {})


def _auc(value: float, unc: float | None) -> str:
    return f"{value:.3f} ± {unc:.3f}" if unc is not None else f"{value:.3f}"


def _eff(value: float, unc: float | None) -> str:
    return f"{pct(value)} ± {pct(unc)}" if unc is not None else pct(value)


def performance_rows(s: dict[str, Any], short: bool = False) -> list[tuple[str, ...]]:
    """(method, AUC, ε_S at ε_B = 1%, ε_S at ε_B = 10%, training rate) for the table of each output,
    with the bootstrap uncertainties of ``summary["uncertainty"]`` when there (not in the ``short``
    table printed on the terminal)."""
    rows: list[tuple[str, ...]] = []
    names = (
        ("network, streamed", "network, in memory")
        if short
        else ("network, streamed from ROOT", "network, in memory (traditional)")
    )
    methods = [
        (key, name, s[f"auc_{key}"], s["signal_efficiency"][key], s[f"events_per_s_{key}"], key)
        for key, name in zip(("stream", "memory"), names)
    ]
    o = s.get("objects")
    if o is not None:
        names = ("objects, streamed", "objects, in memory")
        if not short:
            names = ("object-level (Deep Sets), streamed", "object-level (Deep Sets), in memory")
        methods += [
            (
                key,
                name,
                o[f"auc_{key}"],
                o["signal_efficiency"][key],
                o[f"events_per_s_{key}"],
                f"objects_{key}",
            )
            for key, name in zip(("stream", "memory"), names)
        ]
    for _key, name, auc, e, speed, ukey in methods:
        u = {} if short else _unc(s, ukey)  # the terminal's table stays narrow: ± in the report
        rows.append(
            (
                name,
                _auc(auc, u.get("auc")),
                *(_eff(e[f"{b:g}"], u.get(f"{b:g}")) for b in BACKGROUND_EFFICIENCIES),
                rate(speed),
            )
        )
    return rows


def yields_rows(s: dict[str, Any]) -> list[tuple[str, ...]]:
    """(method, working point, S, B, S/√B) at the summary's luminosity, for the yields table."""
    y = s.get("yields")
    if not y:
        return []
    names = {
        "stream": "network, streamed",
        "memory": "network, in memory",
        "objects_stream": "object-level, streamed",
        "objects_memory": "object-level, in memory",
    }
    rows: list[tuple[str, ...]] = []
    for key, name in names.items():
        for b in BACKGROUND_EFFICIENCIES:
            r = y.get(key, {}).get(f"{b:g}")
            if r is not None:
                rows.append((name, f"ε_B = {b:.0%}", *_yield_cells(r)))
    if "cuts" in y:
        rows.append(
            (
                "cuts: ≥ 4 jets, ≥ 3 b-tags",
                f"ε_B = {pct(s['cuts_background_efficiency'])}",
                *_yield_cells(y["cuts"]),
            )
        )
    return rows


def _yield_cells(r: dict[str, float]) -> tuple[str, str, str]:
    s_txt = f"{r['S']:,.0f} ± {r['S_unc']:,.0f}" if r.get("S_unc") else f"{r['S']:,.0f}"
    z_txt = (
        f"{r['S_over_sqrt_B']:.2f} ± {r['S_over_sqrt_B_unc']:.2f}"
        if r.get("S_over_sqrt_B_unc")
        else f"{r['S_over_sqrt_B']:.2f}"
    )
    return s_txt, f"{r['B']:,.0f}", z_txt


def cuts_sentence(s: dict[str, Any]) -> str:
    """The cut-based selection as a working point, compared with the networks at its background efficiency."""
    eff = s["signal_efficiency"]
    return (
        f"a single working point, signal efficiency {pct(s['cuts_signal_efficiency'])} at background efficiency "
        f"{pct(s['cuts_background_efficiency'])}; the networks at that background efficiency: "
        f"{pct(eff['stream']['cuts'])} (streamed), {pct(eff['memory']['cuts'])} (in memory)"
    )


def objects_sentence(o: dict[str, Any]) -> str:
    """The object-level network against the flat network and the cuts, in words (``summary["objects"]``)."""
    at = o["signal_efficiency_at_cuts"]
    return (
        f"object-level network ({o['model']}, the jets as a set): AUC {o['auc_stream']:.3f} streamed, "
        f"{o['auc_memory']:.3f} in memory, against {o['auc_flat']:.3f} for the flat network "
        f"({'higher' if o['beats_flat'] else 'not higher'}); at the cuts' background efficiency its signal "
        f"efficiency is {pct(at['objects'])}, against {pct(at['flat'])} for the flat network and "
        f"{pct(at['cuts'])} for the cuts ({'beats' if o['beats_cuts'] else 'does not beat'} the cuts)"
    )


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _figure(title: str, b64: str, caption: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return (
        f'<figure{cls}><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">'
        f"<figcaption><b>{html.escape(title)}.</b> {caption}</figcaption></figure>"
    )


def write_report(
    path: Path,
    summary: dict[str, Any],
    stream,
    memory,
    cuts: dict[str, Any],
    cfg: dict[str, Any],
    physics: dict[str, Any],
    objects: tuple[Any, Any] | None = None,
) -> Path:
    """Write ``report.html`` (and ``roc.png`` beside it); ``physics`` holds the overtraining
    results (``ot_stream``, ``ot_memory``, ``ot_objects``) and the key inputs (``inputs_signal``,
    ``inputs_background``); ``objects`` the object-level network's results (streamed, in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    s, ot = summary, summary["overtraining"]
    ths = "".join(f"<th>ε<sub>S</sub> at ε<sub>B</sub> = {b:.0%}</th>" for b in BACKGROUND_EFFICIENCIES)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in performance_rows(s)
    )
    rows += (
        "<tr><td>cuts: ≥ 4 jets, ≥ 3 b-tags</td><td>–</td>"
        f'<td colspan="2" class="wp">working point: ε<sub>S</sub> = {pct(s["cuts_signal_efficiency"])}, '
        f"ε<sub>B</sub> = {pct(s['cuts_background_efficiency'])}</td><td>–</td></tr>"
    )
    ks_rows = "".join(
        f"<tr><td>{name}</td><td>{pvalue(ot[k]['ks_p_signal'])}</td><td>{pvalue(ot[k]['ks_p_background'])}</td>"
        f"<td>{html.escape(ks_verdict(ot[k]))}</td></tr>"
        for k, name in (
            ("stream", "network, streamed"),
            ("memory", "network, in memory"),
            ("objects", "object-level (Deep Sets), streamed"),
        )
        if k in ot
    )
    y = s.get("yields") or {}
    yield_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c).replace('ε_B', 'ε<sub>B</sub>')}</td>" for c in r) + "</tr>"
        for r in yields_rows(s)
    )
    yields_html = (
        f"""<h2>Expected yields</h2>
<p>Events expected at {y["luminosity_fb"]:g} fb<sup>−1</sup> of 13 TeV collisions at each working point:
S = σ<sub>ttH(bb)</sub> L ε<sub>S</sub> (σ = {y["xsec_pb"]["ttH"]:.3f} pb) and B = σ<sub>tt̄</sub> L ε<sub>B</sub>
(σ = {y["xsec_pb"]["ttbar"]:.1f} pb), with the event weights of the validation sample; the uncertainties are
statistical, from the bootstrap of ε<sub>S</sub>.</p>
<table id="yields"><tr><th>method</th><th>working point</th><th>S (signal)</th><th>B (background)</th>
<th>S/√B</th></tr>{yield_rows}</table>"""
        if y
        else ""
    )
    models = [
        (label, res, ls)
        for label, res, ls in (
            ("flat network, streamed", stream, "-"),
            ("flat network, in memory", memory, "--"),
            ("Deep Sets, streamed", objects[0] if objects else None, "-"),
            ("Deep Sets, in memory", objects[1] if objects else None, "--"),
        )
        if res is not None
    ]
    t = s["seconds"]
    selection = cfg.get("selection")
    sel_text = (
        f"after the selection <code>{html.escape(selection)}</code>"
        if selection
        else "no event selection applied"
    )
    figs = {
        "ROC": _figure(
            "ROC curves",
            figures.roc_figure(models, cuts, path.with_name("roc.png")),
            "Every method on the same validation events. Left: signal efficiency against background "
            "efficiency. Right: background rejection 1/ε<sub>B</sub> on a log scale against the signal "
            "efficiency, where the working points of an analysis are read. "
            "The cut-based selection is a single working point (black dot), not a curve. Curves: "
            + "; ".join(
                f"{html.escape(label)} (AUC {res.metrics['val_auc']:.3f})" for label, res, _ in models
            )
            + ".",
            "wide",
        ),
        "overtraining": _figure(
            "Overtraining check",
            figures.overtraining_figure(
                physics["ot_stream"], "streamed network", path.with_name("overtraining.png")
            ),
            "Network output for training events (points) and validation events (lines), "
            "each normalised to unit area; the legend gives the Kolmogorov–Smirnov p-value per class.",
        ),
        "overtraining_objects": _figure(
            "Overtraining check, object-level network",
            figures.overtraining_figure(
                physics["ot_objects"], "object-level network", path.with_name("overtraining_objects.png")
            ),
            "The same check for the Deep Sets network, streamed.",
        )
        if "ot_objects" in physics
        else "",
        "inputs": _figure(
            "Input variables",
            figures.inputs_figure(physics["inputs_signal"], physics["inputs_background"]),
            "Key quantities reconstructed from the raw branches, normalised to unit area: m(bb) of the two jets "
            "with the highest b-tag score (the H → bb peak near 125 GeV in ttH), H<sub>T</sub>, the number "
            f"of b-tagged jets (DeepFlavB &gt; {s['btag_wp']}) and the leading jet p<sub>T</sub>. "
            "The network sees the jets' p<sub>T</sub>, η, φ, mass and b-tag scores, not these sums.",
            "wide",
        ),
        "loss": _figure(
            "Loss curves",
            figures.loss_figure(stream, memory),
            "Binary cross-entropy per epoch, training and validation, for both trainings.",
        ),
        "throughput": _figure(
            "Throughput",
            figures.throughput_figure(s, stream),
            "Events per second: the specs pass, each streamed epoch (epoch 0 decodes ROOT, later epochs "
            "read the decoded cache), and the in-memory training.",
        ),
    }
    served = s["served"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mlaas4hep demo: ttH(bb) vs tt̄</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
th {{ background: #f4f6f8; }} td {{ font-variant-numeric: tabular-nums; }}
figure {{ display: inline-block; margin: 10px; vertical-align: top; max-width: 520px; }}
figure.wide {{ max-width: 1060px; }} img {{ max-width: 100%; }}
figcaption {{ font-size: 0.9em; color: #444; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>mlaas4hep demo: ttH(→bb) vs tt̄</h1>
<p>Signal: ttH(→bb), {s["events_signal"]:,} events; background: tt̄+jets, {s["events_background"]:,} events
(toy simulation in NanoAOD layout, {sel_text}). The network (MLaaS4HEP's ttH MLP, {s["n_features"]} input
features) was trained for {s["epochs"]} epochs twice: streamed from the ROOT files
{"through root:// from a local XRootD server" if s["remote"] else "on local disk"}, and in memory.
All numbers below are for the {s["n_val"]:,} validation events ({s["n_val_signal"]:,} signal,
{s["n_val_background"]:,} background), chosen by a hash of the event id and the same for every method.</p>

<h2>Performance</h2>
<p>Uncertainties: the standard deviation over 100 bootstrap resamples of the validation events.</p>
<table id="performance"><tr><th>method</th><th>validation AUC</th>{ths}<th>training speed</th></tr>{
        rows
    }</table>
<p>Cut-based selection: {html.escape(cuts_sentence(s))}.</p>
{
        f"<p>{html.escape(_capital(objects_sentence(s['objects'])))}. The same validation events.</p>"
        if "objects" in s
        else ""
    }
{figs["ROC"]}
{yields_html}

<h2>Overtraining check</h2>
<table id="overtraining"><tr><th>method</th><th>KS p-value, signal</th><th>KS p-value, background</th>
<th>verdict</th></tr>{ks_rows}</table>
<p>Kolmogorov–Smirnov test of the network output on training vs validation events, per class.</p>
{figs["overtraining"]}{figs["overtraining_objects"]}

<h2>Input variables</h2>
{figs["inputs"]}

<h2>Training</h2>
<p>Specs pass {secs(t["specs"])} ({rate(s["events_per_s_specs"])}). Streamed training
{secs(t["train_stream"])} wall time ({rate(s["events_per_s_stream_epoch0"])} in epoch 0 decoding ROOT,
{rate(s["events_per_s_stream"])} on average over the epochs); in-memory training {secs(t["train_memory"])}
wall time ({rate(s["events_per_s_memory"])} on average). Wall times include reading, validation and
writing the bundle.</p>
{figs["loss"]}{figs["throughput"]}

<h2>Serving</h2>
<p>The bundle was uploaded to <code>mlaas4hep serve</code> over HTTP: {served["matched"]}/{served["requests"]}
query types returned the in-process scores (TFaaS <code>/json</code>, v2 infer with raw branch values,
<code>predict_root</code> on a ROOT file).</p>

<details><summary>Summary (summary.json)</summary><pre>{
        html.escape(json.dumps({k: v for k, v in s.items() if k != "served"}, indent=1, default=str))
    }</pre></details>
<details><summary>Configuration</summary><pre>{
        html.escape(yaml.safe_dump(cfg, sort_keys=False))
    }</pre></details>
</body></html>
"""
    path.write_text(page)
    return path
