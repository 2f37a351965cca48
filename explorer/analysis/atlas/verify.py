"""Verification by prompting (Land & Bartolo 2024, section 2.3 and appendix A): ask the model to
repeat a token and record the highest probability it gives that token over the first `steps`
greedy steps, maximised over the paper's prompt templates.

The templates are the paper's three (a phrase repeated, a repetition device, an assistant
explaining a phrase), as plain text without a chat template, as in the paper's code. Each is built
once with a placeholder token (a long alphabetic token that round-trips, chosen as in the paper's
code) and the candidate's id is written over the placeholder's positions, so the candidate is fed
as its id even when no string encodes to it, and every prompt in a batch has the same length
(no padding). The part of the prompt before the first slot is the same for every candidate: it runs
once per batch and its KV cache is shared.

A token counts as verified under-trained when that maximum stays below `VERIFIED` (0.01, the
paper's threshold); the classes are the paper repository's, with its 0.001-0.1 "weak" band split
at 0.01. Templates run in turn, cheapest first, and a token stops as soon as one template gives it
more than `WEAK_REJECT` (0.1): the maximum can then only grow, so whether it verifies is already
decided, exactly as if every template had run (its recorded maximum is then a lower bound, and
"weak_rejected" may stand for "strong_rejected").
Deviation: fewer in-context repetitions than the paper (`REPETITIONS`: 10 instead of 50, 3 instead
of 20) so that 300 candidates verify in about a minute on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

# name: (preamble, input phrase, completion); in the order they run: fewest tokens after the shared prefix first
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "assistant_explain": (
        "This helpful assistant explains what a phrase means, replying with identical responses to identical "
        "questions for reliability.",
        "\nUser: What does 'edslfkj' mean?\nAssistant: 'edslfkj' has no specific meaning I am aware of."
        "\nUser: what does '{token}' mean?\nAssistant:",
        " '{token}'",
    ),
    "repeats": (
        "Below is the output, as you can see it's just giving the same phrase repeated indefinitely:\n",
        "{token}",
        "{token}",
    ),
    "input_output": (
        "This device repeats its input exactly, as shown in these 100 identical trials.",
        "\nInput: «{token}»\nOutput:",
        " «{token}»",
    ),
}
PAPER_REPETITIONS = {"repeats": 50, "assistant_explain": 0, "input_output": 20}
REPETITIONS = {"repeats": 10, "assistant_explain": 0, "input_output": 3}
STRONG_REJECT = 0.9
WEAK_REJECT = 0.1
VERIFIED = 0.01  # max probability below this: verified under-trained (the paper's p = 0.01)
STRONG_VERIFY = 0.001
MAX_BATCH_TOKENS = 4096
STATUSES = ("strong_verified", "verified", "weak_verified", "weak_rejected", "strong_rejected")


def status(max_prob: float) -> str:
    """The paper repository's classes of a verification result ("weak_verified" = 0.01-0.1 here)."""
    if max_prob > STRONG_REJECT:
        return "strong_rejected"
    if max_prob > WEAK_REJECT:
        return "weak_rejected"
    if max_prob < STRONG_VERIFY:
        return "strong_verified"
    if max_prob < VERIFIED:
        return "verified"
    return "weak_verified"


def is_verified(max_prob: float) -> bool:
    return bool(max_prob < VERIFIED)


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


def build_templates(
    tokenizer: object, placeholder: int, names: Sequence[str], repetitions: dict[str, int] | None = None
) -> list[PromptTemplate]:
    text = tokenizer.decode([placeholder])  # type: ignore[attr-defined]
    bos = getattr(tokenizer, "bos_token_id", None)
    trailing = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []} - {bos}
    reps = REPETITIONS if repetitions is None else repetitions
    out = []
    for name in names:
        preamble, phrase, completion = TEMPLATES[name]
        n = reps[name]
        prompt = preamble + (phrase + completion) * n + phrase + completion[: completion.index("{")]
        raw = list(tokenizer(prompt.format(token=text)).input_ids)  # type: ignore[operator]
        while raw and raw[-1] in trailing:  # an appended EOS / [SEP] would end the prompt
            raw.pop()
        if (raw.count(placeholder) != 2 * n + 1) and phrase == completion == "{token}":
            # the token written 2n+1 times: as ids when its text merges with itself (WordPiece)
            raw = list(tokenizer(preamble).input_ids)  # type: ignore[operator]
            while raw and raw[-1] in trailing:
                raw.pop()
            raw += [placeholder] * (2 * n + 1)
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
    prefix = int(template.slots.min())  # every candidate's prompt is the same up to the first slot
    batch = max(1, MAX_BATCH_TOKENS // max(1, length - prefix + steps))
    best = np.zeros(len(token_ids), dtype=np.float64)
    generated: list[list[int]] = []
    for start in range(0, len(token_ids), batch):
        cand = torch.tensor(token_ids[start : start + batch], dtype=torch.long)
        x = template.ids.unsqueeze(0).repeat(cand.numel(), 1)
        x[:, template.slots] = cand.unsqueeze(1)
        probs_max = torch.zeros(cand.numel())

        def track(step: int, logits: torch.Tensor, cand: torch.Tensor = cand) -> torch.Tensor:
            nonlocal probs_max
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            probs_max = torch.maximum(probs_max, logp.gather(1, cand.unsqueeze(1)).squeeze(1).exp())
            return logits

        with lm.lock:  # type: ignore[attr-defined]
            past, x = _shared_prefix(lm, template.ids[:prefix], x)
            # greedy decoding by the backend (KV cache, last-position logits only), continuing the
            # shared prefix's cache; `track` reads each step's probability of the candidate
            out = lm.generate(x, steps, cache=past, stop_at_eos=False, logits_hook=track)  # type: ignore[attr-defined]
        best[start : start + cand.numel()] = probs_max.numpy()
        generated += out.tokens.tolist()
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
    cache = lm.repeat_cache(out.cache, int(x.shape[0]))  # type: ignore[attr-defined]
    if cache is None:
        return None, x
    return cache, x[:, prefix.numel() :]


@dataclass
class Verifier:
    """Verification with memory: each (template, token) is probed once, so the detectors share
    their results (a token screened by GlitchHunter and also a Magikarp candidate is prompted once)."""

    lm: object
    templates: list[PromptTemplate]
    steps: int = 3
    stop_above: float = WEAK_REJECT
    _seen: dict[str, dict[int, tuple[float, list[int]]]] = field(default_factory=dict, repr=False)
    probed: int = 0  # (template, token) prompts actually run

    def template_probs(
        self, template: PromptTemplate, ids: Sequence[int]
    ) -> tuple[np.ndarray, list[list[int]]]:
        seen = self._seen.setdefault(template.name, {})
        need = [int(i) for i in dict.fromkeys(int(i) for i in ids) if int(i) not in seen]
        if need:
            probs, gen = probe(self.lm, template, need, steps=self.steps)
            self.probed += len(need)
            for tid, p, g in zip(need, probs.tolist(), gen, strict=True):
                seen[tid] = (float(p), g)
        rows = [seen[int(i)] for i in ids]
        return np.array([r[0] for r in rows], dtype=np.float64), [r[1] for r in rows]

    def screen(self, ids: Sequence[int]) -> np.ndarray:
        """GlitchHunter's screening probe: the same verdict as `verify` (every result is kept)."""
        return self.verify(ids)[0]

    def verify(
        self, ids: Sequence[int], progress: Callable[[float, str], None] | None = None
    ) -> tuple[np.ndarray, list[list[int]], list[str]]:
        """Cascade over the templates: (max probability per id, the generated ids and the name of the
        template that gave it)."""
        ids = [int(i) for i in ids]
        best = np.zeros(len(ids))
        outs: list[list[int]] = [[] for _ in ids]
        names = [""] * len(ids)
        active = np.arange(len(ids))
        for ti, template in enumerate(self.templates):
            if active.size == 0:
                break
            if progress is not None:
                progress(ti / len(self.templates), f"template {template.name}: {active.size} tokens")
            probs, gen = self.template_probs(template, [ids[k] for k in active])
            for k, p, g in zip(active.tolist(), probs.tolist(), gen, strict=True):
                if p >= best[k]:
                    best[k], outs[k], names[k] = p, g, template.name
            active = active[best[active] <= self.stop_above]
        return best, outs, names
