"""Old import path: moved to `explorer.backends.sentence`."""

from explorer.backends.sentence import semantic_similarity

__all__ = ["semantic_similarity"]
