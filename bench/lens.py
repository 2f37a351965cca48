"""Benchmark: full logit-lens analysis vs its floor, and reopening a stored run.

Floor = one forward pass with hidden states + one batched unembedding (final norm + LM head)
of all layers x positions, in the same process on the same 128-token prompt. The analysis
(`explorer.analysis.logit_lens.logit_lens`) is timed without store writes. Both are warmed up
first (the fused read-out compiles once); the two are then timed alternately and the medians
compared.

Run: `.venv/bin/python bench/lens.py` (prints JSON on stdout, and one line with the ratio on stderr).
Run it three times on a quiet machine; the target is <= 1.2x the floor in every run.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from explorer import api  # noqa: E402
from explorer.analysis.logit_lens import logit_lens  # noqa: E402
from explorer.backends.language import load_model  # noqa: E402

N_TOKENS = 128
REPEATS = 7
TARGET_RATIO = 1.2


def prompt_of_tokens(lm: object, n: int) -> str:
    """A natural-English prompt of exactly `n` tokens (from CPython's bundled pydoc topics)."""
    from pydoc_data.topics import topics

    text = topics["assert"] + topics["while"] + topics["for"]
    for name in sorted(topics):  # those three are ~900 tokens: add topics until n fit
        if len(lm.tokenizer(text, add_special_tokens=False).input_ids) >= n:  # type: ignore[attr-defined]
            break
        text += topics[name]
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids[:n]  # type: ignore[attr-defined]
    prompt = lm.tokenizer.decode(ids)  # type: ignore[attr-defined]
    while len(lm.tokenizer(prompt).input_ids) > n:  # type: ignore[attr-defined]
        ids = ids[:-1]
        prompt = lm.tokenizer.decode(ids)  # type: ignore[attr-defined]
    return str(prompt)


def median_time(fn: object, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> dict[str, object]:
    lm = load_model("smollm2-135m")
    prompt = prompt_of_tokens(lm, N_TOKENS)
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    seq = ids.shape[1]

    @torch.inference_mode()
    def floor() -> None:
        out = lm.hf_model(input_ids=ids, output_hidden_states=True)  # the raw HF floor
        hidden = torch.stack(out.hidden_states)[:, 0]  # (L+1, seq, d)
        lm.unembed(hidden.reshape(-1, hidden.shape[-1]))

    def analysis() -> None:
        logit_lens(lm, prompt, top_k=10)

    floor()
    analysis()  # warm-up: compiles the fused read-out once
    # alternate the two so that any background load affects both alike
    floors, lenses = [], []
    for _ in range(REPEATS):
        floors.append(median_time(floor, 1))
        lenses.append(median_time(analysis, 1))
    t_floor = statistics.median(floors)
    t_lens = statistics.median(lenses)

    with tempfile.TemporaryDirectory() as tmp:
        store = api.open_store(Path(tmp) / "bench.duckdb")
        assert store is not None
        run = api.logit_lens(lm, prompt, db=store)
        api.load_run(str(run.run_id), db=store)  # warm
        t_reopen = median_time(lambda: store.load(str(run.run_id)), repeats=10)
        store.close()

    result = {
        "model": "smollm2-135m",
        "prompt_tokens": seq,
        "layers_x_positions": (lm.n_layers + 1) * seq,
        "floor_s": round(t_floor, 4),
        "lens_analysis_s": round(t_lens, 4),
        "ratio_vs_floor": round(t_lens / t_floor, 3),
        "target_ratio": TARGET_RATIO,
        "reopen_stored_run_ms": round(1000 * t_reopen, 2),
        "target_reopen_ms": 100,
        "torch_threads": torch.get_num_threads(),
    }
    return result


if __name__ == "__main__":
    import sys

    out = main()
    print(json.dumps(out, indent=2))
    ratio = float(out["ratio_vs_floor"])  # type: ignore[arg-type]
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(
        f"logit lens {out['lens_analysis_s']} s vs floor {out['floor_s']} s: {ratio:.3f}x the floor "
        f"(target <= {TARGET_RATIO}x: {verdict})",
        file=sys.stderr,
    )
