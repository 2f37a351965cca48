"""Token pruning analyses. `image` prunes image patches inside a vision transformer."""

from explorer.analysis.pruning.image import (
    DEVIATIONS,
    IMAGE_STRATEGIES,
    ImagePruningResult,
    PruningRow,
    PruningSignals,
    prune_image,
    register_image_strategy,
    select_patches,
)

__all__ = [
    "DEVIATIONS",
    "IMAGE_STRATEGIES",
    "ImagePruningResult",
    "PruningRow",
    "PruningSignals",
    "prune_image",
    "register_image_strategy",
    "select_patches",
]
