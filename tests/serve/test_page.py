"""The web page in a real headless browser (Debian chromium driven by Playwright), on a real server.

What a user of the page relies on: the model list says whether each model is
loaded and which versions exist; unload, load and delete work from the page
(with the token, and say so clearly without it); the raw-branch example is a
plausible event built from the model's normalisation constants and predicts
what the oracle (:mod:`.oracle`) computes from the bundle's files; an upload refreshes the list, clears the
file input and leaves no stale selection.
"""

from __future__ import annotations

import json
import re
import shutil

import awkward as ak
import pytest

from mlaas4hep.bundle_archive import pack_directory

from .conftest import HTTP, TOKEN, ServerProcess, install_copy
from .oracle import ATOL, Oracle

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which("chromium") and not shutil.os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page_server(tth_bundle, tmp_path_factory):
    """A server of its own (the page changes the repository): ``tth`` version 1, with a token."""
    repo = tmp_path_factory.mktemp("page") / "repo"
    repo.mkdir()
    install_copy(repo, tth_bundle.path, "tth")
    srv = ServerProcess(repo).start()
    yield srv
    srv.stop()


@pytest.fixture
def page(browser, page_server):
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: d.accept())  # the delete confirmation
    pg.goto(page_server.url + "/", timeout=15_000)
    pg.locator("tr.model-row[data-name='tth']").wait_for(timeout=10_000)
    yield pg
    pg.close()
    assert errors == []


#: The page shows probabilities with 6 decimals (half a unit: 5e-7), the oracle agrees within ATOL.
SHOWN = 5e-7 + ATOL


def _shown(result: str, label: str) -> float:
    """The probability the page shows for ``label`` (``"ttH: 0.123456"``)."""
    m = re.search(rf"\b{label}: ([0-9.]+)", result)
    assert m, f"no {label!r} in {result!r}"
    return float(m.group(1))


def _row(page, name: str):
    return page.locator(f"tr.model-row[data-name='{name}']")


def _wait_state(page, name: str, text: str) -> None:
    page.wait_for_function(
        "([n, t]) => { const r = document.querySelector(`tr.model-row[data-name='${n}'] td.state`);"
        " return r && r.innerText.startsWith(t); }",
        arg=[name, text],
        timeout=20_000,
    )


def test_page_lists_models_and_predicts(page, page_server, tth_bundle, tmp_path):
    text = _row(page, "tth").inner_text()
    assert "tth" in text and "ttbar, ttH" in text and "32 features" in text and "auc=0.5" in text
    assert "MET_pt" in text  # raw inputs listed
    assert page.locator("#status").inner_text() == "1 model(s) in the repository"
    assert "needs the token" in page.locator("#auth-mode").inner_text()
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # try-it: one feature row; the page shows the same probabilities as onnxruntime in process
    x = tth_bundle.x[7]
    page.fill("#try-values", "[" + ",".join(repr(float(v)) for v in x) + "]")
    page.click("#try-submit")
    page.locator("#try-result.ok").wait_for(timeout=10_000)
    p = float(tth_bundle.oracle.score(x[None, :])[0, 0])
    result = page.locator("#try-result").inner_text()
    assert _shown(result, "ttH") == pytest.approx(p, abs=SHOWN) and _shown(result, "ttbar") == pytest.approx(
        1 - p, abs=SHOWN
    )
    # a prediction loads the model
    page.reload()
    _wait_state(page, "tth", "loaded (version 1)")


def test_raw_example_is_a_plausible_event(page, tth_bundle):
    page.check("input[name='mode'][value='raw']")
    event = json.loads(page.input_value("#try-values"))
    pre = tth_bundle.oracle.preprocessing
    assert list(event) == tth_bundle.oracle.raw_inputs
    # jagged branches: a few jets, leading first, each inside the training range; nJet counts them
    jets = event["Jet_pt"]
    assert 1 <= len(jets) <= 6 and jets == sorted(jets, reverse=True)
    assert event["nJet"] == len(jets)
    for name, values in event.items():
        if name == "nJet":
            continue
        lo = pre["offset"][name]
        hi = lo + 1 / pre["scale"][name]
        for v in values if isinstance(values, list) else [values]:
            assert lo <= v <= hi, (name, v, lo, hi)
    # flat branches sit mid-range
    span = 1 / pre["scale"]["MET_pt"]
    assert event["MET_pt"] == pytest.approx(pre["offset"]["MET_pt"] + 0.5 * span, abs=0.01 * span)

    page.click("#try-submit")
    page.locator("#try-result.ok").wait_for(timeout=10_000)
    raw = {k: ak.Array([v]) for k, v in event.items()}
    p = float(tth_bundle.oracle.score_raw(raw)[0, 0])
    assert _shown(page.locator("#try-result").inner_text(), "ttH") == pytest.approx(p, abs=SHOWN)


def test_unload_load_and_delete_need_the_token(page, page_server, tth_bundle, tmp_path):
    row = _row(page, "tth")
    # without the token: refused, with a message that says why; the model stays as it was
    row.locator("button.unload").click()
    page.locator("#action-result.err").wait_for(timeout=10_000)
    assert "unload tth failed" in page.locator("#action-result").inner_text()
    assert "Bearer" in page.locator("#action-result").inner_text()
    assert not _row(page, "tth").locator("td.state").inner_text().startswith("not loaded")

    page.fill("#token", page_server.token)
    _row(page, "tth").locator("button.unload").click()
    _wait_state(page, "tth", "not loaded")
    assert page.locator("#action-result").inner_text().startswith("unloaded tth")
    # the server agrees: an unloaded model refuses requests
    r = HTTP.get(page_server.url + "/v2/models/tth/ready")
    assert r.status_code == 400

    _row(page, "tth").locator("button.load").click()
    _wait_state(page, "tth", "loaded")
    assert page.locator("#action-result").inner_text() == "loaded tth"
    assert HTTP.get(page_server.url + "/v2/models/tth/ready").status_code == 200

    # a second version by upload, then delete just that version from the page
    archive = tmp_path / "tth.tar.gz"
    archive.write_bytes(pack_directory(tth_bundle.path))
    r = HTTP.post(
        page_server.url + "/upload",
        content=archive.read_bytes(),
        headers={**page_server.admin, "Content-Type": "application/gzip"},
    )
    assert r.status_code == 200, r.text
    page.reload()
    page.fill("#token", page_server.token)
    assert _row(page, "tth").locator("td.versions").inner_text() == "1, 2"
    _row(page, "tth").locator("select.delete-version").select_option("2")
    _row(page, "tth").locator("button.delete").click()
    page.wait_for_function(
        "document.querySelector(\"tr[data-name='tth'] td.versions\").innerText === '1'", timeout=10_000
    )
    assert page.locator("#action-result").inner_text() == "deleted tth version 2"
    assert [v["version"] for v in HTTP.get(page_server.url + "/v2/repository/index").json()] == ["1"]


def test_a_click_right_after_typing_the_token_is_not_lost(page, page_server):
    # Leaving the token field refreshes the list. A user who types the token and clicks a button
    # presses the mouse (the field loses focus, the refresh starts) and releases it after the
    # refresh came back: the button must still be the one pressed, or the click never happens.
    page.fill("#token", page_server.token)
    box = _row(page, "tth").locator("button.unload").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    with page.expect_response(lambda r: r.url.endswith("/v2/repository/index"), timeout=10_000):
        page.mouse.down()
    page.wait_for_timeout(300)  # the page renders what came back
    page.mouse.up()
    _wait_state(page, "tth", "not loaded")
    assert page.locator("#action-result").inner_text().startswith("unloaded tth")

    # a refresh that does change the list keeps the version chosen for deletion
    _row(page, "tth").locator("select.delete-version").select_option("1")
    r = HTTP.post(page_server.url + "/v2/repository/models/tth/load", headers=page_server.admin)
    assert r.status_code == 200, r.text
    page.evaluate("loadModels()")
    assert not _row(page, "tth").locator("td.state").inner_text().startswith("not loaded")
    assert _row(page, "tth").locator("select.delete-version").input_value() == "1"


def test_upload_refreshes_the_list_and_clears_the_form(page, page_server, tth_bundle, tmp_path):
    archive = tmp_path / "tth.tar.gz"
    archive.write_bytes(pack_directory(tth_bundle.path))
    # without a token: refused, the file stays chosen to retry
    page.set_input_files("#upload-file", str(archive))
    page.click("#upload-submit")
    page.locator("#upload-result.err").wait_for(timeout=10_000)
    assert "upload failed" in page.locator("#upload-result").inner_text()
    assert "Bearer" in page.locator("#upload-result").inner_text()
    assert page.evaluate("document.getElementById('upload-file').files.length") == 1

    page.fill("#token", page_server.token)
    page.click("#upload-submit")
    page.wait_for_function(
        "document.getElementById('upload-result').innerText.startsWith('installed')", timeout=15_000
    )
    assert page.locator("#upload-result").get_attribute("class") == "ok"
    assert page.locator("#upload-result").inner_text() == "installed tth version 2"
    assert page.evaluate("document.getElementById('upload-file').files.length") == 0
    assert page.evaluate("document.getElementById('upload-file').value") == ""
    assert _row(page, "tth").locator("td.versions").inner_text() == "1, 2"
    assert page.input_value("#try-model") == "tth"

    # delete the whole model: the list, the model selector and the result pane hold nothing stale
    page.fill("#try-values", json.dumps(tth_bundle.x[0].tolist()))
    page.click("#try-submit")
    page.locator("#try-result.ok").wait_for(timeout=10_000)
    _row(page, "tth").locator("select.delete-version").select_option("")
    _row(page, "tth").locator("button.delete").click()
    page.wait_for_function(
        "document.getElementById('status').innerText === '0 model(s) in the repository'", timeout=10_000
    )
    assert page.locator("#action-result").inner_text() == "deleted tth version 1, 2"
    assert _row(page, "tth").count() == 0
    assert page.locator("#try-model option").count() == 0
    assert page.locator("#try-result").inner_text() == ""
    assert page.input_value("#try-values") == ""

    # and upload again: the repository is as the other tests found it
    page.set_input_files("#upload-file", str(archive))
    page.click("#upload-submit")
    page.locator("#upload-result.ok").wait_for(timeout=15_000)
    assert page.locator("#upload-result").inner_text().startswith("installed tth version")
    # the result shows before the page has listed the models again and selected the new one
    page.wait_for_function("document.getElementById('try-model').value === 'tth'", timeout=10_000)


@pytest.fixture(scope="module")
def grouped_page(browser, tmp_path_factory):
    """A page on a server of a grouped bundle with preprocessing (jets and event groups; raw branches)."""
    from mlaas4hep import bundle

    from .test_multi_input import grouped_onnx
    from .test_multi_input_raw import preprocessor

    path = tmp_path_factory.mktemp("grouped-page") / "bundle"
    bundle.write(path, grouped_onnx(), preprocessor(), ["bkg", "sig"], name="rawgrouped", framework="onnx")
    repo = path.parent / "repo"
    repo.mkdir()
    install_copy(repo, path, "rawgrouped")
    srv = ServerProcess(repo).start()
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(srv.url + "/", timeout=15_000)
    _row(pg, "rawgrouped").wait_for(timeout=10_000)
    yield pg, Oracle(path)
    pg.close()
    srv.stop()
    assert errors == []


def test_grouped_model_gets_a_raw_branch_example_that_predicts(grouped_page):
    page, oracle = grouped_page
    # the row names the model's tensors, not a feature count
    assert "jets [-1, 4, 3], jets_mask [-1, 4], event [-1, 2]" in _row(page, "rawgrouped").inner_text()
    # no flat feature row is offered (the server refuses one with 400): the raw mode is chosen
    assert page.is_disabled("input[name='mode'][value='features']")
    assert page.is_checked("input[name='mode'][value='raw']")
    event = json.loads(page.input_value("#try-values"))
    assert list(event) == oracle.raw_inputs
    assert 1 <= len(event["Jet_pt"]) <= 4 and event["Jet_pt"] == sorted(event["Jet_pt"], reverse=True)
    # standard normalisation: a flat branch sits at its mean
    assert event["MET_pt"] == pytest.approx(40.0, abs=0.5) and event["HT"] == pytest.approx(200.0, abs=2)

    page.click("#try-submit")
    page.locator("#try-result.ok").wait_for(timeout=10_000)
    raw = {k: [v] for k, v in event.items()}
    p = float(oracle.score_raw(raw)[0, 0])
    result = page.locator("#try-result").inner_text()
    assert _shown(result, "sig") == pytest.approx(p, abs=SHOWN)
    assert _shown(result, "bkg") == pytest.approx(1 - p, abs=SHOWN)


def test_page_lists_the_jobs_of_the_token_holder(browser, page_server, data_dir, tmp_path):
    """With --jobs the page lists the jobs with their state (after the token is given); without, no section."""
    from mlaas4hep.client import Client

    from .jobs_helpers import sgd_model, train_config

    pg = browser.new_page()
    try:
        pg.goto(page_server.url + "/", timeout=15_000)
        pg.locator("tr.model-row[data-name='tth']").wait_for(timeout=10_000)
        assert pg.locator("#jobs-section").is_hidden()
    finally:
        pg.close()
    repo = tmp_path / "repo"
    repo.mkdir()
    srv = ServerProcess(repo, "--jobs", "--data-dir", str(data_dir)).start()
    pg = browser.new_page()
    try:
        cfg = train_config(data_dir, tmp_path / "train.yaml")
        cfg.write_text(cfg.read_text().replace("branches:", "branchez:"))
        with Client(srv.url, token=TOKEN) as c:
            job = c.wait(c.submit(cfg, sgd_model(), name="typo")["id"], 60, 0.3)
        pg.goto(srv.url + "/", timeout=15_000)
        pg.locator("#jobs-status").wait_for(timeout=10_000)
        pg.wait_for_function(
            "() => document.querySelector('#jobs-status').innerText.startsWith('enter your token')"
        )
        assert pg.locator("#jobs-status").inner_text() == (
            "enter your token to see your jobs (jobs need 'Authorization: Bearer <token>')"
        )
        pg.fill("#token", TOKEN)
        pg.dispatch_event("#token", "change")
        row = pg.locator(f"tr.job-row[data-id='{job['id']}']")
        row.wait_for(timeout=10_000)
        cells = row.locator("td").all_inner_texts()
        assert cells[:4] == [job["id"], "typo", "admin", "failed"]
        assert cells[5] == job["error"] and cells[5].startswith("train.yaml, line ")
    finally:
        pg.close()
        srv.stop()
