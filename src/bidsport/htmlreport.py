"""The group report ``derivatives/bidsport/report.html``: status, series and thumbnails.

One self-contained HTML page for curators: the status of every subject/session, then per
session the series table (classification, provenance, why a series was not converted)
with a thumbnail of every converted image (middle slices of its first volume in three
planes, so a T1w can be seen to look like a T1w).

The thumbnails are grayscale PNG files under ``derivatives/bidsport/thumbnails/``,
mirroring the dataset (``sub-<s>/[ses-<t>/]<datatype>/<name>.png``), referenced from the
page by relative paths: the page stays small on large datasets (the browser loads the
pictures lazily), the folder can be moved or mounted anywhere, and a thumbnail is only
recomputed when its image is newer than it (:mod:`bidsport.thumbnails` makes them, and
is imported only then: a group run whose thumbnails are all current does not import
numpy or nibabel). The page has no script and loads nothing from elsewhere.

The report holds no time stamp of its own, so a second group run changes nothing. It
shows what the tables say (``status.tsv``, each session's ``series.tsv``), which carry no
identifying data beyond the packet names and the free-text series descriptions (escaped).

Pure parts (HTML, tables) are apart from the I/O (:func:`collect_sessions`,
:func:`write_report`).
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bidsport import fileops, png
from bidsport.layout import DatasetLayout, nifti_stem, sub_ses_dir, sub_ses_prefix
from bidsport.reportworkers import THUMBNAIL_SOFTWARE, ThumbnailPool, make_thumbnail
from bidsport.status import (
    UNFINISHED_PREFIX,
    StatusRow,
    outcome_missing,
    read_records,
    unrecorded_outcome,
)
from bidsport.validator import Issue, ValidationResult

log = logging.getLogger(__name__)

#: Folder of the thumbnails, relative to the report's folder.
THUMBNAIL_DIR = "thumbnails"
_SOFTWARE_TEXT = png.software_text(THUMBNAIL_SOFTWARE)
#: Content-Security-Policy of the page: no script, nothing from the network.
CSP = "default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'"
#: How a series' ``excluded`` text begins when its conversion failed (the messages of
#: :class:`bidsport.errors.ConversionError` in :mod:`bidsport.convert`); any other text
#: is an expected exclusion (classification, the user's filters, excluded files).
FAILURE_PREFIXES = ("dcm2niix ", "cannot gzip ")
#: How many locations the validation section lists per issue code (then "+N more").
SHOWN_LOCATIONS = 20


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail PNG, as the page references it."""

    relpath: str  #: POSIX path relative to the report's folder
    width: int
    height: int


@dataclass(frozen=True)
class ImagePreview:
    """One output of a series and its thumbnail (or why there is none)."""

    output: str  #: path of the output relative to the session folder
    thumbnail: Thumbnail | None = None
    note: str | None = None  #: why there is no thumbnail


@dataclass(frozen=True)
class SeriesRow:
    """One row of a session's ``series.tsv`` (``n/a`` and missing columns are None)."""

    series_id: str | None
    series_number: str | None
    series_description: str | None
    protocol_name: str | None
    n_files: str | None
    n_volumes: str | None
    acq_time: str | None
    datatype: str | None
    suffix: str | None
    entities: str | None
    run: str | None
    provenance: str | None
    outputs: tuple[str, ...]
    excluded: str | None
    review: bool
    rule: str | None
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class SeriesEntry:
    """A series of the report: its table row and the previews of its outputs."""

    row: SeriesRow
    previews: tuple[ImagePreview, ...] = ()


@dataclass(frozen=True)
class SessionReport:
    """What the report shows of one subject/session."""

    status: StatusRow
    series: tuple[SeriesEntry, ...] = ()
    note: str | None = None  #: e.g. why there is no series table
    #: why a session with no error is not converted (:func:`bidsport.status.unrecorded_outcome`)
    problem: str | None = None

    @property
    def anchor(self) -> str:
        return sub_ses_prefix(self.status.participant_id, self.status.session_id)


@dataclass(frozen=True)
class ReportOutcome:
    """What :func:`write_report` did."""

    report_file: Path
    written: tuple[Path, ...]  #: files created or changed (report, thumbnails)
    removed: tuple[Path, ...]  #: thumbnails of images that no longer exist


@dataclass(frozen=True)
class PreparedReport:
    """What :func:`prepare_report` read and made: all the page needs but the validation."""

    sessions: tuple[SessionReport, ...]
    written: tuple[Path, ...]  #: thumbnails created or changed
    removed: tuple[Path, ...]  #: thumbnails of images that no longer exist


# --------------------------------------------------------------------------- tables


def series_row(row: Mapping[str, str]) -> SeriesRow:
    """A :class:`SeriesRow` from a ``series.tsv`` row (as :func:`fileops.read_tsv` reads it)."""
    outputs = fileops.tsv_cell(row, "outputs")
    evidence = fileops.tsv_cell(row, "evidence")
    return SeriesRow(
        series_id=fileops.tsv_cell(row, "series_id"),
        series_number=fileops.tsv_cell(row, "series_number"),
        series_description=fileops.tsv_cell(row, "series_description"),
        protocol_name=fileops.tsv_cell(row, "protocol_name"),
        n_files=fileops.tsv_cell(row, "n_files"),
        n_volumes=fileops.tsv_cell(row, "n_volumes"),
        acq_time=fileops.tsv_cell(row, "acq_time"),
        datatype=fileops.tsv_cell(row, "datatype"),
        suffix=fileops.tsv_cell(row, "suffix"),
        entities=fileops.tsv_cell(row, "entities"),
        run=fileops.tsv_cell(row, "run"),
        provenance=fileops.tsv_cell(row, "provenance"),
        outputs=tuple(o for o in (outputs or "").split(";") if o),
        excluded=fileops.tsv_cell(row, "excluded"),
        review=(fileops.tsv_cell(row, "review") or "").lower() == "true",
        rule=fileops.tsv_cell(row, "rule"),
        evidence=tuple(e.strip() for e in (evidence or "").split(" | ") if e.strip()),
    )


def conversion_failed(excluded: str | None) -> bool:
    """Whether a series' ``excluded`` text says that its conversion failed (not that the
    series was left out on purpose).

    >>> conversion_failed("dcm2niix failed on series 6 (3 files, exit 1): no output")
    True
    >>> conversion_failed("localizer"), conversion_failed(None)
    (False, False)
    """
    return bool(excluded) and str(excluded).startswith(FAILURE_PREFIXES)


def thumbnail_relpath(subject: str, session: str | None, output: str) -> str | None:
    """Where the thumbnail of a session's ``output`` lives, relative to the report's folder.

    None when ``output`` is not a NIfTI image or not a plain path inside the session.

    >>> thumbnail_relpath("01", "1", "anat/sub-01_ses-1_T1w.nii.gz")
    'thumbnails/sub-01/ses-1/anat/sub-01_ses-1_T1w.png'
    >>> thumbnail_relpath("01", None, "../x.nii") is None
    True
    """
    path = PurePosixPath(output)
    if path.is_absolute() or ".." in path.parts or "\\" in output:
        return None
    stem = nifti_stem(path.name)
    if stem is None:
        return None
    png = path.with_name(stem + ".png")
    return str(PurePosixPath(THUMBNAIL_DIR, sub_ses_dir(subject, session).as_posix(), png))


# --------------------------------------------------------------------------- HTML

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222}
h1{font-size:1.6em;margin:0 0 .2em}h2{margin-top:1.6em}
h3{margin:1.4em 0 .4em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.4em 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
td.na{color:#999}
tr.ok td.state{background:#dff0d8}tr.failed td.state{background:#f2dede}
tr.partial td.state{background:#fcf8e3}tr.expected td.state{background:#eee}
tr.excluded td{color:#777}tr.review td{background:#fcf8e3}tr.failed td{background:#f2dede}
.badge{font-size:.75em;padding:1px 6px;border-radius:8px;background:#ddd;margin-left:.5em}
.badge.ok{background:#dff0d8}.badge.failed{background:#f2dede}
.badge.partial{background:#fcf8e3}.badge.expected{background:#eee;color:#555}
.badge.review{background:#fcf8e3}
figure{display:inline-block;margin:0 4px 4px 0}
figure img{display:block;background:#000;image-rendering:auto}
figcaption{font-size:.75em;color:#555;max-width:400px;overflow-wrap:anywhere}
td{overflow-wrap:anywhere}td:last-child{min-width:390px}
table.series td:first-child,.badge{white-space:nowrap;overflow-wrap:normal}
details summary{cursor:pointer;color:#555}
.error{color:#a94442}.note{color:#777;font-style:italic}.skipped{color:#777}
code{font-size:.9em}
"""


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1.

    >>> counted(1, "session"), counted(2, "session"), counted(0, "warning")
    ('1 session', '2 sessions', '0 warnings')
    """
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _td(value: object | None, cls: str | None = None) -> str:
    if value is None or value == "":
        return '<td class="na">n/a</td>'
    attr = f' class="{_e(cls)}"' if cls else ""
    return f"<td{attr}>{_e(value)}</td>"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _state(row: StatusRow) -> tuple[str, str]:
    """(CSS class, word) of a status row.

    The report is written while no participant-level job runs (the group level makes
    sure of it), so a session imported but neither converted nor failed was interrupted
    (:func:`bidsport.status.outcome_missing`): it counts as failed, as does a session
    whose record says a run began it and recorded no outcome.

    >>> _state(StatusRow("01", None, "P", True, True, False, None, "t"))
    ('failed', 'interrupted')
    """
    if row.last_error:
        interrupted = row.last_error.startswith(UNFINISHED_PREFIX)
        return "failed", "interrupted" if interrupted else "failed"
    if row.converted:
        return "ok", "converted"
    if outcome_missing(row):
        return "failed", "interrupted"
    return "expected", "expected"


def _status_table(sessions: Sequence[SessionReport]) -> list[str]:
    out = [
        '<table class="status">',
        "<tr><th>participant</th><th>session</th><th>packet</th><th>imported</th>"
        "<th>organized</th><th>converted</th><th>state</th><th>last error</th>"
        "<th>updated</th></tr>",
    ]
    for s in sessions:
        row = s.status
        cls, word = _state(row)
        out.append(
            f'<tr class="{cls}"><td><a href="#{_e(s.anchor)}">sub-{_e(row.participant_id)}'
            "</a></td>"
            + _td(f"ses-{row.session_id}" if row.session_id else None)
            + _td(row.packet)
            + _td(_yes(row.imported))
            + _td(_yes(row.organized))
            + _td(_yes(row.converted))
            + _td(word, "state")
            + _td(row.last_error or s.problem, "error")
            + _td(row.updated)
            + "</tr>"
        )
    out.append("</table>")
    return out


def _preview_html(preview: ImagePreview) -> str:
    caption = f"<figcaption>{_e(preview.output)}</figcaption>"
    thumb = preview.thumbnail
    if thumb is None:
        note = preview.note or "no preview"
        return f'<figure><span class="note">{_e(note)}</span>{caption}</figure>'
    return (
        f'<figure><img src="{_e(thumb.relpath)}" width="{thumb.width}" '
        f'height="{thumb.height}" loading="lazy" alt="{_e(preview.output)}">{caption}</figure>'
    )


def _bids_name(row: SeriesRow) -> str | None:
    if not row.datatype and not row.suffix:
        return None
    parts = [row.datatype or "?", "/"]
    if row.entities:
        parts.append(row.entities.replace(";", "_") + "_")
    if row.run:
        parts.append(f"run-{row.run}_")
    parts.append(row.suffix or "?")
    return "".join(parts)


def _series_table(entries: Sequence[SeriesEntry]) -> list[str]:
    out = [
        '<table class="series">',
        "<tr><th>#</th><th>description</th><th>files / volumes</th><th>acquired</th>"
        "<th>classified as</th><th>provenance</th><th>outcome</th><th>preview</th></tr>",
    ]
    for entry in entries:
        row = entry.row
        failed = conversion_failed(row.excluded)
        cls = "failed" if failed else "excluded" if row.excluded or not row.outputs else "converted"
        if row.review:
            cls += " review"
        description = _e(row.series_description or "n/a")
        if row.protocol_name and row.protocol_name != row.series_description:
            description += f'<br><span class="note">protocol: {_e(row.protocol_name)}</span>'
        if row.evidence:
            items = "".join(f"<li>{_e(e)}</li>" for e in row.evidence)
            description += f"<details><summary>evidence</summary><ul>{items}</ul></details>"
        if row.rule:
            description += f'<br><span class="note">rule: {_e(row.rule)}</span>'
        counts = f"{row.n_files or '?'} / {row.n_volumes or '?'}"
        if failed:
            outcome = f'<span class="error">conversion failed: {_e(row.excluded)}</span>'
        elif row.excluded:
            outcome = f'<span class="skipped">not converted: {_e(row.excluded)}</span>'
        elif row.outputs:
            outcome = "<br>".join(f"<code>{_e(o)}</code>" for o in row.outputs)
        else:
            outcome = '<span class="note">no output</span>'
        if row.review:
            outcome += '<span class="badge review">review</span>'
        previews = "".join(_preview_html(p) for p in entry.previews)
        out.append(
            f'<tr class="{cls}">'
            + _td(row.series_number)
            + f"<td>{description}</td>"
            + _td(counts)
            + _td(row.acq_time)
            + _td(_bids_name(row))
            + _td(row.provenance)
            + f"<td>{outcome}</td>"
            + f"<td>{previews}</td>"
            + "</tr>"
        )
    out.append("</table>")
    return out


def _session_section(s: SessionReport) -> list[str]:
    row = s.status
    cls, word = _state(row)
    title = f"sub-{row.participant_id}" + (f" ses-{row.session_id}" if row.session_id else "")
    out = [
        f'<section id="{_e(s.anchor)}">',
        f'<h3>{_e(title)}<span class="badge {cls}">{_e(word)}</span></h3>',
    ]
    if row.packet:
        out.append(f"<p>packet: <code>{_e(row.packet)}</code></p>")
    if row.last_error:
        out.append(f'<p class="error">last error: {_e(row.last_error)}</p>')
    elif s.problem:
        out.append(f'<p class="error">{_e(s.problem)}</p>')
    if s.note:
        out.append(f'<p class="note">{_e(s.note)}</p>')
    if s.series:
        converted = sum(1 for e in s.series if e.row.outputs and not e.row.excluded)
        failed = sum(1 for e in s.series if conversion_failed(e.row.excluded))
        failures = f", {failed} failed" if failed else ""
        out.append(f"<p>{len(s.series)} series, {converted} converted{failures}</p>")
        out += _series_table(s.series)
    out.append("</section>")
    return out


def _where(issue: Issue) -> str:
    """Where an issue is, for the validation section: its location and sub-code."""
    where = issue.location or "the dataset"
    if issue.line is not None:
        where += f", line {issue.line}"
    return f"{where} ({issue.sub_code})" if issue.sub_code else where


def _validation_section(
    validation: ValidationResult | None, link: str | None, shown: int = SHOWN_LOCATIONS
) -> list[str]:
    """The findings of the validator: per severity, one row per code (how many, its
    message, up to ``shown`` locations and "+N more"), and where the full list is."""
    out = ['<h2 id="validation">BIDS validation</h2>']
    if validation is None or not validation.ran:
        out.append('<p class="note">not validated yet (bids-validator-deno was not run)</p>')
        return out
    version = f" {validation.version}" if validation.version else ""
    schema = f" (schema {validation.schema_version})" if validation.schema_version else ""
    full = f' The full list: <a href="{_e(link)}">{_e(link)}</a>.' if link else ""
    out.append(
        f"<p>The last validation, by bids-validator-deno{_e(version)}{_e(schema)}: "
        f"{counted(len(validation.errors), 'error')}, "
        f"{counted(len(validation.warnings), 'warning')}.{full}</p>"
    )
    for kind, issues in (("error", validation.errors), ("warning", validation.warnings)):
        if not issues:
            continue
        by_code: dict[str, list[Issue]] = {}
        for issue in issues:
            by_code.setdefault(issue.code, []).append(issue)
        out += [
            f'<table class="validation {kind}">',
            f"<tr><th>{kind}</th><th>count</th><th>message</th><th>where</th></tr>",
        ]
        for code, group in by_code.items():
            places = [_e(_where(i)) for i in group[:shown]]
            if len(group) > shown:
                places.append(f"+{len(group) - shown} more")
            cls = ' class="error"' if kind == "error" else ""
            messages = sorted({i.message for i in group if i.message})
            message = _td(messages[0] if messages else None)
            if len(messages) > 1:  # e.g. one per missing key: the full list has them
                message = '<td class="na">differs per location</td>'
            out.append(
                f"<tr><td{cls}><code>{_e(code)}</code></td>"
                + _td(len(group))
                + message
                + f"<td>{'<br>'.join(places)}</td></tr>"
            )
        out.append("</table>")
    return out


def build_html(
    title: str,
    sessions: Sequence[SessionReport],
    *,
    generator: str = "bidsport",
    validation: ValidationResult | None = None,
    validation_link: str | None = None,
) -> str:
    """The report page (pure): a status table, the validator's findings (``validation``;
    ``validation_link``: where the full list is, relative to the page), then one section
    per session.

    Every text is escaped; the page holds no script and refers only to the thumbnails
    and the validation file (relative paths) and to anchors of its own.
    """
    n_subjects = len({s.status.participant_id for s in sessions})
    words = [_state(s.status)[1] for s in sessions]
    n_review = sum(1 for s in sessions for e in s.series if e.row.review)
    n_failed = words.count("failed") + words.count("interrupted")
    interrupted = f" ({words.count('interrupted')} interrupted)" if "interrupted" in words else ""
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="{_e(generator)}">',
        f"<title>{_e(title)}: bidsport report</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>{counted(n_subjects, 'participant')}, {counted(len(sessions), 'session')}: "
        f"{words.count('converted')} converted, {n_failed} failed{interrupted}, "
        f"{words.count('expected')} expected; {n_review} series flagged for review. "
        f"Report by {_e(generator)}.</p>",
        '<h2 id="status">Status</h2>',
        *_status_table(sessions),
        *_validation_section(validation, validation_link),
        '<h2 id="sessions">Sessions</h2>',
    ]
    if not sessions:
        lines.append('<p class="note">no session yet</p>')
    for session in sessions:
        lines += _session_section(session)
    lines += ["</body>", "</html>", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- I/O


def _current_thumbnail(image: Path, png_path: Path, relpath: str) -> Thumbnail | str | None:
    """The thumbnail of ``image`` when ``png_path`` holds an up-to-date one; a note when
    the image is missing; None when the thumbnail has to be made."""
    try:
        image_mtime = image.stat().st_mtime_ns
    except OSError:
        return "image missing"
    try:
        if png_path.stat().st_mtime_ns >= image_mtime:
            old = png_path.read_bytes()
            size = png.size(old)
            if size is not None and _SOFTWARE_TEXT in old[:200]:
                return Thumbnail(relpath, *size)
    except OSError:
        pass
    return None


def _store_png(png_path: Path, data: bytes) -> bool:
    """Write ``data`` at ``png_path`` unless the file holds it already (then only mark it
    as newer than the image it shows, so it is not made again); True when written."""
    try:
        if png_path.read_bytes() == data:
            os.utime(png_path)
            return False
    except OSError:
        pass
    fileops.write_bytes(png_path, data)
    return True


#: thumbnails to make before worker processes are worth starting
_PARALLEL_FROM = 8


def _make_pngs(
    images: Sequence[Path], n_procs: int, pool: ThumbnailPool | None = None
) -> list[bytes | str]:
    """:func:`~bidsport.reportworkers.make_thumbnail` of every image, in up to ``n_procs``
    worker processes: ``pool``'s (running already, see :mod:`bidsport.reportworkers`) when
    it has as many as these images are worth, else workers started now."""
    if not images:
        return []
    worth = min(n_procs, len(images) // (_PARALLEL_FROM // 2))
    if pool is not None and pool.workers < worth:
        pool.executor.shutdown()  # too few (the images were guessed): forks come next
        pool = None
    if pool is None and (n_procs <= 1 or len(images) < _PARALLEL_FROM):
        return [make_thumbnail(image) for image in images]
    from concurrent.futures import BrokenExecutor

    from bidsport.runner import process_pool, worker_gone

    executor = pool.executor if pool is not None else None
    try:
        if executor is not None:
            return list(executor.map(make_thumbnail, images, chunksize=_chunk_size(len(images))))
        from bidsport import thumbnails  # noqa: F401  (imported once, before the workers fork)

        with process_pool(worth) as executor:
            return list(executor.map(make_thumbnail, images, chunksize=4))
    except BrokenExecutor:
        worker_gone(f"making {len(images)} thumbnails", executor)
        return [make_thumbnail(image) for image in images]


def _chunk_size(n_images: int) -> int:
    """Thumbnails per task in a pool of any size: 4, or 1 for a few (spread evenly)."""
    return 4 if n_images >= 4 * _PARALLEL_FROM else 1


def _thumbnails(
    wanted: Sequence[tuple[Path, Path, str]],
    n_procs: int,
    written: list[Path],
    pool: ThumbnailPool | None = None,
) -> list[tuple[Thumbnail | None, str | None]]:
    """For each (image, PNG path, relative path): the thumbnail, made (or reused), or why
    there is none."""
    found: list[tuple[Thumbnail | None, str | None]] = []
    to_make: list[int] = []
    for image, png_path, relpath in wanted:
        current = _current_thumbnail(image, png_path, relpath)
        if current is None:
            to_make.append(len(found))
        found.append((current, None) if isinstance(current, Thumbnail) else (None, current))
    made = _make_pngs([wanted[i][0] for i in to_make], n_procs, pool)
    for i, data in zip(to_make, made, strict=True):
        image, png_path, relpath = wanted[i]
        if isinstance(data, str):
            log.warning("no thumbnail for %s: %s", image, data)
            found[i] = (None, f"no preview: {data}")
            continue
        if _store_png(png_path, data):
            written.append(png_path)
        found[i] = (Thumbnail(relpath, *(png.size(data) or (0, 0))), None)
    return found


def _series_rows(layout: DatasetLayout, row: StatusRow) -> list[SeriesRow] | str:
    """The rows of a session's series table, or why there are none."""
    table = layout.series_table(row.participant_id, row.session_id)
    if not table.is_file():
        if row.imported or row.organized or row.converted or row.last_error:
            return "no series table: the last run of this session ended before writing one"
        return "no series table yet: no data imported"
    try:
        return [series_row(r) for r in fileops.read_tsv(table)]
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s: %s", table, exc)
        return f"series table unreadable: {exc}"


def collect_sessions(
    layout: DatasetLayout,
    status: Iterable[StatusRow],
    n_procs: int = 1,
    pool: ThumbnailPool | None = None,
) -> tuple[list[SessionReport], list[Path], set[Path]]:
    """Read every session's series table and make the missing or stale thumbnails (in
    ``pool``'s workers, else in up to ``n_procs`` worker processes).

    Returns the sessions (in status order), the thumbnails written, and every thumbnail
    the report refers to. A session neither converted nor failed is given the reason
    (:func:`bidsport.status.unrecorded_outcome`, from its record): call this only while
    no participant-level job runs.
    """
    records = {r.key: r for r in read_records(layout)}
    tables = [(row, _series_rows(layout, row)) for row in status]
    wanted: list[tuple[Path, Path, str]] = []  # (image, PNG, relative path) of each output
    for row, rows in tables:
        sub, ses = row.participant_id, row.session_id
        for series in rows if not isinstance(rows, str) else ():
            for output in series.outputs if not series.excluded else ():
                relpath = thumbnail_relpath(sub, ses, output)
                if relpath is not None:
                    image = layout.session_dir(sub, ses) / output
                    wanted.append((image, layout.derivatives_dir / relpath, relpath))
    written: list[Path] = []
    thumbs = iter(_thumbnails(wanted, n_procs, written, pool))
    sessions = []
    for row, rows in tables:
        problem = unrecorded_outcome(row, records.get(row.key))
        if isinstance(rows, str):
            sessions.append(SessionReport(row, note=rows, problem=problem))
            continue
        entries = []
        for series in rows:
            previews = []
            for output in series.outputs if not series.excluded else ():
                if thumbnail_relpath(row.participant_id, row.session_id, output) is None:
                    previews.append(ImagePreview(output, note="no preview (not a NIfTI image)"))
                else:
                    previews.append(ImagePreview(output, *next(thumbs)))
            entries.append(SeriesEntry(series, tuple(previews)))
        sessions.append(SessionReport(row, tuple(entries), problem=problem))
    return sessions, written, {png_path for _, png_path, _ in wanted}


def _prune_thumbnails(folder: Path, used: set[Path]) -> list[Path]:
    """Remove the PNGs below ``folder`` that the report does not use, then empty folders."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for dirpath, _dirnames, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            path = Path(dirpath, name)
            if name.endswith(".png") and path not in used:
                fileops.remove_tree(path, folder)
                removed.append(path)
        current = Path(dirpath)
        if current != folder and not any(current.iterdir()):
            fileops.remove_tree(current, folder)
    return removed


def prepare_report(
    layout: DatasetLayout,
    status: Sequence[StatusRow],
    n_procs: int = 1,
    pool: ThumbnailPool | None = None,
) -> PreparedReport:
    """Read the series tables, make the missing or stale thumbnails (in ``pool``'s
    workers, see :mod:`bidsport.reportworkers`, else in up to ``n_procs`` worker processes)
    and remove those of images that are gone: all but the page.

    A thumbnail that cannot be made is logged and shown as a note.
    """
    sessions, written, used = collect_sessions(
        layout, sorted(status, key=lambda r: r.key), n_procs, pool
    )
    removed = _prune_thumbnails(layout.derivatives_dir / THUMBNAIL_DIR, used)
    for path in removed:
        log.info("removed the thumbnail of a vanished image: %s", path)
    return PreparedReport(tuple(sessions), tuple(written), tuple(removed))


def write_page(
    layout: DatasetLayout,
    prepared: PreparedReport,
    *,
    title: str,
    generator: str = "bidsport",
    validation: ValidationResult | None = None,
    validation_file: Path | None = None,
) -> ReportOutcome:
    """Write ``layout.report_file`` from ``prepared`` (:func:`prepare_report`), unless it
    holds that page already; ``validation``: the findings shown, ``validation_file``:
    where their full list is (linked from the page)."""
    report_file = layout.report_file
    link = None
    if validation_file is not None:
        link = Path(os.path.relpath(validation_file, report_file.parent)).as_posix()
    text = build_html(
        title, prepared.sessions, generator=generator, validation=validation, validation_link=link
    )
    written = list(prepared.written)
    try:
        unchanged = report_file.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        unchanged = False
    if not unchanged:
        fileops.write_text(report_file, text)
        written.append(report_file)
    return ReportOutcome(report_file, tuple(written), prepared.removed)


def write_report(
    layout: DatasetLayout,
    status: Sequence[StatusRow],
    *,
    title: str,
    generator: str = "bidsport",
    n_procs: int = 1,
    validation: ValidationResult | None = None,
    validation_file: Path | None = None,
) -> ReportOutcome:
    """Write ``layout.report_file`` and its thumbnails (through :mod:`bidsport.fileops`):
    :func:`prepare_report`, then :func:`write_page`.

    Files whose content would not change are not rewritten; thumbnails of images that
    are gone are removed. Call it only while no participant-level job runs (a session
    imported but not converted is shown as interrupted).
    """
    prepared = prepare_report(layout, status, n_procs)
    return write_page(
        layout,
        prepared,
        title=title,
        generator=generator,
        validation=validation,
        validation_file=validation_file,
    )
