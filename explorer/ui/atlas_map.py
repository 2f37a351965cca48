"""Token atlas, section "Map of token states": UMAP / PCA of hidden states, layer slider, colours,
hover with context, lasso selection listing tokens, and one token's trajectory across layers."""

from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.analysis.atlas.projection import PCA_DIMS
from explorer.analysis.atlas.token_map import TokenMapResult
from explorer.api import atlas as atlas_api
from explorer.backends.sentence import SENTENCE_MODEL
from explorer.backends.vlm import EMBEDDED_VLMS
from explorer.models.loading import EMBEDDED_LMS
from explorer.plots import atlas as atlas_plots
from explorer.ui.common import UIContext, dtype_dropdown, export_controls, progress_fn, user_errors

BUILTIN_COLOURS = ["layer", "position", "token_type", "modality", "norm", "prompt"]
EXAMPLE = "The quick brown fox jumps over the lazy dog. Then, the dog sleeps; the fox runs away."
EXPLAIN = """Each point is one token's hidden state (the residual stream) at one layer. **All layers** fits
*one* map over every (layer, token) point, so the layer slider moves through one coordinate system and a
token's path across the layers is a trajectory on it. UMAP uses the **cosine** metric (residual norms grow with
depth; direction is compared). For speed the vectors are unit-normalised and reduced by PCA to 50 dimensions
before UMAP (Euclidean distance between unit vectors is √(2·cosine distance), so the neighbours are the cosine
ones; the summary says how much variance the 50 dimensions keep; 0 = exact cosine UMAP on the raw vectors).
PCA (of the unit-normalised vectors) is there for comparison. With an **image** (or the `tiny-vlm` model) the
prompt is asked about the image on a vision-language model and its visual tokens (`<img row,col>`) are points
too: colour by *modality*. *Colour by* also offers every stored run on the same input (lens rank, attribution,
pruning scores and kept/dropped tokens). A fitted map is stored with its run: the same request is served from
the store, never refitted. Lasso points (the map's default drag mode) and press *List selected* to list their
tokens."""

# Runs in the browser before `on_selection`: the lassoed points' indices replace the (hidden) text
# input; the state input is the server's own (Gradio takes stateful inputs from the session).
SELECTION_JS = """(state, text) => {
  const gd = document.querySelector('#atlas-map .js-plotly-plot');
  if (!gd || !gd.data) return [state, ''];
  const out = [];
  gd.data.forEach((t, k) => {
    const full = (gd._fullData || []).find(f => f.index === k);
    if (!t.selectedpoints || !full || !full.customdata) return;
    for (const i of t.selectedpoints) { const c = full.customdata[i]; if (c) out.push(c[0]); }
  });
  return [state, out.join(',')];
}"""


def summary_markdown(r: TokenMapResult) -> str:
    where = "all layers, one aligned fit" if r.layer_mode == "all" else f"layer {r.layer_mode}"
    lines = [
        f"**Run** `{r.run_id}` · model `{r.model}` · {r.method.upper()} of {r.n_points} points ({where}) · "
        f"{len(r.prompts)} prompt(s){' + an image (' + str(r.image) + ')' if r.image else ''} · fit {float(r.fit.get('fit_seconds', 0.0)):.1f} s · total {r.seconds:.1f} s"
    ]
    lines += [f"\n> ℹ️ {note}" for note in r.notes]
    return "\n".join(lines)


def map_view(
    colour: str | None, all_layers: bool, focus: float, trajectory: str | None, scores: dict[str, Any] | None
) -> dict[str, Any]:
    """The map's display choices from its controls ("p:pos" picks a token's trajectory)."""
    pi, pos = (int(v) for v in trajectory.split(":")) if trajectory else (0, None)
    return {
        "colour": colour or "layer",
        "layer": None if all_layers else int(focus),
        "trajectory": pos,
        "prompt_index": pi,
        "scores": scores or {},
    }


def trajectory_choices(r: TokenMapResult) -> list[tuple[str, str]]:
    out = [("none", "")]
    for pi, tokens in enumerate(r.tokens):
        prefix = f"p{pi} " if len(r.tokens) > 1 else ""
        out += [(f"{prefix}{pos}: {tok!r}", f"{pi}:{pos}") for pos, tok in enumerate(tokens)]
    return out


def rows_table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["prompt"], r["position"], r["layer"], r["token"], r["token_type"], r["context"]] for r in rows]


TABLE_HEADERS = ["prompt", "position", "layer", "token", "type", "context"]


def build(ctx: UIContext) -> None:
    state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, value=EXAMPLE)
            per_line = gr.Checkbox(value=False, label="Each line is a separate prompt (a small data set)")
            image = gr.Image(
                label="Image (optional: maps its visual tokens on a vision-language model)",
                type="pil",
                sources=["upload", "clipboard"],
                height=160,
                elem_id="atlas-map-image",
            )
            dataset = gr.File(
                label="Or a sweep's dataset: .jsonl/.csv/.parquet with a 'prompt' or 'question' column and an "
                "optional 'image' column (at most 200 rows, all mapped in one fit)",
                file_types=[".jsonl", ".json", ".csv", ".parquet"],
                type="filepath",
                height=80,
            )
        with gr.Column(scale=2):
            model = gr.Dropdown(
                choices=sorted(EMBEDDED_LMS) + list(EMBEDDED_VLMS) + [SENTENCE_MODEL],
                value=ctx.settings.default_model,
                allow_custom_value=True,
                label="Model (embedded name, hub id or local dir)",
            )
            with gr.Row():
                layer = gr.Dropdown(
                    choices=["all", "0", "-1"],
                    value="all",
                    allow_custom_value=True,
                    label="Layer (all = one aligned map; 0 = embeddings; negative from the end)",
                )
                method = gr.Radio(["umap", "pca"], value="umap", label="Projection")
            with gr.Row():
                n_neighbors = gr.Slider(2, 100, value=15, step=1, label="UMAP neighbours")
                min_dist = gr.Slider(0.0, 1.0, value=0.1, step=0.05, label="UMAP min_dist")
                pca_dims = gr.Number(
                    value=PCA_DIMS, precision=0, minimum=0, label="PCA dims before UMAP (0 = exact cosine)"
                )
            dtype = dtype_dropdown(ctx)
            run = gr.Button("Map token states", variant="primary")
    from explorer.ui.lens_tab import vlm_examples

    gr.Examples(
        [[row[0], row[1], row[3]] for row in vlm_examples(ctx)],
        inputs=[image, prompt, model],
        label="Synthetic scenes for the demo VLM",
    )
    summary = gr.Markdown()
    gr.Markdown(EXPLAIN)
    with gr.Row():
        colour = gr.Dropdown(choices=BUILTIN_COLOURS, value="layer", label="Colour by (or a stored score)")
        focus_all = gr.Checkbox(value=True, label="Show all layers")
        focus = gr.Slider(0, 1, value=0, step=1, label="Layer shown (uncheck 'Show all layers')")
        trajectory = gr.Dropdown(choices=[("none", "")], value="", label="Trajectory of token")
    plot = gr.Plot(label="Map", elem_id="atlas-map")
    view_state = gr.State({})  # display choices (colour, layer, trajectory, score overlays)
    export_controls(state, "map", "Export map", ctx=ctx, view=view_state)
    with gr.Row():
        list_selected = gr.Button("List selected (lasso) points", size="sm")
        search = gr.Textbox(label="Find tokens (substring)", scale=2)
    selection = gr.Textbox(visible=False, elem_id="atlas-map-selection")
    selected = gr.Dataframe(
        headers=TABLE_HEADERS, label="Points", interactive=False, wrap=True, elem_id="atlas-map-points"
    )

    def _prompts(text: str, split: bool) -> list[str]:
        return [line for line in (text or "").splitlines() if line.strip()] if split else [text or ""]

    def _layer(value: str | None) -> int | None:
        text = (value or "all").strip()
        if text == "all":
            return None
        try:
            return int(text)
        except ValueError:
            from explorer.errors import InputError

            raise InputError(f"layer must be 'all' or an integer, got {text!r}") from None

    @user_errors
    def on_run(
        text: str,
        split: bool,
        image_v: Any,
        model_v: str,
        layer_v: str,
        method_v: str,
        nn_v: float,
        md_v: float,
        pca_v: float | None,
        dataset_v: str | None = None,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        model_name = model_v or None
        with_images = image_v is not None
        if dataset_v:
            from explorer.analysis.atlas.token_map import read_map_dataset

            with_images = read_map_dataset(dataset_v).images[0] is not None
        if with_images and model_name in EMBEDDED_LMS:
            model_name = EMBEDDED_VLMS[0]  # a text-only model cannot take the image: use the demo VLM
        result = atlas_api.run_token_map(
            model_name,
            None if dataset_v else _prompts(text, split),
            image=None if dataset_v else image_v,
            dataset=dataset_v or None,
            layer=_layer(layer_v),
            method=method_v,
            n_neighbors=int(nn_v),
            min_dist=float(md_v),
            pca_dims=int(pca_v or 0),
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=progress_fn(progress),
        )
        scores = atlas_api.map_scores(result, db=ctx.store())
        view = map_view("layer", True, 0, None, scores)
        layers = result.layers
        return (
            result,
            view,
            summary_markdown(result),
            atlas_plots.token_map_figure(result, **view),
            gr.Dropdown(choices=BUILTIN_COLOURS + sorted(scores), value="layer"),
            gr.Checkbox(value=True),
            gr.Slider(minimum=layers[0], maximum=max(layers[-1], layers[0] + 1), value=layers[0], step=1),
            gr.Dropdown(choices=trajectory_choices(result), value=""),
        )

    run.click(
        on_run,
        inputs=[
            prompt,
            per_line,
            image,
            model,
            layer,
            method,
            n_neighbors,
            min_dist,
            pca_dims,
            dataset,
            dtype,
        ],
        outputs=[state, view_state, summary, plot, colour, focus_all, focus, trajectory],
        api_name="token_map",
    )

    @user_errors
    def redraw(
        r: TokenMapResult | None,
        view: dict[str, Any],
        colour_v: str,
        all_v: bool,
        focus_v: float,
        traj_v: str,
    ) -> tuple[Any, ...]:
        if r is None:
            return gr.skip(), gr.skip()
        view = map_view(colour_v, all_v, focus_v, traj_v, (view or {}).get("scores"))
        return view, atlas_plots.token_map_figure(r, **view)

    io = ([state, view_state, colour, focus_all, focus, trajectory], [view_state, plot])
    colour.input(redraw, *io, api_visibility="private")
    focus_all.input(redraw, *io, api_visibility="private")
    focus.release(redraw, *io, api_visibility="private")
    trajectory.input(redraw, *io, api_visibility="private")

    @user_errors
    def on_selection(r: TokenMapResult | None, text: str) -> Any:
        if r is None or not text:
            return gr.skip()
        return rows_table(r.select([int(v) for v in text.split(",") if v.strip().lstrip("-").isdigit()]))

    list_selected.click(
        on_selection, [state, selection], [selected], js=SELECTION_JS, api_visibility="private"
    )

    @user_errors
    def on_search(r: TokenMapResult | None, query: str) -> Any:
        if r is None or not query:
            return gr.skip()
        hits = [i for i, tok in enumerate(r.token) if query in tok][:500]
        return rows_table(r.select(hits))

    search.submit(on_search, [state, search], [selected], api_visibility="private")
