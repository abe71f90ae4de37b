"""Run a level and tell the user what happened (the printing half of the CLI)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bidsport import __version__
from bidsport.errors import ExitCode
from bidsport.layout import DatasetLayout, sub_ses_prefix
from bidsport.options import RunOptions


def _progress(quiet: bool):  # type: ignore[no-untyped-def]
    if quiet or not sys.stderr.isatty():
        return None
    return lambda message: print(f"  {message}", file=sys.stderr)


def run_participant(
    dicom_dir: Path, layout: DatasetLayout, opts: RunOptions, *, quiet: bool = False
) -> int:
    """Run the participant level and print one line per session and every problem."""
    if opts.dry_run:
        from bidsport.dryrun import format_preview, preview

        print(format_preview(preview(dicom_dir, opts)))
        return int(ExitCode.SUCCESS)

    from bidsport.participant import run_participant_level
    from bidsport.status import add_expected

    if opts.manifest:
        add_expected(layout, list(opts.manifest))
    run = run_participant_level(dicom_dir, layout, opts, progress=_progress(quiet))
    out = sys.stdout
    for problem in run.problems:
        print(f"skipped {problem.where}: {problem.reason}", file=sys.stderr)
    n_failed = 0
    for result in run.results:
        label = sub_ses_prefix(result.subject, result.session)
        if result.skipped:
            status = "already done (skipped)"
        elif result.error:
            status = f"FAILED: {result.error}"
            n_failed += 1
        else:
            status = f"{len(result.images)} images"
        if not quiet:
            print(f"{label}: {status}", file=out)
        for problem in result.problems:
            if problem.fatal or not quiet:
                kind = "error" if problem.fatal else "note"
                print(f"  {kind}: {problem.where}: {problem.reason}", file=sys.stderr)
    n_sessions = len(run.results)
    import_failures = [p for p in run.problems if p.fatal]
    if not quiet:
        print(
            f"{n_sessions - n_failed} of {n_sessions} sessions succeeded "
            f"({run.n_packets} packets in the inbox, {len(import_failures)} could not be "
            "assigned)",
            file=out,
        )
    if n_sessions == 0 and not import_failures:
        print("bidsport: no packet matched the selection", file=sys.stderr)
        return int(ExitCode.FAILED)
    if n_failed == n_sessions and n_sessions:
        return int(ExitCode.FAILED)
    if n_failed or import_failures:
        return int(ExitCode.PARTIAL)
    return int(ExitCode.SUCCESS)


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
    )
    if not args.quiet:
        print(format_summary(result))
    code = ExitCode.SUCCESS
    if result.validation is not None and result.validation.ran and result.validation.errors:
        code = ExitCode.INVALID
    return int(code)
