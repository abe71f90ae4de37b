"""Build the DICOM objects of a new series: classic MR / Secondary Capture, Enhanced MR, SEG.

Every object takes the patient, study and frame of reference from the reference series
and nothing else identifying: with an anonymized reference, the output stays in the
anonymized identity space. Dates and times of the new series are the reference's (a
shifted date stays shifted); the series and instance UIDs are new.

The builders are generators of ``(file name, dataset)``; :func:`save_datasets` writes them.

Equipment (see :func:`equipment_attributes`): the General Equipment module names the
reference's scanner (Manufacturer, ManufacturerModelName): the pixels show that scanner's
acquisition, as in the derived images scanner consoles and post-processing workstations
write. bidsport itself is recorded as Processing Equipment (DCM 109102) in the Contributing
Equipment Sequence, in SoftwareVersions (the software that made the instances; for GE with a
protocol data block, the GE release instead, see below) and in DerivationDescription.
dcm2niix tailors its conversion to the Manufacturer: with "bidsport" it warns "Unable to
determine manufacturer (0008,0070)" on every file, so the scanner's vendor is what lets the
images be read back without a warning. For GE MR it also needs the vendor's protocol data
block, copied from the reference with what it takes to read it: the GE software release that
wrote it and the pulse sequence it belongs to (see :data:`GE_ACQUISITION`).
"""

from __future__ import annotations

import copy
import io
import logging
import unicodedata
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import validate_value

from bidsport import __version__, fileops
from bidsport.todicom.geometry import StackGeometry, patient_orientation
from bidsport.todicom.pixels import PixelEncoding, ds
from bidsport.todicom.reference import ReferenceSeries
from bidsport.todicom.sidecar import Label

log = logging.getLogger(__name__)

MANUFACTURER = "bidsport"
MODEL = "bidsport todicom"
#: General Equipment attributes copied from the reference: the scanner whose acquisition the
#: images show. Not SoftwareVersions: that names the software that made the instances
#: (bidsport), and a Siemens XA version there makes dcm2niix expect XA enhanced-only data
#: (for GE, the release goes with the protocol data block: see :data:`GE_ACQUISITION`).
EQUIPMENT_KEYWORDS = ("Manufacturer", "ManufacturerModelName")
#: GE's private protocol data block (creator GEMS_SERS_01, element 0x1B of its block in group
#: 0x0025): dcm2niix warns "Missing GE protocol data block (0025,101B)" for any GE MR image
#: without it. It describes the acquisition protocol (no patient data) and GE's own derived
#: images keep it; copied as is from the reference.
GE_PROTOCOL_BLOCK = (0x0025, "GEMS_SERS_01", 0x1B)
#: GE's Pulse Sequence Name and Internal Pulse Sequence Name (creator GEMS_ACQU_01, elements
#: 0x9C and 0x9E of its block in group 0x0019, e.g. "epi2" / "EPI2"): the sequence whose
#: protocol the block describes.
GE_SEQUENCE_NAMES = ((0x0019, "GEMS_ACQU_01", 0x9C), (0x0019, "GEMS_ACQU_01", 0x9E))
#: The GE acquisition description copied, as a unit, from a GE reference that has a protocol
#: data block: the block, the pulse sequence names and (in General Equipment) the GE
#: SoftwareVersions, i.e. the software release that wrote the block. A partial copy cannot be
#: read. dcm2niix (nii_dicom_batch.cpp, sliceTimingGE, checked on v1.0.20260724) estimates
#: slice times for every GE series that is not 3D (MRAcquisitionType), not a localizer and has
#: >= 2 slices and >= 2 volumes -- derived or not, whatever the SOP class -- and warns when
#: it cannot:
#:
#: - no block: "Unable to determine GE Slice timing, no Protocol Data Block GE (0025,101B)";
#: - a SoftwareVersions of fewer than 10 characters: "... invalid SoftwareVersions
#:   (0018,1020)". It keeps the *last* (0018,1020) of the file, nested items included: a
#:   SoftwareVersions in the Contributing Equipment item overrides General Equipment's;
#: - the release decoded from it (readSoftwareVersionsGE: "28\LX\MR29.1_EA_2039.g" -> 29.1)
#:   below 26 with multiband ("MBACCEL" in the block): "Unable to determine slice times for
#:   early GE HyperBand" -- so bidsport's own version, however spelled, cannot stand there;
#: - diffusion ("DIFF" in the block's IOPT) without the pulse sequence names: "Unable to
#:   compute slice times for GE Diffusion".
#:
#: With the whole unit, dcm2niix reads the derived series as it reads its source and gives the
#: same SliceTiming. bidsport's name and version stay in the Contributing Equipment item
#: (Manufacturer, ManufacturerModelName, ContributionDescription; its SoftwareVersions, type 3,
#: is left out) and in DerivationDescription.
GE_ACQUISITION = (GE_PROTOCOL_BLOCK, *GE_SEQUENCE_NAMES)
DISCLAIMER = "NOT FOR CLINICAL USE"
IMPLEMENTATION_VERSION = f"BIDSPORT_{__version__}"[:16]

#: Patient, clinical-trial and study attributes copied from the reference (when present).
IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
    "ClinicalTrialCoordinatingCenterName",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
#: Type 2 attributes written empty when the reference lacks them.
_TYPE2_IDENTITY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def ascii_text(text: str, limit: int) -> str:
    """Plain ASCII (accents dropped, no control characters, no backslash), ≤ ``limit``.

    >>> ascii_text("Hippocampe gauche \u00e9t\u00e9\\\\x", 64)
    'Hippocampe gauche ete x'
    """
    flat = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    flat = "".join(c if c.isprintable() and c != "\\" else " " for c in flat)
    return " ".join(flat.split())[:limit]


@dataclass(frozen=True, eq=False)
class SeriesPlan:
    """Everything about the new series except its pixels."""

    reference: ReferenceSeries
    geometry: StackGeometry  #: the frames of one volume
    n_volumes: int
    series_uid: str
    series_number: int
    series_description: str  #: final text (disclaimer included)
    image_type3: str  #: MR Image ImageType value 3 ("OTHER", "T1 MAP", ...)
    derivation: str  #: DerivationDescription
    comments: str  #: ImageComments
    research: bool  #: mark NOT FOR CLINICAL USE / ContentQualification RESEARCH
    acquisition: Mapping[str, Any] = field(default_factory=dict)  #: MR attributes (keywords)
    source_name: str = ""
    #: SliceThickness (mm); None: the slice spacing (see ``export.choose_slice_thickness``)
    slice_thickness: float | None = None

    @property
    def thickness(self) -> float:
        """SliceThickness of the new frames (SpacingBetweenSlices is the geometry's)."""
        if self.slice_thickness is None or self.slice_thickness <= 0:
            return self.geometry.slice_spacing
        return self.slice_thickness


def valid_value(vr: str, value: Any) -> bool:
    """True when ``value`` is valid for ``vr`` (pydicom's checks: format, length, characters).

    >>> valid_value("DA", "20240102"), valid_value("DA", "***"), valid_value("AS", "040Y")
    (True, False, True)
    """
    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    for item in values:
        if item is None or isinstance(item, (Dataset, DicomSequence)):
            continue
        if vr in ("DS", "IS", "PN") and not isinstance(item, (str, bytes)):
            item = str(item)
        try:
            validate_value(vr, item, config.RAISE)
        except (ValueError, TypeError):
            return False
    return True


def _copy(out: Dataset, ref: Dataset, keyword: str) -> None:
    """Copy an attribute from the reference; an invalid value becomes empty (logged)."""
    element = ref[keyword]
    if element.VR == "SQ" or valid_value(element.VR, element.value):
        out[keyword] = element
    else:
        log.warning(
            "reference %s %r is not a valid %s value: written empty",
            keyword,
            element.value,
            element.VR,
        )
        setattr(out, keyword, "")


def _dt(ref: Dataset) -> tuple[str, str]:
    """(date, time) for the new series: the reference's series date/time, else study's."""
    date = time = ""
    for keyword in ("SeriesDate", "AcquisitionDate", "ContentDate", "StudyDate"):
        value = str(ref.get(keyword) or "")
        if value and valid_value("DA", value):
            date = value
            break
    for keyword in ("SeriesTime", "AcquisitionTime", "ContentTime", "StudyTime"):
        value = str(ref.get(keyword) or "")
        if value and valid_value("TM", value):
            time = value
            break
    return date, time


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def common_attributes(plan: SeriesPlan, modality: str = "MR") -> Dataset:
    """Patient, study, series, frame of reference and equipment of the new series."""
    ref = plan.reference.header
    out = Dataset()
    if "SpecificCharacterSet" in ref:
        out.SpecificCharacterSet = ref.SpecificCharacterSet
    for keyword in IDENTITY_KEYWORDS:
        if keyword in ref and (ref[keyword].value not in (None, "") or keyword in _TYPE2_IDENTITY):
            _copy(out, ref, keyword)
    for keyword in _TYPE2_IDENTITY:
        if keyword not in out:
            setattr(out, keyword, "")
    date, time = _dt(ref)
    out.Modality = modality
    out.SeriesInstanceUID = plan.series_uid
    out.SeriesNumber = plan.series_number
    out.SeriesDescription = plan.series_description
    out.SeriesDate = date
    out.SeriesTime = time
    for keyword in ("PatientPosition", "BodyPartExamined", "Laterality"):
        value = plan.acquisition.get(keyword) or ref.get(keyword)
        vr = pydicom.datadict.dictionary_VR(keyword)
        if value and valid_value(vr, value):
            setattr(out, keyword, value)
    if "BodyPartExamined" not in out and "Laterality" not in out:
        # bidsport images are of the head, an unpaired body part (General Series: Laterality
        # is required for paired parts, and the part is otherwise unknown).
        out.ImageLaterality = ref.get("ImageLaterality") or "U"
    if "ProtocolName" in plan.acquisition:
        out.ProtocolName = plan.acquisition["ProtocolName"]
    related = Dataset()
    related.StudyInstanceUID = plan.reference.study_uid
    related.SeriesInstanceUID = plan.reference.series_uid
    related.PurposeOfReferenceCodeSequence = DicomSequence()
    out.RelatedSeriesSequence = DicomSequence([related])
    out.FrameOfReferenceUID = plan.reference.frame_of_reference_uid
    indicator = ref.get("PositionReferenceIndicator", "")
    out.PositionReferenceIndicator = indicator if valid_value("LO", indicator) else ""
    out.update(equipment_attributes(plan))
    out.ContentDate = date
    out.ContentTime = time
    return out


def contributing_equipment(plan: SeriesPlan, *, software_versions: bool = True) -> Dataset:
    """The Contributing Equipment item that records bidsport as processing equipment.

    Without ``software_versions`` the item has no SoftwareVersions (see :data:`GE_ACQUISITION`).
    """
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = MODEL
    if software_versions:
        item.SoftwareVersions = __version__
    item.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code_item("109102", "DCM", "Processing Equipment")]
    )
    item.ContributionDescription = ascii_text(plan.derivation, 1024)  # ST
    return item


def equipment_attributes(plan: SeriesPlan) -> Dataset:
    """General Equipment (the reference's scanner), SoftwareVersions, Contributing Equipment
    (bidsport) and, for GE, the reference's acquisition description (:data:`GE_ACQUISITION`).

    SoftwareVersions is bidsport's version, except with the GE acquisition description: then
    the reference's (the GE release that wrote the protocol data block). A reference without
    a valid Manufacturer/ManufacturerModelName gets bidsport's names.
    """
    ref = plan.reference.header
    out = Dataset()
    for keyword, fallback in zip(EQUIPMENT_KEYWORDS, (MANUFACTURER, MODEL), strict=True):
        value = ref.get(keyword)
        if value and valid_value("LO", value):
            out[keyword] = ref[keyword]
        else:
            setattr(out, keyword, fallback)
    ge_acquisition = None
    if str(out.Manufacturer).upper().startswith("GE"):
        ge_acquisition = _ge_acquisition(ref)
    release = ref.get("SoftwareVersions")
    ours = ge_acquisition is None or not release or not valid_value("LO", release)
    out.SoftwareVersions = __version__ if ours else ref["SoftwareVersions"].value
    out.ContributingEquipmentSequence = DicomSequence(
        [contributing_equipment(plan, software_versions=ours)]
    )
    if ge_acquisition is not None:
        out.update(ge_acquisition)
    return out


def _ge_acquisition(ref: Dataset) -> Dataset | None:
    """The private elements of :data:`GE_ACQUISITION` found in ``ref``; None without a block."""
    out = Dataset()
    for group, creator, offset in GE_ACQUISITION:
        try:
            element = ref.private_block(group, creator)[offset]
        except KeyError:
            if (group, creator, offset) == GE_PROTOCOL_BLOCK:
                log.debug("reference has no GE protocol data block")
                return None
            continue
        out.private_block(group, creator, create=True).add_new(offset, element.VR, element.value)
    return out


def _mr_acquisition(out: Dataset, acquisition: Mapping[str, Any]) -> None:
    """The MR Image module's sequence attributes (type 1 and 2 filled when unknown)."""
    out.ScanningSequence = list(acquisition.get("ScanningSequence") or ["RM"])
    out.SequenceVariant = list(acquisition.get("SequenceVariant") or ["NONE"])
    out.ScanOptions = list(acquisition.get("ScanOptions") or [])
    out.MRAcquisitionType = acquisition.get("MRAcquisitionType", "")
    out.RepetitionTime = acquisition.get("RepetitionTime", "")
    out.EchoTime = acquisition.get("EchoTime", "")
    out.EchoTrainLength = acquisition.get("EchoTrainLength", "")
    if "IR" in out.ScanningSequence:
        out.InversionTime = acquisition.get("InversionTime", "")
    elif "InversionTime" in acquisition:
        out.InversionTime = acquisition["InversionTime"]
    for keyword in (
        "FlipAngle",
        "MagneticFieldStrength",
        "ImagingFrequency",
        "ImagedNucleus",
        "EchoNumbers",
        "PixelBandwidth",
        "PercentPhaseFieldOfView",
        "SequenceName",
        "ReceiveCoilName",
        "TransmitCoilName",
    ):
        if keyword in acquisition:
            setattr(out, keyword, acquisition[keyword])


def _pixel_module(out: Dataset, encoding: PixelEncoding, rows: int, columns: int) -> None:
    out.SamplesPerPixel = 1
    out.PhotometricInterpretation = "MONOCHROME2"
    out.Rows = rows
    out.Columns = columns
    out.BitsAllocated = 16
    out.BitsStored = 16
    out.HighBit = 15
    out.PixelRepresentation = 1 if encoding.signed else 0


def _window(out: Dataset, center: float, width: float) -> None:
    """WindowCenter/Width (VOI LUT module, or a Frame VOI LUT item). A width below 1 (a
    map of values between 0 and 1: FA, a probability) needs the LINEAR_EXACT function:
    with LINEAR (the default) it must be 1 or more (PS3.3 C.11.2.1.2.1)."""
    out.WindowCenter = ds(center)
    out.WindowWidth = ds(max(width, 1e-6))
    if width < 1:
        out.VOILUTFunction = "LINEAR_EXACT"


def _frame_bytes(frame: npt.NDArray[Any], signed: bool) -> bytes:
    return np.ascontiguousarray(frame, dtype="<i2" if signed else "<u2").tobytes()


def _slice_location(geometry: StackGeometry, position: Sequence[float]) -> str:
    return ds(float(np.dot(geometry.normal, position)))


def classic_datasets(
    plan: SeriesPlan,
    frames: npt.NDArray[Any],
    encoding: PixelEncoding,
    *,
    secondary_capture: bool = False,
) -> Iterator[tuple[str, Dataset]]:
    """Single-frame MR Image (or Secondary Capture) instances, one per frame and volume.

    ``frames`` is (frames, rows, columns, volumes) of stored values (``encoding.stored``
    rearranged). Instance numbers run through volume 1's frames, then volume 2's...
    """
    geo = plan.geometry
    sop_class = SecondaryCaptureImageStorage if secondary_capture else MRImageStorage
    modality = str(plan.reference.header.get("Modality") or "OT") if secondary_capture else "MR"
    base = common_attributes(plan, modality)
    base.SOPClassUID = sop_class
    base.ImageType = ["DERIVED", "SECONDARY"] + ([] if secondary_capture else [plan.image_type3])
    base.DerivationDescription = plan.derivation[:1024]
    base.ImageComments = plan.comments[:10240]
    base.BurnedInAnnotation = "NO"
    base.LossyImageCompression = "00"
    if secondary_capture:
        base.ConversionType = "WSD"
        if plan.acquisition.get("MRAcquisitionType"):  # lets dcm2niix treat 3D data as 3D
            base.MRAcquisitionType = plan.acquisition["MRAcquisitionType"]
        base.PatientOrientation = [
            patient_orientation(geo.row_direction),
            patient_orientation(geo.column_direction),
        ]
    else:
        _mr_acquisition(base, plan.acquisition)
    base.ImageOrientationPatient = [ds(x) for x in geo.orientation]
    base.PixelSpacing = [ds(x) for x in geo.pixel_spacing]
    base.SliceThickness = ds(plan.thickness)
    if not secondary_capture:
        base.SpacingBetweenSlices = ds(geo.slice_spacing)
    _pixel_module(base, encoding, geo.rows, geo.columns)
    if encoding.rescaled or secondary_capture:
        base.RescaleIntercept = encoding.intercept
        base.RescaleSlope = encoding.slope
        base.RescaleType = "US"
    _window(base, *encoding.window)
    prefix = "SC" if secondary_capture else "MR"
    n_frames = frames.shape[0]
    n_volumes = frames.shape[3]
    digits = max(4, len(str(n_frames * n_volumes)))
    for volume in range(n_volumes):
        for f in range(n_frames):
            number = volume * n_frames + f + 1
            sop_uid = generate_uid()
            out = Dataset()
            out.file_meta = _file_meta(sop_class, sop_uid)
            out.update(base)
            out.SOPInstanceUID = sop_uid
            out.InstanceNumber = number
            out.ImagePositionPatient = [ds(x) for x in geo.positions[f]]
            out.SliceLocation = _slice_location(geo, geo.positions[f])
            if n_volumes > 1:
                out.AcquisitionNumber = volume + 1
                if not secondary_capture:
                    out.TemporalPositionIdentifier = volume + 1
                    out.NumberOfTemporalPositions = n_volumes
            out.PixelData = _frame_bytes(frames[f, :, :, volume], encoding.signed)
            yield f"{prefix}_{number:0{digits}d}.dcm", out


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _acquisition_contrast(suffix: str | None) -> str:
    return {
        "T1w": "T1",
        "T2w": "T2",
        "T2starw": "T2_STAR",
        "PDw": "PROTON_DENSITY",
        "FLAIR": "FLUID_ATTENUATED",
        "dwi": "DIFFUSION",
        "bold": "T2_STAR",
    }.get(suffix or "", "UNKNOWN")


def enhanced_dataset(
    plan: SeriesPlan,
    frames: npt.NDArray[Any],
    encoding: PixelEncoding,
    *,
    suffix: str | None = None,
) -> Iterator[tuple[str, Dataset]]:
    """One Enhanced MR Image instance holding every frame (dimensions: stack position, time)."""
    geo = plan.geometry
    n_frames, n_volumes = frames.shape[0], frames.shape[3]
    sop_uid = generate_uid()
    out = common_attributes(plan, "MR")
    if "ImageLaterality" in out:  # not in the Enhanced MR IOD: FrameLaterality says it
        del out.ImageLaterality
    out.file_meta = _file_meta(EnhancedMRImageStorage, sop_uid)
    out.SOPClassUID = EnhancedMRImageStorage
    out.SOPInstanceUID = sop_uid
    out.InstanceNumber = 1
    if not out.ContentDate or not out.ContentTime:
        # Type 1 here: without a valid date in the reference, the date of the export.
        now = datetime.now()
        out.ContentDate = out.ContentDate or now.strftime("%Y%m%d")
        out.ContentTime = out.ContentTime or now.strftime("%H%M%S")
    # No MRAcquisitionType: the MR Pulse Sequence module may not be present in DERIVED
    # images, so dcm2niix stores a 3D acquisition as 2D (same image, other voxel order).
    # Enhanced MR: value 2 is enumerated (PRIMARY only); value 3 the image flavor.
    contrast = _acquisition_contrast(suffix)
    image_type = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    out.ImageType = image_type
    out.PixelPresentation = "MONOCHROME"
    out.VolumetricProperties = "VOLUME"
    out.VolumeBasedCalculationTechnique = "NONE"
    out.ComplexImageComponent = "MAGNITUDE"
    out.AcquisitionContrast = contrast
    out.ContentQualification = "RESEARCH" if plan.research else "PRODUCT"
    out.ImageComments = f"{plan.comments} {plan.derivation}"[:10240]
    out.BurnedInAnnotation = "NO"
    out.LossyImageCompression = "00"
    out.PresentationLUTShape = "IDENTITY"
    out.DeviceSerialNumber = "1"
    # Type 1 (IEC, FDA or MHLW): the reference's, else IEC (IEC 60601-2-33, used by MR
    # scanners worldwide).
    out.ApplicableSafetyStandardAgency = str(
        plan.reference.header.get("ApplicableSafetyStandardAgency") or "IEC"
    )
    out.AcquisitionContextSequence = DicomSequence()
    if "MagneticFieldStrength" in plan.acquisition:
        out.MagneticFieldStrength = plan.acquisition["MagneticFieldStrength"]
    _pixel_module(out, encoding, geo.rows, geo.columns)
    out.NumberOfFrames = n_frames * n_volumes

    dim_uid = generate_uid()
    org = Dataset()
    org.DimensionOrganizationUID = dim_uid
    out.DimensionOrganizationSequence = DicomSequence([org])
    frame_content = pydicom.datadict.tag_for_keyword("FrameContentSequence")
    dims = [("StackID", "Stack ID"), ("InStackPositionNumber", "In-Stack Position Number")]
    if n_volumes > 1:
        dims.append(("TemporalPositionIndex", "Temporal Position Index"))
    index_items = []
    for keyword, label in dims:
        item = Dataset()
        item.DimensionOrganizationUID = dim_uid
        item.DimensionIndexPointer = pydicom.datadict.tag_for_keyword(keyword)
        item.FunctionalGroupPointer = frame_content
        item.DimensionDescriptionLabel = label
        index_items.append(item)
    out.DimensionIndexSequence = DicomSequence(index_items)

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [ds(x) for x in geo.pixel_spacing]
    measures.SliceThickness = ds(plan.thickness)
    measures.SpacingBetweenSlices = ds(geo.slice_spacing)
    shared.PixelMeasuresSequence = DicomSequence([measures])
    frame_type = Dataset()
    frame_type.FrameType = image_type
    frame_type.PixelPresentation = "MONOCHROME"
    frame_type.VolumetricProperties = "VOLUME"
    frame_type.VolumeBasedCalculationTechnique = "NONE"
    frame_type.ComplexImageComponent = "MAGNITUDE"
    frame_type.AcquisitionContrast = contrast
    shared.MRImageFrameTypeSequence = DicomSequence([frame_type])
    anatomy = Dataset()
    anatomy.FrameLaterality = "U"
    anatomy.AnatomicRegionSequence = DicomSequence([_code_item("69536005", "SCT", "Head")])
    shared.FrameAnatomySequence = DicomSequence([anatomy])
    transform = Dataset()
    transform.RescaleIntercept = encoding.intercept
    transform.RescaleSlope = encoding.slope
    transform.RescaleType = "US"
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    voi = Dataset()
    _window(voi, *encoding.window)
    shared.FrameVOILUTSequence = DicomSequence([voi])
    if "EchoTime" in plan.acquisition:
        echo = Dataset()
        echo.EffectiveEchoTime = plan.acquisition["EchoTime"]
        shared.MREchoSequence = DicomSequence([echo])
    out.SharedFunctionalGroupsSequence = DicomSequence([shared])

    # Plane Orientation per frame, after each Plane Position, as Siemens XA and Philips
    # write it, not shared: dcm2niix takes the DimensionIndexValues of Philips, Canon,
    # Bruker and unknown vendors only. For the others (Siemens, GE...) it sorts the
    # frames by their position along the slice normal when it has read an orientation
    # before every frame's position (its "issue 372" fallback, meant for one volume):
    # with 2 or more volumes, that puts the volumes of each slice together and the
    # NIfTI gets them mixed, without a warning. Per-frame orientations (the first read
    # after the first position) keep it out of that path: the frames stay in file order,
    # volume after volume, split by TemporalPositionIndex.
    orientation_values = [ds(x) for x in geo.orientation]
    per_frame = []
    for volume in range(n_volumes):
        for f in range(n_frames):
            item = Dataset()
            content = Dataset()
            content.StackID = "1"
            content.InStackPositionNumber = f + 1
            values = [1, f + 1]
            if n_volumes > 1:
                content.TemporalPositionIndex = volume + 1
                values.append(volume + 1)
            content.DimensionIndexValues = values
            item.FrameContentSequence = DicomSequence([content])
            position = Dataset()
            position.ImagePositionPatient = [ds(x) for x in geo.positions[f]]
            item.PlanePositionSequence = DicomSequence([position])
            orientation = Dataset()
            orientation.ImageOrientationPatient = orientation_values
            item.PlaneOrientationSequence = DicomSequence([orientation])
            per_frame.append(item)
    out.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ordered = np.moveaxis(frames, 3, 0)  # volumes, frames, rows, columns
    out.PixelData = _frame_bytes(ordered, encoding.signed)
    yield "MR_enhanced.dcm", out


# --------------------------------------------------------------------------- SEG


def _segment_codes(name: str) -> tuple[Any, Any]:
    if "lesion" in name.lower():
        return codes.cid7150.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    return codes.cid7150.Tissue, codes.SCT.Tissue


def seg_source_images(ref: ReferenceSeries) -> list[Dataset]:
    """The reference headers in the form highdicom accepts as SEG source images.

    highdicom wants one plane orientation shared by all source images, compared exactly:
    scanners jitter the last digits of ImageOrientationPatient between slices, so only the
    images whose orientation is the first one's (to the digit) are referenced. A multi-frame
    reference with per-frame orientations gets a copy with the first frame's orientation
    in its shared functional groups.
    """
    first = ref.datasets[0]
    if "PerFrameFunctionalGroupsSequence" in first:
        # highdicom takes one multi-frame source image (e.g. Siemens XA: a file per volume)
        out = []
        for ds in ref.datasets[:1]:
            shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
            frame = ds.PerFrameFunctionalGroupsSequence[0]
            missing = [
                k for k in ("PlaneOrientationSequence", "PixelMeasuresSequence") if k not in shared
            ]
            if any(k not in frame for k in missing):
                continue
            if missing:
                ds = copy.deepcopy(ds)
                if "SharedFunctionalGroupsSequence" not in ds:
                    ds.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
                for keyword in missing:
                    setattr(
                        ds.SharedFunctionalGroupsSequence[0],
                        keyword,
                        copy.deepcopy(frame[keyword].value),
                    )
            out.append(ds)
        return out or [first]
    orientation = first.get("ImageOrientationPatient")
    same = [ds for ds in ref.datasets if ds.get("ImageOrientationPatient") == orientation]
    if len(same) < len(ref.datasets):
        log.debug(
            "SEG references %d of %d source images (the others' orientation differs in the "
            "last digits)",
            len(same),
            len(ref.datasets),
        )
    return same


def _highdicom_sources(sources: list[Dataset], position: Sequence[float]) -> list[Dataset]:
    """Copies of the source headers that highdicom accepts.

    Invalid patient/study values (anonymizers' '***') are made empty: highdicom copies
    them and fails on values it cannot parse (the other kinds write them empty too, see
    :func:`common_attributes`). A single-frame source without ImagePositionPatient (as UIH
    saves some series) gets ``position``: highdicom needs one to see a patient coordinate
    system; the SEG's own plane positions come from the NIfTI either way.
    """
    out = []
    for source in sources:
        bad = [
            k
            for k in IDENTITY_KEYWORDS
            if k in source
            and source[k].VR != "SQ"
            and not valid_value(source[k].VR, source[k].value)
        ]
        no_position = (
            "PerFrameFunctionalGroupsSequence" not in source
            and "ImagePositionPatient" not in source
        )
        if bad or no_position:
            source = copy.deepcopy(source)  # headers only: no pixel data to copy
            for keyword in bad:
                setattr(source, keyword, "")
            if no_position:
                source.ImagePositionPatient = [ds(x) for x in position]
        out.append(source)
    return out


def segmentation_dataset(
    plan: SeriesPlan,
    labels: npt.NDArray[Any],
    values: Sequence[int],
    table: Mapping[int, Label],
    *,
    algorithm: str = "unknown",
) -> Iterator[tuple[str, Dataset]]:
    """One DICOM Segmentation (BINARY) with a segment per label value.

    ``labels`` is (frames, rows, columns) of label values; segment ``n`` is
    ``values[n-1]``, named from ``table`` (else ``label <value>``).
    """
    import highdicom as hd
    from highdicom.color import CIELabColor

    lut = np.zeros(int(max(values, default=0)) + 1, dtype=np.uint16)
    descriptions = []
    for number, value in enumerate(values, start=1):
        lut[value] = number
        entry = table.get(value)
        name = ascii_text(entry.name if entry else f"label {value}", 64) or f"label {value}"
        category, kind = _segment_codes(name)
        color = None
        if entry is not None and entry.color is not None:
            color = CIELabColor.from_rgb(*entry.color) if hasattr(CIELabColor, "from_rgb") else None
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name=ascii_text(algorithm, 64) or "unknown",
                    family=codes.cid7162.ManualProcessing,
                    version="unknown",
                ),
                tracking_id=f"label {value}",
                tracking_uid=generate_uid(),
                display_color=color,
            )
        )
    mapped = lut[np.clip(labels, 0, len(lut) - 1)]
    mapped[labels >= len(lut)] = 0
    empty = not mapped.any()
    with warnings.catch_warnings(record=True) as caught:  # highdicom's advice: to the log
        warnings.simplefilter("always")
        seg = _segmentation(plan, mapped, descriptions, empty)
    for warning in caught:
        log.debug("highdicom: %s", warning.message)
    seg.SeriesDescription = plan.series_description
    seg.ImageComments = plan.comments[:10240]
    seg.ContentQualification = "RESEARCH" if plan.research else "PRODUCT"
    position = plan.acquisition.get("PatientPosition") or plan.reference.header.get(
        "PatientPosition"
    )
    if position and valid_value("CS", position):
        # General Series; without it dcm2niix warns "Patient Position (0018,5100) not
        # specified (issue 642)".
        seg.PatientPosition = position
    yield "SEG.dcm", seg


def _segmentation(
    plan: SeriesPlan, mapped: npt.NDArray[Any], descriptions: list[Any], empty: bool
) -> Dataset:
    import highdicom as hd

    geo = plan.geometry
    positions = [hd.PlanePositionSequence("PATIENT", list(p)) for p in geo.positions]
    equipment = equipment_attributes(plan)
    bidsport = hd.ContributingEquipment(
        MANUFACTURER,
        hd.sr.CodedConcept("109102", "DCM", "Processing Equipment"),
        manufacturer_model_name=MODEL,
        software_versions=__version__,
        contribution_description=ascii_text(plan.derivation, 64),
    )
    # FRACTIONAL (OCCUPANCY, 0 or 255: the voxel is in the segment or not) rather than
    # BINARY: the same masks, but 1-bit pixels make dcm2niix warn "Support for images that
    # allocate 1 bits is experimental".
    return hd.seg.Segmentation(
        source_images=_highdicom_sources(seg_source_images(plan.reference), geo.positions[0]),
        pixel_array=np.ascontiguousarray(mapped),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
        segment_descriptions=descriptions,
        series_instance_uid=plan.series_uid,
        series_number=plan.series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=str(equipment.Manufacturer),
        manufacturer_model_name=str(equipment.ManufacturerModelName),
        software_versions=__version__,
        device_serial_number="1",
        contributing_equipment=[bidsport],
        content_description=ascii_text(plan.comments, 64),
        content_label="BIDSPORT",
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=list(geo.pixel_spacing),
            slice_thickness=plan.thickness,
            spacing_between_slices=geo.slice_spacing,
        ),
        plane_orientation=hd.PlaneOrientationSequence("PATIENT", list(geo.orientation)),
        plane_positions=positions,
        omit_empty_frames=not empty,
    )


# --------------------------------------------------------------------------- writing


def dataset_bytes(dataset: Dataset) -> bytes:
    """A dataset as a DICOM file (preamble, meta header, body)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def save_datasets(items: Iterator[tuple[str, Dataset]], folder: Path) -> list[Path]:
    """Write every dataset into ``folder`` (atomically, one by one); return the paths."""
    fileops.ensure_dir(folder)
    paths = []
    for name, dataset in items:
        path = folder / name
        fileops.write_bytes(path, dataset_bytes(dataset))
        paths.append(path)
    return paths
