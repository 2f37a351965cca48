"""What is being attributed, and the batched forward passes every method shares.

An `AttributionTask` is one (context, target[, foil]) triple in token ids. The quantity all
methods explain is the *objective*

    f(x) = log p(target | x)                     (summed over the target's tokens)
    f(x) = log p(target | x) - log p(foil | x)   (contrastive, when a foil is given)

where a multi-token target (or foil) is scored by teacher forcing: the sum of its tokens'
log-probabilities after the context. Attribution is over the context tokens only.

The forward helpers run the causal LM on a batch of contexts (as ids or as input
embeddings), append the continuation, and ask the model for logits at the last `k` positions
only (`logits_to_keep`), which skips the LM head for every other position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer.backends.language import LanguageModel
from explorer.errors import InputError

# Rows x positions x vocab floats per chunk when full-sequence logits are needed (256 MB of float32).
LOGIT_CHUNK_FLOATS = 64 * 1024 * 1024


@dataclass(frozen=True)
class AttributionTask:
    """One attribution problem.

    context_ids: (P,) int64, the tokens that receive scores
    target_ids:  (K,) int64, the continuation whose log-probability is explained (K >= 1)
    foil_ids:    (M,) int64 or None; with a foil the objective is log p(target) - log p(foil)
    tokens:      P strings, the context tokens decoded one at a time
    """

    context_ids: torch.Tensor
    target_ids: torch.Tensor
    foil_ids: torch.Tensor | None
    tokens: list[str]

    @property
    def n_context(self) -> int:
        return int(self.context_ids.shape[0])

    @property
    def n_target(self) -> int:
        return int(self.target_ids.shape[0])


def resolve_continuation(
    lm: LanguageModel, text: str, what: str = "target"
) -> tuple[list[int], str, list[str]]:
    """Tokenise a target/foil string without special tokens and check it round-trips.

    Returns (ids, text as the tokenizer produces it, per-token strings). Raises InputError when
    the text yields no tokens, contains the unknown token, or decodes to something else (the
    model could never produce it); a difference only in case/outer spaces (e.g. an uncased
    tokenizer) is accepted.
    """
    if text is None or text == "":
        raise InputError(f"the {what} is empty: give the token text the model should produce, e.g. ' Paris'")
    ids = [int(i) for i in lm.tokenizer(text, add_special_tokens=False).input_ids]
    if not ids:
        raise InputError(f"the {what} {text!r} produces no tokens with this tokenizer")
    unk = getattr(lm.tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise InputError(
            f"the {what} {text!r} is not producible by the tokenizer: it contains characters that map to the "
            f"unknown token {lm.tokenizer.unk_token!r}"
        )
    decoded = str(lm.tokenizer.decode(ids))
    if decoded != text and decoded.strip().lower() != text.strip().lower():
        raise InputError(
            f"the {what} {text!r} is not producible by the tokenizer: it tokenises to {lm.tokens_str(ids)} "
            f"which decodes to {decoded!r}"
        )
    return ids, decoded, lm.tokens_str(ids)


def last_logits(
    lm: LanguageModel,
    k: int,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Model logits at the last `k` positions: (B, k, vocab) float32.

    Give either `input_ids` (B, T) or `inputs_embeds` (B, T, d). No cache, no attention mask
    (every row has the same length). Gradients flow if the inputs require them.
    """
    out = lm.forward(input_ids, inputs_embeds=inputs_embeds, logits_to_keep=k)
    return out.logits[:, -k:, :].float()


def continuation_logprob_ids(
    lm: LanguageModel, contexts: torch.Tensor, continuation: torch.Tensor, top_k: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sum of log p(continuation | context) for a batch of contexts given as ids.

    contexts: (B, P) int64; continuation: (K,) int64.
    Returns logp (B,) and, if `top_k` > 0, `in_top_k` (B,) bool: every continuation token is
    among the model's top-k predictions at its position (teacher forced).
    """
    b = contexts.shape[0]
    k = int(continuation.shape[0])
    cont = continuation.to(contexts.device)
    ids = torch.cat([contexts, cont[:-1].unsqueeze(0).expand(b, -1)], dim=1)  # (B, P + K - 1)
    logits = last_logits(lm, k, input_ids=ids)  # (B, K, V)
    logp = torch.log_softmax(logits, dim=-1)
    idx = cont.to(logits.device).view(1, k, 1).expand(b, k, 1)
    tok_lp = logp.gather(-1, idx).squeeze(-1)  # (B, K)
    hit = None
    if top_k > 0:
        tgt_logit = logits.gather(-1, idx)  # (B, K, 1)
        rank = (logits > tgt_logit).sum(-1)  # (B, K): tokens strictly above the target
        hit = (rank < top_k).all(dim=1)
    return tok_lp.sum(dim=1), hit


def continuation_logprob_embeds(
    lm: LanguageModel, context_embeds: torch.Tensor, continuation: torch.Tensor
) -> torch.Tensor:
    """Sum of log p(continuation | context) for contexts given as input embeddings.

    context_embeds: (B, P, d) (may require grad); continuation: (K,) int64. Returns (B,).
    The continuation's own embeddings (all but its last token) are appended unchanged.
    """
    b = context_embeds.shape[0]
    k = int(continuation.shape[0])
    cont = continuation.to(lm.device)
    if k > 1:
        tail = lm.embed_module()(cont[:-1]).to(context_embeds.dtype)  # (K-1, d)
        embeds = torch.cat([context_embeds, tail.unsqueeze(0).expand(b, -1, -1)], dim=1)
    else:
        embeds = context_embeds
    logits = last_logits(lm, k, inputs_embeds=embeds)
    logp = torch.log_softmax(logits, dim=-1)
    idx = cont.view(1, k, 1).expand(b, k, 1)
    return logp.gather(-1, idx).squeeze(-1).sum(dim=1)


def objective_embeds(lm: LanguageModel, task: AttributionTask, context_embeds: torch.Tensor) -> torch.Tensor:
    """The attributed objective f for a batch of context embeddings (B, P, d) -> (B,)."""
    value = continuation_logprob_embeds(lm, context_embeds, task.target_ids)
    if task.foil_ids is not None:
        value = value - continuation_logprob_embeds(lm, context_embeds, task.foil_ids)
    return value


def context_embeddings(lm: LanguageModel, task: AttributionTask) -> torch.Tensor:
    """Input embeddings of the context: (P, d), detached, in the model's dtype."""
    with torch.no_grad():
        return lm.embed(task.context_ids).detach()


def sequence_loglik(lm: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of each whole sequence: sum_{j>=1} log p(x_j | x_<j).

    ids: (B, T) int64 -> (B,) float32. Chunked over rows so the (rows, T, vocab) logits stay
    under LOGIT_CHUNK_FLOATS.
    """
    b, t = ids.shape
    if t < 2:
        return torch.zeros(b)
    rows = max(1, LOGIT_CHUNK_FLOATS // (t * max(1, lm.vocab_size)))
    out = []
    with torch.inference_mode():
        for start in range(0, b, rows):
            chunk = ids[start : start + rows].to(lm.device)
            logits = lm.forward(chunk).logits[:, :-1, :].float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, chunk[:, 1:].unsqueeze(-1)).squeeze(-1)
            out.append(logp.sum(dim=1).cpu())
    return torch.cat(out)
