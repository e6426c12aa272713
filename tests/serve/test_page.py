"""The web page in a real headless browser (Debian chromium driven by Playwright)."""

from __future__ import annotations

import shutil

import pytest

from mlaas4hep.serve.archive import pack_directory

from .conftest import HTTP

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


def test_page_lists_models_predicts_and_uploads(browser, server, tth_bundle, tmp_path):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/", timeout=15_000)
    row = page.locator("tr.model-row[data-name='tth']")
    row.wait_for(timeout=10_000)
    text = row.inner_text()
    assert "tth" in text and "ttbar, ttH" in text and "32 features" in text and "auc=0.5" in text
    assert "MET_pt" in text  # raw inputs listed
    assert page.locator("#status").inner_text() == "1 model(s) in the repository"
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # try-it: one feature row; the page shows the same probabilities as onnxruntime in process
    x = tth_bundle.x[7]
    page.fill("#try-values", "[" + ",".join(repr(float(v)) for v in x) + "]")
    page.click("#try-submit")
    page.locator("#try-result.ok").wait_for(timeout=10_000)
    p = float(tth_bundle.predictor.predict(x[None, :])[0, 0])
    result = page.locator("#try-result").inner_text()
    assert f"ttH: {p:.6f}" in result and f"ttbar: {1 - p:.6f}" in result

    # upload through the form: without a token refused, with the token installed as a new version
    archive = tmp_path / "tth.tar.gz"
    archive.write_bytes(pack_directory(tth_bundle.path))
    page.set_input_files("#upload-file", str(archive))
    page.click("#upload button")
    page.locator("#upload-result.err").wait_for(timeout=10_000)
    assert "needs 'Authorization: Bearer" in page.locator("#upload-result").inner_text()
    page.fill("#upload-token", server.token)
    page.click("#upload button")
    page.locator("#upload-result.ok").wait_for(timeout=15_000)
    assert page.locator("#upload-result").inner_text() == "installed tth version 2"
    page.wait_for_function(
        "document.querySelector(\"tr[data-name='tth']\").innerText.includes('1, 2')", timeout=10_000
    )
    assert errors == []
    page.close()
    # leave the shared server as it was
    r = HTTP.delete(server.url + "/delete/tth?version=2", headers=server.admin)
    assert r.status_code == 200
