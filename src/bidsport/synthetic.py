"""Deterministic synthetic MR DICOM series that dcm2niix converts.

Used by the tests, the benchmark and ``bidsport-example`` (the bundled example inbox).
Every UID is derived from the given seed strings, so the same call writes the same files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

ORIENTATIONS: dict[str, tuple[float, ...]] = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
}


@dataclass(frozen=True)
class Subject:
    """Identity written into every file (distinctive, so leaks can be grepped for)."""

    patient_id: str = "PID0001"
    patient_name: str = "Doe^Jane"
    birth_date: str = "19800101"
    sex: str = "F"
    age: str = "040Y"
    weight: float = 60.0
    extra: Mapping[str, Any] = field(default_factory=dict)  #: more identifying tags


@dataclass(frozen=True)
class Study:
    key: str = "study1"  #: seed for the StudyInstanceUID
    date: str = "20240102"
    time: str = "090000"
    accession: str = "ACC0001"
    institution: str = "General Hospital"
    station: str = "MRC12345"
    manufacturer: str = "SIEMENS"
    model: str = "Prisma"
    field_strength: float = 3.0


@dataclass(frozen=True)
class SeriesSpec:
    """One series to write: geometry, sequence parameters and naming."""

    description: str
    series_number: int
    n_slices: int = 6
    n_volumes: int = 1
    rows: int = 16
    columns: int = 16
    orientation: str = "axial"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
    scanning_sequence: tuple[str, ...] = ("GR",)
    sequence_variant: tuple[str, ...] = ("SP",)
    scan_options: tuple[str, ...] = ()
    sequence_name: str = "*fl3d1"
    mr_acquisition_type: str = "3D"
    repetition_time: float = 2000.0
    echo_time: float = 3.0
    inversion_time: float | None = None
    flip_angle: float = 9.0
    b_values: Sequence[float] = ()  #: one per volume (DWI)
    echo_number: int = 1
    phase_encoding: str = "COL"
    acquisition_time: str = "090500.000000"
    pixel_spacing: float = 2.0
    slice_thickness: float = 2.0
    protocol_name: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  #: more tags (keyword → value)


def uid(*parts: object) -> str:
    """A deterministic UID from ``parts``."""
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _volume_pixels(spec: SeriesSpec, volume: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(
        np.arange(spec.n_slices), np.arange(spec.rows), np.arange(spec.columns), indexing="ij"
    )
    base = 100 + 10 * zz + 3 * yy + xx + 7 * volume
    noise = rng.integers(0, 5, size=base.shape)
    return (base + noise).astype(np.uint16)


def _add_seconds(hhmmss: str, seconds: float) -> str:
    total = int(hhmmss[0:2]) * 3600 + int(hhmmss[2:4]) * 60 + float(hhmmss[4:] or 0) + seconds
    hours, rem = divmod(total, 3600)
    minutes, secs = divmod(rem, 60)
    return f"{int(hours) % 24:02d}{int(minutes):02d}{secs:09.6f}"


def series_datasets(
    spec: SeriesSpec, subject: Subject = Subject(), study: Study = Study()
) -> list[Dataset]:
    """The datasets of one series, one per slice and volume (instance order)."""
    study_uid = uid(study.key, subject.patient_id)
    series_uid = uid(study.key, subject.patient_id, spec.series_number, spec.description)
    frame_uid = uid(study.key, subject.patient_id, "frame")
    orient = ORIENTATIONS[spec.orientation]
    row_dir = np.array(orient[:3])
    col_dir = np.array(orient[3:])
    normal = np.cross(row_dir, col_dir)
    origin = -0.5 * spec.pixel_spacing * (spec.columns * row_dir + spec.rows * col_dir)
    datasets = []
    instance = 0
    for volume in range(spec.n_volumes):
        pixels = _volume_pixels(spec, volume, seed=spec.series_number * 1000 + volume)
        acq_time = _add_seconds(spec.acquisition_time, volume * spec.repetition_time / 1000.0)
        for z in range(spec.n_slices):
            instance += 1
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            sop_uid = generate_uid(entropy_srcs=[series_uid, str(instance)])
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.Modality = "MR"
            ds.PatientName = subject.patient_name
            ds.PatientID = subject.patient_id
            ds.PatientBirthDate = subject.birth_date
            ds.PatientSex = subject.sex
            ds.PatientAge = subject.age
            ds.PatientWeight = subject.weight
            ds.PatientPosition = "HFS"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.StudyDate = study.date
            ds.SeriesDate = study.date
            ds.AcquisitionDate = study.date
            ds.ContentDate = study.date
            ds.StudyTime = study.time
            ds.SeriesTime = spec.acquisition_time
            ds.AcquisitionTime = acq_time
            ds.ContentTime = acq_time
            ds.AccessionNumber = study.accession
            ds.StudyID = "1"
            ds.InstitutionName = study.institution
            ds.StationName = study.station
            ds.Manufacturer = study.manufacturer
            ds.ManufacturerModelName = study.model
            ds.MagneticFieldStrength = study.field_strength
            ds.SeriesNumber = spec.series_number
            ds.InstanceNumber = instance
            ds.AcquisitionNumber = 1
            ds.SeriesDescription = spec.description
            ds.ProtocolName = spec.protocol_name or spec.description
            ds.SequenceName = spec.sequence_name
            ds.ImageType = list(spec.image_type)
            ds.ScanningSequence = list(spec.scanning_sequence)
            ds.SequenceVariant = list(spec.sequence_variant)
            if spec.scan_options:
                ds.ScanOptions = list(spec.scan_options)
            ds.MRAcquisitionType = spec.mr_acquisition_type
            ds.RepetitionTime = spec.repetition_time
            ds.EchoTime = spec.echo_time
            if spec.inversion_time is not None:
                ds.InversionTime = spec.inversion_time
            ds.FlipAngle = spec.flip_angle
            ds.EchoNumbers = spec.echo_number
            ds.InPlanePhaseEncodingDirection = spec.phase_encoding
            ds.SliceThickness = spec.slice_thickness
            ds.SpacingBetweenSlices = spec.slice_thickness
            ds.PixelSpacing = [spec.pixel_spacing, spec.pixel_spacing]
            ds.ImageOrientationPatient = list(orient)
            position = origin + normal * (z * spec.slice_thickness)
            ds.ImagePositionPatient = [round(float(v), 4) for v in position]
            ds.SliceLocation = round(float(np.dot(position, normal)), 4)
            if spec.n_volumes > 1:
                ds.TemporalPositionIdentifier = volume + 1
                ds.NumberOfTemporalPositions = spec.n_volumes
            if spec.b_values:
                b = float(spec.b_values[volume])
                ds.DiffusionBValue = b
                if b > 0:
                    angle = 2 * np.pi * volume / max(len(spec.b_values), 1)
                    ds.DiffusionGradientOrientation = [
                        round(float(np.cos(angle)), 6),
                        round(float(np.sin(angle)), 6),
                        0.0,
                    ]
                    ds.DiffusionDirectionality = "DIRECTIONAL"
                else:
                    ds.DiffusionDirectionality = "NONE"
            ds.Rows = spec.rows
            ds.Columns = spec.columns
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 12
            ds.HighBit = 11
            ds.PixelRepresentation = 0
            ds.PixelData = pixels[z].tobytes()
            for keyword, value in {**subject.extra, **spec.extra}.items():
                setattr(ds, keyword, value)
            if ds.SeriesInstanceUID != series_uid:  # overridden: keep SOP UIDs unique
                ds.SOPInstanceUID = uid(ds.SeriesInstanceUID, instance)
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            datasets.append(ds)
    return datasets


def write_series(
    spec: SeriesSpec,
    out_dir: Path,
    subject: Subject = Subject(),
    study: Study = Study(),
    *,
    name_pattern: str = "{series:03d}_{instance:05d}.dcm",
) -> list[Path]:
    """Write one series into ``out_dir``; return the file paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in series_datasets(spec, subject, study):
        path = out_dir / name_pattern.format(
            series=spec.series_number, instance=int(ds.InstanceNumber)
        )
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# A small but complete session: what a curator typically gets from one scanner visit.
def typical_session(acq_start: str = "090000") -> list[SeriesSpec]:
    """Localizer, T1w, T2w, FLAIR, rest BOLD (+sbref), DWI, fieldmap pair, a derived map."""
    t = acq_start

    def at(minutes: int) -> str:
        return _add_seconds(t, minutes * 60)[:6] + ".000000"

    return [
        SeriesSpec(
            "localizer",
            1,
            n_slices=3,
            image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
            sequence_name="*fl2d1",
            mr_acquisition_type="2D",
            repetition_time=8.6,
            echo_time=4.0,
            flip_angle=20.0,
            acquisition_time=at(0),
        ),
        SeriesSpec(
            "t1_mprage_sag",
            2,
            orientation="sagittal",
            scanning_sequence=("GR", "IR"),
            sequence_variant=("SK", "SP", "MP"),
            sequence_name="*tfl3d1_16ns",
            repetition_time=2300.0,
            echo_time=2.98,
            inversion_time=900.0,
            flip_angle=9.0,
            acquisition_time=at(1),
        ),
        SeriesSpec(
            "t2_spc_sag",
            3,
            orientation="sagittal",
            scanning_sequence=("SE",),
            sequence_variant=("SK", "SP", "OSP"),
            sequence_name="*spc_314ns",
            repetition_time=3200.0,
            echo_time=410.0,
            flip_angle=120.0,
            acquisition_time=at(6),
        ),
        SeriesSpec(
            "t2_flair_tra",
            4,
            scanning_sequence=("SE", "IR"),
            sequence_variant=("SK", "SP", "MP"),
            sequence_name="*tir2d1_21",
            mr_acquisition_type="2D",
            repetition_time=9000.0,
            echo_time=81.0,
            inversion_time=2500.0,
            flip_angle=150.0,
            acquisition_time=at(10),
        ),
        SeriesSpec(
            "rfMRI_REST_AP_SBRef",
            5,
            scanning_sequence=("EP",),
            sequence_variant=("SK",),
            sequence_name="epfid2d1_64",
            mr_acquisition_type="2D",
            repetition_time=800.0,
            echo_time=37.0,
            flip_angle=52.0,
            acquisition_time=at(14),
        ),
        SeriesSpec(
            "rfMRI_REST_AP",
            6,
            n_volumes=5,
            scanning_sequence=("EP",),
            sequence_variant=("SK",),
            sequence_name="epfid2d1_64",
            mr_acquisition_type="2D",
            repetition_time=800.0,
            echo_time=37.0,
            flip_angle=52.0,
            acquisition_time=at(15),
        ),
        SeriesSpec(
            "dMRI_dir6_AP",
            7,
            n_volumes=7,
            b_values=(0, 1000, 1000, 1000, 1000, 1000, 1000),
            scanning_sequence=("EP",),
            sequence_variant=("SK", "SP"),
            sequence_name="*ep_b1000#1",
            mr_acquisition_type="2D",
            repetition_time=3000.0,
            echo_time=89.0,
            flip_angle=90.0,
            acquisition_time=at(20),
        ),
        SeriesSpec(
            "gre_field_mapping",
            8,
            scanning_sequence=("GR",),
            sequence_variant=("SP",),
            sequence_name="*fm2d2r",
            mr_acquisition_type="2D",
            repetition_time=500.0,
            echo_time=4.92,
            flip_angle=60.0,
            echo_number=1,
            acquisition_time=at(25),
        ),
        SeriesSpec(
            "gre_field_mapping",
            9,
            scanning_sequence=("GR",),
            sequence_variant=("SP",),
            sequence_name="*fm2d2r",
            mr_acquisition_type="2D",
            repetition_time=500.0,
            echo_time=7.38,
            flip_angle=60.0,
            echo_number=2,
            image_type=("ORIGINAL", "PRIMARY", "P", "ND"),
            acquisition_time=at(25),
        ),
        SeriesSpec(
            "dMRI_dir6_AP_ADC",
            10,
            image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"),
            scanning_sequence=("EP",),
            sequence_variant=("SK", "SP"),
            sequence_name="*ep_b0_1000",
            mr_acquisition_type="2D",
            repetition_time=3000.0,
            echo_time=89.0,
            flip_angle=90.0,
            acquisition_time=at(20),
        ),
    ]
