"""The curation status table ``sourcedata/status.tsv``: one row per subject/session.

Two stores, one truth:

* **Per-session records** (``layout.status_row_file``, JSON). A participant-level run
  writes its own record atomically and without any lock; that record is the source of
  truth for what the run did (packets, stages, last error, time).
* **The table** ``layout.status_file``: a merged view for curators (Nipoppy's "doughnut").
  Participant-level runs update their own row under an exclusive lock by
  read-merge-atomic-replace. When the lock cannot be had (many jobs, or ``flock`` broken
  on a network file system) the run logs a warning and goes on: the group level rebuilds
  the table from the records and from what is on disk (:func:`regenerate_status`).

Every replacement of the table first copies the previous version into
``layout.status_backup_dir`` (``status-<UTC time>.tsv``; the newest
:data:`KEEP_BACKUPS` are kept). A replacement that would not change any row is skipped,
so re-running the group level does not touch the table.

In ``status.tsv`` labels carry their ``sub-``/``ses-`` prefixes (BIDS/Nipoppy style),
``n/a`` stands for a missing value, stages are ``true``/``false``. In :class:`StatusRow`
and in the records, labels are stored without prefixes. Columns that curators add
(notes, QC) are kept, in their place, with each session's cells, whenever bidsport
rewrites the table, also when the group level rebuilds a table it cannot read (a
curator's typo), as far as that table's sessions can be told.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bidsport import fileops
from bidsport.errors import LabelError, LockedError, OutputError
from bidsport.layout import NIFTI_ENDINGS, DatasetLayout, sub_ses_prefix
from bidsport.records import SessionResult
from bidsport.uptodate import STATUS_COLUMNS, iso_utc, table_label

log = logging.getLogger(__name__)

# STATUS_COLUMNS, the columns of status.tsv in order, are defined in uptodate, which
# reads the table for a re-run without importing this module.

#: How many previous versions of ``status.tsv`` are kept in the backup folder.
KEEP_BACKUPS = 20
#: Seconds a participant-level run waits for the table lock before giving up (not failing).
LOCK_TIMEOUT = 60.0
#: Longest ``last_error`` kept (characters); longer messages are cut with an ellipsis.
MAX_ERROR_CHARS = 500

_LABEL = re.compile(r"[A-Za-z0-9]+")
_BACKUP_NAME = re.compile(r"status-\d{8}T\d{6}\.\d{6}Z\.tsv")


# --------------------------------------------------------------------------- records


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds (``2024-01-02T09:00:00+00:00``)."""
    return iso_utc(time.time())


def one_line(text: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """``text`` on one line: whitespace runs (tabs, newlines) become one space.

    Empty text becomes None; text longer than ``limit`` is cut and ends with ``…``.
    """
    if text is None:
        return None
    flat = " ".join(text.split())
    if not flat:
        return None
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _check_label(kind: str, label: str) -> None:
    if not _LABEL.fullmatch(label):
        raise LabelError(
            f"invalid {kind} label {label!r} in the status table",
            f"{kind} labels are stored without their prefix and hold only letters and digits",
        )


@dataclass(frozen=True)
class StatusRow:
    """The curation status of one subject/session.

    ``packet`` and ``last_error`` are flattened to one line on creation (tabs and
    newlines become spaces), so a row always fits on one TSV line.
    """

    participant_id: str  #: label without ``sub-``
    session_id: str | None  #: label without ``ses-``; None for single-session data
    packet: str | None  #: packet name(s), ``;``-joined
    imported: bool
    organized: bool
    converted: bool
    last_error: str | None  #: the error that stopped the last run of this session
    updated: str  #: ISO 8601 UTC time of the last change

    def __post_init__(self) -> None:
        _check_label("participant", self.participant_id)
        if self.session_id is not None:
            _check_label("session", self.session_id)
        object.__setattr__(self, "packet", one_line(self.packet, limit=10_000))
        object.__setattr__(self, "last_error", one_line(self.last_error))
        object.__setattr__(self, "updated", one_line(self.updated) or "")

    @property
    def key(self) -> tuple[str, str]:
        """Sort and identity key: (participant, session or "")."""
        return (self.participant_id, self.session_id or "")

    def same_state(self, other: StatusRow) -> bool:
        """True when both rows say the same thing (ignoring ``updated``)."""
        return all(
            getattr(self, name) == getattr(other, name)
            for name in STATUS_COLUMNS
            if name != "updated"
        )


def expected_row(subject: str, session: str | None, updated: str | None = None) -> StatusRow:
    """The row of a session that is expected (manifest) but has no data yet."""
    return StatusRow(subject, session, None, False, False, False, None, updated or now_iso())


#: Why a session that no participant-level job works on is neither converted nor failed
#: (:func:`unrecorded_outcome`): the run that began it was killed.
INTERRUPTED = (
    "interrupted: a run stopped before it recorded an outcome; run the participant level again"
)
#: :func:`unrecorded_outcome` when the session's record says converted but the BIDS
#: folder holds no image (deleted since).
IMAGES_MISSING = (
    "images missing: the session's record says converted, but its BIDS folder holds no "
    "image; run the participant level again, which converts it again"
)
#: How the record of a session begins whose run has begun and not yet recorded an outcome.
UNFINISHED_PREFIX = "unfinished:"


def outcome_missing(row: StatusRow) -> bool:
    """True when ``row`` says that its session was imported (or organized), is not
    converted and ended with no error: its run has not recorded an outcome.

    While no participant-level job holds the session's lock (the group level makes sure
    of it) that run is over: it was killed. Such a row counts as failed.
    """
    return (row.imported or row.organized) and not row.converted and not row.last_error


def unrecorded_outcome(row: StatusRow, record: StatusRow | None) -> str | None:
    """Why the session of ``row`` (no job working on it) is neither converted nor failed,
    given its ``record``: :data:`INTERRUPTED` or :data:`IMAGES_MISSING`; None when the
    row says converted, failed or only expected (:func:`outcome_missing`)."""
    if not outcome_missing(row):
        return None
    if record is not None and record.converted and not record.last_error:
        return IMAGES_MISSING
    return INTERRUPTED


def row_from_result(
    result: SessionResult, packets: Sequence[str], *, updated: str | None = None
) -> StatusRow:
    """The status row of a participant-level :class:`SessionResult`."""
    return StatusRow(
        participant_id=result.subject,
        session_id=result.session,
        packet=";".join(packets) or None,
        imported=result.imported,
        organized=result.organized,
        converted=result.converted,
        last_error=result.error,
        updated=updated or now_iso(),
    )


def _row_to_record(row: StatusRow) -> dict[str, Any]:
    # not dataclasses.asdict, which deep-copies every value: each write of the table
    # rewrites all its rows, ~5 ms of a 300-row table's ~10
    return {name: getattr(row, name) for name in STATUS_COLUMNS}


def _row_from_record(data: Any, path: Path) -> StatusRow:
    if not isinstance(data, dict):
        raise OutputError(f"status record {path} is not a JSON object")
    try:
        values = {name: data[name] for name in STATUS_COLUMNS}
    except KeyError as exc:
        raise OutputError(f"status record {path} has no {exc.args[0]!r} key") from exc
    for name in ("imported", "organized", "converted"):
        if not isinstance(values[name], bool):
            raise OutputError(f"status record {path}: {name} is {values[name]!r}, not a boolean")
    for name in ("participant_id", "updated"):
        if not isinstance(values[name], str):
            raise OutputError(f"status record {path}: {name} is {values[name]!r}, not a string")
    for name in ("session_id", "packet", "last_error"):
        if values[name] is not None and not isinstance(values[name], str):
            raise OutputError(f"status record {path}: {name} is {values[name]!r}, not a string")
    return StatusRow(**values)


def read_status_record(
    layout: DatasetLayout, subject: str, session: str | None
) -> StatusRow | None:
    """The record of one session, or None when there is none (or it is unreadable)."""
    path = layout.status_row_file(subject, session)
    try:
        return _read_record(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, OutputError, LabelError) as exc:
        log.warning("ignoring unreadable status record %s: %s", path, exc)
        return None


def _read_record(path: Path) -> StatusRow:
    with open(path, encoding="utf-8") as fh:
        return _row_from_record(json.load(fh), path)


def read_records(layout: DatasetLayout) -> list[StatusRow]:
    """Every readable per-session record (unreadable ones are logged and skipped)."""
    rows: dict[tuple[str, str], StatusRow] = {}
    folder = layout.status_rows_dir
    if not folder.is_dir():
        return []
    for path in sorted(folder.glob("sub-*.json")):
        try:
            row = _read_record(path)
        except (OSError, ValueError, OutputError, LabelError) as exc:
            log.warning("ignoring unreadable status record %s: %s", path, exc)
            continue
        if layout.status_row_file(row.participant_id, row.session_id) != path:
            log.warning("ignoring status record %s: it describes another session", path)
            continue
        rows[row.key] = row
    return [rows[key] for key in sorted(rows)]


# --------------------------------------------------------------------------- the table


def status_lock_file(layout: DatasetLayout) -> Path:
    """The lock file beside ``status.tsv`` (held while the table is replaced)."""
    return layout.status_lock_file


def _row_to_cells(row: StatusRow) -> dict[str, Any]:
    cells = _row_to_record(row)
    cells["participant_id"] = f"sub-{row.participant_id}"
    cells["session_id"] = f"ses-{row.session_id}" if row.session_id else None
    return cells


def _parse_bool(value: str, path: Path, line: int, column: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", "n/a", ""):
        return False
    raise OutputError(
        f"{path}, line {line}: {column} is {value!r}, not true/false",
        "fix it, or delete it and run the group level to rebuild it",
    )


@dataclass(frozen=True)
class _Table:
    """A status table as read: its rows (sorted), its columns in the file's order
    (:data:`STATUS_COLUMNS` and any a curator added, e.g. notes), and each session's
    cells of the added columns, which bidsport keeps when it rewrites the table (an
    empty cell is written ``n/a``, as every missing value of the table)."""

    rows: tuple[StatusRow, ...]
    columns: tuple[str, ...] = STATUS_COLUMNS
    added: Mapping[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)


def _parse_table(path: Path) -> _Table:
    hint = "fix it, or delete it and run the group level to rebuild it"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    missing = [col for col in STATUS_COLUMNS if col not in header]
    if missing:
        raise OutputError(f"{path} lacks the column(s) {', '.join(missing)}", hint)
    twice = sorted({col for col in header if header.count(col) > 1})
    if twice:
        raise OutputError(f"{path} has the column(s) {', '.join(twice)} more than once", hint)
    extra = [col for col in header if col not in STATUS_COLUMNS]
    rows = []
    added = {}
    lines_of: dict[tuple[str, str], int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) != len(header):
            raise OutputError(
                f"{path}, line {number}: {len(values)} cells, expected {len(header)}", hint
            )
        cells = dict(zip(header, values, strict=True))

        def text(column: str, cells: dict[str, str] = cells) -> str | None:
            value = cells[column].strip()
            return None if value in ("", "n/a") else value

        subject = text("participant_id") or ""
        session = text("session_id")
        try:
            row = StatusRow(
                participant_id=subject.removeprefix("sub-"),
                session_id=session.removeprefix("ses-") if session else None,
                packet=text("packet"),
                imported=_parse_bool(cells["imported"], path, number, "imported"),
                organized=_parse_bool(cells["organized"], path, number, "organized"),
                converted=_parse_bool(cells["converted"], path, number, "converted"),
                last_error=text("last_error"),
                updated=text("updated") or "",
            )
        except LabelError as exc:
            raise OutputError(f"{path}, line {number}: {exc.message}", hint) from exc
        if row.key in lines_of:
            session_name = sub_ses_prefix(row.participant_id, row.session_id).replace("_", " ")
            raise OutputError(
                f"{path}, lines {lines_of[row.key]} and {number}: two rows of {session_name}",
                hint,
            )
        lines_of[row.key] = number
        rows.append(row)
        if extra:
            added[row.key] = {col: cells[col] for col in extra}
    return _Table(tuple(sorted(rows, key=lambda r: r.key)), tuple(header), added)


def _salvage(path: Path) -> _Table:
    """What can be kept of an unreadable status table (:func:`_read_table` refused it):
    its added columns, with the cells of each session whose labels can be told (the
    first row of a session given twice); nothing when the file cannot be read, lacks
    ``participant_id`` or ``session_id``, or names a column twice. No rows: those are
    rebuilt from the records and the disk."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return _Table(())
    header = lines[0].split("\t") if lines else []
    extra = [col for col in header if col not in STATUS_COLUMNS]
    if not extra or len(set(header)) != len(header):
        return _Table(())
    if "participant_id" not in header or "session_id" not in header:
        return _Table(())
    added: dict[tuple[str, str], Mapping[str, str]] = {}
    for line in lines[1:]:
        values = line.split("\t")
        if len(values) != len(header):
            continue
        cells = dict(zip(header, values, strict=True))
        key = (
            table_label(cells["participant_id"], "sub-"),
            table_label(cells["session_id"], "ses-"),
        )
        added.setdefault(key, {col: cells[col] for col in extra})
    whole = all(col in header for col in STATUS_COLUMNS)
    return _Table((), tuple(header) if whole else (*STATUS_COLUMNS, *extra), added)


def _read_table(path: Path) -> _Table:
    """The status table at ``path`` (no rows when it does not exist). Raises
    :class:`OutputError` naming the file (and line) when it cannot be read or is
    malformed."""
    if not path.is_file():
        return _Table(())
    try:
        return _parse_table(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise OutputError(f"cannot read {path}: {exc}") from exc


def read_status(layout: DatasetLayout) -> list[StatusRow]:
    """The rows of ``status.tsv`` (empty when it does not exist), sorted.

    Raises :class:`OutputError` naming the file and line when the table is malformed.
    """
    return read_status_file(layout.status_file)


def read_status_file(path: Path) -> list[StatusRow]:
    """The rows of a status table (``status.tsv`` or one of its backups), sorted."""
    return list(_read_table(path).rows)


def _backup_name(stamp: datetime) -> str:
    return f"status-{stamp.strftime('%Y%m%dT%H%M%S.%fZ')}.tsv"


def backup_status(layout: DatasetLayout, keep: int = KEEP_BACKUPS) -> Path | None:
    """Copy ``status.tsv`` (atomically) into the backup folder; prune to ``keep`` copies.

    Returns the backup written, or None when there is no table yet.
    """
    source = layout.status_file
    if not source.is_file():
        return None
    folder = layout.status_backup_dir
    stamp = datetime.now(timezone.utc)
    while (folder / _backup_name(stamp)).exists():  # keep names unique and in time order
        stamp += timedelta(microseconds=1)
    target = folder / _backup_name(stamp)
    fileops.copy_file(source, target)
    backups = sorted(p for p in folder.iterdir() if _BACKUP_NAME.fullmatch(p.name))
    for old in backups[: max(len(backups) - keep, 0)]:
        fileops.remove_tree(old, folder)
    return target


def _remove_temps_of(folder: Path, pattern: str) -> int:
    """Remove ``.<pattern>.*.tmp`` in ``folder``: what atomic writes of files matching
    ``pattern`` (a glob) left when their run was killed. Returns how many were removed.
    The caller makes sure that no other run is writing those files now."""
    removed = 0
    for path in folder.glob(f".{pattern}.*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def remove_stale_temps(layout: DatasetLayout, subject: str, session: str | None) -> int:
    """Remove what killed runs left of the atomic writes of a session's status record.

    Call it only under the session's lock (no other run writes that record then).
    Returns how many temporary files were removed.
    """
    record = layout.status_row_file(subject, session)
    return _remove_temps_of(record.parent, glob.escape(record.name))


def _replace_table(
    layout: DatasetLayout,
    old: _Table | None,
    rows: Iterable[StatusRow],
    salvaged: _Table | None = None,
) -> bool:
    """Write ``rows`` as ``status.tsv`` unless they equal the rows of ``old`` (the
    current table; None: unreadable, replaced, with what :func:`_salvage` kept of it).

    The columns a curator added to ``old`` are kept, in their place, with each
    session's cells (``n/a`` for a new session's). The current table is backed up
    first. Returns False when nothing changed. The caller holds the table lock (or
    knows that nobody else writes).
    """
    new = sorted(rows, key=lambda r: r.key)
    # Temporary files of the table and its backups that killed runs left: nobody else
    # writes them while we hold the table lock.
    _remove_temps_of(layout.status_file.parent, glob.escape(layout.status_file.name))
    _remove_temps_of(layout.status_backup_dir, "status-*.tsv")
    if old is not None and list(old.rows) == new and layout.status_file.is_file():
        return False
    backup_status(layout)
    table = old or salvaged or _Table(())
    cells = [_row_to_cells(row) | dict(table.added.get(row.key, {})) for row in new]
    fileops.write_tsv(layout.status_file, cells, list(table.columns))
    return True


def _acquire_table_lock(
    stack: contextlib.ExitStack[Any], layout: DatasetLayout, timeout: float
) -> str:
    """Enter the table lock on ``stack``, waiting up to ``timeout`` seconds.

    Returns "held", "busy" (another run held it for the whole time) or "unsupported"
    (the file system refused the lock, as some NFS set-ups do).
    """
    lock = status_lock_file(layout)
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            stack.enter_context(fileops.file_lock(lock, blocking=False))
            return "held"
        except LockedError:
            if time.monotonic() >= deadline:
                return "busy"
        except OSError as exc:  # e.g. ENOLCK: no flock on this file system
            log.warning("cannot lock %s: %s", lock, exc)
            return "unsupported"
        time.sleep(max(min(delay * random.uniform(0.5, 1.5), deadline - time.monotonic()), 0))
        delay = min(delay * 2, 1.0)


def record_session(
    layout: DatasetLayout,
    row: StatusRow,
    *,
    lock_timeout: float = LOCK_TIMEOUT,
    table: TableUpdates | None = None,
) -> None:
    """Record the status of one session (participant level; safe in many processes).

    1. Writes the session's record ``layout.status_row_file`` atomically, without a lock
       (the source of truth; an :class:`OutputError` here propagates).
    2. Replaces the session's row of ``status.tsv`` under the table lock (read, merge,
       back up, atomic replace): now, or with ``table`` when it writes next
       (:class:`TableUpdates`). If the lock cannot be had within ``lock_timeout``
       seconds, or the table cannot be read or written, a warning is logged and the run
       goes on: the group level rebuilds the table from the records.
    """
    fileops.write_json(
        layout.status_row_file(row.participant_id, row.session_id), _row_to_record(row)
    )
    if table is not None:
        table.put(row)
    else:
        update_table_row(layout, row, lock_timeout=lock_timeout)


def update_table_row(
    layout: DatasetLayout, row: StatusRow, *, lock_timeout: float = LOCK_TIMEOUT
) -> bool:
    """Put ``row`` into ``status.tsv`` (step 2 of :func:`record_session`); True if it changed.

    Under the table lock: read, merge, back up, atomic replace; nothing is written when
    the table already holds ``row``. A lock that cannot be had within ``lock_timeout``
    seconds, or a table that cannot be read or written, only logs a warning (the group
    level rebuilds the table from the records). A run that finds a session already done
    calls this with the session's record: a run killed between writing the record and
    updating the table leaves the two apart, and this heals the table.
    """
    return update_table_rows(layout, [row], lock_timeout=lock_timeout)


def update_table_rows(
    layout: DatasetLayout,
    rows: Sequence[StatusRow],
    *,
    lock_timeout: float = LOCK_TIMEOUT,
    from_records: bool = False,
) -> bool:
    """Put ``rows`` (one per session) into ``status.tsv`` in one replacement, as
    :func:`update_table_row` puts one; True if the table changed.

    ``from_records``: each session's record, read under the table lock, is put instead of
    its row (the row when the record cannot be read). For rows that waited after their
    session's lock was released (:class:`TableUpdates`): meanwhile another run may have
    recorded the session anew and written its row, which a waiting row must not undo.
    """
    labels = ", ".join(sub_ses_prefix(r.participant_id, r.session_id) for r in rows)
    try:
        with contextlib.ExitStack() as stack:
            if _acquire_table_lock(stack, layout, lock_timeout) != "held":
                where = (
                    layout.status_row_file(rows[0].participant_id, rows[0].session_id)
                    if len(rows) == 1
                    else layout.status_rows_dir
                )
                log.warning(
                    "%s: %s not updated (no lock within %g s); the %s recorded in %s "
                    "and the group level will add %s to the table",
                    labels,
                    layout.status_file,
                    lock_timeout,
                    "row is" if len(rows) == 1 else "rows are",
                    where,
                    "it" if len(rows) == 1 else "them",
                )
                return False
            if from_records:
                rows = [
                    read_status_record(layout, r.participant_id, r.session_id) or r for r in rows
                ]
            old = _read_table(layout.status_file)
            merged = {r.key: r for r in old.rows}
            merged.update((r.key, r) for r in rows)
            return _replace_table(layout, old, merged.values())
    except (OutputError, OSError) as exc:
        log.warning(
            "%s: could not update %s (%s); the group level will rebuild it",
            labels,
            layout.status_file,
            exc,
        )
        return False


class TableUpdates:
    """One participant-level run's rows of ``status.tsv``, written a few at a time.

    Each session puts its row twice (when it begins and when it ends), and each put
    rewrote the whole table, backed up first: a run of many small sessions rewrote it
    twice per session, quadratic in the number of sessions (a run of 300 sessions: 600
    rewrites of up to 300 rows, and 600 backups of which the last 20 were kept). A row
    put within ``interval`` seconds of the table's last write waits for the next one:
    ``interval`` seconds (a timer thread writes it then, or tries to for as long as a
    row written at once would: ``lock_timeout``), or until :meth:`close`, which the run
    calls when it ends. A run of one session writes as before: its first row at once,
    its last when it ends.

    What waits is only the merged view: :func:`record_session` writes each session's
    record, the source of truth, at once, and a write puts each session's record as it
    then is (another run may have redone the session since its row was put). A run
    killed with rows waiting leaves the table behind its records, as a table lock that
    could not be had does: the next participant run of those sessions puts their rows
    again, and the group level rebuilds the table from the records. An unexpected error
    of a write is logged, not raised: the records are written already.
    """

    def __init__(
        self, layout: DatasetLayout, interval: float = 1.0, lock_timeout: float = LOCK_TIMEOUT
    ) -> None:
        self.layout = layout
        self.interval = interval
        self.lock_timeout = lock_timeout
        self._pending: dict[tuple[str, str], StatusRow] = {}
        self._guard = threading.Lock()  # _pending, _last, _timer, _closed
        self._writing = threading.Lock()  # one write of the table at a time
        self._last = -math.inf  # time.monotonic() of the last write
        self._timer: threading.Timer | None = None
        self._closed = False

    def put(self, row: StatusRow) -> None:
        """Put ``row`` into the table: now when the table was last written ``interval``
        seconds ago or more (or after :meth:`close`), otherwise with the next write."""
        with self._guard:
            self._pending[row.key] = row
            wait = self.interval - (time.monotonic() - self._last)
            now = wait <= 0 or self._closed
            if not now and self._timer is None:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()
        if now:
            self.flush()

    def flush(self) -> None:
        """Write the rows put since the last write (nothing when there are none)."""
        with self._writing:
            with self._guard:
                rows = list(self._pending.values())
                self._pending.clear()
                if self._timer is not None and self._timer is not threading.current_thread():
                    self._timer.cancel()
                self._timer = None
                self._last = time.monotonic()
            if not rows:
                return
            try:
                update_table_rows(
                    self.layout, rows, lock_timeout=self.lock_timeout, from_records=True
                )
            except Exception:  # a bug; the rows are in the records, which the group level reads
                log.exception(
                    "could not update %s; the group level will rebuild it", self.layout.status_file
                )

    def close(self) -> None:
        """Write what waits; every later :meth:`put` writes at once."""
        with self._guard:
            self._closed = True
        self.flush()


def add_expected(
    layout: DatasetLayout,
    pairs: Sequence[tuple[str, str | None]],
    *,
    lock_timeout: float = LOCK_TIMEOUT,
) -> None:
    """Add an all-false row for every expected (subject, session) not yet in the table.

    Existing rows are kept as they are. Labels are given without prefixes (a bad label
    raises :class:`LabelError`). Like :func:`record_session`, a lock that cannot be had
    only logs a warning (the group level adds the manifest rows when it rebuilds the
    table); a malformed table raises :class:`OutputError`.
    """
    stamp = now_iso()
    wanted = [expected_row(sub, ses, stamp) for sub, ses in pairs]  # validates the labels
    if not wanted:
        return
    with contextlib.ExitStack() as stack:
        if _acquire_table_lock(stack, layout, lock_timeout) != "held":
            log.warning(
                "could not lock %s within %g s: manifest rows not added (the group level "
                "adds them)",
                layout.status_file,
                lock_timeout,
            )
            return
        old = _read_table(layout.status_file)
        rows = {r.key: r for r in old.rows}
        for row in wanted:
            rows.setdefault(row.key, row)
        _replace_table(layout, old, rows.values())


# --------------------------------------------------------------------------- regenerate


def _holds_file(folder: Path, skip_sessions: bool, suffixes: tuple[str, ...] = ()) -> bool:
    """True when ``folder`` holds a file, with ``suffixes`` one whose name ends with one
    of them (:func:`fileops.count_files`)."""
    return fileops.count_files(folder, suffixes=suffixes, skip_sessions=skip_sessions, limit=1) > 0


def _has_image(session_dir: Path) -> bool:
    """True when the session's folder holds an image: a NIfTI file or a DICOM copy
    (``--output-format dcm``), in a datatype folder or, with ``--layout flat``, in the
    session's folder itself (not in the ``ses-*`` folders of other sessions)."""
    if not session_dir.is_dir():
        return False
    return _holds_file(session_dir, True, (*NIFTI_ENDINGS, ".dcm"))


def _images_expected(layout: DatasetLayout, subject: str, session: str | None) -> bool:
    """False when the session's series table says that no series was converted (only
    localizers, or filters that selected none of its series): its BIDS folder then holds
    no image, and the session is done all the same. True when the table names outputs,
    or cannot be read."""
    try:
        rows = fileops.read_tsv(layout.series_table(subject, session))
    except (OSError, ValueError):
        return True
    return any(fileops.tsv_cell(row, "outputs") for row in rows)


def _sessions_under(top: Path) -> set[tuple[str, str | None]]:
    """(subject, session) pairs with a folder below ``top`` (``sub-*[/ses-*]``).

    A ``sub-<s>`` folder gives one pair per ``ses-<t>`` folder in it, and a pair without
    session when it holds anything else (a datatype or packet folder, a file), apart from
    hidden entries and ``*_sessions.tsv``.
    """
    pairs: set[tuple[str, str | None]] = set()
    if not top.is_dir():
        return pairs
    for sub_dir in top.glob("sub-*"):
        if not sub_dir.is_dir():
            continue
        subject = sub_dir.name.removeprefix("sub-")
        if not _LABEL.fullmatch(subject):
            log.warning("ignoring %s: not a valid subject folder name", sub_dir)
            continue
        for entry in sub_dir.iterdir():
            if entry.name.startswith(".") or entry.name.endswith("_sessions.tsv"):
                continue
            # the name first: a session-less folder may hold thousands of files (no stat)
            if entry.name.startswith("ses-") and entry.is_dir():
                session = entry.name.removeprefix("ses-")
                if _LABEL.fullmatch(session):
                    pairs.add((subject, session))
                else:
                    log.warning("ignoring %s: not a valid session folder name", entry)
            else:
                pairs.add((subject, None))
    return pairs


def _tree_root(session_path: Callable[[str, str | None], Path]) -> Path:
    """The folder that holds the ``sub-*`` folders of a per-session layout path."""
    return session_path("x", None).parent


def _packets_on_disk(layout: DatasetLayout, subject: str, session: str | None) -> str | None:
    raw = layout.raw_dir(subject, session)
    if not raw.is_dir():
        return None
    names = sorted(
        p.name
        for p in raw.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and not (session is None and p.name.startswith("ses-"))
    )
    return ";".join(names) or None


def build_status(
    layout: DatasetLayout,
    records: Sequence[StatusRow],
    previous: Sequence[StatusRow] = (),
    manifest_pairs: Sequence[tuple[str, str | None]] = (),
    now: str | None = None,
) -> list[StatusRow]:
    """The status rows derived from ``records`` and from what is on disk (no writes).

    Rows: one for every session that has a record, a folder in ``sourcedata/raw``,
    ``sourcedata/dicom``, ``sourcedata/bidsport`` (its tables) or the BIDS tree, or a pair
    in ``manifest_pairs``. A row of ``previous`` (the current table) is kept when it says
    nothing but "expected" (no packet, stage or error: how a manifest given to an earlier
    run appears); any other row of ``previous`` is dropped when its session has none of
    those (a removed session: :func:`dropped_rows` names them). Columns:

    * ``imported``: ``layout.raw_dir`` or ``layout.dicom_dir`` holds at least one file.
    * ``organized``: ``layout.dicom_dir`` holds at least one file (broken links do not
      count). Hidden files are ignored, and for a session-less row the ``ses-*`` folders
      of the subject are not looked into.
    * ``converted``: the BIDS session folder holds at least one ``.nii``/``.nii.gz`` image
      in a datatype folder **and** the session's record says converted (no record: false).
    * ``packet``: from the record; without a record, the packet folders in
      ``layout.raw_dir`` (``;``-joined), else n/a.
    * ``last_error``: from the record; without a record, n/a.
    * ``updated``: from the record; without a record, the ``updated`` of the same row in
      ``previous`` when its other values are unchanged, else ``now``.
    """
    stamp = now or now_iso()
    by_record = {r.key: r for r in records}
    by_previous = {r.key: r for r in previous}
    pairs: set[tuple[str, str | None]] = {(r.participant_id, r.session_id) for r in records}
    pairs |= {(r.participant_id, r.session_id) for r in previous if _says_expected(r)}
    pairs |= set(manifest_pairs)
    pairs |= _sessions_under(_tree_root(layout.raw_dir))
    pairs |= _sessions_under(_tree_root(layout.dicom_dir))
    pairs |= _sessions_under(_tree_root(layout.tables_dir))
    pairs |= _sessions_under(layout.root)
    rows = []
    for subject, session in pairs:
        key = (subject, session or "")
        record = by_record.get(key)
        bare = session is None
        organized = _holds_file(layout.dicom_dir(subject, session), bare)
        imported = organized or _holds_file(layout.raw_dir(subject, session), bare)
        converted = bool(record and record.converted) and (
            _has_image(layout.session_dir(subject, session))
            or not _images_expected(layout, subject, session)
        )
        row = StatusRow(
            participant_id=subject,
            session_id=session,
            packet=record.packet if record else _packets_on_disk(layout, subject, session),
            imported=imported,
            organized=organized,
            converted=converted,
            last_error=record.last_error if record else None,
            updated=record.updated if record else stamp,
        )
        old = by_previous.get(key)
        if record is None and old is not None and old.same_state(row):
            row = old
        rows.append(row)
    return sorted(rows, key=lambda r: r.key)


def _says_expected(row: StatusRow) -> bool:
    """True when ``row`` says only that its session is expected (:func:`expected_row`)."""
    return not (row.packet or row.imported or row.organized or row.converted or row.last_error)


def dropped_rows(previous: Sequence[StatusRow], rows: Sequence[StatusRow]) -> list[StatusRow]:
    """The rows of ``previous`` whose session ``rows`` (:func:`build_status`) no longer list."""
    kept = {r.key for r in rows}
    return [r for r in previous if r.key not in kept]


def regenerate_status(
    layout: DatasetLayout,
    manifest_pairs: Sequence[tuple[str, str | None]] = (),
    *,
    lock_timeout: float = LOCK_TIMEOUT,
) -> list[StatusRow]:
    """Rebuild ``status.tsv`` from the records and the disk (see :func:`build_status`).

    The previous table is backed up before it is replaced (not when nothing changed);
    an unreadable previous table is replaced with a warning. Meant for the group level,
    while no participant-level job runs: a lock held elsewhere for ``lock_timeout``
    seconds raises :class:`LockedError`; a file system without working locks only logs
    a warning.
    """
    for subject, session in manifest_pairs:  # validate the labels before any work
        expected_row(subject, session)
    with contextlib.ExitStack() as stack:
        if _acquire_table_lock(stack, layout, lock_timeout) == "busy":
            raise LockedError(
                f"{layout.status_file} is locked by another bidsport run",
                "run the group level when no participant-level job is running",
            )
        return _regenerate(layout, manifest_pairs)


def _regenerate(
    layout: DatasetLayout, manifest_pairs: Sequence[tuple[str, str | None]]
) -> list[StatusRow]:
    previous: _Table | None
    salvaged = None
    try:
        previous = _read_table(layout.status_file)
    except OutputError as exc:
        previous, salvaged = None, _salvage(layout.status_file)
        log.warning(
            "rebuilding unreadable %s: %s (it is kept in %s%s)",
            layout.status_file,
            exc.message,
            layout.status_backup_dir,
            "; the columns added to it are kept" if salvaged.added else "",
        )
    before = previous.rows if previous else ()
    rows = build_status(layout, read_records(layout), before, manifest_pairs)
    if _replace_table(layout, previous, rows, salvaged):
        log.info("rebuilt %s (%d rows)", layout.status_file, len(rows))
    for row in dropped_rows(before, rows):
        log.warning(
            "%s: dropped %s (no status record, no folder in the dataset, not in the "
            "manifest given); the previous table is kept in %s",
            layout.status_file,
            sub_ses_prefix(row.participant_id, row.session_id).replace("_", " "),
            layout.status_backup_dir,
        )
    return rows
