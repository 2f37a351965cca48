"""Browser test: a picture of a red circle and a blue square into the demo VLM, in the Logit lens tab."""

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def vlm_app_url(tmp_path_factory: pytest.TempPathFactory):
    from explorer.backends.vlm import load_vlm
    from explorer.config import Settings
    from explorer.ui.app import CSS, build_demo

    db = tmp_path_factory.mktemp("ui-vlm") / "ui.duckdb"
    settings = Settings.from_env(db_path=db, port=_free_port())
    load_vlm("tiny-vlm", settings=settings)
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


def test_vlm_example_shows_the_patch_lens(vlm_app_url, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make setup` installs Debian's chromium")
    shots = Path(os.environ.get("EXPLORER_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.goto(vlm_app_url)
        page.wait_for_selector("button[role=tab]", timeout=60_000)
        page.get_by_text("What is in the picture?").first.click()  # the red circle + blue square example
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('textarea')).some(t => t.value === 'What is in the picture?')",
            timeout=30_000,
        )
        page.get_by_role("button", name="Run logit lens").click()
        page.wait_for_function(
            "() => { const el = document.querySelector('#lens-patches .js-plotly-plot');"
            " return el && el._fullData && el._fullData.some(d => d.type === 'heatmap' && d.z); }",
            timeout=300_000,
        )
        info = page.evaluate(
            "() => { const el = document.querySelector('#lens-patches .js-plotly-plot');"
            " const h = el._fullData.find(d => d.type === 'heatmap');"
            " return {rows: h.z.length, cols: h.z[0].length, w: el.offsetWidth, h: el.offsetHeight,"
            " steps: (el.layout.sliders && el.layout.sliders[0].steps || []).length}; }"
        )
        assert (info["rows"], info["cols"]) == (8, 8)
        assert info["w"] > 200 and info["h"] > 200, info
        assert info["steps"] == 31  # the layer slider: 30 blocks + the embeddings
        surf = page.evaluate(
            "() => { const el = document.querySelector('#lens-surfacing .js-plotly-plot');"
            " return el ? [el.offsetWidth, el.offsetHeight, el._fullData.length] : null; }"
        )
        assert surf is not None and surf[0] > 200 and surf[1] > 200 and surf[2] == 3, surf
        assert page.get_by_text("on the image tokens").count() >= 1
        assert page.get_by_text("visual)").count() >= 1
        page.screenshot(path=str(shots / "vlm-lens.png"), full_page=True)
        browser.close()
