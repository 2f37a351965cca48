"""Benchmark and report: vocabulary health of the embedded SmolLM2 (49,152 tokens; target: a complete
run, verifying the top 300 suspects, in at most 3 minutes on 2 cores).

Runs `explorer.atlas_api.vocab_health` once without the store (the model is loaded first and not
timed) and prints the timings, the summary (tokenizer categories, Magikarp and GlitchHunter counts,
their agreement) and the first verified under-trained tokens as JSON.

Run: `.venv/bin/python bench/atlas_vocab.py [N_VERIFY]`.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from explorer import atlas_api  # noqa: E402
from explorer.models.loading import load_model  # noqa: E402


def main() -> None:
    n_verify = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    lm = load_model("smollm2-135m")
    t0 = time.perf_counter()
    r = atlas_api.vocab_health(lm, n_verify=n_verify, db=False)
    total = time.perf_counter() - t0
    verified = [s for s in r.suspects() if s["status"] in ("strong_verified", "weak_verified")]
    print(
        json.dumps(
            {
                "model": r.model,
                "n_tokens": r.n_tokens,
                "n_verify": n_verify,
                "total_s": round(total, 1),
                "target_s": 180,
                "summary": r.summary,
                "verified_examples": verified[:25],
                "notes": r.notes,
            },
            ensure_ascii=False,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
