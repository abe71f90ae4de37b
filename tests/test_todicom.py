"""``bidsport todicom``: NIfTI → DICOM series, checked end to end with real tools.

Round trips: DICOM → dcm2niix → NIfTI → todicom → DICOM → dcm2niix → NIfTI must give the
first NIfTI back (voxel values exactly for integers, within the stated precision for
floats; affine within 1e-4 mm), for synthetic axial, coronal, sagittal and oblique series
(2D and 3D acquisitions, 3D and 4D images, flipped and permuted storage) and for real
vendor data. Every file written is read by pydicom without a warning, checked by dciodvfy
(when dicom3tools is installed) and converted by dcm2niix without a warning or error (GE 2D
multi-volume series included: with the reference's GE acquisition description, dcm2niix gives
them the reference's SliceTiming); SEG objects are read back with highdicom.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import subprocess
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dcm2niix
import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

import bidsport
from bidsport import fileops
from bidsport.cli import todicom as cli
from bidsport.errors import ConversionError, OutputError, ReferenceError_, UsageError
from bidsport.runner import run_command
from bidsport.synthetic import SeriesSpec, Study, Subject, series_datasets
from bidsport.todicom import ExportOptions, ExportResult, export_nifti, writers
from bidsport.todicom.geometry import ras_to_lps
from bidsport.todicom.reference import find_dataset_root, layout_root, resolve_bids_uri
from bidsport.todicom.sidecar import dicom_attributes, read_label_table

REPO = Path(__file__).resolve().parents[1]
DCIODVFY = shutil.which("dciodvfy")
BOSH = shutil.which("bosh") or (
    "/opt/bpvenv/bin/bosh" if Path("/opt/bpvenv/bin/bosh").is_file() else None
)


# --------------------------------------------------------------------------- helpers


def dcm2niix_convert(src: Path, out: Path) -> tuple[list[Path], list[str]]:
    """Convert a folder; return the NIfTI files and dcm2niix's warnings/errors."""
    fileops.ensure_dir(out)
    result = run_command([dcm2niix.bin, "-z", "y", "-b", "y", "-f", "%s", "-o", out, src])
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    problems = [
        line for line in text.splitlines() if "warning" in line.lower() or "error" in line.lower()
    ]
    return sorted(out.glob("*.nii.gz")), problems


def assert_dcm2niix_silent(problems: list[str]) -> None:
    """No dcm2niix warning or error."""
    assert problems == []


def check_files(paths: Iterable[Path]) -> None:
    """pydicom reads every file without a warning; dciodvfy reports no error."""
    paths = list(paths)
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = pydicom.dcmread(path)
            for element in ds.iterall():
                _ = element.value
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    if DCIODVFY is None:
        return
    sample = paths if len(paths) <= 4 else [paths[0], paths[len(paths) // 2], paths[-1]]
    for path in sample:
        result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
        errors = [
            ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("Error")
        ]
        assert not errors, f"{path.name}: {errors}"


def assert_same_nifti(
    first: Path, second: Path, *, value_tol: float = 0.0, exact_layout: bool = True
) -> None:
    """Same image: affine within 1e-4 mm, values within ``value_tol``.

    With ``exact_layout`` the voxel storage order must be the same too; otherwise the
    second image is first reordered (axis permutation and flips only) like the first.
    """
    a, b = nib.load(first), nib.load(second)
    data_a, data_b = np.asarray(a.get_fdata()), np.asarray(b.get_fdata())
    affine_b = b.affine
    if not exact_layout:
        transform = ornt_transform(io_orientation(b.affine), io_orientation(a.affine))
        affine_b = b.affine @ inv_ornt_aff(transform, b.shape[:3])
        data_b = apply_orientation(data_b, transform)
    assert data_a.shape == data_b.shape, (first, second)
    assert np.abs(a.affine - affine_b).max() < 1e-4, (a.affine, affine_b)
    diff = float(np.abs(data_a - data_b).max())
    assert diff <= value_tol, f"values differ by {diff} (allowed {value_tol})"


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    ax, ay, az = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = rotation(18, -11, 7)
DEFAULT_SUBJECT = Subject()
DEFAULT_STUDY = Study()


def write_series(
    folder: Path,
    *,
    orientation: str = "axial",
    rotate: np.ndarray | None = None,
    acquisition: str = "2D",
    n_volumes: int = 1,
    number: int = 3,
    description: str = "t1",
    subject: Subject = DEFAULT_SUBJECT,
    study: Study = DEFAULT_STUDY,
    n_slices: int = 6,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """A synthetic series (anisotropic pixels, 2.5 mm slices); ``rotate`` turns it about the
    isocentre; ``extra`` sets more attributes (keyword: value)."""
    spec = SeriesSpec(
        description,
        number,
        n_slices=n_slices,
        rows=12,
        columns=10,
        orientation=orientation,
        mr_acquisition_type=acquisition,
        n_volumes=n_volumes,
        pixel_spacing=1.5,
        slice_thickness=2.5,
        extra={"PixelSpacing": [1.5, 1.25], "BodyPartExamined": "BRAIN", **(extra or {})},
    )
    fileops.ensure_dir(folder)
    paths = []
    for n, ds in enumerate(series_datasets(spec, subject, study)):
        if rotate is not None:
            iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
            ds.ImageOrientationPatient = [
                round(float(x), 10) for x in np.concatenate([rotate @ iop[:3], rotate @ iop[3:]])
            ]
            ipp = rotate @ np.asarray(ds.ImagePositionPatient, dtype=float)
            ds.ImagePositionPatient = [round(float(x), 6) for x in ipp]
        path = folder / f"{number:03d}_{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def round_trip(
    tmp: Path,
    src: Path,
    nifti: Path,
    *,
    kind: str = "mr",
    reference: Path | None = None,
    **options: Any,
) -> tuple[ExportResult, Path]:
    """todicom then dcm2niix; returns the result and the NIfTI dcm2niix made of it."""
    result = export_nifti(
        nifti,
        tmp / f"dicom_{kind}",
        ExportOptions(kind=kind, reference=reference or src, **options),
    )
    check_files(result.files)
    niftis, problems = dcm2niix_convert(result.output_dir, tmp / f"back_{kind}")
    assert_dcm2niix_silent(problems)
    assert len(niftis) == 1, niftis
    return result, niftis[0]


def dcm2niix_sidecar(nifti: Path) -> dict[str, Any]:
    """The JSON sidecar dcm2niix wrote beside ``nifti``."""
    data: dict[str, Any] = json.loads(
        nifti.with_name(nifti.name.replace(".nii.gz", ".json")).read_text()
    )
    return data


def first_conversion(tmp: Path, src: Path) -> Path:
    niftis, _ = dcm2niix_convert(src, tmp / "first")
    assert len(niftis) == 1, niftis
    return niftis[0]


def header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def assert_in_reference_study(result: ExportResult, reference_file: Path) -> None:
    ref = header(reference_file)
    out = header(result.files[0])
    assert out.StudyInstanceUID == ref.StudyInstanceUID
    assert out.PatientID == ref.PatientID
    assert out.PatientName == ref.PatientName
    assert out.FrameOfReferenceUID == ref.FrameOfReferenceUID
    assert out.SeriesInstanceUID != ref.SeriesInstanceUID
    assert out.SeriesInstanceUID == result.series_uid
    uids = {header(p).SOPInstanceUID for p in result.files}
    assert len(uids) == len(result.files)


# --------------------------------------------------------------------------- synthetic


SYNTHETIC = {
    "axial-2D": dict(orientation="axial"),
    "coronal-2D": dict(orientation="coronal"),
    "sagittal-2D": dict(orientation="sagittal"),
    "oblique-2D": dict(orientation="axial", rotate=OBLIQUE),
    "oblique-sagittal-2D": dict(orientation="sagittal", rotate=rotation(-14, 22, 9)),
    "axial-3D": dict(orientation="axial", acquisition="3D"),
    "coronal-3D": dict(orientation="coronal", acquisition="3D"),
    "oblique-3D": dict(orientation="sagittal", rotate=OBLIQUE, acquisition="3D"),
    "axial-2D-4D": dict(orientation="axial", n_volumes=3),
    "oblique-2D-4D": dict(orientation="coronal", rotate=OBLIQUE, n_volumes=3),
}


@pytest.mark.parametrize("case", list(SYNTHETIC))
def test_round_trip_synthetic(tmp_path: Path, case: str) -> None:
    src = tmp_path / "src"
    files = write_series(src, **SYNTHETIC[case])
    first = first_conversion(tmp_path, src)
    result, back = round_trip(tmp_path, src, first)
    assert result.kind == "mr" and result.exact and result.same_grid
    assert_same_nifti(first, back)
    assert_in_reference_study(result, files[0])
    out = header(result.files[0])
    assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert out.SOPClassUID == pydicom.uid.MRImageStorage
    assert "NOT FOR CLINICAL USE" in out.SeriesDescription
    assert "NOT FOR CLINICAL USE" in out.ImageComments
    assert out.DerivationDescription.startswith(first.name)
    assert out.RepetitionTime == 2000.0 and out.EchoTime == 3.0 and out.FlipAngle == 9.0
    assert_equipment(out, header(files[0]))


def ge_acquisition(ds: pydicom.Dataset) -> dict[tuple[int, str, int], Any]:
    """The values of writers.GE_ACQUISITION elements present in ``ds``."""
    found = {}
    for group, creator, offset in writers.GE_ACQUISITION:
        with contextlib.suppress(KeyError):
            found[group, creator, offset] = ds.private_block(group, creator)[offset].value
    return found


def assert_equipment(out: pydicom.Dataset, ref: pydicom.Dataset) -> None:
    """The reference's scanner in General Equipment; bidsport as processing equipment.

    With a GE protocol data block, the reference's whole GE acquisition description (block,
    pulse sequence names, SoftwareVersions) and no SoftwareVersions in bidsport's item.
    """
    assert out.Manufacturer == ref.Manufacturer
    assert out.ManufacturerModelName == ref.ManufacturerModelName
    (item,) = [i for i in out.ContributingEquipmentSequence if i.Manufacturer == "bidsport"]
    (purpose,) = item.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
    if "DerivationDescription" in out:  # not in SEG
        assert f"bidsport {bidsport.__version__}" in out.DerivationDescription
    copied = ge_acquisition(out)
    if writers.GE_PROTOCOL_BLOCK in copied:
        assert copied == ge_acquisition(ref)
        assert len(copied) == 3  # block and both pulse sequence names
        assert out.SoftwareVersions == ref.SoftwareVersions
        assert "SoftwareVersions" not in item
    else:
        assert not copied
        assert out.SoftwareVersions == bidsport.__version__
        assert item.SoftwareVersions == bidsport.__version__


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("oblique-2D-4D", "enhanced"),
        ("oblique-3D", "enhanced"),
        ("oblique-2D-4D", "sc"),
        ("sagittal-2D", "sc"),
    ],
)
def test_round_trip_other_kinds(tmp_path: Path, case: str, kind: str) -> None:
    src = tmp_path / "src"
    files = write_series(src, **SYNTHETIC[case])
    first = first_conversion(tmp_path, src)
    result, back = round_trip(tmp_path, src, first, kind=kind)
    # Enhanced MR may not say "3D" (MR Pulse Sequence is for ORIGINAL images only), so
    # dcm2niix keeps a 3D acquisition in acquisition order: same image, other voxel order.
    assert_same_nifti(first, back, exact_layout="3D" not in case)
    assert_in_reference_study(result, files[0])
    out = header(result.files[0])
    if kind == "enhanced":
        assert len(result.files) == 1
        assert out.SOPClassUID == pydicom.uid.EnhancedMRImageStorage
        assert out.ContentQualification == "RESEARCH"
        n_voxels = int(np.prod(nib.load(first).shape))
        assert int(out.NumberOfFrames) * out.Rows * out.Columns == n_voxels
    else:
        assert out.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage


@pytest.mark.parametrize("manufacturer", ["SIEMENS", "Philips Medical Systems", "UIH"])
def test_enhanced_4d_volume_order_for_every_vendor(tmp_path: Path, manufacturer: str) -> None:
    """dcm2niix orders the frames of a multi-volume Enhanced MR by vendor: from the
    DimensionIndexValues for Philips (and Canon, Bruker, unknown), in file order otherwise
    (Siemens, GE, UIH...) unless it sorts them by position, which mixes the volumes. With
    the plane orientation in every frame (as Siemens XA and Philips write it) each vendor's
    path gives the volumes back in order."""
    src = tmp_path / "src"
    study = Study(manufacturer=manufacturer, model="Model X")
    write_series(src, orientation="axial", rotate=OBLIQUE, n_volumes=2, study=study)
    first = first_conversion(tmp_path, src)
    result, back = round_trip(tmp_path, src, first, kind="enhanced")
    assert_same_nifti(first, back)
    out = pydicom.dcmread(result.files[0])
    assert out.Manufacturer == manufacturer
    assert "PlaneOrientationSequence" not in out.SharedFunctionalGroupsSequence[0]
    frames = out.PerFrameFunctionalGroupsSequence
    assert len(frames) == int(out.NumberOfFrames) == 12
    assert all("PlaneOrientationSequence" in item for item in frames)
    volumes = [int(item.FrameContentSequence[0].TemporalPositionIndex) for item in frames]
    assert volumes == [1] * 6 + [2] * 6


@pytest.mark.parametrize("kind", ["mr", "enhanced"])
def test_float_values_within_stated_precision(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    write_series(src, orientation="coronal", rotate=OBLIQUE, n_volumes=2)
    first = first_conversion(tmp_path, src)
    img = nib.load(first)
    rng = np.random.default_rng(1)
    values = (img.get_fdata() * 0.0137 - 0.8 + rng.normal(0, 0.01, img.shape)).astype(np.float32)
    float_file = tmp_path / "sub-01_T1map.nii.gz"
    nib.save(nib.Nifti1Image(values, img.affine), float_file)
    assert nib.load(float_file).get_data_dtype() == np.float32
    result, back = round_trip(tmp_path, src, float_file, kind=kind)
    assert not result.exact
    span = float(values.max() - values.min())
    assert 0 < result.max_error <= span / 65535 / 2 * 1.0001
    # float32 in the NIfTI header (scl_slope/scl_inter) adds a relative 6e-8 at most
    tolerance = result.max_error + 1e-6 * float(np.abs(values).max())
    assert_same_nifti(float_file, back, value_tol=tolerance)
    out = header(result.files[0])
    if kind == "mr":
        assert out.ImageType[2] == "T1 MAP"
        assert float(out.RescaleSlope) > 0


@pytest.mark.parametrize("kind", ["mr", "enhanced"])
def test_a_map_of_values_below_one_gets_an_exact_linear_window(tmp_path: Path, kind: str) -> None:
    """A probability map (0 to 0.6): its window is narrower than 1, which the LINEAR
    function does not allow (PS3.3 C.11.2.1.2.1): LINEAR_EXACT does."""
    src = tmp_path / "src"
    write_series(src, orientation="axial")
    img = nib.load(first_conversion(tmp_path, src))
    values = (img.get_fdata() / img.get_fdata().max() * 0.6).astype(np.float32)
    prob = tmp_path / "sub-01_label-GM_probseg.nii.gz"
    nib.save(nib.Nifti1Image(values, img.affine), prob)
    result, _ = round_trip(tmp_path, src, prob, kind=kind)
    out = header(result.files[0])
    voi = out if kind == "mr" else out.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert 0 < float(voi.WindowWidth) < 1 and voi.VOILUTFunction == "LINEAR_EXACT"


@pytest.mark.parametrize(
    "transform",
    ["canonical", "permuted", "flipped"],
)
def test_any_voxel_order_goes_back_to_the_reference_layout(tmp_path: Path, transform: str) -> None:
    """A NIfTI stored in another voxel order (e.g. RAS after a pipeline) is written in the
    reference's orientation: dcm2niix then gives back the first NIfTI, voxel for voxel."""
    src = tmp_path / "src"
    write_series(src, orientation="sagittal", rotate=OBLIQUE)
    first = first_conversion(tmp_path, src)
    img = nib.load(first)
    data = np.asanyarray(img.dataobj)
    if transform == "canonical":
        other = nib.as_closest_canonical(img)
    else:
        ornt = (
            np.array([[2, 1], [0, 1], [1, 1]])
            if transform == "permuted"
            else np.array([[0, -1], [1, 1], [2, -1]])
        )
        other = nib.Nifti1Image(
            apply_orientation(data, ornt),
            img.affine @ inv_ornt_aff(ornt, data.shape),
            img.header,
        )
    moved = tmp_path / f"sub-01_desc-{transform}_T1w.nii.gz"
    nib.save(other, moved)
    assert not np.allclose(nib.load(moved).affine, img.affine)
    _, back = round_trip(tmp_path, src, moved)
    assert_same_nifti(first, back)


def test_segmentation_read_back_with_highdicom(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = write_series(src, orientation="axial", rotate=OBLIQUE, n_slices=8)
    first = first_conversion(tmp_path, src)
    img = nib.load(first)
    data = img.get_fdata()
    labels = np.zeros(data.shape, np.uint8)
    labels[data > np.percentile(data, 40)] = 2
    labels[data > np.percentile(data, 75)] = 5
    labels[data > np.percentile(data, 95)] = 9
    dseg = tmp_path / "sub-01_desc-tissue_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, img.affine), dseg)
    (tmp_path / "sub-01_desc-tissue_dseg.tsv").write_text(
        "index\tname\tcolor\n2\tgrey matter\t#808080\n5\twhite matter\t#ffffff\n"
        "9\tlesion core\t#ff0000\n"
    )
    result = export_nifti(dseg, tmp_path / "out", ExportOptions(reference=src))
    assert result.kind == "seg" and result.kind_reason == "BIDS suffix _dseg"
    check_files(result.files)
    assert_in_reference_study(result, files[0])
    assert_equipment(header(result.files[0]), header(files[0]))
    niftis, problems = dcm2niix_convert(result.output_dir, tmp_path / "seg_back")
    assert_dcm2niix_silent(problems)
    assert len(niftis) == 1
    assert_segmentation_matches(
        result.files[0], labels, img.affine, {2: "grey matter", 5: "white matter", 9: "lesion core"}
    )


def assert_segmentation_matches(
    path: Path, labels: np.ndarray, affine: np.ndarray, names: dict[int, str]
) -> None:
    """highdicom reads the SEG; each segment is where the NIfTI has its label."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg = hd.seg.segread(path)
    numbers = seg.get_segment_numbers()
    assert len(numbers) == len(names)
    value_of = {}
    for number in numbers:
        description = seg.get_segment_description(number)
        value = int(str(description.TrackingID).split()[-1])
        assert description.SegmentLabel == names[value]
        value_of[number] = value
    volume = seg.get_volume(combine_segments=True)
    index = np.indices(volume.array.shape).reshape(3, -1)
    world = volume.affine[:3, :3] @ index + volume.affine[:3, 3:4]
    to_voxel = np.linalg.inv(ras_to_lps(affine))
    voxel = to_voxel[:3, :3] @ world + to_voxel[:3, 3:4]
    assert np.abs(voxel - np.rint(voxel)).max() < 0.01
    ijk = np.rint(voxel).astype(int)
    expected = labels[ijk[0], ijk[1], ijk[2]]
    lut = np.zeros(max(numbers) + 1, dtype=np.int64)
    for number, value in value_of.items():
        lut[number] = value
    got = lut[volume.array.reshape(-1).astype(np.int64)]
    assert np.array_equal(got, expected)
    # every labelled voxel of the NIfTI is in the SEG's frames
    assert int((expected > 0).sum()) == int((labels > 0).sum())


# --------------------------------------------------------------------------- BIDS contract


def build_dataset(root: Path, *, subject: Subject = DEFAULT_SUBJECT) -> dict[str, Any]:
    """A bidsport-like output: sourcedata/dicom links, a converted T1w with the sidecar keys."""
    fileops.write_json(root / "dataset_description.json", {"Name": "t", "BIDSVersion": "1.9.0"})
    raw = root / "sourcedata" / "raw" / "sub-01" / "ses-1" / "packet"
    t1 = write_series(
        raw / "t1", orientation="sagittal", rotate=OBLIQUE, acquisition="3D", subject=subject
    )
    flair = write_series(
        raw / "flair", orientation="axial", number=4, description="flair", subject=subject
    )
    dicom_dir = root / "sourcedata" / "dicom" / "sub-01" / "ses-1"
    for path in t1 + flair:
        fileops.relative_symlink(path, dicom_dir / path.name)
    t1_links = [dicom_dir / p.name for p in t1]
    anat = root / "sub-01" / "ses-1" / "anat"
    staging = root / "staging"
    for link in t1_links:
        fileops.relative_symlink(link, staging / link.name)
    niftis, _ = dcm2niix_convert(staging, anat)
    fileops.remove_tree(staging, root)
    image = anat / "sub-01_ses-1_T1w.nii.gz"
    niftis[0].rename(image)
    sidecar = json.loads(
        niftis[0].with_name(niftis[0].name.replace(".nii.gz", ".json")).read_text()
    )
    sidecar["SeriesInstanceUID"] = str(header(t1[0]).SeriesInstanceUID)
    sidecar["BidsportSourceDicom"] = [str(p.relative_to(root)) for p in t1_links]
    niftis[0].with_name(niftis[0].name.replace(".nii.gz", ".json")).unlink()
    fileops.write_json(anat / "sub-01_ses-1_T1w.json", sidecar)
    return {"image": image, "t1": t1, "flair": flair, "dicom_dir": dicom_dir}


def test_reference_found_from_the_sidecar(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    ds = build_dataset(root)
    assert find_dataset_root(ds["image"]) == root.absolute()
    result, back = round_trip(tmp_path, ds["dicom_dir"], ds["image"], reference=None)
    result_ref = export_nifti(ds["image"], tmp_path / "x", ExportOptions())
    assert result_ref.reference.endswith("BidsportSourceDicom of sub-01_ses-1_T1w.nii.gz)")
    assert result.reference_series_uid == str(header(ds["t1"][0]).SeriesInstanceUID)
    assert_same_nifti(ds["image"], back)
    assert_in_reference_study(result, ds["t1"][0])
    assert header(result.files[0]).SeriesDescription == "T1w NOT FOR CLINICAL USE"


def test_reference_from_the_series_uid_when_the_file_list_is_missing(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    ds = build_dataset(root)
    sidecar_file = ds["image"].with_name("sub-01_ses-1_T1w.json")
    sidecar = json.loads(sidecar_file.read_text())
    del sidecar["BidsportSourceDicom"]
    fileops.write_json(sidecar_file, sidecar)
    result = export_nifti(ds["image"], tmp_path / "out")
    assert "SeriesInstanceUID of sub-01_ses-1_T1w.nii.gz" in result.reference
    assert result.reference_series_uid == sidecar["SeriesInstanceUID"]


def test_derivative_mask_follows_sources_to_the_raw_image(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    ds = build_dataset(root)
    deriv = root / "derivatives" / "pipe"
    fileops.write_json(
        deriv / "dataset_description.json",
        {
            "Name": "pipe",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "maskmaker"}],
            "DatasetLinks": {"raw": "../.."},
        },
    )
    img = nib.load(ds["image"])
    data = img.get_fdata()
    mask = (data > np.median(data)).astype(np.uint8)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(mask, img.affine))  # pipelines: RAS
    mask_file = (
        deriv / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_space-T1w_desc-brain_mask.nii.gz"
    )
    fileops.ensure_dir(mask_file.parent)
    nib.save(canonical, mask_file)
    fileops.write_json(
        mask_file.with_name(mask_file.name.replace(".nii.gz", ".json")),
        {"Sources": ["bids:raw:sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"]},
    )
    assert resolve_bids_uri("bids:raw:sub-01", deriv) == deriv / "../.." / "sub-01"
    result = export_nifti(mask_file, tmp_path / "out")
    assert result.kind == "seg" and result.same_grid
    check_files(result.files)
    assert_in_reference_study(result, ds["t1"][0])
    seg = header(result.files[0])
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "maskmaker"
    assert_segmentation_matches(
        result.files[0], np.asanyarray(canonical.dataobj), canonical.affine, {1: "brain"}
    )


def test_a_soft_mask_is_written_as_an_image_not_rounded_into_a_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A _mask of values 0 to 3 (soft, or weighted): a segmentation would round them (the
    voxels of 1.5 and more were dropped, and the summary said "values exact"). It is
    written as an MR image, saying why; asked for as a segmentation, it is refused."""
    root = tmp_path / "bids"
    ds = build_dataset(root)
    img = nib.load(ds["image"])
    data = img.get_fdata()
    soft = (data / data.max() * 3).astype(np.float32)
    mask_file = ds["image"].with_name("sub-01_ses-1_label-soft_mask.nii.gz")
    nib.save(nib.Nifti1Image(soft, img.affine), mask_file)
    reference = ExportOptions(reference=ds["image"]).reference
    result = export_nifti(mask_file, tmp_path / "out", ExportOptions(reference=reference))
    assert result.kind == "mr"
    assert "not non-negative integers" in caplog.text and mask_file.name in caplog.text
    with pytest.raises(UsageError, match="is not a label map"):
        export_nifti(mask_file, tmp_path / "seg", ExportOptions(kind="seg", reference=reference))


def test_reference_given_as_a_bids_image_for_a_nifti_without_sidecar(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    ds = build_dataset(root)
    img = nib.load(ds["image"])
    lone = tmp_path / "result.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj) * 2, img.affine), lone)
    result = export_nifti(lone, tmp_path / "out", ExportOptions(reference=ds["image"]))
    assert result.kind == "mr" and result.exact
    assert header(result.files[0]).SeriesDescription == "result NOT FOR CLINICAL USE"
    assert_in_reference_study(result, ds["t1"][0])


def test_folder_with_several_series(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    ds = build_dataset(root)
    img = nib.load(ds["image"])
    unrelated_grid = img.affine.copy()
    unrelated_grid[:3, :3] *= 0.9  # a resampled image: on no series' grid
    lone = tmp_path / "resampled.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), unrelated_grid), lone)
    with pytest.raises(ReferenceError_, match="holds 2 series") as info:
        export_nifti(lone, tmp_path / "out", ExportOptions(reference=ds["dicom_dir"]))
    assert "--reference-series-uid" in str(info.value)
    flair_uid = str(header(ds["flair"][0]).SeriesInstanceUID)
    result = export_nifti(
        lone,
        tmp_path / "out",
        ExportOptions(reference=ds["dicom_dir"], reference_series_uid=flair_uid),
    )
    assert result.reference_series_uid == flair_uid
    # the only series on the NIfTI's grid is chosen without asking
    on_grid = export_nifti(ds["image"], tmp_path / "out2", ExportOptions(reference=ds["dicom_dir"]))
    assert on_grid.reference_series_uid == str(header(ds["t1"][0]).SeriesInstanceUID)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the reference's, on purpose
def test_invalid_reference_values_are_not_copied(tmp_path: Path) -> None:
    """Anonymizers write '***' into dates and ages (as in dcm_qa_uih): written empty."""
    masked = Subject(birth_date="***", age="***")
    src = tmp_path / "src"
    files = write_series(src, subject=masked, study=Study(date="***"))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesTime = "**:**"
        ds.save_as(path)
    first = first_conversion(tmp_path, src)
    result, back = round_trip(tmp_path, src, first)
    assert_same_nifti(first, back)
    out = header(result.files[0])
    assert out.PatientBirthDate == "" and out.PatientAge == "" and out.StudyDate == ""
    assert out.PatientID == "PID0001"


def test_anonymized_reference_keeps_the_output_anonymized(tmp_path: Path) -> None:
    anonymous = Subject(
        patient_id="sub-01",
        patient_name="sub-01",
        birth_date="",
        age="",
        extra={"PatientIdentityRemoved": "YES"},
    )
    root = tmp_path / "bids"
    ds = build_dataset(root, subject=anonymous)
    sidecar_file = ds["image"].with_name("sub-01_ses-1_T1w.json")
    sidecar = json.loads(sidecar_file.read_text())
    sidecar.update(
        {
            "PatientName": "Doe^Jane",
            "PatientBirthDate": "19800101",
            "InstitutionName": "General Hospital",
        }
    )  # as dcm2niix -ba n writes
    fileops.write_json(sidecar_file, sidecar)
    result = export_nifti(ds["image"], tmp_path / "out")
    out = header(result.files[0])
    assert out.PatientID == "sub-01" and out.PatientName == "sub-01"
    assert out.PatientIdentityRemoved == "YES"
    assert out.SeriesDate == out.StudyDate == header(ds["t1"][0]).StudyDate
    for path in result.files:
        content = path.read_bytes()
        for leak in (b"Doe^Jane", b"19800101", b"General Hospital", b"PID0001"):
            assert leak not in content, (path.name, leak)


# --------------------------------------------------------------------------- bad input


def test_other_subject_is_refused_unless_forced(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    ds = build_dataset(root)
    other = tmp_path / "sub-02_ses-1_desc-x_T1w.nii.gz"
    shutil.copy(ds["image"], other)
    with pytest.raises(ReferenceError_, match="subject '02' but the reference is subject '01'"):
        export_nifti(other, tmp_path / "out", ExportOptions(reference=ds["dicom_dir"] / ".."))
    result = export_nifti(other, tmp_path / "out", ExportOptions(reference=ds["image"], force=True))
    assert result.forced and "subject" in result.forced[0]


@pytest.mark.parametrize("how", ["shifted", "template"])
def test_unrelated_space_is_refused(tmp_path: Path, how: str) -> None:
    src = tmp_path / "src"
    write_series(src, orientation="axial")
    img = nib.load(first_conversion(tmp_path, src))
    affine = img.affine.copy()
    name = "sub-01_desc-x_T1w.nii.gz"
    if how == "shifted":
        affine[:3, 3] += 400.0
    else:
        name = "sub-01_space-MNI152NLin2009cAsym_desc-x_T1w.nii.gz"
    moved = tmp_path / name
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), affine), moved)
    expected = "0% overlap" if how == "shifted" else "template space"
    with pytest.raises(ReferenceError_, match=expected) as info:
        export_nifti(moved, tmp_path / "out", ExportOptions(reference=src))
    assert "--force" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_corrupt_nifti_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_series(src)
    first = first_conversion(tmp_path, src)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(gzip.compress(gzip.decompress(first.read_bytes())[:900]))
    with pytest.raises(ConversionError, match=r"truncated\.nii\.gz"):
        export_nifti(truncated, tmp_path / "out", ExportOptions(reference=src))
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(b"not a nifti at all" * 30)
    with pytest.raises(ConversionError, match=r"cannot read .*garbage\.nii as NIfTI"):
        export_nifti(garbage, tmp_path / "out", ExportOptions(reference=src))
    with pytest.raises(ConversionError, match="not found"):
        export_nifti(tmp_path / "missing.nii.gz", tmp_path / "out", ExportOptions(reference=src))


def test_missing_reference_and_existing_output(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_series(src)
    first = first_conversion(tmp_path, src)  # dcm2niix sidecar: no bidsport keys
    with pytest.raises(ReferenceError_, match="no reference DICOM series"):
        export_nifti(first, tmp_path / "out")
    export_nifti(first, tmp_path / "out", ExportOptions(reference=src))
    with pytest.raises(OutputError, match="already exists"):
        export_nifti(first, tmp_path / "out", ExportOptions(reference=src))
    again = export_nifti(first, tmp_path / "out", ExportOptions(reference=src, overwrite=True))
    assert len(list(again.output_dir.iterdir())) == len(again.files)
    elsewhere = tmp_path / "elsewhere"  # the series' folder is a link to an empty folder
    elsewhere.mkdir()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / again.output_dir.name).symlink_to(elsewhere)
    with pytest.raises(OutputError, match="is a symbolic link"):
        export_nifti(first, linked, ExportOptions(reference=src))
    result = export_nifti(first, linked, ExportOptions(reference=src, overwrite=True))
    assert not result.output_dir.is_symlink() and result.files
    assert not any(elsewhere.iterdir())  # nothing was written through the link
    img = nib.load(first)
    continuous = tmp_path / "continuous.nii.gz"
    nib.save(nib.Nifti1Image(img.get_fdata().astype(np.float32) / 7, img.affine), continuous)
    with pytest.raises(UsageError, match="not a label map"):
        export_nifti(continuous, tmp_path / "seg", ExportOptions(reference=src, kind="seg"))


def test_exports_of_one_reference_get_their_own_series_numbers(tmp_path: Path) -> None:
    """Two images of one reference, exported by two calls into one folder, get two
    SeriesNumbers (a viewer lists the study's series by number); a re-export with
    --overwrite keeps its series' number."""
    src = tmp_path / "src"
    write_series(src)
    first = first_conversion(tmp_path, src)
    reference_number = int(header(next(src.rglob("*.dcm"))).SeriesNumber)
    second = tmp_path / "second.nii.gz"
    shutil.copy(first, second)
    out = tmp_path / "out"
    numbers = []
    for nifti in (first, second):
        result = export_nifti(nifti, out, ExportOptions(reference=src))
        numbers.append(int(header(result.files[0]).SeriesNumber))
        assert result.series_number == numbers[-1]
    assert numbers == [reference_number + 1000, reference_number + 1001]
    again = export_nifti(first, out, ExportOptions(reference=src, overwrite=True))
    assert again.series_number == reference_number + 1000
    # another study's series in the folder do not count
    other = tmp_path / "other"
    write_series(other, study=Study(key="study2"))
    other_nifti = tmp_path / "other.nii.gz"
    shutil.copy(first_conversion(tmp_path / "o", other), other_nifti)
    assert export_nifti(other_nifti, out, ExportOptions(reference=other)).series_number == (
        int(header(next(other.rglob("*.dcm"))).SeriesNumber) + 1000
    )


# --------------------------------------------------------------------------- real data


REAL = {
    # name: (folder, what it covers)
    "ge-3d-t1-oblique": "dcm_qa_ge/In/05_3D_Ax_T1_MP_RAGE_R22",
    "ge-dwi-double-oblique-4d": "dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2",
    "ge-dwi-multiband-4d": "dcm_qa_ge/In/04_Ax_DWI_TENSOR_R2MB2",
    "philips-fmri-oblique-4d-scaled": "dcm_qa_philips/In/Magdeburg_2014/fmri",
    "siemens-enhanced-4d": "dcm_qa_enh/In/Siemens/XA10",
    "siemens-mosaic-4d": "dcm_qa_nih/In/20180918Si/mr_0003",
    "uih-dti-no-position": "dcm_qa_uih/In/DTI_134434/dti_tra_dir16_AP_SaveBySlc__140028",
}


@pytest.mark.parametrize("case", list(REAL))
def test_round_trip_real_data(tmp_path: Path, shared_data: Path, case: str) -> None:
    src = shared_data / REAL[case]
    first = first_conversion(tmp_path, src)
    result, back = round_trip(tmp_path, src, first)
    assert result.exact
    assert_same_nifti(first, back)
    ref_file = next(p for p in sorted(src.iterdir()) if p.suffix != ".txt")
    assert_in_reference_study(result, ref_file)
    assert_equipment(header(result.files[0]), header(ref_file))
    if ge_acquisition(header(result.files[0])):  # dcm2niix reads the series as its source
        assert dcm2niix_sidecar(back).get("SliceTiming") == dcm2niix_sidecar(first).get(
            "SliceTiming"
        )
    for kind in ("sc", "enhanced"):  # every kind, every vendor: dcm2niix stays silent
        round_trip(tmp_path, src, first, kind=kind)
    img = nib.load(first)
    volume = img.get_fdata()[..., 0] if img.ndim == 4 else img.get_fdata()
    mask = (volume > np.percentile(volume, 80)).astype(np.uint8)
    mask_file = tmp_path / "sub-01_label-bright_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, img.affine), mask_file)
    seg = export_nifti(mask_file, tmp_path / "seg", ExportOptions(reference=src))
    check_files(seg.files)
    assert_equipment(header(seg.files[0]), header(ref_file))
    _, problems = dcm2niix_convert(seg.output_dir, tmp_path / "seg_back")
    assert_dcm2niix_silent(problems)


def test_real_data_enhanced_and_segmentation(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / REAL["philips-fmri-oblique-4d-scaled"]
    first = first_conversion(tmp_path, src)
    _, back = round_trip(tmp_path, src, first, kind="enhanced")
    assert_same_nifti(first, back)
    img = nib.load(first)
    volume = img.get_fdata()[..., 0]
    labels = np.zeros(volume.shape, np.uint8)
    labels[volume > np.percentile(volume, 60)] = 1
    labels[volume > np.percentile(volume, 90)] = 3
    dseg = tmp_path / "sub-01_desc-x_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, img.affine), dseg)
    labels_json = tmp_path / "labels.json"
    fileops.write_json(labels_json, {"1": "brain", "3": {"name": "bright", "color": "#ffff00"}})
    result = export_nifti(
        dseg, tmp_path / "seg", ExportOptions(reference=src, labels_file=labels_json)
    )
    check_files(result.files)
    assert_segmentation_matches(result.files[0], labels, img.affine, {1: "brain", 3: "bright"})


# --------------------------------------------------------------------------- CLI, descriptor


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    write_series(src, orientation="coronal")
    first = first_conversion(tmp_path, src)
    code = cli.main(
        [
            str(first),
            "-o",
            str(tmp_path / "out"),
            "--reference",
            str(src),
            "--series-description",
            "my {name}",
            "--series-number",
            "77",
            "--no-disclaimer",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "series 77 'my 3'" in printed and "values exact" in printed
    out = header(next((tmp_path / "out").rglob("*.dcm")))
    assert out.SeriesDescription == "my 3" and out.SeriesNumber == 77
    assert "NOT FOR CLINICAL USE" not in out.ImageComments
    # several inputs: one fails (no reference in its sidecar), the other is written
    code = cli.main(
        [
            str(first),
            str(tmp_path / "nope.nii.gz"),
            "-o",
            str(tmp_path / "o2"),
            "--reference",
            str(src),
        ]
    )
    assert code == 3
    assert "1 of 2 NIfTI images written" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main([str(first)])  # -o is required


def test_descriptor_matches_the_parser(tmp_path: Path) -> None:
    descriptor_file = REPO / "descriptors" / "bidsport-todicom.json"
    descriptor = json.loads(descriptor_file.read_text())
    flags = {i.get("command-line-flag") for i in descriptor["inputs"]}
    for action in cli.build_parser()._actions:
        if action.dest in ("help", "version"):
            continue
        if action.option_strings:
            assert any(f in flags for f in action.option_strings), action.option_strings
    if BOSH is None:
        pytest.skip("bosh (boutiques) is not installed")
    result = run_command([BOSH, "validate", descriptor_file])
    assert result.returncode == 0, result.stdout + result.stderr


def test_sidecar_mapping_and_label_tables(tmp_path: Path) -> None:
    attrs = dicom_attributes(
        {
            "RepetitionTime": 0.8,
            "EchoTime": 0.037,
            "InversionTime": 0.9,
            "FlipAngle": 52,
            "MagneticFieldStrength": 3,
            "EchoTrainLength": 64.0,
            "SequenceVariant": "SK_SP_MP",
            "ScanningSequence": "EP",
            "MRAcquisitionType": "2D",
            "ProtocolName": "rest",
            "ScanOptions": "FS_NOT-A-CODE",
            "SliceTiming": [0, 0.4],
            "EchoNumber": 2,
        }
    )
    assert attrs == {
        "RepetitionTime": 800.0,
        "EchoTime": 37.0,
        "InversionTime": 900.0,
        "FlipAngle": 52.0,
        "MagneticFieldStrength": 3.0,
        "EchoTrainLength": 64,
        "EchoNumbers": 2,
        "ScanningSequence": ["EP"],
        "SequenceVariant": ["SK", "SP", "MP"],
        "MRAcquisitionType": "2D",
        "ProtocolName": "rest",
    }
    ge = dicom_attributes({"ScanOptions": "EDR_GEMS\\FILTERED_GEMS\\IR_GEMS"})
    assert ge["ScanOptions"] == ["EDR_GEMS", "FILTERED_GEMS", "IR_GEMS"]  # (not EDR, GEMS...)
    table = tmp_path / "x_dseg.tsv"
    table.write_text("index\tname\n1\tLeft-Hippocampus\n2\tRight-Hippocampus\n")
    assert read_label_table(table)[2].name == "Right-Hippocampus"
    bad = tmp_path / "bad.tsv"
    bad.write_text("value\tlabel\n1\tx\n")
    with pytest.raises(UsageError, match="needs the columns 'index' and 'name'"):
        read_label_table(bad)


# --------------------------------------------------------------------------- slice thickness


def nifti_image(path: Path) -> nib.Nifti1Image:
    """A NIfTI-1 image (dcm2niix writes NIfTI-1), typed as such."""
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image), path
    return image


def pixel_measures(path: Path) -> tuple[float, float | None]:
    """(SliceThickness, SpacingBetweenSlices or None) of a classic or multi-frame file."""
    ds = header(path)
    if "SharedFunctionalGroupsSequence" in ds:
        ds = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    spacing = ds.get("SpacingBetweenSlices")  # not in Secondary Capture
    return float(ds.SliceThickness), None if spacing is None else float(spacing)


def test_slice_thickness_is_kept_on_the_reference_slices(tmp_path: Path) -> None:
    """1.5 mm slices every 2.5 mm (a 1 mm gap): the thickness is not the spacing."""
    src = tmp_path / "src"
    write_series(src, rotate=OBLIQUE, extra={"SliceThickness": 1.5})
    first = first_conversion(tmp_path, src)
    assert dcm2niix_sidecar(first)["SliceThickness"] == 1.5
    for kind in ("mr", "sc", "enhanced"):
        result, back = round_trip(tmp_path, src, first, kind=kind)
        expected = (1.5, None) if kind == "sc" else (1.5, 2.5)
        assert pixel_measures(result.files[0]) == pytest.approx(expected, abs=1e-5), kind
        assert dcm2niix_sidecar(back)["SliceThickness"] == 1.5
    img = nifti_image(first)
    mask_file = tmp_path / "sub-01_label-x_mask.nii.gz"
    nib.save(nib.Nifti1Image((img.get_fdata() > 500).astype(np.uint8), img.affine), mask_file)
    seg = export_nifti(mask_file, tmp_path / "seg", ExportOptions(reference=src))
    assert pixel_measures(seg.files[0]) == pytest.approx((1.5, 2.5), abs=1e-5)
    # no sidecar: the reference's thickness; a sidecar's own value wins over the reference's
    lone = tmp_path / "lone" / "result.nii.gz"
    fileops.ensure_dir(lone.parent)
    nib.save(img, lone)
    result = export_nifti(lone, tmp_path / "o1", ExportOptions(reference=src))
    assert pixel_measures(result.files[0]) == pytest.approx((1.5, 2.5), abs=1e-5)
    fileops.write_json(lone.with_name("result.json"), {"SliceThickness": 1.75})
    result = export_nifti(lone, tmp_path / "o2", ExportOptions(reference=src))
    assert pixel_measures(result.files[0]) == pytest.approx((1.75, 2.5), abs=1e-5)
    # resampled across the slices: the new slices' thickness is unknown, the spacing is used
    finer = img.affine.copy()
    finer[:3, 2] /= 2
    resampled = tmp_path / "resampled.nii.gz"
    nib.save(nib.Nifti1Image(np.repeat(img.get_fdata(), 2, axis=2), finer), resampled)
    result = export_nifti(resampled, tmp_path / "o3", ExportOptions(reference=src))
    assert not result.same_grid
    assert pixel_measures(result.files[0]) == pytest.approx((1.25, 1.25), abs=1e-5)


@pytest.mark.parametrize(
    "case, thickness, spacing",
    [
        ("dcm_qa_nih/In/20180918Si/mr_0003", 3.0, 12.0),  # Siemens mosaic, 9 mm gap
        ("dcm_qa_philips/In/Magdeburg_2014/fmri", 6.0, 8.0),  # Philips, 2 mm gap
    ],
)
def test_slice_thickness_real_data(
    tmp_path: Path, shared_data: Path, case: str, thickness: float, spacing: float
) -> None:
    src = shared_data / case
    first = first_conversion(tmp_path, src)
    result = export_nifti(first, tmp_path / "out", ExportOptions(reference=src, kind="mr"))
    assert pixel_measures(result.files[0]) == pytest.approx((thickness, spacing), abs=1e-4)
    lone = tmp_path / "lone.nii.gz"  # without the sidecar: from the reference's header
    shutil.copy(first, lone)
    result = export_nifti(lone, tmp_path / "o2", ExportOptions(reference=src, kind="enhanced"))
    assert pixel_measures(result.files[0]) == pytest.approx((thickness, spacing), abs=1e-4)


# --------------------------------------------------------------------------- single planes


def plane_cases(img: nib.Nifti1Image, slice_axis: int) -> dict[int, nib.Nifti1Image]:
    """One plane across each in-plane axis of the reference, by the axis it is thin along."""
    out = {}
    for axis in range(3):
        if axis != slice_axis:
            index = [slice(None)] * 3
            index[axis] = slice(4, 5)
            out[axis] = img.slicer[tuple(index)]
    return out


def as_2d(plane: nib.Nifti1Image, thin_axis: int) -> nib.Nifti1Image:
    """The same plane as a 2D NIfTI (the thin axis moved last, then dropped)."""
    perm = [a for a in range(3) if a != thin_axis] + [thin_axis]
    affine = plane.affine.copy()
    affine[:3, :3] = plane.affine[:3, perm]
    data = np.transpose(np.asanyarray(plane.dataobj), perm)[:, :, 0]
    return nib.Nifti1Image(data, affine)


@pytest.mark.parametrize("orientation", ["sagittal", "axial"])
def test_single_plane_across_the_reference_slices(tmp_path: Path, orientation: str) -> None:
    """One plane of another orientation than the reference's slices becomes one image in its
    own plane (not frames of one row each), which dcm2niix reads back as the same plane."""
    src = tmp_path / "src"
    write_series(src, orientation=orientation)
    first = first_conversion(tmp_path, src)
    img = nifti_image(first)
    ref = header(next(src.iterdir()))
    normal = np.cross(
        np.asarray(ref.ImageOrientationPatient[:3], float),
        np.asarray(ref.ImageOrientationPatient[3:], float),
    )
    directions = ras_to_lps(img.affine)[:3, :3]
    slice_axis = int(np.argmax(np.abs(normal @ directions)))
    for axis, plane in plane_cases(img, slice_axis).items():
        name = f"across-axis-{axis}"
        plane_file = tmp_path / f"{name}.nii.gz"
        nib.save(plane, plane_file)
        flat_file = tmp_path / f"{name}_2d.nii.gz"  # the same plane, as a 2D NIfTI
        nib.save(as_2d(plane, axis), flat_file)
        for nifti in (plane_file, flat_file):
            result, back = round_trip(tmp_path / f"rt_{nifti.name}", src, nifti)
            assert len(result.files) == 1, name
            out = header(result.files[0])
            assert out.Rows > 1 and out.Columns > 1
            assert out.Rows * out.Columns == int(np.prod(plane.shape))
            iop = np.asarray(out.ImageOrientationPatient, dtype=float)
            assert abs(float(np.dot(np.cross(iop[:3], iop[3:]), normal))) < 1e-6  # across
            assert_same_nifti(plane_file, back, exact_layout=False)


def test_a_line_of_voxels_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_series(src, orientation="sagittal")
    img = nifti_image(first_conversion(tmp_path, src))
    line = tmp_path / "line.nii.gz"
    nib.save(img.slicer[2:3, 3:4, :], line)
    with pytest.raises(ConversionError, match=r"line.nii.gz has shape \(1, 1, 6\).*not an image"):
        export_nifti(line, tmp_path / "out", ExportOptions(reference=src, kind="mr"))


# --------------------------------------------------------------------------- dataset root


def test_reference_found_before_the_group_level(tmp_path: Path) -> None:
    """After the participant level only (no dataset_description.json yet), the dataset root
    is the folder above sub-*/ses-*/<datatype>/."""
    root = tmp_path / "bids"
    ds = build_dataset(root)
    (root / "dataset_description.json").unlink()
    assert find_dataset_root(ds["image"]) is None
    assert layout_root(ds["image"]) == root.absolute()
    result = export_nifti(ds["image"], tmp_path / "out")
    assert result.reference.endswith("BidsportSourceDicom of sub-01_ses-1_T1w.nii.gz)")
    assert result.reference_series_uid == str(header(ds["t1"][0]).SeriesInstanceUID)
    # the SeriesInstanceUID lookup in sourcedata/dicom finds the root the same way
    sidecar_file = ds["image"].with_name("sub-01_ses-1_T1w.json")
    sidecar = json.loads(sidecar_file.read_text())
    listed = sidecar.pop("BidsportSourceDicom")
    fileops.write_json(sidecar_file, sidecar)
    result = export_nifti(ds["image"], tmp_path / "out2")
    assert result.reference_series_uid == sidecar["SeriesInstanceUID"]
    # a missing source file is named where it was looked for: under the dataset root
    sidecar["BidsportSourceDicom"] = listed
    fileops.write_json(sidecar_file, sidecar)
    (root / listed[0]).unlink()
    with pytest.raises(ReferenceError_) as info:
        export_nifti(ds["image"], tmp_path / "out3")
    message = str(info.value)
    assert f"{root.absolute() / listed[0]} (BidsportSourceDicom" in message
    assert "anat/sourcedata" not in message


def test_unresolved_sources_are_named(tmp_path: Path) -> None:
    """A sidecar that has Sources which cannot be followed says which and why."""
    root = tmp_path / "bids"
    ds = build_dataset(root)
    img = nifti_image(ds["image"])
    lone_dir = tmp_path / "elsewhere"
    fileops.ensure_dir(lone_dir)
    t1map = lone_dir / "sub-01_ses-1_T1map.nii.gz"
    nib.save(nib.Nifti1Image(img.get_fdata().astype(np.float32), img.affine), t1map)
    uri = "bids:raw:sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    fileops.write_json(lone_dir / "sub-01_ses-1_T1map.json", {"Sources": [uri]})
    with pytest.raises(ReferenceError_) as info:
        export_nifti(t1map, tmp_path / "out")
    message = str(info.value)
    assert "has no" not in message
    assert f"Sources entry {uri!r}" in message and "DatasetLinks 'raw'" in message
    # with the link, but to a file that is not there: the missing file is named
    fileops.write_json(
        lone_dir / "dataset_description.json",
        {"Name": "d", "BIDSVersion": "1.9.0", "DatasetLinks": {"raw": str(tmp_path / "gone")}},
    )
    with pytest.raises(ReferenceError_, match=r"gone/sub-01/ses-1/anat/.*which does not exist"):
        export_nifti(t1map, tmp_path / "out")
    fileops.write_json(
        lone_dir / "dataset_description.json",
        {"Name": "d", "BIDSVersion": "1.9.0", "DatasetLinks": {"raw": str(root)}},
    )
    result = export_nifti(t1map, tmp_path / "out")
    assert result.reference_series_uid == str(header(ds["t1"][0]).SeriesInstanceUID)


def test_cli_quiet_prints_errors_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    write_series(src)
    first = first_conversion(tmp_path, src)
    args = [str(first), "-o", str(tmp_path / "out"), "--reference", str(src), "-q"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out == ""
    code = cli.main(
        [str(tmp_path / "nope.nii.gz"), *args[:1], "-o", str(tmp_path / "o2"), *args[3:]]
    )
    assert code == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "nope.nii.gz" in captured.err and "not found" in captured.err
