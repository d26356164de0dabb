"""The web chat page in headless Chromium (Debian's `chromium`, driven by Playwright): a reply streams in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (bash scripts/install-browser.sh)")
def test_chat_page_streams_a_reply(server_url: str, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 600})
            page.goto(server_url + "/")
            sync_api.expect(page.locator("#model")).to_contain_text("tiny")
            page.fill("#max-tokens", "40")
            page.fill("#input", "Hello there, model!")
            page.click("#send")
            reply = page.locator(".msg.assistant").first
            reply.wait_for(state="attached")
            page.wait_for_function(
                "() => document.querySelector('.msg.assistant')?.dataset.done === 'true'", timeout=30_000
            )
            page.screenshot(path=str(tmp_path / "chat.png"))
            text = reply.text_content() or ""
            chunks = int(reply.get_attribute("data-chunks") or 0)
            assert page.locator(".msg.user").first.text_content() == "Hello there, model!"
            assert page.locator(".msg.error").count() == 0
            assert text.strip() and chunks > 1  # the reply arrived in several streamed pieces
            assert (tmp_path / "chat.png").stat().st_size > 1000
        finally:
            browser.close()
