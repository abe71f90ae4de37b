"""Importing a library without optional dependencies it would load for nothing.

Used by :mod:`bidsport.niftiio` (nibabel without pydicom and scipy, and with
``urllib.request`` deferred) and :mod:`bidsport.dicomio` (pydicom without requests): each
library treats the others as optional and works without them, and leaving them out saves
~0.03-0.15 s per import in processes that start often.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def without(*hidden: str, importing: str, deferred: tuple[str, ...] = ()) -> Iterator[None]:
    """Inside the block, ``import name`` fails for each ``hidden`` name as if it were not
    installed, unless that name or ``importing`` (the module the block imports) is
    loaded already.

    Afterwards the hidden modules import as usual; only the modules imported inside the
    block have seen them missing. The hiding is process-wide (``sys.modules``): use it
    where no other thread can import them meanwhile (at module import time, before the
    process starts threads, or in a worker process that runs one task at a time).

    Each ``deferred`` module (one the library imports but uses only in functions bidsport
    never calls) not loaded yet is made lazy (:class:`importlib.util.LazyLoader`): it is
    bound at once and runs its code at the first use of one of its attributes. It stays
    the module of that name, for every later import. Before Python 3.13 the lazy loader
    holds no lock: two threads that use the module for the first time at once may see
    it half loaded. Defer only modules that bidsport does not use at all.
    """
    loaded = importing in sys.modules
    hide = [] if loaded else [name for name in hidden if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" fails
    try:
        for name in [] if loaded else deferred:
            if name not in sys.modules:
                _bind_lazily(name)
        yield
    finally:
        for name in hide:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def _bind_lazily(name: str) -> None:
    """Put a lazy module ``name`` into ``sys.modules`` and onto its package (the
    ``importlib`` documentation's recipe). Binding it onto the package matters: ``from
    package import name`` otherwise asks the import system, which reads the lazy module's
    ``__spec__`` and so runs its code."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    package, _, child = name.rpartition(".")
    if package:
        setattr(sys.modules[package], child, module)
