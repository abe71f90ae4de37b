"""pydicom, imported without requests: ``from bidsport.dicomio import pydicom``.

pydicom imports requests (~70 ms of the ~0.28 s its import takes) only to download its
own test files, and falls back on urllib without it. This module imports pydicom with
requests hidden, unless either is loaded already; requests itself stays importable.
Modules that run in every participant-level run (the helper process reading each
series' identifiers: :mod:`bidsport.sourceids`) import pydicom through this module first.
"""

from __future__ import annotations

import sys

_HIDE = "pydicom" not in sys.modules and "requests" not in sys.modules
if _HIDE:
    sys.modules["requests"] = None  # type: ignore[assignment]  # "import requests" fails
try:
    import pydicom
finally:
    if _HIDE:
        del sys.modules["requests"]

__all__ = ["pydicom"]
