"""What de-identification does to each tag: the default policy and user policy files.

The policy is data: per-tag actions applied *before* dicognito's own handlers (so they
override them), the private elements kept with ``--keep-private-tags`` (by private creator,
not by fixed block), and which objects are excluded (burned-in annotations, secondary
captures, reports). A TOML policy file adds or relaxes rules; see
``bidsport/data/anonymize-policy-example.toml``.

Actions:

``remove``     delete the element
``empty``      keep the element with an empty value (Type 2 attributes)
``keep``       keep the value unchanged (overrides dicognito)
``scrub``      keep the text, with the subject's names/IDs/... replaced by ``X``
``pseudonym``  replace the value by a pseudonym derived from the project key and the value,
               the same in every subject (used for site and scanner identifiers, so images of
               one scanner stay recognisable as such across subjects, e.g. for harmonisation)
``default``    leave the element to dicognito (random value, shifted date, new UID...)

After these, every text element (:data:`TEXT_VRS`: LO, SH, ST, LT, UT, UC, PN) that
neither the policy nor dicognito acted on is scrubbed like ``scrub``, at any depth
(sequence items too): free text the list above does not name (a ``CodeMeaning``,
``ContrastBolusAgent``, ``ClinicalTrialSponsorName``...) may hold a name too, and the PHI
audit searches every element. Only the subject's known identifiers are replaced, so a
value that holds none (code values, sequence and software names) is left as it is. To
keep an element verbatim whatever it holds, give it the action ``keep``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import Tag

from bidsport.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ACTIONS = ("remove", "empty", "keep", "scrub", "pseudonym", "default")
#: the text VRs: the ones ``scrub`` applies to, and that every element no rule (bidsport's
#: or dicognito's) took is scrubbed in (see :class:`~bidsport.anonymize.handlers.TextScrubber`)
TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN"})
BURNED_IN_MODES = ("if-yes", "unless-no", "never")

#: Elements a policy file may only remove or empty (relaxing them defeats de-identification)
PROTECTED = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "OtherPatientIDs",
        "OtherPatientNames",
        "OtherPatientIDsSequence",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientBirthName",
        "PatientMotherBirthName",
        "MedicalRecordLocator",
    }
)

#: bidsport's additions to dicognito (applied first). Everything not listed here is left to
#: dicognito: every UI gets a new UID (per project key), every PN a random name, IDs random
#: values, dates are shifted (per subject), a few patient attributes are removed.
DEFAULT_TAG_ACTIONS: dict[str, str] = {
    # removed (issue): the patient's residence and occupation
    "CountryOfResidence": "remove",
    "Occupation": "remove",
    "PatientAddress": "remove",
    "RegionOfResidence": "remove",
    # the birth date is emptied (PatientAge stays); other patient details removed
    "PatientBirthDate": "empty",
    "PatientBirthTime": "remove",
    "PatientBirthName": "remove",
    "PatientMotherBirthName": "remove",
    "EthnicGroup": "remove",
    "MedicalAlerts": "remove",
    "Allergies": "remove",
    "PatientState": "remove",
    "SpecialNeeds": "remove",
    "PregnancyStatus": "remove",
    "PatientInsurancePlanCodeSequence": "remove",
    # free text that commonly carries names: removed
    "ImageComments": "remove",
    "StudyComments": "remove",
    "PatientComments": "remove",
    "AdditionalPatientHistory": "remove",
    "RequestedProcedureComments": "remove",
    "ImagingServiceRequestComments": "remove",
    "ReasonForStudy": "remove",
    "ReasonForTheRequestedProcedure": "remove",
    "CommentsOnThePerformedProcedureStep": "remove",
    "AcquisitionComments": "remove",
    "InterpretationText": "remove",
    "TextComments": "remove",
    "VisitComments": "remove",
    "FrameComments": "remove",
    # staff names: ReferringPhysicianName is Type 2 (emptied), the others removed
    "ReferringPhysicianName": "empty",
    "RequestingPhysician": "remove",
    "OperatorsName": "remove",
    "PerformingPhysicianName": "remove",
    "PhysiciansOfRecord": "remove",
    "NameOfPhysiciansReadingStudy": "remove",
    "ScheduledPerformingPhysicianName": "remove",
    "ReferringPhysicianAddress": "remove",
    "ReferringPhysicianTelephoneNumbers": "remove",
    "ResponsiblePerson": "remove",
    "PerformingPhysicianIdentificationSequence": "remove",
    "OperatorIdentificationSequence": "remove",
    "ReferringPhysicianIdentificationSequence": "remove",
    "PhysiciansOfRecordIdentificationSequence": "remove",
    # descriptions are kept (classification needs them) but scrubbed of identifiers
    "SeriesDescription": "scrub",
    "ProtocolName": "scrub",
    "StudyDescription": "scrub",
    "PerformedProcedureStepDescription": "scrub",
    "RequestedProcedureDescription": "scrub",
    "ScheduledProcedureStepDescription": "scrub",
    "DerivationDescription": "scrub",
    # site and scanner: pseudonyms per project key (dicognito would randomise them per
    # subject)
    "InstitutionName": "pseudonym",
    "InstitutionAddress": "pseudonym",
    "InstitutionalDepartmentName": "pseudonym",
    "StationName": "pseudonym",
    "DeviceSerialNumber": "pseudonym",
    # where the procedure was scheduled / performed: station names and locations
    "PerformedStationName": "remove",
    "PerformedLocation": "remove",
    "ScheduledStationName": "remove",
    "ScheduledProcedureStepLocation": "remove",
    "CurrentPatientLocation": "remove",
    "AdmittingDiagnosesDescription": "remove",
}

#: DICOM SOP classes never written when anonymizing: identifying text lives in the
#: document or report content, not in header fields
DOCUMENT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "encapsulated CDA",
    "1.3.12.2.1107.5.9.1": "Siemens CSA non-image object",
}
DOCUMENT_SOP_PREFIXES = {"1.2.840.10008.5.1.4.1.1.88.": "structured report"}
#: excluded unless --allow-burned-in: the pixels may show names
SECONDARY_CAPTURE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "multi-frame single-bit secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.2": "multi-frame grayscale byte secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "multi-frame grayscale word secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "multi-frame true color secondary capture",
}
SCREEN_SAVE_IMAGE_TYPES = frozenset({"SCREEN SAVE", "SCREENSHOT", "SECONDARY CAPTURE"})


@dataclass(frozen=True)
class PrivateKeep:
    """Private elements kept: ``elements`` are offsets (0x00-0xFF) in the block that
    ``creator`` reserves in ``group``, wherever the block lies (``(gggg,xx10)``...)."""

    group: int
    creator: str
    elements: frozenset[int]
    purpose: str = ""

    def describe(self) -> str:
        offsets = ",".join(f"xx{e:02X}" for e in sorted(self.elements))
        why = f" ({self.purpose})" if self.purpose else ""
        return f'({self.group:04X},{offsets}) of "{self.creator}"{why}'


def _pk(group: int, creator: str, offsets: str, purpose: str) -> PrivateKeep:
    return PrivateKeep(group, creator, frozenset(int(o, 16) for o in offsets.split()), purpose)


#: The private elements dcm2niix reads for diffusion, slice timing, phase encoding and
#: multi-band (from the tag definitions in dcm2niix's ``nii_dicom.cpp``, ``readDICOMx``,
#: checked by converting the vendor data of the dcm_qa collections before and after).
#: Kept with ``--keep-private-tags``; everything else private is removed.
# fmt: off
DCM2NIIX_PRIVATE: tuple[PrivateKeep, ...] = (
    # Siemens: (0019,xx0A) images in mosaic, xx0B slice duration, xx0C b-value,
    # xx0D directionality, xx0E gradient direction, xx18 dwell time, xx27 b-matrix,
    # xx28 bandwidth per pixel phase encode, xx29 MosaicRefAcqTimes (slice timing)
    _pk(0x0019, "SIEMENS MR HEADER", "0A 0B 0C 0D 0E 18 27 28 29",
        "Siemens diffusion, mosaic, slice timing, echo spacing"),
    # Siemens CSA image/series headers (0029,xx10/xx20): phase-encoding polarity, slice
    # timing, ASCCONV protocol (multi-band, partial Fourier...). UIDs inside are zeroed and
    # the subject's identifiers X-ed (same length, so the CSA structure stays valid).
    _pk(0x0029, "SIEMENS CSA HEADER", "10 20", "Siemens CSA image/series headers"),
    _pk(0x0051, "SIEMENS MR HEADER", "0B 0E 0F 11",
        "Siemens matrix, orientation, coil, PAT mode text"),
    # Siemens XA (enhanced): ASCCONV series header (0021,1019), PAT mode, sequence text,
    # and (0021,10FE), the private sequence that holds them in the functional groups
    _pk(0x0021, "SIEMENS MR SDS 01", "09 19 5A 5B 5C FE", "Siemens XA series header, PAT mode"),
    # Siemens XA: time after start (slice timing), ICE dims, PE polarity (0021,111C), dwell
    # time, bandwidth per pixel phase encode, coil elements, matrix and image type text
    _pk(0x0021, "SIEMENS MR SDI 02", "04 06 1C 42 4F 53 58 75 76 8E FE",
        "Siemens XA slice timing, phase encoding, dwell time"),
    # GE: (0019,10BB-10BD) gradient directions, user data 11/12/15 (DTI), series plane,
    # last scan location, pulse sequence names, acquisition duration, DTI counts
    _pk(0x0019, "GEMS_ACQU_01", "17 18 1B 5A 9C 9E A2 A9 B2 B3 B6 BB BC BD DF E0 E2",
        "GE diffusion directions, DTI user data, pulse sequence"),
    # GE: locations in acquisition, (0021,105A) diffusion direction, RTIA timer (slice time)
    _pk(0x0021, "GEMS_RELA_01", "4F 5A 5E", "GE slice timing"),
    # GE: (0025,101B) protocol data block (gzip: slice order, phase encoding, multi-band)
    _pk(0x0025, "GEMS_SERS_01", "1B", "GE protocol data block"),
    _pk(0x0027, "GEMS_IMAG_01", "60 61 62", "GE spiral/arm parameters"),
    # GE: (0043,1039) b-value, (0043,102C) effective echo spacing, (0043,1083) ASSET,
    # (0043,102A) user data (phase-encoding polarity), (0043,102F) image type,
    # (0043,10B6) multi-band, (0043,10B2) table position, shims, ASL
    _pk(0x0043, "GEMS_PARM_01", "02 03 04 2A 2C 2F 30 39 7C 83 95 A3 A4 A5 B2 B6 B7 CA",
        "GE b-value, echo spacing, ASSET, multi-band, PE polarity"),
    # Philips: (2001,1003) b-value, (2001,1004) diffusion direction, slice number, EPI
    # factor, (2001,1022) water-fat shift (echo spacing), slices/dynamics, prepulse
    _pk(0x2001, "Philips Imaging DD 001", "03 04 08 0A 0B 10 13 18 19 1B 1C 1F 22 81",
        "Philips b-value, EPI factor, water-fat shift, slices"),
    # Philips: (2005,10B0-10B2) gradient directions, stack angulation/offcentre, scale
    # slope, dynamic scan begin time, TR array
    _pk(0x2005, "Philips MR Imaging DD 001", "0E 30 63 6F 71 72 73 78 79 7A A0 B0 B1 B2",
        "Philips gradient directions, geometry, scaling"),
    _pk(0x2005, "Philips MR Imaging DD 002", "10", "Philips deep-learning flag"),
    _pk(0x2005, "Philips MR Imaging DD 005", "0F 12 13 29",
        "Philips per-frame sequence, b-value/gradient numbers, ASL label"),
    _pk(0x2005, "Philips MR Imaging DD 006", "96", "Philips diffusion volume number"),
    # United Imaging: b-value, gradient direction, PE direction and polarity, grid size,
    # (0065,1051) per-slice sequence (positions and acquisition times: slice timing)
    _pk(0x0065, "Image Private Header", "05 09 0D 37 50 51 58",
        "UIH b-value, gradient direction, phase encoding, slice timing"),
)
# fmt: on


@dataclass(frozen=True)
class AnonymizePolicy:
    """Everything that decides how a dataset is de-identified (immutable, hashable)."""

    tag_actions: tuple[tuple[int, str], ...]  #: (tag, action), public tags only
    private_keep: tuple[PrivateKeep, ...] = ()  #: private elements kept; others removed
    burned_in: str = "if-yes"  #: exclude when BurnedInAnnotation is YES / not NO / never
    source: str = "default"  #: where the policy came from (for logs)
    _lookup: Mapping[int, str] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lookup", dict(self.tag_actions))

    def action(self, tag: int) -> str:
        return self._lookup.get(tag, "default")

    @property
    def keep_private(self) -> bool:
        return bool(self.private_keep)

    @property
    def allow_burned_in(self) -> bool:
        return self.burned_in == "never"


def _tags(actions: Mapping[str, str]) -> tuple[tuple[int, str], ...]:
    return tuple(sorted((int(tag_for_keyword(k) or 0), v) for k, v in actions.items()))


def default_policy(keep_private: bool = False, *, allow_burned_in: bool = False) -> AnonymizePolicy:
    """bidsport's default policy (``--keep-private-tags`` → ``keep_private``)."""
    return AnonymizePolicy(
        tag_actions=_tags(DEFAULT_TAG_ACTIONS),
        private_keep=DCM2NIIX_PRIVATE if keep_private else (),
        burned_in="never" if allow_burned_in else "if-yes",
    )


_TAG_TEXT = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


def _parse_tag(name: str, where: str) -> int:
    m = _TAG_TEXT.match(name.strip())
    if m:
        tag = int(m.group(1) + m.group(2), 16)
    else:
        found = tag_for_keyword(name.strip())
        if found is None:
            raise ConfigError(
                f"{where}: unknown DICOM keyword or tag '{name}'",
                "use a pydicom keyword such as StudyDescription or 'gggg,eeee'",
            )
        tag = int(found)
    if Tag(tag).is_private:
        raise ConfigError(
            f"{where}: '{name}' is a private tag; list private elements under "
            "[[private.keep]] with their creator"
        )
    return tag


def _hex(value: Any, where: str, width: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"(0x)?[0-9A-Fa-f]+", value.strip()):
        number = int(value.strip().removeprefix("0x"), 16)
    else:
        raise ConfigError(f"{where}: '{value}' is not a hexadecimal number")
    if not 0 <= number < 16**width:
        raise ConfigError(f"{where}: '{value}' is out of range")
    return number


def _tag_name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def policy_from_mapping(
    data: Mapping[str, Any],
    *,
    source: str,
    keep_private: bool = False,
    allow_burned_in: bool = False,
) -> AnonymizePolicy:
    """Build a policy from parsed TOML ``data`` on top of :func:`default_policy`."""
    base = default_policy(keep_private, allow_burned_in=allow_burned_in)
    unknown = set(data) - {"tags", "private", "options"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown sections {sorted(unknown)}", "allowed: [tags], [private], [options]"
        )
    actions = dict(base.tag_actions)
    tags = data.get("tags", {})
    if not isinstance(tags, dict):
        raise ConfigError(f"{source}: [tags] must be a table of keyword = action")
    for name, action in tags.items():
        where = f"{source} [tags] {name}"
        if action not in ACTIONS:
            raise ConfigError(
                f"{where}: unknown action '{action}'", f"use one of {', '.join(ACTIONS)}"
            )
        tag = _parse_tag(name, where)
        keyword = keyword_for_tag(tag)
        if keyword in PROTECTED and action not in ("remove", "empty"):
            raise ConfigError(
                f"{where}: {keyword} can only be removed or emptied",
                "a policy cannot relax the patient's own identifiers",
            )
        if action == "scrub" and _vr(tag) not in TEXT_VRS:
            raise ConfigError(f"{where}: only text elements can be scrubbed")
        actions[tag] = action
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{source}: [options] must be a table")
    bad = set(options) - {"keep_private_tags", "burned_in"}
    if bad:
        raise ConfigError(
            f"{source}: unknown options {sorted(bad)}", "allowed: keep_private_tags, burned_in"
        )
    if "keep_private_tags" in options:
        if not isinstance(options["keep_private_tags"], bool):
            raise ConfigError(f"{source}: options.keep_private_tags must be true or false")
        keep_private = keep_private or options["keep_private_tags"]
    burned_in = base.burned_in
    if "burned_in" in options and not allow_burned_in:
        burned_in = options["burned_in"]
        if burned_in not in BURNED_IN_MODES:
            raise ConfigError(f"{source}: options.burned_in must be one of {BURNED_IN_MODES}")
    private_keep = list(DCM2NIIX_PRIVATE if keep_private else ())
    private = data.get("private", {})
    if not isinstance(private, dict) or set(private) - {"keep"}:
        raise ConfigError(f"{source}: [private] may only hold [[private.keep]] entries")
    for i, entry in enumerate(private.get("keep", []), start=1):
        where = f"{source} [[private.keep]] #{i}"
        if not isinstance(entry, dict) or set(entry) - {"group", "creator", "elements", "purpose"}:
            raise ConfigError(f"{where}: expected group, creator, elements (and purpose)")
        group = _hex(entry.get("group"), f"{where} group", 4)
        if group % 2 == 0:
            raise ConfigError(f"{where}: group {group:04X} is not private (must be odd)")
        creator = entry.get("creator")
        if not isinstance(creator, str) or not creator.strip():
            raise ConfigError(f"{where}: creator must be the private creator string")
        elements = entry.get("elements")
        if not isinstance(elements, list) or not elements:
            raise ConfigError(f'{where}: elements must be a list of offsets like "0C"')
        offsets = frozenset(_hex(e, f"{where} elements", 2) for e in elements)
        private_keep.append(
            PrivateKeep(group, creator.strip(), offsets, str(entry.get("purpose", "policy file")))
        )
    return AnonymizePolicy(
        tag_actions=tuple(sorted(actions.items())),
        private_keep=tuple(private_keep),
        burned_in=burned_in,
        source=source,
    )


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def load_policy(
    path: Path, *, keep_private: bool = False, allow_burned_in: bool = False
) -> AnonymizePolicy:
    """Read a TOML policy file (validated) on top of the default policy.

    Raises :class:`ConfigError` naming the file and the entry at fault.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from exc
    return policy_from_mapping(
        data, source=str(path), keep_private=keep_private, allow_burned_in=allow_burned_in
    )


def describe_policy_rules(policy: AnonymizePolicy) -> list[str]:
    """One line per rule bidsport adds on top of dicognito (for --dry-run)."""
    verbs = {
        "remove": "Remove {}",
        "empty": "Empty {}",
        "keep": "Keep {} unchanged",
        "scrub": "Keep {} with the subject's names/IDs replaced by X",
        "pseudonym": "Replace {} with a pseudonym of the project key (same in every subject)",
    }
    lines = [verbs[a].format(_tag_name(t)) for t, a in policy.tag_actions if a in verbs]
    lines.append("Remove all AE elements (application entity titles name scanners and PACS)")
    lines.append("Remove group length elements (gggg,0000)")
    if policy.private_keep:
        lines.append("Remove private elements except those dcm2niix needs:")
        lines += [f"  keep {keep.describe()}" for keep in policy.private_keep]
        lines.append(
            "  in kept private elements, overwrite UIDs with zeros and the subject's "
            "identifiers with X (same length)"
        )
    else:
        lines.append("Remove all private elements")
    return lines
