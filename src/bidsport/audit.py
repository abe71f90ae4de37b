"""The PHI audit: search every file under a folder for the identifiers of the source data.

What is searched (:func:`audit_tree`):

* every file and folder name (each path component once) and every symlink target
  (links are reported, never followed);
* DICOM files: every element, recursively through sequences, private elements included,
  and the file meta; binary values (OB/OW/UN) decoded as Latin-1, gzip blocks inside them
  (GE protocol data) unpacked;
* JSON: every key and every value; TSV/CSV: header and cells; other text (logs, README,
  HTML reports, bval/bvec...): every line;
* NIfTI (``.nii``, ``.nii.gz``, ``.hdr``): the header text fields ``descrip``,
  ``aux_file``, ``intent_name``, ``db_name`` and every extension;
* gzip files are searched decompressed, zip and tar archives member by member (names and
  contents);
* as a backstop, the raw bytes of every file (for DICOM everything but the pixel data, for
  NIfTI the header and extensions, compressed files decompressed), so a format the parsers
  do not know still cannot hide an identifier.

Matching follows :mod:`bidsport.phi` (case-insensitive, values under 3 characters ignored,
short values only as whole tokens). A hit names the file, the field and the kind of
identifier with a reference like ``name#1``; never the identifier itself, so the report
can be shared. A file that cannot be read is reported too (kind ``unreadable``): the audit
cannot vouch for it.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import logging
import lzma
import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from bidsport.errors import PhiFoundError
from bidsport.phi import Identifiers, Matcher, matcher_for

log = logging.getLogger(__name__)

#: most bytes read from one file or archive member for the raw search
MAX_SCAN_BYTES = 256 * 1024 * 1024
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_DEFLATED = b"1.2.840.10008.1.2.1.99"
_TEXT_SUFFIXES = frozenset(
    {
        ".txt",
        ".log",
        ".md",
        ".rst",
        ".html",
        ".htm",
        ".xml",
        ".csv",
        ".tsv",
        ".bval",
        ".bvec",
        ".toml",
        ".yaml",
        ".yml",
        ".cfg",
        ".ini",
        ".sh",
        ".py",
        ".err",
        ".out",
    }
)


@dataclass(frozen=True)
class PhiHit:
    """One identifier found: where, and which kind (never the value itself)."""

    path: str  #: relative to the audited folder, with ``/``; identifiers in it as ``X``
    field: str  #: where in the file: "file name", "JSON $.InstitutionName", ...
    identifier_kind: str  #: "name", "id", "birth_date", ... or "unreadable"
    identifier_ref: str = ""  #: "name#1": kind and rank of the value in the identifiers

    def describe(self) -> str:
        ref = f" ({self.identifier_ref})" if self.identifier_ref else ""
        return f"{self.path}: {self.field}: {self.identifier_kind}{ref}"


class _Collector:
    """Hits of one file. Its path, and member names in fields, are shown with the
    identifiers replaced by ``X``: the report must not leak what it found."""

    def __init__(self, rel: str, matcher: Matcher) -> None:
        self.rel = matcher.scrub(rel)
        self.matcher = matcher
        self.hits: list[PhiHit] = []

    def text(self, value: str, where: str) -> None:
        for m in self.matcher.find(value):
            self.hits.append(PhiHit(self.rel, self.matcher.scrub(where), m.kind, m.ref))

    def raw(self, data: bytes, where: str) -> None:
        for m in self.matcher.find_bytes(data):
            self.hits.append(PhiHit(self.rel, f"{where} at byte {m.start}", m.kind, m.ref))

    def unreadable(self, why: str) -> None:
        self.hits.append(PhiHit(self.rel, f"unreadable: {why}", "unreadable"))


def audit_tree(root: Path, identifiers: Identifiers, *, skip: Iterable[Path] = ()) -> list[PhiHit]:
    """Every identifier found anywhere under ``root`` (empty list: clean).

    ``skip``: files or folders not searched (relative to ``root`` or absolute), e.g.
    ``sourcedata/raw`` of a dataset that is not anonymized and keeps the originals.
    """
    if identifiers.is_empty():
        log.warning("PHI audit of %s: no identifiers to search for (nothing was checked)", root)
        return []
    matcher = matcher_for(identifiers)
    hits: list[PhiHit] = []
    root = Path(root)
    skipped = {Path(os.path.relpath(root / s, root)) for s in skip}
    for rel in _walk(root, skipped):
        path = root / rel
        collector = _Collector(rel.as_posix(), matcher)
        name_field = "folder name" if path.is_dir() and not path.is_symlink() else "file name"
        collector.text(rel.name, name_field)
        if path.is_symlink():
            try:
                collector.text(os.readlink(path), "symlink target")
            except OSError as exc:
                collector.unreadable(f"symlink: {exc.strerror}")
        elif path.is_file():
            _audit_file(path, collector)
        hits.extend(collector.hits)
    if hits:
        log.warning("PHI audit of %s: %d hit(s)", root, len(hits))
    return hits


def _walk(root: Path, skipped: set[Path]) -> Iterator[Path]:
    """Relative paths of every entry under ``root`` (links not followed)."""
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=errors.append):
        base = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if base / d not in skipped)
        for name in dirnames + sorted(f for f in filenames if base / f not in skipped):
            yield base / name
    for exc in errors:
        log.warning("PHI audit: cannot list %s: %s", exc.filename, exc.strerror)


def check_tree(
    root: Path, identifiers: Identifiers, *, skip: Iterable[Path] = (), shown: int = 20
) -> None:
    """Raise :class:`PhiFoundError` listing the hits of :func:`audit_tree` (if any)."""
    hits = audit_tree(root, identifiers, skip=skip)
    if hits:
        lines = [hit.describe() for hit in hits[:shown]]
        more = f"\n  ... and {len(hits) - shown} more" if len(hits) > shown else ""
        raise PhiFoundError(
            f"the PHI audit found {len(hits)} identifier(s) of the source data in {root}:\n  "
            + "\n  ".join(lines)
            + more,
            "remove or re-create the files listed (re-run with --anonymize); the report names "
            "each identifier by kind and rank only",
        )


# --------------------------------------------------------------------------- files


def _audit_file(path: Path, out: _Collector) -> None:
    name = path.name.lower()
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        if name.endswith((".nii", ".nii.gz", ".hdr")):
            _audit_nifti(path, out)
        elif head[128:132] == b"DICM" or name.endswith((".dcm", ".ima")):
            _audit_dicom(path, out)
        elif name.endswith((".zip",)) or (head[:4] == b"PK\x03\x04"):
            _audit_zip(path, out)
        elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            _audit_tar(path, out)
        elif head[:2] == b"\x1f\x8b" or name.endswith((".bz2", ".xz")):
            _audit_stream(path, name, out)
        else:
            data = _read(path)
            _audit_content(path.name, data, out, "")
    except (
        OSError,
        EOFError,
        zlib.error,
        lzma.LZMAError,
        tarfile.TarError,
        zipfile.BadZipFile,
    ) as exc:
        out.unreadable(str(getattr(exc, "strerror", None) or exc))


def _read(path: Path, limit: int = MAX_SCAN_BYTES) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(limit)


def _audit_content(name: str, data: bytes, out: _Collector, prefix: str) -> None:
    """Structured search by file type, then the raw backstop for what it missed."""
    before = len(out.hits)
    lower = name.lower()
    if lower.endswith(".json"):
        _audit_json(data, out, prefix)
    elif lower.endswith((".tsv", ".csv")):
        _audit_table(data, out, prefix, "\t" if lower.endswith(".tsv") else ",")
    elif lower.endswith(tuple(_TEXT_SUFFIXES)) or _looks_like_text(data):
        _audit_lines(data, out, prefix)
    _backstop(data, out, f"{prefix}raw bytes", before)


def _backstop(data: bytes, out: _Collector, where: str, before: int) -> None:
    """Raw search, reporting only identifiers the structured search did not find."""
    seen = {hit.identifier_ref for hit in out.hits[before:]}
    for m in out.matcher.find_bytes(data):
        if m.ref not in seen:
            seen.add(m.ref)
            out.hits.append(PhiHit(out.rel, f"{where} at byte {m.start}", m.kind, m.ref))


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    return b"\x00" not in sample and bool(sample)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _audit_lines(data: bytes, out: _Collector, prefix: str) -> None:
    for number, line in enumerate(_decode(data).splitlines(), start=1):
        out.text(line, f"{prefix}line {number}")


def _audit_table(data: bytes, out: _Collector, prefix: str, sep: str) -> None:
    rows = list(csv.reader(io.StringIO(_decode(data)), delimiter=sep))
    if not rows:
        return
    header = rows[0]
    for col, name in enumerate(header):
        out.text(name, f"{prefix}header column {col + 1}")
    for number, row in enumerate(rows[1:], start=2):
        for col, cell in enumerate(row):
            column = header[col] if col < len(header) else str(col + 1)
            out.text(cell, f"{prefix}row {number} column {column}")


def _audit_json(data: bytes, out: _Collector, prefix: str) -> None:
    try:
        doc = json.loads(_decode(data))
    except ValueError:
        _audit_lines(data, out, prefix)
        return

    def visit(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                out.text(str(key), f"{prefix}JSON key {where}.{key}")
                visit(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                visit(item, f"{where}[{i}]")
        elif value is not None:
            out.text(str(value), f"{prefix}JSON {where}")

    visit(doc, "$")


def _audit_stream(path: Path, name: str, out: _Collector) -> None:
    opener: Any = gzip.open
    inner = name.removesuffix(".gz").removesuffix(".tgz")
    if name.endswith(".bz2"):
        opener, inner = bz2.open, name.removesuffix(".bz2")
    elif name.endswith(".xz"):
        opener, inner = lzma.open, name.removesuffix(".xz")
    with opener(path, "rb") as fh:
        data = fh.read(MAX_SCAN_BYTES)
    _audit_content(inner, data, out, "decompressed ")


def _audit_zip(path: Path, out: _Collector) -> None:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            prefix = f"member {info.filename}: "
            out.text(info.filename, f"{prefix}name")
            if not info.is_dir():
                with archive.open(info) as fh:
                    _audit_content(info.filename, fh.read(MAX_SCAN_BYTES), out, prefix)


def _audit_tar(path: Path, out: _Collector) -> None:
    with tarfile.open(path) as archive:
        for member in archive:
            prefix = f"member {member.name}: "
            out.text(member.name, f"{prefix}name")
            if member.issym() or member.islnk():
                out.text(member.linkname, f"{prefix}link target")
            elif member.isfile():
                fh = archive.extractfile(member)
                if fh is not None:
                    _audit_content(member.name, fh.read(MAX_SCAN_BYTES), out, prefix)


# --------------------------------------------------------------------------- NIfTI

_NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


def _audit_nifti(path: Path, out: _Collector) -> None:
    before = len(out.hits)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many kinds on corrupt files
        out.unreadable(f"not a readable NIfTI: {exc}")
        return
    header: Any = img.header
    for field in _NIFTI_TEXT_FIELDS:
        if field in header:
            value = header[field]
            text = value.item() if hasattr(value, "item") else value
            if isinstance(text, bytes):
                text = text.split(b"\x00")[0].decode("latin-1")
            out.text(str(text), f"NIfTI {field}")
    for i, ext in enumerate(getattr(header, "extensions", []) or []):
        content = ext.get_content()
        data = content if isinstance(content, bytes) else str(content).encode("utf-8")
        out.text(data.decode("latin-1"), f"NIfTI extension {i + 1} (code {ext.get_code()})")
    offset = int(header.get("vox_offset", 352) or 352) if hasattr(header, "get") else 352
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read(max(offset, 540))
    _backstop(data, out, "header bytes", before)


# --------------------------------------------------------------------------- DICOM


def _audit_dicom(path: Path, out: _Collector) -> None:
    data = _read(path)
    if _raw_clean(data, out.matcher):
        return
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=path.suffix.lower() in (".dcm", ".ima"))
    except (InvalidDicomError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        log.debug("%s: not parsed as DICOM (%s); raw search only", path, exc)
        _audit_content(path.name, data, out, "")
        return
    before = len(out.hits)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _dicom_walk(meta, out, "")
    pixels: tuple[int, int] | None = None
    try:
        _dicom_walk(ds, out, "")
        pixels = _pixel_span(ds, len(data))
    except Exception as exc:  # a corrupt element: keep the raw search
        log.debug("%s: DICOM walk stopped (%s)", path, exc)
    if pixels is None:
        _backstop(data, out, "raw bytes", before)
    else:
        _backstop(data[: pixels[0]], out, "raw bytes", before)
        _backstop(data[pixels[1] :], out, "raw bytes after pixel data", before)


def _raw_clean(data: bytes, matcher: Matcher) -> bool:
    """True when ``data`` certainly holds no identifier, so the (slow) element walk can be
    skipped: the identifiers are ASCII (the same bytes in every DICOM character set), the
    raw bytes do not contain them, and nothing is compressed (deflated transfer syntax,
    gzip blocks such as GE's protocol data)."""
    return (
        matcher.ascii_only
        and _DEFLATED not in data[:4096]
        and b"\x1f\x8b\x08" not in data
        and not matcher.find_bytes(data)
    )


def _pixel_span(ds: Dataset, size: int) -> tuple[int, int] | None:
    for tag in _PIXEL_TAGS:
        if tag in ds:
            elem = ds.get_item(tag)
            tell = getattr(elem, "value_tell", None) or getattr(elem, "file_tell", None)
            if tell:
                length = getattr(elem, "length", None)
                end = size if length in (None, 0xFFFFFFFF) else tell + int(length or 0)
                return tell, min(end, size)
    return None


def _dicom_walk(ds: Dataset, out: _Collector, where: str) -> None:
    """Search every element of ``ds``; ``where`` is the path of the enclosing items."""
    for elem in ds:
        tag = int(elem.tag)
        if tag in _PIXEL_TAGS:
            continue
        name = elem.keyword
        if not name and elem.tag.is_private:
            name = f"[{elem.private_creator}]" if elem.private_creator else "[private]"
        label = f"{where}({elem.tag.group:04X},{elem.tag.element:04X}) {name}".rstrip()
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or ()):
                _dicom_walk(item, out, f"{label}[{i}] > ")
            continue
        value = elem.value
        field = f"DICOM {label}"
        if isinstance(value, bytes | bytearray):
            _dicom_bytes(bytes(value), out, field)
        elif isinstance(value, MultiValue | list | tuple):
            out.text("\\".join(str(v) for v in value), field)
        elif value is not None:
            out.text(str(value), field)


def _dicom_bytes(value: bytes, out: _Collector, field: str) -> None:
    out.text(value.decode("latin-1"), field)
    start = value.find(b"\x1f\x8b", 0, 16)
    if start >= 0:
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(
                value[start:], MAX_SCAN_BYTES
            )
        except zlib.error:
            return
        out.text(inner.decode("latin-1"), f"{field} (gzip content)")
