"""pydicom, imported without requests: ``from bidsport.dicomio import pydicom``.

Where requests is installed (it is no dependency of bidsport, but most Python
environments have it), pydicom imports it (~70 ms of the ~0.28 s its import takes) only
to download its own test files, and falls back on urllib without it. This module imports
pydicom with requests hidden, unless either is loaded already; requests itself stays
importable.
:mod:`bidsport.sourceids` (pydicom's reading of identifiers, which a participant-level
run without ``--anonymize`` falls back on for a header bidsport's walker refuses) imports
pydicom through this module first.
"""

from __future__ import annotations

from bidsport.importing import without

with without("requests", importing="pydicom"):
    import pydicom

__all__ = ["pydicom"]
