"""The anonymizer: dicognito with bidsport's policy in front, fast enough for whole visits.

Speed: files are anonymized on their raw element stream (:mod:`bidsport.anonymize.stream`:
no pydicom decoding of what no handler changes, handler results cached per value), with
this module's pydicom path as the general case it falls back to and must equal. In that
path, one dicognito ``Anonymizer`` per subject is built once and reused; elements no
handler acts on (numbers, pixel data, coded strings, class UIDs; the tags and VRs dicognito
acts on are read from its own ``describe_actions()``) are hidden from the walk, so they are
never decoded; the output file is spliced from the original bytes of the untouched elements
plus the re-encoded changed ones (pydicom's writer when splicing is not possible, e.g. a
deflated transfer syntax). ``Anonymizer(..., fast=False)`` does without these shortcuts and
gives the same bytes (tested), as does ``stream=False``.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pydicom
from dicognito.anonymizer import Anonymizer as DicognitoAnonymizer
from dicognito.randomizer import Randomizer
from dicognito.uianonymizer import UIAnonymizer
from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, DeflatedExplicitVRLittleEndian

from bidsport import __version__, fileops
from bidsport.anonymize import keys
from bidsport.anonymize.handlers import (
    TEXT_SCRUB_ACTION,
    PolicyHandler,
    PrivateFilter,
    SafeDateTimeAnonymizer,
    TextScrubber,
)
from bidsport.anonymize.policy import (
    DOCUMENT_SOP_CLASSES,
    DOCUMENT_SOP_PREFIXES,
    SCREEN_SAVE_IMAGE_TYPES,
    SECONDARY_CAPTURE_SOP_CLASSES,
    TEXT_VRS,
    AnonymizePolicy,
    describe_policy_rules,
)
from bidsport.anonymize.stream import StreamAnonymizer
from bidsport.errors import AnonymizationError, DicomReadError
from bidsport.phi import Identifiers, Matcher, matcher_for
from bidsport.sourceids import SOURCE_TAGS, identifiers_from_dataset

log = logging.getLogger(__name__)

#: elements dicognito reads although it does not change them
_READ_BY_DICOGNITO = frozenset({int(tag_for_keyword("PatientSex") or 0)})
_SUBJECT_CACHE = 64
#: returned for kept private sequences, which stay in the walk
_WALK = object()
#: UIDs dicognito never changes (SOP classes, transfer syntaxes): hidden from the walk
_UNCHANGED_UIDS = frozenset(
    BaseTag(tag)
    for keyword, tag in keyword_dict.items()
    if keyword.endswith("ClassUID") or keyword.endswith("TransferSyntaxUID")
)


@dataclass(frozen=True)
class AnonymizeOutcome:
    """What happened to one file: ``excluded`` says why it must not enter the output."""

    excluded: str | None = None

    @property
    def ok(self) -> bool:
        return self.excluded is None


def exclusion_reason(ds: Dataset, policy: AnonymizePolicy) -> str | None:
    """Why ``ds`` must be left out of an anonymized output (None: it may go in)."""
    sop = str(ds.get("SOPClassUID", "") or "")
    if not sop and hasattr(ds, "file_meta"):
        sop = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    if sop in DOCUMENT_SOP_CLASSES:
        return (
            f"{DOCUMENT_SOP_CLASSES[sop]} (SOP class {sop}): its identifying content is "
            "not in header fields, so it cannot be de-identified"
        )
    for prefix, what in DOCUMENT_SOP_PREFIXES.items():
        if sop.startswith(prefix):
            return (
                f"{what} (SOP class {sop}): its identifying content is not in header "
                "fields, so it cannot be de-identified"
            )
    if policy.burned_in == "never":
        return None
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    hint = "--allow-burned-in keeps it"
    if burned == "YES":
        return f"BurnedInAnnotation is YES: the pixels may show identifying text ({hint})"
    if policy.burned_in == "unless-no" and burned != "NO":
        return f"BurnedInAnnotation is not NO and the policy assumes burned-in text ({hint})"
    if sop in SECONDARY_CAPTURE_SOP_CLASSES:
        return (
            f"{SECONDARY_CAPTURE_SOP_CLASSES[sop]}: the pixels may show identifying text ({hint})"
        )
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    if {str(v).strip().upper() for v in image_type} & SCREEN_SAVE_IMAGE_TYPES:
        return f"screen save (ImageType): the pixels may show identifying text ({hint})"
    return None


@lru_cache(maxsize=1)
def _dicognito_targets() -> tuple[frozenset[int], frozenset[str]]:
    """Tags and VRs dicognito's handlers act on, read from its own action descriptions."""
    tags: set[int] = set()
    vrs: set[str] = set()
    for line in DicognitoAnonymizer(seed="targets").describe_actions().splitlines():
        vrs.update(re.findall(r"\ball ([A-Z]{2}) elements", line))
        for word in re.findall(r"[A-Za-z]+", line):
            tag = tag_for_keyword(word)
            if tag is not None:
                tags.add(int(tag))
    return frozenset(tags), frozenset(vrs)


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


Element = DataElement | RawDataElement


def _elements(ds: Dataset) -> dict[BaseTag, Element]:
    """pydicom's element dict of ``ds`` (tag → raw or decoded element), for the hot loops:
    no ``Tag()`` conversion, no decoding. pydicom is pinned to 3.x in pyproject.toml."""
    return ds._dict  # type: ignore[return-value]


def _creator_text(ds: Dataset, tag: BaseTag, elem: Element) -> str:
    """A private creator's value without decoding the element (creators are ASCII LO)."""
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
        return elem.value.decode("latin-1").strip(" \x00")
    value = ds[tag].value
    return str(value[0] if isinstance(value, list | MultiValue) else value).strip()


class _SubjectContext:
    """The dicognito anonymizer and pseudonyms of one subject (built once, reused)."""

    def __init__(self, owner: Anonymizer, subject: str) -> None:
        key = owner._key
        self.label = keys.normalize_subject(subject)
        self.patient_id = keys.patient_pseudonym(key, self.label)
        self.patient_name = f"sub-{self.label}"
        self.date_shift_days = keys.date_shift_days(key, self.label)
        anonymizer = DicognitoAnonymizer(seed=keys.subject_seed(key, self.label))
        # add_element_handler inserts in front: add in reverse order of precedence
        anonymizer.add_element_handler(SafeDateTimeAnonymizer(self.date_shift_days * 24))
        anonymizer.add_element_handler(owner._uid_handler)
        anonymizer.add_element_handler(owner._policy_handler)
        # and after dicognito's: the text no handler took
        anonymizer._element_handlers.append(owner._text_scrubber)
        self.anonymizer = anonymizer


class Anonymizer:
    """De-identifies datasets and files for one project key and policy.

    Not thread-safe (one per process or thread). ``fast=False`` walks and re-encodes every
    element (same result, slower; used by the tests to check the fast path); with
    ``stream=False``, files are read and written by pydicom (same result, slower) instead
    of on the raw element stream (:mod:`bidsport.anonymize.stream`).
    """

    def __init__(
        self, key: bytes, policy: AnonymizePolicy, *, fast: bool = True, stream: bool = True
    ) -> None:
        self._key = key
        self._policy = policy
        self._fast = fast
        site = Randomizer(keys.dataset_seed(key))
        self._uid_handler = UIAnonymizer(site)
        self._policy_handler = PolicyHandler(policy, self._pseudonym)
        self._text_scrubber = TextScrubber(self._policy_handler)
        self._private = PrivateFilter(policy.private_keep)
        dicognito_tags, dicognito_vrs = _dicognito_targets()
        self._visible_tags = dicognito_tags | self._policy_handler.tags | _READ_BY_DICOGNITO
        # TM stays hidden: dates move by whole days, so the times paired with them never change
        self._visible_vrs = (dicognito_vrs - {"TM"}) | {"AE", "SQ"}
        self._subjects: OrderedDict[str, _SubjectContext] = OrderedDict()
        self._matchers: dict[object, Matcher] = {}
        self._text_checks: dict[tuple[bytes, Matcher], bool] = {}
        applies = fast and stream and self._stream_applies()
        self._stream = StreamAnonymizer(self) if applies else None

    def _stream_applies(self) -> bool:
        """Whether the stream path reproduces this policy: its handlers must not read or
        write other elements than the one they are called for (PatientSex aside, which
        the PN handler reads and the stream path provides)."""
        policy = self._policy
        return (
            policy.action(int(tag_for_keyword("InstitutionName") or 0)) != "default"
            and policy.action(int(tag_for_keyword("PatientSex") or 0)) == "default"
        )

    @property
    def policy(self) -> AnonymizePolicy:
        return self._policy

    def _pseudonym(self, keyword: str, value: str) -> str:
        return keys.value_pseudonym(self._key, keyword, value)

    def _context(self, subject: str) -> _SubjectContext:
        label = keys.normalize_subject(subject)
        ctx = self._subjects.get(label)
        if ctx is None:
            ctx = _SubjectContext(self, label)
            self._subjects[label] = ctx
            if len(self._subjects) > _SUBJECT_CACHE:
                self._subjects.popitem(last=False)
        else:
            self._subjects.move_to_end(label)
        return ctx

    def _matcher(self, ds: Dataset, identifiers: Identifiers | None) -> Matcher:
        """The matcher of the identifiers in ``ds`` (and ``identifiers``), cached on the raw
        values: the files of a session repeat them."""
        store = _elements(ds)
        key = (
            tuple(
                (tag, elem.value if isinstance(elem, RawDataElement) else repr(elem.value))
                for tag in SOURCE_TAGS
                if (elem := store.get(tag)) is not None
            ),
            identifiers,
        )
        matcher = self._matchers.get(key)
        if matcher is None:
            found = identifiers_from_dataset(ds, deep=False)
            matcher = matcher_for(found | identifiers if identifiers is not None else found)
            if len(self._matchers) >= 256:
                self._matchers.clear()
            self._matchers[key] = matcher
        return matcher

    def may_need_scrub(self, value: bytes, matcher: Matcher) -> bool:
        """Whether a text element whose raw value is ``value`` must go through
        :class:`TextScrubber` (fast mode hides the others from the walk; the stream path
        decides alike). A raw check (:meth:`Matcher.may_hold_bytes`), reliable when the
        search strings are ASCII (the same bytes in every character set): otherwise every
        text element goes through. Cached: the files of a series repeat their values."""
        if not matcher.ascii_only:
            return True
        key = (value, matcher)
        found = self._text_checks.get(key)
        if found is None:
            found = matcher.may_hold_bytes(value)
            if len(self._text_checks) >= 50_000:
                self._text_checks.clear()
            self._text_checks[key] = found
        return found

    def _may_need_scrub(self, elem: Element, matcher: Matcher) -> bool:
        if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes | None):
            return self.may_need_scrub(elem.value or b"", matcher)
        return True  # decoded already: written again anyway, so the walk may see it

    def new_uid(self, uid: str) -> str:
        """The UID that replaces ``uid`` in every anonymized file (the same in every run
        with this key); for tables and sidecars that name series by UID."""
        elem = DataElement(0x0020000E, "UI", uid)
        self._uid_handler(Dataset(), elem)
        return str(elem.value)

    def date_shift_days(self, subject: str) -> int:
        """Days added to every date of ``subject`` (use it for _scans.tsv acq_time)."""
        return self._context(subject).date_shift_days

    # ----------------------------------------------------------------------- datasets

    def anonymize_dataset(
        self, ds: Dataset, subject: str, identifiers: Identifiers | None = None
    ) -> AnonymizeOutcome:
        """De-identify ``ds`` in place for ``subject``.

        An excluded dataset (burned-in annotation, report, ...) is returned untouched with
        the reason: it must not be written. ``identifiers`` (e.g. the whole session's) are
        scrubbed from descriptions in addition to those found in ``ds`` itself.
        """
        reason = exclusion_reason(ds, self._policy)
        if reason is not None:
            return AnonymizeOutcome(excluded=reason)
        ctx = self._context(subject)
        matcher = self._matcher(ds, identifiers)
        self._policy_handler.matcher = matcher
        if not hasattr(ds, "file_meta"):
            ds.file_meta = FileMetaDataset()
        hidden: list[tuple[Dataset, dict[BaseTag, Element]]] = []
        try:
            self._prepare(ds, matcher, hidden)
            ctx.anonymizer.anonymize(ds)
        except Exception as exc:
            name = getattr(ds, "filename", None) or "dataset"
            raise AnonymizationError(f"cannot anonymize {name}: {exc}") from exc
        finally:
            for dataset, elements in hidden:
                store = _elements(dataset)
                for tag, elem in elements.items():
                    store.setdefault(tag, elem)  # an element a handler created wins
            self._policy_handler.matcher = None
        self._finish(ds, ctx)
        return AnonymizeOutcome()

    def _prepare(
        self, ds: Dataset, matcher: Matcher, hidden: list[tuple[Dataset, dict[BaseTag, Element]]]
    ) -> None:
        """Drop private and group-length elements, clean kept private values, and hide
        the elements no handler acts on (fast mode), in nested sequences too.

        Works on pydicom's element dict directly: this loop sees every element of every
        file, and ``Dataset.__getitem__``/``get_item`` cost more than the rest together.
        """
        store = _elements(ds)
        hide: dict[BaseTag, Element] = {}
        creators: dict[int, str] = {}
        for tag in sorted(store, key=int):
            elem = store[tag]
            group, element = tag >> 16, tag & 0xFFFF
            if element == 0:
                del store[tag]
                continue
            if group & 1:
                keep = self._prepare_private(ds, tag, elem, creators, matcher, hidden)
                if keep is None:
                    del store[tag]
                elif isinstance(keep, DataElement | RawDataElement):
                    hide[tag] = keep  # kept as it is (or cleaned): no handler touches it
                    del store[tag]
                continue
            vr = elem.VR
            if vr is None or vr == "UN":
                vr = _dictionary_vr(tag)
            if vr == "SQ":
                for item in ds[tag].value or ():
                    self._prepare(item, matcher, hidden)
            elif self._fast and (
                tag in _UNCHANGED_UIDS
                or (
                    tag not in self._visible_tags
                    and vr not in self._visible_vrs
                    and not (vr in TEXT_VRS and self._may_need_scrub(elem, matcher))
                )
            ):
                hide[tag] = elem
                del store[tag]
        if hide:
            hidden.append((ds, hide))

    def _prepare_private(
        self,
        ds: Dataset,
        tag: BaseTag,
        elem: Element,
        creators: dict[int, str],
        matcher: Matcher,
        hidden: list[tuple[Dataset, dict[BaseTag, Element]]],
    ) -> Element | object | None:
        """The private element to keep in place of ``elem``; None: remove it; ``_WALK``:
        keep it in the walk (a sequence: its items hold public elements to anonymize)."""
        group, element = tag >> 16, tag & 0xFFFF
        if not self._private.active or element < 0x10:
            return None
        if element <= 0xFF:  # a private creator: kept when its block has kept elements
            creator = _creator_text(ds, tag, elem)
            if not self._private.keep_creator(group, creator):
                return None
            creators[element] = creator
            return elem
        creator_name = creators.get(element >> 8)
        if not self._private.keep_element(group, creator_name, element & 0xFF):
            return None
        vr = self._private.vr_of(tag, creator_name, elem.VR)
        if vr == "SQ":
            if isinstance(elem, RawDataElement) and elem.VR is None:
                # implicit VR: pydicom finds the VR by the creator, which is hidden by now
                _elements(ds)[tag] = convert_raw_data_element(
                    elem._replace(VR="SQ"), encoding=ds._character_set, ds=ds
                )
            for item in ds[tag].value or ():
                self._prepare(item, matcher, hidden)
            return _WALK
        if isinstance(elem, RawDataElement):
            return self._private.clean_value(elem, matcher)
        return elem

    def _finish(self, ds: Dataset, ctx: _SubjectContext) -> None:
        ds.PatientID = ctx.patient_id
        ds.PatientName = ctx.patient_name
        burned = str(ds.get("BurnedInAnnotation", "") or "").upper()
        ds.PatientIdentityRemoved = "NO" if burned == "YES" else "YES"
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        methods = ds.get("DeidentificationMethod") or []
        methods = [methods] if isinstance(methods, str) else list(methods)
        marker = f"BIDSPORT {__version__}"
        if marker not in methods:
            ds.DeidentificationMethod = [*methods, marker]
        meta = ds.file_meta
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"BIDSPORT_{__version__}"[:16]
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if "SOPClassUID" in ds and "MediaStorageSOPClassUID" not in meta:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID

    # ----------------------------------------------------------------------- files

    def anonymize_file(
        self, src: Path, dst: Path, subject: str, identifiers: Identifiers | None = None
    ) -> AnonymizeOutcome:
        """Read ``src``, write its de-identified copy to ``dst`` (atomically, mode 0644).

        ``src`` is never modified. An excluded file is not written (see the outcome).
        """
        if dst.exists() and os.path.samefile(src, dst):
            raise AnonymizationError(
                f"refusing to anonymize {src} onto itself: the source is never modified"
            )
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise DicomReadError(f"cannot read {src} as DICOM: {exc}") from exc
        if self._stream is not None:
            try:
                result = self._stream.anonymize(data, self._context(subject), identifiers)
            except Exception as exc:
                # the general path reads the file again: it handles what the stream path
                # does not, and reports a broken file or value precisely
                log.debug("%s: general anonymization path (%s)", src, exc)
                result = None
            if isinstance(result, str):
                return AnonymizeOutcome(excluded=result)
            if result is not None:
                _write_file(dst, result)
                return AnonymizeOutcome()
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, ValueError, EOFError) as exc:
            raise DicomReadError(f"cannot read {src} as DICOM: {exc}") from exc
        ds.filename = str(src)
        index = _index(ds, data)
        outcome = self.anonymize_dataset(ds, subject, identifiers)
        if not outcome.ok:
            return outcome
        encoded = _splice(ds, index) if index is not None else None
        if encoded is None:
            encoded = _write(ds)
        _write_file(dst, encoded)
        return outcome


def _write_file(dst: Path, encoded: bytes) -> None:
    with fileops.atomic_path(dst) as tmp:
        tmp.write_bytes(encoded)
        os.chmod(tmp, 0o644)


# --------------------------------------------------------------------------- encoding


@dataclass
class _Index:
    data: bytes
    spans: dict[BaseTag, tuple[int, int]]
    originals: dict[BaseTag, RawDataElement]


def _index(ds: Dataset, data: bytes) -> _Index | None:
    """Byte spans of the top-level elements as read (None: splicing not possible)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return None
    if meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        return None
    order = "little" if ds.original_encoding[1] else "big"
    store = _elements(ds)
    tags = sorted(store, key=int)
    starts: list[int] = []
    previous = -1
    for tag in tags:
        elem = store[tag]
        tell = elem.value_tell if isinstance(elem, RawDataElement) else elem.file_tell
        if tell is None:
            return None
        code = (tag >> 16).to_bytes(2, order) + (tag & 0xFFFF).to_bytes(2, order)  # type: ignore[arg-type]
        if data[tell - 8 : tell - 4] == code:
            start = tell - 8
        elif data[tell - 12 : tell - 8] == code:
            start = tell - 12
        else:
            return None
        if start <= previous:
            return None
        starts.append(start)
        previous = start
    ends = [*starts[1:], len(data)]
    spans = {tag: (s, e) for tag, s, e in zip(tags, starts, ends, strict=True)}
    # only raw elements can be copied as read: decoded ones (sequences are decoded while
    # reading) may have been changed in place
    originals = {tag: elem for tag, elem in store.items() if isinstance(elem, RawDataElement)}
    return _Index(data, spans, originals)


def _splice(ds: Dataset, index: _Index) -> bytes | None:
    """The file: new preamble and meta, original bytes of untouched elements, the rest
    re-encoded."""
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return None
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = False
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    out.is_little_endian = little
    out.is_implicit_VR = implicit
    view = memoryview(index.data)
    charset = ds.original_character_set
    encodings = charset if isinstance(charset, str) else list(charset)
    store = _elements(ds)
    originals, spans = index.originals, index.spans
    run_start = run_end = -1  # a run of consecutive untouched elements, copied at once
    for tag in sorted(store, key=int):
        if tag & 0xFFFF == 0 and tag >> 16 > 6:
            continue
        elem = store[tag]
        if originals.get(tag) is elem:
            start, end = spans[tag]
            if start != run_end:
                if run_end > 0:
                    out.write(view[run_start:run_end])
                run_start = start
            run_end = end
            continue
        if run_end > 0:
            out.write(view[run_start:run_end])
            run_start = run_end = -1
        write_data_element(out, elem, encodings)
    if run_end > 0:
        out.write(view[run_start:run_end])
    return out.getvalue()


def _write(ds: Dataset) -> bytes:
    ds.preamble = b"\x00" * 128
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------- description


def describe_actions(policy: AnonymizePolicy) -> list[str]:
    """What anonymization does to each kind of element, one line each (for --dry-run)."""
    lines = [
        "Exclude encapsulated documents, structured reports and Siemens non-image objects",
    ]
    if policy.burned_in != "never":
        which = "is YES" if policy.burned_in == "if-yes" else "is not NO"
        lines.append(
            f"Exclude images whose BurnedInAnnotation {which}, secondary captures and screen saves"
        )
    lines.append(
        "Replace PatientID with a pseudonym of (project key, subject) and "
        "PatientName with sub-<label>"
    )
    lines += describe_policy_rules(policy)
    lines.append(
        "Replace all UI elements with new UIDs of the project key (the same source "
        "UID gets the same new UID in every run)"
    )
    lines += list(SafeDateTimeAnonymizer(0).describe_actions())
    own_tags = {tag for tag, action in policy.tag_actions if action != "default"}
    own_tags |= {
        int(tag_for_keyword(k) or 0) for k in ("PatientID", "PatientName", "PatientIdentityRemoved")
    }
    for line in _dicognito_lines():
        words = {int(tag_for_keyword(w) or 0) for w in re.findall(r"[A-Za-z]+", line)}
        if words & own_tags or re.search(r"\ball (UI|DA|DT|TM) elements|\bprivate\b", line):
            continue  # done by bidsport instead
        lines.append(f"{line} (dicognito)")
    lines.append(TEXT_SCRUB_ACTION)
    lines.append(
        'Set PatientIdentityRemoved to "YES" (unless BurnedInAnnotation is YES) and '
        'LongitudinalTemporalInformationModified to "MODIFIED"'
    )
    return lines


def _dicognito_lines() -> Iterator[str]:
    text = DicognitoAnonymizer(seed="describe").describe_actions()
    for line in text.splitlines():
        yield line.removeprefix("* ").strip()
