"""Find and read the reference DICOM series of a NIfTI (identity, study, frame of reference).

The reference is, in this order of preference:

1. ``--reference PATH``: a DICOM folder (searched recursively; one series is chosen, see
   :func:`choose_series`), one DICOM file (its series, in its folder), or a BIDS image that
   bidsport converted (then as in 2.);
2. the NIfTI's own sidecar: ``BidsportSourceDicom`` (paths relative to the dataset root:
   a folder above holding ``dataset_description.json``, else, before bidsport's group level
   has written one, the folder above ``sub-<s>/[ses-<t>/]<datatype>/`` or one holding
   ``sourcedata/dicom``, see :func:`candidate_roots`); else its ``SeriesInstanceUID``
   looked up in ``sourcedata/dicom/sub-<s>[/ses-<t>]`` of those roots;
3. for a derivative, the images its sidecar names in ``SpatialReference``, ``Sources`` or
   ``RawSources`` (BIDS URIs ``bids:<dataset>:<path>``, resolved with ``DatasetLinks``),
   followed as in 2.

Only headers are read (no pixel data).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from bidsport.errors import DicomReadError, ReferenceError_
from bidsport.todicom.geometry import (
    FloatArray,
    StackGeometry,
    VoxelOrder,
    affine_from_dicom,
    box_overlap,
    choose_voxel_order,
    lps_to_ras,
    same_grid,
    single_plane_axis,
    single_plane_order,
    stack_geometry,
    vec3,
    world_corners,
)
from bidsport.todicom.nifti import NiftiInput
from bidsport.todicom.sidecar import (
    NIFTI_EXTENSIONS,
    parse_bids_name,
    read_json,
    read_sidecar,
)

log = logging.getLogger(__name__)

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
#: Keys of a derivative's sidecar that name the images it comes from (BIDS derivatives).
SOURCE_KEYS = ("SpatialReference", "Sources", "RawSources")
#: Templates (BIDS "space-" labels) whose coordinates are not a scanner frame of reference.
TEMPLATE_PREFIXES = (
    "MNI",
    "Talairach",
    "ICBM",
    "IXI549",
    "OASIS",
    "NIHPD",
    "UNCInfant",
    "fsaverage",
    "fsLR",
    "Colin27",
    "MNIColin27",
    "MNIInfant",
    "MNIPediatric",
)
#: ImageType values of mosaics (several slices tiled in one image: Siemens, UIH).
MOSAIC_TYPES = frozenset({"MOSAIC", "VFRAME"})
#: Smallest overlap (fraction of the smaller box) between a NIfTI and its reference.
MIN_OVERLAP = 0.5


@dataclass(frozen=True)
class ReferenceGeometry:
    """Where the reference series lies (LPS unit vectors, RAS corners)."""

    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    slice_direction: tuple[float, float, float]  #: the way instance numbers advance
    corners: tuple[tuple[float, float, float], ...]  #: RAS corners of every frame's slab
    stack: StackGeometry | None  #: one volume's frames, sorted along slice_direction


@dataclass(frozen=True, eq=False)
class ReferenceSeries:
    """One source DICOM series: its files and headers (sorted by instance number)."""

    series_uid: str
    files: tuple[Path, ...]
    datasets: tuple[Dataset, ...]  #: headers without pixel data, same order as ``files``
    geometry: ReferenceGeometry | None  #: None when the frames are not one plane orientation
    found_by: str  #: how it was found, for messages
    subject: str | None = None  #: BIDS subject label of the place it was found, if any
    session: str | None = None

    @property
    def header(self) -> Dataset:
        return self.datasets[0]

    @property
    def study_uid(self) -> str:
        return str(self.header.StudyInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.header.FrameOfReferenceUID)

    def describe(self) -> str:
        h = self.header
        return (
            f"series {h.get('SeriesNumber', '?')} {str(h.get('SeriesDescription', '')).strip()!r}"
            f" ({len(self.files)} files, {self.found_by})"
        )


# --------------------------------------------------------------------------- headers


def _read_header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _is_image_series_member(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("MediaStorageSOPClassUID") == DICOMDIR_CLASS:
        return False
    return "SeriesInstanceUID" in ds and "StudyInstanceUID" in ds and "Rows" in ds


def _instance_key(item: tuple[Path, Dataset]) -> tuple[int, str]:
    number = item[1].get("InstanceNumber")
    try:
        n = int(number) if number not in (None, "") else 0
    except (TypeError, ValueError):
        n = 0
    return (n, str(item[0]))


def scan_folder(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """DICOM image headers below ``folder``, grouped by SeriesInstanceUID (others skipped)."""
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            path = Path(root) / name
            if path.suffix.lower() in (".json", ".nii", ".gz", ".txt", ".md", ".tsv", ".bval"):
                continue
            try:
                ds = _read_header(path)
            except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError) as exc:
                log.debug("not a DICOM file, skipped: %s (%s)", path, exc)
                continue
            if _is_image_series_member(ds):
                groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
            else:
                log.debug("not an image of a series, skipped: %s", path)
    return groups


def _read_files(paths: Sequence[Path], what: str) -> list[tuple[Path, Dataset]]:
    out = []
    for path in paths:
        if not path.is_file():
            raise ReferenceError_(
                f"reference DICOM file {path} (listed in {what}) does not exist",
                "the dataset's sourcedata/dicom folder must be present (in a container, mount "
                "the whole dataset); or pass --reference DICOM_DIR",
            )
        try:
            out.append((path, _read_header(path)))
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError) as exc:
            raise DicomReadError(f"cannot read reference DICOM file {path}: {exc}") from exc
    return out


# --------------------------------------------------------------------------- geometry


def _seq_item(ds: Dataset, frame_item: Dataset | None, keyword: str) -> Dataset | None:
    """A functional-group macro item: per-frame first, then shared."""
    for groups in (frame_item, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        items = groups.get(keyword) if groups is not None else None
        if items:
            item: Dataset = items[0]
            return item
    return None


def frame_planes(
    ds: Dataset,
) -> list[tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], float]]:
    """(orientation, position, pixel spacing, thickness) of every frame of one instance."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        out = []
        for item in ds.PerFrameFunctionalGroupsSequence:
            orient = _seq_item(ds, item, "PlaneOrientationSequence")
            pos = _seq_item(ds, item, "PlanePositionSequence")
            meas = _seq_item(ds, item, "PixelMeasuresSequence")
            if orient is None or pos is None or meas is None:
                return []
            out.append(
                (
                    tuple(float(x) for x in orient.ImageOrientationPatient),
                    tuple(float(x) for x in pos.ImagePositionPatient),
                    tuple(float(x) for x in meas.PixelSpacing),
                    float(meas.get("SliceThickness") or 0.0),
                )
            )
        return out
    if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds and "PixelSpacing" in ds:
        return [
            (
                tuple(float(x) for x in ds.ImageOrientationPatient),
                tuple(float(x) for x in ds.ImagePositionPatient),
                tuple(float(x) for x in ds.PixelSpacing),
                float(ds.get("SliceThickness") or 0.0),
            )
        ]
    return []


def series_geometry(datasets: Sequence[Dataset]) -> ReferenceGeometry | None:
    """The geometry of a series (headers in instance order), or None without positions."""
    planes = [p for ds in datasets for p in frame_planes(ds)]
    if not planes:
        return None
    image_type = {str(v).upper() for v in datasets[0].get("ImageType") or []}
    if image_type & MOSAIC_TYPES:
        # Tiles of slices in one image: positions are those of the whole mosaic (the tile
        # count is in private headers), so only the orientation is known.
        row, col = np.asarray(planes[0][0][:3]), np.asarray(planes[0][0][3:6])
        normal = np.cross(row, col)
        return ReferenceGeometry(
            vec3(row),
            vec3(col),
            vec3(normal),
            (),
            None,
        )
    rows = int(datasets[0].Rows)
    cols = int(datasets[0].Columns)
    corners: list[tuple[float, float, float]] = []
    for orient, pos, spacing, thick in planes:
        row = np.asarray(orient[:3])
        col = np.asarray(orient[3:6])
        normal = np.cross(row, col)
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1] = row * spacing[1], col * spacing[0]
        lps[:3, 2] = normal * (thick or min(spacing))
        lps[:3, 3] = pos
        corners += [vec3(c) for c in world_corners(lps_to_ras(lps), (cols, rows, 1))]
    orient0 = np.asarray(planes[0][0])
    if not all(np.allclose(p[0], orient0, atol=1e-3) for p in planes):
        log.debug("reference frames have several orientations: no single stack geometry")
        row, col = orient0[:3], orient0[3:6]
        normal = np.cross(row, col)
        return ReferenceGeometry(
            vec3(row),
            vec3(col),
            vec3(normal),
            tuple(corners),
            None,
        )
    row, col = orient0[:3], orient0[3:6]
    normal = np.cross(row, col)
    proj = [float(np.dot(p[1], normal)) for p in planes]
    direction = normal if len(proj) < 2 or proj[-1] >= proj[0] else -normal
    # one volume: distinct positions, along the direction instance numbers advance
    unique: dict[float, tuple[float, ...]] = {}
    for p, d in zip(planes, proj, strict=True):
        unique.setdefault(round(d, 3), p[1])
    keys = sorted(unique, reverse=bool(np.dot(direction, normal) < 0))
    spacing = planes[0][2]
    stack = StackGeometry(
        rows=rows,
        columns=cols,
        row_direction=vec3(row),
        column_direction=vec3(col),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slice_spacing=abs(keys[-1] - keys[0]) / (len(keys) - 1) if len(keys) > 1 else planes[0][3],
        positions=tuple(vec3(unique[k]) for k in keys),
    )
    return ReferenceGeometry(
        vec3(row),
        vec3(col),
        vec3(direction),
        tuple(corners),
        stack,
    )


def voxel_order_for(nifti: NiftiInput, geometry: ReferenceGeometry | None) -> VoxelOrder:
    """How the NIfTI is written: like the reference's frames when they are known (so the
    new series is displayed as its source), else as dcm2niix stored it.

    A single-plane image (one voxel thick) whose plane is not parallel to the reference's
    slices (one axial plane of a sagittal series) is written as one image in its own plane,
    not as frames of one row each (see :func:`~bidsport.todicom.geometry.single_plane_order`).
    """
    if geometry is None:
        order = choose_voxel_order(nifti.affine)
    else:
        order = choose_voxel_order(
            nifti.affine,
            geometry.row_direction,
            geometry.column_direction,
            geometry.slice_direction,
        )
    thin = single_plane_axis(nifti.spatial_shape)
    if thin is None or order.axes[2] == thin:
        return order
    plane = single_plane_order(nifti.affine, nifti.spatial_shape)
    assert plane is not None
    log.info(
        "%s is one plane across the reference's slices: written as one image in its own plane",
        nifti.name,
    )
    return plane


def nifti_stack(nifti: NiftiInput, geometry: ReferenceGeometry | None) -> StackGeometry:
    """The stack the NIfTI is written as (see :func:`voxel_order_for`)."""
    return stack_geometry(nifti.affine, nifti.spatial_shape, voxel_order_for(nifti, geometry))


def grid_matches(nifti: NiftiInput, geometry: ReferenceGeometry | None) -> bool:
    """True when the NIfTI's voxel grid is exactly the reference's (frame for frame)."""
    if geometry is None or geometry.stack is None:
        return False
    return same_grid(nifti_stack(nifti, geometry), geometry.stack)


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def reference_slice_thickness(ref: ReferenceSeries) -> float | None:
    """The reference's SliceThickness (mm; Pixel Measures of a multi-frame), if it has one."""
    planes = frame_planes(ref.header)
    if planes and planes[0][3] > 0:
        return planes[0][3]
    return _positive(ref.header.get("SliceThickness"))


def reference_slice_spacing(ref: ReferenceSeries) -> float | None:
    """Distance between the reference's slice centres (mm): from the positions of its frames,
    else (a mosaic, one frame) its SpacingBetweenSlices, if it has one."""
    stack = ref.geometry.stack if ref.geometry is not None else None
    if stack is not None and stack.n_frames > 1:
        return stack.slice_spacing
    header = ref.header
    measures = _seq_item(
        header,
        (header.get("PerFrameFunctionalGroupsSequence") or [None])[0],
        "PixelMeasuresSequence",
    )
    for item in (measures, header):
        spacing = _positive(item.get("SpacingBetweenSlices")) if item is not None else None
        if spacing is not None:
            return spacing
    return None


# --------------------------------------------------------------------------- building


def labels_from_path(path: Path) -> tuple[str | None, str | None]:
    """Subject and session of a file under ``sourcedata/dicom/sub-<s>[/ses-<t>]``, if it is.

    >>> labels_from_path(Path("/d/sourcedata/dicom/sub-01/ses-2/x.dcm"))
    ('01', '2')
    >>> labels_from_path(Path("/archive/sub-01/x.dcm"))
    (None, None)
    """
    parts = path.parts
    for n in range(len(parts) - 2):
        if parts[n : n + 2] == ("sourcedata", "dicom") and parts[n + 2].startswith("sub-"):
            session = parts[n + 3] if len(parts) > n + 4 else ""
            return parts[n + 2][4:], session[4:] if session.startswith("ses-") else None
    return None, None


def build_reference(
    items: Sequence[tuple[Path, Dataset]],
    found_by: str,
    subject: str | None = None,
    session: str | None = None,
) -> ReferenceSeries:
    """A :class:`ReferenceSeries` from the headers of one series."""
    items = sorted(items, key=_instance_key)
    first = items[0][1]
    uid = str(first.SeriesInstanceUID)
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if not str(first.get(keyword, "")).strip():
            raise ReferenceError_(
                f"reference series {uid} ({items[0][0]}) has no {keyword}",
                "choose an image series of the same study as reference (--reference)",
            )
    if subject is None and session is None:
        subject, session = labels_from_path(items[0][0])
    return ReferenceSeries(
        series_uid=uid,
        files=tuple(p for p, _ in items),
        datasets=tuple(ds for _, ds in items),
        geometry=series_geometry([ds for _, ds in items]),
        found_by=found_by,
        subject=subject,
        session=session,
    )


def choose_series(
    groups: Mapping[str, list[tuple[Path, Dataset]]],
    where: str,
    *,
    series_uid: str | None = None,
    preferred_uid: str | None = None,
    nifti: NiftiInput | None = None,
) -> tuple[str, str]:
    """Pick one series of a folder; returns (uid, the rule that picked it).

    Rules, in order: ``--reference-series-uid``; the only series; the sidecar's
    ``SeriesInstanceUID``; the only series whose grid is exactly the NIfTI's. Otherwise the
    choice is ambiguous and the error lists the candidates.
    """
    if not groups:
        raise ReferenceError_(f"no DICOM image series found in {where}")
    if series_uid is not None:
        if series_uid not in groups:
            raise ReferenceError_(
                f"series {series_uid} is not in {where}",
                "found: " + ", ".join(sorted(groups)),
            )
        return series_uid, "--reference-series-uid"
    if len(groups) == 1:
        return next(iter(groups)), "the only series"
    if preferred_uid is not None and preferred_uid in groups:
        return preferred_uid, "the sidecar's SeriesInstanceUID"
    if nifti is not None:
        matching = [
            uid
            for uid, items in groups.items()
            if grid_matches(
                nifti, series_geometry([ds for _, ds in sorted(items, key=_instance_key)])
            )
        ]
        if len(matching) == 1:
            return matching[0], "the only series on the NIfTI's voxel grid"
    listing = "; ".join(
        f"{uid} (series {items[0][1].get('SeriesNumber', '?')} "
        f"{str(items[0][1].get('SeriesDescription', '')).strip()!r}, {len(items)} files)"
        for uid, items in sorted(
            groups.items(), key=lambda kv: str(kv[1][0][1].get("SeriesNumber", ""))
        )
    )
    raise ReferenceError_(
        f"{where} holds {len(groups)} series and none is clearly the reference: {listing}",
        "choose one with --reference-series-uid UID",
    )


def reference_from_folder(
    folder: Path,
    *,
    series_uid: str | None = None,
    preferred_uid: str | None = None,
    nifti: NiftiInput | None = None,
    found_by: str | None = None,
) -> ReferenceSeries:
    groups = scan_folder(folder)
    uid, rule = choose_series(
        groups, str(folder), series_uid=series_uid, preferred_uid=preferred_uid, nifti=nifti
    )
    if len(groups) > 1:
        log.info("reference: %s of %d series in %s, chosen as %s", uid, len(groups), folder, rule)
    return build_reference(groups[uid], found_by or f"DICOM folder {folder}, {rule}")


# --------------------------------------------------------------------------- BIDS


def dataset_roots(path: Path) -> list[Path]:
    """Every folder above ``path`` holding a dataset_description.json, nearest first."""
    start = path.absolute()
    folders = [start] if start.is_dir() else []
    folders += list(start.parents)
    return [f for f in folders if (f / "dataset_description.json").is_file()]


def find_dataset_root(path: Path) -> Path | None:
    """The nearest folder above ``path`` with a dataset_description.json (a BIDS root)."""
    roots = dataset_roots(path)
    return roots[0] if roots else None


def layout_root(image_file: Path) -> Path | None:
    """The dataset root of an image in a BIDS layout: the folder above
    ``sub-<label>/[ses-<label>/]<datatype>/`` (for a dataset without its
    dataset_description.json yet, e.g. before bidsport's group level).

    >>> layout_root(Path("/d/bids/sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"))
    PosixPath('/d/bids')
    >>> layout_root(Path("/d/bids/sub-01/anat/x.nii.gz")), layout_root(Path("/tmp/x.nii.gz"))
    (PosixPath('/d/bids'), None)
    """
    above = image_file.absolute().parent.parent  # above the datatype folder
    if above.name.startswith("ses-"):
        above = above.parent
    return above.parent if above.name.startswith("sub-") else None


def candidate_roots(image_file: Path) -> list[Path]:
    """Folders that may be the dataset root of ``image_file``, most likely first.

    Every folder above it with a dataset_description.json (nearest first), then the root of
    its BIDS layout (:func:`layout_root`), then every folder above it holding
    ``sourcedata/dicom``: bidsport's participant level writes the images and
    ``sourcedata/`` before the group level writes dataset_description.json.
    """
    image_file = image_file.absolute()
    found = dataset_roots(image_file.parent)
    layout = layout_root(image_file)
    if layout is not None:
        found.append(layout)
    found += [f for f in image_file.parents if (f / "sourcedata" / "dicom").is_dir()]
    unique: list[Path] = []
    for folder in found:
        if folder not in unique:
            unique.append(folder)
    return unique


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [str(v) for v in value.values() if isinstance(v, str)]
    if isinstance(value, Iterable):
        return [v for v in value if isinstance(v, str)]
    return []


def resolve_bids_uri(uri: str, root: Path) -> Path | None:
    """A file path for ``bids:<dataset>:<path>`` (or a dataset-relative path) from ``root``.

    ``bids::path`` is relative to ``root``; a named dataset is looked up in the
    ``DatasetLinks`` of ``root``'s dataset_description.json.
    """
    if uri.startswith("bids:"):
        _, name, rel = uri.split(":", 2)
        if name == "":
            return root / rel
        desc = root / "dataset_description.json"
        links = read_json(desc).get("DatasetLinks", {}) if desc.is_file() else {}
        target = links.get(name) if isinstance(links, Mapping) else None
        if not isinstance(target, str):
            return None
        if target.startswith("file:"):
            base = Path(unquote(urlparse(target).path))
        elif "://" in target:
            return None
        else:
            base = Path(target) if Path(target).is_absolute() else root / target
        return base / rel
    if "://" in uri or uri.startswith("doi:"):
        return None
    return root / uri


def reference_from_bids_image(
    image_file: Path,
    *,
    series_uid: str | None = None,
    nifti: NiftiInput | None = None,
    _seen: frozenset[Path] = frozenset(),
) -> ReferenceSeries | None:
    """The source series of a BIDS image from its sidecar, or None when it names none."""
    image_file = image_file.absolute()
    if image_file in _seen or len(_seen) > 8:
        return None
    sidecar = (
        read_sidecar(image_file) if not image_file.name.endswith(".json") else read_json(image_file)
    )
    if sidecar is None:
        return None
    roots = candidate_roots(image_file)
    bids = parse_bids_name(image_file.name)
    subject, session = bids.get("sub"), bids.get("ses")
    sidecar_uid = sidecar.get("SeriesInstanceUID")
    sidecar_uid = str(sidecar_uid) if isinstance(sidecar_uid, str) else None

    listed = _as_list(sidecar.get("BidsportSourceDicom"))
    if listed:
        for root in roots or [image_file.parent]:
            paths = [root / rel for rel in listed]
            if all(p.is_file() for p in paths):
                items = _read_files(paths, f"BidsportSourceDicom of {image_file.name}")
                groups: dict[str, list[tuple[Path, Dataset]]] = {}
                for path, ds in items:
                    if _is_image_series_member(ds):
                        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
                uid, _ = choose_series(
                    groups,
                    f"BidsportSourceDicom of {image_file.name}",
                    series_uid=series_uid,
                    preferred_uid=sidecar_uid,
                    nifti=nifti,
                )
                return build_reference(
                    groups[uid], f"BidsportSourceDicom of {image_file.name}", subject, session
                )
        if not roots:
            raise ReferenceError_(
                f"{image_file}: its BidsportSourceDicom paths are relative to the dataset root, "
                "and no folder above it is one (no dataset_description.json, no "
                "sub-<label>/[ses-<label>/]<datatype>/ layout, no sourcedata/dicom folder)",
                "run todicom on the image inside its dataset; or pass --reference DICOM_DIR",
            )
        missing = next(roots[0] / rel for rel in listed if not (roots[0] / rel).is_file())
        also = f" (nor under {', '.join(map(str, roots[1:]))})" if len(roots) > 1 else ""
        raise ReferenceError_(
            f"{image_file.name}: its source DICOM file {missing} (BidsportSourceDicom, relative "
            f"to the dataset root {roots[0]}) does not exist{also}",
            "the dataset's sourcedata/dicom folder must be present (in a container, mount the "
            "whole dataset); or pass --reference DICOM_DIR",
        )

    if sidecar_uid is not None and subject is not None:
        for root in roots:
            folder = root / "sourcedata" / "dicom" / f"sub-{subject}"
            if session:
                folder = folder / f"ses-{session}"
            if folder.is_dir():
                groups = scan_folder(folder)
                if sidecar_uid in groups:
                    return build_reference(
                        groups[sidecar_uid],
                        f"SeriesInstanceUID of {image_file.name} in {folder}",
                        subject,
                        session,
                    )

    for key in SOURCE_KEYS:
        for uri in _as_list(sidecar.get(key)):
            for root in roots:
                target = resolve_bids_uri(uri, root)
                if target is None or not target.is_file():
                    continue
                if not target.name.endswith((*NIFTI_EXTENSIONS, ".json")):
                    continue
                found = reference_from_bids_image(
                    target, series_uid=series_uid, nifti=nifti, _seen=_seen | {image_file}
                )
                if found is not None:
                    log.info("reference of %s found through %s %s", image_file.name, key, uri)
                    return found
    return None


def _uri_problem(uri: str, roots: Sequence[Path]) -> str:
    """What keeps one ``Sources`` entry from leading to a reference (for messages)."""
    if "://" in uri or uri.startswith("doi:"):
        return "is not a local file"
    name = uri.split(":", 2)[1] if uri.startswith("bids:") and uri.count(":") >= 2 else ""
    if not roots:
        links = f" with DatasetLinks {name!r}" if name else ""
        return f"cannot be resolved: no dataset_description.json{links} above the image"
    if name:
        descriptions = [r / "dataset_description.json" for r in roots]
        linked = [
            d
            for d in descriptions
            if d.is_file() and name in (read_json(d).get("DatasetLinks") or {})
        ]
        if not linked:
            return (
                f"cannot be resolved: no dataset_description.json above the image has "
                f"DatasetLinks {name!r} (looked in {', '.join(map(str, roots))})"
            )
    targets = [t for t in (resolve_bids_uri(uri, root) for root in roots) if t is not None]
    existing = [t for t in targets if t.is_file()]
    if not existing:
        return f"points to {targets[0] if targets else uri}, which does not exist"
    target = existing[0]
    if not target.name.endswith((*NIFTI_EXTENSIONS, ".json")):
        return f"points to {target}, which is not a NIfTI or JSON file"
    return f"points to {target}, whose sidecar names no source DICOM series"


def no_reference_reason(image_file: Path, sidecar: Mapping[str, Any] | None) -> str:
    """Why the sidecar of ``image_file`` led to no reference series (for the error message)."""
    if sidecar is None:
        return "it has no JSON sidecar"
    roots = candidate_roots(image_file)
    reasons = []
    uid = sidecar.get("SeriesInstanceUID")
    if isinstance(uid, str) and uid:
        bids = parse_bids_name(image_file.name)
        subject, session = bids.get("sub"), bids.get("ses")
        if subject is None:
            reasons.append(
                f"its SeriesInstanceUID {uid} cannot be looked up (no sub- label in the name)"
            )
        else:
            rel = Path(
                "sourcedata", "dicom", f"sub-{subject}", *([f"ses-{session}"] * bool(session))
            )
            where = ", ".join(str(r / rel) for r in roots) or (
                f"{rel} (no dataset root found above the image)"
            )
            reasons.append(f"its SeriesInstanceUID {uid} is not a series in {where}")
    for key in SOURCE_KEYS:
        for uri in _as_list(sidecar.get(key)):
            reasons.append(f"its {key} entry {uri!r} {_uri_problem(uri, roots)}")
    if not reasons:
        return "its sidecar has no BidsportSourceDicom, SeriesInstanceUID, " + ", ".join(
            SOURCE_KEYS
        )
    return "; ".join(reasons)


def resolve_reference(
    nifti: NiftiInput,
    reference: Path | None = None,
    series_uid: str | None = None,
) -> ReferenceSeries:
    """The reference series of ``nifti``: explicit (``reference``) or from its sidecar."""
    sidecar_uid = (nifti.sidecar or {}).get("SeriesInstanceUID")
    preferred = sidecar_uid if isinstance(sidecar_uid, str) else None
    if reference is not None:
        if reference.is_dir():
            return reference_from_folder(
                reference, series_uid=series_uid, preferred_uid=preferred, nifti=nifti
            )
        if not reference.is_file():
            raise ReferenceError_(f"reference {reference} does not exist")
        if reference.name.endswith((*NIFTI_EXTENSIONS, ".json")):
            found = reference_from_bids_image(reference, series_uid=series_uid, nifti=nifti)
            if found is None:
                own = read_json(reference) if reference.name.endswith(".json") else None
                raise ReferenceError_(
                    f"reference {reference} is a BIDS image that leads to no source DICOM "
                    "series: "
                    + no_reference_reason(
                        reference, own if own is not None else read_sidecar(reference)
                    ),
                    "pass the DICOM folder of the source series as --reference",
                )
            return found
        try:
            ds = _read_header(reference)
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError) as exc:
            raise ReferenceError_(
                f"reference {reference} is neither a folder, a NIfTI/JSON nor a DICOM file: {exc}"
            ) from exc
        uid = series_uid or str(ds.get("SeriesInstanceUID", ""))
        return reference_from_folder(
            reference.parent, series_uid=uid, found_by=f"the series of DICOM file {reference}"
        )
    found = reference_from_bids_image(nifti.path, series_uid=series_uid, nifti=nifti)
    if found is None:
        raise ReferenceError_(
            f"no reference DICOM series for {nifti.path}: "
            + no_reference_reason(nifti.path, nifti.sidecar),
            "pass --reference: the source DICOM folder, or the BIDS image it was derived from",
        )
    return found


# --------------------------------------------------------------------------- matching


def match_problems(nifti: NiftiInput, ref: ReferenceSeries) -> tuple[str, ...]:
    """Reasons to believe ``nifti`` is not in the reference's frame of reference (or patient).

    Empty when nothing speaks against it. Checks: a world space at all; template spaces
    (``space-MNI...``, sform/qform code Talairach/MNI); BIDS subject/session against where
    the reference was found; identifiers in the sidecar; overlap of the two fields of view.
    """
    problems = []
    if not nifti.has_orientation:
        problems.append(f"{nifti.name} has no world coordinates (sform and qform codes are 0)")
    space = nifti.bids.get("space")
    if space is not None and space.startswith(TEMPLATE_PREFIXES):
        problems.append(f"{nifti.name} is in template space {space!r}, not the scanner's")
    elif nifti.in_template_space:
        problems.append(f"{nifti.name} is labelled as in Talairach/MNI space (sform/qform code)")
    for entity, mine, theirs in (
        ("subject", nifti.bids.get("sub"), ref.subject),
        ("session", nifti.bids.get("ses"), ref.session),
    ):
        if mine is not None and theirs is not None and mine != theirs:
            problems.append(
                f"{nifti.name} is {entity} {mine!r} but the reference is {entity} {theirs!r}"
            )
    header = ref.header
    for key in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID"):
        value = (nifti.sidecar or {}).get(key)
        if isinstance(value, str) and value and str(header.get(key, "")) not in ("", value):
            problems.append(f"the sidecar's {key} {value!r} differs from the reference's")
    if ref.geometry is not None and ref.geometry.corners and nifti.has_orientation:
        overlap = box_overlap(
            world_corners(nifti.affine, nifti.spatial_shape), np.asarray(ref.geometry.corners)
        )
        if overlap < MIN_OVERLAP:
            problems.append(
                f"{nifti.name} covers a different region than the reference "
                f"({overlap:.0%} overlap of their fields of view)"
            )
    return tuple(problems)


def reference_affine(ref: ReferenceSeries) -> FloatArray | None:
    """RAS+ affine of the reference's first volume (columns, rows, frames), if it has one."""
    if ref.geometry is None or ref.geometry.stack is None:
        return None
    s = ref.geometry.stack
    return affine_from_dicom(s.orientation, s.positions, s.pixel_spacing, s.slice_spacing)
