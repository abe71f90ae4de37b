"""NIfTI → new DICOM series in the reference's study: the ``bidsport todicom`` workflow.

:func:`export_nifti` reads one NIfTI (and its sidecar), finds its reference series, checks
that it belongs there, decides the output kind, and writes the series into
``OUT_DIR/<name of the NIfTI>/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from bidsport import __version__, fileops
from bidsport.errors import OutputError, ReferenceError_, UsageError
from bidsport.todicom import writers
from bidsport.todicom.geometry import StackGeometry, stack_geometry, to_frames
from bidsport.todicom.nifti import NiftiInput, NiftiValues, read_nifti, read_values
from bidsport.todicom.pixels import encode_values, label_values
from bidsport.todicom.reference import (
    ReferenceSeries,
    find_dataset_root,
    grid_matches,
    match_problems,
    reference_slice_spacing,
    reference_slice_thickness,
    resolve_reference,
    voxel_order_for,
)
from bidsport.todicom.sidecar import (
    IMAGE_TYPE_BY_SUFFIX,
    Label,
    dicom_attributes,
    find_label_table,
    read_json,
    read_label_table,
    series_description,
    strip_extension,
)

log = logging.getLogger(__name__)

KINDS = ("auto", "mr", "sc", "enhanced", "seg")
#: BIDS suffixes of label images (written as SEG by ``--kind auto``).
LABEL_SUFFIXES = frozenset({"dseg", "mask"})
#: Suffixes never written as SEG by ``--kind auto`` (continuous maps that may look discrete).
NOT_LABEL_SUFFIXES = frozenset({"probseg", "T1w", "T2w", "PDw", "FLAIR", "bold", "dwi", "sbref"})
#: A 3D integer image with at most this many distinct non-zero values is a label map (auto).
MAX_AUTO_LABELS = 64
#: Most segments written in one SEG (label maps with more values are not label maps).
MAX_SEGMENTS = 1000


@dataclass(frozen=True)
class ExportOptions:
    """What the user chose (the CLI's options, as library arguments)."""

    kind: str = "auto"
    reference: Path | None = None
    reference_series_uid: str | None = None
    series_description: str | None = None  #: text; ``{name}`` is the BIDS-derived name
    series_number: int | None = None
    disclaimer: bool = True  #: mark the series NOT FOR CLINICAL USE
    force: bool = False  #: write even when the NIfTI does not match the reference
    overwrite: bool = False  #: replace an existing output folder
    labels_file: Path | None = None


@dataclass(frozen=True)
class ExportResult:
    """The series written for one NIfTI."""

    nifti: Path
    output_dir: Path
    files: tuple[Path, ...]
    kind: str  #: "mr", "sc", "enhanced" or "seg"
    kind_reason: str
    series_uid: str
    series_number: int
    series_description: str
    reference_series_uid: str
    reference: str  #: the reference, described (series number, description, how found)
    study_uid: str
    frame_of_reference_uid: str
    patient_id: str
    exact: bool  #: voxel values stored without loss
    max_error: float  #: largest absolute error of the stored values
    encoding: str  #: how values were stored (one line)
    same_grid: bool  #: the NIfTI's grid is the reference's, frame for frame
    forced: tuple[str, ...]  #: mismatches overridden by ``force``
    seconds: float


def choose_kind(
    requested: str, nifti: NiftiInput, labels: tuple[int, ...] | None, has_table: bool
) -> tuple[str, str]:
    """(kind, reason). ``auto``: SEG for label maps, classic MR for everything else."""
    if requested not in KINDS:
        raise UsageError(f"unknown output kind {requested!r} (choose from {', '.join(KINDS)})")
    suffix = nifti.bids.suffix
    if requested == "seg":
        if nifti.n_volumes > 1:
            raise UsageError(
                f"{nifti.name} has {nifti.n_volumes} volumes: a DICOM Segmentation holds one 3D "
                "label map",
                "split the volumes, or use --kind mr",
            )
        if labels is None:
            raise UsageError(
                f"{nifti.name} is not a label map (values are not non-negative integers with at "
                f"most {MAX_SEGMENTS} distinct labels)",
                "use --kind mr for continuous images",
            )
        return "seg", "requested"
    if requested != "auto":
        return requested, "requested"
    if nifti.n_volumes == 1 and suffix not in NOT_LABEL_SUFFIXES:
        if suffix in LABEL_SUFFIXES and labels is not None:
            return "seg", f"BIDS suffix _{suffix}"
        if suffix in LABEL_SUFFIXES:  # a soft mask (0 to 1), or a dseg of wrong values
            log.warning(
                "%s: a _%s image whose values are not non-negative integers (at most %d "
                "labels): written as an MR image, not a segmentation (which would round them)",
                nifti.name,
                suffix,
                MAX_SEGMENTS,
            )
            return "mr", f"BIDS suffix _{suffix}, but values that are not labels"
        if labels is not None and has_table:
            return "seg", "integer image with a label table"
        if labels is not None and len(labels) <= MAX_AUTO_LABELS and nifti.dtype.kind in "iub":
            return "seg", f"integer image with {len(labels)} distinct labels"
    return "mr", "scalar image"


#: Largest difference (mm) between two slice spacings taken as the same (dcm2niix affines are
#: float32: 8 mm comes back as 7.999998826).
SPACING_TOLERANCE_MM = 0.01


def choose_slice_thickness(
    nifti: NiftiInput, ref: ReferenceSeries, stack: StackGeometry
) -> tuple[float, str]:
    """(SliceThickness for the new frames, where it comes from).

    The thickness of a slice is a property of the acquisition, not of the grid: a 6 mm slice
    acquired every 8 mm (a 2 mm gap) is still 6 mm thick in any image kept on those slices.
    When the new frames lie along the reference's slices (same slice direction and spacing:
    the reference's own grid, or one resampled in plane only), the thickness is the NIfTI
    sidecar's SliceThickness, else the reference's. On any other grid (resampled across the
    slices, reformatted to another orientation, one plane of another orientation) the
    thickness of the new slices is unknown: the slice spacing is written, as for contiguous
    slices (SpacingBetweenSlices always holds the spacing).
    """
    spacing = stack.slice_spacing
    ref_spacing = reference_slice_spacing(ref)
    if ref.geometry is None or ref_spacing is None:
        return spacing, "the slice spacing (the reference's slice spacing is unknown)"
    parallel = abs(float(np.dot(stack.normal, ref.geometry.slice_direction))) > 1 - 1e-4
    if not parallel or abs(spacing - ref_spacing) > SPACING_TOLERANCE_MM:
        return spacing, "the slice spacing (not on the reference's slices)"
    side = (nifti.sidecar or {}).get("SliceThickness")
    if isinstance(side, (int, float)) and not isinstance(side, bool) and 0 < side < 1000:
        return float(side), "the sidecar's SliceThickness"
    thickness = reference_slice_thickness(ref)
    if thickness is not None:
        return thickness, "the reference's SliceThickness"
    return spacing, "the slice spacing (the reference has no SliceThickness)"


def _label_table(nifti: NiftiInput, options: ExportOptions) -> dict[int, Label]:
    if options.labels_file is not None:
        return read_label_table(options.labels_file)
    if nifti.sidecar and isinstance(nifti.sidecar.get("Labels"), (dict, list)):
        assert nifti.sidecar_path is not None
        return read_label_table(nifti.sidecar_path)
    found = find_label_table(nifti.path, find_dataset_root(nifti.path.parent))
    if found is not None:
        log.info("%s: labels from %s", nifti.name, found)
        return read_label_table(found)
    return {}


def _generator_name(nifti: NiftiInput) -> str:
    """Name of the pipeline that made the image (derivative dataset_description), if known."""
    root = find_dataset_root(nifti.path.parent)
    if root is None:
        return "unknown"
    generated = read_json(root / "dataset_description.json").get("GeneratedBy")
    if isinstance(generated, list) and generated and isinstance(generated[0], dict):
        name = generated[0].get("Name")
        if isinstance(name, str) and name:
            return name
    return "unknown"


def _description(nifti: NiftiInput, options: ExportOptions, disclaimer: bool) -> str:
    name = series_description(nifti.name)
    text = (options.series_description or "{name}").replace("{name}", name)
    text = writers.ascii_text(text, 64)
    if disclaimer:
        marker = " " + writers.DISCLAIMER
        text = text[: 64 - len(marker)].rstrip() + marker
    return text.strip()


def _acquisition(nifti: NiftiInput, ref: ReferenceSeries) -> dict[str, Any]:
    attrs = dicom_attributes(nifti.sidecar or {})
    if "MRAcquisitionType" not in attrs and ref.header.get("MRAcquisitionType") in ("2D", "3D"):
        attrs["MRAcquisitionType"] = str(ref.header.MRAcquisitionType)
    return attrs


def _output_folder(out_dir: Path, nifti: NiftiInput, overwrite: bool) -> Path:
    folder = out_dir / strip_extension(nifti.name)
    if folder.is_symlink() and not overwrite:  # (it would be written through, elsewhere)
        raise OutputError(
            f"output folder {folder} is a symbolic link: the series would be written where "
            "it points, outside the output folder",
            "remove the link (or use --overwrite, which removes it), or choose another -o",
        )
    if folder.is_symlink() or (folder.exists() and (not folder.is_dir() or any(folder.iterdir()))):
        if not overwrite:
            raise OutputError(
                f"output folder {folder} already exists",
                "use --overwrite to replace it, or choose another -o",
            )
        fileops.remove_tree(folder, out_dir)
    return folder


def series_numbers_in(out_dir: Path, study_uid: str) -> dict[Path, int]:
    """The SeriesNumber of each folder of ``out_dir`` that holds a series of the study
    ``study_uid`` (read from the folder's first ``.dcm`` file; unreadable ones are skipped)."""
    numbers: dict[Path, int] = {}
    if not out_dir.is_dir():
        return numbers
    for folder in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        first = min(folder.glob("*.dcm"), default=None)
        if first is None:
            continue
        try:
            ds = pydicom.dcmread(
                first, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesNumber"]
            )
            if str(ds.get("StudyInstanceUID", "")) == study_uid and ds.get("SeriesNumber"):
                numbers[folder] = int(ds.SeriesNumber)
        except (InvalidDicomError, OSError, ValueError, TypeError, EOFError) as exc:
            log.debug("%s: no series number read: %s", first, exc)
    return numbers


def choose_series_number(
    explicit: int | None,
    reference_number: object,
    index: int,
    folder: Path,
    taken: Mapping[Path, int],
) -> int:
    """The SeriesNumber of a new series (pure).

    ``explicit`` (``--series-number``) + ``index`` (the file's place in the command) when
    given. Otherwise the number of the series ``folder`` held when it is being replaced (a
    re-export keeps its number), else 1000 + the reference's, counted up past the numbers
    ``taken`` by the other series of the study in the output folder
    (:func:`series_numbers_in`, which holds those the same command wrote before): two
    exports of one reference get two numbers, whatever else the command exports.

    >>> choose_series_number(None, "2", 5, Path("b"), {Path("a"): 1002})
    1003
    >>> choose_series_number(None, "2", 0, Path("a"), {Path("a"): 1002})
    1002
    >>> choose_series_number(77, "2", 1, Path("b"), {Path("a"): 78})
    78
    """
    if explicit is not None:
        return explicit + index
    if folder in taken:
        return taken[folder]
    text = str(reference_number or "").strip()
    number = (int(text) if text.lstrip("-").isdigit() else 0) + 1000
    used = set(taken.values())
    while number in used:
        number += 1
    return number


def prepare(
    nifti_file: Path, options: ExportOptions
) -> tuple[NiftiInput, ReferenceSeries, tuple[str, ...]]:
    """Read the NIfTI, find its reference and check they match (raises unless forced)."""
    nifti = read_nifti(nifti_file)
    ref = resolve_reference(nifti, options.reference, options.reference_series_uid)
    log.info("%s: reference %s", nifti.name, ref.describe())
    problems = match_problems(nifti, ref)
    if problems and not options.force:
        raise ReferenceError_(
            f"{nifti.name} does not match its reference {ref.describe()}: " + "; ".join(problems),
            "check that this is the right reference; --force writes the series anyway",
        )
    for problem in problems:
        log.warning("%s (written anyway: --force)", problem)
    return nifti, ref, problems


def export_nifti(
    nifti_file: Path, out_dir: Path, options: ExportOptions = ExportOptions(), *, index: int = 0
) -> ExportResult:
    """Write ``nifti_file`` as a new DICOM series under ``out_dir``; ``index`` numbers series."""
    start = time.perf_counter()
    nifti, ref, problems = prepare(nifti_file, options)
    values: NiftiValues = read_values(nifti)
    table = _label_table(nifti, options) if options.kind in ("auto", "seg") else {}
    labels = (
        label_values(values.stored, values.slope, values.intercept, limit=MAX_SEGMENTS)
        if options.kind in ("auto", "seg") and nifti.n_volumes == 1
        else None
    )
    kind, reason = choose_kind(options.kind, nifti, labels, bool(table))
    taken = series_numbers_in(out_dir, ref.study_uid)  # before a folder is replaced
    folder = _output_folder(out_dir, nifti, options.overwrite)

    order = voxel_order_for(nifti, ref.geometry)
    stack = stack_geometry(nifti.affine, nifti.spatial_shape, order)
    on_grid = grid_matches(nifti, ref.geometry)
    series_number = choose_series_number(
        options.series_number, ref.header.get("SeriesNumber"), index, folder, taken
    )
    description = _description(nifti, options, options.disclaimer)
    derivation = f"{nifti.name} converted from NIfTI by bidsport {__version__} (todicom)"
    comments = (
        f"{writers.DISCLAIMER}. Research image derived from {nifti.name} by bidsport."
        if options.disclaimer
        else f"Derived from {nifti.name} by bidsport."
    )
    thickness, thickness_source = choose_slice_thickness(nifti, ref, stack)
    log.debug("%s: SliceThickness %.6g mm from %s", nifti.name, thickness, thickness_source)
    plan_args: dict[str, Any] = dict(
        reference=ref,
        geometry=stack,
        n_volumes=nifti.n_volumes,
        series_uid=generate_uid(),
        series_number=series_number,
        series_description=description,
        image_type3=IMAGE_TYPE_BY_SUFFIX.get(nifti.bids.suffix or "", "OTHER"),
        research=options.disclaimer,
        acquisition=_acquisition(nifti, ref),
        source_name=nifti.name,
        slice_thickness=thickness,
    )
    if kind == "seg":
        volume = values.stored.reshape(nifti.spatial_shape)
        label_map = np.rint(volume.astype(np.float64) * values.slope + values.intercept)
        label_map = np.clip(label_map, 0, None).astype(np.int64)
        found = labels or ()
        if nifti.bids.suffix == "mask":
            found = found or (1,)
            if not table:  # a mask is named by its label- (or desc-) entity
                name = nifti.bids.get("label") or nifti.bids.get("desc") or "mask"
                table = {v: Label(v, name if len(found) == 1 else f"{name} {v}") for v in found}
        plan = writers.SeriesPlan(derivation=derivation, comments=comments, **plan_args)
        items = writers.segmentation_dataset(
            plan, to_frames(label_map, order), found, table, algorithm=_generator_name(nifti)
        )
        exact, max_error, note = True, 0.0, f"{len(found)} segments"
    else:
        encoding = encode_values(values.stored, values.slope, values.intercept, nifti.name)
        if not encoding.exact:
            log.info("%s: %s", nifti.name, encoding.note)
            derivation += f"; {encoding.note}"
        plan = writers.SeriesPlan(derivation=derivation, comments=comments, **plan_args)
        frames = to_frames(encoding.stored, order)
        if kind == "enhanced":
            items = writers.enhanced_dataset(plan, frames, encoding, suffix=nifti.bids.suffix)
        else:
            items = writers.classic_datasets(plan, frames, encoding, secondary_capture=kind == "sc")
        exact, max_error, note = encoding.exact, encoding.max_error, encoding.note
    paths = writers.save_datasets(items, folder)
    seconds = time.perf_counter() - start
    log.info(
        "%s: wrote %d %s file(s) to %s in %.2f s", nifti.name, len(paths), kind, folder, seconds
    )
    return ExportResult(
        nifti=nifti.path,
        output_dir=folder,
        files=tuple(paths),
        kind=kind,
        kind_reason=reason,
        series_uid=plan.series_uid,
        series_number=series_number,
        series_description=description,
        reference_series_uid=ref.series_uid,
        reference=ref.describe(),
        study_uid=ref.study_uid,
        frame_of_reference_uid=ref.frame_of_reference_uid,
        patient_id=str(ref.header.get("PatientID", "")),
        exact=exact,
        max_error=max_error,
        encoding=note,
        same_grid=on_grid,
        forced=problems,
        seconds=seconds,
    )
