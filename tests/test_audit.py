"""The PHI audit finds planted identifiers in every kind of file, and nothing in a clean
tree."""

from __future__ import annotations

import gzip
import json
import os
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from bidsport.anonymize import Anonymizer, default_policy
from bidsport.audit import PhiHit, audit_tree, check_tree
from bidsport.errors import ExitCode, PhiFoundError
from bidsport.phi import Identifiers, scrub_sidecar
from bidsport.sourceids import identifiers_from_dataset
from bidsport.synthetic import SeriesSpec, Subject, series_datasets

NAME = "Zzleakname^Janet"
SUBJECT = Subject(
    patient_id="ZZPID4242",
    patient_name=NAME,
    birth_date="19710203",
    extra={"InstitutionName": "Zz Clinic Hospital", "DeviceSerialNumber": "ZZSERIAL55"},
)


def _source() -> list[Dataset]:
    return series_datasets(SeriesSpec("t1", 2, n_slices=2), SUBJECT)


@pytest.fixture(scope="module")
def identifiers() -> Identifiers:
    ids = identifiers_from_dataset(_source()[0])
    assert ids.names == {NAME} and ids.ids == {"ZZPID4242"}
    return ids


def _nifti(path: Path, descrip: bytes = b"TE=3;Time=090500", **text: bytes) -> None:
    img = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.int16), np.eye(4))
    img.header["descrip"] = descrip
    for field, value in text.items():
        img.header[field] = value
    nib.save(img, str(path))


def _clean_tree(root: Path, tmp: Path) -> Path:
    """A small dataset as bidsport would write it with --anonymize."""
    anat = root / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    sources = tmp / "src"
    sources.mkdir()
    anonymizer = Anonymizer(bytes(32), default_policy(keep_private=True))
    dicom_dir = root / "sourcedata" / "dicom" / "sub-01" / "ses-1"
    for i, ds in enumerate(_source()):
        ds.save_as(sources / f"{i}.dcm", enforce_file_format=True)
        assert anonymizer.anonymize_file(sources / f"{i}.dcm", dicom_dir / f"{i}.dcm", "01").ok
    sidecar = {
        "PatientName": NAME,
        "InstitutionName": "Zz Clinic Hospital",
        "SeriesDescription": "t1",
        "RepetitionTime": 2.0,
    }
    (anat / "sub-01_ses-1_T1w.json").write_text(json.dumps(scrub_sidecar(sidecar)))
    _nifti(anat / "sub-01_ses-1_T1w.nii.gz")
    (root / "sub-01" / "ses-1" / "sub-01_ses-1_scans.tsv").write_text(
        "filename\tacq_time\nanat/sub-01_ses-1_T1w.nii.gz\t1899-05-03T09:05:00\n"
    )
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t40\tF\n")
    logs = root / "derivatives" / "bidsport" / "logs"
    logs.mkdir(parents=True)
    (logs / "participant-01.log").write_text("INFO converted 1 series of sub-01 ses-1\n")
    (root / "README").write_text("A dataset. Device serial numbers were removed.\n")
    link = root / "sourcedata" / "links" / "t1.dcm"
    link.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(dicom_dir / "0.dcm", link.parent), link)
    with zipfile.ZipFile(root / "sourcedata" / "extra.zip", "w") as archive:
        archive.writestr("notes.txt", "nothing to see")
    return root


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return _clean_tree(tmp_path / "bids", tmp_path)


def test_clean_tree_has_no_hits(tree: Path, identifiers: Identifiers) -> None:
    assert audit_tree(tree, identifiers) == []
    check_tree(tree, identifiers)  # does not raise


def _hits(tree: Path, identifiers: Identifiers) -> list[PhiHit]:
    hits = audit_tree(tree, identifiers)
    for hit in hits:  # the report never repeats an identifier
        text = hit.describe().lower()
        assert "zzleakname" not in text and "zzpid4242" not in text and "19710203" not in text
    return hits


def _plant(tree: Path, kind: str) -> tuple[str, str]:
    """Plant one leak; return (relative path, expected text in the hit's field)."""
    anat = tree / "sub-01" / "ses-1" / "anat"
    dicom = tree / "sourcedata" / "dicom" / "sub-01" / "ses-1" / "0.dcm"
    if kind in ("dicom_private", "dicom_nested", "dicom_private_nested", "dicom_gzip"):
        import pydicom

        ds = pydicom.dcmread(dicom)
        block = ds.private_block(0x0011, "ZZ VENDOR", create=True)
        if kind == "dicom_private":
            block.add_new(0x01, "LO", "seen by zzleakname")
            field = "DICOM (0011,1001) [ZZ VENDOR]"
        elif kind == "dicom_nested":
            item = Dataset()
            item.RequestedProcedureDescription = "for ZZPID4242"
            ds.RequestAttributesSequence = [item]
            field = "RequestAttributesSequence[0] > (0032,1060) RequestedProcedureDescription"
        elif kind == "dicom_private_nested":
            item = Dataset()
            item.ImageComments = "born 1971-02-03"
            block.add_new(0x02, "SQ", [item])
            field = "(0011,1002) [ZZ VENDOR][0] > (0020,4000) ImageComments"
        else:
            packed = gzip.compress(b'SEDESC "Zzleakname"\n')
            block.add_new(0x03, "OB", len(packed).to_bytes(4, "little") + packed + b"\x00")
            field = "(gzip content)"
        ds.save_as(dicom)
        return "sourcedata/dicom/sub-01/ses-1/0.dcm", field
    if kind == "json":
        path = anat / "sub-01_ses-1_T1w.json"
        data = json.loads(path.read_text())
        data["InstitutionName"] = "ZZ CLINIC HOSPITAL"
        path.write_text(json.dumps(data))
        return "sub-01/ses-1/anat/sub-01_ses-1_T1w.json", "JSON $.InstitutionName"
    if kind == "json_key":
        path = anat / "sub-01_ses-1_T1w.json"
        path.write_text(json.dumps({"Notes": {"ZZSERIAL55": 1}}))
        return "sub-01/ses-1/anat/sub-01_ses-1_T1w.json", "JSON key $.Notes.X"  # masked
    if kind == "tsv":
        path = tree / "participants.tsv"
        path.write_text("participant_id\tage\tsource_id\nsub-01\t40\tzzpid4242\n")
        return "participants.tsv", "row 2 column source_id"
    if kind in ("nifti_descrip", "nifti_aux", "nifti_intent"):
        field = {
            "nifti_descrip": "descrip",
            "nifti_aux": "aux_file",
            "nifti_intent": "intent_name",
        }[kind]
        text = {field: b"Janet Zzleakname"}
        _nifti(anat / "sub-01_ses-1_T1w.nii.gz", **text)  # type: ignore[arg-type]
        return "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", f"NIfTI {field}"
    if kind == "nifti_extension":
        img = nib.load(str(anat / "sub-01_ses-1_T1w.nii.gz"))
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"patient ZZPID4242"))
        nib.save(img, str(anat / "sub-01_ses-1_T1w.nii"))
        (anat / "sub-01_ses-1_T1w.nii.gz").unlink()
        return "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii", "NIfTI extension 1"
    if kind == "filename":
        (anat / "sub-01_ses-1_T1w.nii.gz").rename(anat / "ZZPID4242_T1w.nii.gz")
        return "sub-01/ses-1/anat/X_T1w.nii.gz", "file name"  # the report masks it
    if kind == "folder":
        (tree / "sourcedata" / "dicom" / "sub-01" / "ses-1").rename(
            tree / "sourcedata" / "dicom" / "sub-01" / "Zzleakname_Janet"
        )
        return "sourcedata/dicom/sub-01/X", "folder name"
    if kind == "symlink":
        link = tree / "sourcedata" / "links" / "t1.dcm"
        link.unlink()
        os.symlink("/data/inbox/ZZPID4242/t1.dcm", link)  # dangling: never followed
        return "sourcedata/links/t1.dcm", "symlink target"
    if kind == "log":
        log = tree / "derivatives" / "bidsport" / "logs" / "participant-01.log"
        log.write_text(log.read_text() + "WARNING packet DOE-19710203.zip skipped\n")
        return "derivatives/bidsport/logs/participant-01.log", "line 2"
    if kind == "gzip_text":
        (tree / "sourcedata" / "notes.txt.gz").write_bytes(gzip.compress(b"ok\nZzleakname\n"))
        return "sourcedata/notes.txt.gz", "decompressed line 2"
    if kind == "zip_member":
        with zipfile.ZipFile(tree / "sourcedata" / "extra.zip", "w") as archive:
            archive.writestr("ZZPID4242/notes.txt", "ok")
        return "sourcedata/extra.zip", "member X/notes.txt: name"
    if kind == "binary":
        blob = np.random.default_rng(1).bytes(4000)
        (tree / "sourcedata" / "cache.bin").write_bytes(blob[:2000] + b"ZZSERIAL55" + blob[2000:])
        return "sourcedata/cache.bin", "raw bytes at byte 2000"
    if kind == "zlib_text":  # compressed with no known container: only raw bytes are seen
        (tree / "sourcedata" / "state.db").write_bytes(b"\x00\x01" + b"Zz Clinic Hospital")
        return "sourcedata/state.db", "raw bytes at byte 2"
    raise AssertionError(kind)


KINDS = [
    "dicom_private",
    "dicom_nested",
    "dicom_private_nested",
    "dicom_gzip",
    "json",
    "json_key",
    "tsv",
    "nifti_descrip",
    "nifti_aux",
    "nifti_intent",
    "nifti_extension",
    "filename",
    "folder",
    "symlink",
    "log",
    "gzip_text",
    "zip_member",
    "binary",
    "zlib_text",
]


@pytest.mark.parametrize("kind", KINDS)
def test_each_planted_leak_is_found(tree: Path, identifiers: Identifiers, kind: str) -> None:
    rel, field = _plant(tree, kind)
    hits = _hits(tree, identifiers)
    assert any(hit.path == rel and field in hit.field for hit in hits), (
        f"{kind}: no hit with {field!r} in {rel}; got {[h.describe() for h in hits]}"
    )
    with pytest.raises(PhiFoundError) as info:
        check_tree(tree, identifiers)
    assert info.value.exit_code == ExitCode.PHI_FOUND
    assert rel in str(info.value)


def test_skipped_paths_are_not_searched(tree: Path, identifiers: Identifiers) -> None:
    rel, _ = _plant(tree, "dicom_private")
    assert audit_tree(tree, identifiers, skip=[Path("sourcedata/dicom")]) == []
    assert audit_tree(tree, identifiers, skip=[tree / rel]) == []
    assert audit_tree(tree, identifiers) != []


def test_matching_rules_in_the_audit(tmp_path: Path, identifiers: Identifiers) -> None:
    (tmp_path / "a.txt").write_text("the zzpid4242 in lower case\n")  # case-insensitive
    (tmp_path / "b.txt").write_text("Zzleaknamer is another word\n")  # not a token
    short = Identifiers(ids=frozenset({"42"}))  # under 3 characters: never searched
    hits = audit_tree(tmp_path, identifiers)
    assert [(h.path, h.identifier_kind) for h in hits] == [("a.txt", "id")]
    assert audit_tree(tmp_path, short) == []
    assert audit_tree(tmp_path, Identifiers()) == []  # nothing to look for (logged)


def test_raw_backstop_reports_only_what_parsers_missed(
    tmp_path: Path, identifiers: Identifiers
) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"Name": "Zzleakname"}))
    hits = audit_tree(tmp_path, identifiers)
    assert [h.field for h in hits] == ["JSON $.Name"]  # no duplicate "raw bytes" hit
    # the DICOM preamble is no element: only the raw search sees it
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = "MR"
    ds.preamble = b"ZZPID4242".ljust(128, b"\x00")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    hits = audit_tree(tmp_path, identifiers)
    preamble = [h for h in hits if h.path == "x.dcm" and h.identifier_kind == "id"]
    assert [h.field for h in preamble] == ["raw bytes at byte 0"]


def test_non_ascii_names_in_other_character_sets(tmp_path: Path) -> None:
    """Cyrillic in ISO_IR 144 is neither Latin-1 nor UTF-8 in the file's bytes: the decoded
    element values are searched."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 144"
    ds.PatientName = "Иванов^Пётр"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    assert "Иванов".encode() not in (tmp_path / "x.dcm").read_bytes()
    hits = audit_tree(tmp_path, Identifiers(names=frozenset({"Иванов^Пётр"})))
    assert [(h.field, h.identifier_kind) for h in hits] == [
        ("DICOM (0010,0010) PatientName", "name")
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without permission")
def test_unreadable_file_is_a_hit(tmp_path: Path, identifiers: Identifiers) -> None:
    path = tmp_path / "secret.json"
    path.write_text("{}")
    path.chmod(0)
    try:
        hits = audit_tree(tmp_path, identifiers)
    finally:
        path.chmod(0o644)
    assert [h.identifier_kind for h in hits] == ["unreadable"]
