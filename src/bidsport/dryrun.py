"""``--dry-run``: the plan of a participant-level run, with nothing written to OUTPUT_DIR.

Folder packets are read where they are; archive packets are extracted into a temporary
folder (the work dir when one is given) that is removed afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bidsport.errors import BidsportError
from bidsport.export import plan_fieldmap_sets
from bidsport.index import scan_session
from bidsport.ingest import import_packet
from bidsport.naming import assign_runs, bids_basename
from bidsport.options import RunOptions
from bidsport.participant import classify_session, plan_sessions, run_candidate
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
    assignment: Assignment
    series: tuple[SeriesPreview, ...]
    excluded_files: tuple[tuple[str, str], ...]  #: (file, reason)
    error: str | None = None


@dataclass(frozen=True)
class Preview:
    sessions: tuple[SessionPreview, ...]
    problems: tuple[Problem, ...]


def _preview_session(assignment: Assignment, opts: RunOptions) -> SessionPreview:
    tmp = Path(tempfile.mkdtemp(prefix="bidsport-dryrun-", dir=opts.work_dir))
    try:
        if assignment.packet.kind == "folder":
            root = assignment.packet.path
        else:
            root = tmp / assignment.packet.name
            import_packet(assignment.packet, root, opts.limits)
        headers: list[FileHeader] = []
        excluded: list[tuple[str, str]] = []
        for item in scan_session(root, n_procs=opts.n_procs):
            if isinstance(item, Problem):
                excluded.append((item.where, item.reason))
            else:
                headers.append(item)
        decisions, planned = classify_session(headers, root, opts)
        excluded += [(str(d.source.relative_to(root)), d.reason) for d in decisions if d.reason]
        candidates = [run_candidate(p) for p in planned if p.skip is None]
        runs = assign_runs(candidates)
        names: dict[str, str] = {}
        for p in planned:
            if p.skip is None and p.cls.datatype and p.cls.suffix:
                entities = dict(p.cls.entities)
                if runs.get(p.series.series_id):
                    entities["run"] = runs[p.series.series_id]
                base = bids_basename(assignment.subject, assignment.session, entities, p.cls.suffix)
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
        return SessionPreview(assignment, tuple(previews), tuple(sorted(excluded)))
    except BidsportError as exc:
        return SessionPreview(assignment, (), (), error=exc.message)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def preview(dicom_dir: Path, opts: RunOptions) -> Preview:
    plan = plan_sessions(dicom_dir, opts)
    return Preview(tuple(_preview_session(a, opts) for a in plan.assignments), plan.problems)


def format_preview(result: Preview) -> str:
    lines = []
    for problem in result.problems:
        lines.append(f"packet {problem.where}: not imported: {problem.reason}")
    for session in result.sessions:
        a = session.assignment
        ses = f" ses-{a.session}" if a.session else ""
        lines.append(f"packet {a.packet.path.name} -> sub-{a.subject}{ses} ({a.source})")
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
