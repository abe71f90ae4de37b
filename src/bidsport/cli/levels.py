"""Run a level and tell the user what happened (the printing half of the CLI)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidsport import __version__
from bidsport.errors import BidsportError, ExitCode, UsageError
from bidsport.fileops import json_text, write_json
from bidsport.layout import DatasetLayout, sub_ses_prefix
from bidsport.options import RunOptions
from bidsport.runreport import build_run_report
from bidsport.status import now_iso  # uptodate.iso_utc: the quick re-run's times too

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # importing the participant level loads pydicom
    from bidsport.participant import ParticipantRun
    from bidsport.reportworkers import ThumbnailPool


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[str], None] | None]:
    """A one-line progress display on a terminal; nothing in logs, pipes or CI."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=0, bar_format="{desc} [{elapsed}]", file=sys.stderr, leave=False) as bar:

        def say(message: str) -> None:
            bar.set_description_str(message)
            bar.refresh()

        yield say


def participant_exit_code(run: ParticipantRun) -> ExitCode:
    """0 all done; 3 some packets/sessions/series failed; 4 nothing could be done (every
    session failed, and none wrote an image); 1 a session failed on a bug (the others were
    still processed)."""
    if any(r.internal for r in run.results):
        return ExitCode.INTERNAL
    failed = sum(1 for r in run.results if r.error)
    import_failures = [p for p in run.problems if p.fatal]
    if not run.results:
        return ExitCode.FAILED
    if failed == len(run.results) and not any(r.images for r in run.results):
        return ExitCode.FAILED
    if failed or import_failures:
        return ExitCode.PARTIAL
    return ExitCode.SUCCESS


def run_participant(
    dicom_dir: Path,
    layout: DatasetLayout,
    opts: RunOptions,
    *,
    quiet: bool = False,
    report_file: Path | None = None,
    argv: Sequence[str] = (),
    shortcut: dict[str, Any] | None = None,
) -> int:
    """Run the participant level and print one line per session and every problem.

    With ``shortcut`` (see :func:`write_shortcut`), a run that leaves every session
    converted is stamped, so that its re-run is answered without loading the pipeline.
    """
    if opts.dry_run:
        from bidsport.dryrun import format_preview, preview

        print(format_preview(preview(dicom_dir, opts, layout)))
        if opts.anonymize:
            from bidsport.anonymize import default_policy, describe_actions, load_policy

            policy = (
                load_policy(
                    opts.anonymize_policy,
                    keep_private=opts.keep_private_tags,
                    allow_burned_in=opts.allow_burned_in,
                )
                if opts.anonymize_policy
                else default_policy(opts.keep_private_tags, allow_burned_in=opts.allow_burned_in)
            )
            print("\nde-identification (--anonymize), element by element:")
            print("\n".join(f"  {line}" for line in describe_actions(policy)))
        return int(ExitCode.SUCCESS)

    from bidsport.participant import run_participant_level
    from bidsport.status import add_expected

    started = now_iso()
    if opts.manifest:
        add_expected(layout, list(opts.manifest))
    with _progress(quiet) as progress:
        run = run_participant_level(dicom_dir, layout, opts, progress=progress)
    code = participant_exit_code(run)
    if report_file is not None:
        report = build_run_report(
            run,
            argv=argv,
            exit_code=int(code),
            started=started,
            finished=now_iso(),
            packets=run.packets,
        )
        write_json(report_file, report)
    for stream, line in outcome_lines(run, quiet=quiet, report_file=report_file):
        print(line, file=sys.stdout if stream == 1 else sys.stderr)
    if shortcut is not None:
        try:
            write_shortcut(run, layout, opts, shortcut, quiet=quiet, argv=argv)
        except (BidsportError, OSError, ValueError) as exc:  # a missed shortcut, not a failure
            log.info("no stamp for a quick re-run written: %s", exc)
    return int(code)


def outcome_lines(
    run: ParticipantRun, *, quiet: bool, report_file: Path | str | None
) -> list[tuple[int, str]]:
    """What the participant level prints, as (stream, line) pairs: 1 stdout, 2 stderr."""
    lines = [(2, f"packet {p.where}: not imported: {p.reason}") for p in run.problems]
    for result in run.results:
        label = sub_ses_prefix(result.subject, result.session)
        if result.skipped:
            status = "already done (skipped)"
        elif result.error:
            status = f"FAILED: {result.error}"
        else:
            status = f"{len(result.images)} images"
        if not quiet:
            lines.append((1, f"{label}: {status}"))
        for problem in result.problems:
            if problem.fatal or not quiet:
                kind = "error" if problem.fatal else "note"
                lines.append((2, f"  {kind}: {problem.where}: {problem.reason}"))
    n_sessions = len(run.results)
    n_failed = sum(1 for r in run.results if r.error)
    if not quiet:
        lines.append(
            (
                1,
                f"{n_sessions - n_failed} of {n_sessions} sessions succeeded "
                f"({run.n_packets} packets in the inbox, "
                f"{sum(1 for p in run.problems if p.fatal)} could not be assigned)",
            )
        )
        if any(r.skipped for r in run.results):
            lines.append(
                (
                    1,
                    "sessions already done were skipped: --overwrite overwrite converts them "
                    "again (after a change of --rules, say)",
                )
            )
        if report_file is not None:
            lines.append((1, f"report: {report_file}"))
    if not run.results:
        lines.append((2, "bidsport: no packet matched the selection"))
    return lines


def write_shortcut(
    run: ParticipantRun,
    layout: DatasetLayout,
    opts: RunOptions,
    shortcut: dict[str, Any],
    *,
    quiet: bool,
    argv: Sequence[str],
) -> None:
    """Stamp this run for :func:`bidsport.uptodate.replay` when a re-run of it would
    only skip every session; otherwise remove an older stamp of the same command.

    ``shortcut`` is what :func:`bidsport.cli.run._shortcut` observed before the run, plus
    its log folder, the ``who`` of its log file names and the configuration it logged. The
    stamped outcome is rendered here, by the functions that render this run's outcome.
    """
    from bidsport import uptodate
    from bidsport.participant import rerun_skips_all, skip_outcome

    where = (shortcut["output_dir"], shortcut["cwd"], shortcut["argv"])
    sessions = [(r.subject, r.session) for r in run.results]
    outputs = [str(layout.status_row_file(sub, ses)) for sub, ses in sessions]
    # the sessions' folders and their datatype folders: an image deleted or added there
    # changes one of them (the full path converts a session whose images are gone again)
    for sub, ses in sessions:
        folder = layout.session_dir(sub, ses)
        outputs += [str(layout.series_table(sub, ses)), str(folder)]
        with contextlib.suppress(OSError):
            outputs += sorted(str(p) for p in folder.iterdir() if p.is_dir())
    seen = uptodate.observe_outputs(outputs)
    table = uptodate.table_rows(str(layout.status_file), [(s, ses or "") for s, ses in sessions])
    if (
        shortcut["log_dir"] is None
        or run.problems
        or not run.results
        or any(r.error for r in run.results)
        or table is None
        or not rerun_skips_all(layout, run)
        or uptodate.observe_outputs(outputs) != seen  # changed while we looked
        or not uptodate.table_holds(table)
    ):
        uptodate.remove_stamp(*where)
        return
    rerun = skip_outcome(run)
    code = participant_exit_code(rerun)
    stamp = {
        "inbox": shortcut["inbox"],
        "inputs": shortcut["inputs"],
        "outputs": seen,
        "table": table,
        # a killed run's scratch folder (the full path removes it); where scratch goes
        "absent": [str(layout.work_dir)] if opts.work_dir is None else [],
        "writable": [str(opts.work_dir or layout.work_dir.parent)],
        "locks": [str(layout.lock_file(sub, ses)) for sub, ses in sessions],
        "finished": now_iso(),
        "log_dir": shortcut["log_dir"],
        "who": shortcut["who"],
        "config": shortcut["config"],
        "lines": outcome_lines(rerun, quiet=quiet, report_file=uptodate.REPORT_SENTINEL),
        "exit_code": int(code),
        "report": json_text(
            build_run_report(
                rerun,
                argv=argv,
                exit_code=int(code),
                started=uptodate.STARTED,
                finished=uptodate.FINISHED,
                packets=run.packets,
            )
        ),
        "log": [uptodate.SKIPPED % sub_ses_prefix(sub, ses) for sub, ses in sessions],
    }
    uptodate.write_stamp(*where, stamp)


def run_group_level(
    dicom_dir: Path,
    layout: DatasetLayout,
    opts: RunOptions,
    args: argparse.Namespace,
    thumbnail_pool: ThumbnailPool | None = None,
) -> int:
    """Write the dataset-level files, refresh the status, validate, report (its thumbnails
    in ``thumbnail_pool``'s workers when given, see :mod:`bidsport.reportworkers`).

    Exit code 6 when the validator found errors, else 3 when sessions of the dataset
    failed or were interrupted (the curation is not complete), else 0.
    """
    from bidsport.convert import dcm2niix_version
    from bidsport.group import format_summary, run_group

    if opts.participant_labels or opts.session_labels:
        log.warning(
            "--participant-label and --session-label select packets at the participant "
            "level: the group level covers the whole dataset"
        )

    result = run_group(
        layout,
        dcm2niix_version=dcm2niix_version(),
        bidsport_version=__version__,
        manifest_pairs=list(opts.manifest),
        validate=not args.skip_validation,
        n_procs=opts.n_procs,
        work_dir=opts.work_dir,
        thumbnail_pool=thumbnail_pool,
    )
    if not args.quiet:
        print(format_summary(result))
    if args.audit_phi:
        _audit(dicom_dir, layout, opts)
    code = ExitCode.SUCCESS
    if result.validation is not None and result.validation.ran and result.validation.errors:
        code = ExitCode.INVALID
    elif result.totals.failed:
        code = ExitCode.PARTIAL
    return int(code)


def _audit(dicom_dir: Path, layout: DatasetLayout, opts: RunOptions) -> None:
    """Look for the source identifiers in every file under OUTPUT_DIR; raise on a hit."""
    from bidsport import privacy
    from bidsport.audit import check_tree

    identifiers = privacy.inbox_identifiers(dicom_dir, opts) if dicom_dir.is_dir() else None
    if opts.anonymize_key is not None or opts.work_dir is not None:
        stored = privacy.stored_identifiers(privacy.set_up(opts, layout.root).store_dir)
        identifiers = stored if identifiers is None else identifiers | stored
    if identifiers is None or identifiers.is_empty():
        raise UsageError(
            "--audit-phi found no source identifiers to look for",
            "give the inbox (DICOM_DIR) the dataset was made from, or the --anonymize-key "
            "of the participant runs",
        )
    check_tree(layout.root, identifiers)
    print(f"PHI audit: no identifier of the source data found under {layout.root}")
