"""Token pruning analyses: `text` prunes prompt tokens of a causal LM, `image` prunes image
patches inside a vision transformer. Both follow one strategy protocol, validator and row type
(`common`)."""

from explorer.analysis.pruning.common import (
    DEFAULT_KEEP_RATIOS,
    PruningRow,
    PruningStrategy,
    StrategyRegistry,
    keep_count,
    resolve_keep_ratios,
)
from explorer.analysis.pruning.image import (
    IMAGE_STRATEGIES,
    ImagePruningResult,
    PruningSignals,
    prune_image,
    register_image_strategy,
    select_patches,
)

__all__ = [
    "DEFAULT_KEEP_RATIOS",
    "IMAGE_STRATEGIES",
    "ImagePruningResult",
    "PruningRow",
    "PruningSignals",
    "PruningStrategy",
    "StrategyRegistry",
    "keep_count",
    "prune_image",
    "register_image_strategy",
    "resolve_keep_ratios",
    "select_patches",
]
