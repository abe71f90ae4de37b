"""The identifiers in the original DICOM headers (pydicom), for :mod:`bidsport.phi`.

Kept apart from :mod:`bidsport.phi` (the matching and scrubbing, pure) so that a run
without ``--anonymize`` does not import pydicom (~0.3 s) in its main process: it reads the
identifiers of each series with :func:`read_identifiers` in a worker process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from bidsport.dicomio import pydicom  # first: pydicom without requests

# isort: split
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from bidsport.phi import (
    FIELDS,
    KINDS,
    SOURCE_KEYWORDS,
    Identifiers,
    clean_value,
    merge_identifiers,
)

log = logging.getLogger(__name__)

_TAG_KIND: tuple[tuple[BaseTag, str], ...] = tuple(
    (BaseTag(tag_for_keyword(kw) or 0), kind) for kind, kws in SOURCE_KEYWORDS.items() for kw in kws
)
#: the tags :func:`identifiers_from_dataset` reads
SOURCE_TAGS: frozenset[BaseTag] = frozenset(tag for tag, _ in _TAG_KIND)


def read_identifiers(paths: Iterable[Path]) -> Identifiers:
    """The identifiers in the headers of ``paths`` (nested sequences included)."""
    found = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # any unreadable file is already excluded elsewhere
            log.debug("no identifiers read from %s: %s", path, exc)
            continue
        found.append(identifiers_from_dataset(ds))
    return merge_identifiers(found)


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
    # a site or station "named" after the vendor or model identifies nothing, and would
    # make every Manufacturer field a hit
    vendor = {
        v.casefold()
        for key in ("Manufacturer", "ManufacturerModelName")
        for v in _multi(ds.get(key) or "")
    }
    for kind in ("institution", "station", "address"):
        found[kind] = {v for v in found[kind] if v.casefold() not in vendor}
    # placeholders left by earlier de-identification ("***", "ANONYMOUS"...) are no PHI
    for kind in KINDS:
        found[kind] = {v for v in found[kind] if v.strip("*?-_ .").casefold() not in _PLACEHOLDERS}
    return Identifiers(**{FIELDS[kind]: frozenset(values) for kind, values in found.items()})


_PLACEHOLDERS = frozenset(
    {
        "",
        "anonymous",
        "anonymized",
        "anon",
        "unknown",
        "none",
        "n/a",
        "na",
        "removed",
        "deidentified",
        "de-identified",
        "xxx",
        "x",
    }
)


def _raw_vr(dataset: Dataset, tag: BaseTag) -> str:
    """The VR of an element without decoding its value (dictionary VR for implicit VR)."""
    vr = dataset.get_item(tag).VR
    if vr is None or vr == "UN":
        try:
            return str(dictionary_VR(tag))
        except KeyError:
            return "UN"
    return str(vr)
