"""Run a level and tell the user what happened (the printing half of the CLI)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from bidsport import __version__
from bidsport.errors import ExitCode, UsageError
from bidsport.fileops import write_json
from bidsport.layout import DatasetLayout, sub_ses_prefix
from bidsport.options import RunOptions

if TYPE_CHECKING:  # importing the participant level loads pydicom
    from bidsport.participant import ParticipantRun


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    """0 all done; 3 some packets/sessions/series failed; 4 nothing could be done;
    1 a session failed on a bug (the others were still processed)."""
    if any(r.internal for r in run.results):
        return ExitCode.INTERNAL
    failed = sum(1 for r in run.results if r.error)
    import_failures = [p for p in run.problems if p.fatal]
    if not run.results:
        return ExitCode.FAILED
    if failed == len(run.results):
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
) -> int:
    """Run the participant level and print one line per session and every problem."""
    if opts.dry_run:
        from bidsport.dryrun import format_preview, preview

        print(format_preview(preview(dicom_dir, opts)))
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

    started = _now()
    if opts.manifest:
        add_expected(layout, list(opts.manifest))
    with _progress(quiet) as progress:
        run = run_participant_level(dicom_dir, layout, opts, progress=progress)
    code = participant_exit_code(run)
    if report_file is not None:
        from bidsport.runreport import build_run_report

        report = build_run_report(
            run,
            argv=argv,
            exit_code=int(code),
            started=started,
            finished=_now(),
            packets=run.packets,
        )
        write_json(report_file, report)
    for problem in run.problems:
        print(f"packet {problem.where}: not imported: {problem.reason}", file=sys.stderr)
    for result in run.results:
        label = sub_ses_prefix(result.subject, result.session)
        if result.skipped:
            status = "already done (skipped)"
        elif result.error:
            status = f"FAILED: {result.error}"
        else:
            status = f"{len(result.images)} images"
        if not quiet:
            print(f"{label}: {status}")
        for problem in result.problems:
            if problem.fatal or not quiet:
                kind = "error" if problem.fatal else "note"
                print(f"  {kind}: {problem.where}: {problem.reason}", file=sys.stderr)
    n_sessions = len(run.results)
    n_failed = sum(1 for r in run.results if r.error)
    if not quiet:
        print(
            f"{n_sessions - n_failed} of {n_sessions} sessions succeeded "
            f"({run.n_packets} packets in the inbox, "
            f"{sum(1 for p in run.problems if p.fatal)} could not be assigned)"
        )
        if report_file is not None:
            print(f"report: {report_file}")
    if not run.results:
        print("bidsport: no packet matched the selection", file=sys.stderr)
    return int(code)


def run_group_level(
    dicom_dir: Path, layout: DatasetLayout, opts: RunOptions, args: argparse.Namespace
) -> int:
    """Write the dataset-level files, refresh the status, validate, report."""
    from bidsport.convert import dcm2niix_version
    from bidsport.group import format_summary, run_group

    result = run_group(
        layout,
        dcm2niix_version=dcm2niix_version(),
        bidsport_version=__version__,
        manifest_pairs=list(opts.manifest),
        validate=not args.skip_validation,
        n_procs=opts.n_procs,
    )
    if not args.quiet:
        print(format_summary(result))
    if args.audit_phi:
        _audit(dicom_dir, layout, opts)
    code = ExitCode.SUCCESS
    if result.validation is not None and result.validation.ran and result.validation.errors:
        code = ExitCode.INVALID
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
