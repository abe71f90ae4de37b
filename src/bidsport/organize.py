"""Organize: decide which files of a session are used, and lay out the flat DICOM folder.

Each session gets ``sourcedata/dicom/sub-<s>[/ses-<t>]/`` holding one entry per usable
file: a relative symlink to the imported file (default) or a copy. The entry names are
derived from series and instance numbers plus a short hash of the source path, so they
are unique, stable across re-runs and free of anything the packet or file names carried.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bidsport.fileops import copy_file, ensure_dir, relative_symlink
from bidsport.index import file_exclusion
from bidsport.records import FileHeader


@dataclass(frozen=True)
class FileDecision:
    """What organize decided for one file of a session."""

    source: Path  #: the imported file
    flat_name: str | None  #: its name in the flat folder, None when excluded
    series_uid: str | None
    reason: str | None  #: why it is excluded, None when used


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


def decide_files(
    headers: Iterable[FileHeader],
    raw_root: Path,
    *,
    keep_derived: bool = False,
    skip_checks: bool = False,
) -> list[FileDecision]:
    """Which readable DICOM files are used (pure apart from nothing: no I/O)."""
    decisions = []
    seen: dict[str, Path] = {}
    for h in headers:
        reason = None if skip_checks else file_exclusion(h, keep_derived=keep_derived)
        if reason is None and h.sop_instance_uid and h.sop_instance_uid in seen:
            reason = (
                f"duplicate SOPInstanceUID of {os.path.relpath(seen[h.sop_instance_uid], raw_root)}"
            )
        if reason is None and not h.series_uid:
            reason = "no SeriesInstanceUID"
        key = os.path.relpath(h.path, raw_root)
        if reason is None:
            if h.sop_instance_uid:
                seen[h.sop_instance_uid] = h.path
            decisions.append(FileDecision(h.path, flat_name(h, key), h.series_uid, None))
        else:
            decisions.append(FileDecision(h.path, None, h.series_uid, reason))
    return decisions


def lay_out(decisions: Iterable[FileDecision], dicom_dir: Path, *, symlink: bool = True) -> int:
    """Create the flat folder entries for the used files; return how many were made.

    Existing entries that already point at the right file are left alone.
    """
    ensure_dir(dicom_dir)
    made = 0
    for decision in decisions:
        if decision.flat_name is None:
            continue
        dst = dicom_dir / decision.flat_name
        if symlink:
            rel = os.path.relpath(decision.source, dicom_dir)
            if dst.is_symlink() and os.readlink(dst) == rel:
                continue
            relative_symlink(decision.source, dst)
        else:
            if dst.is_file() and not dst.is_symlink():
                stat = dst.stat()
                src_stat = decision.source.stat()
                if stat.st_size == src_stat.st_size:
                    continue
            copy_file(decision.source, dst)
        made += 1
    return made
