"""Verification by prompting (Land & Bartolo 2024, section 3.3): ask the model to repeat a token and
record the highest probability it gives that token over the first `steps` greedy steps.

Prompts follow the paper's three templates (repetition device, assistant explaining a phrase,
a phrase repeated). Each is built once with a placeholder token (a long alphabetic token that
round-trips) and the candidate's id is written over the placeholder's positions, so the candidate
is fed as its id even when no string encodes to it, and every prompt in a batch has the same length
(no padding). The part of the prompt before the first slot is the same for every candidate: it runs
once per batch and its KV cache is shared. Deviation: fewer in-context repetitions than the paper (3 instead of 20, and 10
instead of 50) so that 300 candidates verify in seconds on a CPU; status thresholds are the paper
repository's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

TEMPLATES: dict[str, tuple[int, str, str, str]] = {
    # name: (n repetitions, preamble, input phrase, completion)
    "input_output": (
        3,
        "This device repeats its input exactly, as shown in these 100 identical trials.",
        "\nInput: «{token}»\nOutput:",
        " «{token}»",
    ),
    "assistant_explain": (
        0,
        "This helpful assistant explains what a phrase means, replying with identical responses to identical "
        "questions for reliability.",
        "\nUser: What does 'edslfkj' mean?\nAssistant: 'edslfkj' has no specific meaning I am aware of."
        "\nUser: what does '{token}' mean?\nAssistant:",
        " '{token}'",
    ),
    "repeats": (
        10,
        "Below is the output, as you can see it's just giving the same phrase repeated indefinitely:\n",
        "{token}",
        "{token}",
    ),
}
STRONG_REJECT = 0.9
WEAK_REJECT = 0.1  # max probability below this: verified under-trained
STRONG_VERIFY = 0.001
MAX_BATCH_TOKENS = 4096


def status(max_prob: float) -> str:
    """The paper repository's classes of a verification result."""
    if max_prob > STRONG_REJECT:
        return "strong_rejected"
    if max_prob > WEAK_REJECT:
        return "weak_rejected"
    if max_prob < STRONG_VERIFY:
        return "strong_verified"
    return "weak_verified"


def is_verified(max_prob: float) -> bool:
    return max_prob <= WEAK_REJECT


@dataclass
class PromptTemplate:
    name: str
    ids: torch.Tensor  # (T,) prompt ids with the placeholder
    slots: torch.Tensor  # (n_slots,) positions of the placeholder


def choose_placeholder(tokenizer: object, decoded: Sequence[str], ok: np.ndarray) -> int:
    """A long, alphabetic, round-tripping token that also survives being doubled."""
    order = sorted(
        (int(i) for i in np.flatnonzero(ok)),
        key=lambda i: (decoded[i].isalpha(), len(set(decoded[i])), len(decoded[i])),
        reverse=True,
    )
    for i in order[:200]:
        doubled = tokenizer.decode([int(i), int(i)])  # type: ignore[attr-defined]
        if tokenizer(doubled, add_special_tokens=False).input_ids == [int(i), int(i)]:  # type: ignore[operator]
            return int(i)
    raise RuntimeError("no placeholder token found for building verification prompts")


def build_templates(tokenizer: object, placeholder: int, names: Sequence[str]) -> list[PromptTemplate]:
    text = tokenizer.decode([placeholder])  # type: ignore[attr-defined]
    bos = getattr(tokenizer, "bos_token_id", None)
    trailing = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []} - {bos}
    out = []
    for name in names:
        n, preamble, phrase, completion = TEMPLATES[name]
        prompt = preamble + (phrase + completion) * n + phrase + completion[: completion.index("{")]
        raw = list(tokenizer(prompt.format(token=text)).input_ids)  # type: ignore[operator]
        while raw and raw[-1] in trailing:  # an appended EOS / [SEP] would end the prompt
            raw.pop()
        ids = torch.tensor(raw)
        slots = torch.nonzero(ids == placeholder).flatten()
        if slots.numel() != 2 * n + 1:
            continue  # this tokenizer merges the placeholder with its neighbours here; skip the template
        out.append(PromptTemplate(name, ids, slots))
    if not out:
        raise RuntimeError("no verification template could be built for this tokenizer")
    return out


@torch.inference_mode()
def probe(
    lm: object,
    template: PromptTemplate,
    token_ids: Sequence[int],
    steps: int = 3,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[list[int]]]:
    """For each candidate id: the highest probability of that id over `steps` greedy steps after the
    prompt with the candidate written into the placeholder slots, and the generated ids."""
    length = int(template.ids.numel())
    batch = max(1, MAX_BATCH_TOKENS // length)
    prefix = int(template.slots.min())  # every candidate's prompt is the same up to the first slot
    best = np.zeros(len(token_ids), dtype=np.float64)
    generated: list[list[int]] = []
    for start in range(0, len(token_ids), batch):
        cand = torch.tensor(token_ids[start : start + batch], dtype=torch.long)
        x = template.ids.unsqueeze(0).repeat(cand.numel(), 1)
        x[:, template.slots] = cand.unsqueeze(1)
        gen = []
        probs_max = torch.zeros(cand.numel())
        with lm.lock:  # type: ignore[attr-defined]
            past, x = _shared_prefix(lm, template.ids[:prefix], x)
            for _ in range(steps):
                # the LM head on the last position only (logits_to_keep); the backend adapts to the model
                out = lm.forward(x, cache=past, use_cache=True, logits_to_keep=1)  # type: ignore[attr-defined]
                past = out.cache
                logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()
                p = logp.gather(1, cand.unsqueeze(1)).squeeze(1).exp()
                probs_max = torch.maximum(probs_max, p)
                nxt = logp.argmax(dim=-1)
                gen.append(nxt)
                x = nxt.unsqueeze(1)
        best[start : start + cand.numel()] = probs_max.numpy()
        generated += torch.stack(gen, dim=1).tolist()
        if progress is not None:
            progress(min(len(token_ids), start + batch))
    return best, generated


def _shared_prefix(lm: object, prefix: torch.Tensor, x: torch.Tensor) -> tuple[object, torch.Tensor]:
    """Run the prompt's common prefix once (batch 1) and repeat its KV cache over the batch, so the
    batch only computes the rest: (cache, the rest of x). Without a prefix, or with a cache that
    cannot be repeated, (None, x): the whole prompt runs per candidate."""
    if prefix.numel() == 0:
        return None, x
    out = lm.forward(prefix.unsqueeze(0), use_cache=True, logits_to_keep=1)  # type: ignore[attr-defined]
    cache = out.cache
    if not hasattr(cache, "batch_repeat_interleave"):
        return None, x
    cache.batch_repeat_interleave(int(x.shape[0]))
    return cache, x[:, prefix.numel() :]
