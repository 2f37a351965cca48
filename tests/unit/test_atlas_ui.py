"""The Token atlas tab: it builds with its four sections, and its helpers render real results."""

from __future__ import annotations

import numpy as np

from explorer.api import atlas as atlas_api


def test_tab_builds_with_sections(settings) -> None:
    from explorer.ui.app import build_demo

    demo = build_demo(settings)
    config = demo.get_config_file()
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    assert {
        "Token atlas",
        "Map of token states",
        "Vocabulary health",
        "LLM-Microscope",
        "Tokenizer inspector",
    } <= labels
    names = {d.get("api_name") for d in config["dependencies"]}
    assert {"token_map", "vocab_health", "microscope", "inspect_tokenizers"} <= names


def test_map_helpers(tiny_llama) -> None:
    from explorer.plots import atlas as plots
    from explorer.plots import figure_spec
    from explorer.ui import atlas_map

    r = atlas_api.run_token_map(tiny_llama, ["a cat sat", "the dog ran"], method="pca", db=False)
    choices = atlas_map.trajectory_choices(r)
    assert choices[0] == ("none", "") and len(choices) == 1 + sum(len(t) for t in r.tokens)
    assert "PCA" in atlas_map.summary_markdown(r)
    view = atlas_map.map_view("prompt", False, 2, "1:1", None)
    assert view == {"colour": "prompt", "layer": 2, "trajectory": 1, "prompt_index": 1, "scores": {}}
    fig = figure_spec(r, "map").figure(r, view)  # the export path: the UI passes its view
    assert any(t.name == "prompt 1" for t in fig.data) and any(
        (t.name or "").startswith("path of") for t in fig.data
    )
    assert not hasattr(r, "view")  # display choices are figure arguments, never on the result
    rows = atlas_map.rows_table(r.select([0, 1]))
    assert len(rows) == 2 and rows[0][3] == r.token[0]
    scored = atlas_map.map_view("s", True, 0, "", {"s": np.arange(r.n_points, dtype=float)})
    assert plots.token_map_figure(r, **scored).data[-1].marker.showscale


def test_vocab_summary_escapes_token_names() -> None:
    """A reference source naming '<file_sep>'-like tokens must not swallow the rest of the Markdown."""
    import numpy as np

    from explorer.analysis.atlas.vocab import TOKEN_COLUMNS, VocabHealthResult
    from explorer.ui import atlas_vocab

    summary = {
        "n_tokens": 2,
        "tokenizer": {
            "ok": 2,
            "special": 0,
            "partial_utf8": 0,
            "not_round_trip": 0,
            "no_string": 0,
            "unreachable": 0,
        },
        "reference": {"n": 1, "source": "dropped: ['<repo_name>', '<filename>']"},
        "magikarp": {"candidates": 1, "verified": 1, "strong_verified": 1, "weak_verified": 0},
        "glitchhunter": {"flagged": 0, "checked": 0, "verified": 0, "rounds": []},
        "agreement": {"both": 0, "magikarp_only": 1, "glitchhunter_only": 0, "jaccard": 0.0},
    }
    columns = {name: np.zeros(2) for name in TOKEN_COLUMNS}
    r = VocabHealthResult(
        model="m", columns=columns, summary=summary, params={}, seconds=1.0, notes=["a <b> note"]
    )
    text = atlas_vocab.summary_markdown(r)
    assert "&lt;repo_name&gt;" in text and "<repo_name>" not in text and "&lt;b&gt;" in text
    assert "candidates verified under-trained" in text.split("&lt;filename&gt;")[1]
