"""Benchmark: the logit lens on the demo VLM against its floor, and generation with the per-step lens.

One synthetic scene and a question of about 20 tokens (64 visual tokens + the chat prompt).
Floor = encoding the image (DINOv2 + projector, as the VLM must) + one forward pass of the LM
with hidden states + one batched unembedding (final norm + LM head) of every layer x position.
The analysis is `explorer.vlm.lens.vlm_logit_lens` (no store writes). Both are warmed up, then
timed alternately; medians are compared (wall time, and this process's CPU time, which a loaded
machine disturbs less). Second number: generating 20 tokens and tracing every
step through every layer (`params.generate=20`).

Run: `.venv/bin/python bench/vlm.py` (prints JSON).
"""

from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from explorer.analysis.logit_lens import LensParams  # noqa: E402
from explorer.backends.vlm import load_vlm  # noqa: E402
from explorer.vlm.lens import vlm_logit_lens  # noqa: E402
from explorer.vlm.scenes import compose_scene  # noqa: E402

REPEATS = 7
QUESTION = "Look at the picture carefully and tell me what color the circle on the left side of it is."


def main() -> dict[str, object]:
    vlm = load_vlm("tiny-vlm")
    lm = vlm.lm
    image = compose_scene([("red", "circle", "left"), ("blue", "square", "right")]).image
    n_question = len(lm.tokenizer(QUESTION, add_special_tokens=False).input_ids)

    @torch.inference_mode()
    def floor() -> None:
        inputs = vlm.prepare(QUESTION, image)
        out = lm.hf_model(inputs_embeds=inputs.inputs_embeds[None], output_hidden_states=True)
        hidden = torch.stack(out.hidden_states)[:, 0]  # (L+1, seq, d)
        lm.unembed(hidden.reshape(-1, hidden.shape[-1]))

    def analysis() -> None:
        vlm_logit_lens(vlm, QUESTION, image, params=LensParams(top_k=10))

    floor()
    analysis()
    floors, lenses, cpu_floors, cpu_lenses = [], [], [], []
    for _ in range(REPEATS):
        for fn, wall, cpu in ((floor, floors, cpu_floors), (analysis, lenses, cpu_lenses)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    t_floor, t_lens = statistics.median(floors), statistics.median(lenses)
    c_floor, c_lens = statistics.median(cpu_floors), statistics.median(cpu_lenses)

    t0 = time.perf_counter()
    gen = vlm_logit_lens(
        vlm, "Describe the image in detail.", image, params=LensParams(top_k=10, generate=20)
    )
    t_gen = time.perf_counter() - t0
    seq = vlm.prepare(QUESTION, image).seq_len
    return {
        "model": vlm.model_id,
        "question_tokens": n_question,
        "sequence_tokens": seq,
        "visual_tokens": vlm.n_visual_tokens,
        "layers_x_positions": (lm.n_layers + 1) * seq,
        "floor_s": round(t_floor, 4),
        "lens_analysis_s": round(t_lens, 4),
        "ratio_vs_floor": round(t_lens / t_floor, 3),
        "target_ratio": 1.3,
        # CPU seconds of this process (all threads): less sensitive to other processes' load than
        # wall time, but counts threads that spin while waiting; the target is on wall time
        "cpu_floor_s": round(c_floor, 4),
        "cpu_lens_analysis_s": round(c_lens, 4),
        "cpu_ratio_vs_floor": round(c_lens / c_floor, 3),
        "generate_with_per_step_lens_s": round(t_gen, 3),
        "generated_tokens": len(gen.generated),
        "torch_threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
