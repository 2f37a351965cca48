"""Fixed inputs that produce a run of every result kind that has figures, on the embedded models
(SmolLM2-135M, DINOv2-small, the demo VLM), and the gallery built from them.

`GALLERY_RUNS` feeds both `make figures` (every registered figure at both journal sizes, with the
command that produced each) and the browser layout test: a result kind with registered figures
but no entry here fails that test, so a new figure is covered as soon as it is registered.

    python -m explorer.gallery --out docs/figures
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explorer.config import Settings

PROMPT = "The capital of France is"
LONG_PROMPT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do:\n"
    "once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations "
    "in it, 'and what is the use of a book,' thought Alice, 'without pictures or conversations?'"
)
VLM_PROMPT = "What is in the image?"
SIZES = ("single", "double")


@dataclass(frozen=True)
class GalleryRun:
    """One fixed input. `command` is the CLI line that makes the same run; `make` makes it here."""

    name: str
    kind: str
    command: str
    make: Callable[[Settings], Any]


def _image(name: str) -> Path:
    from explorer.backends.images import sample_images

    return sample_images()[name]


def _scene(settings: Settings) -> Path:
    """The demo VLM's held-out scene 0 ("a red square and a yellow star"), saved as PNG next to
    the store (a fixed input)."""
    from explorer.vlm.scenes import heldout_seeds, make_scene

    path = settings.database.parent / "gallery-scene.png"
    if not path.exists():
        make_scene(heldout_seeds(1)[0]).image.save(path)
    return path


def _lens(s: Settings) -> Any:
    from explorer.api.lens import run_logit_lens

    return run_logit_lens(None, PROMPT, targets=[" Paris"], generate=4, settings=s)


def _attention(s: Settings) -> Any:
    from explorer.api.attention import attention

    return attention(None, PROMPT, flow=True, settings=s)


def _vision_attention(s: Settings) -> Any:
    from explorer.api.attention import attention_image

    return attention_image(_image("astronaut"), settings=s)


def _attribution(s: Settings) -> Any:
    from explorer.api.attribution import attribute

    return attribute(None, PROMPT, target=" Paris", method="occlusion", settings=s)


def _comparison(s: Settings) -> Any:
    from explorer.api.attribution import attribute, compare_attribution_runs

    a = attribute(None, PROMPT, target=" Paris", method="occlusion", settings=s)
    b = attribute(None, PROMPT, target=" Paris", method="input_x_gradient", settings=s)
    return compare_attribution_runs([str(a.run_id), str(b.run_id)], settings=s)


def _generation(s: Settings) -> Any:
    from explorer.api.attribution import attribute_generation

    return attribute_generation(None, PROMPT, generate=2, settings=s)


def _prune_text(s: Settings) -> Any:
    from explorer.api.pruning import run_prune_text

    return run_prune_text(None, PROMPT, keep_ratios=(0.25, 0.5, 0.75), continuation_tokens=4, settings=s)


def _prune_image(s: Settings) -> Any:
    from explorer.api.pruning import run_prune_image

    return run_prune_image(_image("astronaut"), keep_ratios=(0.25, 0.5), settings=s)


def _vlm_lens(s: Settings) -> Any:
    from explorer.api.lens import run_logit_lens

    return run_logit_lens("tiny-vlm", VLM_PROMPT, image=_scene(s), targets=[" red"], generate=3, settings=s)


def _vlm_tokens(s: Settings) -> Any:
    from explorer.api.vlm import run_visual_tokens
    from explorer.vlm.tokens import TokenParams

    return run_visual_tokens("tiny-vlm", VLM_PROMPT, _scene(s), params=TokenParams(), settings=s)


LATENT_CORPUS = 400  # sentences of the shipped corpus in the gallery's text bank (all: ~2,900, ~45 s)


def _vlm_latent(s: Settings) -> Any:
    from explorer.api.vlm import run_latent_neighbours
    from explorer.vlm.latent_corpus import default_corpus

    corpus = default_corpus().head(LATENT_CORPUS)
    return run_latent_neighbours("tiny-vlm", VLM_PROMPT, _scene(s), corpus=corpus, settings=s)


def _vlm_attention(s: Settings) -> Any:
    from explorer.api.vlm import run_vlm_attention
    from explorer.vlm.attention import VLMAttentionParams

    return run_vlm_attention(
        "tiny-vlm", VLM_PROMPT, _scene(s), params=VLMAttentionParams(generate=3), settings=s
    )


def _vlm_attribution(s: Settings) -> Any:
    from explorer.analysis.vlm_attribution import VLMAttributionParams
    from explorer.api.vlm import vlm_attribute

    params = VLMAttributionParams(method="occlusion", target=" red")
    return vlm_attribute("tiny-vlm", VLM_PROMPT, _scene(s), params=params, settings=s)


def _vlm_eval(s: Settings) -> Any:
    from explorer.api.vlm import vlm_eval
    from explorer.vlm.vista import VistaParams

    return vlm_eval("tiny-vlm", "all", n_scenes=3, n_boot=200, vista=VistaParams(vsv=True), settings=s)


def _vlm_prune(s: Settings) -> Any:
    from explorer.api.vlm import vlm_prune

    return vlm_prune(
        "tiny-vlm", "pope", n_scenes=1, strategies=["fastv", "random"], keep_ratios=[1, 0.25], settings=s
    )


def _token_map(s: Settings) -> Any:
    from explorer.api.atlas import run_token_map

    return run_token_map(None, [PROMPT, LONG_PROMPT], settings=s)


def _vocab(s: Settings) -> Any:
    from explorer.api.atlas import run_vocab_health

    return run_vocab_health(None, n_verify=50, map_points=1500, settings=s)


def _microscope(s: Settings) -> Any:
    from explorer.api.atlas import run_microscope

    return run_microscope(None, LONG_PROMPT, settings=s)


def _tokenizers(s: Settings) -> Any:
    from explorer.api.atlas import inspect_tokenizers

    return inspect_tokenizers(LONG_PROMPT, settings=s)


def _vista_patterns(s: Settings) -> Any:
    from explorer.api.vlm import vista_patterns

    return vista_patterns("tiny-vlm", n_scenes=2, max_new_tokens=12, n_boot=200, settings=s)


SWEEP_PROMPTS = (PROMPT, "The cat sat on the", "One, two, three, four,")


def _sweep(s: Settings) -> Any:
    from explorer.api.sweep import sweep

    root = s.cache_dir / "gallery_sweep"
    root.mkdir(parents=True, exist_ok=True)
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in SWEEP_PROMPTS))
    params = {
        "strategies": ["random", "self_information"],
        "keep_ratios": [1.0, 0.5, 0.25],
        "continuation_tokens": 2,
    }
    return sweep(str(data), "prune", root / "prune", params=params, n_boot=200, settings=s)


_P = json.dumps(PROMPT)
GALLERY_RUNS: tuple[GalleryRun, ...] = (
    GalleryRun("lens", "lens", f"explorer lens --prompt {_P} --target ' Paris' --generate 4", _lens),
    GalleryRun("attention", "attention", f"explorer attention --prompt {_P} --flow", _attention),
    GalleryRun(
        "vision_attention", "vision_attention", "explorer attention --image astronaut.png  # skimage's astronaut photo", _vision_attention
    ),
    GalleryRun(
        "attribution", "attribution", f"explorer attribute --prompt {_P} --target ' Paris' --method occlusion",
        _attribution,
    ),
    GalleryRun(
        "attribution_comparison", "attribution_comparison",
        f"explorer attribute --prompt {_P} --target ' Paris' --method occlusion (and input_x_gradient), "
        "then explorer.api.attribution.compare_attribution_runs([A, B])",
        _comparison,
    ),
    GalleryRun(
        "attribution_generation", "attribution_generation", f"explorer attribute --prompt {_P} --generate 2",
        _generation,
    ),
    GalleryRun(
        "prune_text", "prune_text",
        f"explorer prune --prompt {_P} --keep 0.25 0.5 0.75 --continuation 4", _prune_text,
    ),
    GalleryRun("prune_image", "prune_image", "explorer prune --image astronaut.png --keep 0.25 0.5", _prune_image),
    GalleryRun(
        "vlm_lens", "vlm_lens",
        f"explorer lens --model tiny-vlm --image scene.png --prompt {json.dumps(VLM_PROMPT)} --target ' red' "
        "--generate 3",
        _vlm_lens,
    ),
    GalleryRun(
        "vlm_tokens", "vlm_tokens",
        f"explorer visual-tokens --model tiny-vlm --image scene.png --prompt {json.dumps(VLM_PROMPT)}", _vlm_tokens,
    ),
    GalleryRun(
        "vlm_latent", "vlm_latent",
        f"explorer.latent_neighbours('tiny-vlm', {VLM_PROMPT!r}, 'scene.png', "
        f"corpus=default_corpus().head({LATENT_CORPUS}))  # a smaller text bank than the CLI's",
        _vlm_latent,
    ),
    GalleryRun(
        "vlm_prune", "vlm_prune", "explorer vlm-prune --set pope --n 1 --strategy fastv,random --keep 1,0.25",
        _vlm_prune,
    ),
    GalleryRun(
        "vlm_attention", "vlm_attention",
        f"explorer attention --model tiny-vlm --image scene.png --prompt {json.dumps(VLM_PROMPT)} --generate 3",
        _vlm_attention,
    ),
    GalleryRun(
        "vlm_attribution", "vlm_attribution",
        f"explorer attribute --model tiny-vlm --image scene.png --prompt {json.dumps(VLM_PROMPT)} --target ' red' "
        "--method occlusion",
        _vlm_attribution,
    ),
    GalleryRun(
        "vlm_eval", "vlm_eval", "explorer vlm-eval --model tiny-vlm --dataset all --scenes 3 --bootstrap 200 --vsv",
        _vlm_eval,
    ),
    GalleryRun("token_map", "token_map", f"explorer atlas map --prompt {_P} --prompt {json.dumps(LONG_PROMPT)}", _token_map),
    GalleryRun("vocab_health", "vocab_health", "explorer atlas vocab --n-verify 50 --map-points 1500", _vocab),
    GalleryRun("microscope", "microscope", f"explorer atlas microscope --prompt {json.dumps(LONG_PROMPT)}", _microscope),
    GalleryRun("tokenizer_inspect", "tokenizer_inspect", f"explorer atlas tokenize --text {json.dumps(LONG_PROMPT)}", _tokenizers),
    GalleryRun(
        "vista_patterns", "vista_patterns", "explorer vista-patterns --scenes 2 --max-new-tokens 12 --bootstrap 200",
        _vista_patterns,
    ),
    GalleryRun(
        "sweep", "sweep",
        "explorer sweep --dataset prompts.jsonl --analysis prune --out sweeps/prune "
        "--param strategies='[\"random\",\"self_information\"]' --param keep_ratios='[1,0.5,0.25]' "
        "--param continuation_tokens=2  # 3 prompts, one per line",
        _sweep,
    ),
)  # fmt: skip


def registered_figures() -> dict[str, list[str]]:
    """Result kind -> names of every registered figure (the layout test's matrix)."""
    from explorer.plots import _FIGURES, _load_builtin_figures

    _load_builtin_figures()
    return {kind: [s.name for s in specs] for kind, specs in sorted(_FIGURES.items())}


def build_gallery(
    out: Path, settings: Settings, fmt: str = "svg", kinds: list[str] | None = None
) -> list[dict[str, Any]]:
    """Run every fixed input and export each of its figures at both journal sizes into `out`;
    writes `out/index.json` and `out/README.md` (the command for each file). Returns the index."""
    from explorer.api import open_store
    from explorer.plots import export, figures_for
    from explorer.plots.paper import ExportOptions

    out.mkdir(parents=True, exist_ok=True)
    store = open_store(settings=settings)
    index: list[dict[str, Any]] = []
    for item in GALLERY_RUNS:
        if kinds and item.kind not in kinds:
            continue
        result = item.make(settings)
        info = store.info(result.run_id) if store is not None and getattr(result, "run_id", None) else None
        for spec in figures_for(result):
            for size in SIZES:
                options = ExportOptions(size=size)
                path = export(
                    result, fmt, out, figure=spec.name, stem=f"{item.name}_{spec.name}_{size}", options=options,
                    run_info=info,
                )  # fmt: skip
                from explorer.plots.paper import export_command

                index.append(
                    {
                        "file": path.name,
                        "kind": item.kind,
                        "figure": spec.name,
                        "title": spec.title,
                        "size": size,
                        "run_command": item.command,
                        "export_command": export_command(
                            getattr(result, "run_id", None), spec.name, fmt, options
                        ),
                    }
                )
    (out / "index.json").write_text(json.dumps(index, indent=1))
    lines = [
        "# Figure gallery",
        "",
        "Every registered figure kind at single- (3.3 in) and double-column (7 in) width, regenerated by "
        "`make figures` from the fixed inputs in `explorer/gallery.py`. Each row: the command that made the "
        "run, and the command that exported the file (run ids are content hashes of model, input and "
        "parameters, so they are the same on every machine with the same weights).",
        "",
        "| file | figure | run | export |",
        "|---|---|---|---|",
    ]
    for row in index:
        lines.append(
            f"| [{row['file']}]({row['file']}) | {row['kind']} / {row['title']} | `{row['run_command']}` | "
            f"`{row['export_command']}` |"
        )
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the figure gallery from fixed inputs.")
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--format", default="svg", choices=("svg", "png", "pdf"))
    parser.add_argument("--kind", action="append", help="only these result kinds (repeatable)")
    parser.add_argument("--db", default=None, help="run store (default: the usual one)")
    args = parser.parse_args(argv)
    settings = Settings.from_env(db_path=Path(args.db)) if args.db else Settings.from_env()
    index = build_gallery(Path(args.out), settings, args.format, args.kind)
    print(json.dumps({"out": args.out, "files": len(index)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
