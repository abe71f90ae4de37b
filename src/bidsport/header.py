"""Read the DICOM header fields bidsport needs, fast.

A full ``pydicom.dcmread`` decodes every element of a file, and MR files carry hundreds
of private elements (a Siemens XA header holds ~165 kB of private blobs, a Philips one
~540 elements). :func:`read_header` instead walks the element headers of the leading
bytes of the file, keeps the raw bytes of the ~50 elements listed in :data:`_VR` and
skips every other value by its length (large skipped values are never read from disk).

* Transfer syntaxes: implicit and explicit VR little endian, explicit big endian,
  deflated (inflated as a stream, its first :data:`INFLATED_KEPT` bytes kept in memory:
  one inflating to more than :data:`MAX_INFLATED` bytes is refused), and every
  encapsulated (compressed) syntax. Files without the 128-byte preamble (starting with
  ``DICM``, with the file meta information, or with the data set) are read when the
  data look like DICOM; their ``has_preamble`` is False (dcm2niix skips them: organize
  puts the preamble back).
* Pixel data: found at the end of the walk, or, for classic single-frame files with
  native pixel data, by checking that the file ends with a PixelData element of the
  size given by Rows, Columns, SamplesPerPixel, BitsAllocated and NumberOfFrames
  (one seek instead of walking the last groups). Such a walk ends as soon as nothing
  wanted can follow: past group 0028, only the GE and Philips private blocks below
  are, and only if their creator's name occurs in the bytes before the pixel data.
  A file cut anywhere before the end of its pixel data is rejected as truncated.
* The files of a series repeat most of their header bytes: the walk remembers the
  elements it walked in chunks of a few, and the sequences of undefined length it
  skipped, and jumps over a chunk or a sequence that a later file repeats byte for byte
  at the same place, taking the chunk's values as they were read (most elements of a
  vendor's file are then not walked one by one). A record never depends on the files
  read before it.
* Enhanced (multi-frame) files: values missing at the top level are taken from the
  first item of PerFrameFunctionalGroupsSequence, then SharedFunctionalGroupsSequence
  (EffectiveEchoTime for EchoTime, FrameType for a missing ImageType, ...);
  ``scanning_sequence`` is derived from EchoPulseSequence (GR/SE), EchoPlanarPulseSequence
  (EP) and InversionRecovery (IR), and "COLUMN" is written "COL" as in classic files.
  The other frames are walked for one value only: ``temporal_position`` of a
  multi-frame file is the highest TemporalPositionIndex among its frames (a file holds
  several temporal positions; the record has one field per file).
* Private b-values: Siemens (0019,xx0C), GE (0043,xx39, first value; GE adds 10^9 to
  the value on some software), Philips (2001,xx03), each checked against its private
  creator. GE's image type (0043,xx2F: 0 magnitude, 1 phase, 2 real, 3 imaginary)
  fills ``complex_image_component`` when ComplexImageComponent is absent.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias, TypeVar

from bidsport.errors import DicomReadError, DicomTooLargeError, NotDicomError
from bidsport.records import FileHeader

log = logging.getLogger(__name__)

#: Bump when the fields read (or how they are read) change: index caches are invalidated.
READER_VERSION = 5  # 5: a MIXED ImageType is followed by what its frames mix

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

_FIRST_READ = 65536  # bytes read first; more only when the header goes on
_CHUNK = 65536
_MAX_VALUE = 1 << 20  # longest value kept (bytes); longer ones are skipped
_MAX_DEPTH = 12  # nesting of sequences
#: A deflated data set is inflated as a stream before it is walked, its size counted:
#: one that inflates to more is refused (a decompression bomb: ~1 s of CPU per GiB).
MAX_INFLATED = 1 << 30
#: What is kept in memory of an inflated data set (the walk needs the header, before the
#: pixel data; a later part is inflated again when asked for).
INFLATED_KEPT = 64 << 20

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
_NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE})

_ALL_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
        b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
        b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
    }
)  # fmt: skip
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: explicit VR -> size of the element header
_HEADER_SIZE = {vr: 12 if vr in _LONG_VRS else 8 for vr in _ALL_VRS}
#: the same indexed by the VR's two bytes read as an unsigned short (faster to look up),
#: and those numbers back to VRs, for each byte order
_VR_CODE_SIZES = {little: [0] * 65536 for little in (True, False)}  # 0: not a VR
for _name, _size in _HEADER_SIZE.items():
    _VR_CODE_SIZES[True][struct.unpack("<H", _name)[0]] = _size
    _VR_CODE_SIZES[False][struct.unpack(">H", _name)[0]] = _size
_VR_CODE_NAME = {
    little: {struct.unpack("<H" if little else ">H", vr)[0]: vr for vr in _ALL_VRS}
    for little in (True, False)
}
#: VRs whose values are text in the SpecificCharacterSet (the others are ASCII)
_TEXT_VRS = frozenset({b"LO", b"SH", b"LT", b"ST", b"UT", b"UC", b"PN"})
_TEXT_NUMBER_VRS = frozenset({b"IS", b"DS"})

# Tags (group << 16 | element)
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float/DoubleFloat/PixelData
_SHARED_FG = 0x52009229
_PER_FRAME_FG = 0x52009230
_NUMBER_OF_FRAMES = 0x00280008

#: Every element read, with its VR (needed for implicit VR files and VR "UN").
_VR: dict[int, str] = {
    0x00020002: "UI",  # MediaStorageSOPClassUID
    0x00020010: "UI",  # TransferSyntaxUID
    0x00080005: "CS",  # SpecificCharacterSet
    0x00080008: "CS",  # ImageType
    0x00080016: "UI",  # SOPClassUID
    0x00080018: "UI",  # SOPInstanceUID
    0x00080020: "DA",  # StudyDate
    0x00080021: "DA",  # SeriesDate
    0x00080022: "DA",  # AcquisitionDate
    0x0008002A: "DT",  # AcquisitionDateTime
    0x00080031: "TM",  # SeriesTime
    0x00080032: "TM",  # AcquisitionTime
    0x00080033: "TM",  # ContentTime
    0x00080060: "CS",  # Modality
    0x00080070: "LO",  # Manufacturer
    0x0008103E: "LO",  # SeriesDescription
    0x00081090: "LO",  # ManufacturerModelName
    0x00089007: "CS",  # FrameType (in MRImageFrameTypeSequence)
    0x00089208: "CS",  # ComplexImageComponent
    0x00180020: "CS",  # ScanningSequence
    0x00180021: "CS",  # SequenceVariant
    0x00180022: "CS",  # ScanOptions
    0x00180023: "CS",  # MRAcquisitionType
    0x00180024: "SH",  # SequenceName
    0x00180080: "DS",  # RepetitionTime
    0x00180081: "DS",  # EchoTime
    0x00180082: "DS",  # InversionTime
    0x00180086: "IS",  # EchoNumbers
    0x00180087: "DS",  # MagneticFieldStrength
    0x00181020: "LO",  # SoftwareVersions
    0x00181030: "LO",  # ProtocolName
    0x00181312: "CS",  # InPlanePhaseEncodingDirection
    0x00181314: "DS",  # FlipAngle
    0x00189005: "SH",  # PulseSequenceName
    0x00189008: "CS",  # EchoPulseSequence (enhanced)
    0x00189009: "CS",  # InversionRecovery (enhanced)
    0x00189018: "CS",  # EchoPlanarPulseSequence (enhanced)
    0x00189074: "DT",  # FrameAcquisitionDateTime
    0x00189079: "FD",  # InversionTimes
    0x00189082: "FD",  # EffectiveEchoTime
    0x00189087: "FD",  # DiffusionBValue
    0x0020000D: "UI",  # StudyInstanceUID
    0x0020000E: "UI",  # SeriesInstanceUID
    0x00200011: "IS",  # SeriesNumber
    0x00200012: "IS",  # AcquisitionNumber
    0x00200013: "IS",  # InstanceNumber
    0x00200032: "DS",  # ImagePositionPatient
    0x00200037: "DS",  # ImageOrientationPatient
    0x00200052: "UI",  # FrameOfReferenceUID
    0x00200100: "IS",  # TemporalPositionIdentifier
    0x00209057: "UL",  # InStackPositionNumber
    0x00209128: "UL",  # TemporalPositionIndex
    0x00280002: "US",  # SamplesPerPixel
    0x00280008: "IS",  # NumberOfFrames
    0x00280010: "US",  # Rows
    0x00280011: "US",  # Columns
    0x00280100: "US",  # BitsAllocated
    0x00280301: "CS",  # BurnedInAnnotation
}

# Private elements: group -> (creator, element offset in the block, VR)
_PRIVATE: dict[int, tuple[tuple[str, int, str], ...]] = {
    0x0019: (("SIEMENS MR HEADER", 0x0C, "IS"),),  # B_value
    0x0043: (("GEMS_PARM_01", 0x39, "IS"), ("GEMS_PARM_01", 0x2F, "SS")),  # b-value, image type
    0x2001: (("Philips Imaging DD 001", 0x03, "FL"),),  # Diffusion B-Factor
}
for _group, _entries in _PRIVATE.items():
    for _block in range(0x10, 0x100):
        _VR[_group << 16 | _block] = "LO"  # private creators
        for _creator, _offset, _vr in _entries:
            _VR[_group << 16 | _block << 8 | _offset] = _vr

_WANTED = frozenset(_VR)
_VR_BYTES = {tag: vr.encode() for tag, vr in _VR.items()}
_WANTED_SEQUENCES = frozenset({_SHARED_FG, _PER_FRAME_FG})
_LAST_CLASSIC_GROUP = max(_PRIVATE)  # nothing needed after this group but the pixel data
#: the end of the last standard group read (0028): past it, a classic file needs only the
#: private elements of _LATE_PRIVATE, and only when their creator's name is still ahead
_STANDARD_END = max(tag for tag in _VR if tag >> 16 & 1 == 0) | 0xFFFF
_LatePrivate: TypeAlias = "tuple[int, str, bytes, int]"  # group, creator, its bytes, offset
_LATE_PRIVATE: tuple[_LatePrivate, ...] = tuple(
    (group, creator, creator.encode(), max(o for c, o, _ in entries if c == creator))
    for group, entries in sorted(_PRIVATE.items())
    if group << 16 > _STANDARD_END
    for creator in dict.fromkeys(c for c, _, _ in entries)
)

# Functional group macros: value tag -> the sequence holding it
_FG_MACRO = {
    0x00180080: 0x00189112,  # RepetitionTime: MRTimingAndRelatedParametersSequence
    0x00181314: 0x00189112,  # FlipAngle
    0x00189082: 0x00189114,  # EffectiveEchoTime: MREchoSequence
    0x00189079: 0x00189115,  # InversionTimes: MRModifierSequence
    0x00189009: 0x00189115,  # InversionRecovery
    0x00189087: 0x00189117,  # DiffusionBValue: MRDiffusionSequence
    0x00181312: 0x00189125,  # InPlanePhaseEncodingDirection: MRFOVGeometrySequence
    0x00089007: 0x00189226,  # FrameType: MRImageFrameTypeSequence
    0x00089208: 0x00189226,  # ComplexImageComponent
    0x00189074: 0x00209111,  # FrameAcquisitionDateTime: FrameContentSequence
    0x00209128: 0x00209111,  # TemporalPositionIndex
    0x00209057: 0x00209111,  # InStackPositionNumber
    0x00200032: 0x00209113,  # ImagePositionPatient: PlanePositionSequence
    0x00200037: 0x00209116,  # ImageOrientationPatient: PlaneOrientationSequence
}

_GE_COMPONENTS = {0: "MAGNITUDE", 1: "PHASE", 2: "REAL", 3: "IMAGINARY"}
#: EchoPulseSequence of enhanced MR -> ScanningSequence values of classic MR
_ENHANCED_SCANNING = {"GRADIENT": ("GR",), "SPIN": ("SE",), "BOTH": ("SE", "GR")}

_S_EXPLICIT = {True: struct.Struct("<HH2sH"), False: struct.Struct(">HH2sH")}
_S_EXPLICIT_CODE = {True: struct.Struct("<HHHH"), False: struct.Struct(">HHHH")}
_S_IMPLICIT = {True: struct.Struct("<HHL"), False: struct.Struct(">HHL")}
_S_U32 = {True: struct.Struct("<L"), False: struct.Struct(">L")}
_BINARY_FORMATS = {
    b"US": "H",
    b"SS": "h",
    b"UL": "L",
    b"SL": "l",
    b"FL": "f",
    b"FD": "d",
    b"SV": "q",
}


class _Malformed(Exception):
    """Raised inside the parser; turned into a DicomReadError by read_header."""


class _Truncated(_Malformed):
    pass


# --------------------------------------------------------------------------- byte access


class _Source:
    """Random access to the bytes of a data set through :meth:`window`."""

    size: int
    data: bytes  # the window read last
    base: int  # its offset
    #: what the bytes are, for the message of an element cut short
    what = "the data"

    def window(self, pos: int, n: int) -> tuple[bytes, int]:
        """A window holding at least ``[pos, pos + n)`` (less at the end) and its offset."""
        raise NotImplementedError

    def read_at(self, pos: int, n: int) -> bytes:
        if pos + n > self.size:
            raise _Truncated(f"element at byte {pos} runs past the end of {self.what}")
        data, base = self.window(pos, n)
        start = pos - base
        return data[start : start + n]


class _FileSource(_Source):
    """Random access to a file through one window of bytes (read on demand)."""

    what = "the file"

    def __init__(self, fh: BinaryIO, size: int, first: bytes) -> None:
        self.fh = fh
        self.size = size
        self.base = 0
        self.data = first

    def window(self, pos: int, n: int) -> tuple[bytes, int]:
        """A window holding at least ``[pos, pos + n)`` (less at the end of the file)."""
        data = self.data
        if self.base <= pos and pos + n <= self.base + len(data):
            return data, self.base
        self.fh.seek(pos)
        self.data = self.fh.read(max(n, _CHUNK))
        self.base = pos
        return self.data, pos


class _MemorySource(_Source):
    """The same interface over bytes in memory (deflated data sets, nested sequences)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.base = 0
        self.size = len(data)

    def window(self, pos: int, n: int) -> tuple[bytes, int]:
        return self.data, 0


class _InflatedSource(_Source):
    """The same interface over a deflated data set (:func:`_inflated`): its first
    :data:`INFLATED_KEPT` bytes in memory, any later part inflated again from the start
    when the walk asks for it (the pixel data's element header, once or twice a file)."""

    def __init__(self, path: Path, deflated: bytes, kept: bytes, size: int) -> None:
        self.path = path
        self.deflated = deflated
        self.data = kept
        self.base = 0
        self.size = size
        self._far = (0, kept)  # the part inflated last
        self._far_reads = 0

    def window(self, pos: int, n: int) -> tuple[bytes, int]:
        n = min(n, self.size - pos)  # (less at the end of the data)
        if pos + n <= len(self.data):
            return self.data, 0
        base, data = self._far
        if base <= pos and pos + n <= base + len(data):
            return data, base
        self._far_reads += 1
        if self._far_reads > _FAR_READS_MAX:  # a header longer than what is kept
            raise DicomTooLargeError(
                f"{self.path}: the header of its deflated data set runs past "
                f"{INFLATED_KEPT / 2**20:g} MiB: not read"
            )
        self._far = (pos, _inflate_part(self.deflated, pos, max(n, _CHUNK)))
        return self._far[1], pos


#: parts of a deflated data set beyond INFLATED_KEPT inflated again, at most (each one
#: inflates the data set from its start)
_FAR_READS_MAX = 4
_INFLATE_STEP = 1 << 20


def _inflated(path: Path, deflated: bytes) -> _InflatedSource:
    """The data set of a deflated file, inflated as a stream: its size counted, its first
    :data:`INFLATED_KEPT` bytes kept. One that inflates to more than
    :data:`MAX_INFLATED` bytes is refused (a decompression bomb costs time, not memory)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        kept = inflater.decompress(deflated, min(INFLATED_KEPT, MAX_INFLATED + 1))
        size = len(kept)
        while size <= MAX_INFLATED and not inflater.eof:
            part = inflater.decompress(inflater.unconsumed_tail, _INFLATE_STEP)
            if not part and not inflater.unconsumed_tail:  # the stream is cut short
                break
            size += len(part)
    except zlib.error as exc:
        raise _Truncated(f"deflated data set cannot be inflated ({exc})") from exc
    if size <= MAX_INFLATED and not inflater.eof:  # (a header cut short reads as whole)
        raise _Truncated("the deflated data set is truncated: its stream stops before its end")
    if size > MAX_INFLATED:
        raise DicomTooLargeError(
            f"{path}: deflated data set inflates to more than "
            f"{MAX_INFLATED / 2**20:g} MiB: not read (a decompression bomb?)"
        )
    return _InflatedSource(path, deflated, kept, size)


def _inflate_part(deflated: bytes, start: int, n: int) -> bytes:
    """Bytes ``start`` to ``start + n`` of the inflated ``deflated`` (fewer at its end)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    rest = deflated
    while start > 0:
        skipped = inflater.decompress(rest, min(start, _INFLATE_STEP))
        rest = inflater.unconsumed_tail
        if not skipped:
            return b""
        start -= len(skipped)
    return inflater.decompress(rest, n)


_Raw: TypeAlias = "tuple[bytes | None, bytes]"  # (VR as read, or None when implicit; value bytes)
# An item of a sequence: tag -> raw value, or a list of items for a nested sequence
_Item: TypeAlias = "dict[int, _Raw | list[_Item]]"


@dataclass
class _Syntax:
    little: bool
    explicit: bool


# --------------------------------------------------------------------------- element walking


def _element_header(src: _Source, pos: int, syntax: _Syntax) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, length, value position) of the element at ``pos``."""
    raw = src.read_at(pos, 8)
    little = syntax.little
    if syntax.explicit:
        group, elem, vr_b, length = _S_EXPLICIT[little].unpack(raw)
        if group == 0xFFFE:  # items and delimiters have no VR
            length = _S_U32[little].unpack_from(raw, 4)[0]
            return group << 16 | elem, None, length, pos + 8
        if vr_b in _LONG_VRS:
            length = _S_U32[little].unpack(src.read_at(pos + 8, 4))[0]
            return group << 16 | elem, vr_b, length, pos + 12
        if vr_b in _ALL_VRS:
            return group << 16 | elem, vr_b, length, pos + 8
        # an implicit element inside an explicit data set (seen in broken exports)
        length = _S_U32[little].unpack_from(raw, 4)[0]
        return group << 16 | elem, None, length, pos + 8
    group, elem, length = _S_IMPLICIT[little].unpack(raw)
    return group << 16 | elem, None, length, pos + 8


def _skip_undefined(src: _Source, pos: int, syntax: _Syntax, depth: int) -> int:
    """Skip a sequence of undefined length whose items start at ``pos``; return its end."""
    if depth > _MAX_DEPTH:
        raise _Malformed("sequences nested too deep")
    little, explicit = syntax.little, syntax.explicit
    unpack_implicit = _S_IMPLICIT[little].unpack_from
    unpack_explicit = _S_EXPLICIT[little].unpack_from
    unpack_u32 = _S_U32[little].unpack_from
    size = src.size
    data, base = src.window(pos, 12)
    in_item = False  # False: expecting items; True: expecting elements of an item
    while True:
        off = pos - base
        if off < 0 or off + 12 > len(data):
            data, base = src.window(pos, 12)
            off = pos - base
            if off + 8 > len(data):
                raise _Truncated(f"sequence at byte {pos} cut short")
        if not in_item:
            group, elem, length = unpack_implicit(data, off)
            pos += 8
            if group != 0xFFFE or elem not in (0xE000, 0xE0DD):
                raise _Malformed(f"expected a sequence item at byte {pos - 8}")
            if elem == 0xE0DD:
                return pos
            if length == 0xFFFFFFFF:
                in_item = True
            else:
                pos += length
        else:
            vr: bytes | None = None
            if explicit:
                group, elem, vr, length = unpack_explicit(data, off)
                if group != 0xFFFE and vr in _LONG_VRS:
                    if off + 12 > len(data):
                        raise _Truncated(f"element header at byte {pos} cut short")
                    length = unpack_u32(data, off + 8)[0]
                    pos += 12
                elif group != 0xFFFE and vr in _ALL_VRS:
                    pos += 8
                else:  # delimiters, and implicit elements in broken exports
                    vr = None
                    length = unpack_u32(data, off + 4)[0]
                    pos += 8
            else:
                group, elem, length = unpack_implicit(data, off)
                pos += 8
            if group == 0xFFFE and elem == 0xE00D:
                in_item = False
            elif length == 0xFFFFFFFF:
                inner = _Syntax(little, False) if vr == b"UN" else syntax
                pos = _skip_undefined(src, pos, inner, depth + 1)
            else:
                pos += length
        if pos > size:
            raise _Truncated("a sequence runs past the end of the file")


def _read_sequence(
    src: _Source, pos: int, length: int, syntax: _Syntax, depth: int
) -> tuple[list[_Item], int]:
    """Parse the items of a sequence starting at ``pos``: (items, position after it)."""
    if depth > _MAX_DEPTH:
        raise _Malformed("sequences nested too deep")
    end = None if length == 0xFFFFFFFF else pos + length
    if end is not None and end > src.size:
        raise _Truncated("a sequence runs past the end of the file")
    items: list[_Item] = []
    while end is None or pos < end:
        tag, _vr, item_len, vpos = _element_header(src, pos, _Syntax(syntax.little, False))
        if tag == _SEQ_END:
            pos = vpos
            break
        if tag != _ITEM:
            raise _Malformed(f"expected a sequence item at byte {pos}, found tag {tag:08X}")
        item, pos = _read_item(src, vpos, item_len, syntax, depth + 1)
        items.append(item)
    return items, pos


def _read_item(
    src: _Source, pos: int, length: int, syntax: _Syntax, depth: int
) -> tuple[_Item, int]:
    end = None if length == 0xFFFFFFFF else pos + length
    item: _Item = {}
    while end is None or pos < end:
        tag, vr, vlen, vpos = _element_header(src, pos, syntax)
        if tag == _ITEM_END:
            return item, vpos
        if vlen == 0xFFFFFFFF or vr == b"SQ":
            inner = _Syntax(syntax.little, False) if vr == b"UN" else syntax
            item[tag], pos = _read_sequence(src, vpos, vlen, inner, depth)
            continue
        pos = vpos + vlen
        if pos > src.size:
            raise _Truncated("an element runs past the end of the file")
        if vlen <= 1024:
            item[tag] = (vr, src.read_at(vpos, vlen))
    return item, pos


# --------------------------------------------------------------------------- the data set


@dataclass
class _Parsed:
    values: dict[int, _Raw]
    shared: _Item | None = None
    first_frame: _Item | None = None
    max_temporal_index: int | None = None
    #: the distinct FrameType values of the frames after the first, as read (what a MIXED
    #: ImageType mixes: Philips' magnitude and B0 field map frames)
    frame_types: set[_Raw] = field(default_factory=set)
    has_pixel_data: bool = False


def _encapsulated_complete(src: _Source, pos: int, little: bool) -> None:
    """Check that the fragments of encapsulated pixel data starting at ``pos`` all exist."""
    delimiter = struct.pack("<HHL" if little else ">HHL", 0xFFFE, 0xE0DD, 0)
    if src.size >= pos + 8 and src.read_at(src.size - 8, 8) == delimiter:
        return
    fmt = _S_IMPLICIT[little]
    while True:
        group, elem, length = fmt.unpack(src.read_at(pos, 8))
        tag = group << 16 | elem
        if tag == _SEQ_END:
            return
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise _Malformed(f"bad pixel data fragment at byte {pos}")
        pos += 8 + length
        if pos > src.size:
            raise _Truncated("pixel data cut short")


def _native_pixel_length(values: dict[int, _Raw], little: bool) -> int | None:
    rows, cols, bits, spp, frames = (
        None if (raw := values.get(tag)) is None else _decoded(_int, raw, tag, little)
        for tag in (0x00280010, 0x00280011, 0x00280100, 0x00280002, _NUMBER_OF_FRAMES)
    )
    if not rows or not cols or not bits:
        return None
    spp = spp or 1
    frames = frames or 1
    n = (rows * cols * spp * frames * bits + 7) // 8
    return n + (n & 1)


def _pixel_data_start(src: _Source, values: dict[int, _Raw], syntax: _Syntax) -> int:
    """Where the PixelData element starts if the file ends with one of the size the
    header implies; else -1."""
    length = _native_pixel_length(values, syntax.little)
    if length is None:
        return -1
    head = 12 if syntax.explicit else 8
    pos = src.size - length - head
    if pos < 0:
        return -1
    raw = src.read_at(pos, head)
    if syntax.explicit:
        group, elem, vr, _ = _S_EXPLICIT[syntax.little].unpack_from(raw)
        if vr not in (b"OB", b"OW") or raw[6:8] != b"\0\0":
            return -1
        found = _S_U32[syntax.little].unpack_from(raw, 8)[0]
    else:
        group, elem, found = _S_IMPLICIT[syntax.little].unpack(raw)
    return pos if (group, elem, found) == (0x7FE0, 0x0010, length) else -1


def _creators_ahead(data: bytes, base: int, pos: int, end: int) -> tuple[_LatePrivate, ...] | None:
    """The entries of :data:`_LATE_PRIVATE` whose creator may come between ``pos`` and
    ``end`` (the pixel data), given the bytes ``data`` of the file from ``base`` on; None
    when ``end`` is not ahead (-1: no pixel data there).

    A private creator is a value holding the creator's name (padded with spaces or NULs
    at most), so a block that creator reserves can only come if the name occurs in the
    bytes before the pixel data (a search in C instead of a walk). When those bytes are
    not all in ``data``, every entry may come.
    """
    if end < pos:
        return None
    if not base <= pos <= end <= base + len(data):
        return _LATE_PRIVATE
    return tuple(
        entry for entry in _LATE_PRIVATE if data.find(entry[2], pos - base, end - base) >= 0
    )


def _walk_limit(values: dict[int, _Raw], tag: int, creators: tuple[_LatePrivate, ...]) -> int:
    """The last tag the walk must reach, from ``tag`` on, for the private elements of
    ``creators`` (lower than ``tag`` when it needs none): first the end of the creators
    of their group (the blocks are known then), then the wanted element of the block."""
    limit = -1
    blocks = None
    for group, creator, _name, offset in creators:
        if tag <= group << 16 | 0xFF:  # the creators of this group are not all read yet
            needed = group << 16 | 0xFF
        else:
            blocks = _private_blocks(values) if blocks is None else blocks
            block = blocks.get((group, creator))
            needed = -1 if block is None else group << 16 | block << 8 | offset
        if needed >= tag and (limit < 0 or needed < limit):
            limit = needed
    return limit


#: The layout memory of :func:`_parse_dataset`: for each walking state (byte order,
#: explicit VR, walk limit), the chunks of elements seen after an element (its tag, or
#: _START) in the files walked before: tag -> (the chunk's bytes, the tag of its last
#: element or -1 when it ends before a special element, the wanted elements in it).
#: Per process; a layout is emptied when full.
_Chunk: TypeAlias = "tuple[bytes, int, tuple[tuple[int, _Raw], ...]]"
_START = 1 << 32  # (no tag: the chunk at the start of the data set)
_LAYOUTS: dict[tuple[bool, bool, int], dict[int, _Chunk]] = {}
_LAYOUT_MAX = 1024  # chunks per layout
_LAYOUTS_MAX = 16  # layouts (all are emptied when there are more)
#: Elements per chunk: a value that differs from file to file (an instance number, a
#: slice position, a time) makes only its chunk walked.
_CHUNK_ELEMENTS = 8
_CHUNK_MAX_BYTES = 2048  # longer chunks are not kept (memory: at most ~32 MB in all)


def _layout(little: bool, explicit: bool, limit: int) -> dict[int, _Chunk]:
    """The chunks known for a walking state (see :data:`_LAYOUTS`)."""
    key = (little, explicit, limit)
    chunks = _LAYOUTS.get(key)
    if chunks is None or len(chunks) >= _LAYOUT_MAX:
        if len(_LAYOUTS) >= _LAYOUTS_MAX:
            _LAYOUTS.clear()
        chunks = _LAYOUTS[key] = {}
    return chunks


#: The values of the sequences of undefined length skipped in the files walked before,
#: by (byte order, explicit VR of their items, tag): a value that a later file repeats
#: byte for byte ends where it ended. Per process; emptied when full.
_SEQUENCES: dict[tuple[bool, bool, int], bytes] = {}
_SEQUENCES_MAX = 256
_SEQUENCE_MAX_BYTES = 16384  # longer values are not kept


def _skip_sequence(
    src: _Source, data: bytes, base: int, pos: int, syntax: _Syntax, tag: int
) -> int:
    """:func:`_skip_undefined` for the top-level sequence ``tag`` whose items start at
    ``pos`` (``data``: the bytes of the file from ``base`` on, read already), jumping
    over a value seen before."""
    key = (syntax.little, syntax.explicit, tag)
    start = pos - base
    seen = _SEQUENCES.get(key)
    if seen is not None and start >= 0 and data.startswith(seen, start):
        return pos + len(seen)
    end = _skip_undefined(src, pos, syntax, 1)
    if start >= 0 and end - base <= len(data) and end - pos <= _SEQUENCE_MAX_BYTES:
        if len(_SEQUENCES) >= _SEQUENCES_MAX:
            _SEQUENCES.clear()
        _SEQUENCES[key] = data[start : end - base]
    return end


def _jump(
    chunks: dict[int, _Chunk], data: bytes, off: int, key: int, values: dict[int, _Raw]
) -> tuple[int, int]:
    """Jump over the chunks known to follow the element ``key`` when ``data`` repeats
    them at ``off``, taking their wanted values; (where the walk goes on, the tag of the
    last element jumped over, else ``key``; -1: unknown)."""
    known = chunks.get(key)
    while known is not None and data.startswith(known[0], off):
        off += len(known[0])
        values.update(known[2])
        key = known[1]
        known = chunks.get(key)
    return off, key


def _parse_dataset(
    src: _Source, pos: int, syntax: _Syntax, *, encapsulated: bool, forced: bool
) -> _Parsed:
    """Walk the top-level elements from ``pos``, keeping the wanted ones.

    The loop is the hot spot of a session scan (hundreds of elements per file), so
    elements that are neither wanted nor special take a short path: unpack the header
    (the VR as a number), one list and one set lookup, advance.

    Elements up to ``limit`` take that path. For classic files (native pixel data, not
    read as "forced"), ``limit`` is first the end of group 0028, then what
    :func:`_walk_limit` says the private elements still ahead need; past it the walk ends
    if the file ends with the pixel data the header implies. Otherwise (or when that
    check fails), ``limit`` is the end of the last group read, after which the same check
    is made once.

    The files of a series repeat most of their header bytes, so the elements walked on
    that path are remembered in chunks of :data:`_CHUNK_ELEMENTS` elements
    (:data:`_LAYOUTS`): a chunk found with the same bytes after the same element in a
    later file is jumped over in one comparison, its wanted values taken as they were
    read. Such a jump is exact: from an element boundary, the same bytes walked in the
    same state (byte order, VR encoding, limit) are the same elements with the same
    values. The elements of a forced file are never jumped over.
    """
    values: dict[int, _Raw] = {}
    parsed = _Parsed(values)
    little = syntax.little
    explicit = syntax.explicit
    unpack_explicit = _S_EXPLICIT_CODE[little].unpack_from
    unpack_implicit = _S_IMPLICIT[little].unpack_from
    unpack_u32 = _S_U32[little].unpack_from
    header_size = _VR_CODE_SIZES[little]
    vr_name = _VR_CODE_NAME[little]
    wanted = _WANTED
    size = src.size
    data, base = src.window(pos, 12)
    last = len(data) - 12  # the last offset in the window where an element header fits
    off = pos - base
    # the elements of a forced file all take the slow path, where their order is checked
    low = 1 << 32 if forced else 0x00080000
    last_tag = -1
    tail_checked = encapsulated
    early = not (encapsulated or forced)  # the early end described above is still possible
    limit = _STANDARD_END if early else _LAST_CLASSIC_GROUP << 16 | 0xFFFF
    creators = None
    pixel_start = -1
    chunks = _layout(little, explicit, limit)
    per_chunk = _CHUNK_ELEMENTS
    # the chunk being walked: the tag of the element before it, where it starts in
    # ``data`` (-1: not remembered), its elements so far, the wanted ones among them
    chunk_key = _START
    chunk_start = -1
    counted = 0
    found: list[tuple[int, _Raw]] = []
    if not forced:  # the chunks known at the start of the data set
        off, chunk_key = _jump(chunks, data, off, chunk_key, values)
        chunk_start = off if chunk_key >= 0 else -1
    while True:
        if off > last:  # refill the window (or stop at the end of the file)
            pos = base + off
            if pos >= size:
                if pos > size:
                    raise _Truncated("the last element runs past the end of the file")
                return parsed
            data, base = src.window(pos, 12)
            last = len(data) - 12
            off = pos - base
            chunk_start = -1  # (a chunk is remembered from one window only)
            if off > last + 4:
                raise _Truncated(f"element header at byte {pos} cut short")
        if explicit:  # the VR is read as a number (code), a VR name only when needed
            group, elem, code, length = unpack_explicit(data, off)
            head = header_size[code]
            if head != 8:
                if head == 12:
                    if off > last:
                        raise _Truncated(f"element header at byte {base + off} cut short")
                    length = unpack_u32(data, off + 8)[0]
                else:
                    if forced:
                        vr_bytes = data[off + 4 : off + 6]
                        raise _Malformed(f"invalid VR {vr_bytes!r} at byte {base + off}")
                    # an implicit element inside an explicit data set (broken exports)
                    code = 0
                    length = unpack_u32(data, off + 4)[0]
                    head = 8
        else:
            group, elem, length = unpack_implicit(data, off)
            code = 0
            head = 8
        tag = group << 16 | elem
        if length == 0xFFFFFFFF or not low <= tag <= limit:
            # the slow path: undefined lengths, pixel data, past the limit, directories
            if 0 <= chunk_start < off and off - chunk_start <= _CHUNK_MAX_BYTES:
                chunks[chunk_key] = (data[chunk_start:off], -1, tuple(found))
            chunk_start = -1
            pos = base + off
            if forced:  # (every element of a forced file comes here: its order is checked)
                if tag < last_tag:
                    raise _Malformed(f"elements out of order at byte {pos}")
                last_tag = tag
                if length != 0xFFFFFFFF and 0x00080000 <= tag <= limit:  # the short path's
                    if tag in wanted and length <= _MAX_VALUE:
                        values[tag] = (vr_name.get(code), src.read_at(pos + head, length))
                    off += head + length
                    continue
            if group >= 0x7FE0:
                if tag in _PIXEL_TAGS:
                    parsed.has_pixel_data = True
                    if length == 0xFFFFFFFF:
                        _encapsulated_complete(src, pos + head, little)
                    elif pos + head + length > size:
                        raise _Truncated("pixel data cut short")
                    return parsed
                if group > 0x7FE0:  # trailing padding or signatures, no pixel data before
                    return parsed
            elif group == 0xFFFE:
                raise _Malformed(f"unexpected item tag at byte {pos}")
            elif group == 0x0004 and (elem >> 8) == 0x12:  # directory records
                values[0x00041220] = (b"SQ", b"")
            if early and tag > limit:
                if creators is None:  # past the standard groups: what can still come?
                    if _NUMBER_OF_FRAMES not in values:  # (not the functional groups)
                        try:
                            pixel_start = _pixel_data_start(src, values, syntax)
                        except _Truncated:  # a negative size: raised where it always was
                            pixel_start = -1
                    creators = _creators_ahead(data, base, pos, pixel_start)
                limit = -1 if creators is None else _walk_limit(values, tag, creators)
                if limit < tag:  # nothing needed ahead, or that cannot be told
                    early = False
                    limit = _LAST_CLASSIC_GROUP << 16 | 0xFFFF
                    if creators is not None and pos <= pixel_start:
                        parsed.has_pixel_data = True
                        return parsed
                chunks = _layout(little, explicit, limit)
                continue  # this element again, with the new limit
            if group > _LAST_CLASSIC_GROUP and not tail_checked:
                tail_checked = True
                if _NUMBER_OF_FRAMES not in values and _pixel_data_start(src, values, syntax) >= 0:
                    parsed.has_pixel_data = True
                    return parsed
            vpos = pos + head
            if length == 0xFFFFFFFF:
                inner = _Syntax(little, False) if vr_name.get(code) == b"UN" else syntax
                if tag in _WANTED_SEQUENCES:
                    pos = _read_functional_groups(src, tag, vpos, length, inner, parsed)
                else:
                    pos = _skip_sequence(src, data, base, vpos, inner, tag)
            elif tag in _WANTED_SEQUENCES:
                pos = _read_functional_groups(src, tag, vpos, length, syntax, parsed)
            else:
                pos = vpos + length
            if pos > size:
                raise _Truncated(f"element ({group:04X},{elem:04X}) runs past the end of the file")
            off = pos - base
            if off < 0:
                data, base = src.window(pos, 12)
                last = len(data) - 12
                off = pos - base
            if forced:
                continue
        else:
            if tag in wanted and length <= _MAX_VALUE:
                start = off + head
                stop = start + length
                if stop <= last + 12:
                    raw = values[tag] = (vr_name.get(code), data[start:stop])
                    found.append((tag, raw))
                    off = stop
                else:  # (the window moves: this chunk is not remembered)
                    pos = base + start
                    values[tag] = (vr_name.get(code), src.read_at(pos, length))
                    data, base = src.window(pos + length, 12)
                    last = len(data) - 12
                    off = pos + length - base
                    chunk_start = -1
            else:
                off += head + length
            counted += 1
            if counted < per_chunk:
                continue
            # (the last value may run past the window: then the chunk is not whole in it)
            if 0 <= chunk_start < off <= len(data) and off - chunk_start <= _CHUNK_MAX_BYTES:
                chunks[chunk_key] = (data[chunk_start:off], tag, tuple(found))
        # a chunk starts after this element: jump over the ones known to follow it here
        off, chunk_key = _jump(chunks, data, off, tag, values)
        chunk_start = off if chunk_key >= 0 else -1
        counted = 0
        found = []


def _read_functional_groups(
    src: _Source, tag: int, pos: int, length: int, syntax: _Syntax, parsed: _Parsed
) -> int:
    """Parse the shared functional groups, the first frame's, and the temporal position
    index of every other frame (their other macros are skipped by length)."""
    if tag == _SHARED_FG:
        items, after = _read_sequence(src, pos, length, syntax, 1)
        parsed.shared = items[0] if items else None
        return after
    end = None if length == 0xFFFFFFFF else pos + length
    items_syntax = _Syntax(syntax.little, False)
    highest: int | None = None
    index = 0
    while end is None or pos < end:
        item_tag, _vr, item_len, vpos = _element_header(src, pos, items_syntax)
        if item_tag == _SEQ_END:
            pos = vpos
            break
        if item_tag != _ITEM:
            raise _Malformed(f"expected a sequence item at byte {pos}, found tag {item_tag:08X}")
        number: int | None
        if index == 0:
            parsed.first_frame, pos = _read_item(src, vpos, item_len, syntax, 2)
            raw = _fg_value(parsed.first_frame, None, 0x00209128, syntax)
            number = _int(raw, 0x00209128, syntax.little)
        else:
            number, pos = _frame_temporal_index(src, vpos, item_len, syntax, parsed.frame_types)
        if number is not None and (highest is None or number > highest):
            highest = number
        index += 1
    parsed.max_temporal_index = highest
    return pos


def _frame_temporal_index(
    src: _Source, pos: int, length: int, syntax: _Syntax, frame_types: set[_Raw]
) -> tuple[int | None, int]:
    """(TemporalPositionIndex, end of the item) of one PerFrameFunctionalGroups item; its
    FrameType, as read, is added to ``frame_types``."""
    end = None if length == 0xFFFFFFFF else pos + length
    number = None
    while end is None or pos < end:
        tag, vr, vlen, vpos = _element_header(src, pos, syntax)
        if tag == _ITEM_END:
            return number, vpos
        inner = _Syntax(syntax.little, False) if vr == b"UN" else syntax
        if tag == 0x00189226:  # MRImageFrameTypeSequence (before FrameContentSequence)
            items, pos = _read_sequence(src, vpos, vlen, inner, 3)
            raw = items[0].get(0x00089007) if items else None
            if isinstance(raw, tuple):
                frame_types.add(raw)
        elif tag == 0x00209111:  # FrameContentSequence
            items, pos = _read_sequence(src, vpos, vlen, inner, 3)
            raw = items[0].get(0x00209128) if items else None
            number = _int(raw, 0x00209128, syntax.little) if isinstance(raw, tuple) else None
            if end is not None:
                return number, end
        elif vlen == 0xFFFFFFFF:
            pos = _skip_undefined(src, vpos, inner, 3)
        else:
            pos = vpos + vlen
        if pos > src.size:
            raise _Truncated("a frame's functional groups run past the end of the file")
    return number, pos


def _first_item(item: _Item | None, tag: int, syntax: _Syntax) -> _Item | None:
    if item is None:
        return None
    value = item.get(tag)
    if isinstance(value, list):
        return value[0] if value else None
    if isinstance(value, tuple):  # a sequence of defined length in implicit VR
        try:
            items, _ = _read_sequence(_MemorySource(value[1]), 0, len(value[1]), syntax, 2)
        except _Malformed:
            return None
        return items[0] if items else None
    return None


def _fg_value(first: _Item | None, shared: _Item | None, tag: int, syntax: _Syntax) -> _Raw | None:
    """A value from a functional group macro: the first frame's, else the shared one."""
    macro = _FG_MACRO[tag]
    for group in (first, shared):
        item = _first_item(group, macro, syntax)
        if item is not None:
            value = item.get(tag)
            if isinstance(value, tuple):
                return value
    return None


# --------------------------------------------------------------------------- value decoding


def _vr_of(raw: _Raw, tag: int) -> bytes:
    vr = raw[0]
    if vr is None or vr == b"UN":
        return _VR_BYTES.get(tag, b"UN")
    return vr


#: what pydicom's convert_encodings gives for ISO_IR 192
_UTF8_CODECS = ("UTF8",)
#: SpecificCharacterSet values whose text the latin-1 fast path decodes exactly
_LATIN1_CHARSETS = frozenset(
    {("",), ("ISO_IR 6",), ("ISO_IR 100",), ("ISO 2022 IR 6",), ("ISO 2022 IR 100",)}
)


@functools.lru_cache(maxsize=64)
def _encodings(charset: tuple[str, ...]) -> tuple[str, ...] | None:
    """Python codecs for a SpecificCharacterSet, or None where latin-1 decoding is exact.

    pydicom (slow to import: ~0.4 s) is imported only for other character sets than
    these and UTF-8, so a scan of latin-1, ASCII or UTF-8 files, and a run with nothing
    to do, never load it.
    """
    if not charset or charset in _LATIN1_CHARSETS:
        return None
    if charset == ("ISO_IR 192",):  # UTF-8 (Siemens XA, UIH...): no need for pydicom
        return _UTF8_CODECS
    from pydicom.charset import convert_encodings

    encodings = convert_encodings(list(charset))
    if encodings == ["iso8859"] or encodings == ["latin_1"]:
        return None
    return tuple(encodings)


def _text(raw: _Raw | None, tag: int, encodings: Sequence[str] | None) -> str | None:
    """A string value, stripped; None when absent or empty."""
    if raw is None:
        return None
    value = raw[1]
    if (
        encodings is not None
        and (not value.isascii() or b"\x1b" in value)  # ISO 2022 escapes are ASCII
        and _vr_of(raw, tag) in _TEXT_VRS
    ):
        if encodings == _UTF8_CODECS and b"\x1b" not in value:
            text = value.decode("utf_8", errors="replace")  # as pydicom's decode_bytes does
        else:
            from pydicom.charset import decode_bytes

            text = decode_bytes(value, list(encodings), {0x5C})
    else:
        text = value.decode("latin-1")
    return text.strip(" \x00") or None


def _strings(raw: _Raw | None, tag: int, encodings: Sequence[str] | None) -> tuple[str, ...]:
    text = _text(raw, tag, encodings)
    if text is None:
        return ()
    return tuple(part.strip(" \x00") for part in text.split("\\"))


def _numbers(raw: _Raw | None, tag: int, little: bool) -> tuple[float, ...]:
    """All values of a numeric element (DS/IS text, or binary); ValueError if malformed."""
    if raw is None or not raw[1]:
        return ()
    fmt = _BINARY_FORMATS.get(_vr_of(raw, tag))
    if fmt is not None:
        size = struct.calcsize("<" + fmt)
        count = len(raw[1]) // size
        values = struct.unpack(("<" if little else ">") + fmt * count, raw[1][: count * size])
        return tuple(float(v) for v in values)
    text = raw[1].decode("latin-1").strip(" \x00")
    return tuple(float(part) for part in text.split("\\") if part.strip(" \x00"))


def _float(raw: _Raw | None, tag: int, little: bool) -> float | None:
    """The first value of a numeric element; None when absent or malformed."""
    if raw is None:
        return None
    value = raw[1]
    try:
        if _vr_of(raw, tag) in _TEXT_NUMBER_VRS:
            text = value.split(b"\\", 1)[0].strip(b" \x00")
            return float(text) if text else None
        numbers = _numbers(raw, tag, little)
    except (ValueError, struct.error):
        log.debug("unreadable number in (%04X,%04X): %r", tag >> 16, tag & 0xFFFF, value)
        return None
    return numbers[0] if numbers else None


def _int(raw: _Raw | None, tag: int, little: bool) -> int | None:
    value = _float(raw, tag, little)
    if value is None or value != value or abs(value) > 2**62:
        return None
    return int(value)


#: the tags of the private creators of the groups in _PRIVATE
_CREATOR_TAGS = frozenset(group << 16 | block for group in _PRIVATE for block in range(0x10, 0x100))


def _private_blocks(values: dict[int, _Raw]) -> dict[tuple[int, str], int]:
    """(group, private creator) -> block number, for the private groups read (a creator
    named twice in a group: its highest block)."""
    blocks = {}
    for tag in sorted(_CREATOR_TAGS.intersection(values)):
        blocks[(tag >> 16, values[tag][1].decode("latin-1").strip(" \x00"))] = tag & 0xFF
    return blocks


def _private(
    values: dict[int, _Raw],
    blocks: dict[tuple[int, str], int],
    group: int,
    creator: str,
    offset: int,
) -> _Raw | None:
    """The element at ``offset`` of the block reserved by ``creator`` in ``group``."""
    block = blocks.get((group, creator))
    return None if block is None else values.get(group << 16 | block << 8 | offset)


def _b_value(
    values: dict[int, _Raw],
    blocks: dict[tuple[int, str], int],
    first: _Item | None,
    shared: _Item | None,
    syntax: _Syntax,
) -> float | None:
    little = syntax.little
    raw = values.get(0x00189087)
    b = None if raw is None else _decoded(_float, raw, 0x00189087, little)
    if b is None and (first is not None or shared is not None):
        b = _share(_float(_fg_value(first, shared, 0x00189087, syntax), 0x00189087, little))
    if b is not None:
        return b
    raw = _private(values, blocks, 0x0019, "SIEMENS MR HEADER", 0x0C)
    if raw is not None:
        return _decoded(_float, raw, 0x0019100C, little)
    raw = _private(values, blocks, 0x0043, "GEMS_PARM_01", 0x39)
    if raw is not None:
        return _decoded(_ge_b_value, raw, 0x00431039, little)
    raw = _private(values, blocks, 0x2001, "Philips Imaging DD 001", 0x03)
    if raw is not None:
        return _decoded(_float, raw, 0x20011003, little)
    return None


def _ge_b_value(raw: _Raw, tag: int, little: bool) -> float | None:
    b = _float(raw, tag, little)
    if b is not None and b >= 1e9:  # some GE software adds 10^9 (dcm2niix does too)
        b = b % 1e9
    return b


def _upper_strings(raw: _Raw, tag: int, encodings: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(v.upper() for v in _strings(raw, tag, encodings))


def _numbers_or_empty(raw: _Raw | None, tag: int, little: bool) -> tuple[float, ...]:
    try:
        return _numbers(raw, tag, little)
    except (ValueError, struct.error):
        return ()


def _mixed_image_type(
    image_type: tuple[str, ...], f: _Fields, frame_types: set[_Raw]
) -> tuple[str, ...]:
    """A MIXED ImageType of an enhanced file, followed by what its frames mix: the
    distinct FrameType values (fourth on) of its frames that it does not already hold.

    A Philips B0 map is one file of magnitude frames (``...\\M``) and field map frames
    (``...\\FIELD_MAP``) under ``ORIGINAL\\PRIMARY\\T1\\MIXED``: the classifier then
    knows it holds a field map in Hz from the header, whatever the series is named."""
    first = _fg_value(f.first, None, 0x00089007, f.syntax)
    values = {
        value
        for raw in (first, *frame_types)
        if raw is not None
        for value in _upper_strings(raw, 0x00089007, None)[3:]
    }
    return image_type + tuple(sorted(v for v in values if v and v not in image_type))


class _Fields:
    """The decoded values of one file's elements (shared, see :func:`_decoded`), with
    the functional groups of an enhanced file as the fallback of its missing ones."""

    __slots__ = ("encodings", "enhanced", "first", "little", "shared", "syntax", "values")

    def __init__(self, parsed: _Parsed, syntax: _Syntax, encodings: tuple[str, ...] | None) -> None:
        self.values = parsed.values
        self.syntax = syntax
        self.little = syntax.little
        self.encodings = encodings
        self.first, self.shared = parsed.first_frame, parsed.shared
        self.enhanced = self.first is not None or self.shared is not None

    def text(self, tag: int) -> str | None:
        raw = self.values.get(tag)
        return None if raw is None else _decoded(_text, raw, tag, self.encodings)

    def upper(self, tag: int) -> tuple[str, ...]:
        raw = self.values.get(tag)
        return () if raw is None else _decoded(_upper_strings, raw, tag, self.encodings)

    def number(self, tag: int) -> float | None:
        raw = self.values.get(tag)
        if raw is not None:
            found = _decoded(_float, raw, tag, self.little)
            if found is not None or not self.enhanced:
                return found
        if self.enhanced and tag in _FG_MACRO:
            raw = _fg_value(self.first, self.shared, tag, self.syntax)
            return _share(_float(raw, tag, self.little))
        return None

    def integer(self, tag: int) -> int | None:
        raw = self.values.get(tag)
        return None if raw is None else _decoded(_int, raw, tag, self.little)

    def numbers(self, tag: int) -> tuple[float, ...]:
        raw = self.values.get(tag)
        if raw is not None:
            return _decoded(_numbers_or_empty, raw, tag, self.little)
        if self.enhanced and tag in _FG_MACRO:
            raw = _fg_value(self.first, self.shared, tag, self.syntax)
            return _share(_numbers_or_empty(raw, tag, self.little))
        return ()

    def fg_text(self, tag: int) -> str | None:
        if not self.enhanced:
            return None
        raw = _fg_value(self.first, self.shared, tag, self.syntax)
        return _share(_text(raw, tag, self.encodings))


#: The elements the fields of :func:`_series_fields` come from in a classic file (with
#: the transfer syntax, the byte order and the file meta's SOP class): the files of a
#: series repeat them, and equal values give equal fields, built once per process.
_SERIES_TAGS = (
    0x00080005, 0x00080016, 0x00080020, 0x00080021, 0x00080022, 0x00080031, 0x00080060,
    0x00080070, 0x0008103E, 0x00081090, 0x00180020, 0x00180021, 0x00180022, 0x00180023,
    0x00180024, 0x00180080, 0x00180081, 0x00180082, 0x00180087, 0x00181020, 0x00181030,
    0x00181312, 0x00181314, 0x00189005, 0x0020000D, 0x0020000E, 0x00200011, 0x00200037,
    0x00200052, 0x00280008, 0x00280010, 0x00280011, 0x00280301,
)  # fmt: skip
_SERIES: dict[tuple[object, ...], dict[str, Any]] = {}
_SERIES_MAX = 1024  # (emptied when full)


def _series_fields(f: _Fields, meta: dict[int, _Raw], ts: str | None) -> dict[str, Any]:
    """The fields of a record that the files of a series share (see :data:`_SERIES_TAGS`
    for those of a classic file)."""
    text, number = f.text, f.number
    scanning = f.upper(0x00180020)
    if not scanning and f.enhanced:  # enhanced MR describes the sequence in other words
        scanning = _ENHANCED_SCANNING.get(text(0x00189008) or "", ())
        if text(0x00189018) == "YES":
            scanning = ("EP", *scanning)
        if (text(0x00189009) or f.fg_text(0x00189009)) == "YES":
            scanning = (*scanning, "IR")
        scanning = _share(scanning)
    echo_time = number(0x00180081)
    if echo_time is None and f.enhanced:
        echo_time = number(0x00189082)
    inversion_time = number(0x00180082)
    if inversion_time is None and f.enhanced:
        inversion_time = number(0x00189079)
    sop_class = text(0x00080016)
    if sop_class is None:
        raw = meta.get(0x00020002)
        sop_class = None if raw is None else _decoded(_text, raw, 0x00020002, None)
    phase_dir = text(0x00181312) or f.fg_text(0x00181312)
    if phase_dir == "COLUMN":  # enhanced files spell it out
        phase_dir = "COL"
    return {
        "sop_class_uid": sop_class,
        "study_uid": text(0x0020000D),
        "series_uid": text(0x0020000E),
        "frame_of_reference_uid": text(0x00200052),
        "modality": text(0x00080060),
        "manufacturer": text(0x00080070),
        "model": text(0x00081090),
        "software_versions": text(0x00181020),
        "series_number": f.integer(0x00200011),
        "series_description": text(0x0008103E),
        "protocol_name": text(0x00181030),
        "sequence_name": text(0x00180024) or text(0x00189005),
        "scanning_sequence": scanning,
        "sequence_variant": f.upper(0x00180021),
        "scan_options": f.upper(0x00180022),
        "mr_acquisition_type": text(0x00180023),
        "repetition_time": number(0x00180080),
        "echo_time": echo_time,
        "inversion_time": inversion_time,
        "flip_angle": number(0x00181314),
        "magnetic_field_strength": number(0x00180087),
        "in_plane_phase_encoding": phase_dir,
        "image_orientation": f.numbers(0x00200037),
        "rows": f.integer(0x00280010),
        "columns": f.integer(0x00280011),
        "number_of_frames": f.integer(_NUMBER_OF_FRAMES),
        "study_date": text(0x00080020),
        "series_date": text(0x00080021),
        "acquisition_date": text(0x00080022),
        "series_time": text(0x00080031),
        "burned_in_annotation": text(0x00280301),
        "transfer_syntax_uid": _share(ts),
    }


def _build(
    path: Path,
    st: os.stat_result,
    meta: dict[int, _Raw],
    parsed: _Parsed,
    syntax: _Syntax,
    ts: str | None,
    has_preamble: bool,
) -> FileHeader:
    """The header record: the fields a series shares (built once per process for the
    equal values of classic files), then this file's own."""
    values = parsed.values
    little = syntax.little
    if len(_DECODED) >= _DECODED_MAX:
        _DECODED.clear()
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    raw = values.get(0x00080005)
    encodings = None if raw is None else _encodings(_decoded(_strings, raw, 0x00080005, None))
    f = _Fields(parsed, syntax, encodings)
    series: dict[str, Any] | None
    if f.enhanced:
        series = _series_fields(f, meta, ts)
    else:
        key = (ts, little, meta.get(0x00020002), *map(values.get, _SERIES_TAGS))
        series = _SERIES.get(key)
        if series is None:
            if len(_SERIES) >= _SERIES_MAX:
                _SERIES.clear()
            series = _SERIES[key] = _series_fields(f, meta, ts)
    text = f.text
    blocks = _private_blocks(values)
    image_type = f.upper(0x00080008)
    if not image_type and f.enhanced:
        raw = _fg_value(f.first, f.shared, 0x00089007, syntax)
        image_type = _share(() if raw is None else _upper_strings(raw, 0x00089007, None))
    elif "MIXED" in image_type[3:] and parsed.frame_types:
        image_type = _share(_mixed_image_type(image_type, f, parsed.frame_types))
    component = text(0x00089208) or f.fg_text(0x00089208)
    if component is None:
        ge_type = _private(values, blocks, 0x0043, "GEMS_PARM_01", 0x2F)
        if ge_type is not None:
            component = _GE_COMPONENTS.get(_int(ge_type, 0x0043102F, little) or 0)
    if component:
        component = _share(component.upper())
    temporal = f.integer(0x00200100)
    if parsed.max_temporal_index is not None:
        temporal = parsed.max_temporal_index
    return FileHeader(
        path=path,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        sop_instance_uid=text(0x00080018),
        instance_number=f.integer(0x00200013),
        acquisition_number=f.integer(0x00200012),
        echo_number=f.integer(0x00180086),
        temporal_position=temporal,
        image_type=image_type,
        b_value=_b_value(values, blocks, f.first, f.shared, syntax),
        image_position=f.numbers(0x00200032),
        acquisition_time=text(0x00080032),
        content_time=text(0x00080033),
        acquisition_datetime=text(0x0008002A) or f.fg_text(0x00189074),
        has_pixel_data=parsed.has_pixel_data,
        complex_image_component=component or None,
        has_preamble=has_preamble,
        **series,
    )


#: Decoded values by (decoder, tag, raw value, encodings or byte order): the files of a
#: series repeat most values (UIDs, descriptions, sequence parameters, orientation), which
#: are then decoded once per process. Bounded: emptied when full (by :func:`_build`).
_DECODED: dict[tuple[object, ...], Any] = {}
_DECODED_MAX = 8192
_T = TypeVar("_T")
_A = TypeVar("_A")


def _decoded(decode: Callable[[_Raw, int, _A], _T], raw: _Raw, tag: int, arg: _A) -> _T:
    """``_share(decode(raw, tag, arg))``, computed once per process for equal arguments."""
    key = (decode, tag, raw, arg)
    value = _DECODED.get(key, _DECODED)
    if value is _DECODED:
        value = _DECODED[key] = _share(decode(raw, tag, arg))
    return value  # type: ignore[no-any-return]


#: Values repeated from file to file (study and series UIDs, descriptions, sequence
#: parameters, orientation...) are kept once per process instead of once per header: the
#: headers of a 100,000-file session take ~40% less memory, and a chunk of headers sent
#: by a worker process carries each value once. Bounded: emptied when full (by
#: :func:`_build`). (Equal floats are one object: a -0.0 may become 0.0, which compares
#: equal.)
_SHARED: dict[tuple[type, object], Any] = {}
_SHARED_MAX = 4096
_SHAREABLE = frozenset({str, float, tuple})


def _share(value: _T) -> _T:
    """An object equal to ``value`` (a str, float or tuple: the one kept in _SHARED)."""
    if value.__class__ in _SHAREABLE:
        return _SHARED.setdefault((value.__class__, value), value)  # type: ignore[no-any-return]
    return value


# --------------------------------------------------------------------------- entry point


def _syntax_of(ts: str) -> _Syntax:
    if ts == IMPLICIT_LE:
        return _Syntax(True, False)
    if ts == EXPLICIT_BE:
        return _Syntax(False, True)
    return _Syntax(True, True)


def _guess_syntax(head: bytes) -> _Syntax | None:
    """The encoding of a data set starting at ``head``, or None if it is not DICOM-like."""
    if len(head) < 8:
        return None
    explicit = head[4:6] in _ALL_VRS
    group_le = head[0] | head[1] << 8
    if 0x0002 <= group_le <= 0x0010 and group_le % 2 == 0:
        return _Syntax(True, explicit)
    group_be = head[0] << 8 | head[1]
    if explicit and 0x0002 <= group_be <= 0x0010 and group_be % 2 == 0:
        return _Syntax(False, True)
    return None


def _read_meta(
    src: _Source, pos: int, keep: tuple[int, ...] = (0x0002, 0x0010)
) -> tuple[dict[int, _Raw], int]:
    """Parse the group 0002 file meta information (explicit VR little endian), keeping the
    elements numbered ``keep`` (default: MediaStorageSOPClassUID, TransferSyntaxUID)."""
    meta: dict[int, _Raw] = {}
    # the usual case first: well-formed elements in the bytes read already
    data, base = src.data, src.base
    unpack = _S_EXPLICIT[True].unpack_from
    while base <= pos and pos + 12 <= base + len(data) and pos + 8 <= src.size:
        off = pos - base
        group, elem, vr, length = unpack(data, off)
        if group != 0x0002:
            return meta, pos
        if vr in _LONG_VRS:
            length = _S_U32[True].unpack_from(data, off + 8)[0]
            start = off + 12
        elif vr in _ALL_VRS:
            start = off + 8
        else:
            break
        if length == 0xFFFFFFFF or start + length > len(data):
            break
        if elem in keep:
            meta[group << 16 | elem] = (vr, data[start : start + length])
        pos = base + start + length
    # the others, with every check (where each error is reported)
    syntax = _Syntax(True, True)
    while pos + 8 <= src.size:
        if src.read_at(pos, 2) != b"\x02\x00":
            break
        tag, vr, length, vpos = _element_header(src, pos, syntax)
        if vr is None or length == 0xFFFFFFFF:
            raise _Malformed(f"malformed file meta information at byte {pos}")
        if vpos + length > src.size:
            raise _Truncated(f"file meta information cut at byte {src.size}")
        if tag & 0xFFFF in keep:
            meta[tag] = (vr, src.read_at(vpos, length))
        pos = vpos + length
    return meta, pos


def forget() -> None:
    """Empty what :func:`read_header` remembers of the files it read before (the layouts
    and sequences of :func:`_parse_dataset`, the fields of a series): it reads the next
    file as if it were the first. Records never depend on it; timings do."""
    _LAYOUTS.clear()
    _SEQUENCES.clear()
    _SERIES.clear()


def read_header(path: Path) -> FileHeader:
    """Read the header of one DICOM file.

    Raises :class:`DicomReadError` (message ``"<path>: <reason>"``) for an empty,
    truncated or unreadable file, a file that is not DICOM, and a DICOMDIR.
    """
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size == 0:
                raise DicomReadError(f"{path}: empty file (0 bytes)")
            first = fh.read(_FIRST_READ)
            return _read(path, fh, st, first)
    except OSError as exc:
        raise DicomReadError(f"{path}: cannot read: {exc.strerror or exc}") from exc


@dataclass
class _DataSet:
    """Where the data set of a file starts, and how it is encoded."""

    src: _Source
    pos: int
    syntax: _Syntax
    meta: dict[int, _Raw]
    ts: str | None
    forced: bool  # no file meta information: the syntax was guessed


def _read(path: Path, fh: BinaryIO, st: os.stat_result, first: bytes) -> FileHeader:
    forced = False  # (until the data set is found)
    try:
        found = _data_set(path, fh, st, first)
        ts, meta, syntax, forced = found.ts, found.meta, found.syntax, found.forced
        encapsulated = ts is not None and ts not in _NATIVE_SYNTAXES
        parsed = _parse_dataset(
            found.src, found.pos, syntax, encapsulated=encapsulated, forced=forced
        )
    except (_Malformed, struct.error, IndexError, ValueError, OverflowError, UnicodeError) as exc:
        raise _read_error(path, exc, forced) from exc
    values = parsed.values
    if 0x00041220 in values:
        raise DicomReadError(f"{path}: DICOMDIR (a media index, not an image)")
    if forced and not _looks_like_dicom(values):
        raise DicomReadError(f"{path}: not a DICOM file (no DICM prefix, no DICOM data)")
    try:
        return _build(path, st, meta, parsed, syntax, ts, first[128:132] == b"DICM")
    except (struct.error, ValueError, UnicodeError, LookupError) as exc:
        raise DicomReadError(f"{path}: malformed DICOM file ({type(exc).__name__}: {exc})") from exc


def _read_error(path: Path, exc: Exception, forced: bool) -> DicomReadError:
    """The error for the parser's ``exc`` (or a decoding error) on ``path``; ``forced``:
    the file has no file meta information (a data set that does not walk is no DICOM)."""
    detail = str(exc) if isinstance(exc, _Malformed) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _Truncated):
        return DicomReadError(f"{path}: truncated DICOM file ({detail})")
    if forced:
        return NotDicomError(f"{path}: not a DICOM file ({detail})")
    return DicomReadError(f"{path}: malformed DICOM file ({detail})")


def _data_set(
    path: Path,
    fh: BinaryIO,
    st: os.stat_result,
    first: bytes,
    keep_meta: tuple[int, ...] = (0x0002, 0x0010),
) -> _DataSet:
    """The file meta information (the elements numbered ``keep_meta``) and where the data
    set starts. Raises DicomReadError, and the parser's errors (``forced`` is False then)."""
    src: _Source = _FileSource(fh, st.st_size, first)
    forced = False
    if first[128:132] == b"DICM":
        meta, pos = _read_meta(src, 132, keep_meta)
    elif first[:2] == b"\x02\x00" and first[4:6] in _ALL_VRS:  # meta, no preamble
        meta, pos = _read_meta(src, 0, keep_meta)
    elif first[:4] == b"DICM" and first[4:6] == b"\x02\x00":  # DICM, no preamble
        meta, pos = _read_meta(src, 4, keep_meta)
    else:
        meta, pos = {}, 0
    ts = _text(meta.get(0x00020010), 0x00020010, None)
    sop_class = _text(meta.get(0x00020002), 0x00020002, None)
    if sop_class == DICOMDIR_SOP_CLASS:
        raise DicomReadError(f"{path}: DICOMDIR (a media index, not an image)")
    if (meta or first[128:132] == b"DICM") and pos + 8 > src.size:
        raise _Truncated("no data set after the file meta information")
    head = src.read_at(pos, min(8, src.size - pos)) if pos < src.size else b""
    if ts == DEFLATED_LE:
        fh.seek(pos)
        src, pos = _inflated(path, fh.read()), 0
        syntax = _Syntax(True, True)
    elif ts is None:
        guessed = _guess_syntax(head)
        if guessed is None:
            if meta or first[128:132] == b"DICM":
                raise _Truncated("no data set after the file meta information")
            raise NotDicomError(f"{path}: not a DICOM file (no DICM prefix, no DICOM data)")
        forced = not meta
        syntax = guessed
    else:
        syntax = _syntax_of(ts)
        if len(head) >= 6:  # trust the data over the meta (mislabelled exports exist)
            looks_explicit = head[4:6] in _ALL_VRS
            if looks_explicit != syntax.explicit and syntax.little:
                syntax = _Syntax(True, looks_explicit)
    return _DataSet(src, pos, syntax, meta, ts, forced)


def _looks_like_dicom(values: dict[int, _Raw]) -> bool:
    """For files read without a DICM prefix: a SOP class UID or a few identifying elements."""
    sop = values.get(0x00080016)
    if sop is not None:
        uid = sop[1].rstrip(b" \x00")
        return bool(uid) and all(c in b"0123456789." for c in uid)
    known = sum(1 for tag in values if tag >> 16 == 0x0008)
    return known >= 3


# --------------------------------------------------------------------------- text, anywhere


def read_texts(
    path: Path, deep: Mapping[int, bytes], top: Mapping[int, bytes] | None = None
) -> dict[int, list[str]]:
    """The values of the elements ``deep`` wherever they are in the header of ``path``:
    the file meta information, the data set, and the items of its standard (not private)
    sequences, at any depth; and of the elements ``top`` in the data set itself.

    ``deep`` and ``top`` map each tag to its dictionary VR (used when the file does not
    give one). Each value is decoded with the character set of the data set or item that
    holds it (an item without one inherits its parent's), split at backslashes and
    stripped of padding; empty values are left out. The walk stops at the pixel data.

    Raises :class:`DicomReadError` for a file that cannot be read or walked.
    """
    wanted = {**(top or {}), **deep}
    found: dict[int, list[str]] = {}
    forced = False
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size == 0:
                raise NotDicomError(f"{path}: empty file (0 bytes)")
            data_set = _data_set(path, fh, st, fh.read(_FIRST_READ), (0x0002, 0x0010, 0x0016))
            forced = data_set.forced
            for tag, raw in data_set.meta.items():
                if tag in deep:
                    _keep_texts(found, tag, raw, deep[tag], None)
            walk = _TextWalk(data_set.src, deep, wanted, found)
            walk.item(data_set.pos, data_set.src.size, data_set.syntax, None, 0)
    except OSError as exc:
        raise DicomReadError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (
        _Malformed,
        struct.error,
        IndexError,
        ValueError,
        OverflowError,
        UnicodeError,
        LookupError,
    ) as exc:
        raise _read_error(path, exc, forced) from exc
    return found


#: text VRs of one value each, a backslash included (the others are split at backslashes)
_SINGLE_TEXT_VRS = frozenset({b"ST", b"LT", b"UT"})


def _keep_texts(
    found: dict[int, list[str]],
    tag: int,
    raw: _Raw,
    vr: bytes,
    encodings: Sequence[str] | None,
) -> None:
    if raw[0] is None or raw[0] == b"UN":
        raw = (vr, raw[1])
    if raw[0] in _SINGLE_TEXT_VRS:
        text = _text(raw, tag, encodings)
        values: Sequence[str] = (text,) if text else ()
    else:
        values = _strings(raw, tag, encodings)
    found.setdefault(tag, []).extend(v for v in values if v)


#: the leading bytes of a sequence item (how a sequence is told in implicit VR or UN)
_ITEM_START = {True: struct.pack("<HH", 0xFFFE, 0xE000), False: struct.pack(">HH", 0xFFFE, 0xE000)}


def _un_syntax(src: _Source, pos: int, end: int | None) -> _Syntax:
    """The encoding of the items of a sequence stored as UN from ``pos`` to ``end`` (None:
    its delimiter): implicit VR little endian as the standard says, or explicit VR when
    the first element of the first item carries a VR (some exports), as pydicom tells
    them apart."""
    if (end is None or end - pos >= 14) and pos + 14 <= src.size:
        head = src.read_at(pos, 14)
        if head[:4] == _ITEM_START[True] and head[12:14] in _ALL_VRS:
            return _Syntax(True, True)
    return _Syntax(True, False)


@dataclass
class _TextWalk:
    """:func:`read_texts`' walk of a data set and of its sequences' items."""

    src: _Source
    deep: Mapping[int, bytes]  #: read at any depth
    wanted: Mapping[int, bytes]  #: read at the top level (``deep`` and the ``top`` ones)
    found: dict[int, list[str]]

    def item(
        self,
        pos: int,
        end: int | None,
        syntax: _Syntax,
        encodings: Sequence[str] | None,
        depth: int,
    ) -> int:
        """Walk the elements from ``pos`` to ``end`` (None: to an item delimiter); the
        position after them. ``encodings``: the parent's character set."""
        src = self.src
        while end is None or pos < end:
            tag, vr, length, vpos = _element_header(src, pos, syntax)
            group = tag >> 16
            if tag == _ITEM_END and end is None:
                pos = vpos
                break
            if depth == 0 and group >= 0x7FE0:  # the pixel data, and what follows it
                break
            if length == 0xFFFFFFFF:
                inner = _un_syntax(src, vpos, None) if vr == b"UN" else syntax
                if group % 2 or vr not in (None, b"SQ", b"UN"):  # private, or not a sequence
                    pos = _skip_undefined(src, vpos, inner, depth + 1)
                else:
                    pos = self.sequence(vpos, None, inner, encodings, depth + 1)
                continue
            pos = vpos + length
            if pos > src.size:
                raise _Truncated("an element runs past the end of the file")
            if group % 2:  # private: neither read nor walked
                continue
            if tag == 0x00080005:  # it precedes every sequence: they use it
                if length <= _MAX_VALUE:  # (a longer one is hostile: the default stays)
                    raw = (vr, src.read_at(vpos, length))
                    encodings = _encodings(_decoded(_strings, raw, tag, None))
            elif tag in self.wanted and (depth == 0 or tag in self.deep):
                if length <= _MAX_VALUE:
                    raw = (vr, src.read_at(vpos, length))
                    _keep_texts(self.found, tag, raw, self.wanted[tag], encodings)
            elif length >= 8 and (
                vr == b"SQ"
                or (vr in (None, b"UN") and src.read_at(vpos, 4) == _ITEM_START[syntax.little])
            ):
                # (a value of an implicit VR or UN element that starts with an item is taken
                # for a sequence; one that then cannot be walked refuses the whole file,
                # which is left to pydicom)
                inner = _un_syntax(src, vpos, pos) if vr == b"UN" else syntax
                self.sequence(vpos, pos, inner, encodings, depth + 1)
        return pos

    def sequence(
        self,
        pos: int,
        end: int | None,
        syntax: _Syntax,
        encodings: Sequence[str] | None,
        depth: int,
    ) -> int:
        """Walk the items of a sequence from ``pos`` to ``end`` (None: to its delimiter)."""
        if depth > _MAX_DEPTH:
            raise _Malformed("sequences nested too deep")
        items = _Syntax(syntax.little, False)
        while end is None or pos < end:
            tag, _vr, length, vpos = _element_header(self.src, pos, items)
            if tag == _SEQ_END:
                return vpos
            if tag != _ITEM:
                raise _Malformed(f"expected a sequence item at byte {pos}, found tag {tag:08X}")
            item_end = None if length == 0xFFFFFFFF else vpos + length
            pos = self.item(vpos, item_end, syntax, encodings, depth)
        return pos
