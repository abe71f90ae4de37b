"""Importing a library without an optional dependency it would load for nothing.

Used by :mod:`bidsport.niftiio` (nibabel without pydicom) and :mod:`bidsport.dicomio`
(pydicom without requests): both libraries treat the other as optional and work without
it, and leaving it out saves ~0.07-0.15 s per import in processes that start often.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def without(hidden: str, *, importing: str) -> Iterator[None]:
    """Inside the block, ``import hidden`` fails as if it were not installed, unless
    ``hidden`` or ``importing`` (the module the block imports) is loaded already.

    Afterwards ``hidden`` imports as usual; only the modules imported inside the block
    have seen it missing. The hiding is process-wide (``sys.modules``): use it at module
    import time, before the process starts threads that could import ``hidden``.
    """
    hide = hidden not in sys.modules and importing not in sys.modules
    if hide:
        sys.modules[hidden] = None  # type: ignore[assignment]  # "import hidden" fails
    try:
        yield
    finally:
        if hide and hidden in sys.modules and sys.modules[hidden] is None:
            del sys.modules[hidden]
