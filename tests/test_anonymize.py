"""De-identification: every planted identifier gone, consistency per subject and key,
images and geometry untouched, dcm2niix still gets what it needs from real vendor data."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dcm2niix
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from bidsport.anonymize import (
    DCM2NIIX_PRIVATE,
    Anonymizer,
    default_policy,
    describe_actions,
    key_fingerprint,
    load_or_create_key,
    load_policy,
    shift_iso_datetime,
)
from bidsport.anonymize.policy import policy_from_mapping
from bidsport.audit import audit_tree
from bidsport.errors import AnonymizationError, ConfigError, UsageError
from bidsport.phi import merge_identifiers
from bidsport.sourceids import identifiers_from_dataset
from bidsport.synthetic import SeriesSpec, Study, Subject, series_datasets

KEY = bytes(range(32))
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE_POLICY = (
    Path(__file__).resolve().parents[1] / "src/bidsport/data/anonymize-policy-example.toml"
)

#: every string planted below; none may survive in any byte of the output
LEAKS = (
    "ZZLEAKNAME",
    "ZZGIVEN",
    "ZZPID4242",
    "ZZACC777",
    "ZZFILLER1",
    "ZZPLACER1",
    "ZZINSTITUTE",
    "ZZINSTADDR",
    "ZZDEPT",
    "ZZOTHERNAME",
    "ZZPPSID",
    "ZZREQPROC",
    "ZZSPSID",
    "ZZSTATION",
    "ZZSTUDYID",
    "ZZCOUNTRY",
    "ZZOCCUPATION",
    "ZZHOMEADDR",
    "ZZREGION",
    "ZZCOMMENT",
    "ZZSTUDYCOMMENT",
    "ZZREQDOC",
    "ZZREFDOC",
    "ZZOPERATOR",
    "ZZPERFDOC",
    "ZZPATCOMMENT",
    "ZZHISTORY",
    "ZZSERIAL",
    "ZZPRIVATE",
    "ZZNESTED",
    "ZZAETITLE",
    "ZZOTHERID",
    "ZZPERFSTATION",
    "19710203",
)


def _identity(pid: str = "ZZPID4242", name: str = "ZZLEAKNAME^ZZGIVEN") -> Subject:
    request = Dataset()
    request.RequestedProcedureID = "ZZREQPROC"
    request.ScheduledProcedureStepID = "ZZSPSID"
    request.RequestedProcedureDescription = "brain ZZLEAKNAME"
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.1"
    referenced.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.8"
    other = Dataset()
    other.PatientID = "ZZOTHERID"
    return Subject(
        patient_id=pid,
        patient_name=name,
        birth_date="19710203",
        extra={
            "AccessionNumber": "ZZACC777",
            "FillerOrderNumberImagingServiceRequest": "ZZFILLER1",
            "PlacerOrderNumberImagingServiceRequest": "ZZPLACER1",
            "InstitutionName": "ZZINSTITUTE",
            "InstitutionAddress": "ZZINSTADDR Road 1",
            "InstitutionalDepartmentName": "ZZDEPT",
            "OtherPatientNames": "ZZOTHERNAME^X",
            "PerformedProcedureStepID": "ZZPPSID",
            "StationName": "ZZSTATION",
            "StudyID": "ZZSTUDYID",
            "CountryOfResidence": "ZZCOUNTRY",
            "Occupation": "ZZOCCUPATION",
            "PatientAddress": "ZZHOMEADDR 3",
            "RegionOfResidence": "ZZREGION",
            "ImageComments": "ZZCOMMENT",
            "StudyComments": "ZZSTUDYCOMMENT",
            "RequestingPhysician": "ZZREQDOC^A",
            "ReferringPhysicianName": "ZZREFDOC^B",
            "OperatorsName": "ZZOPERATOR^C",
            "PerformingPhysicianName": "ZZPERFDOC^D",
            "PatientComments": "ZZPATCOMMENT",
            "AdditionalPatientHistory": "ZZHISTORY",
            "DeviceSerialNumber": "ZZSERIAL",
            "PerformedStationName": "ZZPERFSTATION",
            "RequestAttributesSequence": [request],
            "ReferencedPatientSequence": [referenced],
            "OtherPatientIDsSequence": [other],
        },
    )


def _plant_private(ds: Dataset) -> None:
    """A private block of an unknown vendor, a private sequence, a kept Siemens block."""
    block = ds.private_block(0x0011, "ZZ VENDOR", create=True)
    block.add_new(0x01, "LO", "ZZPRIVATE ZZLEAKNAME")
    block.add_new(0x02, "OB", b"\x00\x01ZZPRIVATE binary\x00\x00")
    nested = Dataset()
    nested.PatientName = "ZZNESTED^ZZLEAKNAME"
    block.add_new(0x03, "SQ", [nested])
    siemens = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    siemens.add_new(0x0C, "IS", "1000")  # b-value: kept with keep_private
    siemens.add_new(0x10, "LO", "ZZPRIVATE")  # not needed by dcm2niix: always removed
    philips = ds.private_block(0x2005, "Philips MR Imaging DD 005", create=True)
    frame = Dataset()  # a kept private sequence: its public elements are anonymized
    frame.PatientName = "ZZNESTED^ZZLEAKNAME"
    frame.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.9"
    frame.AcquisitionDate = ds.StudyDate
    philips.add_new(0x0F, "SQ", [frame])
    csa = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    text = b'tProtocolName = "ZZLEAKNAME"\ntReferenceImage0 = "1.3.12.2.1107.5.2.19.45160.201809181220"\n'
    csa.add_new(0x20, "OB", text + b"\x00" * (len(text) % 2))


def _write(datasets: list[Dataset], folder: Path, implicit: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{int(ds.SeriesNumber):03d}_{int(ds.InstanceNumber):04d}.dcm"
        if implicit:  # sequences of undefined length are decoded while reading
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            for elem in ds:
                if elem.VR == "SQ":
                    elem.is_undefined_length = True
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _session(folder: Path, *, subject: Subject, study: Study, implicit: bool = False) -> list[Path]:
    paths: list[Path] = []
    specs = [
        SeriesSpec("t1_ZZLEAKNAME", 2, n_slices=3, protocol_name="t1 ZZPID4242"),
        SeriesSpec(
            "dwi",
            3,
            n_slices=2,
            n_volumes=3,
            b_values=(0, 1000, 1000),
            scanning_sequence=("EP",),
            mr_acquisition_type="2D",
        ),
    ]
    for spec in specs:
        datasets = series_datasets(spec, subject, study)
        for ds in datasets:
            _plant_private(ds)
            ds.file_meta.SourceApplicationEntityTitle = "ZZAETITLE"
        paths += _write(datasets, folder, implicit)
    return paths


@pytest.fixture(scope="module")
def inbox(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Subject A with two sessions (different dates), subject B with one."""
    root = tmp_path_factory.mktemp("inbox")
    a = _identity()
    b = _identity(pid="ZZPID9999", name="ZZOTHERPERSON^ZZGIVEN")
    return {
        "a1": _session(root / "a1", subject=a, study=Study(key="a1", date="20240102")),
        "a2": _session(
            root / "a2", subject=a, study=Study(key="a2", date="20240315"), implicit=True
        ),
        "b1": _session(root / "b1", subject=b, study=Study(key="b1", date="20240102")),
    }


def _anonymize(anonymizer: Anonymizer, files: list[Path], out: Path, subject: str) -> list[Path]:
    written = []
    for src in files:
        outcome = anonymizer.anonymize_file(src, out / src.name, subject)
        assert outcome.ok, outcome.excluded
        written.append(out / src.name)
    return written


@pytest.fixture(scope="module")
def anonymized(
    inbox: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[Path]]:
    out = tmp_path_factory.mktemp("anon")
    anonymizer = Anonymizer(KEY, default_policy())
    return {
        name: _anonymize(anonymizer, files, out / name, "01" if name.startswith("a") else "02")
        for name, files in inbox.items()
    }


def _read(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def _date(value: str) -> datetime.date:
    return datetime.datetime.strptime(value, "%Y%m%d").date()


# --------------------------------------------------------------------------- identifiers


@pytest.mark.parametrize(
    ("session", "keep_private"), [("a1", False), ("a1", True), ("a2", False), ("a2", True)]
)
def test_every_planted_identifier_is_gone_from_every_byte(
    inbox: dict[str, list[Path]], tmp_path: Path, session: str, keep_private: bool
) -> None:
    anonymizer = Anonymizer(KEY, default_policy(keep_private))
    files = _anonymize(anonymizer, inbox[session], tmp_path, "01")
    original = inbox[session][0].read_bytes().upper()
    assert all(leak.encode() in original for leak in LEAKS)  # they were all there
    real_date = _read(inbox[session][0]).StudyDate.encode()
    for path in files:
        data = path.read_bytes().upper()
        assert real_date not in data  # every date shifted, UIDs made from them replaced
        left = [leak for leak in LEAKS if leak.encode() in data]
        assert not left, f"{path.name} still holds {left}"
        assert b"1971-02-03" not in data and b"45160" not in data
    ds = _read(files[0])
    # the audit agrees (identifiers read from the originals)
    identifiers = merge_identifiers(identifiers_from_dataset(_read(p)) for p in inbox[session][:1])
    assert audit_tree(tmp_path, identifiers) == []
    # removed, emptied, pseudonymized, scrubbed
    for keyword in (
        "CountryOfResidence",
        "Occupation",
        "PatientAddress",
        "RegionOfResidence",
        "ImageComments",
        "StudyComments",
        "PatientComments",
        "AdditionalPatientHistory",
        "OperatorsName",
        "PerformingPhysicianName",
        "RequestingPhysician",
        "PerformedStationName",
    ):
        assert keyword not in ds, keyword
    assert ds.ReferringPhysicianName == "" and ds.PatientBirthDate == ""
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert ds.SeriesDescription == "t1_X" and ds.ProtocolName == "t1 X"
    assert ds.RequestAttributesSequence[0].RequestedProcedureDescription == "brain X"
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    for keyword in (
        "AccessionNumber",
        "StudyID",
        "StationName",
        "InstitutionName",
        "DeviceSerialNumber",
        "PerformedProcedureStepID",
    ):
        assert ds.data_element(keyword).value, keyword  # replaced, not dropped
    private = [e.tag for e in ds if e.tag.is_private]
    if keep_private:
        assert ds.private_block(0x0019, "SIEMENS MR HEADER")[0x0C].value == "1000"
        csa = ds.private_block(0x0029, "SIEMENS CSA HEADER")[0x20].value
        assert b'tProtocolName = "XXXXXXXXXX"' in csa  # identifiers X-ed, same length
        assert b'"0.0.00.0.0000.0.0.00.00000.000000000000"' in csa  # UIDs zeroed
        frame = ds.private_block(0x2005, "Philips MR Imaging DD 005")[0x0F].value[0]
        assert frame.ReferencedSOPInstanceUID != "1.2.3.4.5.6.7.9"
        assert int(frame.AcquisitionDate[:4]) <= 1925
        assert len(private) == 6  # three creators, three kept elements
    else:
        assert private == []


def test_excluded_images(inbox: dict[str, list[Path]], tmp_path: Path) -> None:
    src = inbox["a1"][0]
    variants = {
        "burned": ("BurnedInAnnotation", "YES", "BurnedInAnnotation is YES"),
        "screen": ("ImageType", ["DERIVED", "SECONDARY", "SCREEN SAVE"], "screen save"),
        "sc": ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7", "secondary capture"),
        "pdf": ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.104.1", "encapsulated PDF"),
    }
    strict = Anonymizer(KEY, default_policy())
    allowing = Anonymizer(KEY, default_policy(allow_burned_in=True))
    for name, (keyword, value, reason) in variants.items():
        ds = _read(src)
        setattr(ds, keyword, value)
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path)
        outcome = strict.anonymize_file(path, tmp_path / "out" / path.name, "01")
        assert not outcome.ok and reason in (outcome.excluded or "")
        assert not (tmp_path / "out" / path.name).exists()
        allowed = allowing.anonymize_file(path, tmp_path / "allowed" / path.name, "01")
        assert allowed.ok == (name != "pdf")  # documents never: their text is the content
    burned = _read(tmp_path / "allowed" / "burned.dcm")
    assert burned.PatientIdentityRemoved == "NO"


# --------------------------------------------------------------------------- consistency


def test_dates_shift_by_whole_days_per_subject_to_before_1925(
    inbox: dict[str, list[Path]], anonymized: dict[str, list[Path]], tmp_path: Path
) -> None:
    before = {s: _read(inbox[s][0]) for s in inbox}
    after = {s: _read(anonymized[s][0]) for s in anonymized}
    shifts = {s: _date(after[s].StudyDate) - _date(before[s].StudyDate) for s in after}
    assert shifts["a1"] == shifts["a2"]  # two sessions of one subject: intervals kept
    assert shifts["a1"] != shifts["b1"]  # another subject, another shift
    for s, ds in after.items():
        assert int(ds.StudyDate[:4]) <= 1925
        assert ds.AcquisitionTime == before[s].AcquisitionTime  # time of day kept
    assert shifts["a1"].days == Anonymizer(KEY, default_policy()).date_shift_days("sub-01")
    # acq_time of _scans.tsv moves with the images
    assert shift_iso_datetime("2024-01-02T09:05:00", shifts["a1"].days) == (
        f"{_date(after['a1'].StudyDate).isoformat()}T09:05:00"
    )
    assert shift_iso_datetime("n/a", -5) is None and shift_iso_datetime(None, -5) is None
    # a date that is not a date (seen in real data) is emptied, not kept or crashed on
    ds = _read(inbox["a1"][0])
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        ds.StudyDate = "***"
    Anonymizer(KEY, default_policy()).anonymize_dataset(ds, "01")
    assert ds.StudyDate == ""


def test_pseudonyms_depend_on_key_and_subject_only(
    inbox: dict[str, list[Path]], anonymized: dict[str, list[Path]], tmp_path: Path
) -> None:
    # a second run with a new Anonymizer and the same key writes the very same bytes
    again = _anonymize(Anonymizer(KEY, default_policy()), inbox["a2"][:2], tmp_path, "sub-01")
    for first, second in zip(anonymized["a2"], again, strict=False):
        assert first.read_bytes() == second.read_bytes()
    a1, a2, b1 = (_read(anonymized[s][0]) for s in ("a1", "a2", "b1"))
    assert a1.PatientID == a2.PatientID != b1.PatientID
    assert a1.PatientName == "sub-01" and b1.PatientName == "sub-02"
    assert a1.PatientID not in ("ZZPID4242", "01")
    assert a1.StationName == b1.StationName  # one scanner: one pseudonym in every subject
    other_key = _anonymize(
        Anonymizer(b"another key, 32 bytes long......", default_policy()),
        inbox["a1"][:1],
        tmp_path / "other",
        "01",
    )
    assert _read(other_key[0]).PatientID != a1.PatientID
    assert _read(other_key[0]).StudyDate != a1.StudyDate


def test_uids_map_consistently(
    inbox: dict[str, list[Path]], anonymized: dict[str, list[Path]], tmp_path: Path
) -> None:
    originals = [_read(p) for p in inbox["a1"]]
    results = [_read(p) for p in anonymized["a1"]]
    by_series: dict[str, set[str]] = {}
    for src, out in zip(originals, results, strict=True):
        assert out.SOPInstanceUID != src.SOPInstanceUID
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.SOPClassUID == src.SOPClassUID
        by_series.setdefault(src.SeriesInstanceUID, set()).add(out.SeriesInstanceUID)
    assert all(len(new) == 1 for new in by_series.values())  # a series stays one series
    assert len({out.SOPInstanceUID for out in results}) == len(results)
    assert len({out.StudyInstanceUID for out in results}) == 1
    # the same series split over two packets, anonymized separately, stays one series
    half = len(inbox["a1"]) // 2
    part1 = _anonymize(Anonymizer(KEY, default_policy()), inbox["a1"][:half], tmp_path / "p1", "01")
    part2 = _anonymize(Anonymizer(KEY, default_policy()), inbox["a1"][half:], tmp_path / "p2", "01")
    assert {_read(p).SeriesInstanceUID for p in part1 + part2} == {
        r.SeriesInstanceUID for r in results
    }
    anonymizer = Anonymizer(KEY, default_policy())
    assert anonymizer.new_uid(originals[0].SeriesInstanceUID) == results[0].SeriesInstanceUID
    nested = results[0].ReferencedPatientSequence[0].ReferencedSOPInstanceUID
    assert (
        nested != "1.2.3.4.5.6.7.8"
        and nested
        == _read(anonymized["b1"][0]).ReferencedPatientSequence[0].ReferencedSOPInstanceUID
    )


def test_pixels_and_geometry_unchanged_and_source_untouched(
    inbox: dict[str, list[Path]], tmp_path: Path
) -> None:
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inbox["a1"]}
    out = _anonymize(Anonymizer(KEY, default_policy()), inbox["a1"], tmp_path, "01")
    assert digests == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inbox["a1"]}
    for src, dst in zip(inbox["a1"], out, strict=True):
        a, b = _read(src), _read(dst)
        assert a.PixelData == b.PixelData
        for keyword in (
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "SliceThickness",
            "RepetitionTime",
            "EchoTime",
            "FlipAngle",
            "DiffusionBValue",
            "Rows",
            "Columns",
            "InstanceNumber",
            "SeriesNumber",
            "ImageType",
            "PatientSex",
            "PatientAge",
        ):
            assert a.get(keyword) == b.get(keyword), keyword
    assert stat.S_IMODE(out[0].stat().st_mode) == 0o644
    with pytest.raises(AnonymizationError, match="onto itself"):
        Anonymizer(KEY, default_policy()).anonymize_file(out[0], out[0], "01")


def test_fast_path_equals_full_walk(inbox: dict[str, list[Path]], tmp_path: Path) -> None:
    """Hiding untouched elements and splicing bytes changes nothing in the result."""
    files = inbox["a1"][:2]
    fast = _anonymize(Anonymizer(KEY, default_policy(True)), files, tmp_path / "f", "01")
    slow = _anonymize(
        Anonymizer(KEY, default_policy(True), fast=False), files, tmp_path / "s", "01"
    )
    for f, s in zip(fast, slow, strict=True):
        assert f.read_bytes() == s.read_bytes()
    # and the spliced file equals pydicom's own writer's
    ds = _read(files[0])
    Anonymizer(KEY, default_policy(True)).anonymize_dataset(ds, "01")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert pydicom.dcmread(io.BytesIO(buffer.getvalue())) == _read(fast[0])


# --------------------------------------------------------------------------- policy, key


def test_policy_file_relaxes_and_adds_rules(tmp_path: Path, inbox: dict[str, list[Path]]) -> None:
    example = load_policy(EXAMPLE_POLICY)
    assert example.action(0x00080080) == "keep"  # InstitutionName kept verbatim
    assert example.private_keep[-1].creator == "SIEMENS MR HEADER"
    ds = _read(inbox["a1"][0])
    Anonymizer(KEY, example).anonymize_dataset(ds, "01")
    assert ds.InstitutionName == "ZZINSTITUTE"
    assert load_policy(EXAMPLE_POLICY, keep_private=True).private_keep[: len(DCM2NIIX_PRIVATE)] == (
        DCM2NIIX_PRIVATE
    )
    bad = {
        '[tags]\nNotAKeyword = "remove"\n': "unknown DICOM keyword",
        '[tags]\nStudyDescription = "blur"\n': "unknown action",
        '[tags]\nPatientID = "keep"\n': "can only be removed or emptied",
        '[tags]\n"0019,100C" = "keep"\n': "private tag",
        '[private]\nkeep = [{group = "0018", creator = "X", elements = ["01"]}]\n': "not private",
        "[colours]\nred = 1\n": "unknown sections",
        "[tags\n": "not valid TOML",
    }
    for text, message in bad.items():
        path = tmp_path / "policy.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message) as info:
            load_policy(path)
        assert str(path) in str(info.value)
    relaxed = policy_from_mapping({"tags": {"StudyDescription": "default"}}, source="test")
    assert relaxed.action(0x00081030) == "default"


def test_describe_actions_lists_each_rule() -> None:
    lines = describe_actions(default_policy(keep_private=True))
    text = "\n".join(lines)
    for expected in (
        "Remove Occupation",
        "Empty PatientBirthDate",
        "Remove ImageComments",
        "Keep SeriesDescription with the subject's names/IDs replaced by X",
        "Replace StationName with a pseudonym",
        '"SIEMENS CSA HEADER"',
        '"GEMS_PARM_01"',
        "(0043,xx02,xx03,xx04",
        "Replace all UI elements",
        "(dicognito)",
        "1925",
    ):
        assert expected in text, expected
    assert "Remove all private elements" in "\n".join(describe_actions(default_policy()))


def test_key_file_is_created_once_private_and_outside_the_dataset(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "study.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key  # created once, then reused
    assert len(key_fingerprint(key)) == 16 and key.hex() not in key_fingerprint(key)
    with pytest.raises(UsageError, match="inside the output dataset"):
        load_or_create_key(tmp_path / "out" / "k.key", forbidden_root=tmp_path / "out")
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="too short"):
        load_or_create_key(short)
    phrase = tmp_path / "phrase.key"
    phrase.write_text("# comment\na long enough passphrase\n")
    assert load_or_create_key(phrase) == b"a long enough passphrase"


# --------------------------------------------------------------------------- dcm2niix


def _dcm2niix(folder: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    subprocess.run(
        [dcm2niix.bin, "-ba", "y", "-z", "n", "-f", "%s", "-o", str(out), str(folder)],
        check=True,
        capture_output=True,
    )
    return out


def _real_series() -> Iterator[tuple[str, Path, tuple[str, ...]]]:
    """Vendor series, and the sidecar fields that come from private elements."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real DICOM data not found at {SHARED_DATA}")
    # GE (0043,1039) b-value, (0019,10BB-BD) gradients, (0043,102C) echo spacing, ASSET
    yield (
        "ge_dwi",
        SHARED_DATA / "dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2",
        (
            "EffectiveEchoSpacing",
            "ParallelReductionFactorInPlane",
            "SliceTiming",
            "PhaseEncodingDirection",
            "bval",
        ),
    )
    # Siemens mosaic: CSA headers (PE polarity, MosaicRefAcqTimes), (0019,100A)
    yield (
        "siemens_epi",
        SHARED_DATA / "dcm_qa_nih/In/20180918Si/mr_0003",
        (
            "SliceTiming",
            "PhaseEncodingDirection",
            "EffectiveEchoSpacing",
            "BandwidthPerPixelPhaseEncode",
        ),
    )
    # Siemens XA enhanced: ASCCONV in (0021,10FE) > (0021,1019), (0021,111C) PE polarity
    yield (
        "siemens_xa",
        SHARED_DATA / "dcm_qa_enh/In/Siemens/XA10",
        ("SliceTiming", "PhaseEncodingDirection", "EffectiveEchoSpacing"),
    )
    # United Imaging: (0065,1009) b-value, (0065,1051) per-slice times
    yield (
        "uih_dti",
        SHARED_DATA / "dcm_qa_uih/In/DTI_134434/dti_tra_dir16_AP_SaveBySlc__140028",
        ("SliceTiming", "bval"),
    )


SIDECAR_KEYS = (
    "RepetitionTime",
    "EchoTime",
    "FlipAngle",
    "PhaseEncodingDirection",
    "SliceTiming",
    "EffectiveEchoSpacing",
    "TotalReadoutTime",
    "MultibandAccelerationFactor",
    "ParallelReductionFactorInPlane",
    "BandwidthPerPixelPhaseEncode",
    "ImageType",
    "AcquisitionTime",
)


def test_dcm2niix_keeps_diffusion_timing_and_phase_encoding_with_keep_private(
    tmp_path: Path,
) -> None:
    anonymizer = Anonymizer(KEY, default_policy(keep_private=True))
    for name, folder, needed in _real_series():
        files = sorted(p for p in folder.iterdir() if p.suffix != ".txt")
        identifiers = merge_identifiers(identifiers_from_dataset(_read(p)) for p in files[:2])
        anon = tmp_path / name / "dicom"
        _anonymize(anonymizer, files, anon, "01")
        assert audit_tree(anon, identifiers) == []
        before = _dcm2niix(folder, tmp_path / name / "before")
        after = _dcm2niix(anon, tmp_path / name / "after")
        outputs = sorted(p.name for p in before.iterdir())
        assert outputs == sorted(p.name for p in after.iterdir())
        assert any(o.endswith(".bval") for o in outputs) == ("bval" in needed)
        for output in outputs:
            b, a = before / output, after / output
            if output.endswith((".bval", ".bvec")):
                assert b.read_text() == a.read_text(), output
            elif output.endswith(".nii"):
                assert b.read_bytes()[352:] == a.read_bytes()[352:]  # voxels identical
            elif output.endswith(".json"):
                jb, ja = json.loads(b.read_text()), json.loads(a.read_text())
                for key in needed:
                    assert key == "bval" or jb.get(key), (name, key)  # not vacuous
                for key in SIDECAR_KEYS:
                    assert jb.get(key) == ja.get(key), (name, key)


def test_real_files_of_every_vendor_anonymize_cleanly(tmp_path: Path) -> None:
    """A few files of each vendor: no error, nothing of the source left, same result
    through the fast and the full path."""
    folders = [
        "dcm_qa_ge/In/05_3D_Ax_T1_MP_RAGE_R22",
        "dcm_qa_philips/In/Vanderbilt_2018/601_WIP_dti_ax",
        "dcm_qa_uih/In/DTI_134434/dti_tra_dir16_AP_SaveBySlc__140028",
        "dcm_qa_enh/In/Siemens/XA10",
        "dcm_qa_ts/In",
    ]
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real DICOM data not found at {SHARED_DATA}")
    for keep in (False, True):
        policy = default_policy(keep_private=keep)
        for folder in folders:
            files = sorted(
                p
                for p in (SHARED_DATA / folder).iterdir()
                if p.is_file() and p.suffix not in (".txt", ".md")
            )[:2]
            identifiers = merge_identifiers(identifiers_from_dataset(_read(p)) for p in files)
            out = tmp_path / str(keep) / folder
            fast = _anonymize(Anonymizer(KEY, policy), files, out / "fast", "01")
            slow = _anonymize(Anonymizer(KEY, policy, fast=False), files, out / "slow", "01")
            for f, s in zip(fast, slow, strict=True):
                assert _read(f) == _read(s), f
            assert audit_tree(out / "fast", identifiers) == [], folder


def test_policy_dataclass_is_hashable_and_replaceable() -> None:
    policy = default_policy()
    assert hash(policy) == hash(default_policy())
    relaxed = dataclasses.replace(policy, burned_in="never")
    assert relaxed.allow_burned_in and not policy.allow_burned_in


def test_new_uid_is_not_a_function_of_the_batch() -> None:
    uid = str(generate_uid())
    a, b = Dataset(), Dataset()
    for ds in (a, b):
        ds.SOPInstanceUID = uid
        ds.SeriesInstanceUID = uid
    Anonymizer(KEY, default_policy()).anonymize_dataset(a, "01")
    Anonymizer(KEY, default_policy()).anonymize_dataset(b, "02")  # another subject
    assert a.SOPInstanceUID == b.SOPInstanceUID != uid


def test_a_dead_worker_fails_the_session_it_de_identifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A de-identification worker killed (out of memory?) fails its session with a clear
    message: its files are not de-identified again in the main process, where the file
    that exhausted the memory could take the whole run down."""
    import contextlib
    from concurrent.futures.process import BrokenProcessPool

    from bidsport import privacy
    from bidsport.anonymize import default_policy
    from bidsport.errors import BidsportError
    from bidsport.phi import Identifiers

    class Broken:
        def map(self, *args: object, **kwargs: object) -> object:
            raise BrokenProcessPool("a worker died")

    monkeypatch.setattr(privacy, "process_pool", lambda *a, **k: contextlib.nullcontext(Broken()))
    monkeypatch.setattr(
        privacy, "_anonymize_chunk", lambda *a: pytest.fail("de-identified in the main process")
    )
    anon = privacy.Anonymization(b"k" * 32, default_policy(False), tmp_path)
    pairs = [(tmp_path / f"in{i}.dcm", tmp_path / f"out{i}.dcm") for i in range(3)]
    with pytest.raises(BidsportError) as caught:
        privacy.anonymize_files(anon, pairs, "sub-01", Identifiers(), n_procs=2, chunk=1)
    assert caught.value.message == (
        "a worker process stopped unexpectedly (killed, or out of memory?) while "
        "de-identifying the 3 files of sub-01: not converted"
    )
