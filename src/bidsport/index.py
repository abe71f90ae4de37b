"""Index a session: read every file's header once, decide what is image data, group series.

* :func:`scan_session` walks a session folder and yields one :class:`FileHeader` per
  readable DICOM file and one :class:`Problem` per other file, in the order of their
  relative paths, reading headers in worker processes and reusing an on-disk cache.
* :func:`file_exclusion` says why a readable DICOM file is not image data.
* :func:`group_series` groups headers into the series dcm2niix would make (pure).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import stat
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import IO, Any

from bidsport import fileops
from bidsport.errors import DicomReadError, UsageError
from bidsport.header import READER_VERSION, read_header
from bidsport.records import FileHeader, Problem, Series
from bidsport.runner import process_pool, worker_gone

log = logging.getLogger(__name__)

STAGE = "organize"
CACHE_FORMAT = 2  #: 2: a header is a JSON array of its values (1: an object, ~2x slower)
_CHUNK = 128  # files per task sent to a worker process
#: fewest files read in the run's shared worker processes (fewer are read here)
_MIN_SHARED = 16
_KEY_FIELDS = ("path", "size", "mtime_ns")
_HEADER_FIELDS = tuple(f.name for f in dataclasses.fields(FileHeader) if f.name not in _KEY_FIELDS)
#: FileHeader fields holding tuples (stored as JSON arrays)
_TUPLE_FIELDS = frozenset(f.name for f in dataclasses.fields(FileHeader) if f.default == ())

# --------------------------------------------------------------------------- walking


@dataclass(frozen=True)
class _Entry:
    rel: str  #: path relative to the root, with "/" separators
    path: Path
    size: int = 0
    mtime_ns: int = 0
    problem: str | None = None  #: set when the entry cannot be read at all


def _list_files(root: Path, skip: Sequence[Path] = ()) -> list[_Entry]:
    """Every file below ``root``, sorted by relative path.

    Hidden files are included. Symbolic links to files are followed (flat folders of
    links are a normal input); symbolic links to folders are not: a folder inside
    ``root`` is walked anyway, and one outside it does not belong to the session.
    """
    skip_names = {p.name for p in skip}
    skip_real = {os.path.realpath(p) for p in skip}
    entries: list[_Entry] = []
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        folder, rel_folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = list(it)
        except OSError as exc:
            entries.append(
                _Entry(rel_folder.rstrip("/") or ".", Path(folder),
                       problem=f"cannot list folder: {exc.strerror or exc}")
            )  # fmt: skip
            continue
        for child in children:
            rel = rel_folder + child.name
            try:
                if child.is_dir(follow_symlinks=False):
                    stack.append((child.path, rel + "/"))
                    continue
                if child.is_symlink():
                    if not os.path.exists(child.path):
                        entries.append(
                            _Entry(rel, Path(child.path), problem="broken symbolic link")
                        )
                        continue
                    if os.path.isdir(child.path):
                        log.debug("not following the symbolic link to a folder %s", child.path)
                        continue
                st = child.stat(follow_symlinks=True)
            except OSError as exc:
                entries.append(
                    _Entry(rel, Path(child.path), problem=f"cannot read: {exc.strerror or exc}")
                )
                continue
            if not stat.S_ISREG(st.st_mode):
                entries.append(_Entry(rel, Path(child.path), problem="not a regular file"))
                continue
            if _skipped(child.name, child.path, skip_names, skip_real):
                continue
            entries.append(_Entry(rel, Path(child.path), st.st_size, st.st_mtime_ns))
    entries.sort(key=lambda e: e.rel)
    return entries


def _skipped(name: str, path: str, skip_names: set[str], skip_real: set[str]) -> bool:
    """True for the cache file and its temporary siblings (``.<name>.*.tmp``)."""
    if name in skip_names:
        return os.path.realpath(path) in skip_real
    if name.startswith(".") and name.endswith(".tmp"):
        for skip in skip_names:
            if name.startswith(f".{skip}."):
                folder = os.path.realpath(os.path.dirname(path))
                return os.path.join(folder, skip) in skip_real
    return False


# --------------------------------------------------------------------------- reading


def _reason(exc: DicomReadError, path: Path | str) -> str:
    """The reason of a DicomReadError without the leading file name."""
    prefix = f"{path}: "
    return exc.message[len(prefix) :] if exc.message.startswith(prefix) else exc.message


#: FileHeader fields after ``path``, in order: what a read sends back (see :data:`_Read`);
#: the size and modification time, then the fields an index-cache line holds
_VALUE_FIELDS = tuple(f.name for f in dataclasses.fields(FileHeader))[1:]
assert _VALUE_FIELDS[2:] == _HEADER_FIELDS
#: What reading one file gives: the values of its :class:`FileHeader` after the path and
#: its index-cache payload, or None and why the file is not readable. Made in the worker
#: process, so that the main process only rebuilds the record (a tuple unpickles ~4x
#: faster than the frozen dataclass) and writes the cache line (no JSON to encode).
_Read = tuple[tuple[Any, ...] | None, str]


def _read_one(path: str) -> _Read:
    try:
        header = read_header(Path(path))
    except DicomReadError as exc:
        return None, _reason(exc, path)
    values = tuple([getattr(header, name) for name in _VALUE_FIELDS])
    return values, _encode(values[2:])


def _read_chunk(paths: list[str]) -> list[_Read]:
    """Worker task: :func:`_read_one` of each file."""
    return [_read_one(p) for p in paths]


def scan_pool(n_procs: int) -> ProcessPoolExecutor:
    """Worker processes for :func:`scan_session` calls that share them (one per run when
    several sessions are scanned in turn: no pool start-up per session)."""
    return process_pool(n_procs)


def _read_all(
    paths: list[str], n_procs: int, pool: Executor | None = None
) -> Generator[_Read, None, None]:
    """Read ``paths`` in order, in ``n_procs`` worker processes when that is worth it
    (``pool``'s, else a pool of its own).

    A pool of its own is started for ``2 * _CHUNK`` files or more; ``pool``'s workers,
    running already, take any list of :data:`_MIN_SHARED` files or more, in smaller chunks
    when there are few (a session of 100 files read in this process held its GIL, which
    the conversion threads and the other session in flight wait for). At most a few chunks
    are in flight, so results stream with bounded memory.
    """
    if n_procs <= 1 or len(paths) < (_MIN_SHARED if pool is not None else 2 * _CHUNK):
        for p in paths:
            yield _read_one(p)
        return
    size = min(_CHUNK, max(_MIN_SHARED // 2, -(-len(paths) // (2 * n_procs))))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    if pool is not None:
        yield from _read_chunks(pool, chunks, n_procs)
        return
    with scan_pool(n_procs) as own:
        yield from _read_chunks(own, chunks, n_procs)


def _read_chunks(
    pool: Executor, chunks: list[list[str]], n_procs: int
) -> Generator[_Read, None, None]:
    """The reads of ``chunks``, in order, by ``pool``'s workers (at most ``3 * n_procs``
    chunks in flight); once a worker process has died (the pool is broken), the chunks
    not read yet are read in this process (those its workers had read are kept)."""
    pending: deque[Future[list[_Read]]] = deque()
    next_chunk = done = 0
    try:
        while done < len(chunks):
            try:
                while next_chunk < len(chunks) and len(pending) < 3 * n_procs:
                    pending.append(pool.submit(_read_chunk, chunks[next_chunk]))
                    next_chunk += 1
                reads = pending[0].result()
            except BrokenExecutor:
                break
            pending.popleft()
            done += 1
            yield from reads
        else:
            return
        read = [f.result() if f.done() and f.exception() is None else None for f in pending]
        left = [chunk for chunk, r in zip(chunks[done:], read, strict=False) if r is None]
        left += chunks[done + len(read) :]
        n_left = sum(len(chunk) for chunk in left)
        worker_gone(f"reading the headers of {n_left} files, from {left[0][0]}", pool)
        for i, chunk in enumerate(chunks[done:]):
            kept = read[i] if i < len(read) else None
            yield from kept if kept is not None else _read_chunk(chunk)
    finally:
        for future in pending:
            future.cancel()


# --------------------------------------------------------------------------- cache
#
# One line per file: the relative path (JSON string), size, mtime_ns and the result as
# JSON (a header: the array of its values, in the order of the fields the first line
# names; a file that is no DICOM: {"problem": "..."}), separated by tabs, sorted by path
# like the scan itself, so the cache is read by merging two sorted streams (no dict of a
# whole session in memory). The first line names the format, the reader version and the
# FileHeader fields; a cache written with other values is ignored.


def _cache_signature() -> str:
    return json.dumps(
        {"bidsport_index": CACHE_FORMAT, "reader": READER_VERSION, "fields": _HEADER_FIELDS}
    )


def _cache_lines(cache_file: Path | None) -> Generator[tuple[str, int, int, str], None, None]:
    """(rel, size, mtime_ns, payload) of each entry of a valid cache file, in file order."""
    if cache_file is None:
        return
    try:
        fh = open(cache_file, encoding="utf-8")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("ignoring the index cache %s: %s", cache_file, exc.strerror or exc)
        return
    with fh:
        try:
            if fh.readline().rstrip("\n") != _cache_signature():
                log.info("ignoring the index cache %s (other version)", cache_file)
                return
            for line in fh:
                cells = line.rstrip("\n").split("\t", 3)
                if len(cells) != 4:
                    continue
                try:
                    rel = json.loads(cells[0])
                    size, mtime_ns = int(cells[1]), int(cells[2])
                except ValueError:
                    continue
                if isinstance(rel, str):
                    yield rel, size, mtime_ns, cells[3]
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("ignoring the rest of the index cache %s: %s", cache_file, exc)


def _fresh_entries(cache_file: Path | None, entries: list[_Entry]) -> set[int]:
    """Indices of ``entries`` whose cache line matches their size and mtime."""
    fresh: set[int] = set()
    index = 0
    for rel, size, mtime_ns, _payload in _cache_lines(cache_file):
        while index < len(entries) and entries[index].rel < rel:
            index += 1
        if index == len(entries):
            break
        entry = entries[index]
        if (entry.rel, entry.size, entry.mtime_ns) == (rel, size, mtime_ns) and not entry.problem:
            fresh.add(index)
    return fresh


#: positions of the tuple fields in a cached header's array
_TUPLE_POSITIONS = tuple(i for i, name in enumerate(_HEADER_FIELDS) if name in _TUPLE_FIELDS)
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _header_from_json(entry: _Entry, values: list[Any]) -> FileHeader | None:
    """The header of ``entry`` from its cached values (:data:`_HEADER_FIELDS`, in order)."""
    if len(values) != len(_HEADER_FIELDS):
        return None
    for i in _TUPLE_POSITIONS:
        if not isinstance(values[i], list):
            return None
        values[i] = tuple(values[i])
    return FileHeader(entry.path, entry.size, entry.mtime_ns, *values)


def _decode_payload(entry: _Entry, payload: str) -> FileHeader | Problem | None:
    """The cached result of ``entry``, or None if the line is not usable.

    A header is an array of its values, a file that is no DICOM ``{"problem": reason}``.
    """
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if isinstance(data, list):
        return _header_from_json(entry, data)
    if isinstance(data, dict) and isinstance(data.get("problem"), str):
        return Problem(where=entry.rel, reason=data["problem"], stage=STAGE)
    return None


def _problem_payload(problem: Problem) -> str:
    return json.dumps({"problem": problem.reason}, ensure_ascii=False)


class _CacheWriter:
    """Writes the new cache line by line into a temporary file, renamed at the end."""

    def __init__(self, stack: contextlib.ExitStack, cache_file: Path | None) -> None:
        self.fh: IO[str] | None = None
        if cache_file is not None:
            tmp = stack.enter_context(fileops.atomic_path(cache_file))
            self.fh = stack.enter_context(open(tmp, "w", encoding="utf-8"))  # noqa: SIM115
            self.fh.write(_cache_signature() + "\n")

    def add_problem(self, entry: _Entry, problem: Problem) -> None:
        if self.fh is not None:
            self.add_line(entry, _problem_payload(problem))

    def add_line(self, entry: _Entry, payload: str) -> None:
        if self.fh is not None:
            self.fh.write(f"{json.dumps(entry.rel)}\t{entry.size}\t{entry.mtime_ns}\t{payload}\n")

    def finish(self) -> None:
        if self.fh is not None:
            self.fh.flush()
            os.fsync(self.fh.fileno())


# --------------------------------------------------------------------------- scanning


def scan_session(
    root: Path,
    *,
    n_procs: int = 1,
    cache_file: Path | None = None,
    pool: Executor | None = None,
) -> Iterator[FileHeader | Problem]:
    """Read the header of every file below ``root``, in the order of their relative paths.

    Yields a :class:`FileHeader` for every readable DICOM file and a :class:`Problem`
    (stage "organize", ``where`` = path relative to ``root``) for every other file.
    With ``n_procs`` > 1 headers are read in that many worker processes: ``pool``'s when
    given (see :func:`scan_pool`), else a pool started for this call.

    With ``cache_file``, results are cached on disk, keyed by relative path, size and
    modification time: a re-run reads only new or changed files. The cache is rewritten
    atomically when the iteration completes; an unreadable or foreign cache is ignored.
    """
    if not root.is_dir():
        raise UsageError(f"cannot scan {root}: not a folder")
    entries = _list_files(root, skip=[cache_file] if cache_file is not None else [])
    fresh = _fresh_entries(cache_file, entries)
    to_read = [str(e.path) for i, e in enumerate(entries) if e.problem is None and i not in fresh]
    log.info(
        "%s: %d files, %d from the index cache, %d to read",
        root, len(entries), len(fresh), len(to_read),
    )  # fmt: skip
    reads = _read_all(to_read, n_procs, pool)
    cached = _CacheReader(cache_file if fresh else None)
    with contextlib.ExitStack() as stack:
        stack.callback(reads.close)
        stack.callback(cached.close)
        writer = _CacheWriter(stack, cache_file)
        for index, entry in enumerate(entries):
            if entry.problem is not None:
                yield Problem(where=entry.rel, reason=entry.problem, stage=STAGE)
                continue
            result: FileHeader | Problem | None = None
            if index in fresh:
                payload = cached.lookup(entry.rel)
                result = _decode_payload(entry, payload) if payload is not None else None
                if payload is not None and result is not None:
                    writer.add_line(entry, payload)
                    yield result
                    continue
                values, text = _read_one(str(entry.path))  # the cache changed
            else:
                values, text = next(reads)
            if values is None:
                result = Problem(where=entry.rel, reason=text, stage=STAGE)
                writer.add_problem(entry, result)
            else:
                # the entry's Path object rather than a second, equal one (a Path is
                # ~0.5 kB: 50 MB for 100,000 files)
                result = FileHeader(entry.path, *values)
                writer.add_line(entry, text)
            yield result
        writer.finish()


class _CacheReader:
    """Looks up cache lines for relative paths given in increasing order."""

    def __init__(self, cache_file: Path | None) -> None:
        self.lines = _cache_lines(cache_file)
        self.current = next(self.lines, None)

    def lookup(self, rel: str) -> str | None:
        while self.current is not None and self.current[0] < rel:
            self.current = next(self.lines, None)
        if self.current is not None and self.current[0] == rel:
            return self.current[3]
        return None

    def close(self) -> None:
        self.lines.close()


# --------------------------------------------------------------------------- exclusion

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_NON_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66": "raw data (Raw Data Storage)",
    "1.3.12.2.1107.5.9.1": "Siemens CSA non-image (raw data, spectroscopy or report)",
    "1.2.840.10008.5.1.4.1.1.88.59": "key object selection document",
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "encapsulated CDA document",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR spectroscopy",
    "1.2.840.10008.1.3.10": "DICOMDIR (a media index, not an image)",
}
_NON_IMAGE_PREFIXES = (
    ("1.2.840.10008.5.1.4.1.1.88.", "structured report"),
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.104.", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.9.", "waveform"),
)
_REPORT_DESCRIPTIONS = {"PHOENIXZIPREPORT", "PHOENIX ZIP REPORT", "EXAMCARD"}


def file_exclusion(h: FileHeader, *, keep_derived: bool = False) -> str | None:
    """Why a readable DICOM file is not used as image data, or None when it is.

    Non-image objects (raw data, reports, presentation states, documents) and non-MR
    files are always excluded; secondary captures, screen saves and derived images
    only unless ``keep_derived``.
    """
    sop = h.sop_class_uid or ""
    if sop in _NON_IMAGE_CLASSES:
        return _NON_IMAGE_CLASSES[sop]
    for prefix, what in _NON_IMAGE_PREFIXES:
        if sop.startswith(prefix):
            return what
    if (h.series_description or "").upper() in _REPORT_DESCRIPTIONS:
        return f"scanner protocol report ({h.series_description})"
    if any("CSA REPORT" in v for v in h.image_type):
        return "scanner protocol report (ImageType CSA REPORT)"
    if h.modality != "MR":
        return f"modality {h.modality or '(missing)'} is not MR"
    if not h.has_pixel_data:
        return "no pixel data"
    if not h.series_uid:
        return "no SeriesInstanceUID (0020,000E)"
    if not keep_derived:
        if sop.startswith(_SECONDARY_CAPTURE) or any(
            v in ("SCREEN SAVE", "SECONDARY") for v in h.image_type
        ):
            return "secondary capture / screen save"
        if h.image_type[:1] == ("DERIVED",):
            return "derived image (ImageType " + "\\".join(h.image_type) + ")"
    return None


# --------------------------------------------------------------------------- series
#
# dcm2niix turns the files of one series into one image, except that it splits them
# where they differ in a way no single image can hold. group_series reproduces the
# splits that matter for naming, and nothing more:
#
# * magnitude / phase / real / imaginary images (ImageType values "M"/"P"/"R"/"I",
#   ComplexImageComponent, GE's private image type) become separate series (tags
#   "-mag", "-phase", "-real", "-imag");
# * ORIGINAL and DERIVED images (ImageType value 1) become separate series
#   ("-original", "-derived"); other ImageType differences (ND/NORM...) do not split;
# * different SeriesNumbers under one SeriesInstanceUID become separate series ("-s<N>");
# * different geometry (ImageOrientationPatient differing by more than 1e-4, or a
#   different matrix size) become separate series ("-geom<N>", e.g. 3-plane localizers);
# * echoes are NOT split: dcm2niix writes one image per echo (_e1, _e2) from one call,
#   so a multi-echo series stays one Series with ``echo_numbers`` (1, 2, ...).
#
# (Checked against dcm2niix v1.0.20260724 on synthetic series: it splits exactly on
# these, and keeps ND/NORM variants and echoes in one call.)
#
# Siemens XA "interoperability" exports (ImageType contains MFSPLIT) save every volume
# of a run as its own series; those are merged back into one series.

_ORIENTATION_TOLERANCE = 1e-4
_COMPONENT_TAGS = {"MAGNITUDE": "mag", "PHASE": "phase", "REAL": "real", "IMAGINARY": "imag"}
_IMAGE_TYPE_COMPONENTS = {
    "P": "PHASE", "PHASE": "PHASE", "R": "REAL", "REAL": "REAL",
    "I": "IMAGINARY", "IMAGINARY": "IMAGINARY",
}  # fmt: skip


def _component(h: FileHeader) -> str:
    """MAGNITUDE, PHASE, REAL or IMAGINARY (unknown counts as magnitude, as in dcm2niix)."""
    if h.complex_image_component in ("PHASE", "REAL", "IMAGINARY"):
        return h.complex_image_component
    for value in h.image_type[2:]:
        if value in _IMAGE_TYPE_COMPONENTS:
            return _IMAGE_TYPE_COMPONENTS[value]
    return "MAGNITUDE"


def _same_orientation(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    if len(a) != len(b):
        return False
    return all(abs(x - y) <= _ORIENTATION_TOLERANCE for x, y in zip(a, b, strict=True))


def _same_geometry(a: FileHeader, b: FileHeader) -> bool:
    return (a.rows, a.columns) == (b.rows, b.columns) and _same_orientation(
        a.image_orientation, b.image_orientation
    )


def _instance_order(h: FileHeader) -> tuple[int, int, str]:
    n = h.instance_number
    return (0 if n is not None else 1, n if n is not None else 0, str(h.path))


def _split(key: str, headers: list[FileHeader]) -> list[tuple[str, list[FileHeader]]]:
    """Split the files of one SeriesInstanceUID where dcm2niix would make several images."""
    headers = sorted(headers, key=_instance_order)
    geometries: list[FileHeader] = []  # one file of each geometry
    groups: dict[tuple[str, str, int | None, int], list[FileHeader]] = {}
    for h in headers:
        g = next((i for i, other in enumerate(geometries) if _same_geometry(h, other)), None)
        if g is None:
            g = len(geometries)
            geometries.append(h)
        kind = "derived" if h.image_type[:1] == ("DERIVED",) else "original"
        groups.setdefault((_component(h), kind, h.series_number, g), []).append(h)
    if len(groups) == 1:
        return [(key, headers)]
    varies = [len({k[i] for k in groups}) > 1 for i in range(4)]
    parts = []
    for (component, kind, number, g), members in groups.items():  # by first appearance
        tags = []
        if varies[0]:
            tags.append(_COMPONENT_TAGS[component])
        if varies[1]:
            tags.append(kind)
        if varies[2]:
            tags.append(f"s{number if number is not None else 'none'}")
        if varies[3]:
            tags.append(f"geom{g + 1}")
        parts.append((f"{key}-{'-'.join(tags)}", members))
    return parts


def _seconds(hhmmss: str) -> float | None:
    """Seconds since midnight of a DICOM TM value (HHMMSS.frac or HH:MM:SS)."""
    text = hhmmss.strip().replace(":", "")
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4] or 0)
        seconds = float(text[4:] or 0)
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def _acquired(h: FileHeader) -> tuple[str, str] | None:
    """(date, time) a file was acquired: AcquisitionTime, else the date-time, content or
    series time. The date may be empty when the file holds none."""
    fallback_date = _valid_date(h.acquisition_date, h.series_date, h.study_date)
    if h.acquisition_time:
        return fallback_date, h.acquisition_time
    dt = h.acquisition_datetime
    if dt and len(dt) > 8:
        return _valid_date(dt[:8]), dt[8:].split("+")[0].split("-")[0]
    if h.content_time:
        return fallback_date, h.content_time
    if h.series_time:
        return _valid_date(h.series_date, h.study_date), h.series_time
    return None


def _valid_date(*candidates: str | None) -> str:
    """The first candidate that is a YYYYMMDD date, else "" (anonymised files hold "***")."""
    for value in candidates:
        if value and len(value) == 8 and value.isdigit():
            return value
    return ""


def _timestamp(when: tuple[str, str] | None) -> float | None:
    """Seconds on one time line (days from the date, when there is one)."""
    if when is None:
        return None
    seconds = _seconds(when[1])
    if seconds is None:
        return None
    try:
        day = date(int(when[0][0:4]), int(when[0][4:6]), int(when[0][6:8])).toordinal()
    except ValueError:
        day = 0
    return day * 86400.0 + seconds


def _earliest(headers: Iterable[FileHeader]) -> tuple[str, str] | None:
    best: tuple[str, str] | None = None
    best_t: float | None = None
    for h in headers:
        when = _acquired(h)
        t = _timestamp(when)
        if when is not None and t is not None and (best_t is None or t < best_t):
            best, best_t = when, t
    return best


@dataclass
class _Part:
    series_id: str
    headers: list[FileHeader]
    start: float | None
    merged_from: tuple[str, ...] = ()

    @property
    def first(self) -> FileHeader:
        return self.headers[0]

    @property
    def is_mfsplit(self) -> bool:
        return all("MFSPLIT" in h.image_type for h in self.headers)


def _may_follow(prev: _Part, part: _Part) -> bool:
    """True when ``part`` is the next volume of the MFSPLIT run ending with ``prev``."""
    a, b = prev.first, part.first
    if a.study_uid != b.study_uid or _component(a) != _component(b):
        return False
    same_number = a.series_number is not None and a.series_number == b.series_number
    same_names = (a.protocol_name, a.series_description) == (b.protocol_name, b.series_description)
    if not (same_number or same_names):
        return False
    if not _same_geometry(a, b):
        return False
    if len(prev.headers) != len(part.headers):  # a volume has the same number of files
        return False
    if prev.start is None or part.start is None:
        return False
    gap = part.start - prev.start
    tr = (a.repetition_time or 0.0) / 1000.0
    return 0 <= gap <= (2 * tr + 1.0 if tr > 0 else 60.0)


def _merge_mfsplit(parts: list[_Part]) -> list[_Part]:
    """Merge the per-volume series of Siemens XA interoperability exports into runs.

    In acquisition order, an MFSPLIT series joins an open run it may follow (same
    study, series number or protocol + description, geometry, image component, files
    per volume, and starting at most about two TRs after the previous volume); any
    other series acquired in between closes the open runs of its study.
    """
    ordered = sorted(parts, key=lambda p: (p.start is None, p.start or 0.0, p.series_id))
    runs: list[list[_Part]] = []
    open_runs: list[list[_Part]] = []
    for part in ordered:
        if not part.is_mfsplit:
            open_runs = [r for r in open_runs if r[-1].first.study_uid != part.first.study_uid]
            runs.append([part])
            continue
        for run in open_runs:
            if _may_follow(run[-1], part):
                run.append(part)
                break
        else:
            run = [part]
            runs.append(run)
            open_runs.append(run)
    merged = []
    for run in runs:
        if len(run) == 1:
            merged.append(run[0])
            continue
        uids = tuple(dict.fromkeys(p.first.series_uid or p.series_id for p in run))
        headers = [h for p in run for h in p.headers]
        merged.append(_Part(f"{run[0].series_id}-mfsplit", headers, run[0].start, uids))
    return merged


def _count_volumes(headers: list[FileHeader]) -> int:
    """Estimated number of volumes (the 4th dimension of the image).

    Multi-frame files: the highest temporal position in any file (``read_header``
    records the highest TemporalPositionIndex of a file's frames), else one volume per
    file at one position. Single-frame files: the most files at one slice position for
    one echo (files at one position are the volumes: fMRI, DWI, mosaics), else the
    number of distinct temporal positions, else 1.
    """
    multi_frame = any((h.number_of_frames or 1) > 1 for h in headers)
    temporal = [h.temporal_position for h in headers if h.temporal_position]
    if multi_frame and temporal and max(temporal) > 1:
        return max(temporal)
    at_position: dict[tuple[Any, ...], set[str]] = {}
    for h in headers:
        if not h.image_position:
            continue
        position = tuple(round(v, 3) for v in h.image_position)
        at_position.setdefault((h.echo_number, position), set()).add(
            h.sop_instance_uid or str(h.path)
        )
    if at_position:
        return max(len(v) for v in at_position.values())
    if temporal:
        return len(set(temporal))
    # no positions (UIH and other mosaic-like packings): one volume per file and echo
    per_echo: dict[int | None, set[str]] = {}
    for h in headers:
        per_echo.setdefault(h.echo_number, set()).add(h.sop_instance_uid or str(h.path))
    return max(len(v) for v in per_echo.values()) if per_echo else 1


def _summarise(part: _Part) -> Series:
    headers = part.headers if part.merged_from else sorted(part.headers, key=_instance_order)
    when = _earliest(headers)
    return Series(
        series_id=part.series_id,
        header=headers[0],
        files=tuple(h.path for h in headers),
        n_volumes=_count_volumes(headers),
        b_values=tuple(sorted({h.b_value for h in headers if h.b_value is not None})),
        echo_numbers=tuple(sorted({h.echo_number for h in headers if h.echo_number is not None})),
        echo_times=tuple(
            sorted({round(h.echo_time, 6) for h in headers if h.echo_time is not None})
        ),
        image_types=tuple(sorted({h.image_type for h in headers})),
        acquisition_time=when[1] if when else None,
        acquisition_date=(when[0] or None) if when else None,
        merged_from=part.merged_from,
    )


def series_order(s: Series) -> tuple[Any, ...]:
    """Sort key of series in acquisition order: date and time, then series number (series
    without an acquisition time last)."""
    t = _timestamp((s.acquisition_date or "", s.acquisition_time)) if s.acquisition_time else None
    number = s.header.series_number
    return (t is None, t or 0.0, number is None, number or 0, s.series_id)


def group_series(headers: Iterable[FileHeader]) -> list[Series]:
    """Group file headers into series, as dcm2niix would convert them (pure, no I/O).

    Files are grouped by SeriesInstanceUID (files without one by StudyInstanceUID and
    SeriesNumber, under the id ``nouid-<SeriesNumber>``), split by image component and
    geometry (``<uid>-phase``, ``<uid>-geom2``, ...), and MFSPLIT volumes are merged into
    runs (``<first uid>-mfsplit``). Series are sorted by acquisition date/time, then
    series number. Pass only files that :func:`file_exclusion` keeps.
    """
    by_key: dict[str, list[FileHeader]] = {}
    for h in headers:
        key = h.series_uid or f"nouid-{h.series_number if h.series_number is not None else 0}"
        if not h.series_uid and h.study_uid:
            key = f"{key}-{h.study_uid}"
        by_key.setdefault(key, []).append(h)
    parts = []
    for key in sorted(by_key):
        for series_id, members in _split(key, by_key[key]):
            parts.append(_Part(series_id, members, _timestamp(_earliest(members))))
    series = [_summarise(part) for part in _merge_mfsplit(parts)]
    series.sort(key=series_order)
    return series
