"""The identifiers in DICOM data sets read by pydicom, for :mod:`bidsport.phi`.

:func:`identifiers_from_dataset` serves the anonymizer, which holds each data set in
memory; files are read by :mod:`bidsport.fileids` (no pydicom), which comes here for a
header its walk refuses (:func:`identifiers_of_file`). Kept apart from :mod:`bidsport.phi`
(the matching and scrubbing, pure) so that importing that does not import pydicom.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from bidsport.dicomio import pydicom  # first: pydicom without requests

# isort: split
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from bidsport.phi import (
    KINDS,
    SOURCE_KEYWORDS,
    VENDOR_KEYWORDS,
    Identifiers,
    clean_value,
    identifiers_found,
)

log = logging.getLogger(__name__)

_TAG_KIND: tuple[tuple[BaseTag, str], ...] = tuple(
    (BaseTag(tag_for_keyword(kw) or 0), kind) for kind, kws in SOURCE_KEYWORDS.items() for kw in kws
)
#: the tags :func:`identifiers_from_dataset` reads
SOURCE_TAGS: frozenset[BaseTag] = frozenset(tag for tag, _ in _TAG_KIND)


def identifiers_of_file(path: Path) -> Identifiers | None:
    """The identifiers in the header of ``path`` (nested sequences included); None for a
    file pydicom cannot read (``force``: a file without the preamble is read too)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # any unreadable file is already excluded elsewhere
        log.debug("no identifiers read from %s: %s", path, exc)
        return None
    return identifiers_from_dataset(ds)


def _multi(value: object) -> Iterator[str]:
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    for item in items:
        text = clean_value(item)
        if text:
            yield text


def identifiers_from_dataset(ds: Dataset, *, deep: bool = True) -> Identifiers:
    """The identifiers found in one header (with ``deep``, in nested sequences too)."""
    found: dict[str, set[str]] = {kind: set() for kind in KINDS}

    def visit(dataset: Dataset) -> None:
        for tag, kind in _TAG_KIND:
            if tag in dataset:
                value = dataset[tag].value
                if value is not None:
                    found[kind].update(_multi(value))
        if deep:
            for tag in list(dataset.keys()):
                if tag.is_private or _raw_vr(dataset, tag) != "SQ":
                    continue
                for item in dataset[tag].value or ():
                    visit(item)

    visit(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SourceApplicationEntityTitle" in meta:
        found["station"].update(_multi(meta.SourceApplicationEntityTitle))
    vendor = [v for key in VENDOR_KEYWORDS for v in _multi(ds.get(key) or "")]
    return identifiers_found(found, vendor)


def _raw_vr(dataset: Dataset, tag: BaseTag) -> str:
    """The VR of an element without decoding its value (dictionary VR for implicit VR)."""
    vr = dataset.get_item(tag).VR
    if vr is None or vr == "UN":
        try:
            return str(dictionary_VR(tag))
        except KeyError:
            return "UN"
    return str(vr)
