"""Old import path: the VLM backend lives in `explorer.backends.vlm`."""

from explorer.backends.vlm import *  # noqa: F403
from explorer.backends.vlm import _cache_kwarg, _cache_of, _decode_step, _stop_ids, _with_extra  # noqa: F401
