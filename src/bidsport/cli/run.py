"""``bidsport`` entry point: parse, configure logging, run a level, map errors to exit codes.

This is the only place that prints for the pipeline and turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from bidsport import __version__
from bidsport.cli.logs import setup_logging
from bidsport.errors import BidsportError, ExitCode, UsageError

log = logging.getLogger("bidsport")


def main(argv: Sequence[str] | None = None) -> int:
    """Run bidsport; return the exit code (the console script exits with it)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "todicom":
        from bidsport.cli import todicom

        return _guard(lambda: todicom.main(args_list[1:]))

    from bidsport.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(args_list)
    if not args.dicom_dir.is_dir() and args.analysis_level == "participant":
        parser.error(f"DICOM_DIR {args.dicom_dir} is not an existing folder")
    return _guard(lambda: _run(args, args_list))


def _guard(func) -> int:  # type: ignore[no-untyped-def]
    try:
        return int(func())
    except BidsportError as exc:
        print(f"bidsport: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("bidsport: interrupted", file=sys.stderr)
        return 130
    except Exception:  # the CLI boundary: report a bug with its traceback
        log.exception("internal error")
        print(
            "bidsport: internal error (a bug): please report it with the traceback above",
            file=sys.stderr,
        )
        return int(ExitCode.INTERNAL)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from bidsport.cli.config import options_from_args

    opts = options_from_args(args)
    from bidsport.layout import DatasetLayout

    output_dir: Path = args.output_dir.absolute()
    layout = DatasetLayout(output_dir)
    if args.list_participants:
        from bidsport.participant import plan_sessions

        plan = plan_sessions(args.dicom_dir, opts)
        for subject in sorted({a.subject for a in plan.assignments}):
            print(subject)
        return 0

    if args.regenerate:
        from bidsport.status import regenerate_status

        rows = regenerate_status(layout, list(opts.manifest))
        print(f"{layout.status_file}: rebuilt from what is on disk ({len(rows)} rows)")
        return 0

    # logs and the run report name packets and files: with --anonymize they go to the work
    # dir (when one is given), never into OUTPUT_DIR
    log_dir = layout.logs_dir if not opts.anonymize else opts.work_dir and opts.work_dir / "logs"
    log_file = None
    if not opts.dry_run and log_dir:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        who = "-".join(opts.participant_labels[:3]) or "all"
        log_file = log_dir / (
            f"{args.analysis_level}_{who}_{stamp}_{os.uname().nodename}_{os.getpid()}.log"
        )
    setup_logging(args.verbose, args.quiet, log_file)
    if log_file is not None:
        log.info("bidsport %s: bidsport %s", __version__, " ".join(argv))
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        log.debug("effective configuration: %s", json.dumps(config, default=str))

    if args.analysis_level == "participant":
        from bidsport.cli.levels import run_participant

        report_file = log_file.with_name(log_file.stem + "_report.json") if log_file else None
        return run_participant(
            args.dicom_dir,
            layout,
            opts,
            quiet=args.quiet,
            report_file=report_file,
            argv=["bidsport", *argv],
        )
    from bidsport.cli.levels import run_group_level

    return run_group_level(args.dicom_dir, layout, opts, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["UsageError", "main"]
