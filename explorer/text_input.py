"""Checks on user text that must run before anything expensive (tokenising, hashing, storing).

Text that is not valid Unicode (lone surrogates, e.g. from undecodable command-line bytes)
and text far longer than the token limit allows are refused with an `InputError`; the CLI
turns it into exit code 2, the UI into a message.
"""

from __future__ import annotations

from explorer.errors import InputError


def check_text(text: str, label: str = "the text") -> str:
    """`text` unchanged if it encodes as UTF-8; otherwise InputError naming the position."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{label} is not valid text: character {exc.start} is an unpaired surrogate "
            f"({text[exc.start]!a}); check the input's encoding"
        ) from None
    return text


def check_prompt(prompt: str | None, max_tokens: int, chars_per_token: int = 32) -> str:
    """Refuse an empty, invalid or over-long prompt by characters, before tokenising it.

    A token is rarely longer than `chars_per_token` characters, so text longer than
    `max_tokens * chars_per_token` cannot fit in `max_tokens` tokens: tokenising a 5 MB prompt
    only to refuse it costs seconds and hundreds of MB."""
    if prompt is None or not prompt.strip():
        raise InputError("the prompt is empty: type some text to analyse")
    limit = max_tokens * chars_per_token
    if len(prompt) > limit:
        raise InputError(
            f"the prompt is {len(prompt):,} characters long; the limit is {limit:,} "
            f"({max_tokens} tokens; set EXPLORER_MAX_PROMPT_TOKENS to raise it)"
        )
    return check_text(prompt, "the prompt")
