"""`mlaas4hep demo` at a small size, reading through a real XRootD server, and its report in a browser."""

import json
import shutil

import pytest

from mlaas4hep.demo import run_demo
from mlaas4hep.localservers import public_dir

from ..browser import render


@pytest.fixture(scope="module")
def demo():
    out = public_dir("mlaas4hep-demo-")  # the xrootd user must reach the data
    summary = run_demo(out, events=4_000, files=1, epochs=2, remote=True, workers=0, show_progress=False)
    yield out, summary
    shutil.rmtree(out, ignore_errors=True)


def test_demo_summary(demo):
    out, _summary = demo
    saved = json.loads((out / "summary.json").read_text())
    for key in (
        "auc_stream",
        "auc_memory",
        "auc_cuts",
        "events_per_s_stream",
        "events_per_s_memory",
        "served_requests_ok",
    ):
        assert key in saved
    assert saved["remote"] is True
    assert saved["served_requests_ok"] is True
    assert saved["served"]["matched"] == saved["served"]["requests"] == 3
    for key in ("auc_stream", "auc_memory"):
        assert 0.65 < saved[key] < 0.95
    assert 0.6 < saved["auc_cuts"] < 0.85
    assert saved["events_per_s_stream"] > 0 and saved["events_per_s_memory"] > 0
    assert (out / "stream" / "bundle" / "model.onnx").exists()


def test_report_renders_with_images(demo):
    out, summary = demo
    page = render((out / "report.html").as_uri(), out / "report.png")
    assert "ttH" in page["title"]
    assert f"{summary['auc_stream']:.4f}" in page["text"]
    alts = [i["alt"] for i in page["images"]]
    assert alts == ["ROC curves", "Score distributions", "Loss curves", "Throughput"]
    assert all(i["complete"] and i["w"] > 300 and i["h"] > 200 for i in page["images"])
    assert (out / "report.png").stat().st_size > 50_000
