"""Benchmark and report: vocabulary health of the embedded SmolLM2 (49,152 tokens; target: a complete
run, verifying the top 300 suspects, in at most 3 minutes on 2 cores).

Runs `explorer.api.atlas.vocab_health` once (the model is loaded first and not timed; nothing is
served from a store) and prints the timings, the summary (tokenizer categories, Magikarp and
GlitchHunter counts, their agreement) and examples of the verified under-trained tokens of each
detector as JSON, with the wall time and the process's CPU seconds (all threads; under load the CPU
seconds are the comparable number). With `--db PATH` the run is also stored there (for `explorer runs` / the UI).

Run: `.venv/bin/python bench/atlas_vocab.py [N_VERIFY] [--db PATH]`.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from explorer.analysis.atlas import verify  # noqa: E402
from explorer.api import atlas as atlas_api  # noqa: E402
from explorer.models.loading import load_model  # noqa: E402


def glitchhunter_verified(r: atlas_api.VocabHealthResult) -> list[dict[str, object]]:
    """GlitchHunter-flagged tokens that verified, lowest max probability first."""
    c = r.columns
    rows = [
        {"token_id": int(i), "token": c["token"][i], "max_prob": float(c["max_prob"][i]), "status": c["status"][i],
         "output": c["output"][i], "embed_norm": float(c["embed_norm"][i]), "indicator": float(c["indicator"][i])}
        for i in np.flatnonzero(np.asarray(c["gh_flag"]))
        if verify.is_verified(float(c["max_prob"][i]))
    ]  # fmt: skip
    return sorted(rows, key=lambda row: float(row["max_prob"]))  # type: ignore[arg-type]


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n_verify = int(args[0]) if args else 300
    db: object = False
    if "--db" in sys.argv:
        from explorer.store import Store

        db = Store.open(sys.argv[sys.argv.index("--db") + 1])
    lm = load_model("smollm2-135m")
    load = os.getloadavg()
    t0 = time.perf_counter()
    c0 = time.process_time()
    r = atlas_api.run_vocab_health(lm, n_verify=n_verify, db=db, use_cache=False)  # type: ignore[arg-type]
    total = time.perf_counter() - t0
    cpu = time.process_time() - c0
    verified = [s for s in r.suspects() if s["max_prob"] is not None and verify.is_verified(s["max_prob"])]
    print(
        json.dumps(
            {
                "model": r.model,
                "n_tokens": r.n_tokens,
                "n_verify": n_verify,
                "total_s": round(total, 1),
                "cpu_s": round(cpu, 1),
                "torch_threads": torch.get_num_threads(),
                "target_s": 180,
                "summary": r.summary,
                "run_id": r.run_id,
                "load_average_at_start": [round(v, 2) for v in load],
                "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
                "magikarp_verified_examples": verified[:25],
                "glitchhunter_verified_examples": glitchhunter_verified(r)[:40],
                "notes": r.notes,
            },
            ensure_ascii=False,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
