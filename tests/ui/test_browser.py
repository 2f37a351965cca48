"""Browser test: launch the app, run the logit lens in headless Chromium, check the heatmap."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.real]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    from explorer.config import Settings
    from explorer.models.loading import load_model
    from explorer.ui.app import CSS, build_demo

    db = tmp_path_factory.mktemp("ui") / "ui.duckdb"
    settings = Settings.from_env(db_path=db, port=free_port())
    load_model(settings.default_model, settings=settings)
    demo = build_demo(settings)
    demo.queue().launch(
        server_name="127.0.0.1",
        server_port=settings.port,
        prevent_thread_lock=True,
        css=CSS,
        enable_monitoring=False,
    )
    yield f"http://127.0.0.1:{settings.port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make setup` installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def screenshot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("EXPLORER_SCREENSHOT_DIR", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_lens_heatmap_renders(app_url, browser, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(app_url)
    page.get_by_label("Prompt").first.fill("The capital of France is")
    page.get_by_role("button", name="Run logit lens").click()
    page.wait_for_selector("#lens-heatmap .js-plotly-plot", timeout=180_000)
    page.wait_for_function(
        "() => { const el = document.querySelector('#lens-heatmap .js-plotly-plot');"
        " return el && el._fullData && el._fullData[0] && el._fullData[0].z; }",
        timeout=60_000,
    )
    shape = page.evaluate(
        "() => { const z = document.querySelector('#lens-heatmap .js-plotly-plot')._fullData[0].z;"
        " return [z.length, z[0].length]; }"
    )
    assert shape == [31, 5]  # 30 layers + embeddings, 5 prompt tokens
    top = page.evaluate(
        "() => document.querySelector('#lens-heatmap .js-plotly-plot')._fullData[0].text[30][4]"
    )
    assert top.strip() == "Paris"
    assert page.get_by_text("Next-token prediction").count() >= 1
    page.screenshot(path=str(screenshot_dir(tmp_path) / "lens.png"), full_page=True)
    page.close()


def test_empty_prompt_shows_error(app_url, browser) -> None:
    page = browser.new_page()
    page.goto(app_url)
    page.get_by_role("button", name="Run logit lens").click()
    page.get_by_text("the prompt is empty").first.wait_for(timeout=30_000)
    page.close()


def test_attention_tab_renders_head_heatmap(app_url, browser, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(app_url)
    page.get_by_role("tab", name="Attention").click()
    page.locator("textarea:visible").first.fill("The capital of France is Paris.")
    page.get_by_role("button", name="Run attention").click()
    page.wait_for_function(
        "() => { const el = document.querySelector('#attention-head .js-plotly-plot');"
        " return el && el._fullData && el._fullData[0] && el._fullData[0].z; }",
        timeout=180_000,
    )
    rows = page.evaluate(
        "() => { const el = document.querySelector('#attention-head .js-plotly-plot');"
        " const t = el._fullData.find(d => d.type === 'heatmap'); const z = t.z;"
        " return Array.from(z, r => Array.from(r).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0)); }"
    )
    assert len(rows) >= 5
    assert all(abs(r - 1.0) < 1e-3 for r in rows), rows
    page.screenshot(path=str(screenshot_dir(tmp_path) / "attention.png"), full_page=True)
    page.close()
