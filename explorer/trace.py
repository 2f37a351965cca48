"""Old import path: moved to `explorer.backends.trace` / `explorer.backends.language`."""

from explorer.backends.language import capture, encode
from explorer.backends.trace import Trace

__all__ = ["Trace", "capture", "encode"]
