"""The app as a public Space meets it: bounded queue, expiring sessions, cancellable SQL, errors that
name no server facts (run against a real app on 127.0.0.1 through gradio_client)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("gradio_client")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SLOW = "SELECT count(*) FROM range(10000000000) t(i) WHERE hash(i) % 7 = 3"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gradio_client import Client

    from explorer.config import Settings
    from explorer.ui.app import launch

    db = tmp_path_factory.mktemp("hosting") / "runs.duckdb"
    settings = Settings.from_env(db_path=db, port=_free_port(), sql_timeout_s=2.0, queue_max_size=3)
    # _frontend=False: no HEAD probe of "/" at launch (it times out on a loaded machine); the
    # client below talks to the API only
    demo = launch(settings, prevent_thread_lock=True, quiet=True, _frontend=False)
    # generous HTTP timeouts: on a loaded machine the first /config alone can take over 5 s
    client = Client(f"http://127.0.0.1:{settings.port}/", verbose=False, httpx_kwargs={"timeout": 120})
    yield demo, client, settings
    demo.close()


def test_every_session_state_expires_and_temp_files_are_deleted(app) -> None:
    import gradio as gr

    demo, _, settings = app
    states = [b for b in demo.blocks.values() if isinstance(b, gr.State)]
    assert states and all(s.time_to_live == settings.session_ttl_s for s in states)
    boxes = [b for b in demo.blocks.values() if isinstance(b, gr.Textbox)]
    assert boxes and all(
        b.max_length is not None and b.max_length <= settings.max_prompt_chars for b in boxes
    )
    assert demo.delete_cache is not None and demo.delete_cache[1] == settings.temp_file_ttl_s


def test_queue_is_bounded(app) -> None:
    demo, client, settings = app
    assert demo._queue.max_size == settings.queue_max_size
    jobs = [client.submit(SLOW, api_name="/query_runs") for _ in range(12)]
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=300)
            outcomes.append("ok")
        except Exception as exc:  # noqa: BLE001 - we classify what the client saw
            outcomes.append(str(exc))
    assert any("Queue is full" in o for o in outcomes), outcomes  # refused at once, not queued forever
    assert any("longer than 2 s" in o for o in outcomes), outcomes  # the ones that ran were bounded


def test_sql_timeout_and_lone_surrogate_through_the_api(app) -> None:
    _, client, _ = app
    with pytest.raises(Exception, match="longer than 2 s"):
        client.predict(SLOW, api_name="/query_runs")
    with pytest.raises(Exception, match="surrogate"):
        client.predict("SELECT '\udcff'", api_name="/query_runs")
    with pytest.raises(Exception, match="not available in this console"):
        client.predict("SELECT path FROM duckdb_databases()", api_name="/query_runs")


def test_cancelled_sql_stops_burning_cpu(app) -> None:
    _, client, settings = app
    job = client.submit(SLOW, api_name="/query_runs")
    # cancel once the query is running: the process burns CPU (a fixed sleep can land before it starts)
    t0, deadline = time.process_time(), time.monotonic() + 30
    while time.process_time() - t0 < 1.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    job.cancel()
    time.sleep(1.5)  # the watchdog polls every 50 ms; gradio notices the cancel on its next check
    t0 = time.process_time()
    time.sleep(1.0)
    burnt = time.process_time() - t0
    assert burnt < 0.6, f"{burnt:.2f} CPU-s in 1 s after the cancel: the query kept running"


def test_model_errors_name_no_server_facts(app, monkeypatch, tmp_path: Path) -> None:
    _, client, _ = app
    monkeypatch.setenv("EXPLORER_ALLOWED_MODELS", "smollm2-135m,dinov2-small-focus")
    secret_dir = tmp_path / "present"
    secret_dir.mkdir()
    answers = []
    for model in [
        "/etc/passwd",
        str(secret_dir),
        str(tmp_path / "missing"),
        "some-org/some-model",
        "../../etc",
    ]:
        with pytest.raises(Exception) as info:
            # the Lens tab's inputs: image, prompt, targets, model, ..., metric, role, dtype
            client.predict(
                None,
                "hello",
                "",
                model,
                3,
                0,
                False,
                1.0,
                0,
                "prob",
                "final_top1",
                "auto",
                api_name="/logit_lens",
            )
        answers.append(str(info.value))
    for answer in answers:
        assert "is not an available model" in answer
        assert "exist" not in answer and "JSON" not in answer and str(tmp_path) not in answer
        assert "/etc" not in answer


def test_non_image_upload_names_no_server_path(app, tmp_path: Path) -> None:
    from gradio_client import handle_file

    _, client, _ = app
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    with pytest.raises(Exception) as info:
        client.predict(handle_file(str(fake)), "dinov2-small-focus", api_name="/attention_image")
    text = str(info.value)
    # Gradio refuses the file before any handler runs; the visitor sees its generic message, which
    # names no server path (the temp folder /tmp/gradio/<hash>/notes.png stays in the server log)
    assert "/tmp" not in text and "gradio/" not in text and "notes.png" not in text


def test_compare_tab_api(app, tiny_llama) -> None:
    from explorer import api

    _, client, settings = app
    a = api.logit_lens(tiny_llama, "compare one", db=settings.database)
    b = api.logit_lens(tiny_llama, "compare two", db=settings.database)
    out = client.predict(a.run_id, b.run_id, api_name="/compare_runs")
    shown = str(out)
    assert a.run_id in shown and b.run_id in shown and "aligned positions" in shown
    with pytest.raises(Exception, match="Choose two runs"):
        client.predict(a.run_id, "", api_name="/compare_runs")
