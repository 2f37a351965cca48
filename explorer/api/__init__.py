"""The public Python API: one module per analysis, plus the runner they share.

    runner.py       open_store / get_model / run_cached: cache key, store, in-flight sharing
    lens.py         logit_lens (text and, with an image, VLMs)
    attention.py    attention, attention_image
    attribution.py  attribute, attribute_generation, attribute_image
    pruning.py      prune, prune_text, prune_image
    vlm.py          visual_tokens, vlm_eval, vista_compare, latent_neighbours, text_bank
    atlas.py        token_map, map_scores, vocab_health, microscope, inspect_tokenizers
    export.py       export_figure, export_panel, list_figures

`explorer` re-exports the entry points (`explorer.logit_lens`, ...); the CLI and the UI call the
same functions. This package imports the runner and the lens only: the other modules load on use.
"""

from explorer.api.lens import logit_lens
from explorer.api.runner import (
    CachedRequest,
    DbArg,
    ProgressFn,
    get_model,
    list_runs,
    load_run,
    open_store,
    query_limits,
    run_cached,
    run_cached_many,
)

__all__ = [
    "CachedRequest",
    "DbArg",
    "ProgressFn",
    "get_model",
    "list_runs",
    "load_run",
    "logit_lens",
    "open_store",
    "query_limits",
    "run_cached",
    "run_cached_many",
]
