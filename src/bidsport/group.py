"""The group level: dataset-level files, status table, summary and validation.

Run after the participant-level jobs; it needs only the output dataset, never the DICOM
inbox. While a participant-level job holds the lock of a session of the dataset, it
refuses to start (:func:`check_no_session_in_progress`) and writes nothing: its files
would describe a half-converted dataset. A lock of a killed job is free (``flock`` ends
with its process). It writes, through :mod:`bidsport.fileops` (atomic):

* ``derivatives/bidsport/dataset_description.json`` (DatasetType "derivative", as BIDS
  requires of the folder of logs, reports and thumbnails);
* ``dataset_description.json``: created with Name (default: the folder name),
  BIDSVersion (that of the installed validator's schema), DatasetType "raw" and
  GeneratedBy; when it exists, every key is kept and only the bidsport and dcm2niix
  entries of GeneratedBy are updated (other entries are kept after them).
* ``participants.tsv``: one row per ``sub-*`` folder; columns and values a curator
  added are kept, rows of subjects without a folder are dropped (with a warning).
  bidsport adds no column of its own (it would need identifying data).
* ``participants.json``: describes ``participant_id``; other descriptions are kept.
* ``README``: a short generated text, only when no README file exists.
* ``sourcedata/status.tsv``: rebuilt from the per-session records and the disk.
* ``derivatives/bidsport/validation.json``: every finding of the BIDS validator (code,
  severity, location, message...), its version and command (:func:`validation_record`);
* ``derivatives/bidsport/report.html`` and its thumbnails (:mod:`bidsport.htmlreport`):
  status, the validator's findings (from ``validation.json``: those of the last
  validation), series tables and a picture of every converted image, for curators.

No ``.bidsignore`` is written: everything else bidsport writes lies in ``sourcedata/``
and ``derivatives/``, which the validator ignores. It does not even read them
(``--prune``), so it validates the dataset while the report's thumbnails are made.

No participant-level job runs while the group level does, so a session imported but
neither converted nor failed was interrupted (its job was killed): the summary counts
it as failed and the report says so (:func:`bidsport.status.unrecorded_outcome`).

A file whose content would not change is not rewritten, so a second run changes
nothing (not even the status backups).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidsport import fileops, uptodate
from bidsport.errors import ExternalToolError, LockedError, OutputError, UsageError
from bidsport.htmlreport import counted, prepare_report, write_page
from bidsport.layout import DatasetLayout, sub_ses_prefix
from bidsport.status import (
    StatusRow,
    build_status,
    outcome_missing,
    read_records,
    read_status,
    regenerate_status,
)
from bidsport.validator import (
    VALIDATOR_SCRIPT,
    Issue,
    ValidationResult,
    find_validator,
    start_validator,
    validator_bids_version,
)

if TYPE_CHECKING:
    from bidsport.reportworkers import ThumbnailPool

log = logging.getLogger(__name__)

CODE_URL = "https://github.com/bidsport/bidsport"
#: BIDSVersion written when no validator tells which version its schema follows.
DEFAULT_BIDS_VERSION = "1.10.0"
README_NAMES = ("README", "README.md", "README.rst", "README.txt")
PARTICIPANT_ID_DESCRIPTION = {"Description": "Unique participant label (sub-<label>)."}
#: How many distinct issue codes :func:`format_summary` lists per severity.
SHOWN_CODES = 5
#: The validator's findings, in ``layout.derivatives_dir``.
VALIDATION_FILE_NAME = "validation.json"
#: Issue fields kept in the validation file, in order.
ISSUE_FIELDS = ("severity", "code", "sub_code", "location", "line", "message", "rule")
#: How many in-progress sessions the refusal to start names (the rest: "and N more").
SHOWN_SESSIONS = 10
IN_PROGRESS_HINT = (
    "wait for the participant-level jobs to finish, then run the group level (SLURM: "
    "sbatch --dependency=afterok:<array job id>, or afterany to run it after partial "
    "failures too); a killed job does not block it"
)


@dataclass(frozen=True)
class SummaryRow:
    """Counts of sessions per stage for one participant (or all: ``participant_id="all"``)."""

    participant_id: str  #: label without ``sub-``, or "all" for the totals
    sessions: int
    imported: int
    organized: int
    converted: int
    failed: int  #: sessions whose last run ended with an error, or was interrupted


@dataclass(frozen=True)
class GroupResult:
    """What the group level wrote and found."""

    participants: tuple[str, ...]  #: labels (without ``sub-``) in participants.tsv
    status: tuple[StatusRow, ...]
    summary: tuple[SummaryRow, ...]  #: one row per participant of the status table
    totals: SummaryRow
    validation: ValidationResult | None  #: None with ``validate=False``
    written: tuple[Path, ...]  #: the files created or changed by this run
    report: Path | None = None  #: the HTML report (None with ``report=False``)


@dataclass(frozen=True)
class SessionsInProgress:
    """The sessions whose lock participant-level jobs hold."""

    #: (subject, session) pairs found in the dataset, sorted
    sessions: tuple[tuple[str, str | None], ...]
    #: held locks of sessions not found in the dataset (a job that has not written yet)
    unnamed: tuple[Path, ...]

    @property
    def count(self) -> int:
        return len(self.sessions) + len(self.unnamed)


# --------------------------------------------------------------------------- pure


def name_locked_sessions(
    held: Iterable[Path],
    known: Iterable[tuple[str, str | None]],
    lock_file: Callable[[str, str | None], Path],
) -> SessionsInProgress:
    """Which of the ``known`` (subject, session) pairs the ``held`` lock files belong to.

    ``lock_file`` is :meth:`DatasetLayout.lock_file` (its name is a hash of the labels,
    so a lock is named by matching it with the sessions the dataset knows).
    """
    by_name = {lock_file(subject, session).name: (subject, session) for subject, session in known}
    paths = sorted(set(held))
    named = sorted(
        {by_name[path.name] for path in paths if path.name in by_name},
        key=lambda pair: (pair[0], pair[1] or ""),
    )
    return SessionsInProgress(
        sessions=tuple(named), unnamed=tuple(p for p in paths if p.name not in by_name)
    )


def in_progress_error(
    root: Path, progress: SessionsInProgress, shown: int = SHOWN_SESSIONS
) -> LockedError:
    """The refusal to start the group level while ``progress`` is not empty.

    Names up to ``shown`` sessions (``sub-X ses-Y``), then "and N more" (sessions not
    found in the dataset are among the N).

    >>> print(in_progress_error(Path("/ds"), SessionsInProgress((("01", "a"),), ())).message)
    participant-level jobs are still converting 1 session in /ds: sub-01 ses-a
    """
    names = [
        sub_ses_prefix(subject, session).replace("_", " ")
        for subject, session in progress.sessions[:shown]
    ]
    more = progress.count - len(names)
    if names and more:
        names[-1] += f" and {more} more"
    count = progress.count
    message = (
        f"participant-level jobs are still converting {count} "
        f"session{'' if count == 1 else 's'} in {root}"
    )
    if names:
        message += ": " + ", ".join(names)
    return LockedError(message, IN_PROGRESS_HINT)


def summarize(rows: Sequence[StatusRow]) -> tuple[tuple[SummaryRow, ...], SummaryRow]:
    """Per-participant stage counts of the status ``rows``, and their totals.

    ``failed`` counts the rows with an error and those whose run recorded no outcome
    (:func:`bidsport.status.outcome_missing`: killed, as no job runs at the group level).
    """
    by_subject: dict[str, list[StatusRow]] = {}
    for row in rows:
        by_subject.setdefault(row.participant_id, []).append(row)

    def count(label: str, group: Sequence[StatusRow]) -> SummaryRow:
        return SummaryRow(
            participant_id=label,
            sessions=len(group),
            imported=sum(r.imported for r in group),
            organized=sum(r.organized for r in group),
            converted=sum(r.converted for r in group),
            failed=sum(r.last_error is not None or outcome_missing(r) for r in group),
        )

    summary = tuple(count(label, by_subject[label]) for label in sorted(by_subject))
    return summary, count("all", rows)


def merge_description(
    existing: dict[str, Any] | None,
    *,
    name: str,
    bids_version: str,
    bidsport_version: str,
    dcm2niix_version: str | None,
) -> dict[str, Any]:
    """The content of dataset_description.json (``existing``: the current one, if any).

    Existing keys are kept; missing required keys are added; GeneratedBy gets the
    bidsport and dcm2niix entries first, followed by any other existing entries. An
    unknown dcm2niix version keeps the version already recorded.
    """
    description: dict[str, Any] = dict(existing or {})
    if not existing:
        description = {"Name": name, "BIDSVersion": bids_version, "DatasetType": "raw"}
    description.setdefault("Name", name)
    description.setdefault("BIDSVersion", bids_version)
    description.setdefault("DatasetType", "raw")
    others = _generators(description)
    old_dcm2niix = next((e for e in others if e.get("Name") == "dcm2niix"), {})
    dcm2niix: dict[str, Any] = {"Name": "dcm2niix"}
    version = dcm2niix_version or old_dcm2niix.get("Version")
    if version:
        dcm2niix["Version"] = version
    description["GeneratedBy"] = _generated_by(
        [_bidsport_generator(bidsport_version), dcm2niix], others
    )
    return description


def _generators(description: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries of a description's GeneratedBy (what is not an object is dropped)."""
    entries = description.get("GeneratedBy")
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _bidsport_generator(version: str) -> dict[str, Any]:
    return {"Name": "bidsport", "Version": version, "CodeURL": CODE_URL}


def _generated_by(ours: list[dict[str, Any]], others: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GeneratedBy: ``ours`` first, then the ``others`` of other names, in their order."""
    names = {e["Name"] for e in ours}
    return [*ours, *(e for e in others if e.get("Name") not in names)]


def derivative_description(
    existing: dict[str, Any] | None, *, bids_version: str, bidsport_version: str
) -> dict[str, Any]:
    """The dataset_description.json of ``derivatives/bidsport`` (the logs, run reports,
    HTML report and thumbnails), which BIDS requires of a derivative dataset: existing
    keys are kept, bidsport's GeneratedBy entry comes first.

    >>> derivative_description(None, bids_version="1.10.0", bidsport_version="1")["DatasetType"]
    'derivative'
    """
    description: dict[str, Any] = dict(existing or {})
    description.setdefault("Name", "bidsport curation records")
    description.setdefault("BIDSVersion", bids_version)
    description["DatasetType"] = "derivative"
    description["GeneratedBy"] = _generated_by(
        [_bidsport_generator(bidsport_version)], _generators(description)
    )
    return description


def _issue_order(issue: Issue) -> tuple[int, str, str, str, int, str]:
    return (
        0 if issue.severity == "error" else 1,
        issue.code,
        issue.location or "",
        issue.sub_code or "",
        issue.line if issue.line is not None else -1,
        issue.message or "",
    )


def validation_record(result: ValidationResult, dataset_dir: Path) -> dict[str, Any]:
    """The content of ``validation.json``: the validator's version and command, the
    counts, and every issue (sorted: errors first, then by code and location, so that
    the same findings give the same file).

    The command is the one to run from the dataset's folder: the validator by its name,
    the dataset as ``.`` (no path of this machine is kept).
    """
    command = [Path(arg).name if i == 0 else arg for i, arg in enumerate(result.command)]
    command = ["." if arg == str(dataset_dir) else arg for arg in command]
    issues = sorted((*result.errors, *result.warnings), key=_issue_order)
    return {
        "validator": {
            "name": VALIDATOR_SCRIPT,
            "version": result.version,
            "schema_version": result.schema_version,
            "command": command,
        },
        "counts": {"errors": len(result.errors), "warnings": len(result.warnings)},
        "issues": [{name: getattr(issue, name) for name in ISSUE_FIELDS} for issue in issues],
    }


def validation_from_record(data: Any, path: Path) -> ValidationResult:
    """The :class:`ValidationResult` a ``validation.json`` (:func:`validation_record`)
    holds; raises :class:`OutputError` naming ``path`` when it is not such a file."""
    try:
        validator = data["validator"]
        issues = [
            Issue(
                code=str(item["code"]),
                severity=str(item["severity"]),
                location=item.get("location"),
                sub_code=item.get("sub_code"),
                message=item.get("message"),
                rule=item.get("rule"),
                line=item.get("line"),
            )
            for item in data["issues"]
        ]
        command = tuple(str(arg) for arg in validator.get("command") or ())
        version, schema = validator.get("version"), validator.get("schema_version")
    except (KeyError, TypeError, AttributeError) as exc:
        raise OutputError(
            f"{path} is not a validation file of bidsport ({exc!r})",
            "delete it: the next group level that validates writes it again",
        ) from exc
    return ValidationResult(
        ran=True,
        command=command,
        errors=tuple(i for i in issues if i.severity == "error"),
        warnings=tuple(i for i in issues if i.severity != "error"),
        version=str(version) if version else None,
        schema_version=str(schema) if schema else None,
    )


def readme_text(name: str) -> str:
    """The README written when the dataset has none."""
    return (
        f"# {name}\n\n"
        "A BIDS dataset converted from scanner DICOM by bidsport (https://github.com/"
        "bidsport/bidsport) with dcm2niix.\n\n"
        "- `sourcedata/status.tsv`: curation status of every subject/session.\n"
        "- `sourcedata/`: the imported DICOM data and bidsport's tables.\n"
        "- `derivatives/bidsport/`: logs and the group report.\n\n"
        "Describe the study here: aims, participants, acquisition, and how to cite it.\n"
    )


# --------------------------------------------------------------------------- I/O


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(
            f"cannot read {path}: {exc}", f"fix {path.name} (it must be a JSON object)"
        ) from exc
    if not isinstance(data, dict):
        raise OutputError(f"{path} is not a JSON object", f"fix {path.name}")
    return data


def _write_json_if_changed(path: Path, data: Any, written: list[Path]) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    fileops.write_json(path, data)
    written.append(path)


def _participant_folders(layout: DatasetLayout) -> list[str]:
    """Labels of the ``sub-*`` folders of the dataset, sorted."""
    return sorted(
        p.name.removeprefix("sub-")
        for p in layout.root.glob("sub-*")
        if p.is_dir() and len(p.name) > len("sub-")
    )


def _write_participants(layout: DatasetLayout, labels: list[str], written: list[Path]) -> None:
    path = layout.participants_file
    columns = ["participant_id"]
    old_rows: dict[str, dict[str, str]] = {}
    if path.is_file():
        header = path.read_text(encoding="utf-8").split("\n", 1)[0].rstrip("\r").split("\t")
        if not header or header[0] != "participant_id":
            raise OutputError(
                f"{path} does not start with a participant_id column",
                "fix it, or delete it and run the group level again",
            )
        columns = header
        old_rows = {row["participant_id"]: row for row in fileops.read_tsv(path)}
    rows = [old_rows.get(f"sub-{label}", {"participant_id": f"sub-{label}"}) for label in labels]
    dropped = sorted(set(old_rows) - {f"sub-{label}" for label in labels})
    if dropped:
        log.warning("%s: dropped %s (no such folder in the dataset)", path, ", ".join(dropped))
    unchanged = path.is_file() and list(old_rows.values()) == rows
    if not unchanged:
        fileops.write_tsv(path, rows, columns)
        written.append(path)

    json_path = layout.participants_json_file
    sidecar = _read_json(json_path) or {}
    merged = {"participant_id": sidecar.get("participant_id") or PARTICIPANT_ID_DESCRIPTION}
    merged.update({k: v for k, v in sidecar.items() if k != "participant_id"})
    _write_json_if_changed(json_path, merged, written)


def held_session_locks(layout: DatasetLayout) -> list[Path]:
    """The session lock files of the dataset that another process holds, sorted.

    Each lock is taken and released at once, never waited for (:func:`uptodate.held_locks`).
    A lock that cannot be tested (not writable by this user, a file system without
    ``flock``) is logged and counted as free.
    """
    folder = layout.locks_dir
    try:
        held, untestable = uptodate.held_locks(str(folder))
    except OSError as exc:
        raise OutputError(f"cannot list {folder}: {exc.strerror or exc}") from exc
    for path, error in untestable:
        log.warning(
            "cannot tell whether a participant-level job holds %s: %s",
            path,
            error.strerror or error,
        )
    return [Path(path) for path in held]


def _known_sessions(layout: DatasetLayout) -> set[tuple[str, str | None]]:
    """Every session the status table would list (records, current table, folders)."""
    try:
        previous = read_status(layout)
    except OutputError:
        previous = []
    rows = build_status(layout, read_records(layout), previous)
    return {(row.participant_id, row.session_id) for row in rows}


def check_no_session_in_progress(layout: DatasetLayout) -> None:
    """Raise :class:`LockedError` when participant-level jobs hold session locks of the
    dataset, naming the sessions; write nothing.

    Only a job running now counts: a killed job's lock is free. A job that starts after
    this check is not seen.
    """
    held = held_session_locks(layout)
    if not held:
        return
    progress = name_locked_sessions(held, _known_sessions(layout), layout.lock_file)
    for path in progress.unnamed:
        log.debug("held lock of a session not yet in the dataset: %s", path)
    raise in_progress_error(layout.root, progress)


@contextlib.contextmanager
def _validator_cache(layout: DatasetLayout, work_dir: Path | None) -> Iterator[Path]:
    """Where the validator (Deno) keeps its caches: in the work dir when one is given (for
    the next run), else in a scratch folder of OUTPUT_DIR removed afterwards (Deno's own
    default, ~/.cache/deno, lies outside OUTPUT_DIR). Named as a participant run's scratch
    folder (``<host>-<pid>-...``), so that one left by a killed run is removed later."""
    if work_dir is not None:
        yield work_dir / "deno"
        return
    base = fileops.ensure_dir(layout.work_dir)
    path = Path(tempfile.mkdtemp(prefix=f"{os.uname().nodename}-{os.getpid()}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            base.rmdir()  # only when empty


def run_group(
    layout: DatasetLayout,
    *,
    dataset_name: str | None = None,
    dcm2niix_version: str | None,
    bidsport_version: str,
    manifest_pairs: Sequence[tuple[str, str | None]] = (),
    validate: bool = True,
    report: bool = True,
    n_procs: int = 1,
    work_dir: Path | None = None,
    thumbnail_pool: ThumbnailPool | None = None,
) -> GroupResult:
    """Write the dataset-level files, rebuild the status table and validate the dataset.

    The validator keeps its caches in ``work_dir`` (kept for the next run), else in a
    scratch folder under OUTPUT_DIR removed afterwards: nothing is written elsewhere.

    The validator's findings are saved in ``derivatives/bidsport/validation.json``
    (:func:`validation_record`; rewritten only when they change; kept as they are when
    the dataset is not validated). With ``report``, also write the HTML report
    (:mod:`bidsport.htmlreport`; its thumbnails are made in up to ``n_procs`` processes
    while the validator runs, in ``thumbnail_pool``'s when given: see
    :mod:`bidsport.reportworkers`; it is shut down once they are made), with the findings
    of the last validation.

    Idempotent: a second run with the same arguments changes no file. Raises
    :class:`UsageError` when the dataset folder does not exist, :class:`LockedError`
    (before writing anything) while participant-level jobs convert sessions of it
    (:func:`check_no_session_in_progress`), :class:`OutputError` when an existing
    dataset-level file cannot be read.
    """
    root = layout.root
    if not root.is_dir():
        raise UsageError(f"output dataset {root} does not exist", "run the participant level first")
    check_no_session_in_progress(layout)
    written: list[Path] = []
    name = dataset_name or root.resolve().name
    command = find_validator()

    description = merge_description(
        _read_json(layout.dataset_description_file),
        name=name,
        bids_version=(validator_bids_version(command) if command else None) or DEFAULT_BIDS_VERSION,
        bidsport_version=bidsport_version,
        dcm2niix_version=dcm2niix_version,
    )
    _write_json_if_changed(layout.dataset_description_file, description, written)
    derivative_file = layout.derivatives_dir / "dataset_description.json"
    _write_json_if_changed(
        derivative_file,
        derivative_description(
            _read_json(derivative_file),
            bids_version=str(description.get("BIDSVersion") or DEFAULT_BIDS_VERSION),
            bidsport_version=bidsport_version,
        ),
        written,
    )

    labels = _participant_folders(layout)
    _write_participants(layout, labels, written)

    if not any((root / readme).exists() for readme in README_NAMES):
        readme = layout.readme_file
        fileops.write_text(readme, readme_text(str(description.get("Name") or name)))
        written.append(readme)

    status_before = layout.status_file.read_bytes() if layout.status_file.is_file() else None
    status = regenerate_status(layout, manifest_pairs)
    if layout.status_file.read_bytes() != status_before:
        written.append(layout.status_file)
    summary, totals = summarize(status)

    validation_file = layout.derivatives_dir / VALIDATION_FILE_NAME

    def write_report_page(findings: ValidationResult | None) -> Path | None:
        """The page, with ``findings``; else those of the last validation (saved)."""
        if prepared is None:
            return None
        if findings is None or not findings.ran:
            findings = _saved_validation(validation_file)
        outcome = write_page(
            layout,
            prepared,
            title=str(description.get("Name") or name),
            generator=f"bidsport {bidsport_version}",
            validation=findings,
            validation_file=validation_file if findings is not None else None,
        )
        written.extend(outcome.written)
        return outcome.report_file

    # the validator reads the dataset while the report's thumbnails are made: they are in
    # derivatives/, which the validator (--prune) does not read; the page shows the
    # findings, so it is written once the validator is done (one that cannot be started
    # is said by result(): the page is written first, with the last findings saved)
    with contextlib.ExitStack() as stack:
        pending = None
        if validate:
            deno_dir = stack.enter_context(_validator_cache(layout, work_dir))
            pending = stack.enter_context(start_validator(root, command=command, deno_dir=deno_dir))
        prepared = prepare_report(layout, status, n_procs, thumbnail_pool) if report else None
        if thumbnail_pool is not None:  # done: its workers end while the validator runs
            thumbnail_pool.executor.shutdown(wait=False)
        try:
            validation = pending.result() if pending is not None else None
        except ExternalToolError:
            write_report_page(None)
            raise
    shown = None
    if validation is not None and validation.ran:
        record = validation_record(validation, root)
        _write_json_if_changed(validation_file, record, written)
        shown = validation_from_record(record, validation_file)
    report_file = write_report_page(shown)
    for path in written:
        log.info("wrote %s", path)
    return GroupResult(
        participants=tuple(labels),
        status=tuple(status),
        summary=summary,
        totals=totals,
        validation=validation,
        written=tuple(written),
        report=report_file,
    )


def _saved_validation(path: Path) -> ValidationResult | None:
    """The findings ``path`` (``validation.json``) holds; None when there is none or it
    cannot be read (logged)."""
    try:
        data = _read_json(path)
        return validation_from_record(data, path) if data is not None else None
    except OutputError as exc:
        log.warning("ignoring %s: %s", path, exc.message)
        return None


# --------------------------------------------------------------------------- report


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [list(map(str, header)), *[list(map(str, r)) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in cells
    ]


def _issue_lines(kind: str, issues: Sequence[Issue]) -> list[str]:
    """One line per issue code (first occurrence, and how many more), at most SHOWN_CODES."""
    by_code: dict[str, list[Issue]] = {}
    for issue in issues:
        by_code.setdefault(issue.code, []).append(issue)
    lines = []
    for group in list(by_code.values())[:SHOWN_CODES]:
        more = f" (+{len(group) - 1} more)" if len(group) > 1 else ""
        lines.append(f"  {kind}: {group[0].describe()}{more}")
    if len(by_code) > SHOWN_CODES:
        lines.append(f"  ... and {len(by_code) - SHOWN_CODES} more {kind} codes")
    return lines


def format_summary(result: GroupResult) -> str:
    """A plain-text report: sessions per stage and participant, the validation, the report."""
    header = ("participant", "sessions", "imported", "organized", "converted", "failed")
    rows = [
        (f"sub-{r.participant_id}", r.sessions, r.imported, r.organized, r.converted, r.failed)
        for r in result.summary
    ]
    t = result.totals
    rows.append(("total", t.sessions, t.imported, t.organized, t.converted, t.failed))
    lines = _table(header, rows)
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    validation = result.validation
    if validation is None:
        lines.append("BIDS validation: skipped")
    elif not validation.ran:
        lines.append("BIDS validation: not run (bids-validator-deno is not installed)")
    else:
        lines.append(
            f"BIDS validator {validation.version or '?'}: "
            f"{counted(len(validation.errors), 'error')}, "
            f"{counted(len(validation.warnings), 'warning')}"
        )
        lines += _issue_lines("error", validation.errors)
        lines += _issue_lines("warning", validation.warnings)
    if result.report is not None:
        lines.append(f"report: {result.report}")
    return "\n".join(lines)
