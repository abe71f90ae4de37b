"""Turn parsed arguments into a :class:`~bidsport.options.RunOptions` record.

Configuration files (mapping, manifest, rules) are read and validated here, before any
work starts, so a mistake in one of them stops the run at once with a clear message.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bidsport.archive import ExtractLimits
from bidsport.errors import UsageError
from bidsport.ingest import read_manifest, read_mapping
from bidsport.options import RunOptions

if TYPE_CHECKING:
    from bidsport.rules import Rule


def _check_filters(args: argparse.Namespace) -> None:
    """A datatype or provenance both included and excluded is a mistake: say so."""
    for kind in ("datatype", "provenance"):
        both = set(getattr(args, f"include_{kind}") or ()) & set(
            getattr(args, f"exclude_{kind}") or ()
        )
        if both:
            raise UsageError(
                f"--include-{kind} and --exclude-{kind} both name {', '.join(sorted(both))}",
                f"name each {kind} in one of the two options only",
            )


def options_from_args(args: argparse.Namespace) -> RunOptions:
    _check_filters(args)
    if args.anonymize and args.archive in ("copy", "move"):
        raise UsageError(
            f"--archive {args.archive} would put the packets, identifiable as they are, into "
            "OUTPUT_DIR/sourcedata/packets, which --anonymize keeps free of them",
            "use --archive leave (or delete, once the originals are kept elsewhere)",
        )
    return RunOptions(
        participant_labels=tuple(dict.fromkeys(args.participant_label or ())),
        session_labels=tuple(dict.fromkeys(args.session_label or ())),
        pattern=args.pattern,
        nameformat=args.nameformat,
        mapping=read_mapping(args.mapping) if args.mapping else None,
        manifest=tuple(read_manifest(args.manifest)) if args.manifest else (),
        archive=args.archive,
        limits=ExtractLimits(
            max_total_bytes=args.max_extract_size,
            max_members=args.max_extract_members,
            max_ratio=args.max_extract_ratio,
        ),
        symlink=not args.no_symlink,
        keep_derived=args.keep_derived,
        skip_dicom_check=args.skip_dicom_check,
        rules=_rules(args.rules),
        output_format=args.output_format,
        layout=args.layout,
        include_datatypes=frozenset(args.include_datatype) if args.include_datatype else None,
        exclude_datatypes=frozenset(args.exclude_datatype or ()),
        include_provenances=(
            frozenset(args.include_provenance) if args.include_provenance else None
        ),
        exclude_provenances=frozenset(args.exclude_provenance or ()),
        overwrite=args.overwrite,
        compression_level=args.compression_level,
        anonymize=args.anonymize,
        anonymize_key=args.anonymize_key,
        anonymize_policy=args.anonymize_policy,
        keep_private_tags=args.keep_private_tags,
        allow_burned_in=args.allow_burned_in,
        work_dir=args.work_dir.absolute() if args.work_dir else None,
        n_procs=args.n_procs,
        dry_run=args.dry_run,
        progress=not args.quiet,
    )


def _rules(path: Path | None) -> tuple[Rule, ...]:
    """The rules of a ``--rules`` file (the rules module loads only when one is given)."""
    if not path:
        return ()
    from bidsport.rules import load_rules

    return tuple(load_rules(path))
