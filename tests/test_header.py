"""Tests of bidsport.header: the fast DICOM header reader.

Every claim is checked against pydicom (the reference decoder) on synthetic series and
on the real vendor files of ../shared/data, in every transfer syntax we support.
"""

from __future__ import annotations

import os
import random
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.fileset import FileSet
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
)

from bidsport import header
from bidsport.errors import DicomReadError
from bidsport.header import read_header, read_texts
from bidsport.records import FileHeader
from bidsport.runner import run_command
from bidsport.synthetic import SeriesSpec, Study, series_datasets, typical_session, write_series

# --------------------------------------------------------------------------- helpers


def _save(ds: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def _one(spec: SeriesSpec | None = None, **changes: Any) -> Dataset:
    """The first dataset of a small synthetic series, with attributes changed."""
    ds = series_datasets(spec or SeriesSpec("t1", 3, n_slices=1))[0]
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _first_value(value: Any) -> Any:
    return value[0] if isinstance(value, MultiValue | list) else value


def _values(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, MultiValue | list):
        return tuple(str(v) for v in value)
    return (str(value),)


def _expected(ds: Dataset) -> dict[str, Any]:
    """What read_header must report for a classic dataset, according to pydicom."""

    def get(keyword: str, conv: Any = None) -> Any:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        return conv(value) if conv else value

    def text(keyword: str) -> str | None:
        value = get(keyword)
        if value is None:
            return None
        if isinstance(value, MultiValue):
            return "\\".join(str(v) for v in value)
        return str(value).strip() or None

    return {
        "sop_class_uid": text("SOPClassUID"),
        "sop_instance_uid": text("SOPInstanceUID"),
        "study_uid": text("StudyInstanceUID"),
        "series_uid": text("SeriesInstanceUID"),
        "frame_of_reference_uid": text("FrameOfReferenceUID"),
        "modality": text("Modality"),
        "manufacturer": text("Manufacturer"),
        "model": text("ManufacturerModelName"),
        "software_versions": text("SoftwareVersions"),
        "series_number": get("SeriesNumber", int),
        "instance_number": get("InstanceNumber", int),
        "acquisition_number": get("AcquisitionNumber", int),
        "echo_number": get("EchoNumbers", lambda v: int(_first_value(v))),
        "temporal_position": get("TemporalPositionIdentifier", int),
        "series_description": text("SeriesDescription"),
        "protocol_name": text("ProtocolName"),
        "sequence_name": text("SequenceName"),
        "image_type": tuple(v.upper() for v in _values(ds.get("ImageType"))),
        "scanning_sequence": _values(ds.get("ScanningSequence")),
        "sequence_variant": _values(ds.get("SequenceVariant")),
        "scan_options": _values(ds.get("ScanOptions")),
        "mr_acquisition_type": text("MRAcquisitionType"),
        "repetition_time": get("RepetitionTime", float),
        "echo_time": get("EchoTime", float),
        "inversion_time": get("InversionTime", float),
        "flip_angle": get("FlipAngle", float),
        "magnetic_field_strength": get("MagneticFieldStrength", float),
        "in_plane_phase_encoding": text("InPlanePhaseEncodingDirection"),
        "image_orientation": tuple(float(v) for v in ds.get("ImageOrientationPatient", [])),
        "image_position": tuple(float(v) for v in ds.get("ImagePositionPatient", [])),
        "rows": get("Rows", int),
        "columns": get("Columns", int),
        "study_date": text("StudyDate"),
        "series_date": text("SeriesDate"),
        "acquisition_date": text("AcquisitionDate"),
        "acquisition_time": text("AcquisitionTime"),
        "series_time": text("SeriesTime"),
        "content_time": text("ContentTime"),
        "has_pixel_data": "PixelData" in ds,
        "burned_in_annotation": text("BurnedInAnnotation"),
    }


def _assert_matches(h: FileHeader, ds: Dataset) -> None:
    expected = _expected(ds)
    got = {name: getattr(h, name) for name in expected}
    assert got == expected, {k: (got[k], v) for k, v in expected.items() if got[k] != v}


def _real_files(shared_data: Path) -> list[Path]:
    return sorted(
        Path(folder) / name
        for data_in in sorted(shared_data.glob("dcm_qa_*/In"))
        for folder, _dirs, names in os.walk(data_in)
        for name in names
    )


# --------------------------------------------------------------------------- synthetic


def test_synthetic_session_matches_pydicom(tmp_path: Path) -> None:
    for spec in typical_session():
        for path in write_series(spec, tmp_path / spec.description):
            h = read_header(path)
            ds = pydicom.dcmread(path)
            _assert_matches(h, ds)
            assert h.path == path
            assert (h.size, h.mtime_ns) == (path.stat().st_size, path.stat().st_mtime_ns)
            assert h.transfer_syntax_uid == ExplicitVRLittleEndian
            assert h.b_value == (float(ds.DiffusionBValue) if "DiffusionBValue" in ds else None)
            assert h.number_of_frames is None
            assert h.complex_image_component is None


def test_spec_values_come_through(tmp_path: Path) -> None:
    spec = SeriesSpec(
        "dMRI_b", 7, n_slices=2, n_volumes=3, b_values=(0, 1000, 2000), echo_time=89.0,
        repetition_time=3000.0, inversion_time=None, orientation="coronal",
        image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"), scan_options=("FS",),
        acquisition_time="101500.000000",
    )  # fmt: skip
    headers = [read_header(p) for p in write_series(spec, tmp_path)]
    assert [h.b_value for h in headers] == [0.0, 0.0, 1000.0, 1000.0, 2000.0, 2000.0]
    assert [h.temporal_position for h in headers] == [1, 1, 2, 2, 3, 3]
    first = headers[0]
    assert first.image_orientation == (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    assert first.image_type == ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE")
    assert first.scan_options == ("FS",)
    assert (first.echo_time, first.repetition_time, first.inversion_time) == (89.0, 3000.0, None)
    assert first.acquisition_time == "101500.000000"
    assert first.has_pixel_data


# --------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
)
def test_transfer_syntaxes(tmp_path: Path, syntax: str) -> None:
    ds = _one(SeriesSpec("dwi", 4, n_slices=1, b_values=(1000,)))
    reference = read_header(_save(ds, tmp_path / "explicit.dcm"))
    path = _save(ds, tmp_path / "other.dcm", syntax)
    h = read_header(path)
    assert h.transfer_syntax_uid == syntax
    _assert_matches(h, pydicom.dcmread(path))
    assert h.b_value == 1000.0
    ignore = {"path", "size", "mtime_ns", "transfer_syntax_uid"}
    for name in FileHeader.__dataclass_fields__:
        if name not in ignore:
            assert getattr(h, name) == getattr(reference, name), name


def test_a_deflated_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deflated data set is inflated in memory: one that inflates past MAX_INFLATED
    (zeros compress ~1000:1) is refused once MAX_INFLATED + 1 bytes are out, naming the
    file and the reason; one below the limit is read."""
    from bidsport import header

    ds = _one(SeriesSpec("t1", 2, n_slices=1, rows=512, columns=512))
    ds.PixelData = bytes(len(ds.PixelData))
    path = _save(ds, tmp_path / "zeros.dcm", DeflatedExplicitVRLittleEndian)
    assert path.stat().st_size < 64 * 1024 < 512 * 512 * 2  # highly compressed
    assert read_header(path).has_pixel_data
    monkeypatch.setattr(header, "MAX_INFLATED", 256 * 1024)
    with pytest.raises(DicomReadError) as caught:
        read_header(path)
    assert str(caught.value) == (
        f"{path}: deflated data set inflates to more than 0.25 MiB: not read "
        "(a decompression bomb?)"
    )


def _zeros_deflated(tmp_path: Path, rows: int, frames: int = 1) -> tuple[Dataset, Path]:
    ds = _one(SeriesSpec("t1", 2, n_slices=1, rows=rows, columns=rows))
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = bytes(rows * rows * 2 * frames)
    return ds, _save(ds, tmp_path / "zeros.dcm", DeflatedExplicitVRLittleEndian)


def test_a_deflated_data_set_is_read_with_only_its_first_bytes_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past INFLATED_KEPT bytes a deflated data set is only counted; the part the walk
    needs beyond (the pixel data's element header) is inflated again: the record is the
    one a file kept whole gives, and no more than what is kept is held in memory."""
    import tracemalloc

    ds, path = _zeros_deflated(tmp_path, 1024, frames=16)  # 32 MiB of pixel data
    reference = read_header(_save(ds, tmp_path / "explicit.dcm"))
    monkeypatch.setattr(header, "INFLATED_KEPT", 1 << 20)
    tracemalloc.start()
    try:
        h = read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the whole data set: 32 MiB
    assert h.has_pixel_data and h.number_of_frames == 16
    ignore = {"path", "size", "mtime_ns", "transfer_syntax_uid"}
    for name in FileHeader.__dataclass_fields__:
        if name not in ignore:
            assert getattr(h, name) == getattr(reference, name), name


def test_a_huge_character_set_value_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Specific Character Set of 4 MiB (a small deflated file: hostile) is skipped by
    the identifier reader, as every value longer than a MiB is: it read the whole value,
    inflating it in memory."""
    import tracemalloc

    ds = _one()
    with warnings.catch_warnings():  # (pydicom: a CS value is 16 characters at most)
        warnings.simplefilter("ignore")
        ds.add_new(0x00080005, "CS", " " * (4 << 20))
        path = _save(ds, tmp_path / "charset.dcm", DeflatedExplicitVRLittleEndian)
    assert path.stat().st_size < 1 << 20
    monkeypatch.setattr(header, "INFLATED_KEPT", 256 << 10)
    tracemalloc.start()
    try:
        texts = read_texts(path, {0x00100010: b"PN"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert texts == {0x00100010: [str(ds.PatientName)]}
    assert peak < 6 << 20, peak


def test_a_deflated_header_longer_than_what_is_kept_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header the walk would have to inflate again and again (longer than
    INFLATED_KEPT) is refused, naming the file; cut short, a deflated file is truncated."""
    ds = _one()
    block = ds.private_block(0x0019, "ACME 1.0", create=True)
    for offset in range(6):  # 600 kB of private values before the pixel data
        block.add_new(offset, "OB", bytes(100_000))
    path = _save(ds, tmp_path / "long.dcm", DeflatedExplicitVRLittleEndian)
    assert read_header(path).has_pixel_data
    monkeypatch.setattr(header, "INFLATED_KEPT", 64 << 10)
    with pytest.raises(DicomReadError) as caught:
        read_header(path)
    assert str(caught.value) == (
        f"{path}: the header of its deflated data set runs past 0.0625 MiB: not read"
    )
    monkeypatch.undo()
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 40])  # inside the deflated pixel data
    with pytest.raises(DicomReadError, match="truncated"):
        read_header(cut)
    # cut inside its header: the elements read end well, but the stream does not
    small = _save(_one(), tmp_path / "small.dcm", DeflatedExplicitVRLittleEndian).read_bytes()
    start = small.index(b"1.2.840.10008.1.2.1.99") + 40  # past the file meta
    for end in range(start, len(small) - 1, 37):
        cut.write_bytes(small[:end])
        with pytest.raises(DicomReadError, match="truncated"):
            read_header(cut)


def test_no_preamble(tmp_path: Path) -> None:
    """A file meta without the 128-byte preamble, and a bare data set, are both read."""
    ds = _one()
    full = _save(ds, tmp_path / "full.dcm").read_bytes()
    meta_only = tmp_path / "nopreamble"
    meta_only.write_bytes(full[132:])
    del ds.file_meta
    bare = tmp_path / "bare"
    ds.save_as(bare, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert bare.read_bytes()[:2] == b"\x08\x00"  # starts with the data set itself
    implicit_bare = tmp_path / "implicit_bare"
    ds.save_as(implicit_bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert implicit_bare.read_bytes()[4:6] != b"CS"
    dicm_first = tmp_path / "dicm_first"
    dicm_first.write_bytes(full[128:])
    reference = read_header(tmp_path / "full.dcm")
    assert reference.has_preamble
    for path in (meta_only, dicm_first, bare, implicit_bare):
        h = read_header(path)
        assert h.sop_instance_uid == reference.sop_instance_uid
        assert h.series_description == "t1"
        assert h.repetition_time == reference.repetition_time
        assert h.has_pixel_data
        assert not h.has_preamble, path.name  # organize re-reads only these files


def test_character_sets(tmp_path: Path) -> None:
    ds = _one(SpecificCharacterSet="ISO_IR 192", SeriesDescription="Gehirn: Übersicht ✓ 脳")
    h = read_header(_save(ds, tmp_path / "utf8.dcm"))
    assert h.series_description == "Gehirn: Übersicht ✓ 脳"
    ds = _one(SpecificCharacterSet="ISO_IR 100", ProtocolName="Protokoll für Kopf")
    assert read_header(_save(ds, tmp_path / "latin1.dcm")).protocol_name == "Protokoll für Kopf"


def test_utf8_is_decoded_as_pydicom_does_without_importing_it(tmp_path: Path) -> None:
    ds = _one(SpecificCharacterSet="ISO_IR 192", SeriesDescription="Gehirn: Übersicht ✓ 脳")
    utf8 = _save(ds, tmp_path / "utf8.dcm")
    broken = tmp_path / "broken.dcm"  # not UTF-8: replacement characters, as pydicom gives
    broken.write_bytes(utf8.read_bytes().replace("Ü".encode(), b"\xdc "))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the replacement
        expected = str(pydicom.dcmread(broken).SeriesDescription)
    assert "\ufffd" in expected and read_header(broken).series_description == expected
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bidsport.header import read_header\n"
        f"print(read_header(Path({str(utf8)!r})).series_description)\n"
        "print('pydicom' in sys.modules)\n"
    )
    result = run_command([sys.executable, "-c", probe], timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["Gehirn: Übersicht ✓ 脳", "False"]


def test_pixel_data_variants(tmp_path: Path) -> None:
    # trailing padding after the pixel data: the end-of-file shortcut does not apply
    ds = _one()
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 64)  # DataSetTrailingPadding
    assert read_header(_save(ds, tmp_path / "padded.dcm")).has_pixel_data
    # a large private group after the last group read, then the pixel data
    ds = _one()
    block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
    for i in range(200):
        block.add_new(i, "DS", str(i))
    block2 = ds.private_block(0x2007, "BLOB", create=True)
    block2.add_new(0x01, "OB", os.urandom(300_000))  # beyond the first 64 KiB
    private = _save(ds, tmp_path / "private.dcm")
    h = read_header(private)
    assert h.has_pixel_data and h.rows == 16
    cut = tmp_path / "private_cut.dcm"
    cut.write_bytes(private.read_bytes()[:-10])  # the end-of-file check fails: walked
    with pytest.raises(DicomReadError, match="truncated"):
        read_header(cut)
    # float pixel data (parametric maps) counts as pixel data
    ds = _one()
    del ds.PixelData
    ds.BitsAllocated = 32
    ds.FloatPixelData = struct.pack("<256f", *range(256))
    assert read_header(_save(ds, tmp_path / "float.dcm")).has_pixel_data
    # and a header without any
    ds = _one()
    del ds.PixelData
    assert not read_header(_save(ds, tmp_path / "nopixels.dcm")).has_pixel_data


def test_values_beyond_the_first_read(tmp_path: Path) -> None:
    """Wanted elements after a big private blob are still found (the window moves)."""
    ds = _one()
    ds.private_block(0x0009, "BIG", create=True).add_new(0x01, "OB", b"x" * 200_000)
    ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "1500")
    h = read_header(_save(ds, tmp_path / "big.dcm"))
    assert h.b_value == 1500.0
    assert h.series_uid == ds.SeriesInstanceUID and h.rows == 16 and h.has_pixel_data


def _with_undefined_sequences(path: Path, items: int = 2, **changes: Any) -> Path:
    """A file with ReferencedImageSequence (``items`` items, a nested sequence in each)
    written with undefined lengths, as scanners do."""
    ds = _one(**changes)
    item = Dataset()
    item.ReferencedSOPClassUID = MRImageStorage
    inner = Dataset()
    inner.CodeValue = "121311"
    item.PurposeOfReferenceCodeSequence = [inner]
    ds.ReferencedImageSequence = [item] * items
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    # pydicom writes defined lengths; rewrite them as undefined
    raw = pydicom.dcmread(path)
    for elem in raw.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for it in elem.value:
                it.is_undefined_length_sequence_item = True
    raw.save_as(path)
    assert b"\xfe\xff\xdd\xe0" in path.read_bytes()  # a sequence delimiter is there
    return path


def test_undefined_length_sequences_are_skipped(tmp_path: Path) -> None:
    path = _with_undefined_sequences(tmp_path / "seq.dcm")
    _assert_matches(read_header(path), pydicom.dcmread(path))


# --------------------------------------------------------------------------- vendor private tags


@pytest.mark.parametrize(
    ("group", "creator", "element", "vr", "value", "expected"),
    [
        (0x0019, "SIEMENS MR HEADER", 0x0C, "IS", "1000", 1000.0),
        (0x0043, "GEMS_PARM_01", 0x39, "IS", ["1000000700", "8", "0", "0"], 700.0),
        (0x0043, "GEMS_PARM_01", 0x39, "IS", ["1500", "8", "0", "0"], 1500.0),
        (0x2001, "Philips Imaging DD 001", 0x03, "FL", 2000.0, 2000.0),
        (0x0019, "SOMETHING ELSE", 0x0C, "IS", "1000", None),  # wrong creator: ignored
    ],
)
def test_private_b_values(
    tmp_path: Path, group: int, creator: str, element: int, vr: str, value: Any, expected: Any
) -> None:
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds = _one()
        ds.private_block(group, "OTHER VENDOR", create=True).add_new(element, vr, value)
        ds.private_block(group, creator, create=True).add_new(element, vr, value)
        h = read_header(_save(ds, tmp_path / "b.dcm", syntax))
        assert h.b_value == expected, syntax


def test_standard_b_value_wins_and_ge_image_type(tmp_path: Path) -> None:
    ds = _one(DiffusionBValue=800.0)
    ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "1000")
    assert read_header(_save(ds, tmp_path / "a.dcm")).b_value == 800.0
    ds = _one(Manufacturer="GE MEDICAL SYSTEMS")
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x2F, "SS", 1)
    assert read_header(_save(ds, tmp_path / "b.dcm")).complex_image_component == "PHASE"


# --------------------------------------------------------------------------- where the walk ends
# Past group 0028 a classic file needs only the GE and Philips private blocks: the walk
# ends at the last element of those it can still find (see header._walk_limit). These
# files put the blocks where a wrong end would miss them.

_GE = "GEMS_PARM_01"
_PHILIPS = "Philips Imaging DD 001"


def _late_blocks(ds: Dataset, layout: str) -> tuple[float | None, str | None]:
    """Add the private groups of ``layout``; return the expected (b_value, component)."""

    def block(group: int, creator: str, *elements: tuple[int, str, Any]) -> None:
        private = ds.private_block(group, creator, create=True)
        for offset, vr, value in elements:
            private.add_new(offset, vr, value)

    decoy_b = (0x03, "FL", 5.0)  # the wanted offset, in another creator's block
    after = [(offset, "DS", str(offset)) for offset in range(0x40, 0x70)]  # not wanted
    if layout == "philips_late_block":  # the third block of its group, elements after it
        block(0x2001, "Philips Imaging DD 002", decoy_b)
        block(0x2001, "Philips Imaging DD 005", decoy_b)
        block(0x2001, _PHILIPS, (0x03, "FL", 2000.0), *after)
        block(0x2005, "Philips MR Imaging DD 001", *after)
        return 2000.0, None
    if layout == "ge_late_block":
        block(0x0043, "GEMS_IDEN_01", (0x39, "IS", ["300", "0", "0", "0"]), (0x2F, "SS", 3))
        block(0x0043, _GE, (0x2F, "SS", 1), (0x39, "IS", ["1000001000", "8", "0", "0"]))
        return 1000.0, "PHASE"
    if layout == "ge_then_philips":  # GE gives the image type, Philips the b-value
        block(0x0043, _GE, (0x2F, "SS", 2), *after)
        block(0x2001, _PHILIPS, (0x03, "FL", 1500.0))
        return 1500.0, "REAL"
    if layout == "after_other_private_groups":  # and a creator's name in another value
        block(0x0029, "SIEMENS CSA HEADER", (0x10, "OB", bytes(range(256)) * 12))
        block(0x0031, "ACME 1.0", (0x01, "LO", _GE), *after)
        block(0x2001, _PHILIPS, (0x03, "FL", 700.0))
        return 700.0, None
    if layout == "beyond_the_first_read":  # the bytes before the block are not all read
        block(0x0029, "BLOB", (0x01, "OB", b"\x01" * 150_000))
        block(0x2001, _PHILIPS, (0x03, "FL", 900.0))
        return 900.0, None
    if layout == "pixel_data_not_at_the_end":
        block(0x2001, _PHILIPS, (0x03, "FL", 800.0))
        ds.add_new(0xFFFCFFFC, "OB", b"\0" * 64)  # DataSetTrailingPadding
        return 800.0, None
    if layout == "creator_name_but_no_block":
        block(0x0029, "ACME 1.0", (0x01, "LO", _PHILIPS), (0x02, "LO", _GE))
        return None, None
    raise AssertionError(layout)


_LAYOUTS = [
    "philips_late_block",
    "ge_late_block",
    "ge_then_philips",
    "after_other_private_groups",
    "beyond_the_first_read",
    "pixel_data_not_at_the_end",
    "creator_name_but_no_block",
]


@pytest.mark.parametrize("layout", _LAYOUTS)
@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
    ],
)
def test_late_private_blocks_are_found(tmp_path: Path, layout: str, syntax: str) -> None:
    ds = _one()
    expected = _late_blocks(ds, layout)
    if syntax == JPEGBaseline8Bit:  # encapsulated: one made-up fragment
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    path = _save(ds, tmp_path / "late.dcm", syntax)
    h = read_header(path)
    assert (h.b_value, h.complex_image_component) == expected
    assert h.has_pixel_data
    _assert_matches(h, pydicom.dcmread(path))


@pytest.mark.parametrize("padding", [b"\0\0", b"  ", b" \0"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_padded_private_creators(tmp_path: Path, padding: bytes, syntax: str) -> None:
    for creator, group, offset, vr, value in (
        (_GE, 0x0043, 0x39, "IS", ["1200", "8", "0", "0"]),
        (_PHILIPS, 0x2001, 0x03, "FL", 1200.0),
    ):
        ds = _one()
        ds.private_block(group, "ACME 1.0", create=True).add_new(0x01, "LO", "x")
        ds.private_block(group, creator + "XX", create=True).add_new(offset, vr, value)
        data = _save(ds, tmp_path / "padded.dcm", syntax).read_bytes()
        assert data.count(creator.encode() + b"XX") == 1
        path = tmp_path / "padded.dcm"
        path.write_bytes(data.replace(creator.encode() + b"XX", creator.encode() + padding))
        assert read_header(path).b_value == 1200.0, creator


def _bogus_length(path: Path, tag: int) -> None:
    """Make the OB element ``tag`` of an explicit little endian file claim 2 GB."""
    data = path.read_bytes()
    head = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, b"OB", 0)
    assert data.count(head) == 1
    at = data.index(head) + 8
    path.write_bytes(data[:at] + struct.pack("<L", 0x7FFFFFF0) + data[at + 4 :])


@pytest.mark.parametrize(
    ("creator", "wanted", "bogus", "read"),
    [
        (None, None, 0x00291001, True),  # nothing wanted past group 0028
        (_PHILIPS, 0x20011103, 0x20011104, True),  # just past the wanted element
        (_PHILIPS, 0x20011103, 0x20011102, False),  # just before it
        (_PHILIPS, 0x20011103, 0x20010012, False),  # among the creators
        (_GE, 0x00431139, 0x00431138, False),
        (_GE, 0x00431139, 0x00431140, True),
    ],
)
def test_the_walk_ends_at_the_last_element_needed(
    tmp_path: Path, creator: str | None, wanted: int | None, bogus: int, read: bool
) -> None:
    """What follows the last element needed is not walked: an element there with a bogus
    length goes unnoticed (as one after group 2001 always did), one before it is not."""
    ds = _one()
    group = bogus >> 16
    ds.private_block(group, "ACME 1.0", create=True)  # block 10 (the wanted one is 11)
    if creator is not None and wanted is not None:
        ds.private_block(group, creator, create=True).add_new(wanted & 0xFF, "FL", 600.0)
    ds.add_new(bogus, "OB", b"\0" * 8)
    path = _save(ds, tmp_path / "bogus.dcm")
    _bogus_length(path, bogus)
    if read:
        h = read_header(path)
        assert h.has_pixel_data and h.rows == 16
        assert h.b_value == (None if creator is None else 600.0)
    else:
        with pytest.raises(DicomReadError, match="truncated"):
            read_header(path)


def test_pixel_data_inside_a_walked_value_is_not_trusted(tmp_path: Path) -> None:
    """The file ends like pixel data of the right size, but that "element" starts inside
    the wanted value, which the walk reads through: it is no pixel data."""
    ds = _one()
    del ds.PixelData  # 16 x 16 x 16 bits: 512 bytes
    fake = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 512)
    block = ds.private_block(0x2001, _PHILIPS, create=True)
    block.add_new(0x03, "UN", struct.pack("<f", 600.0) + fake + b"\0" * 100)
    block.add_new(0x10, "OB", b"\0" * 400)
    path = _save(ds, tmp_path / "inside.dcm")
    assert path.read_bytes()[-524:-512] == fake
    h = read_header(path)
    assert h.b_value == 600.0
    assert not h.has_pixel_data


# --------------------------------------------------------------------------- bad files


def test_empty_text_and_random_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(DicomReadError, match="empty file"):
        read_header(empty)
    text = tmp_path / "notes.txt"
    text.write_text("Subject Name:  TEST\nStudy Date:  20180918\n" * 20)
    with pytest.raises(DicomReadError, match="not a DICOM file"):
        read_header(text)
    rng = random.Random(7)
    for i in range(300):
        junk = tmp_path / f"junk{i}"
        junk.write_bytes(rng.randbytes(rng.randrange(1, 3000)))
        with pytest.raises(DicomReadError):
            read_header(junk)
    # random bytes that start like a data set are still refused
    for i in range(300):
        junk = tmp_path / f"start{i}"
        body = rng.randbytes(rng.randrange(1, 800))
        junk.write_bytes(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + body)
        with pytest.raises(DicomReadError):
            read_header(junk)
    missing = tmp_path / "missing.dcm"
    with pytest.raises(DicomReadError, match="cannot read"):
        read_header(missing)


def _element_spans(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte offsets of the top-level elements of an explicit LE file."""
    data = path.read_bytes()
    spans, pos = [], 132
    while pos < len(data):
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL"):
            length = struct.unpack_from("<L", data, pos + 8)[0]
            end = pos + 12 + length
        else:
            end = pos + 8 + struct.unpack_from("<H", data, pos + 6)[0]
        spans.append((pos, end))
        pos = end
    return spans


def test_truncated_files(tmp_path: Path) -> None:
    source = _save(_one(), tmp_path / "whole.dcm")
    data = source.read_bytes()
    spans = _element_spans(source)
    assert spans[-1][1] == len(data)
    cut = tmp_path / "cut.dcm"
    cuts = [5, 100, 131, 135, 140]  # in the preamble, the prefix, the meta
    cuts += [start + 3 for start, _ in spans]  # inside each element header
    cuts += [(start + end) // 2 for start, end in spans if end - start > 16]  # inside values
    cuts += [len(data) - 1, len(data) - 100]  # inside the pixel data
    for n in cuts:
        cut.write_bytes(data[:n])
        with pytest.raises(DicomReadError, match=r"truncated|not a DICOM"):
            read_header(cut)
    # cut exactly between two elements: readable, but without pixel data
    cut.write_bytes(data[: spans[-2][1]])
    assert not read_header(cut).has_pixel_data


def test_truncated_real_files(shared_data: Path, tmp_path: Path) -> None:
    """Never an unexpected exception, never pixel data in a cut file (real vendor files)."""
    sources = [
        shared_data / "dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2/i22.MRDC.1",
        shared_data / "dcm_qa_enh/In/Siemens/XA10/6_1.dcm",
        shared_data / "dcm_qa_ts/In/2.dcm",  # implicit VR
        shared_data / "dcm_qa_ts/In/3.dcm",  # big endian
        shared_data / "dcm_qa_ts/In/5.dcm",  # JPEG lossless (encapsulated)
    ]
    rng = random.Random(3)
    cut = tmp_path / "cut"
    for source in sources:
        data = source.read_bytes()
        for n in sorted(rng.sample(range(1, len(data)), 60)):
            cut.write_bytes(data[:n])
            try:
                h = read_header(cut)
            except DicomReadError:
                continue
            assert not h.has_pixel_data, (source.name, n)


def test_dicomdir_is_refused(tmp_path: Path) -> None:
    image = _save(_one(), tmp_path / "image.dcm")
    fs = FileSet()
    fs.add(pydicom.dcmread(image))
    fs.write(tmp_path / "media")
    dicomdir = tmp_path / "media" / "DICOMDIR"
    with pytest.raises(DicomReadError, match=r"DICOMDIR \(a media index, not an image\)"):
        read_header(dicomdir)
    # a hand-made one: directory records but a wrong (image) SOP class in the meta
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    ds.FileSetID = "MEDIA"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.DirectoryRecordSequence = []
    with pytest.raises(DicomReadError, match="DICOMDIR"):
        read_header(_save(ds, tmp_path / "handmade"))


def test_readable_but_incomplete_files(tmp_path: Path) -> None:
    ds = _one()
    del ds.SeriesInstanceUID
    h = read_header(_save(ds, tmp_path / "nouid.dcm"))
    assert h.series_uid is None and h.has_pixel_data
    ds = _one()
    del ds.PixelData
    h = read_header(_save(ds, tmp_path / "nopix.dcm"))
    assert h.series_uid is not None and not h.has_pixel_data


# --------------------------------------------------------------------------- real data


def test_every_real_file(shared_data: Path) -> None:
    """Every file pydicom reads as DICOM is read; every other one is refused, with a reason."""
    files = _real_files(shared_data)
    assert len(files) > 1500
    read = refused = 0
    for path in files:
        try:
            h = read_header(path)
        except DicomReadError as exc:
            assert path.suffix == ".txt", exc  # only the READMEs and notes
            assert "not a DICOM file" in str(exc)
            refused += 1
            continue
        assert h.has_pixel_data and h.series_uid and h.modality == "MR", path
        read += 1
    assert (read, refused) == (len(files) - 13, 13)


def test_real_files_match_pydicom(shared_data: Path) -> None:
    by_folder: dict[Path, list[Path]] = {}
    for path in _real_files(shared_data):
        if path.suffix != ".txt":
            by_folder.setdefault(path.parent, []).append(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about vendors' long values
        for files in by_folder.values():
            for path in files[:4] + files[-2:]:
                ds = pydicom.dcmread(path)
                h = read_header(path)
                if "PerFrameFunctionalGroupsSequence" in ds:
                    continue  # tested below
                _assert_matches(h, ds)
                assert h.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID


def test_transfer_syntax_collection(shared_data: Path) -> None:
    """One image in nine transfer syntaxes: the same header each time."""
    headers = [read_header(p) for p in sorted((shared_data / "dcm_qa_ts/In").glob("*.dcm"))]
    assert len(headers) == 9
    assert len({h.transfer_syntax_uid for h in headers}) == 7
    assert [h.series_number for h in headers] == list(range(1, 10))
    first = headers[0]
    for h in headers:
        assert h.has_pixel_data
        assert h.image_type == ("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC")
        for name in (
            "series_uid",
            "echo_time",
            "repetition_time",
            "image_orientation",
            "image_position",
            "rows",
            "columns",
            "acquisition_time",
            "protocol_name",
        ):
            assert getattr(h, name) == getattr(first, name), (h.path.name, name)  # fmt: skip


def test_vendor_b_values(shared_data: Path) -> None:
    ge = [read_header(p) for p in (shared_data / "dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2").iterdir()]
    bvals = (shared_data / "dcm_qa_ge/Ref/Ax_DWI_TENSOR_R2_1.bval").read_text().split()
    assert {h.b_value for h in ge} == {float(b) for b in bvals} == {0.0, 1000.0}
    philips_dir = shared_data / "dcm_qa_philips/In/Vanderbilt_2018/601_WIP_dti_ax"
    philips = [read_header(p) for p in sorted(philips_dir.iterdir())[:60]]
    assert {h.b_value for h in philips} == {0.0, 2000.0}


def test_enhanced_files(shared_data: Path) -> None:
    siemens = [
        read_header(p) for p in sorted((shared_data / "dcm_qa_enh/In/Siemens/XA10").iterdir())
    ]
    assert [h.temporal_position for h in siemens] == [1, 2, 3, 4]
    for h in siemens:
        assert h.number_of_frames == 6
        assert (h.repetition_time, h.echo_time, h.flip_angle) == (500.0, 30.0, 52.0)
        assert h.in_plane_phase_encoding == "COL"
        assert h.image_type == ("ORIGINAL", "PRIMARY", "M", "NONE")
        assert h.scanning_sequence == ("EP", "GR")
        assert h.complex_image_component == "MAGNITUDE"
        assert h.image_orientation == (1.0, -5e-13, 1e-06, -5e-13, 1.0, 1e-06)
        assert h.acquisition_datetime is not None and h.acquisition_datetime.startswith("2018")
    philips = read_header(shared_data / "dcm_qa_enh/In/Philips/IM_0027_fMAP.dcm")
    ds = pydicom.dcmread(shared_data / "dcm_qa_enh/In/Philips/IM_0027_fMAP.dcm")
    frame = ds.PerFrameFunctionalGroupsSequence[0]
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert philips.number_of_frames == 64
    assert philips.echo_time == frame.MREchoSequence[0].EffectiveEchoTime
    timing = shared.MRTimingAndRelatedParametersSequence[0]
    assert philips.repetition_time == float(timing.RepetitionTime)
    assert philips.flip_angle == float(timing.FlipAngle)
    position = frame.PlanePositionSequence[0].ImagePositionPatient
    assert philips.image_position == tuple(float(v) for v in position)
    assert philips.image_type == ("ORIGINAL", "PRIMARY", "T1", "MIXED", "FIELD_MAP", "M")
    assert philips.complex_image_component == "MIXED"
    assert philips.temporal_position == 1


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_mixed_image_type_is_followed_by_what_its_frames_mix(tmp_path: Path, syntax: str) -> None:
    """A Philips B0 map: one enhanced file of magnitude and field map frames under
    ORIGINAL\\PRIMARY\\T1\\MIXED. The frames' FrameType values follow the ImageType, so the
    series is a field map in Hz by its header, whatever it is called."""
    from bidsport.classify import classify_series
    from bidsport.records import Series

    ds = _one(SeriesSpec("Shim dualTE", 7, n_slices=1))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "T1", "MIXED"]
    kinds = ["M", "M", "FIELD_MAP", "FIELD_MAP"]
    ds.NumberOfFrames = len(kinds)
    ds.PixelData = ds.PixelData * len(kinds)
    frames = []
    for kind in kinds:
        frame_type, content, frame = Dataset(), Dataset(), Dataset()
        frame_type.FrameType = ["ORIGINAL", "PRIMARY", "T1", kind]
        content.TemporalPositionIndex = 1
        frame.MRImageFrameTypeSequence = [frame_type]
        frame.FrameContentSequence = [content]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    h = read_header(_save(ds, tmp_path / "b0.dcm", syntax))
    assert h.image_type == ("ORIGINAL", "PRIMARY", "T1", "MIXED", "FIELD_MAP", "M")
    series = Series("1.2.3", h, (h.path,), 1, image_types=(h.image_type,))
    cls = classify_series(series)
    assert (cls.datatype, cls.suffix) == ("fmap", "fieldmap"), cls.evidence
    ds.ImageType = ["ORIGINAL", "PRIMARY", "T1", "M"]  # not MIXED: as it says
    assert read_header(_save(ds, tmp_path / "m.dcm", syntax)).image_type[3:] == ("M",)


def test_study_independent_reading(tmp_path: Path) -> None:
    """A file from another vendor's study layout: CT is read too (exclusion is not our job)."""
    ds = _one(Modality="CT", Manufacturer="ACME")
    h = read_header(_save(ds, tmp_path / "ct.dcm", ImplicitVRLittleEndian))
    assert (h.modality, h.manufacturer) == ("CT", "ACME")
    study = Study(manufacturer="Philips Medical Systems")
    ds = series_datasets(SeriesSpec("x", 1, n_slices=1), study=study)[0]
    assert read_header(_save(ds, tmp_path / "p.dcm")).manufacturer == "Philips Medical Systems"


# --------------------------------------------------------------------------- layout memory


class _CountingStruct:
    """A struct.Struct whose unpack_from calls are counted (the elements walked)."""

    def __init__(self, inner: struct.Struct, counter: list[int]) -> None:
        self.inner, self.counter = inner, counter

    def unpack_from(self, *args: Any) -> tuple[Any, ...]:
        self.counter[0] += 1
        return self.inner.unpack_from(*args)


def _walked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A counter of the element headers the walk unpacks (explicit VR files)."""
    counter = [0]
    counting = {
        little: _CountingStruct(s, counter) for little, s in header._S_EXPLICIT_CODE.items()
    }
    monkeypatch.setattr(header, "_S_EXPLICIT_CODE", counting)
    return counter


def _alone(path: Path) -> FileHeader | str:
    """read_header with nothing remembered (or the error's message)."""
    header.forget()
    try:
        return read_header(path)
    except DicomReadError as exc:
        return str(exc)


def _in_order(paths: list[Path]) -> dict[Path, FileHeader | str]:
    header.forget()
    found: dict[Path, FileHeader | str] = {}
    for path in paths:
        try:
            found[path] = read_header(path)
        except DicomReadError as exc:
            found[path] = str(exc)
    return found


def test_the_files_of_a_series_are_walked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second file of a series jumps over the chunks it shares with the first, and
    reads the same record as when it is read alone."""
    first, second = write_series(SeriesSpec("t1", 3, n_slices=2), tmp_path)
    header.forget()
    walked = _walked(monkeypatch)
    read_header(first)
    alone = walked[0]
    walked[0] = 0
    h = read_header(second)
    assert walked[0] < alone / 2, (walked[0], alone)
    _assert_matches(h, pydicom.dcmread(second))
    assert h == _alone(second)


@pytest.mark.parametrize("change", ["same length", "longer", "inserted", "removed", "private"])
def test_a_remembered_chunk_is_jumped_only_when_its_bytes_are_the_same(
    tmp_path: Path, change: str
) -> None:
    """A file that differs from the one read before it, in a value the walk keeps or in
    one it skips, reads as it does alone."""
    ds = _one()
    before = _save(ds, tmp_path / "before.dcm")
    ds = _one()
    if change == "same length":
        ds.SeriesDescription = "X" * len(str(ds.SeriesDescription))
    elif change == "longer":
        ds.StudyDescription = "a much longer study description than before"  # (not kept)
    elif change == "inserted":
        ds.ProtocolName = "added"
        ds.StationName = "added too"
    elif change == "removed":
        del ds.SequenceName
    else:
        ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", 1000)
    after = _save(ds, tmp_path / "after.dcm")
    header.forget()
    read_header(before)
    assert header._LAYOUTS
    h = read_header(after)
    assert h == _alone(after)
    _assert_matches(h, pydicom.dcmread(after))
    if change == "private":
        assert h.b_value == 1000.0


@pytest.mark.parametrize("items", [1, 3])
def test_a_remembered_sequence_is_jumped_only_when_its_bytes_are_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, items: int
) -> None:
    """A sequence of undefined length repeated by the next file is not walked again; one
    with other items is, and the elements after it are read."""
    before = _with_undefined_sequences(tmp_path / "before.dcm")
    again = _with_undefined_sequences(tmp_path / "again.dcm", SeriesDescription="again")
    after = _with_undefined_sequences(tmp_path / "after.dcm", items, SeriesDescription="after")
    skip = header._skip_undefined
    walked: list[int] = []  # the sequences walked (not those nested in them)

    def counted(src: Any, pos: int, syntax: Any, depth: int) -> int:
        walked.extend([1] if depth == 1 else [])
        return skip(src, pos, syntax, depth)

    monkeypatch.setattr(header, "_skip_undefined", counted)
    header.forget()
    read_header(before)
    assert walked == [1]
    assert read_header(again).series_description == "again"
    assert walked == [1]  # jumped over
    h = read_header(after)
    assert walked == [1, 1]
    assert h.series_description == "after"
    assert h == _alone(after)
    _assert_matches(h, pydicom.dcmread(after))


def test_reading_order_does_not_change_a_record(tmp_path: Path) -> None:
    paths = []
    for spec in typical_session():
        paths += write_series(spec, tmp_path / spec.description)
    alone = {path: _alone(path) for path in paths}
    assert _in_order(paths) == alone
    assert _in_order(paths[::-1]) == alone
    random.Random(5).shuffle(paths)
    assert _in_order(paths) == alone


def test_real_files_read_alike_in_any_order(shared_data: Path) -> None:
    paths = _real_files(shared_data)
    alone = {path: _alone(path) for path in paths}
    assert _in_order(paths) == alone
    random.Random(7).shuffle(paths)
    assert _in_order(paths) == alone


def test_the_fields_of_a_series_come_from_each_file(tmp_path: Path) -> None:
    """The fields the files of a series share are kept once per process, keyed by every
    value they come from: the file meta's SOP class too, when the data set has none."""
    ds = _one()
    del ds.SOPClassUID
    header.forget()
    first = read_header(_save(ds, tmp_path / "mr.dcm"))
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4.1")  # enhanced MR
    second = read_header(_save(ds, tmp_path / "emr.dcm"))
    assert (first.sop_class_uid, second.sop_class_uid) == (
        MRImageStorage,
        ds.file_meta[0x00020002].value,
    )
    assert first.series_uid == second.series_uid
    assert second.series_uid is read_header(tmp_path / "mr.dcm").series_uid  # (kept once)


class _AskedValues(dict[int, Any]):
    """A file's values that note the tags asked for in ``asked``."""

    def __init__(self, values: dict[int, Any], asked: set[int]) -> None:
        super().__init__(values)
        self.asked = asked

    def get(self, key: int, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def test_the_series_fields_of_a_classic_file_read_only_the_series_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_series_fields reads no element outside _SERIES_TAGS, the key of what is kept: a
    field added there without its tag would be taken from another file of the series."""
    series_fields = header._series_fields
    asked: set[int] = set()

    def noting(f: Any, meta: Any, ts: Any) -> Any:
        values = f.values
        f.values = _AskedValues(values, asked)
        try:
            return series_fields(f, meta, ts)
        finally:
            f.values = values

    monkeypatch.setattr(header, "_series_fields", noting)
    header.forget()
    for spec in typical_session():
        for path in write_series(spec, tmp_path / spec.description)[:1]:
            read_header(path)
    assert asked
    assert asked <= set(header._SERIES_TAGS), sorted(
        hex(t) for t in asked - set(header._SERIES_TAGS)
    )


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


@pytest.mark.parametrize("where", ["at the start", "after a sequence"])
def test_a_file_without_meta_is_never_jumped_over(tmp_path: Path, where: str) -> None:
    """A data set without file meta information is walked element by element (its order
    checked), even after a file with the same data set bytes was read."""
    sequence = b""
    if where == "after a sequence":  # (0008,0006) LanguageCodeSequence, undefined length
        sequence = struct.pack("<HH2sHL", 0x0008, 0x0006, b"SQ", 0, 0xFFFFFFFF)
        sequence += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    data_set = sequence + b"".join(
        [
            _explicit(0x00080060, b"CS", b"MR"),
            _explicit(0x00080016, b"UI", MRImageStorage.encode() + b"\0"),  # out of order
            *(_explicit(0x00090010 + i, b"LO", b"ACME %d " % i) for i in range(12)),
            _explicit(0x0020000E, b"UI", b"1.2.3.4\0"),
        ]
    )
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5")
    # (encapsulated: walked to its end, with the limit of a file without meta)
    ds.file_meta.TransferSyntaxUID = UID(JPEGBaseline8Bit)
    with_meta = tmp_path / "with_meta.dcm"
    ds.save_as(with_meta, enforce_file_format=True)
    with_meta.write_bytes(with_meta.read_bytes() + data_set)
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(data_set)
    header._LAYOUTS.clear()
    assert read_header(with_meta).series_uid == "1.2.3.4"  # (the order is not checked)
    assert header._LAYOUTS
    with pytest.raises(DicomReadError, match=r"not a DICOM file .*out of order"):
        read_header(bare)


def test_the_layout_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(header, "_LAYOUTS", {})
    chunks = header._layout(True, True, 1)
    for i in range(header._LAYOUT_MAX):
        chunks[i] = (b"", -1, ())
    assert header._layout(True, True, 1) is not chunks  # full: emptied
    assert not header._layout(True, True, 1)
    for limit in range(header._LAYOUTS_MAX + 1):
        header._layout(True, True, 100 + limit)
    assert len(header._LAYOUTS) <= header._LAYOUTS_MAX
