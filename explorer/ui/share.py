"""Share links: every stored run has a URL, `/?run=ID&tab=runs_tab&view=FIGURE`, that opens it, and
every comparison one, `/?run=A&compare=B&tab=compare_tab&view=DIFFERENCE`.

The Runs tab reads the query parameters on page load (see `runs_tab`); every result panel's
export row has a "Link" button that shows its link in a box with a copy button.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import gradio as gr

RUNS_TAB_ID = "runs_tab"  # the Runs tab's id in the app: share links select it
COMPARE_TAB_ID = "compare_tab"  # the Compare tab's id: comparison links select it


def share_link(request: gr.Request | None, run_id: str, view: str | None = None) -> str:
    """The URL that reopens `run_id` (and figure `view`) on the Runs tab, on the host the visitor used."""
    query = {"run": run_id, "tab": RUNS_TAB_ID, **({"view": view} if view else {})}
    return f"{_origin(request)}/?{urlencode(query)}"


def _origin(request: gr.Request | None) -> str:
    headers = getattr(request, "headers", None) or {}
    host = headers.get("x-forwarded-host") or headers.get("host") or "127.0.0.1:7860"
    scheme = headers.get("x-forwarded-proto") or "http"
    return f"{scheme}://{host}"


def compare_link(request: gr.Request | None, run_a: str, run_b: str, view: str | None = None) -> str:
    """The URL that reopens the comparison of `run_a` and `run_b` (and difference view `view`)
    on the Compare tab: `/?run=A&compare=B&tab=compare_tab&view=VIEW`."""
    query = {"run": run_a, "compare": run_b, "tab": COMPARE_TAB_ID, **({"view": view} if view else {})}
    return f"{_origin(request)}/?{urlencode(query)}"


def result_link(result: Any, figure: str, request: gr.Request | None) -> str:
    """The share link of a result panel's figure; a clear message when there is none yet."""
    if result is None:
        raise gr.Error("Run an analysis first: there is nothing to link to yet.")
    run_id = getattr(result, "run_id", None)
    if not run_id:
        raise gr.Error("This result was not stored, so it has no link (the store is off).")
    return share_link(request, str(run_id), figure)


def link_controls(result_state: gr.State, figure: str | gr.State) -> gr.Textbox:
    """A "Link" button for one result panel and the box (with a copy button) it fills.
    `figure` is the figure's name, or a State holding it (a view that switches figures)."""
    button = gr.Button("Link", size="sm", min_width=60, elem_classes=["share-link-button"])
    box = gr.Textbox(
        label="Share link (opens this run and figure)",
        buttons=["copy"],
        interactive=False,
        visible=False,
        elem_classes=["share-link"],
    )

    if isinstance(figure, gr.State):

        def on_link_view(result: Any, name: str, request: gr.Request) -> Any:
            return gr.Textbox(value=result_link(result, name, request), visible=True)

        button.click(on_link_view, inputs=[result_state, figure], outputs=[box], api_visibility="private")
        return box

    def on_link(result: Any, request: gr.Request) -> Any:
        return gr.Textbox(value=result_link(result, figure, request), visible=True)

    button.click(on_link, inputs=[result_state], outputs=[box], api_visibility="private")
    return box
