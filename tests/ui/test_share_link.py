"""Share links: `/?run=ID&tab=runs_tab&view=FIGURE` opens that run and figure in a fresh browser."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_shared_link_opens_the_run_and_view(tiny_llama, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from explorer import api
    from explorer.config import Settings
    from explorer.ui.app import launch

    db = tmp_path / "share.duckdb"
    run = api.logit_lens(tiny_llama, "share this run", targets=["cat"], db=db)
    settings = Settings.from_env(db_path=db, port=_free_port())
    demo = launch(settings, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"http://127.0.0.1:{settings.port}/?run={run.run_id}&tab=runs_tab&view=tracked")
            page.wait_for_selector("#runs-plot .js-plotly-plot", timeout=120_000)
            link = page.locator("#runs-share textarea, #runs-share input").first
            page.wait_for_function(
                "() => { const el = document.querySelector('#runs-share textarea, #runs-share input');"
                " return el && el.value.includes('run='); }",
                timeout=60_000,
            )
            value = link.input_value()
            assert f"run={run.run_id}" in value and "view=tracked" in value
            assert page.get_by_role("tab", name="Runs", selected=True).count() == 1
            # a link to a run that does not exist says so, without a traceback
            page.goto(f"http://127.0.0.1:{settings.port}/?run=nope")
            page.get_by_text("Cannot open the shared run").wait_for(timeout=60_000)
            browser.close()
    finally:
        demo.close()


def test_every_result_panel_has_a_share_link(tiny_llama, tmp_path: Path) -> None:
    """Each export row of every tab has a "Link" button; it gives the run's URL on the visitor's host
    (behind a proxy too), and says why when there is no stored run to link to."""
    from types import SimpleNamespace

    import gradio as gr

    from explorer import api
    from explorer.config import Settings
    from explorer.ui.app import build_demo
    from explorer.ui.runs_tab import TAB_ID
    from explorer.ui.share import result_link

    demo = build_demo(Settings.from_env(db_path=tmp_path / "links.duckdb"))
    labels = [b.value for b in demo.blocks.values() if isinstance(b, gr.Button)]
    # every export row (one PNG button each, the Runs tab's included) has a Link button, and so has
    # the Compare tab's comparison
    assert labels.count("Link") == labels.count("PNG") + 1 > 10
    run = api.logit_lens(tiny_llama, "link me", db=tmp_path / "links.duckdb")
    request = SimpleNamespace(
        headers={"x-forwarded-host": "user-space.hf.space", "x-forwarded-proto": "https"}
    )
    link = result_link(run, "tracked", request)  # type: ignore[arg-type]
    assert link == f"https://user-space.hf.space/?run={run.run_id}&tab={TAB_ID}&view=tracked"
    with pytest.raises(gr.Error, match="nothing to link"):
        result_link(None, "tracked", request)  # type: ignore[arg-type]
    unstored = api.logit_lens(tiny_llama, "not stored", db=False)
    with pytest.raises(gr.Error, match="not stored"):
        result_link(unstored, "tracked", request)  # type: ignore[arg-type]


def test_comparison_link_reopens_the_comparison(tiny_llama, tmp_path: Path) -> None:
    """`/?run=A&compare=B&tab=compare_tab&view=VIEW` opens the Compare tab on that comparison, with
    its difference view, and the comparison's own Link box holds the same URL (screenshot saved)."""
    from playwright.sync_api import sync_playwright

    from explorer import api
    from explorer.config import Settings
    from explorer.ui.app import launch

    db = tmp_path / "compare-link.duckdb"
    run_a = api.logit_lens(tiny_llama, "The cat sat on the mat", db=db)
    run_b = api.logit_lens(tiny_llama, "The dog sat on the mat", db=db)
    settings = Settings.from_env(db_path=db, port=_free_port())
    demo = launch(settings, prevent_thread_lock=True, quiet=True)
    shots = Path(os.environ.get("EXPLORER_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            url = (
                f"http://127.0.0.1:{settings.port}/?run={run_a.run_id}&compare={run_b.run_id}&tab=compare_tab"
            )
            page.goto(url + "&view=next_log_rank_delta")
            page.wait_for_selector("#compare-diff .js-plotly-plot", timeout=120_000)
            page.wait_for_selector("#compare-plot-b .js-plotly-plot", timeout=60_000)
            assert page.get_by_role("tab", name="Compare", selected=True).count() == 1
            page.wait_for_function(
                "() => { const el = document.querySelector('#compare-share textarea, #compare-share input');"
                " return el && el.value.includes('compare='); }",
                timeout=60_000,
            )
            value = page.locator("#compare-share textarea, #compare-share input").first.input_value()
            assert f"run={run_a.run_id}" in value and f"compare={run_b.run_id}" in value
            assert "tab=compare_tab" in value and "view=next_log_rank_delta" in value
            page.screenshot(path=str(shots / "compare_share_link.png"), full_page=True)
            # a comparison link to a missing run says so on the Compare tab
            page.goto(f"http://127.0.0.1:{settings.port}/?run={run_a.run_id}&compare=nope&tab=compare_tab")
            page.get_by_text("Cannot open the shared comparison").wait_for(timeout=60_000)
            browser.close()
    finally:
        demo.close()
