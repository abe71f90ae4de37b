"""The participant level: import → organize → classify → convert, one session at a time.

Each session is processed under its own lock and writes only its own subtree, its own
tables and its own status record, so many participant-level jobs can run at once on one
output dataset (SLURM arrays). A failure is recorded and the run goes on with the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from bidsport import fileops, uptodate
from bidsport.archive import not_imported
from bidsport.errors import (
    AnonymizationError,
    BidsportError,
    ConversionError,
    DicomReadError,
    LockedError,
    OutputError,
)
from bidsport.ingest import (
    apply_archive_policy,
    assign_packets,
    discover_packets,
    group_by_session,
    import_packet,
)
from bidsport.layout import DatasetLayout, nifti_stem, sub_ses_prefix
from bidsport.options import RunOptions
from bidsport.records import (
    Assignment,
    Classification,
    ConvertedImage,
    FileHeader,
    Packet,
    PlannedSeries,
    Problem,
    Series,
    SessionResult,
)
from bidsport.status import (
    StatusRow,
    TableUpdates,
    now_iso,
    read_status,
    read_status_record,
    record_session,
    remove_stale_temps,
)

if TYPE_CHECKING:  # the stage modules (and pydicom, dicognito) load when a session has work
    from concurrent.futures import Executor, ProcessPoolExecutor

    from bidsport import privacy
    from bidsport.convert import SeriesConversion
    from bidsport.export import Deidentify
    from bidsport.naming import RunCandidate
    from bidsport.organize import FileDecision
    from bidsport.phi import Identifiers
    from bidsport.rules import Rule

log = logging.getLogger(__name__)

SERIES_COLUMNS = [
    "series_id",
    "series_number",
    "series_description",
    "protocol_name",
    "n_files",
    "n_volumes",
    "acq_time",
    "datatype",
    "suffix",
    "entities",
    "run",
    "provenance",
    "outputs",
    "excluded",
    "review",
    "rule",
    "evidence",
]
FILES_COLUMNS = ["file", "flat_name", "series_uid", "excluded"]

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """Packets assigned to sessions, after selection by label."""

    assignments: tuple[Assignment, ...]
    problems: tuple[Problem, ...]
    n_packets: int


def plan_sessions(dicom_dir: Path, opts: RunOptions) -> Plan:
    """Find the packets of the inbox and assign them to subjects/sessions."""
    packets, problems = discover_packets(dicom_dir, opts.pattern)
    assignments, assign_problems = assign_packets(
        packets, opts.nameformat, opts.mapping, merge_sessions=True
    )
    selected = [
        a
        for a in assignments
        if (not opts.participant_labels or a.subject in opts.participant_labels)
        and (not opts.session_labels or (a.session or "") in opts.session_labels)
    ]
    for option, labels, known, found, other, others in (
        (
            "--participant-label",
            opts.participant_labels,
            {a.subject for a in assignments},
            {a.subject for a in selected},
            "--session-label",
            opts.session_labels,
        ),
        (
            "--session-label",
            opts.session_labels,
            {a.session or "" for a in assignments},
            {a.session or "" for a in selected},
            "--participant-label",
            opts.participant_labels,
        ),
    ):
        if missing := [label for label in labels if label not in known]:
            log.warning(
                "%s %s: no packet of the inbox %s (labels are case-sensitive; --dry-run "
                "lists the inbox's sessions)",
                option,
                " ".join(missing),
                "matched it" if len(missing) == 1 else "matched these",
            )
        if unmatched := [label for label in labels if label in known and label not in found]:
            log.warning(
                "%s %s: in the inbox, but not with %s %s",
                option,
                " ".join(unmatched),
                other,
                " ".join(others),
            )
    if opts.mapping is not None:
        _check_mapping(opts.mapping, packets, assignments)
    return Plan(tuple(selected), tuple(problems) + tuple(assign_problems), len(packets))


def _few(names: Sequence[str], limit: int = 10) -> str:
    """``names`` joined, the first ``limit`` of them (then how many more)."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_mapping(
    mapping: Mapping[str, object], packets: Sequence[Packet], assignments: Sequence[Assignment]
) -> None:
    """Warn of the --mapping rows that name no packet of the inbox (a typo?), and of the
    packets it does not map, labelled from their names instead (which may identify)."""
    names = {p.name for p in packets}
    if unused := sorted(set(mapping) - names):
        log.warning("--mapping: no packet of the inbox is named %s", _few(unused))
    if unmapped := [a.packet.name for a in assignments if a.source != "mapping"]:
        log.warning(
            "--mapping does not name %d packet(s), labelled from their names instead "
            "(--nameformat, or the whole name): %s",
            len(unmapped),
            _few(unmapped),
        )


# --------------------------------------------------------------------------- helpers


def _filtered_out(cls: Classification, opts: RunOptions) -> str | None:
    """Why a classified series is not converted because of the user's filters, or None."""
    return _filter_reason(cls.datatype, cls.provenance, opts)


def _filter_reason(datatype: str | None, provenance: str | None, opts: RunOptions) -> str | None:
    if opts.include_datatypes is not None and datatype not in opts.include_datatypes:
        return f"datatype {datatype} not in --include-datatype"
    if datatype in opts.exclude_datatypes:
        return f"datatype {datatype} in --exclude-datatype"
    if opts.include_provenances is not None and provenance not in opts.include_provenances:
        return f"provenance {provenance} not in --include-provenance"
    if provenance in opts.exclude_provenances:
        return f"provenance {provenance} in --exclude-provenance"
    return None


#: what dcm2niix says of a series whose slices are missing or unevenly spaced (its image
#: has a wrong geometry): the series is flagged for review
_GEOMETRY_WARNING = re.compile(r"missing|interslice distance varies|not equidistant", re.I)

#: how the series table says a series was left out by a filter (:func:`_filter_reason`)
_FILTERED = re.compile(
    r"(?:datatype|provenance) \S+ (?:not )?in --(?:in|ex)clude-(?:datatype|provenance)"
)


def _newly_selected(rows: Sequence[Mapping[str, str]], opts: RunOptions) -> bool:
    """Whether a series that the filters of the run that wrote these rows of a series
    table left out is selected by ``opts``' (the user converted the anatomy first, say,
    and now asks for everything): the session is then not done."""
    cell = fileops.tsv_cell
    return any(
        _FILTERED.match(cell(row, "excluded") or "")
        and _filter_reason(cell(row, "datatype"), cell(row, "provenance"), opts) is None
        for row in rows
    )


@dataclass(frozen=True)
class EarlierName:
    """What an earlier run wrote for a series (its row of the series table)."""

    datatype: str
    suffix: str
    entities: Mapping[str, str]  #: without "run", in the order they were set
    run: str  #: "" when the name has no run entity
    outputs: tuple[str, ...]  #: its images, relative to the session folder
    #: the row as it was read (carried into the new table when this run does not see the
    #: series); None for a series only the journal of a killed run names
    row: Mapping[str, str] | None = None

    @property
    def named(self) -> bool:
        """Whether the row says the whole name (a table of another version may not)."""
        return bool(self.row is not None and self.datatype and self.suffix)

    @property
    def group_key(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        """As :attr:`bidsport.naming.RunCandidate.group_key`."""
        return (self.datatype, self.suffix, tuple(sorted(self.entities.items())))


def _cell(row: Mapping[str, str], column: str) -> str:
    return fileops.tsv_cell(row, column) or ""


#: the series table's columns an earlier name is read from
_NAME_COLUMNS = ("series_id", "datatype", "suffix", "entities", "run", "outputs")


def earlier_names(series_table: Path, journal: Path | None = None) -> dict[str, EarlierName]:
    """What earlier runs wrote, by public series id: the series table's rows with outputs
    (for the names, kept so nothing gets renamed, and to find the images this run does not
    write again), and the ``journal`` of a run killed before it wrote its table (outputs
    only: see :data:`OUTPUTS_JOURNAL`)."""
    rows = fileops.read_tsv(series_table) if series_table.is_file() else []
    names = _names_in(rows)
    if journal is not None and journal.is_file():
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            series_id, _, rel = line.partition("\t")
            if not (series_id and rel):
                continue
            known = names.get(series_id)
            if known is None:
                names[series_id] = EarlierName("", "", {}, "", (rel,))
            elif rel not in known.outputs:
                names[series_id] = dataclasses.replace(known, outputs=(*known.outputs, rel))
    return names


def _names_in(rows: Sequence[Mapping[str, str]]) -> dict[str, EarlierName]:
    """The names of :func:`earlier_names` that rows of a series table give."""
    names: dict[str, EarlierName] = {}
    whole = not rows or all(column in rows[0] for column in _NAME_COLUMNS)
    for row in rows:
        outputs = tuple(o for o in _cell(row, "outputs").split(";") if o)
        if not outputs or not row.get("series_id"):
            continue
        entities = {}
        for part in _cell(row, "entities").split(";"):
            key, _, value = part.partition("-")
            if key and value:
                entities[key] = value
        names[row["series_id"]] = EarlierName(
            _cell(row, "datatype") if whole else "",
            _cell(row, "suffix") if whole else "",
            entities,
            _cell(row, "run"),
            outputs,
            row,
        )
    return names


def keep_earlier_name(p: PlannedSeries, earlier: EarlierName | None) -> PlannedSeries:
    """``p`` named as an earlier run named it (``--overwrite skip``: a session redone for
    a new packet renames nothing it converted before), with the reason in its evidence.
    """
    cls = p.cls
    if earlier is None or not earlier.named or p.skip is not None:
        return p
    if (cls.datatype, cls.suffix, dict(cls.entities)) == (
        earlier.datatype,
        earlier.suffix,
        dict(earlier.entities),
    ):
        return p

    def name(datatype: str | None, suffix: str | None, entities: Mapping[str, str]) -> str:
        return f"{datatype}/" + "_".join([*(f"{k}-{v}" for k, v in entities.items()), f"{suffix}"])

    reason = (
        f"named {name(earlier.datatype, earlier.suffix, earlier.entities)} as an earlier run "
        f"named it, not {name(cls.datatype, cls.suffix, cls.entities)}: with --overwrite "
        "skip a re-run renames nothing (--overwrite overwrite or clean names it anew)"
    )
    kept = dataclasses.replace(
        cls,
        datatype=earlier.datatype,
        suffix=earlier.suffix,
        entities=dict(earlier.entities),
        evidence=(*cls.evidence, reason),
    )
    return dataclasses.replace(p, cls=kept)


def kept_runs(
    candidates: Sequence[RunCandidate], earlier: Mapping[str, EarlierName]
) -> dict[str, str]:
    """The run labels of an earlier run to keep: those of series named as they were."""
    return {
        c.series_id: name.run
        for c in candidates
        if (name := earlier.get(c.series_id)) is not None
        and name.named
        and name.group_key == c.group_key
    }


_COMPANIONS = (".json", ".bval", ".bvec")


def remove_outputs(
    session_dir: Path, prefix: str, relpaths: Iterable[str], written: Collection[str]
) -> tuple[list[str], list[str]]:
    """Remove these images of a session with their sidecars (``.json``, ``.bval``,
    ``.bvec``); (removed, not removed with the reason), both relative.

    Only what bidsport writes is removed: a NIfTI image, or a folder of DICOM copies,
    named ``<prefix>_...`` (``sub-01_ses-1``), below ``session_dir``; a link is removed,
    never followed. Nothing this run wrote (``written``, relative paths) is removed, nor
    a sidecar of an image it wrote (the same name, another format), nor a folder holding
    something it wrote. A datatype folder left empty is removed.
    """
    removed, kept = [], []
    written_stems = {nifti_stem(w) or w for w in written}
    for rel in relpaths:
        path = PurePosixPath(rel)
        image = session_dir / path
        stem = nifti_stem(path.name)
        if (
            path.is_absolute()
            or ".." in path.parts
            or not path.name.startswith(f"{prefix}_")
            or (stem is None and (not image.is_dir() or image.is_symlink()))
        ):
            kept.append(f"{rel}: not an image bidsport writes")
            continue
        if rel in written or any(w.startswith(f"{rel}/") for w in written):
            continue
        targets = [image]
        if stem is not None and str(path.with_name(stem)) not in written_stems:
            targets += [image.with_name(stem + x) for x in _COMPANIONS]
        found = [t for t in targets if t.is_symlink() or t.exists()]
        try:
            for target in found:
                fileops.remove_tree(target, session_dir)
        except OSError as exc:
            kept.append(f"{rel}: {exc.strerror or exc}")
            continue
        except OutputError as exc:
            kept.append(f"{rel}: {exc.message}")
            continue
        if found:
            removed.append(rel)
    for folder in {(session_dir / rel).parent for rel in removed} - {session_dir}:
        with contextlib.suppress(OSError):  # a datatype folder left empty (a --layout change)
            folder.rmdir()
    return removed, kept


@contextlib.contextmanager
def _work_dir(opts: RunOptions, layout: DatasetLayout) -> Iterator[Path]:
    """The scratch folder: the user's, or a temporary one removed afterwards.

    Without ``--anonymize`` the temporary folder lies inside OUTPUT_DIR (nothing is
    written elsewhere); with it, outside (identifiable material never enters OUTPUT_DIR).
    """
    if opts.work_dir is not None:
        path = _shared_scratch(opts.work_dir, SCRATCH_TAG)
    elif opts.anonymize:
        path = _shared_scratch(Path(tempfile.gettempdir()), SCRATCH_TAG)
    else:
        path = _shared_scratch(layout.work_dir)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if opts.work_dir is None and not opts.anonymize:
            with contextlib.suppress(OSError):
                layout.work_dir.rmdir()  # only when empty: other runs may be working


#: how the scratch folders of runs begin in a folder that holds more than them (the
#: user's --work-dir, or the system's temporary folder with --anonymize)
SCRATCH_TAG = "bidsport-"


def _shared_scratch(base: Path, tag: str = "", attempts: int = 100) -> Path:
    """A new scratch folder in ``base``, named ``<tag><host>-<pid>-<random>``: folders
    that killed runs of this machine left there are removed (:func:`_remove_dead_work_dirs`).

    Another run may remove ``base`` between its creation here and the creation of the
    scratch folder in it (that run ends, and sees it empty): it is made again (up to
    ``attempts`` times) instead of failing.
    """
    prefix = f"{tag}{os.uname().nodename}-{os.getpid()}-"
    attempt = 0
    while True:
        fileops.ensure_dir(base)
        try:
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
            break
        except FileNotFoundError as exc:
            attempt += 1
            if attempt >= attempts:
                raise OutputError(f"cannot make a scratch folder in {base}: {exc}") from exc
    _remove_dead_work_dirs(base, tag)  # after ours exists: ``base`` is not empty
    return path


def _remove_dead_work_dirs(base: Path, tag: str = "") -> None:
    """Remove scratch folders that runs killed on this machine left behind.

    They are named ``<tag><host>-<pid>-<random>``; folders of other hosts (a cluster
    sharing the dataset) are left alone, since their runs cannot be checked from here,
    and so is anything else in ``base``.
    """
    host = os.uname().nodename
    for entry in base.iterdir():
        if not entry.name.startswith(tag) or entry.is_symlink() or not entry.is_dir():
            continue
        name = entry.name[len(tag) :]
        name_host, _, pid = name.rpartition("-")[0].rpartition("-")
        if name_host == host and pid.isdigit() and not fileops.process_alive(int(pid)):
            log.info("removing the scratch folder of a killed run: %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


# --------------------------------------------------------------------------- one session


def _classify_all(series_list: Sequence[Series], opts: RunOptions) -> list[PlannedSeries]:
    from bidsport.classify import classify_all

    planned = []
    classes = classify_all(series_list, opts.rules, keep_derived=opts.keep_derived)
    for series, cls in zip(series_list, classes, strict=True):
        skip = cls.excluded or _filtered_out(cls, opts)
        if skip is None and (cls.datatype is None or cls.suffix is None):
            skip = "no BIDS datatype/suffix"
        planned.append(PlannedSeries(series, cls, skip))
    return planned


def classify_session(
    headers: Sequence[FileHeader], raw_root: Path, opts: RunOptions
) -> tuple[list[FileDecision], list[PlannedSeries]]:
    """Decide which files are used, group them into series and classify every series.

    Series made of excluded files (derived images, ...) are classified too, so the series
    table says what they were; they carry the file exclusion as the reason they are skipped.
    A series of derived images is kept when a user rule names it (datatype and suffix: the
    user wants it, as ``--keep-derived`` would for every derived series), or when its
    classification says it is the scanner's own reconstruction, raw data in BIDS (an
    MP2RAGE UNIT1, a field map in Hz), whatever its ImageType says.
    """
    from bidsport.index import group_series
    from bidsport.organize import decide_files

    decisions = decide_files(
        headers, raw_root, keep_derived=opts.keep_derived, skip_checks=opts.skip_dicom_check
    )
    excluded = {d.source: d.reason for d in decisions if d.reason}
    image_headers = [h for h in headers if h.has_pixel_data and h.series_uid]
    classified = _classify_all(group_series(image_headers), opts)
    named = {
        uid
        for p in classified
        if (uid := p.series.header.series_uid) is not None
        and (p.cls.rule or p.cls.provenance == "raw")
        and p.cls.datatype
        and p.cls.suffix
        and p.skip is None
        and all((excluded.get(f) or "").startswith(_DERIVED_REASONS) for f in p.series.files)
    }
    if named:
        decisions = decide_files(
            headers,
            raw_root,
            keep_derived=opts.keep_derived,
            skip_checks=opts.skip_dicom_check,
            keep_derived_series=named,
        )
        excluded = {d.source: d.reason for d in decisions if d.reason}
    planned = []
    for p in classified:
        kept = tuple(f for f in p.series.files if f not in excluded)
        if not kept:
            reasons = sorted({excluded[f] or "" for f in p.series.files})
            reason = reasons[0]
            if reason.startswith(_DERIVED_REASONS):
                reason += "; --keep-derived, or a rule that names the series, keeps it"
            p = dataclasses.replace(p, skip=p.skip or reason)
        elif len(kept) < p.series.n_files:
            p = dataclasses.replace(p, series=dataclasses.replace(p.series, files=kept))
        if kept and p.series.header.series_uid in named:
            why = (
                f"kept although derived: rule {p.cls.rule!r} names it"
                if p.cls.rule
                else "kept although its files are derived: its classification is raw data"
            )
            p = dataclasses.replace(
                p, cls=dataclasses.replace(p.cls, evidence=(*p.cls.evidence, why))
            )
        planned.append(p)
    return decisions, planned


#: the file exclusions (:func:`bidsport.index.file_exclusion`) that ``--keep-derived`` lifts
_DERIVED_REASONS = ("derived image", "secondary capture")


def several_studies_note(planned: Sequence[PlannedSeries], where: str) -> Problem | None:
    """A note when a session's series come from several DICOM studies (pure).

    That is legitimate (an exam the scanner split in two), or the sign of packets that
    hold two people or two visits, which then end up in one subject's folder: the note
    says how many studies and, when they differ, which scanners (make and model: no
    identifiers), so that a curator can tell.
    """
    studies = {p.series.header.study_uid for p in planned if p.series.header.study_uid}
    if len(studies) < 2:
        return None
    scanners = sorted(
        {
            " ".join(part for part in (h.manufacturer, h.model) if part)
            for h in (p.series.header for p in planned)
        }
        - {""}
    )
    makes = f" from {len(scanners)} scanners ({', '.join(scanners)})" if len(scanners) > 1 else ""
    return Problem(
        where,
        f"the session's series come from {len(studies)} DICOM studies{makes}: when they are "
        "different people or visits, give their packets their own labels (--nameformat, "
        "--mapping); fieldmaps correct images of their own study only",
        "classify",
    )


@dataclass(frozen=True)
class DoneSession:
    """A session found converted by :func:`session_done`: its status record, and the
    forms its images were written in (:func:`output_form`)."""

    record: StatusRow
    forms: frozenset[tuple[str, str]]

    def change_note(self, opts: RunOptions) -> str | None:
        """What a run with ``opts`` is told when it skips this session although it asks
        for another ``--output-format`` or ``--layout`` than its images were written in
        (``--overwrite skip`` keeps what is done; the user may have forgotten)."""
        wanted = (opts.output_format, opts.layout)
        if not self.forms or self.forms == {wanted}:
            return None
        was = " and ".join(f"{fmt} in the {lay} layout" for fmt, lay in sorted(self.forms))
        return (
            f"converted earlier as {was}, not as this run's {wanted[0]} in the {wanted[1]} "
            "layout: kept as it is (--overwrite skip); --overwrite overwrite converts it "
            "again, and replaces its images"
        )


def output_form(rel: str) -> tuple[str, str]:
    """The ``--output-format`` and ``--layout`` that wrote an image named ``rel`` (relative
    to its session folder, as the series table lists it).

    >>> output_form("anat/sub-1_T1w.nii.gz"), output_form("sub-1_T1w.nii")
    (('nii.gz', 'bids'), ('nii', 'flat'))
    >>> output_form("anat/sub-1_T1w")  # a folder of DICOM files
    ('dcm', 'bids')
    """
    fmt = "nii.gz" if rel.endswith(".nii.gz") else "nii" if rel.endswith(".nii") else "dcm"
    return fmt, "bids" if "/" in rel else "flat"


def session_done(
    layout: DatasetLayout,
    subject: str,
    session: str | None,
    packets: Sequence[str],
    opts: RunOptions | None = None,
) -> DoneSession | None:
    """The session's record when it was converted without error from these packets (as
    the record names them: :func:`recorded_names`) and its images are all on disk; None
    when it must be converted (again): a packet arrived since (e.g. the rest of a split
    series), images were deleted, or a series that earlier filters left out is selected
    by those of ``opts`` (:func:`_newly_selected`)."""
    record = read_status_record(layout, subject, session)
    if not (record and record.converted and not record.last_error):
        return None
    if not set(packets) <= set((record.packet or "").split(";")):
        return None
    try:  # (a table gone too: not done)
        rows = fileops.read_tsv(layout.series_table(subject, session))
    except OSError:
        return None
    if opts is not None and _newly_selected(rows, opts):
        return None
    outputs = [rel for name in _names_in(rows).values() for rel in name.outputs]
    session_dir = layout.session_dir(subject, session)
    if not all(os.path.lexists(session_dir / rel) for rel in outputs):
        return None
    return DoneSession(record, frozenset(output_form(rel) for rel in outputs))


def recorded_names(packets: Sequence[str], anon: privacy.Anonymization | None) -> list[str]:
    """How the status record names these packets: as they are, or with --anonymize by
    their pseudonyms (:func:`bidsport.privacy.packet_scrubber`)."""
    if anon is None:
        return list(packets)
    from bidsport.anonymize.keys import packet_pseudonym

    return [packet_pseudonym(anon.key, name) for name in packets]


#: the last error of a session whose run has begun and not yet recorded its outcome
UNFINISHED = "unfinished: a run began this session at {when} and recorded no outcome"


def _record_unfinished(
    layout: DatasetLayout,
    subject: str,
    session: str | None,
    packets: str | None,
    table: TableUpdates,
) -> None:
    """Before a session is (re)done, record it as not converted, and unfinished.

    The outputs are about to be written, replaced or removed (``--overwrite clean``): a
    run killed from here on must not leave a record that says the session is done, which
    later runs would trust and skip, nor no record, which the group level would show as
    in progress for ever. A session without a record gets one naming ``packets``; with
    ``packets`` None (``--anonymize``: its label may still be refused, and is written
    nowhere until accepted) it is left without. An existing record keeps its packet
    names. The run's end replaces this record with its outcome. ``table`` writes the
    row of ``status.tsv`` (:func:`bidsport.status.record_session`).
    """
    old = read_status_record(layout, subject, session)
    now = now_iso()
    if old is None:
        if packets is not None:
            record_session(
                layout,
                StatusRow(
                    subject, session, packets, False, False, False, UNFINISHED.format(when=now), now
                ),
                table=table,
            )
        return
    record_session(
        layout,
        dataclasses.replace(
            old,
            organized=False,
            converted=False,
            last_error=UNFINISHED.format(when=now),
            updated=now,
        ),
        table=table,
    )


def _clean_session(layout: DatasetLayout, subject: str, session: str | None) -> None:
    for path in (layout.session_dir(subject, session), layout.dicom_dir(subject, session)):
        if path.exists():
            fileops.remove_tree(path, layout.root)
    for table in (
        layout.series_table(subject, session),
        layout.files_table(subject, session),
        layout.index_cache(subject, session),
        layout.tables_dir(subject, session) / OUTPUTS_JOURNAL,
    ):
        table.unlink(missing_ok=True)


@dataclass
class _SessionState:
    """What a session run has done so far (mutable, private to one session run)."""

    stages: dict[str, bool] = field(
        default_factory=lambda: {"imported": False, "organized": False, "converted": False}
    )
    timings: dict[str, float] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    images: list[ConvertedImage] = field(default_factory=list)
    #: with --anonymize: how outputs are de-identified, and a function that removes the
    #: source identifiers (and original UIDs) from any text written
    deidentify: Deidentify | None = None
    identifiers: Identifiers | None = None  #: the source identifiers (scrubbed from sidecars)
    #: the same, still being read in a worker process (see :func:`_read_identifiers`):
    #: a function that waits for them
    pending_identifiers: Callable[[], Identifiers] | None = None
    scrub: Callable[[str], str] = field(default=str)
    #: with --anonymize: a function that hides the path below its packet of a file named
    #: in a problem's ``where`` or a table (:func:`bidsport.privacy.path_hider`)
    hide_path: Callable[[str], str] = field(default=str)
    classified: bool = False  #: the session's series were classified
    rules: set[str] = field(default_factory=set)  #: the user rules that decided a series

    def source_identifiers(self) -> Identifiers | None:
        """:attr:`identifiers`, once the worker reading them is done."""
        if self.pending_identifiers is not None:
            self.identifiers = self.pending_identifiers()
            self.pending_identifiers = None
        return self.identifiers

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    def result(self, subject: str, session: str | None, error: str | None = None) -> SessionResult:
        return SessionResult(
            subject,
            session,
            self.stages["imported"],
            self.stages["organized"],
            self.stages["converted"],
            images=tuple(self.images),
            problems=tuple(
                dataclasses.replace(
                    p, where=self.scrub(self.hide_path(p.where)), reason=self.scrub(p.reason)
                )
                for p in self.problems
            ),
            error=self.scrub(error) if error else None,
            timings=tuple(self.timings.items()),
            classified=self.classified,
            rules=tuple(sorted(self.rules)),
        )


def failure_summary(failed: Sequence[Problem]) -> str | None:
    """The session's error from its fatal problems (None when there are none).

    >>> failure_summary([Problem("1.2", "dcm2niix failed", "convert")] * 2)
    '2 series failed: dcm2niix failed'
    >>> failure_summary([Problem("S3", "cannot read folder 'S3'", "import", fatal=True)])
    "1 fatal problem: cannot read folder 'S3'"
    """
    if not failed:
        return None
    n = len(failed)
    if all(p.stage == "convert" for p in failed):
        return f"{n} series failed: {failed[0].reason}"
    return f"{n} fatal problem{'s' if n > 1 else ''}: {failed[0].reason}"


def skipped_result(subject: str, session: str | None, notes: Sequence[str] = ()) -> SessionResult:
    """The result of a session found already converted (``--overwrite skip``), with
    ``notes`` for the user (:meth:`DoneSession.change_note`)."""
    problems = tuple(Problem(sub_ses_prefix(subject, session), n, "convert") for n in notes)
    return SessionResult(subject, session, True, True, True, skipped=True, problems=problems)


def process_session(
    assignments: Sequence[Assignment],
    layout: DatasetLayout,
    opts: RunOptions,
    work_root: Path,
    table: TableUpdates,
    progress: Progress | None = None,
    anon: privacy.Anonymization | None = None,
    shared: RunShared | None = None,
) -> SessionResult:
    """Import, organize, classify and convert one session; never raises BidsportError.

    ``assignments`` are the packets of one subject/session: usually one, several when a
    session was sent in parts (:func:`bidsport.ingest.group_by_session`). ``table``
    writes the session's rows of ``status.tsv`` with the run's other sessions'.
    """
    sub, ses = assignments[0].subject, assignments[0].session
    label = sub_ses_prefix(sub, ses)
    state = _SessionState()
    packets = [a.packet.name for a in assignments]
    if anon is not None:  # packet names may be the patient's: never written as they are
        from bidsport import privacy

        state.scrub = privacy.packet_scrubber(anon, packets)
        state.hide_path = privacy.path_hider(anon, packets)

    def record(error: str | None) -> None:
        record_session(
            layout,
            StatusRow(
                participant_id=sub,
                session_id=ses,
                packet=";".join(state.scrub(name) for name in packets),
                imported=state.stages["imported"],
                organized=state.stages["organized"],
                converted=state.stages["converted"],
                last_error=error,
                updated=now_iso(),
            ),
            table=table,
        )

    try:
        with fileops.file_lock(layout.lock_file(sub, ses), blocking=False, what=label):
            done = (
                session_done(layout, sub, ses, recorded_names(packets, anon), opts)
                if opts.overwrite == "skip"
                else None
            )
            if done is not None:
                log.info(uptodate.SKIPPED, label)
                table.put(done.record)  # a run killed after the record: heal the table
                note = done.change_note(opts)
                return skipped_result(sub, ses, () if note is None else (note,))
            for folder in (
                layout.session_dir(sub, ses),
                layout.dicom_dir(sub, ses),
                layout.tables_dir(sub, ses),
                layout.raw_dir(sub, ses),
            ):
                fileops.remove_stale_temps(folder)
            remove_stale_temps(layout, sub, ses)  # of the status record
            _record_unfinished(layout, sub, ses, ";".join(packets) if anon is None else None, table)
            if opts.overwrite == "clean":
                _clean_session(layout, sub, ses)
            # counted in flight once it has work (not while skipped, or refused for a lock)
            with shared.session() if shared is not None else contextlib.nullcontext():
                _run_session(
                    assignments, layout, opts, work_root / label, state, progress, anon, shared
                )
            failed = [p for p in state.problems if p.fatal]
            error = failure_summary(failed)
            with state.timed("status"):
                record(error)
            left = [p.where for p in state.problems if not_imported(p)]
            if not failed and opts.archive in ("move", "delete") and left:
                # removing the packet would lose what was not imported of it
                state.problems.append(
                    Problem(
                        ", ".join(a.packet.name for a in assignments),
                        f"not {'moved' if opts.archive == 'move' else 'deleted'} "
                        f"(--archive {opts.archive}): files of it were not imported "
                        f"({_few(left)}: see the notes), so the inbox keeps it",
                        "import",
                    )
                )
            elif not failed and opts.archive != "leave":
                for assignment in assignments:
                    did = apply_archive_policy(
                        assignment.packet, opts.archive, layout.sourcedata_dir / "packets"
                    )
                    log.info("%s: packet %s: %s", label, assignment.packet.name, did)
            return state.result(sub, ses, error)
    except BidsportError as exc:
        message = state.scrub(exc.message)
        log.error("%s: %s", label, message)
        # a refused label is not written anywhere; a locked session's record is the other run's
        if not isinstance(exc, (AnonymizationError, LockedError)):
            with contextlib.suppress(BidsportError):
                record(message)
        return state.result(sub, ses, message)


def _scan(
    root: Path,
    opts: RunOptions,
    cache_file: Path | None,
    state: _SessionState,
    pool: Executor | None = None,
) -> list[FileHeader]:
    from bidsport.index import scan_session

    headers: list[FileHeader] = []
    with state.timed("scan"):
        for item in scan_session(root, n_procs=opts.n_procs, cache_file=cache_file, pool=pool):
            if isinstance(item, Problem):
                state.problems.append(item)
            else:
                if not headers and pool is not None:
                    _import_later_stages()
                headers.append(item)
    return headers


#: The modules of the stages after the scan (classification, the flat folder, conversion,
#: export): ~50 ms of imports at the first session of a run.
LATER_STAGES = ("bidsport.classify", "bidsport.organize", "bidsport.convert", "bidsport.export")


def _import_later_stages() -> None:
    """Import :data:`LATER_STAGES`, once the scan's worker processes have their first files
    to read: the imports then take this process's turn while they read (the results wait
    in the pool's queue), not a turn of their own between the scan and classification."""
    import importlib

    for name in LATER_STAGES:
        importlib.import_module(name)


def run_candidate(p: PlannedSeries, series_id: str | None = None) -> RunCandidate:
    """What run numbering needs of a series (named ``series_id``, default its own id)."""
    from bidsport.naming import RunCandidate

    s = p.series
    return RunCandidate(
        series_id or s.series_id,
        p.cls.datatype or "",
        p.cls.suffix or "",
        dict(p.cls.entities),
        (s.acquisition_date or "", s.acquisition_time or "", s.header.series_number or 0),
    )


def _first_of_each_series(decisions: Sequence[FileDecision]) -> list[Path]:
    first: dict[str | None, Path] = {}
    for d in decisions:
        if d.flat_name:
            first.setdefault(d.series_uid, d.source)
    return list(first.values())


def _read_identifiers(paths: list[Path]) -> Identifiers:
    """Worker task: :func:`bidsport.fileids.read_identifiers`."""
    from bidsport.fileids import read_identifiers

    return read_identifiers(paths)


def _anonymize_session(
    anon: privacy.Anonymization,
    sub: str,
    ses: str | None,
    decisions: list[FileDecision],
    dicom_dir: Path,
    opts: RunOptions,
    state: _SessionState,
    dates: Collection[str] = (),
) -> list[FileDecision]:
    """Write de-identified copies of the used files into the flat folder.

    Refuses a subject or session label that carries the patient's identity (or, for the
    session, the date of a study: one of ``dates``, YYYYMMDD); keeps the source
    identifiers beside the key (for the PHI audit); excludes what the policy excludes.
    """
    from bidsport import privacy
    from bidsport.anonymize.keys import flat_pseudonym
    from bidsport.phi import subject_label_identity_check

    decisions = [  # the flat names' hashes of the source paths, keyed
        dataclasses.replace(d, flat_name=flat_pseudonym(anon.key, d.flat_name))
        if d.flat_name
        else d
        for d in decisions
    ]
    used = [d for d in decisions if d.flat_name]
    identifiers = privacy.read_identifiers(_first_of_each_series(decisions))
    for entity, label in (("subject", sub), ("session", ses)):
        reason = label and subject_label_identity_check(
            label, identifiers, entity=entity, dates=dates if entity == "session" else ()
        )
        if reason:
            raise AnonymizationError(reason, "use --mapping to give it a study code")
    privacy.remember_identifiers(anon, sub, identifiers)
    state.deidentify = privacy.deidentifier(anon, sub, identifiers)
    hide_packets, scrub = state.scrub, state.deidentify.text
    state.scrub = lambda text: scrub(hide_packets(text))
    pairs = [(d.source, dicom_dir / d.flat_name) for d in used if d.flat_name]
    reasons = privacy.anonymize_files(anon, pairs, sub, identifiers, n_procs=opts.n_procs)
    excluded = {src: why for (src, _), why in zip(pairs, reasons, strict=True) if why}
    return [
        dataclasses.replace(d, flat_name=None, reason=excluded[d.source])
        if d.source in excluded
        else d
        for d in decisions
    ]


@dataclass(frozen=True)
class _Prepared:
    """A session imported, scanned and classified, ready to be converted."""

    raw_root: Path
    dicom_dir: Path
    decisions: list[FileDecision]
    planned: list[PlannedSeries]
    flat: dict[Path, Path]  #: imported file -> its entry in the flat folder


def _run_session(
    assignments: Sequence[Assignment],
    layout: DatasetLayout,
    opts: RunOptions,
    work: Path,
    state: _SessionState,
    progress: Progress | None,
    anon: privacy.Anonymization | None = None,
    shared: RunShared | None = None,
) -> None:
    with shared.prepare if shared is not None else contextlib.nullcontext():
        prepared = _prepare_session(assignments, layout, opts, work, state, progress, anon, shared)
    helper = shared.helper if shared is not None else None
    batches = shared.batches(opts.n_procs) if shared is not None else opts.n_procs
    _convert_session(
        assignments, prepared, layout, opts, work, state, progress, anon, helper, batches
    )


def _prepare_session(
    assignments: Sequence[Assignment],
    layout: DatasetLayout,
    opts: RunOptions,
    work: Path,
    state: _SessionState,
    progress: Progress | None,
    anon: privacy.Anonymization | None,
    shared: RunShared | None,
) -> _Prepared:
    """Import, scan and classify a session (with --anonymize, write the anonymized copies)."""
    sub, ses = assignments[0].subject, assignments[0].session
    label = sub_ses_prefix(sub, ses)
    problems = state.problems
    say = progress or (lambda _msg: None)

    # ---- import (with --anonymize: into the work dir, never into OUTPUT_DIR)
    raw_root = work / "raw" if anon else layout.raw_dir(sub, ses)
    for assignment in assignments:  # every packet of the session, series grouped across them
        say(f"{label}: importing {assignment.packet.path.name}")
        with state.timed("import"):
            result = import_packet(
                assignment.packet, raw_root / assignment.packet.name, opts.limits
            )
        problems += result.problems
        log.info(
            "%s: imported %d files of %s (%s)",
            label,
            result.n_files,
            assignment.packet.name,
            result.mode,
        )
    # a packet read in part (an unreadable folder...) is not imported: the session fails
    state.stages["imported"] = not any(p.fatal and p.stage == "import" for p in problems)

    # ---- scan, decide, organize
    say(f"{label}: reading headers")
    n_before_scan = len(problems)
    headers = _scan(
        raw_root,
        opts,
        None if anon else layout.index_cache(sub, ses),
        state,
        shared.scan_pool if shared is not None else None,
    )
    with state.timed("classify"):
        decisions, planned = classify_session(headers, raw_root, opts)
    if note := several_studies_note(planned, ", ".join(a.packet.name for a in assignments)):
        problems.append(note)
    dicom_dir = layout.dicom_dir(sub, ses)
    if anon is None:
        del headers  # only each series' own header is needed from here on (memory)
        # even without --anonymize, sidecars are scrubbed of the patient's identifiers
        firsts = _first_of_each_series(decisions)
        from bidsport.runner import in_worker

        # read by the helper process while this session goes on
        state.pending_identifiers = in_worker(
            shared.helper if shared is not None else None, _read_identifiers, firsts
        )
        flat = {d.source: dicom_dir / d.flat_name for d in decisions if d.flat_name}
    else:
        say(f"{label}: anonymizing")
        with state.timed("anonymize"):
            dates = {d for h in headers for d in (h.study_date, h.acquisition_date) if d}
            decisions = _anonymize_session(anon, sub, ses, decisions, dicom_dir, opts, state, dates)
        refused = {d.source for d in decisions if d.reason and d.flat_name is None}
        with state.timed("classify"):  # without what anonymization excluded (burned-in, ...)
            _, planned = classify_session(
                [h for h in headers if h.path not in refused], raw_root, opts
            )
        flat = {d.source: dicom_dir / d.flat_name for d in decisions if d.flat_name}
    names = _write_files_table(
        layout, sub, ses, raw_root, decisions, problems, state.scrub, state.hide_path
    )
    if anon is not None:  # which source file each pseudonymous path is: beside the key
        from bidsport import privacy

        privacy.remember_file_names(anon, sub, ses, names)
    state.classified = True
    state.rules.update(p.cls.rule for p in planned if p.cls.rule)
    if planned:  # (raw_root may hold earlier packets' series too)
        _check_each_packet_used(assignments, raw_root, decisions, state)
    if not planned:
        raise DicomReadError(
            state.scrub(
                no_images_message(
                    [a.packet.name for a in assignments],
                    [d.reason or "in no series" for d in decisions]
                    + [p.reason for p in problems[n_before_scan:] if p.stage == "organize"],
                )
            ),
            f"each file's reason is in {layout.files_table(sub, ses)}; a packet sent again "
            "complete is converted by the next run",
        )
    return _Prepared(raw_root, dicom_dir, decisions, planned, flat)


def _check_each_packet_used(
    assignments: Sequence[Assignment],
    raw_root: Path,
    decisions: Sequence[FileDecision],
    state: _SessionState,
) -> None:
    """A packet of a session with no usable DICOM image (a truncated transfer, a folder of
    notes) makes the session fail, so that it is looked at and never archived; the other
    packets are converted."""
    for assignment in assignments:
        prefix = f"{raw_root / assignment.packet.name}{os.sep}"
        if not any(d.flat_name and str(d.source).startswith(prefix) for d in decisions):
            state.stages["imported"] = False
            state.problems.append(
                Problem(
                    assignment.packet.name,
                    f"packet {assignment.packet.name} holds no usable DICOM image (each "
                    "file's reason is in files.tsv): the session's other packets are "
                    "converted, and none is archived",
                    "import",
                    fatal=True,
                )
            )


def no_images_message(packets: Sequence[str], reasons: Sequence[str]) -> str:
    """Why a session has nothing to convert: its packets hold no usable image (``reasons``:
    why each file read was not used).

    >>> no_images_message(["A"], ["not DICOM", "truncated", "not DICOM"])
    'no DICOM image series in packet A: 3 files, none usable (not DICOM: 2; truncated: 1)'
    >>> no_images_message(["A", "B"], [])
    'no DICOM image series in packets A, B: no files'
    """
    where = f"packet{'s' if len(packets) > 1 else ''} {', '.join(packets)}"
    if not reasons:
        return f"no DICOM image series in {where}: no files"
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])
    shown = "; ".join(f"{reason}: {n}" for reason, n in top[:3])
    more = f"; {len(top) - 3} other reasons" if len(top) > 3 else ""
    files = f"{len(reasons)} file{'s' if len(reasons) > 1 else ''}"
    return f"no DICOM image series in {where}: {files}, none usable ({shown}{more})"


def _convert_session(
    assignments: Sequence[Assignment],
    prepared: _Prepared,
    layout: DatasetLayout,
    opts: RunOptions,
    work: Path,
    state: _SessionState,
    progress: Progress | None,
    anon: privacy.Anonymization | None,
    helper: Executor | None = None,
    batches: int | None = None,
) -> None:
    """Lay out the flat folder while converting; name runs; write the session's tables.

    ``helper`` (the run's helper process, see :class:`RunShared`) rewrites 3D images as
    4D, so that nibabel is not imported by this process. The small series share at most
    ``batches`` dcm2niix calls (default ``--n-procs``: :func:`conversion_groups`)."""
    from bidsport.convert import BatchItem, convert_batch, convert_series
    from bidsport.export import complete_phasediff, export_series, link_fieldmaps, write_scans
    from bidsport.naming import RunCandidate, assign_runs
    from bidsport.organize import lay_out

    sub, ses = assignments[0].subject, assignments[0].session
    label = sub_ses_prefix(sub, ses)
    problems = state.problems
    say = progress or (lambda _msg: None)
    decisions, planned, flat = prepared.decisions, prepared.planned, prepared.flat
    dicom_dir = prepared.dicom_dir

    # ---- runs (series are named in tables by their public id: with --anonymize, the
    # UIDs of the anonymized copies)
    def sid(p: PlannedSeries) -> str:
        return state.scrub(p.series.series_id)

    journal = layout.tables_dir(sub, ses) / OUTPUTS_JOURNAL
    earlier = earlier_names(layout.series_table(sub, ses), journal)
    skip = opts.overwrite == "skip"
    if skip:  # redone for a new packet: what was converted keeps its name and run label
        planned = [keep_earlier_name(p, earlier.get(sid(p))) for p in planned]
    to_convert = [p for p in planned if p.skip is None]
    candidates = [run_candidate(p, sid(p)) for p in to_convert]
    # the series of earlier runs this run does not see (their packets left the inbox) keep
    # their images: their names are taken, so they take part in the numbering as they are
    seen = {sid(p) for p in planned}
    unseen = {i: e for i, e in earlier.items() if i not in seen and e.named}
    reserved = [
        RunCandidate(i, e.datatype, e.suffix, e.entities, ("", "", 0)) for i, e in unseen.items()
    ]
    kept = kept_runs(candidates, earlier) if skip else {}
    runs = assign_runs([*candidates, *reserved], kept | {i: e.run for i, e in unseen.items()})

    # ---- convert, slowest (most files) first
    say(f"{label}: converting {len(to_convert)} series")
    exported: list[tuple[PlannedSeries, ConvertedImage]] = []
    #: per series converted (or failed): its images and notes
    done: dict[str, tuple[list[tuple[PlannedSeries, ConvertedImage]], list[Problem]]] = {}
    outputs_by_series: dict[str, list[str]] = {}
    failures: dict[str, str] = {}
    flagged: dict[str, str] = {}  #: series id -> what dcm2niix said of its geometry

    def files_of(p: PlannedSeries) -> list[Path]:
        # dcm2niix reads the imported files (with --anonymize the originals in the work dir:
        # the private tags it needs are gone from the anonymized copies; its outputs are
        # de-identified afterwards), or the flat folder's repaired copies of files that
        # had no preamble
        return [flat[f] if f in repaired else f for f in p.series.files]

    def convert_one(p: PlannedSeries) -> SeriesConversion | None:
        if opts.output_format == "dcm":
            return None
        return convert_series(
            p.series.series_id,
            files_of(p),
            work / f"series-{p.series.series_id}",
            compress=opts.output_format == "nii.gz",
            level=opts.compression_level,
            merge_as=(
                (p.series.header.series_uid or p.series.series_id, p.series.header.series_number)
                if p.series.merged_from
                else None
            ),
        )

    # The flat folder is laid out while the first series convert: dcm2niix reads the
    # imported files, except for series with a file that needs a repaired copy, which
    # start once the flat folder is done. Stage times do not overlap: "convert" is the
    # conversion time left after "organize".
    repaired = (
        set() if anon else {d.source for d in decisions if d.flat_name and not d.has_preamble}
    )

    def convert_group(
        group: Sequence[PlannedSeries],
    ) -> list[tuple[PlannedSeries, SeriesConversion | ConversionError | None]]:
        """Convert one series, or a batch of small ones in one dcm2niix call (a series
        the batch wrote nothing for is converted alone: its own error, if any)."""
        found: dict[str, SeriesConversion | None] = {}
        if len(group) > 1:
            items = [
                BatchItem(p.series.series_id, p.series.header.series_uid or "", tuple(files_of(p)))
                for p in group
            ]
            try:
                found = convert_batch(
                    items,
                    work / f"batch-{group[0].series.series_id}",
                    compress=opts.output_format == "nii.gz",
                    level=opts.compression_level,
                )
            except (BidsportError, OSError) as exc:  # each series alone, for its own outcome
                log.info("%s: converting %d series one by one: %s", label, len(group), exc)
        done_here: list[tuple[PlannedSeries, SeriesConversion | ConversionError | None]] = []
        for p in group:
            conversion = found.get(p.series.series_id)
            if conversion is None:
                try:
                    conversion = convert_one(p)
                except ConversionError as exc:
                    done_here.append((p, exc))
                    continue
            done_here.append((p, conversion))
        return done_here

    order = sorted(to_convert, key=lambda p: -p.series.n_files)
    waiting = [p for p in order if repaired.intersection(p.series.files)]
    groups = conversion_groups(
        [p for p in order if p not in waiting],
        (opts.n_procs if batches is None else batches) if opts.output_format != "dcm" else 0,
    )
    try:
        with ThreadPoolExecutor(max_workers=max(1, opts.n_procs)) as pool:
            futures = {pool.submit(convert_group, g): g for g in groups}
            if anon is None:
                try:
                    with state.timed("organize"):
                        lay_out(decisions, dicom_dir, symlink=opts.symlink)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
            state.stages["organized"] = True
            futures.update({pool.submit(convert_group, [p]): [p] for p in waiting})
            with state.timed("convert"):
                converted = (pair for future in as_completed(futures) for pair in future.result())
                for p, conversion in converted:
                    try:
                        if isinstance(conversion, ConversionError):
                            raise conversion
                        imgs, probs = export_series(
                            p,
                            runs.get(sid(p), ""),
                            conversion,
                            layout=layout,
                            subject=sub,
                            session=ses,
                            opts=opts,
                            sources=[flat[f] for f in p.series.files],
                            deidentify=state.deidentify,
                            identifiers=state.source_identifiers(),
                            executor=helper,
                        )
                    except ConversionError as exc:
                        failures[sid(p)] = exc.message
                        done[sid(p)] = [], [Problem(sid(p), exc.message, "convert", fatal=True)]
                        continue
                    done[sid(p)] = [(p, img) for img in imgs], probs
                    warned = conversion.warnings if conversion is not None else ()
                    if said := [w for w in warned if _GEOMETRY_WARNING.search(w)]:
                        flagged[sid(p)] = state.scrub("; ".join(said))
                    outputs_by_series[sid(p)] = [img.relpath for img in imgs]
                    _note_outputs(journal, sid(p), outputs_by_series[sid(p)])
    finally:  # what was done is reported even when an error stops the rest
        for p in to_convert:  # in the series' order, not the order they were done in
            images_of, notes = done.get(sid(p), ([], []))
            exported += images_of
            problems += notes

    # ---- fieldmaps, scans.tsv, tables
    session_dir = layout.session_dir(sub, ses)
    with state.timed("finalize"):
        carried, notes = _settle_earlier_outputs(
            session_dir, label, earlier, seen, outputs_by_series, failures
        )
        problems += notes
        links = link_fieldmaps(exported, sub, ses)
        problems += links.notes
        for sidecar_rel, targets in links.intended_for.items():
            if targets:
                path = session_dir / sidecar_rel
                data = json.loads(path.read_text(encoding="utf-8"))
                data["IntendedFor"] = sorted(targets)
                fileops.write_json(path, data)
        complete_phasediff(exported, session_dir)
        scans_file = layout.scans_file(sub, ses)
        acquired = (
            {r["filename"]: r.get("acq_time", "") for r in fileops.read_tsv(scans_file)}
            if carried and scans_file.is_file()
            else {}
        )
        kept_images = [
            ConvertedImage(series_id, rel, _cell(acquired, rel) or None)
            for series_id, rels in carried.items()
            for rel in rels
        ]
        write_scans(scans_file, [img for _, img in exported] + kept_images)
        for series_id, rels in carried.items():  # a failed series: its earlier images
            if series_id in failures:
                outputs_by_series[series_id] = rels
        _write_series_table(
            layout,
            sub,
            ses,
            planned,
            runs,
            outputs_by_series,
            failures,
            state.scrub,
            [row for i, e in earlier.items() if i in carried and i not in seen and (row := e.row)],
            flagged,
        )
        journal.unlink(missing_ok=True)
    state.images += [img for _, img in exported]
    state.stages["converted"] = (
        state.stages["imported"] and not failures and bool(exported or not to_convert)
    )


#: the outputs of each series as it is exported, until the series table is written: a
#: run killed meanwhile leaves it, and the next run removes what it names (if stale)
OUTPUTS_JOURNAL = "outputs-pending.tsv"


def conversion_groups(
    order: Sequence[PlannedSeries], n_procs: int, max_files: int | None = None
) -> list[list[PlannedSeries]]:
    """The series of ``order`` (largest first) as the conversion tasks: one series each,
    except the small ones (at most ``max_files`` files, default
    :data:`bidsport.convert.BATCH_MAX_FILES`), which share dcm2niix calls (pure).

    A small series joins a batch when its SeriesInstanceUID is plain
    (:func:`~bidsport.convert.batchable_uid`), no other series of ``order`` has it or its
    CRC-32 (a series split by bidsport; dcm2niix tells series apart by the CRC), it is not
    stacked from several series, and dcm2niix names its images after its UID (not so for
    Siemens XA single-frame files, named after their SeriesTime:
    :func:`~bidsport.convert.named_by_uid`).
    The small series are spread over ``n_procs`` batches (fewer when there are fewer
    series), largest first into the smallest batch, so that the cores stay busy; a batch
    of one is a task of its own. ``n_procs`` 0: no batches.
    """
    from bidsport.convert import BATCH_MAX_FILES, batchable_uid, named_by_uid, uid_key

    limit = BATCH_MAX_FILES if max_files is None else max_files
    crc_count = Counter(uid_key(p.series.header.series_uid or "") for p in order)
    small = [
        p
        for p in order
        if n_procs > 0
        and p.series.n_files <= limit
        and not p.series.merged_from
        and batchable_uid(p.series.header.series_uid)
        and crc_count[uid_key(p.series.header.series_uid or "")] == 1
        and named_by_uid(p.series.header)
    ]
    batched = {id(p) for p in small}
    groups: list[list[PlannedSeries]] = [[p] for p in order if id(p) not in batched]
    batches: list[list[PlannedSeries]] = [[] for _ in range(min(n_procs, len(small)))]
    for p in small:  # largest first, into the batch with the fewest files
        min(batches, key=lambda b: sum(q.series.n_files for q in b)).append(p)
    groups += [b for b in batches if b]
    return sorted(groups, key=lambda g: -sum(p.series.n_files for p in g))


def _note_outputs(journal: Path, series_id: str, relpaths: Sequence[str]) -> None:
    """Append a series' outputs to the session's journal (:data:`OUTPUTS_JOURNAL`)."""
    if relpaths:
        fileops.ensure_dir(journal.parent)
        with open(journal, "a", encoding="utf-8") as fh:
            fh.write("".join(f"{series_id}\t{rel}\n" for rel in relpaths))


def _settle_earlier_outputs(
    session_dir: Path,
    prefix: str,
    earlier: Mapping[str, EarlierName],
    seen: Collection[str],
    written: Mapping[str, list[str]],
    failures: Mapping[str, str],
) -> tuple[dict[str, list[str]], list[Problem]]:
    """Remove the images earlier runs wrote that this run did not write again (a series
    named anew, or no longer converted), so no stale image stays beside the new ones.

    Kept ("carried": they stay listed in the tables) are the images of a series this run
    did not see (its packet is gone from the inbox, as ``--archive delete`` leaves it) and
    of a series that failed this run. Returns the carried images by series, and a note for
    each image removed or kept.
    """
    now = {rel for rels in written.values() for rel in rels}
    carried: dict[str, list[str]] = {}
    notes: list[Problem] = []
    for series_id, name in earlier.items():
        old = [rel for rel in name.outputs if rel not in now]
        if not old:
            continue
        if series_id in failures or (series_id not in seen and name.row is not None):
            present = [rel for rel in old if os.path.lexists(session_dir / rel)]
            if present:
                carried[series_id] = present
            if series_id in failures:
                notes += [
                    Problem(series_id, f"{rel}, written by an earlier run, is kept", "convert")
                    for rel in present
                ]
            continue
        removed, kept = remove_outputs(session_dir, prefix, old, now)
        new = written.get(series_id)
        now_named = f"now written as {', '.join(new)}" if new else "not converted by this run"
        notes += [
            Problem(
                series_id,
                f"removed {rel} (with its sidecars), written by an earlier run: the series "
                f"is {now_named}",
                "convert",
            )
            for rel in removed
        ]
        notes += [
            Problem(series_id, f"not removed, written by an earlier run: {why}", "convert")
            for why in kept
        ]
    return carried, notes


def _write_files_table(
    layout: DatasetLayout,
    sub: str,
    ses: str | None,
    raw_root: Path,
    decisions: Sequence[FileDecision],
    problems: Sequence[Problem],
    scrub: Callable[[str], str] = str,
    hide_path: Callable[[str], str] = str,
) -> dict[str, str]:
    """Every file of the session: its flat name, or why it was not used.

    With --anonymize, ``hide_path`` replaces the path of each file below its packet by a
    pseudonym, and ``scrub`` removes the source identifiers (the packet's name...).
    Returns the path written for each file, when it differs from the file's own path.
    """
    names: dict[str, str] = {}

    def shown(path: str) -> str:
        written = scrub(hide_path(path))
        if written != path:
            names[written] = path
        return written

    rows = [
        {
            "file": shown(fileops.relative_target(d.source, raw_root)),
            "flat_name": d.flat_name,
            "series_uid": None if scrub is not str else d.series_uid,
            "excluded": d.reason,
        }
        for d in decisions
    ]
    rows += [
        {"file": shown(p.where), "flat_name": None, "series_uid": None, "excluded": p.reason}
        for p in problems
        if p.stage == "organize"
    ]
    rows.sort(key=lambda r: str(r["file"]))
    fileops.write_tsv(layout.files_table(sub, ses), rows, FILES_COLUMNS)
    return names


def _write_series_table(
    layout: DatasetLayout,
    sub: str,
    ses: str | None,
    planned: Sequence[PlannedSeries],
    runs: dict[str, str],
    outputs: dict[str, list[str]],
    failures: dict[str, str],
    scrub: Callable[[str], str] = str,
    carried: Sequence[Mapping[str, str]] = (),
    flagged: Mapping[str, str] | None = None,
) -> None:
    """Every series of the session: its BIDS name(s), or why it was not converted.

    A series ``flagged`` (dcm2niix found slices missing or unevenly spaced) is marked for
    review, with what dcm2niix said in its evidence.

    Series are keyed by their public id (``scrub`` of the series id); free text goes
    through ``scrub`` too (with --anonymize it removes the source identifiers). The
    ``carried`` rows (of an earlier table: series this run did not see, whose images
    stay) are written as they were.
    """

    from bidsport.export import acq_datetime

    def text(value: str | None) -> str | None:
        return scrub(value) if value else value

    rows = []
    for p in planned:
        s, c = p.series, p.cls
        sid = scrub(s.series_id)
        rows.append(
            {
                "series_id": sid,
                "series_number": s.header.series_number,
                "series_description": text(s.header.series_description),
                "protocol_name": text(s.header.protocol_name),
                "n_files": s.n_files,
                "n_volumes": s.n_volumes,
                "acq_time": None
                if scrub is not str
                else acq_datetime(s.acquisition_date, s.acquisition_time),
                "datatype": c.datatype,
                "suffix": c.suffix,
                "entities": ";".join(f"{k}-{v}" for k, v in c.entities.items()),
                "run": runs.get(sid) if sid in outputs else None,
                "provenance": c.provenance,
                "outputs": ";".join(outputs.get(sid, [])),
                "excluded": text(failures.get(sid) or p.skip),
                "review": c.review or sid in (flagged or {}),
                "rule": c.rule,
                "evidence": text(
                    " | ".join(
                        (*c.evidence, f"dcm2niix: {said}")
                        if (said := (flagged or {}).get(sid))
                        else c.evidence
                    )
                ),
            }
        )
    rows += [dict(row) for row in carried]
    fileops.write_tsv(layout.series_table(sub, ses), rows, SERIES_COLUMNS)


# --------------------------------------------------------------------------- the level


@dataclass(frozen=True)
class ParticipantRun:
    results: tuple[SessionResult, ...]
    problems: tuple[Problem, ...]  #: import-level problems (packets not assigned, ...)
    n_packets: int
    packets: tuple[tuple[str, ...], ...] = ()  #: the packet names of each result


def skip_outcome(run: ParticipantRun) -> ParticipantRun:
    """What a re-run of ``run`` finds when every session of it was converted: the same
    sessions, in the same order, each skipped (those ``run`` skipped as they were: with
    their notes)."""
    results = tuple(r if r.skipped else skipped_result(r.subject, r.session) for r in run.results)
    return ParticipantRun(results, run.problems, run.n_packets, run.packets)


def rerun_skips_all(layout: DatasetLayout, run: ParticipantRun) -> bool:
    """True when a re-run with the same packets would skip every session of ``run``
    (``--overwrite skip``) and find the status table already holding its record (so the
    re-run would write nothing)."""
    if len(run.packets) != len(run.results):
        return False
    try:
        table = {row.key: row for row in read_status(layout)}
    except OutputError:
        return False
    for result, packets in zip(run.results, run.packets, strict=True):
        done = session_done(layout, result.subject, result.session, packets)
        if done is None or table.get(done.record.key) != done.record:
            return False
    return True


class RunShared:
    """What the sessions of one run share (with ``--n-procs`` 2 or more).

    ``scan_pool``: the header-scan worker processes; ``helper``: one more process, which
    reads the identifiers of each series while the session goes on, and rewrites
    single-volume images as 4D (nibabel, so that the main process never imports it, and
    imports it once per run). Both are started by the thread that makes this object,
    before any session thread exists (so they can be forked safely).
    ``prepare``: when two sessions are in flight, one at a time is imported, scanned and
    classified while the other converts, so sessions go through the run as a pipeline.
    ``in_flight`` counts the sessions whose work is under way (:meth:`session`).
    """

    def __init__(self, n_procs: int) -> None:
        from bidsport.index import scan_pool
        from bidsport.runner import process_pool

        self.prepare = threading.Lock()
        self._count = threading.Lock()
        self.in_flight = 0
        self.scan_pool: ProcessPoolExecutor = scan_pool(n_procs)
        self.helper: ProcessPoolExecutor = process_pool(1)
        for pool in (self.scan_pool, self.helper):  # the workers start now, from this thread
            pool.submit(int).result()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Counts a session in :attr:`in_flight` while it runs."""
        with self._count:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._count:
                self.in_flight -= 1

    def batches(self, n_procs: int) -> int:
        """How many dcm2niix calls a session's small series share (:func:`conversion_groups`):
        the session's share of ``n_procs`` among the sessions in flight, at least one.

        Each dcm2niix call costs CPU time of its own: on sessions of 100 files in 9
        series, two calls took ~20 ms of CPU more than one call for them all. A session
        that has the cores to itself spreads its small series over them; two sessions in
        flight already keep two cores busy.
        """
        return max(1, n_procs // max(1, self.in_flight))

    def close(self) -> None:
        self.scan_pool.shutdown(cancel_futures=True)
        self.helper.shutdown(cancel_futures=True)


def sessions_at_once(opts: RunOptions, n_sessions: int) -> int:
    """How many sessions are in flight at the same time: two when there are cores to share.

    A session alternates between stages that keep about one core busy (import, classify,
    the flat folder) and the conversion, which keeps ``--n-procs`` busy: with two sessions
    in flight the next one is imported, scanned and classified (one session at a time:
    :class:`RunShared`) while the previous one converts. Memory is that of two sessions.
    With ``--anonymize`` one session at a time (its de-identification keeps every core busy).
    """
    if opts.anonymize or opts.n_procs < 2:
        return 1
    return min(2, n_sessions) or 1


def run_participant_level(
    dicom_dir: Path,
    layout: DatasetLayout,
    opts: RunOptions,
    progress: Progress | None = None,
) -> ParticipantRun:
    """Process every selected session of the inbox; failures are recorded, not raised."""
    plan = plan_sessions(dicom_dir, opts)
    anon = None
    if opts.anonymize:
        from bidsport import privacy

        anon = privacy.set_up(opts, layout.root)
        if plan.assignments:
            privacy.claim_dataset(layout, anon.key)
    fileops.ensure_dir(layout.root)
    sessions = group_by_session(plan.assignments)

    table = TableUpdates(layout)

    def run_one(session: Sequence[Assignment], shared: RunShared | None = None) -> SessionResult:
        try:
            return process_session(session, layout, opts, work_root, table, progress, anon, shared)
        except Exception as exc:  # a bug: report it, and go on with the other sessions
            sub, ses = session[0].subject, session[0].session
            log.exception("%s: internal error", sub_ses_prefix(sub, ses))
            return SessionResult(sub, ses, error=f"internal error (a bug): {exc!r}", internal=True)

    # the rows are written when the run ends, whatever ends it
    with _work_dir(opts, layout) as work_root, contextlib.closing(table):
        # sessions already converted are skipped without work: no worker pool for them
        to_do = [
            s
            for s in sessions
            if opts.overwrite != "skip"
            or session_done(
                layout,
                s[0].subject,
                s[0].session,
                recorded_names([a.packet.name for a in s], anon),
                opts,
            )
            is None
        ]
        at_once = sessions_at_once(opts, len(to_do))
        if not to_do or opts.n_procs < 2:
            results = [run_one(session) for session in sessions]
        else:
            shared = RunShared(opts.n_procs)
            try:
                if at_once == 1:
                    results = [run_one(session, shared) for session in sessions]
                else:
                    with ThreadPoolExecutor(at_once, thread_name_prefix="session") as pool:
                        results = list(pool.map(lambda session: run_one(session, shared), sessions))
            finally:
                shared.close()
    if unused := unused_rules(opts.rules, results):
        log.warning(
            "--rules: %s decided no series of the %d session(s) classified by this run "
            "(check its match conditions against series.tsv)",
            ", ".join(repr(name) for name in unused),
            sum(r.classified for r in results),
        )
    packets = tuple(tuple(a.packet.name for a in session) for session in sessions)
    return ParticipantRun(tuple(results), plan.problems, plan.n_packets, packets)


def unused_rules(rules: Sequence[Rule], results: Sequence[SessionResult]) -> list[str]:
    """The names of the rules that decided no series of the sessions this run classified
    (none when it classified no session: sessions skipped say nothing of the rules)."""
    if not any(r.classified for r in results):
        return []
    used = {name for r in results for name in r.rules}
    return [rule.name for rule in rules if rule.name not in used]
