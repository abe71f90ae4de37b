"""``--dry-run``: the plan of a participant-level run, with nothing written to OUTPUT_DIR.

Packets are imported as the run imports them (folders hard-linked or copied, archives
and gzipped files expanded) into a temporary folder (in the work dir when one is given)
that is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bidsport.errors import BidsportError
from bidsport.export import plan_fieldmap_sets
from bidsport.index import scan_session
from bidsport.ingest import group_by_session, import_packet
from bidsport.layout import DatasetLayout
from bidsport.naming import assign_runs, bids_basename
from bidsport.options import RunOptions
from bidsport.participant import (
    classify_session,
    earlier_names,
    keep_earlier_name,
    kept_runs,
    plan_sessions,
    run_candidate,
    session_done,
)
from bidsport.records import Assignment, FileHeader, Problem


@dataclass(frozen=True)
class SeriesPreview:
    series_id: str
    description: str
    n_files: int
    name: str | None  #: the BIDS path the series would get (datatype/basename)
    provenance: str
    skip: str | None
    evidence: tuple[str, ...]
    #: of a fieldmap: the names of the images it would correct (IntendedFor)
    corrects: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SessionPreview:
    assignments: tuple[Assignment, ...]  #: the packets of the session (one or more)
    series: tuple[SeriesPreview, ...]
    excluded_files: tuple[tuple[str, str], ...]  #: (file, reason)
    error: str | None = None
    skipped: bool = False  #: already converted from these packets (``--overwrite skip``)


@dataclass(frozen=True)
class Preview:
    sessions: tuple[SessionPreview, ...]
    problems: tuple[Problem, ...]


def _packet_root(assignment: Assignment, tmp: Path, opts: RunOptions) -> Path:
    """Where the packet's files are read: imported as the run imports them (a folder
    packet hard-linked, or copied, with the archives and gzipped files in it expanded; an
    archive extracted), into the temporary folder."""
    root = tmp / assignment.packet.name
    import_packet(assignment.packet, root, opts.limits)
    return root


def _preview_session(
    assignments: tuple[Assignment, ...], opts: RunOptions, layout: DatasetLayout | None
) -> SessionPreview:
    """What the run would do with one session: every packet of it together, as the run
    groups them, named as the run would name them given what ``layout`` holds already."""
    sub, ses = assignments[0].subject, assignments[0].session
    packets = [a.packet.name for a in assignments]
    if (
        layout is not None
        and opts.overwrite == "skip"
        and not opts.anonymize  # the record names packets by pseudonyms of a key
        and session_done(layout, sub, ses, packets, opts)
    ):
        return SessionPreview(assignments, (), (), skipped=True)
    tmp = Path(tempfile.mkdtemp(prefix="bidsport-dryrun-", dir=opts.work_dir))
    try:
        headers: list[FileHeader] = []
        excluded: list[tuple[str, str]] = []
        shown: dict[Path, str] = {}  #: each packet's root -> how its files are named
        for assignment in assignments:
            root = _packet_root(assignment, tmp, opts)
            shown[root] = f"{assignment.packet.name}/" if len(assignments) > 1 else ""
            for item in scan_session(root, n_procs=opts.n_procs):
                if isinstance(item, Problem):
                    excluded.append((shown[root] + item.where, item.reason))
                else:
                    headers.append(item)
        common = Path(os.path.commonpath(list(shown)))
        decisions, planned = classify_session(headers, common, opts)
        for d in decisions:
            if d.reason:
                root = next(r for r in shown if d.source.is_relative_to(r))
                excluded.append((shown[root] + str(d.source.relative_to(root)), d.reason))
        # as the run names them: with the names an earlier run gave (not with --anonymize:
        # the series table then holds the anonymized copies' UIDs)
        earlier = (
            earlier_names(layout.series_table(sub, ses))
            if layout is not None and opts.overwrite != "clean" and not opts.anonymize
            else {}
        )
        skip = opts.overwrite == "skip"
        if skip:
            planned = [keep_earlier_name(p, earlier.get(p.series.series_id)) for p in planned]
        candidates = [run_candidate(p) for p in planned if p.skip is None]
        runs = assign_runs(candidates, kept_runs(candidates, earlier) if skip else {})
        names: dict[str, str] = {}
        for p in planned:
            if p.skip is None and p.cls.datatype and p.cls.suffix:
                entities = dict(p.cls.entities)
                if runs.get(p.series.series_id):
                    entities["run"] = runs[p.series.series_id]
                # a field measurement's magnitude images are written as magnitude1 (and 2)
                suffix = "magnitude1" if p.cls.suffix == "magnitude" else p.cls.suffix
                base = bids_basename(sub, ses, entities, suffix)
                names[p.series.series_id] = (
                    f"{p.cls.datatype}/{base}" if opts.layout == "bids" else base
                )
        # fieldmap series → the images it would correct (none in DICOM output: no sidecar)
        corrects: dict[str, list[str]] = {}
        linked = [p for p in planned if p.skip is None and opts.output_format != "dcm"]
        for fieldmap_set in plan_fieldmap_sets(linked):
            for sid in fieldmap_set.fieldmaps:
                corrects.setdefault(sid, []).extend(names.get(i, i) for i in fieldmap_set.images)
        previews = [
            SeriesPreview(
                p.series.series_id,
                p.series.header.series_description or "",
                p.series.n_files,
                names.get(p.series.series_id),
                p.cls.provenance,
                p.skip,
                p.cls.evidence,
                (
                    tuple(sorted(set(corrects[p.series.series_id])))
                    if p.series.series_id in corrects
                    else None
                ),
            )
            for p in planned
        ]
        return SessionPreview(assignments, tuple(previews), tuple(sorted(excluded)))
    except BidsportError as exc:
        return SessionPreview(assignments, (), (), error=exc.message)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def preview(dicom_dir: Path, opts: RunOptions, layout: DatasetLayout | None = None) -> Preview:
    """The plan of a participant-level run; with ``layout`` (OUTPUT_DIR), given what it
    holds: sessions already converted are skipped, and earlier names are kept, as the run
    would."""
    plan = plan_sessions(dicom_dir, opts)
    sessions = group_by_session(plan.assignments)
    return Preview(tuple(_preview_session(g, opts, layout) for g in sessions), plan.problems)


def format_preview(result: Preview) -> str:
    lines = []
    for problem in result.problems:
        lines.append(f"packet {problem.where}: not imported: {problem.reason}")
    for session in result.sessions:
        a = session.assignments[0]
        ses = f" ses-{a.session}" if a.session else ""
        names = ", ".join(x.packet.path.name for x in session.assignments)
        packets = f"packet{'s' if len(session.assignments) > 1 else ''} {names}"
        lines.append(f"{packets} -> sub-{a.subject}{ses} ({a.source})")
        if session.skipped:
            lines.append("  already converted from these packets: skipped (--overwrite skip)")
        if session.error:
            lines.append(f"  ERROR: {session.error}")
        for s in session.series:
            target = s.name or f"not converted: {s.skip}"
            lines.append(
                f"  {s.description or s.series_id} [{s.n_files} files, {s.provenance}] -> {target}"
            )
            if s.evidence:
                lines.append(f"      because: {'; '.join(s.evidence)}")
            if s.corrects is not None:
                lines.append(f"      corrects: {', '.join(s.corrects) or 'no image'}")
        for file, reason in session.excluded_files:
            lines.append(f"  excluded file {file}: {reason}")
    return "\n".join(lines)
