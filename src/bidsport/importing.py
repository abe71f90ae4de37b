"""Importing a library without optional dependencies it would load for nothing.

Used by :mod:`bidsport.niftiio` (nibabel without pydicom) and :mod:`bidsport.dicomio`
(pydicom without requests): each library treats the others as optional and works without
them, and leaving them out saves ~0.07-0.15 s per import in processes that start often.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def without(*hidden: str, importing: str) -> Iterator[None]:
    """Inside the block, ``import name`` fails for each ``hidden`` name as if it were not
    installed, unless that name or ``importing`` (the module the block imports) is
    loaded already.

    Afterwards the hidden modules import as usual; only the modules imported inside the
    block have seen them missing. The hiding is process-wide (``sys.modules``): use it
    where no other thread can import them meanwhile (at module import time, before the
    process starts threads, or in a worker process that runs one task at a time).
    """
    hide = [] if importing in sys.modules else [name for name in hidden if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" fails
    try:
        yield
    finally:
        for name in hide:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
