"""The stream path of the anonymizer gives the same bytes as the pydicom path.

``Anonymizer.anonymize_file`` anonymizes on the raw element stream
(:mod:`bidsport.anonymize.stream`) and falls back to the pydicom path for what it does not
reproduce; ``Anonymizer(..., stream=False)`` always takes the pydicom path. These tests run
the stream path directly (so a silent fallback cannot pass them) on synthetic files made to
hold the awkward cases, and on real files of every vendor.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from bidsport.anonymize import AnonymizePolicy, Anonymizer, default_policy, load_policy
from bidsport.anonymize.policy import policy_from_mapping
from bidsport.anonymize.stream import StreamAnonymizer, Unsupported
from bidsport.phi import Identifiers, merge_identifiers
from bidsport.sourceids import identifiers_from_dataset
from bidsport.synthetic import SeriesSpec, Study, Subject, series_datasets

KEY = b"stream-test-key-0123456789abcdef"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE_POLICY = (
    Path(__file__).resolve().parents[1] / "src/bidsport/data/anonymize-policy-example.toml"
)


def _awkward(ds: Dataset, variant: int) -> None:
    """Elements the stream path must treat exactly as pydicom does."""
    ds.PatientSex = "F"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstitutionName = "Klinik Süd ZZSITE"
    ds.Manufacturer = "ACME   "  # trailing spaces: decoding and encoding shorten it
    ds.StationName = "ZZSTATION"
    ds.OtherPatientNames = "ZZOTHER^NAME"
    ds.DeidentificationMethod = ["EARLIER TOOL", "ANOTHER"] if variant % 2 else "EARLIER"
    ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    ds.BurnedInAnnotation = "NO"
    ds.add_new(0x00090000, "UL", 4)  # a group length, dropped
    # free text no rule names, at every depth and in every text VR: scrubbed
    ds.ContrastBolusAgent = "Gadovist (ZZLEAK)"
    ds.ClinicalTrialTimePointDescription = "visit of ZZGIVEN ZZLEAK"  # ST
    ds.TextValue = "ZZPID1 was scanned"  # UT
    ds.PotentialReasonsForProcedure = ["headache", "ZZLEAK follow-up"]  # UC, 2 values
    ds.ClinicalTrialSponsorName = "ACME  trial"  # no identifier: left as it is
    code = Dataset()
    code.CodeValue = "X1"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = "MRI head ZZLEAK"
    code.ExtendedCodeMeaning = "for ZZLEAK^ZZGIVEN"  # LT
    ds.ProcedureCodeSequence = Sequence([code])
    # an item with its own character set, a person name and a date
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 192"
    item.PatientSex = "M"
    item.PerformingPhysicianName = "Müller^Jörg"
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1"
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    item.AcquisitionDate = "20240102"
    item.AcquisitionTime = "101010.5"
    nested_code = Dataset()
    nested_code.CodeValue = "X2"
    nested_code.CodeMeaning = "Kopf Süd ZZLEAK"
    item.ProcedureCodeSequence = Sequence([nested_code])
    nested = Dataset()
    nested.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.2"
    nested.add_new(0x00290010, "LO", "ZZ CREATOR")
    nested.add_new(0x00291001, "LO", "ZZPRIVATE")
    item.ReferencedImageSequence = Sequence([nested])
    ds.ReferencedStudySequence = Sequence([item, Dataset()])  # with an empty item
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])  # an empty sequence
    ds.OtherPatientIDsSequence = Sequence([Dataset()])  # removed by dicognito
    csa = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    csa.add_new(0x10, "OB", b'tPatientName = "ZZLEAK" 1.3.12.2.1107.5.2.19.45160.2018091812\x00')
    csa.add_new(0x11, "OB", b"dropped\x00")
    philips = ds.private_block(0x2005, "Philips MR Imaging DD 005", create=True)
    frame = Dataset()
    frame.PatientName = "ZZNESTED^NAME"
    frame.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.3"
    philips.add_new(0x0F, "SQ", Sequence([frame]))


def _write(ds: Dataset, path: Path, implicit: bool, undefined: bool) -> Path:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "ZZAETITLE"

    def mark(dataset: Dataset) -> None:
        for elem in dataset:
            if elem.VR == "SQ":
                elem.is_undefined_length = undefined
                for item in elem.value:
                    item.is_undefined_length_sequence_item = not undefined
                    mark(item)

    mark(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def awkward_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("awkward")
    subject = Subject(patient_id="ZZPID1", patient_name="ZZLEAK^ZZGIVEN", birth_date="19700101")
    spec = SeriesSpec("t1 ZZLEAK", 2, n_slices=2, protocol_name="t1 ZZPID1")
    files = []
    for variant, (implicit, undefined) in enumerate(
        [(False, False), (False, True), (True, False), (True, True)]
    ):
        for ds in series_datasets(spec, subject, Study(key=f"s{variant}", date="20240102")):
            _awkward(ds, variant)
            name = f"{variant}_{int(ds.InstanceNumber)}.dcm"
            files.append(_write(ds, root / name, implicit, undefined))
    return files


def _policies() -> dict[str, AnonymizePolicy]:
    return {
        "default": default_policy(),
        "keep_private": default_policy(keep_private=True),
        "example": load_policy(EXAMPLE_POLICY, keep_private=True),
        "sequences": policy_from_mapping(
            {
                "tags": {
                    "ReferencedStudySequence": "keep",
                    "ReferencedImageSequence": "empty",
                    "OtherPatientIDsSequence": "remove",
                    "StudyDate": "keep",
                    "StationName": "scrub",
                },
                "private": {
                    "keep": [{"group": "0029", "creator": "ZZ CREATOR", "elements": ["01"]}]
                },
            },
            source="test",
        ),
    }


def _identifiers(files: list[Path]) -> Identifiers:
    return merge_identifiers(identifiers_from_dataset(pydicom.dcmread(p)) for p in files)


def _check_same(
    files: list[Path], policy: AnonymizePolicy, identifiers: Identifiers | None, tmp_path: Path
) -> None:
    """The stream path runs (no fallback) and writes what the pydicom path writes."""
    stream_owner = Anonymizer(KEY, policy)
    stream = StreamAnonymizer(stream_owner)
    general = Anonymizer(KEY, policy, stream=False)
    for i, src in enumerate(files):
        subject = "01" if i % 3 else "02"
        fast = stream.anonymize(src.read_bytes(), stream_owner._context(subject), identifiers)
        dst = tmp_path / f"{i}.dcm"
        outcome = general.anonymize_file(src, dst, subject, identifiers)
        if isinstance(fast, str):
            assert fast == outcome.excluded, src
            continue
        assert outcome.ok, outcome.excluded
        assert fast == dst.read_bytes(), src


@pytest.mark.parametrize("name", list(_policies()))
def test_stream_equals_pydicom_path_on_awkward_files(
    name: str, awkward_files: list[Path], tmp_path: Path
) -> None:
    policy = _policies()[name]
    _check_same(awkward_files, policy, None, tmp_path / "none")
    _check_same(awkward_files, policy, _identifiers(awkward_files), tmp_path / "ids")


def test_stream_output_is_anonymized(awkward_files: list[Path], tmp_path: Path) -> None:
    anonymizer = Anonymizer(KEY, default_policy(keep_private=True))
    for i, src in enumerate(awkward_files):
        dst = tmp_path / f"{i}.dcm"
        assert anonymizer.anonymize_file(src, dst, "01").ok
        data = dst.read_bytes()
        for leak in (
            b"ZZLEAK",
            b"ZZPID1",
            b"ZZSTATION",
            b"ZZAETITLE",
            b"ZZOTHER",
            b"ZZPRIVATE",
            b"M\xfcller",
            "Müller".encode(),
            b"1.2.826.0.1.3680043.2.1125",
        ):
            assert leak not in data, (src, leak)
        ds = pydicom.dcmread(dst)
        assert ds.PatientName == "sub-01"
        assert ds.ContrastBolusAgent == "Gadovist (X)"
        assert ds.ClinicalTrialTimePointDescription == "visit of X"  # "given family"
        assert ds.TextValue == "X was scanned"
        assert list(ds.PotentialReasonsForProcedure) == ["headache", "X follow-up"]
        assert ds.ClinicalTrialSponsorName == "ACME  trial"
        code = ds.ProcedureCodeSequence[0]
        assert (code.CodeValue, code.CodeMeaning) == ("X1", "MRI head X")
        assert code.ExtendedCodeMeaning == "for X"
        nested = ds.ReferencedStudySequence[0].ProcedureCodeSequence[0]
        assert (nested.CodeValue, nested.CodeMeaning) == ("X2", "Kopf Süd X")
        assert list(ds.DeidentificationMethod)[-1].startswith("BIDSPORT")
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert "ReferencedSOPInstanceUID" in ds.ReferencedStudySequence[0]


@pytest.mark.parametrize("name", ["Zorblatt^Quentin", "Grünspan^Jörg"])
def test_free_text_is_scrubbed_alike_on_every_path(name: str, tmp_path: Path) -> None:
    """Text elements no rule names are scrubbed (unless the policy keeps them), with the
    same bytes on the stream, pydicom and full-walk paths; a non-ASCII name (whose bytes
    depend on the character set) makes every text element go through the scrubber."""
    family = name.split("^")[0]
    subject = Subject(patient_id="MRN7734521", patient_name=name)
    files = []
    for i, ds in enumerate(series_datasets(SeriesSpec("t1", 2, n_slices=3), subject, Study())):
        ds.SpecificCharacterSet = "ISO_IR 100"
        code = Dataset()
        code.CodeValue = "X1"
        code.CodeMeaning = f"MRI head {family}"
        ds.ProcedureCodeSequence = Sequence([code])
        ds.ContrastBolusAgent = f"none ({family})"
        ds.ClinicalTrialSponsorName = f"{family} foundation"
        files.append(tmp_path / f"{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    identifiers = _identifiers(files)
    keeps = policy_from_mapping({"tags": {"ClinicalTrialSponsorName": "keep"}}, source="test")
    for policy in (default_policy(), keeps):
        _check_same(files, policy, None, tmp_path / "general")
        _check_same(files, policy, identifiers, tmp_path / "general")
        for i, src in enumerate(files):
            full = tmp_path / f"full{i}.dcm"
            subject = "01" if i % 3 else "02"  # as _check_same
            Anonymizer(KEY, policy, fast=False).anonymize_file(src, full, subject, identifiers)
            assert full.read_bytes() == (tmp_path / "general" / f"{i}.dcm").read_bytes()
            ds = pydicom.dcmread(full)
            assert ds.ProcedureCodeSequence[0].CodeMeaning == "MRI head X"
            assert ds.ProcedureCodeSequence[0].CodeValue == "X1"
            assert ds.ContrastBolusAgent == "none (X)"
            kept = policy is keeps
            assert ds.ClinicalTrialSponsorName == (
                f"{family} foundation" if kept else "X foundation"
            )


def test_unsupported_files_take_the_pydicom_path(awkward_files: list[Path], tmp_path: Path) -> None:
    """Elements out of order: the stream path refuses, anonymize_file still writes the
    pydicom path's result."""
    data = bytearray(awkward_files[0].read_bytes())
    sex = data.rindex(b"\x10\x00\x40\x00CS")  # the top-level one
    data[sex : sex + 2] = b"\x28\x00"  # (0028,0040) before the (0018,xxxx) elements
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(data))
    owner = Anonymizer(KEY, default_policy())
    with pytest.raises(Unsupported):
        StreamAnonymizer(owner).anonymize(broken.read_bytes(), owner._context("01"), None)
    assert owner.anonymize_file(broken, tmp_path / "a.dcm", "01").ok
    Anonymizer(KEY, default_policy(), stream=False).anonymize_file(broken, tmp_path / "b.dcm", "01")
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()


def _real_files() -> list[Path]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real DICOM data not found at {SHARED_DATA}")
    files = []
    for folder in sorted(SHARED_DATA.glob("*/In")):
        found = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and p.suffix not in (".txt", ".md") and p.name != "3.dcm"
        )
        files += found[:: max(1, len(found) // 6)]
    return files


@pytest.mark.parametrize("keep_private", [False, True])
def test_stream_equals_pydicom_path_on_real_files(keep_private: bool, tmp_path: Path) -> None:
    files = _real_files()
    _check_same(files, default_policy(keep_private), _identifiers(files), tmp_path)


def test_big_endian_falls_back(tmp_path: Path) -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real DICOM data not found at {SHARED_DATA}")
    src = SHARED_DATA / "dcm_qa_ts/In/3.dcm"  # Explicit VR Big Endian
    owner = Anonymizer(KEY, default_policy())
    with pytest.raises(Unsupported):
        StreamAnonymizer(owner).anonymize(src.read_bytes(), owner._context("01"), None)
    assert owner.anonymize_file(src, tmp_path / "a.dcm", "01").ok
    Anonymizer(KEY, default_policy(), stream=False).anonymize_file(src, tmp_path / "b.dcm", "01")
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()


def test_policies_whose_handlers_read_other_elements_take_the_pydicom_path() -> None:
    """dicognito's InstitutionName handler writes InstitutionAddress; a policy on
    PatientSex changes what the PN handler reads."""
    for tags in ({"InstitutionName": "default"}, {"PatientSex": "remove"}):
        policy = policy_from_mapping({"tags": tags}, source="test")
        assert Anonymizer(KEY, policy)._stream is None
    assert Anonymizer(KEY, default_policy())._stream is not None
