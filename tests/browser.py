"""Headless Chromium (Debian's, driven by Playwright) for tests of pages and reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: 'make test' installs Debian's chromium")
    return path


def render(url: str, screenshot: Path, width: int = 1280, height: int = 900) -> dict:
    """Load ``url``, save a full-page screenshot, and report the page's title, text and images."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="load", timeout=30_000)
            page.screenshot(path=str(screenshot), full_page=True)
            images = page.evaluate(
                "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))"
            )
            return {"title": page.title(), "text": page.inner_text("body"), "images": images}
        finally:
            browser.close()
