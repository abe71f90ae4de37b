"""The fast path of :meth:`Anonymizer.anonymize_file`: anonymization on the raw element stream.

pydicom's reader decodes every element and sequence of a file, and dicognito's walk
converts every element it visits; most of them are written back unchanged. This path
instead scans the element stream of the file (tag, VR, length and offsets only) and
decides per element, with the same rules as the general path:

* untouched elements (numbers, pixel data, coded strings, class UIDs...) are copied from
  the original bytes;
* private and group-length elements are dropped, kept private ones cleaned;
* the elements a handler may act on go through the same handler chain (bidsport's and
  dicognito's) in a small dataset that holds them and the context a handler reads
  (PatientSex for person names); the encoded result is cached per value, as the files of a
  series repeat most of them (study and series UIDs, names, dates, institution);
* sequences are written the way pydicom's writer writes them, their items recursively;
* the file meta, the exclusion rules, the identifiers matcher and the top-level updates
  (PatientID, PatientName, DeidentificationMethod, ...) use pydicom datasets that hold
  just the elements they read.

The output is byte-identical to the general path (tested on the real vendor files and
synthetic ones). Anything this path does not reproduce exactly (big endian or deflated
transfer syntaxes, elements out of order, VR switches, policies whose handlers read other
elements...) raises :class:`Unsupported`, and the caller uses the general path.
"""

from __future__ import annotations

import copy
import io
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.charset import convert_encodings
from pydicom.datadict import keyword_dict
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.fileutil import read_undefined_length_value
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, SequenceDelimiterTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR
from pydicom.values import empty_value_for_VR

from bidsport.anonymize.policy import TEXT_VRS
from bidsport.phi import Identifiers, Matcher, matcher_for
from bidsport.sourceids import SOURCE_TAGS, identifiers_from_dataset

if TYPE_CHECKING:
    from bidsport.anonymize.engine import Anonymizer, _SubjectContext

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_CHARSET = 0x00080005
_PATIENT_SEX = 0x00100040
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
#: VR by the 2 bytes after the tag read as a little-endian number
_VRS = {int.from_bytes(str(vr).encode("ascii"), "little"): str(vr) for vr in STANDARD_VR}
_HEADER = struct.Struct("<HHL")
_UL = struct.Struct("<L")
_US = struct.Struct("<H")

#: top-level elements read by the exclusion rules (``exclusion_reason``)
_EXCLUSION_TAGS = tuple(keyword_dict[k] for k in ("SOPClassUID", "BurnedInAnnotation", "ImageType"))
#: top-level elements read by ``identifiers_from_dataset`` besides :data:`SOURCE_TAGS`
_VENDOR_TAGS = tuple(keyword_dict[k] for k in ("Manufacturer", "ManufacturerModelName"))
#: top-level elements dicognito's dataset updaters and ``Anonymizer._finish`` read or set
_FINISH_TAGS = frozenset(
    keyword_dict[k]
    for k in (
        "PatientName",
        "PatientID",
        "DeidentificationMethod",
        "PatientIdentityRemoved",
        "BurnedInAnnotation",
        "LongitudinalTemporalInformationModified",
        "SOPInstanceUID",
        "SOPClassUID",
    )
)
_CACHE_SIZE = 50_000


class Unsupported(Exception):
    """The file needs the general path (pydicom's reader and writer)."""


# --------------------------------------------------------------------------- parsing


@dataclass(slots=True)
class _Element:
    tag: int
    vr: str | None  #: as written (None: implicit VR)
    start: int  #: offset of the tag
    vstart: int  #: offset of the value
    length: int  #: value length as written (0xFFFFFFFF: undefined)
    end: int  #: offset after the element (and its delimiter)
    items: list[_Item] | None = None  #: parsed items of a sequence

    def value(self, data: bytes) -> bytes | None:
        if self.length == 0:
            return empty_value_for_VR(self.vr, raw=True)  # type: ignore[return-value]
        return data[self.vstart : self.vstart + self.length]

    def raw(self, data: bytes, implicit: bool) -> RawDataElement:
        return RawDataElement(
            BaseTag(self.tag),
            self.vr,
            self.length,
            self.value(data),
            self.vstart,
            implicit,
            True,
        )


@dataclass(slots=True)
class _Item:
    undefined: bool
    elements: list[_Element]


def _parse_dataset(
    data: bytes, pos: int, end: int | None, implicit: bool, top: bool, private: bool = True
) -> tuple[list[_Element], int]:
    """The elements from ``pos`` to ``end`` (None: to the item delimiter, or to the end of
    the file at the top level), as pydicom's ``read_dataset`` reads them; without
    ``private``, private elements are skipped (all of them are removed).

    At the top level, the last element ends at the end of the file: an untouched element
    is copied up to the next one, the last one to the end of the file, as the general
    path copies them."""
    elements: list[_Element] = []
    append = elements.append
    size = len(data)
    stop = size if end is None else end
    header = _HEADER.unpack_from
    ul = _UL.unpack_from
    vrs = _VRS
    long_vrs = _LONG_VRS
    previous = -1
    if pos + 6 <= size and (end is None or pos < end):
        # pydicom checks the first element of each dataset for a VR switch
        letters = 0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B
        first_tag = header(data, pos)[:2]
        if first_tag != (0xFFFE, 0xE00D) and (
            (not implicit and not letters) or (implicit and top and letters)
        ):
            raise Unsupported("explicit/implicit VR switch")
    while pos < stop:
        if pos + 8 > size:
            if top:
                break  # pydicom stops at fewer than 8 bytes
            raise Unsupported("truncated item")
        group, number, length = header(data, pos)
        tag = group << 16 | number
        if tag == _ITEM_END:
            if top or end is not None:
                raise Unsupported("item delimiter outside an item")
            return elements, pos + 8
        if implicit:
            vr = None
            vstart = pos + 8
        else:
            vr = vrs.get(length & 0xFFFF)
            if vr is None:
                raise Unsupported("unknown VR")
            if vr in long_vrs:
                (length,) = ul(data, pos + 8)
                vstart = pos + 12
            else:
                length >>= 16  # the 2-byte length after the VR
                vstart = pos + 8
        if tag <= previous:
            raise Unsupported("elements out of order")
        previous = tag
        if length == 0xFFFFFFFF:
            element = _undefined_length(data, tag, vr, pos, vstart, implicit, top, private)
        elif vstart + length > size:
            raise Unsupported("truncated element")
        else:
            element = _Element(tag, vr, pos, vstart, length, vstart + length)
        if private or not group & 1:
            append(element)
        pos = element.end
    if top and elements and elements[-1].end == pos:
        elements[-1].end = size
    if end is not None and pos != end:
        raise Unsupported("item length does not match its elements")
    if end is None and not top:
        raise Unsupported("item without delimiter")
    return elements, pos


def _undefined_length(
    data: bytes,
    tag: int,
    vr: str | None,
    pos: int,
    vstart: int,
    implicit: bool,
    top: bool,
    private: bool,
) -> _Element:
    if vr == "SQ" or (vr is None and _implicit_sequence(data, tag, vstart)):
        items, end = _parse_sequence(data, vstart, None, implicit, private)
        return _Element(tag, vr, pos, vstart, 0xFFFFFFFF, end, items)
    if not (top and tag == _PIXEL_DATA):
        raise Unsupported("undefined length element that is not a sequence or pixel data")
    fp = io.BytesIO(data)
    fp.seek(vstart)
    read_undefined_length_value(fp, True, SequenceDelimiterTag)
    return _Element(tag, vr, pos, vstart, 0xFFFFFFFF, fp.tell())


def _implicit_sequence(data: bytes, tag: int, vstart: int) -> bool:
    from bidsport.anonymize.engine import _dictionary_vr

    vr = _dictionary_vr(tag)
    if vr != "UN":
        return vr == "SQ"
    return data[vstart : vstart + 4] == b"\xfe\xff\x00\xe0"


def _parse_sequence(
    data: bytes, pos: int, end: int | None, implicit: bool, private: bool
) -> tuple[list[_Item], int]:
    """The items from ``pos`` to ``end`` (None: to the sequence delimiter)."""
    items: list[_Item] = []
    size = len(data)
    while end is None or pos < end:
        if pos + 8 > size:
            raise Unsupported("truncated sequence")
        group, number, length = _HEADER.unpack_from(data, pos)
        tag = group << 16 | number
        if tag == _SEQUENCE_END:
            pos += 8
            break
        if tag != _ITEM:
            raise Unsupported("sequence without item tag")
        if length == 0xFFFFFFFF:
            elements, pos = _parse_dataset(data, pos + 8, None, implicit, False, private)
            items.append(_Item(True, elements))
        else:
            elements, pos = _parse_dataset(
                data, pos + 8, pos + 8 + length, implicit, False, private
            )
            items.append(_Item(False, elements))
    if end is not None and pos != end:
        raise Unsupported("sequence length does not match its items")
    return items, pos


# --------------------------------------------------------------------------- encoding


def _ul(value: int) -> bytes:
    return _UL.pack(value)


def _tag_bytes(tag: int) -> bytes:
    return _US.pack(tag >> 16) + _US.pack(tag & 0xFFFF)


def _raw_bytes(tag: int, vr: str | None, value: bytes, implicit: bool) -> bytes:
    """A raw element with a new value, as pydicom writes it."""
    if implicit or vr is None:
        return _tag_bytes(tag) + _ul(len(value)) + value
    if vr in _LONG_VRS:
        return _tag_bytes(tag) + vr.encode("ascii") + b"\x00\x00" + _ul(len(value)) + value
    if len(value) > 0xFFFF:
        raise Unsupported("value too long for its VR")
    return _tag_bytes(tag) + vr.encode("ascii") + _US.pack(len(value)) + value


def _sequence_bytes(
    tag: int, items: Iterable[tuple[bool, bytes]], undefined: bool, implicit: bool
) -> bytes:
    """A sequence as pydicom's writer writes it (items already encoded)."""
    parts = []
    for item_undefined, body in items:
        if item_undefined:
            parts.append(
                b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
            )
        else:
            parts.append(b"\xfe\xff\x00\xe0" + _ul(len(body)) + body)
    value = b"".join(parts)
    header = _tag_bytes(tag) + (b"" if implicit else b"SQ\x00\x00")
    if undefined:
        return header + b"\xff\xff\xff\xff" + value + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return header + _ul(len(value)) + value


def _encode(elem: DataElement | RawDataElement, encodings: Any, implicit: bool) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = implicit
    write_data_element(out, elem, encodings)
    return out.getvalue()


# --------------------------------------------------------------------------- anonymizing


@dataclass
class _Level:
    """One dataset being anonymized (the top level or a sequence item)."""

    elements: list[_Element]
    decode: Any  #: the character set pydicom decodes its values with
    write: Any  #: the character sets pydicom encodes them with
    sex: RawDataElement | None = None  #: PatientSex of the dataset (read by the PN handler)


class StreamAnonymizer:
    """Runs :class:`Anonymizer`'s handlers on the raw element stream (see the module)."""

    def __init__(self, owner: Anonymizer) -> None:
        self._owner = owner
        self._elements: dict[tuple[object, ...], bytes | None] = {}
        self._kinds: dict[tuple[int, str | None], str] = {}
        self._finished: dict[tuple[object, ...], DataElement | None] = {}
        # a date the policy handles never reaches dicognito's date handler
        self._pairs = {
            date: time
            for date, time in _date_time_pairs().items()
            if owner.policy.action(date) == "default"
        }

    # ---------------------------------------------------------------- one file

    def anonymize(
        self, data: bytes, ctx: _SubjectContext, identifiers: Identifiers | None
    ) -> bytes | str:
        """The anonymized file, or the reason it is excluded."""
        fp = io.BytesIO(data)
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        syntax = meta.get("TransferSyntaxUID")
        if syntax is None or syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
            raise Unsupported(f"transfer syntax {syntax}")
        implicit = syntax == ImplicitVRLittleEndian
        start = fp.tell()
        private = self._owner._private.active
        elements, _ = _parse_dataset(data, start, None, implicit, True, private)
        by_tag = {e.tag: e for e in elements}
        owner = self._owner
        charset = by_tag.get(_CHARSET)
        decode, write = self._top_charsets(charset, data, implicit)

        def mini(tags: Iterable[int]) -> Dataset:
            ds = Dataset()
            ds._parent_encoding = decode
            for tag in tags:
                if (e := by_tag.get(tag)) is not None:
                    ds._dict[BaseTag(tag)] = e.raw(data, implicit)
            ds.file_meta = meta
            return ds

        touched: set[int] = set()
        probe = mini(_EXCLUSION_TAGS)
        from bidsport.anonymize.engine import exclusion_reason

        reason = exclusion_reason(probe, owner.policy)
        if reason is not None:
            return reason
        touched.update(_converted(probe))
        matcher = self._matcher(by_tag, data, implicit, mini, identifiers, touched)
        handler = owner._policy_handler
        handler.matcher = matcher
        try:
            meta.walk(ctx.anonymizer._anonymize_element)
            level = _Level(elements, decode, write, _sex(elements, data, implicit))
            chunks, finish = self._top(level, data, implicit, ctx, matcher, touched)
            final = mini(())
            for tag, elem in finish.items():
                final._dict[BaseTag(tag)] = elem
            for updater in ctx.anonymizer._dataset_updaters:
                updater(final)
            owner._finish(final, ctx)
        finally:
            handler.matcher = None
        for tag in sorted(final._dict):
            elem = final._dict[tag]
            original = finish.get(int(tag))
            if elem is original and isinstance(elem, RawDataElement) and tag not in touched:
                element = by_tag[int(tag)]
                chunks.append((int(tag), data[element.start : element.end]))
            else:
                chunks.append((int(tag), _encode(final[tag], write, implicit)))
        chunks.sort(key=lambda c: c[0])
        out = DicomBytesIO()
        out.is_little_endian = True
        out.is_implicit_VR = False
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)
        return out.getvalue() + b"".join(c for _, c in chunks)

    def _top_charsets(
        self, charset: _Element | None, data: bytes, implicit: bool
    ) -> tuple[Any, Any]:
        if charset is None:
            return "iso8859", "iso8859"
        value = convert_raw_data_element(charset.raw(data, implicit)).value
        if not value:
            raise Unsupported("empty SpecificCharacterSet")
        encodings = convert_encodings(value)
        return encodings, encodings

    def _matcher(
        self,
        by_tag: dict[int, _Element],
        data: bytes,
        implicit: bool,
        mini: Callable[[Iterable[int]], Dataset],
        identifiers: Identifiers | None,
        touched: set[int],
    ) -> Matcher:
        """As ``Anonymizer._matcher`` (same cache, same key)."""
        owner = self._owner
        key = (
            tuple(
                (tag, e.value(data)) for tag in SOURCE_TAGS if (e := by_tag.get(tag)) is not None
            ),
            identifiers,
        )
        matcher = owner._matchers.get(key)
        if matcher is None:
            probe = mini((*SOURCE_TAGS, *_VENDOR_TAGS))
            found = identifiers_from_dataset(probe, deep=False)
            touched.update(_converted(probe))
            matcher = matcher_for(found | identifiers if identifiers is not None else found)
            if len(owner._matchers) >= 256:
                owner._matchers.clear()
            owner._matchers[key] = matcher
        return matcher

    # ---------------------------------------------------------------- datasets

    def _top(
        self,
        level: _Level,
        data: bytes,
        implicit: bool,
        ctx: _SubjectContext,
        matcher: Matcher,
        touched: set[int],
    ) -> tuple[list[tuple[int, bytes | memoryview]], dict[int, DataElement | RawDataElement]]:
        """The encoded top-level elements (but the finish tags, returned apart as
        elements for the updaters)."""
        view = memoryview(data)
        chunks: list[tuple[int, bytes | memoryview]] = []
        finish: dict[int, DataElement | RawDataElement] = {}
        converted = bool(touched)
        charset: tuple[int, _Element] | None = None
        for tag, kind, payload in self._walk(level, data, implicit, ctx, matcher):
            if kind == "converted":
                converted = True
                continue
            if tag in _FINISH_TAGS:
                if kind == "hidden":
                    finish[tag] = payload.raw(data, implicit)
                elif kind == "visible":
                    elem = self._finish_element(tag, payload, level, data, implicit, ctx, matcher)
                    if elem is not None:
                        finish[tag] = elem
                    converted = True
                elif kind == "bytes":
                    raise Unsupported("finish tag with unusual handling")
                continue
            if kind == "hidden":
                if tag in touched:
                    chunks.append((tag, self._reencode(payload, level, data, implicit)))
                else:
                    if tag == _CHARSET:
                        charset = (len(chunks), payload)
                    chunks.append((tag, view[payload.start : payload.end]))
            elif kind == "visible":
                converted = True
                encoded = self._visible(tag, payload, level, data, implicit, ctx, matcher)
                if encoded is not None:
                    chunks.append((tag, encoded))
            else:  # encoded bytes (sequences, cleaned private values)
                chunks.append((tag, payload))
        if converted and charset is not None:
            # pydicom decodes SpecificCharacterSet when it decodes any element of the
            # dataset: it is then written again, not copied
            index, element = charset
            chunks[index] = (_CHARSET, self._reencode(element, level, data, implicit))
        return chunks, finish

    def _item(
        self,
        item: _Item,
        parent: _Level,
        data: bytes,
        implicit: bool,
        ctx: _SubjectContext,
        matcher: Matcher,
    ) -> bytes:
        charset = next((e for e in item.elements if e.tag == _CHARSET), None)
        if charset is None:
            decode, write = parent.decode, convert_encodings(parent.write)
        else:
            value = convert_raw_data_element(charset.raw(data, implicit)).value
            if not value:
                raise Unsupported("empty SpecificCharacterSet in an item")
            decode, write = convert_encodings(value), value
        level = _Level(item.elements, decode, write, _sex(item.elements, data, implicit))
        chunks: list[tuple[int, bytes | memoryview]] = []
        converted = False
        hidden_charset: int | None = None
        for tag, kind, payload in self._walk(level, data, implicit, ctx, matcher):
            if kind == "converted":
                converted = True
            elif kind == "hidden":
                if tag == _CHARSET:
                    hidden_charset = len(chunks)
                chunks.append((tag, _nested_raw(payload, data, implicit)))
            elif kind == "visible":
                converted = True
                encoded = self._visible(tag, payload, level, data, implicit, ctx, matcher)
                if encoded is not None:
                    chunks.append((tag, encoded))
            else:
                chunks.append((tag, payload))
        if converted and hidden_charset is not None and charset is not None:
            chunks[hidden_charset] = (_CHARSET, self._reencode(charset, level, data, implicit))
        return b"".join(c for _, c in chunks)

    def _walk(
        self,
        level: _Level,
        data: bytes,
        implicit: bool,
        ctx: _SubjectContext,
        matcher: Matcher,
    ) -> list[tuple[int, str, Any]]:
        """Classify the elements of one dataset as ``Anonymizer._prepare`` and the walk do:
        ``hidden`` (element), ``visible`` (element), ``bytes`` (encoded), or
        ``converted`` (pydicom decoded an element of the dataset: no output)."""
        active = self._owner._private.active
        kinds = self._kinds
        creators: dict[int, str] = {}
        seen_visible: list[int] = []
        out: list[tuple[int, str, Any]] = []
        append = out.append
        may_need_scrub = self._owner.may_need_scrub
        for element in level.elements:
            tag = element.tag
            kind = kinds.get((tag, element.vr))
            if kind is None:
                kind = self._kind(tag, element.vr)
            if kind == "text":  # hidden unless it may hold an identifier to scrub
                value = element.value(data) or b""
                kind = "visible" if may_need_scrub(value, matcher) else "hidden"
            if kind == "hidden":
                append((tag, "hidden", element))
            elif kind == "visible":
                seen_visible.append(tag)
                append((tag, "visible", element))
            elif kind == "private":
                if active:
                    out.extend(
                        self._private(element, creators, level, data, implicit, ctx, matcher)
                    )
            elif kind == "sequence":
                out.extend(self._sequence(element, level, data, implicit, ctx, matcher))
            # else "drop": group length
        if seen_visible:
            pairs = self._pairs
            present = set(seen_visible)
            for tag in seen_visible:
                paired = pairs.get(tag)
                if paired is not None and paired in present:
                    raise Unsupported("date with its time in the walk")
        return out

    def _kind(self, tag: int, written_vr: str | None) -> str:
        """What ``Anonymizer._prepare`` does with an element of ``tag`` written with
        ``written_vr``: drop, private, sequence, hidden, visible, or text (hidden unless
        its value may hold an identifier: ``Anonymizer.may_need_scrub``) (cached)."""
        from bidsport.anonymize.engine import _UNCHANGED_UIDS, _dictionary_vr

        owner = self._owner
        group, number = tag >> 16, tag & 0xFFFF
        vr = written_vr
        if vr is None or vr == "UN":
            vr = _dictionary_vr(tag)
        if number == 0:
            kind = "drop"
        elif group & 1:
            kind = "private"
        elif group < 8:
            raise Unsupported("command or meta group in the dataset")
        elif vr == "SQ":
            if written_vr == "UN":
                raise Unsupported("sequence written as UN")
            kind = "sequence"
        elif tag in _UNCHANGED_UIDS:
            kind = "hidden"
        elif tag not in owner._visible_tags and vr not in owner._visible_vrs:
            kind = "text" if vr in TEXT_VRS else "hidden"
        else:
            if written_vr is None and " or " in vr:
                raise Unsupported("ambiguous VR")
            kind = "visible"
        self._kinds[(tag, written_vr)] = kind
        return kind

    def _sequence(
        self,
        element: _Element,
        level: _Level,
        data: bytes,
        implicit: bool,
        ctx: _SubjectContext,
        matcher: Matcher,
    ) -> Iterable[tuple[int, str, Any]]:
        """A sequence the walk visits: removed, emptied or written with its items walked."""
        tag = element.tag
        action = self._owner._policy.action(tag)
        items = element.items
        if items is None:  # a sequence pydicom decodes when the walk reaches it
            yield tag, "converted", None
            items, _ = _parse_sequence(
                data,
                element.vstart,
                element.vstart + element.length,
                implicit,
                self._owner._private.active,
            )
        if action == "remove" or (action == "default" and tag in _dicognito_removed()):
            return
        undefined = element.length == 0xFFFFFFFF
        if action == "empty":
            yield tag, "bytes", _sequence_bytes(tag, (), undefined, implicit)
            return
        if action not in ("default", "keep", "pseudonym"):
            raise Unsupported(f"policy action {action} on a sequence")
        encoded = [
            (item.undefined, self._item(item, level, data, implicit, ctx, matcher))
            for item in items
        ]
        yield tag, "bytes", _sequence_bytes(tag, encoded, undefined, implicit)

    def _private(
        self,
        element: _Element,
        creators: dict[int, str],
        level: _Level,
        data: bytes,
        implicit: bool,
        ctx: _SubjectContext,
        matcher: Matcher,
    ) -> Iterable[tuple[int, str, Any]]:
        """As ``Anonymizer._prepare_private``."""
        private = self._owner._private
        tag = element.tag
        group, number = tag >> 16, tag & 0xFFFF
        if not private.active or number < 0x10:
            return
        if number <= 0xFF:
            value = element.value(data)
            creator = (value or b"").decode("latin-1").strip(" \x00")
            if element.length == 0xFFFFFFFF:
                raise Unsupported("private creator of undefined length")
            if not private.keep_creator(group, creator):
                return
            creators[number] = creator
            yield tag, "hidden", element
            return
        creator_name = creators.get(number >> 8)
        if not private.keep_element(group, creator_name, number & 0xFF):
            return
        vr = private.vr_of(tag, creator_name, "SQ" if element.items is not None else element.vr)
        if vr == "SQ":
            if element.vr == "UN":
                raise Unsupported("private sequence written as UN")
            items = element.items
            if items is None:
                yield tag, "converted", None
                items, _ = _parse_sequence(
                    data,
                    element.vstart,
                    element.vstart + element.length,
                    implicit,
                    self._owner._private.active,
                )
            encoded = [
                (item.undefined, self._item(item, level, data, implicit, ctx, matcher))
                for item in items
            ]
            yield (
                tag,
                "bytes",
                _sequence_bytes(tag, encoded, element.length == 0xFFFFFFFF, implicit),
            )
            return
        if element.length == 0xFFFFFFFF:
            raise Unsupported("private element of undefined length")
        raw = element.raw(data, implicit)
        cleaned = private.clean_value(raw, matcher)
        if cleaned is raw:
            yield tag, "hidden", element
        else:
            yield tag, "bytes", _raw_bytes(tag, element.vr, cleaned.value or b"", implicit)

    # ---------------------------------------------------------------- elements

    def _handle(
        self,
        tag: int,
        element: _Element,
        level: _Level,
        data: bytes,
        implicit: bool,
        ctx: _SubjectContext,
    ) -> DataElement | None:
        """``element`` after the handler chain, as the walk leaves it (None: removed)."""
        ds = Dataset()
        ds._parent_encoding = level.decode
        sex = level.sex
        if sex is not None:
            ds._dict[BaseTag(_PATIENT_SEX)] = sex
        key = BaseTag(tag)
        ds._dict[key] = element.raw(data, implicit)
        size = len(ds._dict)
        ctx.anonymizer._anonymize_element(ds, ds[key])
        result = ds._dict.get(key)
        if result is None:
            return None
        if len(ds._dict) != size:
            raise Unsupported("a handler added or removed another element")
        assert isinstance(result, DataElement)
        return result

    def _visible(
        self,
        tag: int,
        element: _Element,
        level: _Level,
        data: bytes,
        implicit: bool,
        ctx: _SubjectContext,
        matcher: Matcher,
    ) -> bytes | None:
        sex = level.sex
        key = (
            ctx,
            matcher,
            tag,
            element.vr,
            element.value(data),
            None if sex is None else (sex.VR, sex.value),
            _charset_key(level.decode),
            _charset_key(level.write),
            implicit,
        )
        try:
            return self._elements[key]
        except KeyError:
            pass
        elem = self._handle(tag, element, level, data, implicit, ctx)
        encoded = None if elem is None else _encode(elem, level.write, implicit)
        if len(self._elements) >= _CACHE_SIZE:
            self._elements.clear()
        self._elements[key] = encoded
        return encoded

    def _finish_element(
        self,
        tag: int,
        element: _Element,
        level: _Level,
        data: bytes,
        implicit: bool,
        ctx: _SubjectContext,
        matcher: Matcher,
    ) -> DataElement | None:
        """``_handle`` for the elements the updaters read or change: cached, and a copy
        handed out (the updaters change them in place)."""
        sex = level.sex
        key = (
            "finish",
            ctx,
            matcher,
            tag,
            element.vr,
            element.value(data),
            None if sex is None else (sex.VR, sex.value),
            _charset_key(level.decode),
            implicit,
        )
        if key in self._finished:
            cached = self._finished[key]
        else:
            cached = self._handle(tag, element, level, data, implicit, ctx)
            if len(self._finished) >= _CACHE_SIZE:
                self._finished.clear()
            self._finished[key] = cached
        if cached is None:
            return None
        elem = copy.copy(cached)
        if isinstance(cached.value, MultiValue):
            elem.value = list(cached.value)
        return elem

    def _reencode(self, element: _Element, level: _Level, data: bytes, implicit: bool) -> bytes:
        """A hidden element that pydicom decoded: written again from its value."""
        key = (
            "decoded",
            element.tag,
            element.vr,
            element.value(data),
            _charset_key(level.decode),
            _charset_key(level.write),
            implicit,
        )
        encoded = self._elements.get(key)
        if encoded is None:
            raw = element.raw(data, implicit)
            elem = convert_raw_data_element(raw, encoding=level.decode)
            encoded = _encode(elem, level.write, implicit)
            if len(self._elements) >= _CACHE_SIZE:
                self._elements.clear()
            self._elements[key] = encoded
        return encoded


def _sex(elements: list[_Element], data: bytes, implicit: bool) -> RawDataElement | None:
    sex = next((e for e in elements if e.tag == _PATIENT_SEX), None)
    return None if sex is None else sex.raw(data, implicit)


def _charset_key(encodings: Any) -> tuple[str, ...] | str:
    return encodings if isinstance(encodings, str) else tuple(encodings)


def _converted(ds: Dataset) -> set[int]:
    """Tags of ``ds`` that pydicom decoded (they are written again, not copied)."""
    return {int(tag) for tag, elem in ds._dict.items() if not isinstance(elem, RawDataElement)}


def _nested_raw(element: _Element, data: bytes, implicit: bool) -> bytes:
    """An untouched element inside a sequence item, as pydicom's writer writes it."""
    if element.length == 0xFFFFFFFF:
        raise Unsupported("undefined length element in an item")
    if (
        not implicit
        and element.vr in _LONG_VRS
        and data[element.start + 6 : element.start + 8] != b"\x00\x00"
    ):
        value = element.value(data) or b""
        return _raw_bytes(element.tag, element.vr, value, implicit)
    return data[element.start : element.end]


_REMOVED: frozenset[int] | None = None


def _dicognito_removed() -> frozenset[int]:
    """Tags dicognito's ``UnwantedElementsStripper`` removes."""
    global _REMOVED
    if _REMOVED is None:
        from dicognito.anonymizer import Anonymizer as DicognitoAnonymizer
        from dicognito.unwantedelements import UnwantedElementsStripper

        tags: set[int] = set()
        for handler in DicognitoAnonymizer(seed="removed")._element_handlers:
            if isinstance(handler, UnwantedElementsStripper):
                tags.update(int(t) for t in handler.tags)
        _REMOVED = frozenset(tags)
    return _REMOVED


def _date_time_pairs() -> dict[int, int]:
    """Date tag → the time tag dicognito's date handler shifts with it."""
    pairs = {}
    for keyword, tag in keyword_dict.items():
        if "Date" in keyword:
            time_tag = keyword_dict.get(keyword.replace("Date", "Time"))
            if time_tag is not None:
                pairs[int(tag)] = int(time_tag)
    return pairs
