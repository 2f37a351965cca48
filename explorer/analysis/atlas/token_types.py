"""Token types for colouring: word, number, punctuation, whitespace, special, visual."""

from __future__ import annotations

import unicodedata
from collections.abc import Collection

TOKEN_TYPES = ("word", "number", "punctuation", "whitespace", "special", "visual")
# Function words the LLM-Microscope paper singles out (determiners, articles, prepositions, conjunctions).
STOPWORDS = frozenset(
    "a an the this that these those some any each every no and or but nor so yet of in on at to for with "
    "by from as is are was were be been it its".split()
)


def token_type(text: str, token_id: int, special_ids: Collection[int], visual: bool = False) -> str:
    """Classify one decoded token."""
    if visual:
        return "visual"
    if token_id in special_ids:
        return "special"
    stripped = text.strip()
    if not stripped:
        return "whitespace"
    if all(unicodedata.category(c)[0] in "PS" for c in stripped):
        return "punctuation"
    if all(c.isdigit() or c in ".,_" for c in stripped) and any(c.isdigit() for c in stripped):
        return "number"
    return "word"


def word_class(text: str, kind: str) -> str:
    """A finer class for the context ranking: punctuation, stopword, number, word, special, ..."""
    if kind == "word" and text.strip().lower() in STOPWORDS:
        return "stopword"
    return kind


def special_ids(tokenizer: object) -> set[int]:
    return {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
