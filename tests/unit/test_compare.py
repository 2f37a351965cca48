"""Compare two stored runs: invariants (a run against itself), alignment across depths, CLI JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from explorer import api
from explorer.cli import main
from explorer.compare import compare_runs
from explorer.errors import InputError


def test_a_run_against_itself_has_no_difference(tiny_llama, tmp_store) -> None:
    r = api.logit_lens(tiny_llama, "the cat sat on the mat", db=tmp_store)
    c = compare_runs(tmp_store, r.run_id, r.run_id)
    assert c.kind == "lens" and c.aligned_positions == r.seq_len
    assert np.all(c.matrices["top1_agree"] == 1)
    for name in ("next_log_rank_delta", "final_prob_delta"):
        m = c.matrices[name]
        assert np.all(m[np.isfinite(m)] == 0)
    assert c.param_changes == {} and c.summary["top1_agreement"] == 1.0


def test_same_prompt_on_two_models_of_different_depth(tiny_llama, tmp_store) -> None:
    from conftest import make_tiny_lm

    qwen = make_tiny_lm("qwen2")  # 2 layers vs llama's 3
    a = api.logit_lens(tiny_llama, "the cat sat", db=tmp_store)
    b = api.logit_lens(qwen, "the cat sat", db=tmp_store)
    c = compare_runs(tmp_store, a.run_id, b.run_id)
    assert c.matrices["top1_agree"].shape == (tiny_llama.n_layers + 1, a.seq_len)
    assert any("relative depth" in n for n in c.notes)
    assert c.param_changes["model"] == ["tiny-llama", "tiny-qwen2"]
    assert 0.0 <= c.summary["top1_agreement"] <= 1.0


def test_two_prompts_align_by_position_and_kinds_must_match(tiny_llama, tmp_store) -> None:
    a = api.logit_lens(tiny_llama, "the cat sat on the mat", db=tmp_store)
    b = api.logit_lens(tiny_llama, "the dog sat", db=tmp_store)
    c = compare_runs(tmp_store, a.run_id, b.run_id)
    assert c.aligned_positions == min(a.seq_len, b.seq_len)
    assert any("tokens differ" in n for n in c.notes)
    att = api_attention(tiny_llama, tmp_store)
    with pytest.raises(InputError, match="same kind"):
        compare_runs(tmp_store, a.run_id, att.run_id)
    with pytest.raises(InputError, match="no run"):
        compare_runs(tmp_store, a.run_id, "nope")


def api_attention(lm, store):  # type: ignore[no-untyped-def]
    from explorer.api.attention import attention

    return attention(lm, "the cat sat", db=store)


def test_attention_difference_is_antisymmetric(tiny_llama, tmp_store) -> None:
    from explorer.api.attention import attention

    a = attention(tiny_llama, "the cat sat on", db=tmp_store)
    b = attention(tiny_llama, "the dog sat on", db=tmp_store)
    ab = compare_runs(tmp_store, a.run_id, b.run_id)
    ba = compare_runs(tmp_store, b.run_id, a.run_id)
    np.testing.assert_allclose(ab.matrices["attention_delta"], -ba.matrices["attention_delta"], atol=1e-7)
    assert ab.matrices["head_delta"].shape == a.attentions.shape[:2]


def test_cli_compare_json(tiny_llama, tmp_path, capsys) -> None:
    db = tmp_path / "cmp.duckdb"
    a = api.logit_lens(tiny_llama, "one prompt", db=db)
    b = api.logit_lens(tiny_llama, "another prompt", db=db)
    assert main(["compare", a.run_id, b.run_id, "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "lens" and out["run_a"]["run_id"] == a.run_id
    assert set(out["differences"]) == {"top1_agree", "next_log_rank_delta", "final_prob_delta"}
    assert main(["compare", a.run_id, "missing", "--db", str(db)]) == 2


def test_difference_figure_builds(tiny_llama, tmp_store) -> None:
    from explorer.plots.compare import difference_figure

    a = api.logit_lens(tiny_llama, "figure a", db=tmp_store)
    b = api.logit_lens(tiny_llama, "figure b", db=tmp_store)
    c = compare_runs(tmp_store, a.run_id, b.run_id)
    for name in c.matrices:
        fig = difference_figure(c, name)
        assert fig.data[0].z is not None
