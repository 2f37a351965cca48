"""The public Python API: one module per analysis, plus the runner they share.

    runner.py       open_store / get_model / run_cached: cache key, store, in-flight sharing
    lens.py         logit_lens (text and, with an image, VLMs)
    attention.py    attention, attention_image
    attribution.py  attribute, attribute_generation, attribute_image
    pruning.py      prune, prune_text, prune_image
    vlm.py          visual_tokens, vlm_eval, vista_compare, latent_neighbours, text_bank
    atlas.py        token_map, map_scores, vocab_health, microscope, inspect_tokenizers
    export.py       export_figure, export_panel, list_figures
    sweep.py        sweep, list_sweeps: one analysis over every row of a dataset (explorer.sweeps)

Where the engine has a function of the same name (`analysis.logit_lens.logit_lens`,
`analysis.pruning.text.prune_text`, ...), the API function is `run_<name>`. The public names are
`explorer.logit_lens`, `explorer.prune_text`, ... (`explorer/__init__.py`); the CLI and the UI call
the same functions. This package imports the runner and the lens only (`explorer.api.logit_lens`
stays for notebooks written before the split); the other modules load on first use.
"""

from explorer.api.lens import run_logit_lens as logit_lens
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
