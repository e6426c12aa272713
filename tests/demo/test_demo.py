"""`mlaas4hep demo` at a small size, reading through a real XRootD server, and its report in a browser.

What a physicist relies on: the summary has the working points and the
overtraining check with sane values, the printed table and the report round
numbers and give units, the cut-based selection appears as a working point
(never as an AUC), and every figure is a valid PNG embedded in the page.
"""

import base64
import contextlib
import io
import json
import re
import shutil

import pytest

from mlaas4hep.demo import run_demo
from mlaas4hep.localservers import public_dir

from ..browser import render

FIGURES = [
    "ROC curves",
    "Overtraining check",
    "Overtraining check, object-level network",
    "Input variables",
    "Loss curves",
    "Throughput",
]


@pytest.fixture(scope="module")
def demo():
    out = public_dir("mlaas4hep-demo-")  # the xrootd user must reach the data
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = run_demo(out, events=4_000, files=1, epochs=2, remote=True, workers=0, show_progress=False)
    yield out, summary, " ".join(printed.getvalue().split())  # rich wraps lines at 80 columns
    shutil.rmtree(out, ignore_errors=True)


def test_demo_summary(demo):
    out, _summary, _ = demo
    saved = json.loads((out / "summary.json").read_text())
    assert saved["remote"] is True
    assert saved["served_requests_ok"] is True
    assert saved["served"]["matched"] == saved["served"]["requests"] == 3
    for key in ("auc_stream", "auc_memory"):
        assert 0.65 < saved[key] < 0.95
    # the cuts are one working point, not a curve: no AUC for them
    assert "auc_cuts" not in saved
    assert 0.4 < saved["cuts_signal_efficiency"] < 0.9
    assert 0.05 < saved["cuts_background_efficiency"] < 0.35
    for method in ("stream", "memory"):
        eff = saved["signal_efficiency"][method]
        # signal efficiency grows with the background efficiency allowed, and beats random guessing
        assert 0.01 <= eff["0.01"] < eff["0.1"] < eff["cuts"] <= 1.0
        assert eff["0.1"] > 0.2
        ot = saved["overtraining"][method]
        for cls in ("signal", "background"):
            assert 0.0 <= ot[f"ks_p_{cls}"] <= 1.0
            assert 0.0 <= ot[f"ks_d_{cls}"] <= 1.0
    assert saved["selection"] is None
    assert saved["n_val_signal"] + saved["n_val_background"] == saved["n_val"]
    assert 0.15 < saved["n_val"] / saved["events_total"] < 0.25
    assert saved["events_signal"] == saved["events_background"] == 4_000
    assert all(v > 0 for v in saved["seconds"].values())
    assert saved["events_per_s_stream"] > 0 and saved["events_per_s_memory"] > 0
    assert (out / "stream" / "bundle" / "model.onnx").exists()


def test_object_level_network_compared_on_the_same_events(demo):
    _, _, printed = demo
    saved = json.loads((demo[0] / "summary.json").read_text())
    o = saved["objects"]
    assert o["model"] == "tth_deepsets.py"
    assert o["input_shapes"] == {"jets": [10, 6], "event": [4]}
    assert o["same_validation_events"] and o["n_val"] == saved["n_val"]
    for key in ("auc_stream", "auc_memory"):
        assert 0.6 < o[key] < 0.99
    assert abs(o["auc_stream"] - o["auc_memory"]) < 0.05  # streamed and in memory learn alike
    # the comparison is reported as measured, whichever way it goes
    assert o["auc_flat"] == saved["auc_stream"]
    assert o["beats_flat"] == (o["auc_stream"] > saved["auc_stream"])
    at = o["signal_efficiency_at_cuts"]
    assert at["cuts"] == saved["cuts_signal_efficiency"]
    assert at["flat"] == saved["signal_efficiency"]["stream"]["cuts"]
    assert o["beats_cuts"] == (at["objects"] > at["cuts"])
    assert (demo[0] / "objects-stream" / "bundle" / "model.onnx").exists()
    assert f"AUC {o['auc_stream']:.3f} streamed" in printed and "objects, streamed" in printed


def test_printed_table_rounds_numbers_with_units(demo):
    _, s, printed = demo
    assert f"{s['auc_stream']:.3f}" in printed and f"{s['auc_stream']:.4f}" not in printed
    assert re.search(r"\d+(\.\d)?[kM]? events/s", printed)
    assert "sig. eff. at" in printed and "bkg. eff. 1%" in printed and "bkg. eff. 10%" in printed
    assert f"{100 * s['signal_efficiency']['stream']['0.1']:.1f}%" in printed
    assert f"signal efficiency {100 * s['cuts_signal_efficiency']:.1f}%" in printed
    assert "a single working point" in printed
    assert "KS p-value" in printed
    assert re.search(r"streamed training \d+\.\d s", printed)
    assert "3/3 query types matched" in printed


def test_report_reads_like_a_physics_note(demo):
    out, s, _ = demo
    page = render((out / "report.html").as_uri(), out / "report.png")
    text = page["text"]
    assert "ttH" in page["title"]
    assert "after selection" not in text and "no event selection applied" in text
    assert f"{s['auc_stream']:.3f}" in text and f"{s['auc_stream']:.4f}" not in text
    # the efficiency table: a column per background efficiency, the cuts as a working point
    assert "εS at εB = 1%" in text and "εS at εB = 10%" in text
    eff = s["signal_efficiency"]["memory"]
    assert f"{100 * eff['0.01']:.1f}%" in text and f"{100 * eff['0.1']:.1f}%" in text
    assert (
        f"working point: εS = {100 * s['cuts_signal_efficiency']:.1f}%, "
        f"εB = {100 * s['cuts_background_efficiency']:.1f}%"
    ) in text
    # the overtraining check, with its p-values
    assert "KS p-value, signal" in text and "KS p-value, background" in text
    assert "Kolmogorov–Smirnov" in text
    assert re.search(r"\d+(\.\d)?k events/s", text)
    assert "m(bb)" in text and "125 GeV" in text

    alts = [i["alt"] for i in page["images"]]
    assert alts == FIGURES
    assert all(i["complete"] and i["w"] > 300 and i["h"] > 200 for i in page["images"])
    assert (out / "report.png").stat().st_size > 50_000


def test_report_figures_are_valid_embedded_pngs(demo):
    from PIL import Image

    out, _, _ = demo
    html = (out / "report.html").read_text()
    blobs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html)
    assert [alt for alt, _ in blobs] == FIGURES
    for alt, b64 in blobs:
        data = base64.b64decode(b64)
        assert data[:8] == b"\x89PNG\r\n\x1a\n", alt
        img = Image.open(io.BytesIO(data))
        img.verify()
        assert img.size[0] > 300 and img.size[1] > 200, alt
    # the input-variable panel is a 2 x 2 grid: wider and taller than a single plot
    sizes = {alt: Image.open(io.BytesIO(base64.b64decode(b))).size for alt, b in blobs}
    assert sizes["Input variables"][0] > 1.5 * sizes["Loss curves"][0]
    assert Image.open(out / "roc.png").size == sizes["ROC curves"]


def test_uncertainties_yields_and_the_object_models_overtraining_check(demo):
    """Issue 23, item 8: bootstrap uncertainties, weighted yields with S/√B, the object model's KS check."""
    from mlaas4hep.demo.physics import LUMINOSITY_FB, XSEC_PB

    saved = json.loads((demo[0] / "summary.json").read_text())
    unc = saved["uncertainty"]
    assert set(unc) == {"stream", "memory", "objects_stream", "objects_memory"}
    for u in unc.values():
        assert 0.001 < u["auc"] < 0.05
        assert 0.0 < u["0.01"] < 0.1 and 0.0 < u["0.1"] < 0.1
    y = saved["yields"]
    assert y["luminosity_fb"] == LUMINOSITY_FB == 138.0 and y["xsec_pb"] == XSEC_PB
    lumi_pb = 1000 * LUMINOSITY_FB
    for key, eff in (
        ("stream", saved["signal_efficiency"]["stream"]),
        ("objects_stream", saved["objects"]["signal_efficiency"]["stream"]),
    ):
        for b in ("0.01", "0.1"):
            r = y[key][b]
            assert r["S"] == pytest.approx(XSEC_PB["ttH"] * lumi_pb * eff[b])
            assert r["B"] == pytest.approx(XSEC_PB["ttbar"] * lumi_pb * float(b))
            assert r["S_over_sqrt_B"] == pytest.approx(r["S"] / r["B"] ** 0.5)
            assert r["S_unc"] == pytest.approx(XSEC_PB["ttH"] * lumi_pb * unc[key][b])
    cuts = y["cuts"]
    assert cuts["S"] == pytest.approx(XSEC_PB["ttH"] * lumi_pb * saved["cuts_signal_efficiency"])
    assert cuts["B"] == pytest.approx(XSEC_PB["ttbar"] * lumi_pb * saved["cuts_background_efficiency"])
    assert "Deep Sets streamed signal" in demo[2]  # the printed overtraining check has it too
    ot = saved["overtraining"]["objects"]
    for cls in ("signal", "background"):
        assert 0.0 <= ot[f"ks_p_{cls}"] <= 1.0 and 0.0 < ot[f"ks_d_{cls}"] < 1.0


def test_report_has_every_model_uncertainties_and_yields(demo):
    out, s, _ = demo
    page = (out / "report.html").read_text()
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    # the Deep Sets network is on the ROC figure, with the flat network and the cuts
    caption = re.search(r"<b>ROC curves\.</b>(.*?)</figcaption>", page, re.S).group(1)
    assert f"Deep Sets, streamed (AUC {s['objects']['auc_stream']:.3f})" in caption
    assert f"flat network, streamed (AUC {s['auc_stream']:.3f})" in caption
    assert "background rejection 1/ε" in caption and "log scale" in caption
    # AUC and efficiencies with their uncertainties
    u = s["uncertainty"]["stream"]
    assert f"{s['auc_stream']:.3f} ± {u['auc']:.3f}" in text
    eff = s["signal_efficiency"]["stream"]["0.1"]
    assert f"{100 * eff:.1f}% ± {100 * u['0.1']:.1f}%" in text
    # expected yields and S/√B
    assert "Expected yields" in text and "S/√B" in text and "138 fb" in text
    r = s["yields"]["stream"]["0.1"]
    assert f"{r['S_over_sqrt_B']:.2f} ± {r['S_over_sqrt_B_unc']:.2f}" in text
    # the object model's overtraining check, and no doubled phrase
    assert "object-level (Deep Sets), streamed" in re.search(
        r'<table id="overtraining">(.*?)</table>', page, re.S
    ).group(1)
    assert "Object-level network: object-level network" not in text
    assert "Object-level network (tth_deepsets.py" in text
