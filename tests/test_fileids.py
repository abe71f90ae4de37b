"""Identifiers read from DICOM files without pydicom (bidsport.fileids): the same as
pydicom's reading (bidsport.sourceids) on every encoding, nesting and real vendor file."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from bidsport import fileids
from bidsport.errors import DicomReadError
from bidsport.fileids import KEYWORD_TAGS, identifiers_in_file, read_identifiers
from bidsport.header import read_header, read_texts
from bidsport.phi import SOURCE_KEYWORDS, VENDOR_KEYWORDS
from bidsport.sourceids import identifiers_of_file
from bidsport.synthetic import SeriesSpec, Subject, series_datasets


def test_keyword_tags_are_pydicoms() -> None:
    keywords = [kw for kws in SOURCE_KEYWORDS.values() for kw in kws] + list(VENDOR_KEYWORDS)
    assert sorted(KEYWORD_TAGS) == sorted(keywords)
    for keyword, (tag, vr) in KEYWORD_TAGS.items():
        assert (tag, vr.decode()) == (tag_for_keyword(keyword), dictionary_VR(tag)), keyword


def _item(**values: str) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _dataset(name: str = "Zzleak^Janet", charset: str | None = None) -> Dataset:
    """Identifiers of every kind: top level, nested two deep, in the file meta, and in a
    private sequence (which neither reader walks)."""
    subject = Subject(
        patient_id="ZZPID4242",
        patient_name=name,
        birth_date="19710203",
        extra={
            "OtherPatientNames": ["Zzother^Name", "Zzthird^Name"],
            "OperatorsName": "Zzoperator^Olga",
            "DeviceSerialNumber": "ZZSERIAL55",
            "InstitutionAddress": "1 Zz Road,Zzcity",
        },
    )
    ds = series_datasets(SeriesSpec("t1", 1, n_slices=1), subject)[0]
    if charset:
        ds.SpecificCharacterSet = charset
    inner = _item(PatientID="ZZDEEPID", InstitutionName="Zz Deep Clinic")
    ds.RequestAttributesSequence = [
        _item(RequestedProcedureID="ZZREQ123", ScheduledStationAETitle="ZZSCHED"),
        _item(RequestedProcedureID="ZZREQ456"),
    ]
    ds.OtherPatientIDsSequence = [_item(PatientID="ZZNESTEDID")]
    ds.OtherPatientIDsSequence[0].IssuerOfPatientIDQualifiersSequence = [inner]
    ds.ReferencedStudySequence = []  # an empty sequence
    ds.add_new(0x00290010, "LO", "ZZ PRIVATE")
    ds.add_new(0x00291010, "SQ", [_item(PatientName="Zzprivate^Hidden")])
    ds.Manufacturer = "SIEMENS"
    ds.StationName = "siemens"  # named after the maker: no identifier
    ds.file_meta.SourceApplicationEntityTitle = "ZZAETITLE"
    return ds


def _defined_lengths(ds: Dataset) -> None:
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = False
            for item in element.value:
                item.is_undefined_length_sequence_item = False


def _save(ds: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def _as_un(path: Path, ds: Dataset, keyword: str) -> None:
    """Re-encode a sequence of the explicit VR little endian file ``path`` (written from
    ``ds``, that sequence with a defined length) as UN, its items in implicit VR, as some
    exports do."""
    probe = Dataset()
    setattr(probe, keyword, getattr(ds, keyword))
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, probe)
    raw = fp.getvalue()[8:]  # past the tag and the length
    tag = struct.pack("<HH", *divmod(tag_for_keyword(keyword), 0x10000))
    data = path.read_bytes()
    start = data.index(tag + b"SQ\0\0")
    end = start + 12 + struct.unpack_from("<L", data, start + 8)[0]
    un = tag + b"UN\0\0" + struct.pack("<L", len(raw)) + raw
    path.write_bytes(data[:start] + un + data[end:])
    assert pydicom.dcmread(path)[keyword].VR == "SQ"  # pydicom reads it as the sequence


def _nested_text(ds: Dataset, name: str, institution: str, own_charset: str | None) -> None:
    """Non-ASCII text in a nested item (decoded with the data set's character set, or
    the item's own)."""
    item = _item(PatientID="ZZNONASCII", PatientName=name, InstitutionName=institution)
    if own_charset:
        item.SpecificCharacterSet = own_charset
    ds.ReferencedPatientSequence = [item]


def _un_undefined(path: Path, keyword: str, *, explicit_items: bool) -> None:
    """Re-label a sequence of undefined length of the explicit VR little endian file
    ``path`` as UN (its items re-encoded in implicit VR unless ``explicit_items``)."""
    tag = struct.pack("<HH", *divmod(tag_for_keyword(keyword), 0x10000))
    data = path.read_bytes()
    start = data.index(tag + b"SQ\0\0\xff\xff\xff\xff")
    end = data.index(struct.pack("<HHL", 0xFFFE, 0xE0DD, 0), start) + 8
    if explicit_items:
        value = data[start + 12 : end]
    else:
        probe = Dataset()
        probe.add(pydicom.dcmread(path)[keyword])
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, True
        write_dataset(fp, probe)
        value = fp.getvalue()[8:]
    un = tag + b"UN\0\0\xff\xff\xff\xff" + value
    path.write_bytes(data[:start] + un + data[end:])
    assert pydicom.dcmread(path)[keyword].VR == "SQ"  # pydicom reads it as the sequence


VARIANTS = [
    "explicit",
    "implicit",
    "implicit-defined",
    "explicit-defined",
    "big-endian",
    "deflated",
    "latin-1",
    "utf-8",
    "iso-2022-jp",
    "un-sequence",
    "un-undefined",
    "un-explicit-items",
    "no-preamble",
    "nested-utf-8",
    "nested-cyrillic",
    "nested-own-charset",
    "nested-iso-2022-jp",
    "address-with-backslash",
]


def _variant(tmp_path: Path, variant: str) -> Path:
    path = tmp_path / f"{variant}.dcm"
    if variant == "latin-1":
        return _save(_dataset("Grünspan^Jörg", "ISO_IR 100"), path)
    if variant == "utf-8":
        return _save(_dataset("山田^太郎", "ISO_IR 192"), path)
    if variant == "iso-2022-jp":
        name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
        return _save(_dataset(name, ["", "ISO 2022 IR 87"]), path)
    if variant == "nested-utf-8":
        ds = _dataset("Zzleak^Janet", "ISO_IR 192")
        _nested_text(ds, "Müller^Zoë", "Zürich Klinik", None)
        return _save(ds, path)
    if variant == "nested-cyrillic":
        ds = _dataset("Zzleak^Janet", "ISO_IR 144")
        _nested_text(ds, "Иванов^Иван", "Клиника", None)
        return _save(ds, path)
    if variant == "nested-own-charset":
        ds = _dataset("Zzleak^Janet")
        _nested_text(ds, "Müller^Zoë", "Zürich Klinik", "ISO_IR 100")
        return _save(ds, path)
    if variant == "nested-iso-2022-jp":
        ds = _dataset("Zzleak^Janet", ["", "ISO 2022 IR 87"])
        _nested_text(ds, "Yamada^Tarou=山田^太郎=やまだ^たろう", "Zz Clinic", None)
        return _save(ds, path)
    ds = _dataset()
    if variant == "address-with-backslash":
        ds.InstitutionAddress = "1 Zz Road\\Suite 9"  # ST: one value, backslash and all
    if variant.endswith("-defined") or variant == "un-sequence":
        _defined_lengths(ds)
    if variant in ("un-undefined", "un-explicit-items"):
        ds["OtherPatientIDsSequence"].is_undefined_length = True
        for item in ds.OtherPatientIDsSequence:
            item.is_undefined_length_sequence_item = True
    syntax = {
        "implicit": ImplicitVRLittleEndian,
        "implicit-defined": ImplicitVRLittleEndian,
        "big-endian": ExplicitVRBigEndian,
        "deflated": DeflatedExplicitVRLittleEndian,
    }.get(variant, ExplicitVRLittleEndian)
    _save(ds, path, syntax)
    if variant == "un-sequence":
        _as_un(path, ds, "OtherPatientIDsSequence")
    if variant in ("un-undefined", "un-explicit-items"):
        _un_undefined(
            path, "OtherPatientIDsSequence", explicit_items=variant == "un-explicit-items"
        )
    if variant == "no-preamble":
        data = path.read_bytes()
        path.write_bytes(data[128:])  # "DICM" and the file meta, no preamble
    return path


@pytest.mark.parametrize("variant", VARIANTS)
def test_identifiers_are_pydicoms(tmp_path: Path, variant: str) -> None:
    path = _variant(tmp_path, variant)
    read_texts(path, fileids._DEEP, fileids._VENDOR)  # walked, not left to pydicom
    found = identifiers_in_file(path)
    assert found is not None
    if variant != "no-preamble":  # pydicom reads a file without its preamble only forced
        assert found == identifiers_of_file(path)
    assert {"ZZPID4242", "ZZNESTEDID", "ZZDEEPID"} <= found.ids
    assert {"ZZREQ123", "ZZREQ456"} <= found.accessions
    assert found.stations >= {"ZZAETITLE", "ZZSCHED"} and "siemens" not in found.stations
    assert "Zz Deep Clinic" in found.institutions
    assert {"Zzother^Name", "Zzthird^Name"} <= found.names
    assert "Zzprivate^Hidden" not in found.names  # private sequences are not walked
    expected_name = {
        "latin-1": "Grünspan^Jörg",
        "utf-8": "山田^太郎",
        "iso-2022-jp": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    }.get(variant, "Zzleak^Janet")
    assert expected_name in found.names
    nested = {
        "nested-utf-8": ("Müller^Zoë", "Zürich Klinik"),
        "nested-cyrillic": ("Иванов^Иван", "Клиника"),
        "nested-own-charset": ("Müller^Zoë", "Zürich Klinik"),
        "nested-iso-2022-jp": ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Zz Clinic"),
    }.get(variant)
    if nested:
        assert nested[0] in found.names and nested[1] in found.institutions
        assert "ZZNONASCII" in found.ids
    if variant == "address-with-backslash":
        assert "1 Zz Road\\Suite 9" in found.addresses


def test_a_header_the_walk_refuses_is_read_by_pydicom(tmp_path: Path) -> None:
    """A nested sequence whose item is malformed stops the walk: pydicom reads the file
    (its reading of such a file wins), and a file neither can read gives nothing."""
    path = _variant(tmp_path, "explicit-defined")
    data = bytearray(path.read_bytes())
    item = data.index(b"\xfe\xff\x00\xe0", data.index(b"ZZNESTEDID") - 64)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(data[:item] + b"\xfe\xff\x0d\xe0" + data[item + 4 :]))
    with pytest.raises(DicomReadError, match=r"broken\.dcm: malformed DICOM file"):
        read_texts(broken, fileids._DEEP)
    assert identifiers_in_file(broken) == identifiers_of_file(broken)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file at all" * 10)
    assert identifiers_in_file(junk) is None
    assert read_identifiers([junk, path]) == identifiers_in_file(path)


def test_a_broken_implicit_sequence_is_left_to_pydicom(tmp_path: Path) -> None:
    """An implicit VR value taken for a sequence (it starts with an item) that cannot be
    walked refuses the file: pydicom reads it, nothing is dropped silently. (A value
    whose very first item tag is damaged is not taken for a sequence: left as is.)"""
    path = _variant(tmp_path, "implicit-defined")
    data = bytearray(path.read_bytes())
    second = data.rindex(b"\xfe\xff\x00\xe0", 0, data.index(b"ZZREQ456"))
    data[second : second + 4] = b"\x08\x00\x50\x00"  # the second item's tag mangled
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(data))
    with pytest.raises(DicomReadError, match="malformed DICOM file"):
        read_texts(broken, fileids._DEEP)
    found = identifiers_in_file(broken)
    assert found is not None and {"ZZNESTEDID", "ZZDEEPID"} <= found.ids
    assert found == identifiers_of_file(broken)


def test_a_deflated_bomb_is_not_handed_to_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The walker refuses a deflated data set inflating past MAX_INFLATED; pydicom, which
    would inflate it whole, is not asked (a warning names the file)."""
    from bidsport import header

    ds = _dataset()
    ds.PixelData = bytes(len(ds.PixelData))
    path = _save(ds, tmp_path / "bomb.dcm", DeflatedExplicitVRLittleEndian)
    monkeypatch.setattr(header, "MAX_INFLATED", 1024)
    monkeypatch.setattr(
        "bidsport.sourceids.identifiers_of_file", lambda p: pytest.fail("pydicom asked")
    )
    with caplog.at_level("WARNING", logger="bidsport.fileids"):
        assert identifiers_in_file(path) is None
    assert any("bomb.dcm: deflated data set inflates" in r.getMessage() for r in caplog.records)


def test_every_real_file(shared_data: Path) -> None:
    """On the real vendor files (GE, Philips, Siemens, UIH; classic, enhanced, compressed),
    the walk reads every header the scan reads, and finds what pydicom finds."""
    n = 0
    for path in sorted(p for p in shared_data.glob("*/In/**/*") if p.is_file()):
        try:
            read_header(path)
        except DicomReadError:
            continue
        read_texts(path, fileids._DEEP, fileids._VENDOR)
        assert identifiers_in_file(path) == identifiers_of_file(path), path
        n += 1
    assert n > 1000


def test_reading_identifiers_imports_no_pydicom(tmp_path: Path) -> None:
    """What a run without --anonymize reads (the identifiers of each series, to scrub
    sidecars) needs no pydicom: it is never imported (~0.2 s per process)."""
    from bidsport.runner import run_command

    files = [_variant(tmp_path, v) for v in ("explicit", "implicit-defined", "utf-8")]
    probe = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from bidsport.fileids import read_identifiers\n"
        f"found = read_identifiers([Path(p) for p in {[str(f) for f in files]!r}])\n"
        "print(json.dumps(['pydicom' in sys.modules, found.to_json()]))\n"
    )
    result = run_command([sys.executable, "-c", probe], timeout=120)
    assert result.returncode == 0, result.stderr
    loaded, found = json.loads(result.stdout)
    assert loaded is False
    assert found == read_identifiers(files).to_json()
    assert "山田^太郎" in found["names"] and pydicom.dcmread(files[0]).PatientID in found["ids"]
