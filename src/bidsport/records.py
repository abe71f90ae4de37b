"""Frozen records passed between the pipeline stages.

Every stage takes explicit arguments and returns these records; nothing here does I/O.
Labels are stored without their ``sub-``/``ses-`` prefixes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class Packet:
    """One entry of the inbox: a folder or an archive holding DICOM files."""

    path: Path  #: the entry in DICOM_DIR
    name: str  #: ``packet_name`` (from ``--pattern``; default: name without archive suffix)
    kind: str  #: "folder", "zip", "tar", "gz" (single gzipped file) or "file"


@dataclass(frozen=True)
class Assignment:
    """A packet assigned to one subject/session."""

    packet: Packet
    subject: str  #: BIDS-legal label, no ``sub-``
    session: str | None  #: BIDS-legal label, no ``ses-``; None for single-session data
    source: str  #: how the labels were found: "mapping", "nameformat" or "default"


@dataclass(frozen=True)
class Problem:
    """Something skipped or failed, with the place and the reason (for tables and reports)."""

    where: str  #: a packet name, a file path relative to its session, or a series id
    reason: str
    stage: str  #: "import", "organize", "classify", "convert", "anonymize", ...
    fatal: bool = False  #: True when it made a packet/series fail (vs. an expected skip)


# --------------------------------------------------------------------------- DICOM


@dataclass(frozen=True, slots=True)
class FileHeader:
    """What bidsport needs from one DICOM file's header (read once per run).

    Strings are stripped, missing values are ``None`` (or empty tuples), numbers are
    floats/ints. ``image_type`` is upper-case.
    """

    path: Path
    size: int
    mtime_ns: int
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    modality: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    software_versions: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    acquisition_number: int | None = None
    echo_number: int | None = None
    temporal_position: int | None = None
    series_description: str | None = None
    protocol_name: str | None = None
    sequence_name: str | None = None
    image_type: tuple[str, ...] = ()
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    scan_options: tuple[str, ...] = ()
    mr_acquisition_type: str | None = None
    repetition_time: float | None = None  #: ms, as in DICOM
    echo_time: float | None = None  #: ms
    inversion_time: float | None = None  #: ms
    flip_angle: float | None = None
    b_value: float | None = None
    magnetic_field_strength: float | None = None
    in_plane_phase_encoding: str | None = None  #: "ROW"/"COL"
    image_orientation: tuple[float, ...] = ()  #: 6 direction cosines (LPS)
    image_position: tuple[float, ...] = ()  #: 3 coordinates (LPS)
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    study_date: str | None = None  #: YYYYMMDD
    series_date: str | None = None
    acquisition_date: str | None = None
    acquisition_time: str | None = None  #: HHMMSS.frac
    series_time: str | None = None
    content_time: str | None = None
    acquisition_datetime: str | None = None
    has_pixel_data: bool = False
    burned_in_annotation: str | None = None
    transfer_syntax_uid: str | None = None
    complex_image_component: str | None = None  #: MAGNITUDE/PHASE/REAL/IMAGINARY (enhanced)
    #: the file starts with the 128-byte preamble and "DICM" (False: it starts with "DICM",
    #: its file meta information or its data set; organize re-reads only those files)
    has_preamble: bool = True


@dataclass(frozen=True)
class Series:
    """The files of one acquisition, as dcm2niix would turn them into one image.

    ``series_id`` is unique within a session: the SeriesInstanceUID, with a suffix where a
    series was split (echo, image type, orientation) or a tag where split series were merged.
    ``header`` is the header of the first file (lowest instance number); the aggregate
    fields summarise all files.
    """

    series_id: str
    header: FileHeader
    files: tuple[Path, ...]
    n_volumes: int  #: estimated number of volumes (4D length), 1 for 3D
    b_values: tuple[float, ...] = ()  #: distinct b-values seen, sorted
    echo_numbers: tuple[int, ...] = ()  #: distinct echo numbers seen, sorted
    echo_times: tuple[float, ...] = ()  #: distinct echo times seen (ms), sorted
    image_types: tuple[tuple[str, ...], ...] = ()  #: distinct ImageType values seen
    acquisition_time: str | None = None  #: earliest acquisition time, HHMMSS.frac
    acquisition_date: str | None = None  #: date belonging to acquisition_time
    merged_from: tuple[str, ...] = ()  #: SeriesInstanceUIDs merged into this one (MFSPLIT)

    @property
    def n_files(self) -> int:
        return len(self.files)


# --------------------------------------------------------------------------- classify

DATATYPES = ("anat", "dwi", "func", "fmap", "perf")
#: fmap suffixes of the images of one field measurement (magnitude and phase series)
FIELD_SUFFIXES = frozenset(
    {"magnitude", "magnitude1", "magnitude2", "phase1", "phase2", "phasediff", "fieldmap"}
)
#: fmap suffixes that are linked to the images they correct (IntendedFor): B0 fieldmaps
#: (``epi`` and field measurements) and M0 scans; B1 maps are not
LINKED_FMAP_SUFFIXES = FIELD_SUFFIXES | {"epi", "m0scan"}
#: datatypes of the images fieldmaps correct (IntendedFor, a rule's ``set.corrects``)
CORRECTED_DATATYPES = ("func", "dwi", "perf")

PROVENANCES = (
    "raw",  # raw reconstruction
    "synthetic",  # synthetic MRI (SyMRI, MAGiC, ...)
    "swi",  # SWI processing (SWI, mIP of SWI, phase processing)
    "dti_map",  # DTI/DWI maps (ADC, FA, TRACE, eADC, ColFA ...)
    "projection",  # MIP/MinIP projections
    "subtraction",  # subtraction images
    "localizer",  # localizer/scout/survey
    "derived",  # other scanner-derived or secondary data (MPR, screen saves, reports)
)


@dataclass(frozen=True)
class Classification:
    """The BIDS name and provenance chosen for one series, with the reasons.

    ``entities`` keeps BIDS entity names in the order they were set (``acq``, ``dir``,
    ``echo``, ``part``, ``task``, ``rec``, ...); ``run`` is set later by run numbering.
    ``excluded`` is None for a series that is converted, otherwise the reason it is not.
    """

    datatype: str | None
    suffix: str | None
    entities: Mapping[str, str] = field(default_factory=dict)
    provenance: str = "raw"
    evidence: tuple[str, ...] = ()
    excluded: str | None = None
    review: bool = False  #: uncertain: flagged for a curator to look at
    rule: str | None = None  #: name of the user rule that decided it, if any
    sidecar: Mapping[str, Any] = field(default_factory=dict)  #: JSON sidecar keys a rule sets
    #: of a fieldmap: the datatypes it may correct (a rule's ``set.corrects``, or the
    #: classifier's for a DWI's b=0 fieldmap); None: any
    corrects: tuple[str, ...] | None = None


# --------------------------------------------------------------------------- convert


@dataclass(frozen=True)
class PlannedSeries:
    """A classified series and, when it is not converted, the reason why."""

    series: Series
    cls: Classification
    skip: str | None  #: classification exclusion, user filter, or file exclusion


@dataclass(frozen=True)
class ConvertedImage:
    """One image written into the BIDS tree (NIfTI or DICOM folder) for a series."""

    series_id: str
    relpath: str  #: path of the image relative to the subject(/session) folder
    acq_time: str | None  #: ISO 8601 acquisition date-time, for _scans.tsv
    sidecar: str | None = None  #: relative path of the JSON sidecar


@dataclass(frozen=True)
class SessionResult:
    """What a participant-level run did for one subject/session."""

    subject: str
    session: str | None
    imported: bool = False
    organized: bool = False
    converted: bool = False
    skipped: bool = False  #: already done (``--overwrite skip``)
    images: tuple[ConvertedImage, ...] = ()
    problems: tuple[Problem, ...] = ()
    error: str | None = None  #: the error that stopped this session, if any
    timings: tuple[tuple[str, float], ...] = ()  #: wall seconds per stage
    internal: bool = False  #: the error is a bug in bidsport (exit code 1), not the input's
    #: whether its series were classified, and the user rules that decided some of them
    classified: bool = False
    rules: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None
