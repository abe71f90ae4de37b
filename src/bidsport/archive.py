"""Safe extraction of packet archives (zip, tar, gzip): a security boundary.

Packets come from scanners, PACS exports and collaborators; an archive may be damaged,
or built to attack whoever unpacks it. Extraction here therefore:

- never writes outside the destination folder: members with absolute paths or ``..``
  components are skipped, and so are symbolic links, hard links, device nodes and FIFOs
  (links are never created, so never followed); parent folders are checked with
  ``lstat`` before use, files are created under new names and renamed into place;
- never overwrites: the first member of a name wins, later ones are skipped;
- stops decompression bombs while streaming (:class:`ExtractLimits`): bytes actually
  written, number of members and compression ratio, for the whole packet;
- turns every damaged, truncated or encrypted archive into an :class:`ArchiveError`
  that names the archive and the reason, after removing what it had written;
- sanitizes member names (invalid UTF-8, control characters) instead of failing.

Each skip is returned as a :class:`~bidsport.records.Problem` (stage ``import``).
Extracted files are mode 0o644 and folders 0o755, so later clean-up always works.
The checks are done here, member by member; nothing relies on ``tarfile``'s
``extractall`` or its extraction filters, so they hold on every Python version.
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import gzip
import logging
import lzma
import os
import re
import stat
import tarfile
import tempfile
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, cast

from bidsport import fileops
from bidsport.errors import ArchiveError, ConfigError
from bidsport.records import Problem

log = logging.getLogger(__name__)

STAGE = "import"
#: How many levels of archives inside archives :func:`expand_nested` unpacks.
MAX_NESTING = 5
#: the reasons of the Problems of what a packet holds that was not imported (nested
#: archives left as they are, members skipped for their names): the packet must then
#: stay in the inbox (see :func:`not_imported`)
NOT_EXTRACTED = "nested archive not extracted, left as is"
TOO_DEEP = f"archive nested more than {MAX_NESTING} levels deep: left as is"
NAME_TAKEN = (
    "its parent ",
    "a file of the same name was extracted before it",
    "duplicate name: the first member of this name was kept",
    "a file or folder of this name exists already",
    "same name as another file once made safe",  # a folder packet's (bidsport.ingest)
)
#: the reasons of the Problems of a tar archive read in part: the packet must then stay
#: in the inbox too (a tar cut at a member's end reads as complete but for its marker)
NO_END_MARKER = "the tar archive has no end-of-archive marker: it may be truncated"
DATA_AFTER_END = "data after the end-of-archive marker was ignored"
#: the reasons of the members skipped for their names (:func:`member_parts`): files that
#: a packet held and that were not imported
ABSOLUTE_PATH = "absolute path"
DOT_DOT = "'..' in its path (it would be written outside the destination)"
EMPTY_NAME = "empty name"
LONG_COMPONENT = "a path component is longer than 255 bytes"
LONG_PATH = "path longer than 3000 bytes"
UNSAFE_NAMES = (ABSOLUTE_PATH, DOT_DOT, EMPTY_NAME, LONG_COMPONENT, LONG_PATH)
GiB = 1024**3
MiB = 1024**2

#: Command-line options that raise each limit (named in error hints).
LIMIT_OPTIONS = {
    "max_total_bytes": "--max-extract-size",
    "max_members": "--max-extract-members",
    "max_ratio": "--max-extract-ratio",
}

_CHUNK = MiB
_BLOCK = 512  # tar block
_MAX_SINGLE_READ = 64 * MiB  # longest tar header (pax/GNU long name) we accept
_TAIL_DRAIN = 16 * MiB  # how much we read after a tar's end-of-archive marker
# Longest suffixes first, so that ".tar.gz" wins over ".gz".
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".tar.bz2", "tar"),
    (".tar.gz", "tar"),
    (".tar.xz", "tar"),
    (".tbz2", "tar"),
    (".tgz", "tar"),
    (".tbz", "tar"),
    (".txz", "tar"),
    (".tar", "tar"),
    (".zip", "zip"),
    (".gz", "gz"),
)
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_GZIP_MAGIC = b"\x1f\x8b"
_BZ2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZIP_METHODS = {0: "stored", 8: "deflate", 12: "bzip2", 14: "lzma"}
_ZIP_METHOD_NAMES = {9: "deflate64", 93: "zstandard", 95: "xz", 98: "ppmd", 99: "AES"}
# What reading a damaged archive raises (besides our own errors).
_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
)


class ArchiveLimitError(ArchiveError):
    """Extraction stopped because a limit of :class:`ExtractLimits` was exceeded."""


@dataclass(frozen=True)
class ExtractLimits:
    """Limits that stop a hostile or broken archive (a "decompression bomb").

    They hold for one packet as a whole: its archive and every archive nested in it
    share them (see :class:`ExtractBudget`). Exceeding one stops the extraction with an
    :class:`ArchiveLimitError` whose hint names the option that raises it.
    """

    #: Bytes actually written, in total. Default 200 GiB: real scanner exports reach
    #: tens of GB. (``--max-extract-size``)
    max_total_bytes: int = 200 * GiB
    #: Members (entries of every type, skipped ones included). (``--max-extract-members``)
    max_members: int = 2_000_000
    #: Largest compression ratio (bytes out / bytes in) accepted. It is checked for each
    #: zip member (from the declared sizes before anything is written, then while
    #: writing), for each compressed stream (gzip, bzip2, xz: bytes decompressed / bytes
    #: read so far), for each zip as a whole, and for the packet (bytes written / size
    #: of the packet's input). Genuine DICOM compresses 2-10:1; deflate cannot exceed
    #: about 1032:1, so only zero-filled or nested/overlapping bombs go beyond 1000.
    #: (``--max-extract-ratio``)
    max_ratio: float = 1000.0
    #: The ratio is only checked once more than this many bytes came out, so small,
    #: highly compressible files (empty images, text, headers) always pass.
    ratio_floor_bytes: int = 8 * MiB

    def __post_init__(self) -> None:
        for name in ("max_total_bytes", "max_members", "max_ratio", "ratio_floor_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"extraction limit {name} must be positive, not {getattr(self, name)}"
                )


#: The default limits (the values documented in :class:`ExtractLimits`).
DEFAULT_LIMITS = ExtractLimits()


class ExtractBudget:
    """What the extractions of one packet have used so far, against its limits.

    ``source_bytes`` is the size of the packet's input (the archive, or the files of a
    folder); the packet-level compression ratio is measured against it.
    """

    def __init__(self, limits: ExtractLimits, source_bytes: int) -> None:
        self.limits = limits
        self.source_bytes = max(int(source_bytes), 1)
        self.bytes_written = 0
        self.members = 0


# --------------------------------------------------------------------------- names


def _kind_from_name(name: str) -> str | None:
    lower = name.lower()
    for suffix, kind in _SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return kind
    return None


def strip_archive_suffix(name: str) -> str:
    """``name`` without its archive extension(s): ``S01.tar.gz`` → ``S01``.

    Names without one are returned unchanged.
    """
    lower = name.lower()
    for suffix, _kind in _SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return name[: -len(suffix)]
    return name


def sanitize_component(part: str) -> str:
    """One path component made safe to write and to log.

    Bytes that are not UTF-8 (kept by Python as surrogates), control and format
    characters (e.g. right-to-left overrides) and backslashes become ``_``.
    """
    if part.isascii() and part.isprintable() and "\\" not in part:
        return part  # printable ASCII: nothing to replace (the common case, made fast)
    try:
        raw = part.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = part.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "replace")
    return "".join(
        "_" if ch in "\ufffd\\" or unicodedata.category(ch).startswith("C") else ch for ch in text
    )


def _display(name: str) -> str:
    return "/".join(sanitize_component(p) for p in name.split("/"))


def member_parts(
    name: str, *, backslash_is_separator: bool = False
) -> tuple[list[str], str | None]:
    """Split an archive member name into safe path components.

    Returns ``(parts, None)``, or ``([], reason)`` when the member must be skipped:
    absolute paths (``/x``, ``C:/x``), ``..`` components, empty names, components
    longer than 255 bytes. ``.`` components are dropped; components are sanitized
    with :func:`sanitize_component`.
    """
    if backslash_is_separator:
        name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return [], ABSOLUTE_PATH
    raw_parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in raw_parts:
        return [], DOT_DOT
    if not raw_parts:
        return [], EMPTY_NAME
    parts = [sanitize_component(p) for p in raw_parts]
    if any(len(p.encode("utf-8")) > 255 for p in parts):
        return [], LONG_COMPONENT
    if len("/".join(parts).encode("utf-8")) > 3000:
        return [], LONG_PATH
    return parts, None


# --------------------------------------------------------------------------- kinds


def _is_tar_header(block: bytes | None) -> bool:
    """True when ``block`` is a valid tar header (checksum verified, as tar does)."""
    if block is None or len(block) < _BLOCK:
        return False
    block = block[:_BLOCK]
    field = block[148:156].replace(b"\0", b" ").strip()
    if not field or any(c not in b"01234567" for c in field):
        return False
    stored = int(field, 8)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    return stored in (unsigned, signed)


def _decompressed_head(path: Path, kind: str) -> bytes | None:
    try:
        if kind == "gz":
            with gzip.open(path, "rb") as gz:
                return gz.read(_BLOCK)
        if kind == "bz2":
            with bz2.open(path, "rb") as bz:
                return bz.read(_BLOCK)
        with lzma.open(path, "rb") as xz:
            return xz.read(_BLOCK)
    except _READ_ERRORS:
        return None


_ARCHIVE_MAGICS = (*_ZIP_MAGICS, _GZIP_MAGIC, _BZ2_MAGIC, _XZ_MAGIC)
#: How many leading bytes :func:`might_be_archive` wants (a tar header).
HEAD_BYTES = _BLOCK


def read_head(path: Path | str) -> bytes:
    """The first :data:`HEAD_BYTES` bytes of ``path`` (fewer for a shorter file).

    Three system calls (open, read, close). Raises OSError (PermissionError when the
    file cannot be read).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        head = os.read(fd, HEAD_BYTES)
        while 0 < len(head) < HEAD_BYTES:  # a short read before the end (network file systems)
            more = os.read(fd, HEAD_BYTES - len(head))
            if not more:
                break
            head += more
        return head
    finally:
        os.close(fd)


def might_be_archive(name: str, head: bytes) -> bool:
    """False when :func:`archive_kind` surely says None for a file ``name`` starting with ``head``.

    A cheap filter before :func:`archive_kind` (which opens the file again, and
    decompresses the start of compressed streams): ``head`` is the file's first
    :data:`HEAD_BYTES` bytes (:func:`read_head`). A DICOM file ("DICM" at offset 128)
    is never an archive; any other file is a candidate when it has an archive name, an
    archive's magic bytes (zip, gzip, bzip2, xz) or a valid tar header.

    >>> might_be_archive("IM1", bytes(128) + b"DICM")
    False
    >>> might_be_archive("IM1", b"PK\\x03\\x04")
    True
    """
    if head[128:132] == b"DICM":
        return False
    return (
        head.startswith(_ARCHIVE_MAGICS)
        or _kind_from_name(name) is not None
        or _is_tar_header(head)
    )


def _sniff(path: Path) -> str | None:
    """What the content of ``path`` is: zip, tar, gz, bz2, xz, dicom or None."""
    with open(path, "rb") as fh:
        head = fh.read(_BLOCK)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    for magic, kind in ((_GZIP_MAGIC, "gz"), (_BZ2_MAGIC, "bz2"), (_XZ_MAGIC, "xz")):
        if head.startswith(magic):
            inner = _decompressed_head(path, kind)
            if inner is None or len(inner) < _BLOCK:
                return kind + "?"  # compressed, content undecided (short or damaged)
            return "tar" if _is_tar_header(inner) else kind
    if _is_tar_header(head):
        return "tar"
    return None


#: Archive and compression formats bidsport does not read, by their first bytes (bzip2
#: and xz: around anything but a tar), named when a packet in one of them is skipped.
_UNREAD_FORMATS = (
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"\x28\xb5\x2f\xfd", "Zstandard-compressed file"),
    (b"\x04\x22\x4d\x18", "LZ4-compressed file"),
    (b"LZIP", "lzip-compressed file"),
    (_BZ2_MAGIC, "bzip2-compressed file (not a tar)"),
    (_XZ_MAGIC, "xz-compressed file (not a tar)"),
)


def unread_format(path: Path) -> str | None:
    """The format of ``path`` when it is an archive or a compressed file that bidsport
    does not read (a 7-Zip or RAR archive, a Zstandard-compressed tar...), else None.
    Call it on a file :func:`archive_kind` did not take."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    return next((name for magic, name in _UNREAD_FORMATS if head.startswith(magic)), None)


def archive_kind(path: Path) -> str | None:
    """ "zip", "tar" or "gz" (one gzipped file) for an archive, else None.

    Decided by name (``.zip``; ``.tar``, ``.tgz``, ``.tar.gz``, ``.tar.bz2``,
    ``.tar.xz``, ``.tbz2``, ``.txz``; ``.gz``), then checked against the content when
    ``path`` is a file: the content wins where the name lies (a ``.zip`` that is a tar
    is "tar"; a gzipped tar named ``.gz`` is "tar"), an archive without an archive
    name is recognised by its magic bytes, and a DICOM file is never an archive. When
    the content is unrecognisable (damaged), the name decides, and extraction then
    reports the damage. A path that does not exist is judged by its name alone.
    """
    name_kind = _kind_from_name(path.name)
    if not path.is_file():
        return None if path.is_dir() else name_kind
    try:
        sniffed = _sniff(path)
    except OSError:
        return name_kind
    if sniffed == "dicom":
        if name_kind:
            log.warning("%s is named like a %s archive but is a DICOM file", path, name_kind)
        return None
    if sniffed in ("zip", "tar", "gz"):
        if name_kind and name_kind != sniffed:
            log.warning(
                "%s is named like a %s archive but is a %s archive", path, name_kind, sniffed
            )
        return sniffed
    if sniffed == "gz?":
        return name_kind if name_kind in ("tar", "gz") else "gz"
    if sniffed in ("bz2", "xz", "bz2?", "xz?"):
        return "tar" if name_kind == "tar" else None
    return name_kind


# --------------------------------------------------------------------------- extractor


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class _Extractor:
    """The state of one archive's extraction: problems, what was written, accounting."""

    def __init__(self, archive: Path, dest: Path, budget: ExtractBudget, label: str) -> None:
        self.archive = archive
        self.dest = dest
        self.budget = budget
        self.limits = budget.limits
        self.label = label
        self.problems: list[Problem] = []
        self.created_files: list[Path] = []
        self.created_dirs: list[Path] = []
        self.taken: set[tuple[str, ...]] = set()
        self.written = 0
        self.archive_bytes = max(archive.stat().st_size, 1)

    # ---- reporting
    def skip(self, member: str, reason: str) -> None:
        where = f"{self.label}:{_display(member)}"
        self.problems.append(Problem(where=where, reason=reason, stage=STAGE))
        log.warning("skipped %s: %s", where, reason)

    def error(self, reason: str, hint: str | None = None) -> ArchiveError:
        return ArchiveError(f"{self.archive}: {reason}", hint)

    def read_error(self, member: str | None, exc: BaseException) -> ArchiveError:
        what = f"member {_display(member)}" if member else "the archive"
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, EOFError) or "end of" in detail.lower():
            detail = f"truncated ({detail})"
        return self.error(
            f"cannot read {what}: damaged or truncated archive ({detail})",
            "check the copy of this packet (re-download or re-export it)",
        )

    def limit(self, detail: str, limit_name: str) -> ArchiveLimitError:
        value = getattr(self.limits, limit_name)
        shown = _human(value) if limit_name == "max_total_bytes" else f"{value:g}"
        return ArchiveLimitError(
            f"{self.archive}: extraction stopped: {detail} (limit {limit_name} = {shown}); "
            "what was extracted has been removed",
            f"this looks like a decompression bomb; if the archive is genuine, raise the limit "
            f"with {LIMIT_OPTIONS[limit_name]}",
        )

    # ---- accounting
    def count_members(self, n: int = 1) -> None:
        self.budget.members += n
        if self.budget.members > self.limits.max_members:
            raise self.limit(
                f"more than {self.limits.max_members} members in this packet", "max_members"
            )

    def check_stream_ratio(self, produced: int, consumed: int, what: str) -> None:
        lim = self.limits
        if produced > lim.ratio_floor_bytes and produced > lim.max_ratio * max(consumed, 1):
            raise self.limit(
                f"{what} inflates more than {lim.max_ratio:g}:1 "
                f"({_human(produced)} out of {_human(consumed)})",
                "max_ratio",
            )

    def account(self, n: int, member: str, member_written: int, compressed: int | None) -> None:
        budget, lim = self.budget, self.limits
        budget.bytes_written += n
        self.written += n
        if budget.bytes_written > lim.max_total_bytes:
            raise self.limit(
                f"more than {_human(lim.max_total_bytes)} would be written", "max_total_bytes"
            )
        if compressed is not None:
            self.check_stream_ratio(member_written, compressed, f"member {_display(member)}")
        if budget.bytes_written > lim.ratio_floor_bytes and (
            budget.bytes_written > lim.max_ratio * budget.source_bytes
        ):
            raise self.limit(
                f"the packet inflates more than {lim.max_ratio:g}:1 "
                f"({_human(budget.bytes_written)} written from {_human(budget.source_bytes)})",
                "max_ratio",
            )

    # ---- writing
    def _parent(self, member: str, parts: list[str]) -> Path | None:
        current = self.dest
        for part in parts[:-1]:
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                fileops.ensure_dir(current)
                os.chmod(current, 0o755)
                self.created_dirs.append(current)
                continue
            if not stat.S_ISDIR(st.st_mode):  # a file, or a link (never followed)
                self.skip(member, f"its parent {'/'.join(parts)} is not a folder")
                return None
        return current

    def make_dir(self, member: str, parts: list[str]) -> None:
        parent = self._parent(member, parts)
        if parent is None:
            return
        path = parent / parts[-1]
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            fileops.ensure_dir(path)
            os.chmod(path, 0o755)
            self.created_dirs.append(path)
            return
        if not stat.S_ISDIR(st.st_mode):
            self.skip(member, "a file of the same name was extracted before it")

    def write_member(
        self,
        member: str,
        parts: list[str],
        source: _Reader,
        compressed: int | None,
        mtime: float | None,
    ) -> None:
        key = tuple(parts)
        if key in self.taken:
            self.skip(member, "duplicate name: the first member of this name was kept")
            return
        parent = self._parent(member, parts)
        if parent is None:
            return
        target = parent / parts[-1]
        if os.path.lexists(target):
            self.skip(member, "a file or folder of this name exists already: kept it")
            return
        self.taken.add(key)
        if parts != [p for p in member.replace("\\", "/").split("/") if p not in ("", ".")]:
            self.problems.append(
                Problem(
                    where=f"{self.label}:{_display(member)}",
                    reason=f"renamed to {'/'.join(parts)} (unsafe or non-UTF-8 characters)",
                    stage=STAGE,
                )
            )
        self.created_files.append(target)
        with fileops.atomic_path(target) as tmp:
            with open(tmp, "wb") as out:
                done = 0
                while True:
                    try:
                        chunk = source.read(_CHUNK)
                    except ArchiveError:
                        raise
                    except _READ_ERRORS as exc:
                        raise self.read_error(member, exc) from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    self.account(len(chunk), member, done, compressed)
            os.chmod(tmp, 0o644)
            if mtime is not None:
                with contextlib.suppress(OverflowError, ValueError, OSError):
                    os.utime(tmp, (mtime, mtime))

    def rollback(self) -> None:
        for path in reversed(self.created_files):
            if os.path.lexists(path):
                fileops.remove_tree(path, self.dest)
        for path in reversed(self.created_dirs):
            if os.path.lexists(path):
                fileops.remove_tree(path, self.dest)


class _GzipDecoder:
    """Multi-member gzip decoded with zlib, knowing exactly how many input bytes were used.

    (``gzip.GzipFile`` reads ahead, which blurs the ratio of a deflate bomb: deflate
    tops out near 1032:1, just above the default limit.) zlib checks each member's CRC
    and length; zero padding between and after members is skipped, as gzip does.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._dec = zlib.decompressobj(wbits=31)
        self._tail = b""
        self._in_member = False
        self._eof = False
        self.consumed = 0

    def read(self, size: int = -1, /) -> bytes:
        size = _CHUNK if size is None or size < 0 else size
        while not self._eof:
            drained = False
            if not self._tail:
                self._tail = self._raw.read(16 * 1024)
                if not self._tail:
                    if not self._in_member:
                        self._eof = True
                        break
                    # input exhausted: zlib may still hold output it could not return
                    # because of the size limit of the previous call
                    drained = True
            if drained:
                out = self._dec.decompress(b"", size)
                if self._dec.eof:
                    self._tail = self._dec.unused_data
                    self._dec = zlib.decompressobj(wbits=31)
                    self._in_member = False
                if out:
                    return out
                if self._in_member:
                    raise EOFError(
                        "compressed file ended before the end-of-stream marker was reached"
                    )
                continue
            if not self._in_member:
                stripped = self._tail.lstrip(b"\0")
                self.consumed += len(self._tail) - len(stripped)
                self._tail = stripped
                if not stripped:
                    continue
                self._in_member = True
            before = len(self._tail)
            out = self._dec.decompress(self._tail, size)
            if self._dec.eof:
                rest = self._dec.unused_data
                self.consumed += before - len(rest)
                self._tail = rest
                self._dec = zlib.decompressobj(wbits=31)
                self._in_member = False
            else:
                self._tail = self._dec.unconsumed_tail
                self.consumed += before - len(self._tail)
            if out:
                return out
        return b""

    def seek(self, offset: int, whence: int = 0, /) -> int:  # pragma: no cover - unused
        raise OSError("not seekable")


class _GuardedStream:
    """A read-only view of an archive's bytes, decompressed by magic, that stops bombs.

    Every read checks the ratio of bytes decompressed to bytes read from the file, so a
    bomb is stopped early even inside data that is skipped rather than written. Reads
    longer than 64 MiB at once (hostile tar headers) are refused. Seeking forward
    reads (and checks); seeking backward starts again from the beginning.
    """

    def __init__(self, raw: IO[bytes], ex: _Extractor, allowed: tuple[str, ...]) -> None:
        self._raw = raw
        self._ex = ex
        head = raw.read(8)
        raw.seek(0)
        self.compression = "none"
        if head.startswith(_GZIP_MAGIC):
            self.compression = "gzip"
        elif head.startswith(_BZ2_MAGIC):
            self.compression = "bzip2"
        elif head.startswith(_XZ_MAGIC):
            self.compression = "xz"
        if self.compression not in allowed:
            raise ex.error(
                f"not a {' or '.join(allowed)} stream (it starts with {head[:4]!r})",
                "the file may be damaged, or compressed with a method bidsport does not read",
            )
        self._f = self._open()
        self._pos = 0
        self.last = b""

    def _open(self) -> _Source:
        self._raw.seek(0)
        if self.compression == "gzip":
            return _GzipDecoder(self._raw)
        if self.compression == "bzip2":
            return bz2.BZ2File(self._raw, mode="rb")
        if self.compression == "xz":
            return lzma.LZMAFile(self._raw, mode="rb")
        return self._raw

    def _consumed(self) -> int:
        if isinstance(self._f, _GzipDecoder):
            return self._f.consumed
        return self._raw.tell()  # bzip2/xz read ahead 8 KiB at most; their bombs are huge

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(_CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        if size > _MAX_SINGLE_READ:
            raise self._ex.error(
                f"a header of {_human(size)} at offset {self._pos}: damaged or hostile archive"
            )
        data = self._f.read(size)
        if 0 < len(data) < size:  # decoders may return short reads; tarfile wants full ones
            parts = [data]
            missing = size - len(data)
            while missing and (more := self._f.read(missing)):
                parts.append(more)
                missing -= len(more)
            data = b"".join(parts)
        self._pos += len(data)
        self.last = data[-_BLOCK:] if len(data) >= _BLOCK else (self.last + data)[-_BLOCK:]
        if self.compression != "none":
            self._ex.check_stream_ratio(self._pos, self._consumed(), "the compressed stream")
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0, /) -> int:
        if whence == 1:
            offset += self._pos
        elif whence != 0:
            raise OSError("seek from the end is not supported")
        if offset < self._pos:
            self._f = self._open()
            self._pos = 0
        while self._pos < offset:  # read, so that every byte is checked
            if not self.read(min(_CHUNK, offset - self._pos)):
                break
        return self._pos


# --------------------------------------------------------------------------- formats


def _zip_name(info: zipfile.ZipInfo) -> str:
    if info.flag_bits & 0x800:
        return info.filename
    try:
        raw = info.filename.encode("cp437")
    except UnicodeEncodeError:
        return info.filename
    try:
        return raw.decode("utf-8")  # many tools write UTF-8 without setting the flag
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


def _zip_is_dir(info: zipfile.ZipInfo) -> bool:
    # ZipInfo.is_dir() fails on an empty name (IndexError on Python < 3.12)
    return info.filename.endswith("/")


def _zip_mtime(info: zipfile.ZipInfo) -> float | None:
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


def _extract_zip(ex: _Extractor) -> None:
    lim = ex.limits
    try:
        zf = zipfile.ZipFile(ex.archive)
    except _READ_ERRORS as exc:
        raise ex.error(
            f"not a readable zip archive ({exc or type(exc).__name__})",
            "the file is damaged or truncated: check the copy of this packet",
        ) from exc
    with zf:
        infos = zf.infolist()
        if ex.budget.members + len(infos) > lim.max_members:
            raise ex.limit(f"{len(infos)} members", "max_members")
        declared = 0
        # Checks on the central directory, before anything is written. zipfile never
        # returns more than a member's declared size, so these bounds are real.
        for info in infos:
            name = _display(_zip_name(info))
            if info.flag_bits & 0x1:
                raise ex.error(
                    f"member {name} is encrypted",
                    "bidsport cannot read password-protected archives: re-pack it without one",
                )
            if info.compress_type not in _ZIP_METHODS:
                method = _ZIP_METHOD_NAMES.get(info.compress_type, str(info.compress_type))
                raise ex.error(
                    f"member {name} uses compression method {method}, which Python cannot read",
                    "re-pack the archive with deflate (e.g. 'zip -r' or 7z -mm=Deflate)",
                )
            if _zip_is_dir(info):
                continue
            declared += info.file_size
            ex.check_stream_ratio(info.file_size, info.compress_size, f"member {name}")
        if ex.budget.bytes_written + declared > lim.max_total_bytes:
            raise ex.limit(f"its members add up to {_human(declared)}", "max_total_bytes")
        ex.check_stream_ratio(declared, ex.archive_bytes, "the archive (declared sizes)")
        for info in infos:
            ex.count_members()
            name = _zip_name(info)
            mode = (info.external_attr >> 16) if info.create_system == 3 else 0
            if mode and stat.S_ISLNK(mode):
                ex.skip(name, "symbolic link: links are never extracted")
                continue
            if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
                ex.skip(name, "device node: never extracted")
                continue
            if mode and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
                ex.skip(name, "FIFO or socket: never extracted")
                continue
            parts, reason = member_parts(name, backslash_is_separator=True)
            is_dir = _zip_is_dir(info) or bool(mode and stat.S_ISDIR(mode))
            if reason == EMPTY_NAME and is_dir:
                continue  # the archive's top folder ("./"): nothing to make
            if reason:
                ex.skip(name, reason)
                continue
            if is_dir:
                ex.make_dir(name, parts)
                continue
            try:
                source = zf.open(info)
            except _READ_ERRORS as exc:
                raise ex.read_error(name, exc) from exc
            with source:
                ex.write_member(name, parts, source, info.compress_size, _zip_mtime(info))


def _tar_member(ex: _Extractor, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    name = member.name
    if member.issym():
        ex.skip(name, f"symbolic link to {_display(member.linkname)}: links are never extracted")
        return
    if member.islnk():
        ex.skip(name, f"hard link to {_display(member.linkname)}: links are never extracted")
        return
    if member.ischr() or member.isblk():
        ex.skip(name, "device node: never extracted")
        return
    if member.isfifo():
        ex.skip(name, "FIFO: never extracted")
        return
    if not (member.isreg() or member.isdir()):
        ex.skip(name, f"unsupported member type {member.type!r}")
        return
    parts, reason = member_parts(name)
    if reason == EMPTY_NAME and member.isdir():
        return  # the archive's top folder ("./", made by ``tar -C folder -c .``)
    if reason:
        ex.skip(name, reason)
        return
    if member.isdir():
        ex.make_dir(name, parts)
        return
    try:
        source = tf.extractfile(member)
    except _READ_ERRORS as exc:
        raise ex.read_error(name, exc) from exc
    if source is None:  # pragma: no cover - only for non-regular members
        return
    with source:
        ex.write_member(name, parts, source, None, float(member.mtime))


def _check_tar_end(ex: _Extractor, tf: tarfile.TarFile, stream: _GuardedStream) -> None:
    """tarfile stops quietly at a bad or partial header after the first: tell it apart."""
    header_bytes = stream.tell() - tf.offset
    if header_bytes == 0:
        ex.problems.append(
            Problem(
                where=ex.label,
                reason=NO_END_MARKER,
                stage=STAGE,
            )
        )
        return
    if header_bytes < _BLOCK:
        raise ex.error(
            f"truncated inside a member header at offset {tf.offset}",
            "check the copy of this packet (re-download or re-export it)",
        )
    if stream.last.strip(b"\0"):
        raise ex.error(
            f"invalid tar header at offset {tf.offset}: the archive is damaged",
            "check the copy of this packet (re-download or re-export it)",
        )
    drained = 0
    try:
        while drained < _TAIL_DRAIN and (chunk := stream.read(_CHUNK)):
            drained += len(chunk)
            if chunk.strip(b"\0"):
                ex.problems.append(
                    Problem(
                        where=ex.label,
                        reason=DATA_AFTER_END,
                        stage=STAGE,
                    )
                )
                return
    except ArchiveError:
        raise
    except _READ_ERRORS as exc:
        raise ex.read_error(None, exc) from exc


def _extract_tar(ex: _Extractor) -> None:
    try:
        raw = open(ex.archive, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ex.error(f"cannot read: {exc.strerror}") from exc
    with raw:
        stream = _GuardedStream(raw, ex, ("none", "gzip", "bzip2", "xz"))
        try:
            tf = tarfile.TarFile(
                fileobj=cast("IO[bytes]", stream),
                mode="r",
                encoding="utf-8",
                errors="surrogateescape",
            )
        except ArchiveError:
            raise
        except _READ_ERRORS as exc:
            raise ex.error(
                f"not a readable tar archive ({exc or type(exc).__name__})",
                "the file is damaged, truncated, or not a tar archive",
            ) from exc
        with tf:
            while True:
                try:
                    member = tf.next()
                except ArchiveError:
                    raise
                except _READ_ERRORS as exc:
                    raise ex.read_error(None, exc) from exc
                if member is None:
                    break
                seen = getattr(tf, "members", None)  # tarfile keeps every member: for huge
                if isinstance(seen, list):  # archives, keep memory flat (we never go back)
                    seen.clear()
                ex.count_members()
                _tar_member(ex, tf, member)
            _check_tar_end(ex, tf, stream)


def _extract_gz(ex: _Extractor, out_name: str) -> None:
    try:
        raw = open(ex.archive, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ex.error(f"cannot read: {exc.strerror}") from exc
    with raw:
        stream = _GuardedStream(raw, ex, ("gzip",))
        ex.count_members()
        ex.write_member(out_name, [sanitize_component(out_name)], stream, None, None)


def _extract(archive: Path, dest_dir: Path, budget: ExtractBudget, label: str) -> list[Problem]:
    kind = archive_kind(archive)
    if kind is None:
        raise ArchiveError(f"{archive}: not a zip, tar or gzip archive")
    try:
        ex = _Extractor(archive, dest_dir, budget, label)
    except OSError as exc:
        raise ArchiveError(f"{archive}: cannot read: {exc.strerror}") from exc
    made_dest = not os.path.lexists(dest_dir)
    fileops.ensure_dir(dest_dir)
    try:
        if kind == "zip":
            _extract_zip(ex)
        elif kind == "tar":
            _extract_tar(ex)
        else:
            _extract_gz(ex, strip_archive_suffix(archive.name))
    except BaseException:
        ex.rollback()
        if made_dest:
            with contextlib.suppress(OSError):
                dest_dir.rmdir()  # only if empty: we remove nothing we did not write
        raise
    log.debug("extracted %s: %s written", archive, _human(ex.written))
    return ex.problems


def extract_archive(
    archive: Path,
    dest_dir: Path,
    limits: ExtractLimits = DEFAULT_LIMITS,
    *,
    budget: ExtractBudget | None = None,
) -> list[Problem]:
    """Extract ``archive`` (zip, tar, or a single gzipped file) into ``dest_dir``.

    Members are streamed one by one and nothing is ever written outside ``dest_dir``
    (see the module documentation for what is skipped). A single ``.gz`` becomes one
    file named without ``.gz``. Returns the skipped members as Problems.

    ``budget`` shares the limits with other extractions of the same packet; without
    it, ``limits`` apply to this archive alone.

    Raises :class:`ArchiveError` for a damaged, truncated or encrypted archive and
    :class:`ArchiveLimitError` when a limit is exceeded; what this call had written is
    removed first. Raises :class:`~bidsport.errors.OutputError` when ``dest_dir``
    cannot be written.
    """
    if budget is None:
        budget = ExtractBudget(limits, _size(archive))
    return _extract(archive, dest_dir, budget, archive.name)


# --------------------------------------------------------------------------- nested


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tree_size(root: Path) -> int:
    return sum(_size(path) for path in _regular_files(root))


def _regular_files(root: Path) -> Iterator[Path]:
    """The regular files (not links) below ``root``, in the order of a sorted ``os.walk``.

    From the folder listings alone (the entry types): no ``stat`` per file.
    """
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield Path(entry.path)
            except OSError:
                continue
        stack.extend(reversed(subdirs))


def _may_be_archive(path: Path) -> bool:
    try:
        head = read_head(path)
    except OSError:
        return True  # archive_kind decides by the name
    return might_be_archive(path.name, head)


def _archives_in(root: Path) -> list[Path]:
    return [
        path
        for path in _regular_files(root)
        if _may_be_archive(path) and archive_kind(path) is not None
    ]


def _free_name(folder: Path, base: str) -> Path:
    candidate = folder / base
    n = 1
    while os.path.lexists(candidate):
        n += 1
        candidate = folder / f"{base}_{n}"
    return candidate


def _gunzip_in_place(
    path: Path, root: Path, budget: ExtractBudget, label: str
) -> tuple[Path | None, list[Problem]]:
    out_name = strip_archive_suffix(path.name)
    target = path.with_name(out_name)
    if out_name != path.name and os.path.lexists(target):
        return None, [
            Problem(
                where=label,
                reason=f"not decompressed: {out_name} exists already beside it (kept both)",
                stage=STAGE,
            )
        ]
    work = Path(tempfile.mkdtemp(prefix=".gunzip-", dir=path.parent))
    try:
        problems = _extract(path, work, budget, label)
        fileops.move_into_place(work / sanitize_component(out_name), target)
        if out_name != path.name:
            fileops.remove_tree(path, root)
    finally:
        fileops.remove_tree(work, root)
    return target, problems


def _unpack_beside(
    path: Path, root: Path, budget: ExtractBudget, label: str
) -> tuple[Path, list[Problem]]:
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=path.parent))
    try:
        problems = _extract(path, work, budget, label)
        fileops.remove_tree(path, root)  # our copy of the archive, never the input
        target = _free_name(path.parent, strip_archive_suffix(path.name))
        os.chmod(work, 0o755)
        fileops.move_into_place(work, target)
    except BaseException:
        if work.exists():
            fileops.remove_tree(work, root)
        raise
    return target, problems


def not_imported(problem: Problem) -> bool:
    """Whether ``problem`` says that files of a packet may not have been imported: a
    nested archive left as it is (:func:`expand_nested`), a member skipped for its name, a
    tar archive without its end-of-archive marker or with data after it. (Links, device
    nodes and FIFOs skipped hold no file's data: a packet with them may go.)"""
    return problem.reason.startswith(
        (NOT_EXTRACTED, TOO_DEEP, *NAME_TAKEN, *UNSAFE_NAMES, NO_END_MARKER, DATA_AFTER_END)
    )


def expand_nested(
    dir: Path,
    limits: ExtractLimits = DEFAULT_LIMITS,
    *,
    budget: ExtractBudget | None = None,
    candidates: Iterable[Path] | None = None,
    packet: str | Path | None = None,
) -> list[Problem]:
    """Unpack, in place, every archive found under ``dir`` (our copy of a packet, named
    ``packet`` in messages).

    Archives (zip, tar, recognised by name or magic bytes) are extracted into a sibling
    folder named after them (``a/series.zip`` → ``a/series/``; ``series_2`` if that
    name is taken) and then removed; single gzipped files are decompressed beside
    themselves (``IM0001.dcm.gz`` → ``IM0001.dcm``). Whatever comes out is searched
    again, down to :data:`MAX_NESTING` levels; deeper archives are left as they are,
    with a Problem. All extractions share ``budget`` (default: ``limits`` measured
    against the size of ``dir``), so a nested bomb is stopped like a flat one.

    A damaged nested archive is left in place with a Problem naming it (its files are
    then missing from the import); an exceeded limit raises :class:`ArchiveLimitError`.
    ``dir`` must be bidsport's own copy: archives found there are deleted.

    ``candidates``, when given, are the only files of ``dir`` that may be archives, in
    the order to unpack them (a caller that has just read every file's first bytes and
    kept those for which :func:`might_be_archive` is true, in ``os.walk`` order): the
    rest of ``dir`` is then not read again. Files unpacked from them are searched in
    full.
    """
    root = Path(dir)
    if candidates is None:
        archives = _archives_in(root)
    else:
        archives = [path for path in candidates if archive_kind(path) is not None]
    if not archives:
        return []
    if budget is None:
        budget = ExtractBudget(limits, _tree_size(root))
    problems: list[Problem] = []
    queue = collections.deque((path, 1) for path in archives)
    while queue:
        path, level = queue.popleft()
        label = path.relative_to(root).as_posix()
        if level > MAX_NESTING:
            problems.append(
                Problem(
                    where=label,
                    reason=TOO_DEEP,
                    stage=STAGE,
                )
            )
            continue
        kind = archive_kind(path)
        try:
            if kind == "gz":
                out, found = _gunzip_in_place(path, root, budget, label)
                problems += found
                if out is not None and archive_kind(out) is not None:
                    queue.append((out, level + 1))
            elif kind is not None:
                folder, found = _unpack_beside(path, root, budget, label)
                problems += found
                queue.extend((inner, level + 1) for inner in _archives_in(folder))
        except ArchiveLimitError as exc:
            # the message names our working copy of the archive, removed by now
            detail = exc.message.removeprefix(f"{path}: ")
            where = f"{packet}: nested archive {label}" if packet else f"nested archive {label}"
            raise ArchiveLimitError(f"{where}: {detail}", exc.hint) from exc
        except ArchiveError as exc:
            # the message names our working copy of the archive; ``where`` names it better
            detail = exc.message.removeprefix(f"{path}: ")
            problems.append(
                Problem(
                    where=label,
                    reason=f"{NOT_EXTRACTED}: {detail}",
                    stage=STAGE,
                )
            )
            log.warning("nested archive %s not extracted: %s", label, detail)
    return problems
