"""Identifiers of the source data, and keeping them out of what bidsport writes.

:class:`Identifiers` holds the identifying values read from the original DICOM headers
(before any de-identification, by :mod:`bidsport.fileids`): patient names, IDs, birth
dates, accession numbers, institution, station and device identifiers, addresses, staff
names. The audit (:mod:`bidsport.audit`) searches the output for them; :func:`scrub_text`
removes them from free text; :func:`scrub_sidecar` removes identifying keys from BIDS
JSON sidecars and scrubs the values a person may have typed (not the technical values the
scanner's software wrote, :data:`SIDECAR_TECHNICAL_KEYS`), and
:func:`scrub_sidecar_changes` also tells which keys it scrubbed. This module needs no
pydicom.

Matching rules (shared by the audit and the scrubbers, see :class:`Matcher`):

* case-insensitive;
* values shorter than :data:`MIN_LENGTH` (3) characters are ignored: "F", "1", "MR" match
  everywhere;
* names, and other search strings shorter than :data:`SUBSTRING_LENGTH` (6) characters,
  only match as a token: not preceded by a letter when they start with a letter (by a digit
  when they start with a digit), and likewise after their end. "DEV" matches ``sub-DEV01``
  but not ``device``; "Doe" matches ``Doe_Jane`` but not ``Doeblin``; "Timing" does not
  match ``SliceTiming``. Longer IDs, dates, institutions... match anywhere. ``_`` and
  digits are boundaries: "Doe" in ``DOE_T1``, "NIH" in ``NIH_rest`` and in
  ``nih_ep2d_bold`` (technicians type tokens joined by ``_``; the text cannot tell who
  wrote it, the sidecar key can: see :data:`SIDECAR_TECHNICAL_KEYS`);
* names are also searched as their components (family, given, ... of at least 3
  characters), with ``^`` replaced by a space, in "given family" order and joined by ``_``
  or nothing; birth dates in the usual spellings (``19800101``, ``1980-01-01``,
  ``01.01.1980``, ...); multi-word institution names with ``_``, ``-`` or no separator.

A file of identifiers is itself PHI: :func:`save_identifiers` writes it with mode 0600,
and it must be kept outside OUTPUT_DIR (in the work dir).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from bidsport import fileops
from bidsport.errors import ConfigError

MIN_LENGTH = 3
SUBSTRING_LENGTH = 6
#: kinds matched as whole tokens whatever their length ("Timing" must not match
#: "SliceTiming"; concatenations like "DoeJane" are search strings of their own)
_TOKEN_KINDS = frozenset({"name", "staff_name"})

#: kind of identifier → DICOM keywords it is read from (top level and nested sequences)
SOURCE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "name": (
        "PatientName",
        "OtherPatientNames",
        "PatientBirthName",
        "PatientMotherBirthName",
        "ResponsiblePerson",
    ),
    "staff_name": (
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "PhysiciansOfRecord",
        "RequestingPhysician",
        "NameOfPhysiciansReadingStudy",
        "ScheduledPerformingPhysicianName",
    ),
    "id": ("PatientID", "OtherPatientIDs", "MedicalRecordLocator", "IssuerOfPatientID"),
    "birth_date": ("PatientBirthDate",),
    "accession": (
        "AccessionNumber",
        "StudyID",
        "RequestedProcedureID",
        "ScheduledProcedureStepID",
        "PerformedProcedureStepID",
        "PlacerOrderNumberImagingServiceRequest",
        "FillerOrderNumberImagingServiceRequest",
        "AdmissionID",
    ),
    "institution": ("InstitutionName",),
    "station": (
        "StationName",
        "SourceApplicationEntityTitle",
        "PerformedStationAETitle",
        "ScheduledStationAETitle",
    ),
    "device_serial": ("DeviceSerialNumber",),
    "address": ("PatientAddress", "InstitutionAddress", "PatientTelephoneNumbers"),
}
KINDS = tuple(SOURCE_KEYWORDS)
#: the fields naming the scanner's maker and model (see :func:`identifiers_found`)
VENDOR_KEYWORDS = ("Manufacturer", "ManufacturerModelName")
#: kind of identifier → field of :class:`Identifiers`
FIELDS = {
    "name": "names",
    "staff_name": "staff_names",
    "id": "ids",
    "birth_date": "birth_dates",
    "accession": "accessions",
    "institution": "institutions",
    "station": "stations",
    "device_serial": "device_serials",
    "address": "addresses",
}


@dataclass(frozen=True)
class Identifiers:
    """Identifying values of the source data, by kind (raw DICOM spellings).

    Merge with ``|``. Values are stored as read (``Doe^Jane``, ``19800101``); the search
    strings derived from them come from :meth:`search_terms`.
    """

    names: frozenset[str] = frozenset()
    staff_names: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    birth_dates: frozenset[str] = frozenset()
    accessions: frozenset[str] = frozenset()
    institutions: frozenset[str] = frozenset()
    stations: frozenset[str] = frozenset()
    device_serials: frozenset[str] = frozenset()
    addresses: frozenset[str] = frozenset()

    def __or__(self, other: Identifiers) -> Identifiers:
        return Identifiers(
            **{
                f.name: getattr(self, f.name) | getattr(other, f.name)
                for f in dataclasses.fields(self)
            }
        )

    def values(self, kind: str) -> frozenset[str]:
        value: frozenset[str] = getattr(self, FIELDS[kind])
        return value

    def is_empty(self) -> bool:
        return not any(self.values(kind) for kind in KINDS)

    def search_terms(self) -> list[tuple[str, str, str]]:
        """``(term, kind, ref)`` for every search string, ``ref`` like ``"name#1"``.

        ``ref`` names the value by its kind and rank (values sorted), so a report can tell
        hits of different values apart without containing them.
        """
        terms: list[tuple[str, str, str]] = []
        for kind in KINDS:
            for rank, value in enumerate(sorted(self.values(kind)), start=1):
                ref = f"{kind}#{rank}"
                for term in _variants(kind, value):
                    if len(term) >= MIN_LENGTH:
                        terms.append((term, kind, ref))
        return terms

    def to_json(self) -> dict[str, list[str]]:
        return {FIELDS[kind]: sorted(self.values(kind)) for kind in KINDS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "identifiers") -> Identifiers:
        unknown = set(data) - set(FIELDS.values())
        if unknown:
            raise ConfigError(f"{source}: unknown identifier kinds {sorted(unknown)}")
        fields: dict[str, frozenset[str]] = {}
        for name, values in data.items():
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ConfigError(f"{source}: '{name}' must be a list of strings")
            fields[name] = frozenset(values)
        return cls(**fields)


def clean_value(value: object) -> str:
    """A DICOM value as text, without padding (spaces, NULs)."""
    return str(value).strip().strip("\x00").strip()


#: placeholders left by earlier de-identification ("***", "ANONYMOUS"...): no PHI
_PLACEHOLDERS = frozenset(
    {
        "",
        "anonymous",
        "anonymized",
        "anon",
        "unknown",
        "none",
        "n/a",
        "na",
        "removed",
        "deidentified",
        "de-identified",
        "xxx",
        "x",
    }
)


def identifiers_found(found: Mapping[str, Iterable[str]], vendor: Iterable[str]) -> Identifiers:
    """The identifiers among the values ``found`` in one header (by kind), given the
    values of its Manufacturer and ManufacturerModelName (``vendor``).

    Left out: a site or station "named" after the vendor or model (it identifies nothing,
    and would make every Manufacturer field a hit), and placeholders of an earlier
    de-identification ("***", "ANONYMOUS", ...).
    """
    makers = {v.casefold() for v in vendor}
    values = {kind: set(found.get(kind, ())) for kind in KINDS}
    for kind in ("institution", "station", "address"):
        values[kind] = {v for v in values[kind] if v.casefold() not in makers}
    return Identifiers(
        **{
            FIELDS[kind]: frozenset(
                v for v in kept if v.strip("*?-_ .").casefold() not in _PLACEHOLDERS
            )
            for kind, kept in values.items()
        }
    )


def merge_identifiers(items: Iterable[Identifiers]) -> Identifiers:
    result = Identifiers()
    for item in items:
        result = result | item
    return result


def save_identifiers(path: Path, identifiers: Identifiers) -> None:
    """Write ``identifiers`` as JSON with mode 0600 (the file is PHI: keep it out of
    OUTPUT_DIR)."""
    text = json.dumps(identifiers.to_json(), indent=2, ensure_ascii=False) + "\n"
    with fileops.atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_text(text, encoding="utf-8")


def load_identifiers(path: Path) -> Identifiers:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read identifiers file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return Identifiers.from_json(data, str(path))


# --------------------------------------------------------------------------- variants

_DATE = re.compile(r"^(\d{4})[-.]?(\d{2})[-.]?(\d{2})$")


def _name_variants(value: str, components: bool) -> Iterator[str]:
    for group in value.split("="):  # alphabetic=ideographic=phonetic representations
        parts = [p.strip() for p in group.split("^")]
        parts = [p for p in parts if p]
        if not parts:
            continue
        yield group.rstrip("^ ")
        family, given = parts[0], parts[1] if len(parts) > 1 else ""
        yield " ".join(parts)
        if given:
            for sep in ("^", " ", "_", "", ", ", ","):
                yield f"{family}{sep}{given}"
                yield f"{given}{sep}{family}"
        if components:
            for part in parts:
                yield part
                words = re.split(r"[\s-]+", part)  # (double-barrelled: Müller-Lüdenscheidt)
                if len(words) > 1:
                    yield from (w for w in words if len(w) >= 4)


#: how names are spelt in ASCII: German (ü → ue), then without diacritics (ü → u)
_GERMAN_ASCII = str.maketrans(
    {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"}
)
_LETTERS_ASCII = str.maketrans(
    {"ß": "ss", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "Ae", "œ": "oe", "Œ": "Oe", "ł": "l",
     "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "Th", "\u0131": "i"}
)  # fmt: skip


def ascii_spellings(text: str) -> list[str]:
    """The ASCII spellings of a name with other letters, as staff or systems type it.

    >>> ascii_spellings("Grünspan^Jörg")
    ['Gruenspan^Joerg', 'Grunspan^Jorg']
    >>> ascii_spellings("Søren Ødegård"), ascii_spellings("Doe")
    (['Soren Odegard'], [])
    """
    if text.isascii():
        return []
    found = []
    for table in (_GERMAN_ASCII, _LETTERS_ASCII):
        decomposed = unicodedata.normalize("NFKD", text.translate(table))
        plain = "".join(c for c in decomposed if not unicodedata.combining(c))
        if plain.isascii() and plain not in found:
            found.append(plain)
    return found


def _variants(kind: str, value: str) -> Iterator[str]:
    """The search strings of one identifier: its spellings (:func:`_spellings`), and
    those with letters beyond ASCII also encoded in UTF-8 twice, as dcm2niix writes the
    text of UTF-8 files (``MÃ¼ller``: :func:`bidsport.convert.undo_double_encoding`)."""
    for term in _spellings(kind, value):
        yield term
        if not term.isascii():
            yield term.encode("utf-8").decode("latin-1")


def _spellings(kind: str, value: str) -> Iterator[str]:
    value = clean_value(value)
    if not value:
        return
    if kind in ("name", "staff_name"):
        for spelling in (value, *ascii_spellings(value)):
            yield from _name_variants(spelling, components=kind == "name")
        return
    yield value
    if kind in ("id", "accession"):  # as typed without its punctuation: A-00417 as A00417
        bare = re.sub(r"[^0-9A-Za-z]", "", value)
        if bare != value and len(bare) >= 5:
            yield bare
    if kind == "birth_date":
        m = _DATE.match(value)
        if m:
            y, mo, d = m.groups()
            yield from (
                f"{y}{mo}{d}",
                f"{y}-{mo}-{d}",
                f"{y}.{mo}.{d}",
                f"{y}/{mo}/{d}",
                f"{d}.{mo}.{y}",
                f"{d}/{mo}/{y}",
                f"{mo}/{d}/{y}",
                f"{d}-{mo}-{y}",
            )
        return
    if " " in value:
        for sep in ("_", "-", ""):
            yield re.sub(r"\s+", sep, value)
    if kind == "address":
        for part in re.split(r"[,^\n\r;]+", value):
            part = part.strip(" .-")
            if len(part) >= 5:
                yield part


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Match:
    start: int
    end: int
    kind: str
    ref: str


def _bounded(term: str, word: str, digit: str, *, always: bool = False) -> str:
    pattern = re.escape(term)
    if len(term) >= SUBSTRING_LENGTH and not always:
        return pattern
    first, last = term[0], term[-1]
    if first.isalpha():
        pattern = f"(?<!{word})" + pattern
    elif first.isdigit():
        pattern = f"(?<!{digit})" + pattern
    if last.isalpha():
        pattern += f"(?!{word})"
    elif last.isdigit():
        pattern += f"(?!{digit})"
    return pattern


class Matcher:
    """Finds the identifiers in text (``str``) or raw bytes (Latin-1 and UTF-8 spellings).

    Bytes are searched in their ASCII-lowercased copy (same offsets) with a case-sensitive
    pattern of lowercased terms, after a plain substring pre-check: most data (pixel data,
    vendor headers) contains no identifier, and ``in`` is much faster than the regex.
    """

    def __init__(self, identifiers: Identifiers) -> None:
        terms = identifiers.search_terms()
        # longest first, so "Doe^Jane" wins over "Doe"
        terms.sort(key=lambda t: -len(t[0]))
        self._lookup: dict[str, tuple[str, str]] = {}
        self._blookup: dict[bytes, tuple[str, str]] = {}
        text_parts: list[str] = []
        byte_parts: list[bytes] = []
        for term, kind, ref in terms:
            key = term.casefold()
            if key in self._lookup:
                continue
            self._lookup[key] = (kind, ref)
            token = kind in _TOKEN_KINDS
            text_parts.append(_bounded(term, r"[^\W\d_]", r"\d", always=token))
            for enc in ("latin-1", "utf-8"):
                for candidate in (term.lower(), term.upper()):
                    try:
                        raw = candidate.encode(enc).lower()
                    except UnicodeEncodeError:
                        continue
                    if raw not in self._blookup:
                        self._blookup[raw] = (kind, ref)
                        pat = _bounded(raw.decode("latin-1"), "[A-Za-z]", "[0-9]", always=token)
                        byte_parts.append(pat.encode("latin-1"))
        self._text_terms = tuple(self._lookup)
        #: every search string is ASCII: its bytes are the same in any DICOM character set
        self.ascii_only = all(term.isascii() for term in self._lookup)
        self._byte_terms = tuple(self._blookup)
        self._text = re.compile("|".join(text_parts), re.IGNORECASE) if text_parts else None
        self._bytes = re.compile(b"|".join(byte_parts)) if byte_parts else None

    @property
    def empty(self) -> bool:
        return self._text is None

    def _may_hold_text(self, text: str) -> bool:
        folded = text.casefold()
        return any(term in folded for term in self._text_terms)

    def find(self, text: str) -> list[Match]:
        if self._text is None or not text or not self._may_hold_text(text):
            return []
        out = []
        for m in self._text.finditer(text):
            kind, ref = self._lookup.get(m.group(0).casefold(), ("unknown", "?"))
            out.append(Match(m.start(), m.end(), kind, ref))
        return out

    def _lowered(self, data: bytes) -> bytes | None:
        """``data`` lowercased if it may hold an identifier, else None."""
        if self._bytes is None or not data:
            return None
        low = data.lower()
        if any(term in low for term in self._byte_terms):
            return low
        return None

    def may_hold_bytes(self, data: bytes) -> bool:
        """Whether ``data`` may hold an identifier: a quick check (no match rules, no
        decoding) that is never False where :meth:`find_bytes` finds one, nor, for a
        matcher whose search strings are all ASCII (:attr:`ascii_only`), where
        :meth:`find` finds one in the text that ``data`` decodes to in any DICOM
        character set."""
        return self._lowered(data) is not None

    def find_bytes(self, data: bytes) -> list[Match]:
        low = self._lowered(data)
        if low is None or self._bytes is None:
            return []
        out = []
        for m in self._bytes.finditer(low):
            kind, ref = self._blookup.get(m.group(0), ("unknown", "?"))
            out.append(Match(m.start(), m.end(), kind, ref))
        return out

    def scrub(self, text: str, replacement: str = "X") -> str:
        if self._text is None or not text or not self._may_hold_text(text):
            return text
        return self._text.sub(replacement, text)

    def scrub_same_length(self, data: bytes) -> bytes:
        """Overwrite every identifier in ``data`` with ``X``, keeping the length."""
        matches = self.find_bytes(data)
        if not matches:
            return data
        out = bytearray(data)
        for m in matches:
            out[m.start : m.end] = b"X" * (m.end - m.start)
        return bytes(out)


@lru_cache(maxsize=64)
def matcher_for(identifiers: Identifiers) -> Matcher:
    """A (cached) :class:`Matcher` for ``identifiers``."""
    return Matcher(identifiers)


def scrub_text(text: str, identifiers: Identifiers) -> str:
    """``text`` with every identifier replaced by ``X`` (see the module's matching rules)."""
    return matcher_for(identifiers).scrub(text)


def subject_label_identity_check(
    label: str, identifiers: Identifiers, *, entity: str = "subject", dates: Iterable[str] = ()
) -> str | None:
    """Why ``label`` must not be used as a subject (or session: ``entity``) label, or None.

    A label that equals or contains the patient's name (or a name component), ID, birth
    date or accession number, or the date of a study (``dates``, YYYYMMDD: the dataset's
    dates are shifted), would put PHI into every file name of the dataset; so would a label
    of 5 characters or more that is part of one (``7734215`` of the ID ``MRN7734215``). The
    comparison ignores case and every character that is not a letter or digit (BIDS labels
    are alphanumeric): a term of 4 characters or more is found anywhere in the label
    (``ZelinskiM``), a shorter one as a token. The reason does not repeat the identifier
    (it goes to logs).

    >>> ids = Identifiers(names=frozenset({"Zelinski^Margarethe"}), ids=frozenset({"MRN77342"}))
    >>> subject_label_identity_check("Zelinski01", ids)[:48]
    'the subject label contains the patient name of i'
    >>> subject_label_identity_check("ZelinskiM", ids)[:48]
    'the subject label contains the patient name of i'
    >>> subject_label_identity_check("77342", ids)[:44]
    'the subject label is part of the patient ID '
    >>> subject_label_identity_check("20230517", ids, entity="session", dates=["20230517"])[:46]
    'the session label equals the date of a study o'
    >>> subject_label_identity_check("P01", ids) is None
    True
    """
    plain = re.sub(r"[^0-9a-z]", "", label.lower().removeprefix(f"{entity[:3]}-"))
    if not plain:
        return None
    checks = [
        ("name", "patient name", identifiers.names),
        ("id", "patient ID", identifiers.ids),
        ("birth_date", "birth date", identifiers.birth_dates),
        ("accession", "accession number", identifiers.accessions),
        ("birth_date", "date of a study", frozenset(d for d in dates if d)),  # (its spellings)
    ]
    found: dict[str, str] = {}  #: how the label holds an identifier -> what, the first
    for kind, what, values in checks:
        for value in sorted(values):
            for term in _variants(kind, value):
                term_plain = re.sub(r"[^0-9a-z]", "", term.lower())
                if len(term_plain) >= MIN_LENGTH:
                    how = _how_label_holds(plain, term_plain)
                    if how:
                        found.setdefault(how, what)
    how = next((h for h in _HOLDS if h in found), None)
    if how is None:
        return None
    what = found[how]
    return (
        f"the {entity} label {how} the {what} of its DICOM files; map the packet to a "
        "neutral label with --mapping (e.g. a study code)"
    )


#: how a label may hold an identifier, the most telling first
_HOLDS = ("equals", "contains", "is part of")


def _how_label_holds(label: str, term: str) -> str | None:
    """How a label (alphanumeric, lower case) holds an identifier's search term, if it does."""
    if term == label:
        return "equals"
    # (a term of 3 characters as a token: "Lee" not in "sub-Leeds01")
    if term in label and (
        len(term) > MIN_LENGTH or re.search(_bounded(term, "[a-z]", "[0-9]"), label)
    ):
        return "contains"
    if len(label) >= 5 and label in term:
        return "is part of"
    return None


# --------------------------------------------------------------------------- sidecars

#: keys dcm2niix may write that identify the patient, site or device: always removed
#: (``dcm2niix -ba y`` drops only the patient's name, ID, birth date and the UIDs).
SIDECAR_PHI_KEYS: frozenset[str] = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "OtherPatientIDs",
        "OtherPatientNames",
        "AccessionNumber",
        "StudyID",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "PhysiciansOfRecord",
        "RequestingPhysician",
        "PatientAddress",
        "PatientTelephoneNumbers",
        # free text where consoles and technicians write names
        "ImageComments",
        "StudyComments",
        "PatientComments",
        # Siemens UIDs carry the scanner's serial number and the acquisition date-time
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
        "ReferencedSOPInstanceUID",
    }
)
#: also removed with ``--anonymize``: real dates and the patient's characteristics
#: (age and sex belong in participants.tsv; dates only as shifted acq_time in _scans.tsv)
SIDECAR_ANONYMIZE_KEYS: frozenset[str] = frozenset(
    {
        "PatientSex",
        "PatientAge",
        "PatientWeight",
        "PatientSize",
        "ImageComments",
        "StudyComments",
        "PatientComments",
    }
)
#: free-text keys (typed or chosen by staff) scrubbed of the identifiers when
#: ``identifiers`` are given. Every key that is in neither this list nor
#: :data:`SIDECAR_TECHNICAL_KEYS` is scrubbed too: the list documents, it does not select.
SIDECAR_TEXT_KEYS: frozenset[str] = frozenset(
    {
        "SeriesDescription",
        "ProtocolName",
        "StudyDescription",
        "ProcedureStepDescription",
        "ImageComments",
        "DerivationDescription",
        "BodyPartExamined",
        "BodyPart",  # (0018,0015) as newer dcm2niix names it; typed on some consoles
        "ReceiveCoilName",
        "WipMemBlock",  # Siemens WIP parameter card: free text of the protocol
        "ConversionComments",  # dcm2niix -c: typed by whoever converts
        "TracerName",  # PET: typed at the injection
    }
)
#: keys whose values the scanner's (or the converter's) software writes, never a person:
#: defined terms, sequence and software names, coil elements, phase-encoding axes...
#: :func:`scrub_sidecar` keeps them verbatim, whatever they hold (but with ``--anonymize``,
#: whose PHI audit searches every byte of the output). A patient's name or ID in
#: them can only be a coincidence (a phantom named after its sequence, "epiRT"), and a
#: site's sequence named after the site ("%CustomerSeq%\\nih_ep2d_bold") is no patient's
#: identifier; scrubbing them would change what the acquisition was. Left out on purpose:
#: dates and times (an anonymizer may set the birth date to the study date), BidsGuess (made
#: from the protocol name), coil names (sites name their coils), PET tracer and
#: reconstruction names, and every key whose origin is unsure (FmriExternalInfo,
#: DeepLearningDetails, ...): those stay scrubbed.
SIDECAR_TECHNICAL_KEYS: frozenset[str] = frozenset(
    {
        # the scanner and its software
        "Modality",
        "Manufacturer",
        "ManufacturersModelName",
        "SoftwareVersions",
        "ConsistencyInfo",  # Siemens software baseline, "N4_VE11C_LATEST_20160120"
        # the sequence: names given by its programmer, DICOM defined terms
        "SequenceName",
        "PulseSequenceName",
        "InternalPulseSequenceName",
        "PulseSequenceDetails",  # Siemens sequence file, "%CustomerSeq%\\nih_ep2d_bold"
        "PulseSequenceType",
        "ScanningSequence",
        "SequenceVariant",
        "ScanOptions",
        "MRAcquisitionType",
        "MRSpectroscopyAcquisitionType",
        "ImageType",
        "ImageTypeText",
        "ArterialSpinLabelingType",
        "PASLType",
        "M0Type",
        "DiffusionScheme",
        "DiffGradientCyclingGE",
        "ResonantNucleus",
        # acquisition state, geometry and hardware, as recorded by the scanner
        "PatientPosition",  # "HFS": a defined term, not a characteristic of the patient
        "ImageOrientationText",
        "PhaseEncodingDirection",
        "PhaseEncodingAxis",
        "InPlanePhaseEncodingDirectionDICOM",
        "PhaseEncodingDirectionDisplayed",
        "PhaseEncodingPolarityGE",
        "PartialFourierDirection",
        "PartialFourierEnabled",
        "ParallelAcquisitionTechnique",
        "MatrixCoilMode",
        "CoilCombinationMethod",
        "CoilString",  # coil IDs read from the hardware ("HEA;HEP")
        "ReceiveCoilActiveElements",
        "PrescanReuseString",
        "NonlinearGradientCorrection",
        "MTState",
        "SpoilingState",
        "SpoilingType",
        # units and defined terms (PET, fieldmaps)
        "Units",
        "InjectedRadioactivityUnits",
        "MolarActivityUnits",
        "DecayCorrection",
        "RandomsCorrectionMethod",
        "ConvolutionKernel",
        # the converter
        "ConversionSoftware",
        "ConversionSoftwareVersion",
    }
)
_DATE_KEY = re.compile(r"Date(Time)?$")


def is_anonymized_sidecar_key(key: str) -> bool:
    """Whether ``--anonymize`` drops sidecar ``key`` (a date, the patient's sex, age...).

    >>> is_anonymized_sidecar_key("AcquisitionDateTime"), is_anonymized_sidecar_key("EchoTime")
    (True, False)
    """
    return key in SIDECAR_ANONYMIZE_KEYS or bool(_DATE_KEY.search(key))


@dataclass(frozen=True)
class ScrubbedSidecar:
    """A sidecar scrubbed by :func:`scrub_sidecar_changes`, and where identifiers were."""

    data: dict[str, Any]  #: the sidecar without identifying keys, its values scrubbed
    #: top-level keys (sorted) whose values held an identifier, replaced by ``X``: safe to
    #: log and to note (names of keys only, never the values, which are PHI)
    scrubbed_keys: tuple[str, ...] = ()


def scrub_sidecar_changes(
    d: Mapping[str, Any], *, anonymize: bool = False, identifiers: Identifiers | None = None
) -> ScrubbedSidecar:
    """A copy of sidecar ``d`` without identifying keys, and the keys scrubbed.

    Always drops :data:`SIDECAR_PHI_KEYS`; with ``anonymize`` also every ``...Date`` /
    ``...DateTime`` key (``AcquisitionDateTime``, ``StudyDate``...; ``AcquisitionTime`` as a
    time of day stays) and :data:`SIDECAR_ANONYMIZE_KEYS`. With ``identifiers``, every
    string left (nested in lists and objects too) is scrubbed with :func:`scrub_text`,
    except, without ``anonymize``, the values of :data:`SIDECAR_TECHNICAL_KEYS`, kept
    verbatim (with it, every value is scrubbed: the PHI audit of an anonymized dataset
    finds nothing, and a technical value mangled is the lesser harm); the keys whose value
    the scrub changed are reported.

    >>> ids = Identifiers(names=frozenset({"Doe^Jane"}))
    >>> result = scrub_sidecar_changes(
    ...     {"SeriesDescription": "t1 Doe", "SequenceName": "doe_tfl"}, identifiers=ids
    ... )
    >>> result.data, result.scrubbed_keys
    ({'SeriesDescription': 't1 X', 'SequenceName': 'doe_tfl'}, ('SeriesDescription',))
    """
    kept: dict[str, Any] = {}
    for key, value in d.items():
        if key in SIDECAR_PHI_KEYS:
            continue
        if anonymize and is_anonymized_sidecar_key(key):
            continue
        kept[key] = value
    if identifiers is None or identifiers.is_empty():
        return ScrubbedSidecar(kept)
    matcher = matcher_for(identifiers)
    out: dict[str, Any] = {}
    scrubbed: list[str] = []
    for key, value in kept.items():
        if key in SIDECAR_TECHNICAL_KEYS and not anonymize:
            out[key] = value
            continue
        out[key], changed = _scrub_json(value, matcher)
        if changed:
            scrubbed.append(key)
    return ScrubbedSidecar(out, tuple(sorted(scrubbed)))


def scrub_sidecar(
    d: Mapping[str, Any], *, anonymize: bool = False, identifiers: Identifiers | None = None
) -> dict[str, Any]:
    """:func:`scrub_sidecar_changes` without the report: the scrubbed copy of ``d``."""
    return scrub_sidecar_changes(d, anonymize=anonymize, identifiers=identifiers).data


def _scrub_json(value: Any, matcher: Matcher) -> tuple[Any, bool]:
    """``value`` with its strings scrubbed (lists and objects at any depth), and whether
    any string changed."""
    if isinstance(value, str):
        scrubbed = matcher.scrub(value)
        return scrubbed, scrubbed != value
    if isinstance(value, (list, tuple)):
        pairs = [_scrub_json(v, matcher) for v in value]
        items = [v for v, _ in pairs]
        return (tuple(items) if isinstance(value, tuple) else items), any(c for _, c in pairs)
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        changed = False
        for k, v in value.items():
            out[k], item_changed = _scrub_json(v, matcher)
            changed = changed or item_changed
        return out, changed
    return value, False
