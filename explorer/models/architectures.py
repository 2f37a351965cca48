"""Old import path: moved to `explorer.backends.architectures`."""

from explorer.backends.architectures import ArchitectureSpec, architecture_for, register_architecture

__all__ = ["ArchitectureSpec", "architecture_for", "register_architecture"]
