"""Organize: decide which files of a session are used, and lay out the flat DICOM folder.

Each session gets ``sourcedata/dicom/sub-<s>[/ses-<t>]/`` holding one entry per usable
file: a relative symlink to the imported file (default) or a copy. The entry names are
derived from series and instance numbers plus a short hash of the source path, so they
are unique, stable across re-runs and free of anything the packet or file names carried.

Files written without the 128-byte preamble (starting with ``DICM`` or directly with
their file meta information) are read by :func:`bidsport.header.read_header` but
silently skipped by dcm2niix, which would lose their slices: their entry is a copy with
the preamble (and ``DICM``) put back, never a link. The imported file is not changed.
Only files whose header says they lack the preamble (``FileHeader.has_preamble``) are
opened again to find out what they lack.

Laying out costs one system call per new entry (a symlink straight under its final name
in a folder listed once) and one ``readlink`` per entry already there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from bidsport.errors import OutputError
from bidsport.fileops import (
    atomic_path,
    copy_file,
    ensure_dir,
    relative_symlink,
    relative_target,
)
from bidsport.index import file_exclusion
from bidsport.records import FileHeader

log = logging.getLogger(__name__)

_PREAMBLE = bytes(128)
#: first bytes of a file meta information element (group 0002, explicit VR little endian)
_META_START = b"\x02\x00"


@dataclass(frozen=True)
class FileDecision:
    """What organize decided for one file of a session."""

    source: Path  #: the imported file
    flat_name: str | None  #: its name in the flat folder, None when excluded
    series_uid: str | None
    reason: str | None  #: why it is excluded, None when used
    #: from the header: False when the file lacks the 128-byte preamble and "DICM"
    #: (:func:`lay_out` then checks what it lacks and makes a repaired copy)
    has_preamble: bool = True


def flat_name(header: FileHeader, source_key: str) -> str:
    """``<series>_<instance>_<hash>.dcm``: unique, stable, and free of source names.

    >>> from pathlib import Path
    >>> h = FileHeader(Path("x"), 0, 0, series_number=3, instance_number=12)
    >>> flat_name(h, "pkt/a/IM0001")
    '0003_000012_247a3c68.dcm'
    """
    digest = hashlib.sha1(source_key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    series = header.series_number if header.series_number is not None else 0
    instance = header.instance_number if header.instance_number is not None else 0
    return f"{series:04d}_{instance:06d}_{digest}.dcm"


_NOT_CONTENT = frozenset({"path", "size", "mtime_ns"})


def _same_content(a: FileHeader, b: FileHeader) -> bool:
    """True when two headers agree on size and every field read (a plain duplicate)."""
    return a.size == b.size and all(
        getattr(a, f.name) == getattr(b, f.name)
        for f in dataclasses.fields(FileHeader)
        if f.name not in _NOT_CONTENT
    )


def decide_files(
    headers: Iterable[FileHeader],
    raw_root: Path,
    *,
    keep_derived: bool = False,
    skip_checks: bool = False,
    keep_derived_series: Collection[str] = (),
) -> list[FileDecision]:
    """Which readable DICOM files are used (pure: no I/O).

    Headers are decided in the order given (the scan's order of relative paths). A file
    whose SOPInstanceUID was already used is excluded, naming the file kept: a copy sent
    twice, or a different image under the same UID (a re-sent, re-processed or broken
    export), which the reason says when the headers differ. Derived images of the series
    in ``keep_derived_series`` (SeriesInstanceUIDs) are kept as with ``keep_derived``.
    """
    decisions = []
    seen: dict[str, FileHeader] = {}
    for h in headers:
        keep = keep_derived or (h.series_uid is not None and h.series_uid in keep_derived_series)
        reason = None if skip_checks else file_exclusion(h, keep_derived=keep)
        if reason is None and h.sop_instance_uid and h.sop_instance_uid in seen:
            first = seen[h.sop_instance_uid]
            reason = f"duplicate SOPInstanceUID of {relative_target(first.path, raw_root)}"
            if not _same_content(h, first):
                reason += " (with different content: only that first file is used)"
        if reason is None and not h.series_uid:
            reason = "no SeriesInstanceUID"
        key = relative_target(h.path, raw_root)  # os.path.relpath, once per folder
        if reason is None:
            if h.sop_instance_uid:
                seen[h.sop_instance_uid] = h
            decisions.append(
                FileDecision(h.path, flat_name(h, key), h.series_uid, None, h.has_preamble)
            )
        else:
            decisions.append(FileDecision(h.path, None, h.series_uid, reason, h.has_preamble))
    return decisions


def missing_prefix(path: Path) -> bytes:
    """What ``path`` lacks at its start to be a DICOM file (Part 10) that dcm2niix reads.

    ``b""`` for a file with the preamble and ``DICM`` (and for a raw data set without file
    meta information, which dcm2niix reads); the 128-byte preamble for a file starting with
    ``DICM``; the preamble and ``DICM`` for a file starting with its file meta information.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return b""  # unreadable now: linked as it is, the conversion reports it
    if head[128:132] == b"DICM":
        return b""
    if head[:4] == b"DICM":
        return _PREAMBLE
    if head[:2] == _META_START:
        return _PREAMBLE + b"DICM"
    return b""


def _copy_with_prefix(src: Path, dst: Path, prefix: bytes) -> None:
    try:
        with atomic_path(dst) as tmp, open(src, "rb") as inp, open(tmp, "wb") as out:
            out.write(prefix)
            shutil.copyfileobj(inp, out)
    except OSError as exc:  # reading the source failed (atomic_path explains writes)
        raise OutputError(f"cannot copy {src} to {dst}: {exc.strerror or exc}") from exc


_LINK, _FILE, _OTHER = "link", "file", "other"


def _entries(folder: Path) -> dict[str, str]:
    """Name → kind (``_LINK``, ``_FILE`` or ``_OTHER``) of every entry of ``folder``.

    One listing (the kinds come with it on common file systems: no ``stat`` per entry).
    """
    try:
        with os.scandir(folder) as it:
            return {entry.name: _kind(entry) for entry in it}
    except OSError as exc:
        raise OutputError(f"cannot list {folder}: {exc.strerror or exc}") from exc


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return _LINK
    return _FILE if entry.is_file(follow_symlinks=False) else _OTHER


def _points_to(link: str, rel: str) -> bool:
    try:
        return os.readlink(link) == rel
    except OSError:  # gone, or no longer a link
        return False


def lay_out(decisions: Iterable[FileDecision], dicom_dir: Path, *, symlink: bool = True) -> int:
    """Create the flat folder entries for the used files; return how many were made.

    Existing entries that already point at the right file are left alone (one
    ``readlink`` each); other entries of the same name are replaced. Files without their
    preamble get a repaired copy (see :func:`missing_prefix`) instead of a link.
    """
    ensure_dir(dicom_dir)
    present = _entries(dicom_dir)  # what is there before this call, and what it made
    folder = os.fspath(dicom_dir)
    made = 0
    for decision in decisions:
        name = decision.flat_name
        if name is None:
            continue
        source = decision.source
        dst = os.path.join(folder, name)
        kind = present.get(name)
        if symlink and kind == _LINK and _points_to(dst, relative_target(source, folder)):
            continue
        prefix = b"" if decision.has_preamble else missing_prefix(source)
        if prefix:
            if _is_repaired_copy(source, Path(dst), kind, prefix):
                continue
            log.info("%s has no DICOM preamble: %s is a repaired copy", source, dst)
            _copy_with_prefix(source, Path(dst), prefix)
            present[name] = _FILE
        elif symlink:
            relative_symlink(source, dst, replace=kind is not None)
            present[name] = _LINK
        else:
            if kind == _FILE and os.stat(dst).st_size == source.stat().st_size:
                continue
            copy_file(source, Path(dst))
            present[name] = _FILE
        made += 1
    return made


def _is_repaired_copy(source: Path, dst: Path, kind: str | None, prefix: bytes) -> bool:
    """True when ``dst`` is a file of the size of ``source`` with ``prefix`` put back."""
    if kind != _FILE:
        return False
    try:
        return dst.stat().st_size == source.stat().st_size + len(prefix)
    except OSError:
        return False
