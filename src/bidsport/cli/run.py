"""``bidsport`` entry point: parse, configure logging, run a level, map errors to exit codes.

This is the only place that prints for the pipeline and turns errors into exit codes.
"""

from __future__ import annotations

import os
import sys

from bidsport import __version__, uptodate

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see bidsport.uptodate)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence  # collections: ~2 ms of a ~20 ms quick re-run
    from contextlib import AbstractContextManager
    from pathlib import Path

    from bidsport.layout import DatasetLayout
    from bidsport.reportworkers import ThumbnailPool


#: the exit code when the reader of the output went away (``| head -1``): a shell's for a
#: command killed by SIGPIPE
BROKEN_PIPE = 141


#: the exit code of a run ended by SIGTERM (a batch system's time limit, ``docker stop``):
#: a shell's for a command killed by it
TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the run ends as after Ctrl-C (its scratch
    folders, which hold the identifiable originals with --anonymize, are removed)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run bidsport; return the exit code (the console script exits with it)."""
    import _signal as signal  # (signal's enums: ~3 ms of a ~20 ms quick re-run)

    pid = os.getpid()

    def terminate(signum: int, _frame: object) -> None:
        if os.getpid() != pid:  # a forked worker process: ends as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (a library caller's): left as it is
        previous = None
    try:
        code = _main(argv)
        sys.stdout.flush()  # (here, not at exit: a reader gone is then said above)
        return code
    except BrokenPipeError:
        return _pipe_gone()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _pipe_gone() -> int:
    """The reader of stdout went away: the rest of the output goes nowhere, quietly (also
    what Python flushes at exit, which would fail again)."""
    import contextlib

    with contextlib.suppress(OSError, ValueError):  # (no descriptor: a captured stdout)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "todicom":
        from bidsport.cli import todicom

        return _guard(lambda: todicom.main(args_list[1:]))

    # a re-run with nothing new is answered before argparse, logging and the pipeline load
    replayed = uptodate.replay(args_list)
    if replayed is not None:
        for stream, line in replayed.lines:
            print(line, file=sys.stdout if stream == 1 else sys.stderr)
        return replayed.exit_code

    from bidsport.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(args_list)
    if not args.dicom_dir.is_dir() and args.analysis_level == "participant":
        parser.error(f"DICOM_DIR {args.dicom_dir} is not an existing folder")
    return _guard(lambda: _run(args, args_list))


def _guard(func) -> int:  # type: ignore[no-untyped-def]
    import logging

    from bidsport.errors import BidsportError, ExitCode

    log = logging.getLogger("bidsport")
    try:
        return int(func())
    except BidsportError as exc:
        print(f"bidsport: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except Terminated:
        print("bidsport: terminated (SIGTERM)", file=sys.stderr)
        return TERMINATED
    except KeyboardInterrupt:
        print("bidsport: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _pipe_gone()
    except Exception:  # the CLI boundary: report a bug with its traceback
        log.exception("internal error")
        print(
            "bidsport: internal error (a bug): please report it with the traceback above",
            file=sys.stderr,
        )
        return int(ExitCode.INTERNAL)


def _shortcut(args: argparse.Namespace, argv: list[str]) -> dict[str, object] | None:
    """What a participant run needs to stamp itself for :func:`bidsport.uptodate.replay`,
    with its inputs observed now, before they are read; None when it cannot be replayed."""
    if (
        args.analysis_level != "participant"
        or args.dry_run
        or args.anonymize
        or args.verbose
        or args.overwrite != "skip"
        or args.list_participants
        or args.regenerate
    ):
        return None
    try:
        inputs = uptodate.observe_inputs(argv, str(args.dicom_dir))
    except OSError:
        return None
    return {
        "cwd": os.getcwd(),
        "argv": argv,
        "inbox": str(args.dicom_dir),
        "output_dir": str(args.output_dir),
        "inputs": inputs,
    }


def _check_outside_inbox(dicom_dir: Path, output_dir: Path, work_dir: Path | None) -> None:
    """Refuse an OUTPUT_DIR or work dir inside DICOM_DIR, before anything is written: the
    inbox is read-only, and the dataset would be read as one of its packets."""
    from bidsport.errors import UsageError
    from bidsport.fileops import is_within

    for what, folder in (("OUTPUT_DIR", output_dir), ("the work dir (-w)", work_dir)):
        if folder is not None and is_within(folder, dicom_dir):
            raise UsageError(
                f"{what} {folder} is inside DICOM_DIR {dicom_dir}, which bidsport only reads "
                "(it would be taken for a packet of the inbox)",
                "put it outside the inbox",
            )


def _check_no_identifiable_imports(layout: DatasetLayout) -> None:
    """Refuse --anonymize on a dataset that runs without it filled: their identifiable
    imports (``sourcedata/raw``) and outputs are in it, and would stay beside the
    anonymized ones."""
    from bidsport.errors import UsageError

    raw = layout.sourcedata_dir / "raw"
    if raw.is_dir() and any(raw.iterdir()):
        raise UsageError(
            f"OUTPUT_DIR {layout.root} holds the identifiable imports of runs without "
            f"--anonymize ({raw}): an anonymized dataset cannot be made in it",
            "give --anonymize runs a new OUTPUT_DIR",
        )


def _check_work_dir_outside(work_dir: Path | None, output_dir: Path) -> None:
    """Refuse, with --anonymize, a work dir inside OUTPUT_DIR: the identifiable packets
    are extracted there, and the logs name them."""
    from bidsport.errors import UsageError
    from bidsport.fileops import is_within

    if work_dir is not None and is_within(work_dir, output_dir):
        raise UsageError(
            f"the work dir (-w) {work_dir} is inside OUTPUT_DIR {output_dir}: with "
            "--anonymize it holds the identifiable packets and logs, which must never be "
            "in the dataset",
            "give -w a folder outside OUTPUT_DIR",
        )


def _check_not_anonymized(layout: DatasetLayout) -> None:
    """Refuse a run without --anonymize on an anonymized dataset
    (:func:`bidsport.privacy.claim_dataset`): it would add identifiable imports, names and
    dates to it (one task of a job array without the flag, say)."""
    from bidsport.errors import UsageError

    if layout.anonymization_file.exists():
        raise UsageError(
            f"OUTPUT_DIR {layout.root} is an anonymized dataset "
            f"({layout.anonymization_file}): a run without --anonymize would add "
            "identifiable data to it",
            "give --anonymize with the dataset's key (--anonymize-key)",
        )


def _check_writable(output_dir: Path) -> None:
    """Refuse an OUTPUT_DIR that cannot be written (or made), before anything is written."""
    from bidsport.errors import UsageError

    folder = output_dir
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent  # the nearest folder that exists: OUTPUT_DIR is made there
    if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
        return
    raise UsageError(
        f"cannot write to OUTPUT_DIR {output_dir}"
        + (f" ({folder} is not writable)" if folder != output_dir else " (not writable)"),
        "make it yours, or writable for you (a folder docker created for a mount belongs to "
        "root: create it before the container runs)",
    )


def _check_has_sessions(layout: DatasetLayout) -> None:
    """Refuse a group level over an OUTPUT_DIR without any session (no ``sub-*`` folder,
    no status record), before anything is written: the participant level comes first."""
    from bidsport.errors import UsageError

    records = layout.status_rows_dir
    if any(layout.root.glob("sub-*")) or (records.is_dir() and any(records.glob("sub-*"))):
        return
    raise UsageError(
        f"OUTPUT_DIR {layout.root} holds no session yet (no sub-* folder, no status record)",
        "run the participant level first (bidsport DICOM_DIR OUTPUT_DIR participant), or "
        "give --manifest for a status table of the sessions expected",
    )


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    with _thumbnail_workers(args) as thumbnail_pool:
        return _run_level(args, argv, thumbnail_pool)


def _thumbnail_workers(args: argparse.Namespace) -> AbstractContextManager[ThumbnailPool | None]:
    """For a group run: the report's thumbnail workers, started before the group level's
    modules load (:mod:`bidsport.reportworkers`); else none."""
    import contextlib

    if args.analysis_level != "group" or args.regenerate or args.list_participants or args.dry_run:
        return contextlib.nullcontext()
    from bidsport.layout import DatasetLayout
    from bidsport.reportworkers import thumbnail_workers

    return thumbnail_workers(DatasetLayout(args.output_dir.absolute()), args.n_procs)


def _run_level(
    args: argparse.Namespace, argv: list[str], thumbnail_pool: ThumbnailPool | None
) -> int:
    import json
    import logging
    from pathlib import Path

    from bidsport.cli.config import options_from_args
    from bidsport.cli.logs import setup_logging
    from bidsport.layout import DatasetLayout

    log = logging.getLogger("bidsport")
    shortcut = _shortcut(args, argv)
    opts = options_from_args(args)

    output_dir: Path = args.output_dir.absolute()
    layout = DatasetLayout(output_dir)
    if args.list_participants:
        from bidsport.participant import plan_sessions

        plan = plan_sessions(args.dicom_dir, opts)
        for subject in sorted({a.subject for a in plan.assignments}):
            print(subject)
        return 0

    _check_outside_inbox(args.dicom_dir, output_dir, opts.work_dir)

    if args.analysis_level == "group" and not args.regenerate and not opts.manifest:
        _check_has_sessions(layout)

    if (args.analysis_level == "group" or args.regenerate) and output_dir.is_dir():
        # before anything is written (the log file included): not while participant-level
        # jobs convert sessions of the dataset
        from bidsport.group import check_no_session_in_progress

        check_no_session_in_progress(layout)

    if args.regenerate:
        from bidsport.status import regenerate_status

        rows = regenerate_status(layout, list(opts.manifest))
        print(f"{layout.status_file}: rebuilt from what is on disk ({len(rows)} rows)")
        return 0

    if not opts.dry_run:
        _check_writable(output_dir)
    if args.analysis_level == "participant":
        if opts.anonymize:
            _check_no_identifiable_imports(layout)
            _check_work_dir_outside(opts.work_dir, output_dir)
        elif not opts.dry_run:
            _check_not_anonymized(layout)

    # logs and the run report name packets and files: with --anonymize, and for the PHI
    # audit (which reads the inbox's packets), they go to the work dir (when one is
    # given), never into OUTPUT_DIR
    private = opts.anonymize or (args.analysis_level == "group" and args.audit_phi)
    log_dir = layout.logs_dir if not private else opts.work_dir and opts.work_dir / "logs"
    log_file = None
    who = "-".join(opts.participant_labels[:3]) or "all"
    if not opts.dry_run and log_dir:
        log_file = log_dir / uptodate.log_file_name(args.analysis_level, who)
    setup_logging(args.verbose, args.quiet, log_file)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config_text = json.dumps(config, default=str)
    if log_file is not None:
        log.info("bidsport %s: bidsport %s", __version__, " ".join(argv))
        log.debug("effective configuration: %s", config_text)

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
            shortcut=shortcut
            and {
                **shortcut,
                "log_dir": log_dir and str(log_dir),
                "who": who,
                "config": config_text,
            },
        )
    from bidsport.cli.levels import run_group_level

    return run_group_level(args.dicom_dir, layout, opts, args, thumbnail_pool)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main"]
