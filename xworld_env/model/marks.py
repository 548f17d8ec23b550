"""Thread-local marks that say how the DiT pass running in this thread computes.

The engine sets them around its passes (``quantize.dit_pass``, ``quantize.int8_blocks``,
``dit.attention_precision``); the layers read them, so that the DiT's ``forward`` needs no
arguments for a precision choice and a model shared between threads stays unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_STATE = threading.local()


@contextlib.contextmanager
def marked(name: str, value: object) -> Iterator[None]:
    """Sets this thread's mark ``name`` to ``value`` inside it, restoring it after."""
    before = getattr(_STATE, name, None)
    setattr(_STATE, name, value)
    try:
        yield
    finally:
        setattr(_STATE, name, before)


def mark(name: str) -> object:
    """This thread's mark ``name`` (set by the innermost ``marked``), or None."""
    return getattr(_STATE, name, None)
