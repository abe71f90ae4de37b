"""``bidsport todicom``: write NIfTI images (results, masks, maps) as DICOM series.

The main CLI dispatches ``bidsport todicom ...`` here: :func:`add_arguments` fills a parser,
:func:`run` does the work and returns the exit code; :func:`main` does both (with logging
to stderr) for ``python -m bidsport.cli.todicom`` and for ``bidsport.cli.run``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bidsport import __version__
from bidsport.cli.logs import setup_logging
from bidsport.errors import BidsportError, ExitCode
from bidsport.todicom.export import KINDS, ExportOptions, ExportResult, export_nifti

log = logging.getLogger(__name__)

DESCRIPTION = """\
Write NIfTI images as new DICOM series in the study of their source series, for viewing
in clinical DICOM viewers next to the source images. Patient, study and frame of reference
come from a reference series (only from it: anonymized data stays anonymized); the
geometry comes from the NIfTI affine; acquisition parameters from the BIDS sidecar.
"""

EPILOG = """\
reference series (first that applies):
  --reference DIR        DICOM files of the source series (one series; see --reference-series-uid)
  --reference IMAGE      a BIDS image bidsport converted (its sidecar names its DICOM files)
  (none)                 the NIfTI's own sidecar: BidsportSourceDicom / SeriesInstanceUID, or
                         for derivatives the images named in SpatialReference/Sources/RawSources

output kinds (--kind):
  auto       SEG for label maps (_dseg, _mask, or integers with few values), else mr
  mr         classic single-frame MR Image series (the most widely readable)
  sc         single-frame Secondary Capture series (with the same geometry)
  enhanced   one Enhanced MR Image multi-frame object
  seg        one DICOM Segmentation (labels from --labels, a BIDS dseg.tsv or the sidecar)

examples:
  bidsport todicom sub-01/anat/sub-01_T1w.nii.gz -o dicom_out
  bidsport todicom derivatives/x/sub-01/anat/sub-01_label-lesion_mask.nii.gz -o out \\
      --reference sub-01/anat/sub-01_FLAIR.nii.gz
  bidsport todicom t1map.nii.gz -o out --reference /data/dicom/series_7 \\
      --series-description "T1 map"
"""


def _series_number(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from exc
    if not 0 <= number < 2**31:
        raise argparse.ArgumentTypeError(f"{value} is not a valid SeriesNumber (0 to 2^31-1)")
    return number


def _uid(value: str) -> str:
    if not value or len(value) > 64 or not all(p.isdigit() for p in value.split(".")):
        raise argparse.ArgumentTypeError(f"{value!r} is not a DICOM UID (digits and dots)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bidsport todicom``."""
    parser.add_argument(
        "nifti",
        nargs="+",
        type=Path,
        metavar="NIFTI",
        help="NIfTI image(s) to write (.nii or .nii.gz, 3D or 4D); a JSON sidecar beside "
        "each is used when present",
    )
    parser.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        required=True,
        metavar="OUT_DIR",
        help="folder for the new series: one subfolder per NIfTI, named after it",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="SERIES",
        help="the source series: a DICOM folder or file, or a BIDS image converted by "
        "bidsport (default: found from each NIfTI's sidecar)",
    )
    parser.add_argument(
        "--reference-series-uid",
        type=_uid,
        metavar="UID",
        help="SeriesInstanceUID of the reference when the --reference folder holds several",
    )
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="auto",
        help="what to write (default: auto = SEG for label maps, classic MR otherwise)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="segment names for --kind seg: a BIDS dseg.tsv (index, name[, color]) or JSON "
        '{"1": "name"} (default: <name>.tsv beside the NIfTI, or an inherited dseg.tsv)',
    )
    parser.add_argument(
        "--series-description",
        metavar="TEXT",
        help="SeriesDescription ({name} is replaced by the BIDS name without sub/ses; "
        "default: {name})",
    )
    parser.add_argument(
        "--series-number",
        type=_series_number,
        metavar="N",
        help="SeriesNumber of the first new series, the next ones count up (default: "
        "1000 + the reference's, counted up past the numbers of the study's other series "
        "in OUT_DIR; a series replaced with --overwrite keeps its number)",
    )
    parser.add_argument(
        "--no-disclaimer",
        dest="disclaimer",
        action="store_false",
        help="do not mark the series NOT FOR CLINICAL USE (SeriesDescription, ImageComments, "
        "ContentQualification RESEARCH)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write even when the NIfTI does not seem to match the reference (other subject, "
        "template space, disjoint field of view)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace output folders that already exist"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only")


def build_parser() -> argparse.ArgumentParser:
    """The standalone parser (``prog`` is ``bidsport todicom``)."""
    parser = argparse.ArgumentParser(
        prog="bidsport todicom",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bidsport {__version__}")
    add_arguments(parser)
    return parser


def _options(args: argparse.Namespace) -> ExportOptions:
    return ExportOptions(
        kind=args.kind,
        reference=args.reference,
        reference_series_uid=args.reference_series_uid,
        series_description=args.series_description,
        series_number=args.series_number,
        disclaimer=args.disclaimer,
        force=args.force,
        overwrite=args.overwrite,
        labels_file=args.labels,
    )


def _report(result: ExportResult) -> str:
    values = "values exact" if result.exact else f"values within ±{result.max_error:.3g}"
    return (
        f"{result.nifti.name}: {len(result.files)} {result.kind} file(s) in {result.output_dir}\n"
        f"  series {result.series_number} {result.series_description!r} "
        f"({result.kind_reason}; {values}; {result.encoding})\n"
        f"  reference: {result.reference}"
        + ("\n  written despite: " + "; ".join(result.forced) if result.forced else "")
    )


def run(args: argparse.Namespace) -> int:
    """Write every NIfTI; print one summary per series. Returns the exit code.

    With one NIfTI its error propagates (the main CLI reports it). With several, each
    failure is reported and the others go on: exit 3 when some failed, 4 when all did.
    With ``--quiet`` only the failures are printed (on stderr).
    """
    quiet = bool(getattr(args, "quiet", False))
    options = _options(args)
    inputs: list[Path] = list(args.nifti)
    failures = 0
    for index, nifti_file in enumerate(inputs):
        try:
            result = export_nifti(nifti_file, args.output_dir, options, index=index)
        except BidsportError as exc:
            if len(inputs) == 1:
                raise
            failures += 1
            print(f"bidsport todicom: {nifti_file}: {exc}", file=sys.stderr)
            continue
        if not quiet:
            print(_report(result))
    if len(inputs) > 1 and not quiet:
        print(f"{len(inputs) - failures} of {len(inputs)} NIfTI images written")
    if failures == 0:
        return int(ExitCode.SUCCESS)
    return int(ExitCode.FAILED if failures == len(inputs) else ExitCode.PARTIAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (without the ``todicom`` word) and run. Errors propagate."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(main())
    except BidsportError as exc:
        print(f"bidsport todicom: error: {exc}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
