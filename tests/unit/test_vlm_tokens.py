"""Visual tokens (EmbedLens-style sink / dead / alive, text->image attention) on a tiny VLM built in code."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from test_vlm import _image, tiny_vlm  # noqa: F401  (the module-scoped tiny VLM fixture)

from explorer.backends.vlm import capture_vlm, generate
from explorer.errors import InputError
from explorer.vlm.tokens import ALIVE, DEAD, SINK, TokenParams, VisualTokensResult, classify, visual_tokens


@pytest.fixture(scope="module")
def result(tiny_vlm: Any) -> VisualTokensResult:  # noqa: F811
    return visual_tokens(
        tiny_vlm, "What is this?", _image(), params=TokenParams(answer_tokens=2, batch_size=3)
    )


def test_shapes_and_attention_shares_are_distributions(result: VisualTokensResult) -> None:
    L, n_img = result.n_layers, result.n_image
    assert n_img == 4 and result.norms.shape == (L + 1, n_img) and result.categories.shape == (L, n_img)
    assert result.attention.shape == (L, result.n_heads, len(result.query_positions), n_img)
    np.testing.assert_allclose(result.received.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(result.shares.sum(axis=1), 1.0, atol=1e-5)  # image + text + sink = all
    assert set(np.unique(result.categories)) <= {ALIVE, DEAD, SINK}
    assert all(result.modality[q] == "text" for q in result.query_positions)
    assert sum(result.counts()[0].values()) - 1 == n_img  # + the "layer" key


def test_attention_and_rollout_match_a_fresh_trace(tiny_vlm: Any, result: VisualTokensResult) -> None:  # noqa: F811
    from explorer.analysis.attention_math import attention_rollout

    inputs = tiny_vlm.prepare("What is this?", _image())
    answer = generate(tiny_vlm, inputs, 2)
    trace, _ = capture_vlm(tiny_vlm, inputs, answer, attentions=True)
    att = trace.attentions.numpy().astype(np.float64)
    img = inputs.image_positions
    q = result.query_positions
    np.testing.assert_allclose(result.attention, att[:, :, q][:, :, :, img], atol=1e-5)
    np.testing.assert_allclose(result.rollout, attention_rollout(att)[:, q][:, :, img], atol=1e-5)


def test_ablation_equals_dropping_the_token_by_hand(tiny_vlm: Any, result: VisualTokensResult) -> None:  # noqa: F811
    inputs = tiny_vlm.prepare("What is this?", _image())
    answer = generate(tiny_vlm, inputs, 2)
    with torch.no_grad():  # the prompt's embeddings, then the answer tokens' own embeddings
        answer_embeds = tiny_vlm.lm.embed_module()(torch.tensor(answer, device=tiny_vlm.lm.device)).float()
    embeds = torch.cat([inputs.inputs_embeds, answer_embeds.cpu()])
    n = inputs.seq_len

    def score(e: torch.Tensor, plen: int) -> tuple[float, np.ndarray]:
        with torch.no_grad():
            logits = tiny_vlm.lm.forward(inputs_embeds=e.unsqueeze(0)).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        s = sum(float(lp[plen - 1 + i, t]) for i, t in enumerate(answer))
        return s, logits[plen - 1].numpy()

    base, base_out = score(embeds, n)
    p = inputs.image_positions[1]
    keep = [i for i in range(embeds.shape[0]) if i != p]
    dropped, out = score(embeds[keep], n - 1)
    assert result.delta_logprob[1] == pytest.approx(abs(dropped - base), abs=1e-4)
    assert result.delta_hidden[1] == pytest.approx(
        np.linalg.norm(out - base_out) / np.linalg.norm(base_out), abs=1e-4
    )


def test_classify_needs_both_sink_conditions_and_sink_beats_dead() -> None:
    params = TokenParams(sink_norm_k=4.0, sink_share_k=2.0, dead_logprob_eps=0.05, dead_hidden_eps=0.02)
    norms = np.array([[1.0, 1.0, 10.0, 1.0], [1.0, 1.0, 1.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    received = np.array([[0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.7, 0.1]])  # uniform share 0.25, threshold 0.5
    d_lp = np.array([0.0, 1.0, 0.0, 1.0])
    d_h = np.array([0.0, 1.0, 0.0, 0.0])
    cats = classify(norms, received, d_lp, d_h, params)
    # block 1, token 2: high norm AND high attention -> sink (though also dead);
    # block 2: token 2 has attention only, token 3 norm only -> neither is a sink
    assert cats[0].tolist() == [DEAD, ALIVE, SINK, ALIVE]
    assert cats[1].tolist() == [DEAD, ALIVE, DEAD, ALIVE]


def test_store_round_trip_and_figures(tiny_vlm: Any, tmp_store: Any) -> None:  # noqa: F811
    import explorer
    from explorer.plots import figures_for

    r = explorer.visual_tokens(
        tiny_vlm, "What is this?", _image(), params=TokenParams(answer_tokens=1), db=tmp_store
    )
    assert r.run_id is not None
    back = tmp_store.load(r.run_id)
    assert isinstance(back, VisualTokensResult)
    for name in (
        "norms",
        "received",
        "categories",
        "delta_logprob",
        "delta_hidden",
        "attention",
        "rollout",
        "shares",
    ):
        np.testing.assert_allclose(
            np.asarray(getattr(back, name), float), np.asarray(getattr(r, name), float), atol=1e-5
        )
    assert back.to_dict() | {"run_id": None, "seconds": 0} == r.to_dict() | {"run_id": None, "seconds": 0}
    names = [s.name for s in figures_for(back)]
    assert {"token_categories", "text_to_image_attention", "attention_shares"} <= set(names)
    for spec in figures_for(back):
        fig = spec.build(back)
        assert fig.data and spec.data(back).num_rows > 0


def test_bad_input_stores_nothing(tiny_vlm: Any, tmp_store: Any) -> None:  # noqa: F811
    import explorer

    with pytest.raises(InputError, match="needs an image"):
        explorer.visual_tokens(tiny_vlm, "What is this?", None, db=tmp_store)
    with pytest.raises(InputError, match="sink_norm_k"):
        explorer.visual_tokens(tiny_vlm, "What?", _image(), params=TokenParams(sink_norm_k=0.5), db=tmp_store)
    with pytest.raises(InputError, match="empty"):
        explorer.visual_tokens(tiny_vlm, " ", _image(), db=tmp_store)
    assert tmp_store.list_runs() == []


def test_cli_bad_input_exits_2_with_one_line(capsys: Any) -> None:
    from explorer.cli import main

    assert main(["visual-tokens", "--prompt", "hi", "--image", "/nonexistent.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not exist" in err
    assert main(["visual-tokens", "--prompt", "hi", "--image", "/x.png", "--sink-norm-k", "0.5"]) == 2


def test_visual_tokens_tab_is_registered_and_builds(tmp_path: Any) -> None:
    import gradio as gr

    from explorer.config import Settings
    from explorer.ui import visual_tokens_tab
    from explorer.ui.app import TAB_MODULES
    from explorer.ui.common import UIContext

    assert "visual_tokens_tab" in TAB_MODULES
    ctx = UIContext(Settings.from_env(db_path=str(tmp_path / "db.duckdb"), cache_dir=str(tmp_path)))
    with gr.Blocks():
        visual_tokens_tab.build(ctx)
