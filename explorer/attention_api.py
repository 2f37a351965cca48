"""Public API for the attention views of causal LMs (re-exported by `explorer` and `explorer.api`).

`attention(model, prompt)` runs exactly one forward pass (`explorer.trace.capture`) for the
request, computes every view (per-head matrices, rollout, entropy, sink shares and, when asked,
attention flow) from that one trace, stores the run and returns an `AttentionResult`. The UI
then re-renders layers, heads, tokens and sink choices from that result alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from explorer.analysis import attention as _att
from explorer.api import DbArg, ProgressFn, get_model, open_store, run_cached
from explorer.config import Settings
from explorer.models.loading import LanguageModel


def attention(
    model: str | LanguageModel | None,
    prompt: str,
    *,
    flow: bool = False,
    flow_positions: Sequence[int] = (-1,),
    db: DbArg = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
) -> _att.AttentionResult:
    """Attention of every layer and head over `prompt`, plus rollout, entropy and sink shares.

    `model`: embedded name (default "smollm2-135m"), hub id, local dir or a loaded
    `LanguageModel`. `flow=True` adds Abnar & Zuidema's attention flow from each of
    `flow_positions` (query positions after the last block; -1 = the last token) to every input
    token; it is exact max-flow, limited to prompts of at most `MAX_FLOW_TOKENS` tokens.
    Returns an `AttentionResult`; `.to_dict()` is the CLI's JSON.
    """
    settings = settings or Settings.from_env()
    params = _att.AttentionParams(flow=bool(flow), flow_positions=tuple(int(p) for p in flow_positions))
    params.validate()
    lm = get_model(model, settings, progress)
    return run_cached(
        _att.AttentionResult.kind,
        model_id=lm.model_id,
        weight_hash=lm.weight_hash,
        prompt=prompt,
        params={**params.to_json(), "max_tokens": settings.max_prompt_tokens},
        compute=lambda: _att.analyze_attention(
            lm, prompt, params=params, max_tokens=settings.max_prompt_tokens, progress=progress
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


MAX_FLOW_TOKENS = _att.MAX_FLOW_TOKENS
AttentionResult = _att.AttentionResult

__all__ = ["MAX_FLOW_TOKENS", "AttentionResult", "attention"]
