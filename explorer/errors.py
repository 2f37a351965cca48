"""Exceptions that carry a message meant for the user.

`InputError` is raised for anything the user can fix (empty prompt, unknown model, bad
parameter). The CLI turns it into exit code 2 with a one-line message; the UI shows it as
an error toast. Any other exception is a bug.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the message says what is wrong and how to fix it."""


class ModelNotAvailableError(InputError):
    """The model id or path cannot be loaded here (not cached locally, offline, or unknown)."""


class UnsupportedArchitectureError(InputError):
    """The model loaded but we do not know where its blocks / final norm / unembedding live."""
