"""The command-line parser (pure: building it does nothing else).

``build_parser()`` is also what the man page and the boutiques descriptor are made from,
and a test checks the descriptor against it.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from bidsport import __version__

DATATYPE_CHOICES = ("anat", "dwi", "func", "fmap", "perf")
PROVENANCE_CHOICES = (
    "raw",
    "synthetic",
    "swi",
    "dti_map",
    "projection",
    "subtraction",
    "localizer",
    "derived",
)

EPILOG = """\
exit codes:
  0  everything selected was done
  1  internal error (a bug: please report it with the log)
  2  bad usage (options, configuration files, missing folders)
  3  partial success: some packets, sessions or series failed, the rest were done
     (group level: sessions of the dataset failed or were interrupted)
  4  nothing could be done
  5  the PHI audit found identifiers in the output (--audit-phi)
  6  the BIDS validator reported errors (group level)
  130  interrupted (Ctrl-C)
  143  terminated (SIGTERM: a batch system's time limit, docker stop); cleaned up as
       after Ctrl-C
  141  the reader of the output went away (bidsport ... | head -1)

examples:
  bidsport /data/inbox /data/bids participant --participant-label 001 002
  bidsport /data/inbox /data/bids participant \\
      --nameformat '(?P<subject_id>[^_]+)_(?P<session_name>.+)'
  bidsport /data/inbox /data/bids group
  bidsport todicom sub-01/anat/sub-01_label-lesion_mask.nii.gz -o lesion_dcm
"""


def _label(prefix: str):  # type: ignore[no-untyped-def]
    def parse(value: str) -> str:
        label = value[len(prefix) :] if value.startswith(prefix) else value
        if not re.fullmatch(r"[A-Za-z0-9]+", label):
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a BIDS label (letters and digits only, optionally "
                f"prefixed with {prefix!r})"
            )
        return label

    return parse


def _existing_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is not an existing folder")
    return path


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value} is not an existing file")
    return path


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"invalid regular expression {value!r}: {exc}") from exc
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from exc
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


_SIZE = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$")


def _size(value: str) -> int:
    match = _SIZE.match(value)
    if not match:
        raise argparse.ArgumentTypeError(f"{value!r} is not a size (e.g. 500G, 2T, 10000M)")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    return int(float(match.group(1)) * factor[match.group(2).lower()])


def build_parser() -> argparse.ArgumentParser:
    """The BIDS-App parser: ``bidsport DICOM_DIR OUTPUT_DIR {participant,group} [options]``."""
    parser = argparse.ArgumentParser(
        prog="bidsport",
        description=(
            "Turn an inbox of raw scanner DICOM packets (folders or archives) into a clean, "
            "optionally anonymized, validated BIDS dataset, with a curation status table. "
            "Run the participant level (in parallel jobs if you like), then the group level. "
            "'bidsport todicom --help' describes the NIfTI to DICOM direction."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dicom_dir",
        metavar="DICOM_DIR",
        type=Path,
        help="the inbox: one entry (folder or archive) per packet; treated as read-only",
    )
    parser.add_argument(
        "output_dir",
        metavar="OUTPUT_DIR",
        type=Path,
        help="root of the BIDS dataset bidsport creates and maintains",
    )
    parser.add_argument(
        "analysis_level",
        choices=("participant", "group"),
        help="participant: import, organize, classify and convert; group: dataset files, "
        "status, validation and report",
    )
    parser.add_argument("--version", action="version", version=f"bidsport {__version__}")

    sel = parser.add_argument_group("selection")
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        action="extend",
        nargs="+",
        metavar="LABEL",
        type=_label("sub-"),
        help="process only these participants (with or without 'sub-'); default: all",
    )
    sel.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        action="extend",
        nargs="+",
        metavar="LABEL",
        type=_label("ses-"),
        help="process only these sessions (with or without 'ses-'); default: all",
    )
    sel.add_argument(
        "--list-participants",
        action="store_true",
        help="print the participant labels found in the inbox (one per line, e.g. for a SLURM "
        "job array) and exit",
    )

    imp = parser.add_argument_group("import")
    imp.add_argument(
        "--pattern",
        type=_regex,
        metavar="REGEX",
        help="regex applied to each inbox entry name; entries that do not match are skipped; "
        "the named group 'packet_name' gives the packet name (default: the entry name "
        "without archive extension)",
    )
    imp.add_argument(
        "--nameformat",
        type=_regex,
        metavar="REGEX",
        help="regex applied to the packet name with named groups 'subject_id' and optional "
        "'session_name' (default: the whole name is the subject, single session)",
    )
    imp.add_argument(
        "--mapping",
        type=_existing_file,
        metavar="FILE",
        help="CSV/TSV with columns packet, subject, session: overrides --nameformat",
    )
    imp.add_argument(
        "--manifest",
        type=_existing_file,
        metavar="FILE",
        help="CSV/TSV with participant_id and session_id of the expected sessions; they appear "
        "in the status table before their data arrive",
    )
    imp.add_argument(
        "--archive",
        choices=("leave", "copy", "move", "delete"),
        default="leave",
        help="what to do with a packet once it was imported and converted successfully "
        "(never before, never on failure); copy/move put it under "
        "OUTPUT_DIR/sourcedata/packets (default: %(default)s)",
    )
    imp.add_argument(
        "--max-extract-size",
        type=_size,
        metavar="SIZE",
        default=_size("200G"),
        help="largest total uncompressed size of one packet archive (default: 200G)",
    )
    imp.add_argument(
        "--max-extract-members",
        type=_positive_int,
        metavar="N",
        default=2_000_000,
        help="largest number of members of one packet archive (default: %(default)s)",
    )
    imp.add_argument(
        "--max-extract-ratio",
        type=_positive_int,
        metavar="N",
        default=1000,
        help="largest compression ratio of an archive member before it is taken for a "
        "decompression bomb (default: %(default)s)",
    )

    org = parser.add_argument_group("organize")
    org.add_argument(
        "--no-symlink",
        action="store_true",
        help="copy files into the organized DICOM folders instead of relative symlinks",
    )
    org.add_argument(
        "--keep-derived",
        action="store_true",
        help="keep derived and secondary-capture images (excluded by default), named with a "
        "rec- label; DTI maps (ADC, FA, trace) stay excluded: BIDS has no raw place for them",
    )
    org.add_argument(
        "--skip-dicom-check",
        action="store_true",
        help="do not exclude derived images, images without pixel data or non-MR modalities "
        "(unreadable files are still skipped)",
    )

    cls = parser.add_argument_group("classify")
    cls.add_argument(
        "--rules",
        type=_existing_file,
        metavar="FILE",
        help="TOML or JSON rules that override or add classification rules "
        "(see rules-example.toml in the package data)",
    )

    conv = parser.add_argument_group("convert and export")
    conv.add_argument(
        "--output-format",
        choices=("nii.gz", "nii", "dcm"),
        default="nii.gz",
        help="nii.gz/nii: convert with dcm2niix; dcm: copy the organized DICOMs into the "
        "same layout without conversion (default: %(default)s)",
    )
    conv.add_argument(
        "--layout",
        choices=("bids", "flat"),
        default="bids",
        help="bids: sub-*/ses-*/<datatype>/; flat: sub-*/ses-*/ without datatype folders "
        "(default: %(default)s)",
    )
    conv.add_argument(
        "--include-datatype",
        nargs="+",
        choices=DATATYPE_CHOICES,
        metavar="DATATYPE",
        help=f"convert only these datatypes ({', '.join(DATATYPE_CHOICES)})",
    )
    conv.add_argument(
        "--exclude-datatype",
        nargs="+",
        choices=DATATYPE_CHOICES,
        metavar="DATATYPE",
        help="do not convert these datatypes",
    )
    conv.add_argument(
        "--include-provenance",
        nargs="+",
        choices=PROVENANCE_CHOICES,
        metavar="PROVENANCE",
        help=f"convert only series of these provenances ({', '.join(PROVENANCE_CHOICES)}); "
        "derived provenances also need --keep-derived",
    )
    conv.add_argument(
        "--exclude-provenance",
        nargs="+",
        choices=PROVENANCE_CHOICES,
        metavar="PROVENANCE",
        help="do not convert series of these provenances",
    )
    conv.add_argument(
        "--overwrite",
        choices=("skip", "clean", "overwrite"),
        default="skip",
        help="skip: leave finished sessions alone (one that got a new packet is converted "
        "again, keeping its names); clean: remove the session's folder and tables first; "
        "overwrite: convert again, naming every series anew (default: %(default)s)",
    )
    conv.add_argument(
        "--compression-level",
        type=int,
        choices=range(1, 10),
        default=2,
        metavar="1-9",
        help="gzip level of .nii.gz outputs: 1-3 are gzipped by bidsport with ISA-L (fast), "
        "4-9 by dcm2niix (smaller, several times slower) (default: %(default)s)",
    )

    anon = parser.add_argument_group("anonymize")
    anon.add_argument(
        "--anonymize",
        action="store_true",
        help="de-identify every DICOM that enters OUTPUT_DIR (dicognito, consistent "
        "pseudonyms and date shifts per subject); extraction happens in the work dir",
    )
    anon.add_argument(
        "--anonymize-key",
        type=Path,
        metavar="FILE",
        help="project key file for consistent pseudonyms across runs; created if missing; "
        "must be outside OUTPUT_DIR",
    )
    anon.add_argument(
        "--anonymize-policy",
        type=_existing_file,
        metavar="FILE",
        help="TOML policy that adds or relaxes de-identification rules",
    )
    anon.add_argument(
        "--keep-private-tags",
        action="store_true",
        help="keep the private tags dcm2niix needs (diffusion, slice timing, phase encoding)",
    )
    anon.add_argument(
        "--allow-burned-in",
        action="store_true",
        help="keep images flagged BurnedInAnnotation=YES and screen saves when anonymizing",
    )
    anon.add_argument(
        "--audit-phi",
        action="store_true",
        help="scan every file under OUTPUT_DIR for the source identifiers and exit with "
        "code 5 on any hit",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="scratch folder (conversion, where images are written uncompressed first; packet "
        "extraction with --anonymize; the BIDS validator's caches at the group level): put "
        "it on local disk when OUTPUT_DIR is on network "
        "storage; default: a temporary folder removed afterwards, inside "
        "OUTPUT_DIR/sourcedata/bidsport/work (with --anonymize: in the system temporary "
        "folder, so nothing identifiable enters OUTPUT_DIR)",
    )
    run.add_argument(
        "--n-procs",
        "--nprocs",
        dest="n_procs",
        type=_positive_int,
        metavar="N",
        default=os.cpu_count() or 1,
        help="parallel processes (default: all cores)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (packets to sessions, series to BIDS names, exclusions and "
        "why) and write nothing",
    )
    run.add_argument(
        "--regenerate",
        action="store_true",
        help="rebuild sourcedata/status.tsv from the session records and what is on disk "
        "(rows of sessions with neither are dropped; manifest rows stay)",
    )
    run.add_argument(
        "--skip-validation",
        action="store_true",
        help="group level: do not run the BIDS validator",
    )
    verbosity = run.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="only errors; no progress bars"
    )
    return parser
