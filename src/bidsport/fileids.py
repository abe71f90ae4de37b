"""The identifiers in the headers of DICOM files, read by bidsport's header walker.

:func:`read_identifiers` walks each header with :func:`bidsport.header.read_texts`: the
file meta information, the data set and its standard sequences at any depth (as
:func:`bidsport.sourceids.identifiers_from_dataset` visits a pydicom data set), for the
elements of :data:`bidsport.phi.SOURCE_KEYWORDS`. Every reading of identifiers from files
goes through here: the sidecar scrubbing of every run, the subject-label check and the
matcher of ``--anonymize``, the PHI audit. A run without ``--anonymize`` thus imports
pydicom only to decode text in a character set other than ASCII, Latin-1 and UTF-8.

A header the walk refuses is read by pydicom (``force``: files without the preamble
too), except one refused for its size (a deflated data set inflating past
:data:`bidsport.header.MAX_INFLATED`), which nothing reads, and a file that holds no DICOM
at all; a DICOM file neither reads is named in a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from bidsport.errors import DicomReadError, DicomTooLargeError, NotDicomError
from bidsport.header import read_texts
from bidsport.phi import (
    KINDS,
    SOURCE_KEYWORDS,
    VENDOR_KEYWORDS,
    Identifiers,
    clean_value,
    identifiers_found,
    merge_identifiers,
)

log = logging.getLogger(__name__)

#: tag and dictionary VR of each keyword read (checked against pydicom's dictionary)
KEYWORD_TAGS: dict[str, tuple[int, bytes]] = {
    "PatientName": (0x00100010, b"PN"),
    "OtherPatientNames": (0x00101001, b"PN"),
    "PatientBirthName": (0x00101005, b"PN"),
    "PatientMotherBirthName": (0x00101060, b"PN"),
    "ResponsiblePerson": (0x00102297, b"PN"),
    "ReferringPhysicianName": (0x00080090, b"PN"),
    "PerformingPhysicianName": (0x00081050, b"PN"),
    "OperatorsName": (0x00081070, b"PN"),
    "PhysiciansOfRecord": (0x00081048, b"PN"),
    "RequestingPhysician": (0x00321032, b"PN"),
    "NameOfPhysiciansReadingStudy": (0x00081060, b"PN"),
    "ScheduledPerformingPhysicianName": (0x00400006, b"PN"),
    "PatientID": (0x00100020, b"LO"),
    "OtherPatientIDs": (0x00101000, b"LO"),
    "MedicalRecordLocator": (0x00101090, b"LO"),
    "IssuerOfPatientID": (0x00100021, b"LO"),
    "PatientBirthDate": (0x00100030, b"DA"),
    "AccessionNumber": (0x00080050, b"SH"),
    "StudyID": (0x00200010, b"SH"),
    "RequestedProcedureID": (0x00401001, b"SH"),
    "ScheduledProcedureStepID": (0x00400009, b"SH"),
    "PerformedProcedureStepID": (0x00400253, b"SH"),
    "PlacerOrderNumberImagingServiceRequest": (0x00402016, b"LO"),
    "FillerOrderNumberImagingServiceRequest": (0x00402017, b"LO"),
    "AdmissionID": (0x00380010, b"LO"),
    "InstitutionName": (0x00080080, b"LO"),
    "StationName": (0x00081010, b"SH"),
    "SourceApplicationEntityTitle": (0x00020016, b"AE"),
    "PerformedStationAETitle": (0x00400241, b"AE"),
    "ScheduledStationAETitle": (0x00400001, b"AE"),
    "DeviceSerialNumber": (0x00181000, b"LO"),
    "PatientAddress": (0x00101040, b"LO"),
    "InstitutionAddress": (0x00080081, b"ST"),
    "PatientTelephoneNumbers": (0x00102154, b"SH"),
    "Manufacturer": (0x00080070, b"LO"),
    "ManufacturerModelName": (0x00081090, b"LO"),
}

_KIND_OF: dict[int, str] = {
    KEYWORD_TAGS[kw][0]: kind for kind, kws in SOURCE_KEYWORDS.items() for kw in kws
}
_DEEP: dict[int, bytes] = {
    KEYWORD_TAGS[kw][0]: KEYWORD_TAGS[kw][1] for kws in SOURCE_KEYWORDS.values() for kw in kws
}
_VENDOR: dict[int, bytes] = {KEYWORD_TAGS[kw][0]: KEYWORD_TAGS[kw][1] for kw in VENDOR_KEYWORDS}


def identifiers_in_file(path: Path) -> Identifiers | None:
    """The identifiers in the header of ``path``; None for a file that cannot be read
    (by the walk, nor by pydicom)."""
    try:
        texts = read_texts(path, _DEEP, _VENDOR)
    except NotDicomError as exc:
        log.debug("no identifiers: %s", exc)
        return None
    except DicomTooLargeError as exc:
        log.warning("identifiers not read: %s", exc)
        return None
    except DicomReadError as exc:
        from bidsport.sourceids import identifiers_of_file

        log.debug("identifiers of %s read by pydicom: %s", path, exc)
        found = identifiers_of_file(path)
        if found is None:
            log.warning("identifiers not read: %s", exc)
        return found
    found_texts: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for tag, kind in _KIND_OF.items():
        found_texts[kind].update(t for value in texts.get(tag, ()) if (t := clean_value(value)))
    vendor = [t for tag in _VENDOR for value in texts.get(tag, ()) if (t := clean_value(value))]
    return identifiers_found(found_texts, vendor)


def read_identifiers(paths: Iterable[Path]) -> Identifiers:
    """The identifiers in the headers of ``paths`` (nested sequences included)."""
    return merge_identifiers(
        found for path in paths if (found := identifiers_in_file(path)) is not None
    )
