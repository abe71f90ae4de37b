"""--anonymize through the whole participant + group level: nothing identifying gets out.

The inbox's DICOMs carry distinctive fake identifiers in every field of the tag policy,
in a private block, in a nested sequence, in the series description and image comments,
and in the packet and file names. After participant + group level with --anonymize, the
PHI audit and an independent grep of the raw bytes of every file under OUTPUT_DIR find
none of them, while the images and the sidecar fields analysis needs are unchanged.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from bidsport.cli.run import main
from bidsport.fileops import read_tsv
from bidsport.synthetic import Study, Subject, typical_session, write_series
from bidsport.validator import find_validator

#: identifier strings planted in the inbox (all must vanish from OUTPUT_DIR)
LEAKS = {
    "PatientName": "Zzleakname^Johanna",
    "PatientID": "ZZPID4711",
    "PatientBirthDate": "19710203",
    "AccessionNumber": "ZZACC0815",
    "FillerOrderNumberImagingServiceRequest": "ZZFILLER01",
    "InstitutionName": "ZZSAINT HOSPITAL",
    "InstitutionAddress": "ZZ 1 Hospital Road",
    "InstitutionalDepartmentName": "ZZRADIOLOGY",
    "OtherPatientNames": "Zzothername^Hanna",
    "PerformedProcedureStepID": "ZZPPS0001",
    "PlacerOrderNumberImagingServiceRequest": "ZZPLACER01",
    "RequestedProcedureID": "ZZREQPROC1",
    "ScheduledProcedureStepID": "ZZSPS00001",
    "StationName": "ZZSTATION9",
    "StudyID": "ZZSTUDY7",
    "CountryOfResidence": "ZZLANDIA",
    "Occupation": "ZZASTRONAUT",
    "PatientAddress": "ZZ 12 Elm Street",
    "RegionOfResidence": "ZZREGION",
    "ImageComments": "scanned Zzleakname after lunch",
    "StudyComments": "ZZSTUDYCOMMENT",
    "RequestingPhysician": "Zzrequester^Paul",
    "ReferringPhysicianName": "Zzreferrer^Ann",
    "OperatorsName": "Zzoperator^Max",
    "PerformingPhysicianName": "Zzperformer^Eve",
    "DeviceSerialNumber": "ZZSERIAL123",
}
#: what a grep must not find (the distinctive part of each value)
NEEDLES = sorted(
    {
        "ZZLEAKNAME",
        "ZZPID4711",
        "ZZACC0815",
        "ZZSAINT",
        "ZZSTATION9",
        "ZZOTHERNAME",
        "ZZREQUESTER",
        "ZZREFERRER",
        "ZZOPERATOR",
        "ZZPERFORMER",
        "ZZSERIAL123",
        "ZZPRIVATE",
        "ZZNESTED",
        "ZZLANDIA",
        "ZZASTRONAUT",
        "ZZPPS0001",
        "ZZPLACER01",
        "ZZFILLER01",
        "ZZREQPROC1",
        "ZZSPS00001",
        "ZZSTUDYCOMMENT",
        "ZZRADIOLOGY",
        "ZZREGION",
        "19710203",
        "ZZSITEFOLDER",  # a folder of the export (its name not in any header)
    }
)
NAMEFORMAT = r"(?P<subject_id>[A-Z]+\d+)_(?P<session_name>[^_]+)"


def _identified_series(
    folder: Path, birth: str = LEAKS["PatientBirthDate"], *, date: str, study_key: str
) -> None:
    extra = {
        k: v for k, v in LEAKS.items() if k not in ("PatientName", "PatientID", "PatientBirthDate")
    }
    nested = Dataset()
    nested.RequestedProcedureID = "ZZNESTED01"
    nested.RequestedProcedureDescription = "for Zzleakname"
    extra["RequestAttributesSequence"] = Sequence([nested])
    subject = Subject(
        patient_id=LEAKS["PatientID"],
        patient_name=LEAKS["PatientName"],
        birth_date=birth,
        extra=extra,
    )
    study = Study(
        key=study_key,
        date=date,
        accession=LEAKS["AccessionNumber"],
        institution=LEAKS["InstitutionName"],
        station=LEAKS["StationName"],
    )
    for spec in typical_session():
        if spec.description == "t1_mprage_sag":
            spec = spec.__class__(**{**spec.__dict__, "description": "t1_mprage_sag_Zzleakname"})
        paths = write_series(
            spec,
            folder / f"ZZSITEFOLDER_{date}",  # as exports name folders: site, date
            subject,
            study,
            name_pattern="ZZPID4711_{series:03d}_{instance:05d}.dcm",
        )
        for path in paths:  # a private block with an identifier, as vendors write them
            import pydicom

            ds = pydicom.dcmread(path)
            block = ds.private_block(0x0029, "ZZVENDOR PRIVATE", create=True)
            block.add_new(0x10, "LO", "ZZPRIVATE Zzleakname")
            ds.save_as(path, enforce_file_format=True)
    # a file that is not DICOM: named in files.tsv and in the run's report as excluded
    (folder / f"ZZSITEFOLDER_{date}" / "notes.txt").write_text("not an image")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("anon")
    inbox = base / "inbox"
    # the packet names carry the patient's name too
    _identified_series(inbox / "SUB01_V1_Zzleakname", date="20240110", study_key="v1")
    key = base / "keys" / "project.key"
    work = base / "work"
    out = base / "bids"
    args = [
        "--nameformat",
        NAMEFORMAT,
        "--anonymize",
        "--anonymize-key",
        str(key),
        "--keep-private-tags",
        "-w",
        str(work),
    ]
    first = main([str(inbox), str(out), "participant", *args])
    # a second session of the same subject arrives later, in a separate run
    _identified_series(inbox / "SUB01_V2_Zzleakname", date="20240310", study_key="v2")
    second = main([str(inbox), str(out), "participant", *args])
    group = main([str(inbox), str(out), "group", "--audit-phi", "--anonymize-key", str(key)])
    plain = base / "plain"
    main([str(inbox), str(plain), "participant", "--nameformat", NAMEFORMAT, "-q"])
    return {
        "inbox": inbox,
        "out": out,
        "plain": plain,
        "key": key,
        "work": work,
        "codes": (first, second, group),
        "base": base,
    }


def test_runs_succeed_and_the_audit_passes(runs):
    assert runs["codes"] == (0, 0, 0)


def test_no_identifier_in_any_byte_of_any_file(runs):
    out: Path = runs["out"]
    checked = 0
    for dirpath, dirnames, filenames in os.walk(out):
        for name in dirnames + filenames:
            upper = name.upper()
            assert not any(n in upper for n in NEEDLES), f"identifier in a name: {name}"
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink():
                target = os.readlink(path).upper()
                assert not any(n in target for n in NEEDLES), path
                continue
            data = path.read_bytes().upper()
            if path.suffix == ".gz":
                import gzip

                data += gzip.decompress(path.read_bytes()).upper()
            left = [n for n in NEEDLES if n.encode() in data]
            assert not left, f"{path.relative_to(out)} holds {left}"
            checked += 1
    assert checked > 100


def test_the_key_and_identifiers_stay_outside_the_dataset(runs):
    assert runs["key"].is_file()
    assert not runs["key"].is_relative_to(runs["out"])
    assert not (runs["out"] / "sourcedata" / "raw").exists()  # originals stay in the work dir


def test_files_tables_name_the_files_by_pseudonyms_kept_beside_the_key(runs):
    """files.tsv names each file by its packet's pseudonym and a pseudonym of its path in
    the packet (the export's folders carry sites and dates); which source file each one
    is stays beside the key, readable by its owner only."""
    tables = sorted(runs["out"].glob("sourcedata/bidsport/sub-SUB01/ses-*/files.tsv"))
    assert len(tables) == 2
    shown = {row["file"]: row for table in tables for row in read_tsv(table)}
    assert all(re.fullmatch(r"packet-[0-9a-f]{8}/file-[0-9a-f]{12}", f) for f in shown)
    kept = sorted((runs["key"].parent / "project.key.phi").glob("*.files.tsv"))
    assert len(kept) == 2 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)
    sources = {row["file"]: row["source"] for p in kept for row in read_tsv(p)}
    assert set(sources) == set(shown)
    notes = [f for f, source in sources.items() if source.endswith("/notes.txt")]
    assert len(notes) == 2 and all(shown[f]["excluded"] for f in notes)
    for source in sources.values():
        packet, rest = source.split("/", 1)
        assert packet.startswith("SUB01_V") and rest.startswith("ZZSITEFOLDER_2024")


def test_same_pseudonyms_and_date_shift_across_sessions_and_runs(runs):
    import pydicom

    out = runs["out"]
    firsts = [next((out / f"sourcedata/dicom/sub-SUB01/ses-{s}").iterdir()) for s in ("V1", "V2")]
    ds1, ds2 = (pydicom.dcmread(p, stop_before_pixels=True) for p in firsts)
    assert ds1.PatientID == ds2.PatientID != LEAKS["PatientID"]
    assert str(ds1.PatientName) == str(ds2.PatientName)
    from datetime import date

    def day(value: str) -> date:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))

    assert (day(ds2.StudyDate) - day(ds1.StudyDate)).days == 60  # interval kept
    assert day(ds1.StudyDate).year <= 1925  # BIDS: shifted far into the past
    scans = read_tsv(out / "sub-SUB01/ses-V1/sub-SUB01_ses-V1_scans.tsv")
    assert all(r["acq_time"].startswith(ds1.StudyDate[:4]) for r in scans)


def test_images_and_analysis_fields_are_unchanged(runs):
    anon, plain = runs["out"], runs["plain"]
    rel = "sub-SUB01/ses-V1"
    for image in (
        "anat/sub-SUB01_ses-V1_T1w",
        "func/sub-SUB01_ses-V1_task-rest_dir-AP_bold",
        "dwi/sub-SUB01_ses-V1_dir-AP_dwi",
    ):
        a = nib.load(anon / rel / f"{image}.nii.gz")
        p = nib.load(plain / rel / f"{image}.nii.gz")
        assert np.array_equal(a.get_fdata(), p.get_fdata()), image
        assert np.allclose(a.affine, p.affine, atol=1e-5), image
        sa = json.loads((anon / rel / f"{image}.json").read_text())
        sp = json.loads((plain / rel / f"{image}.json").read_text())
        for key in ("RepetitionTime", "EchoTime", "FlipAngle", "PhaseEncodingAxis"):
            assert sa.get(key) == sp.get(key), (image, key)
    bval = "dwi/sub-SUB01_ses-V1_dir-AP_dwi"
    for ext in (".bval", ".bvec"):
        assert (anon / rel / f"{bval}{ext}").read_text() == (
            plain / rel / f"{bval}{ext}"
        ).read_text()


def test_the_audit_finds_the_leaks_of_a_plain_run(runs, capsys):
    code = main(
        [str(runs["inbox"]), str(runs["plain"]), "group", "--audit-phi", "--skip-validation", "-q"]
    )
    assert code == 5
    err = capsys.readouterr().err
    assert "PHI audit found" in err
    assert "ZZPID4711" not in err.upper()  # the audit report does not leak either


@pytest.mark.parametrize(
    ("packet", "secret", "reason"),
    [
        ("ZZPID4711", "ZZPID4711", "the subject label equals the patient ID"),
        ("ZzleaknameJ_V1", "ZZLEAKNAME", "the subject label contains the patient name"),
        ("PID4711_V1", "PID4711", "the subject label is part of the patient ID"),
        ("SUB02_20240110", "20240110", "the session label equals the date of a study"),
    ],
)
def test_a_label_that_carries_an_identifier_is_refused(
    tmp_path, runs, capsys, packet, secret, reason
):
    """A subject or session label taken from a packet name must not carry the patient's
    name, ID or study date into every file name (BIDS labels have no token boundaries:
    ``ZzleaknameJ`` holds the name ``Zzleakname``)."""
    inbox = tmp_path / "inbox"
    folder = inbox / packet
    folder.mkdir(parents=True)
    src = next(runs["inbox"].rglob("*.dcm"))
    (folder / "a.dcm").write_bytes(src.read_bytes())
    out = tmp_path / "out"
    args = [str(inbox), str(out), "participant", "--anonymize", "--anonymize-key", str(runs["key"])]
    if "_" in packet:
        args += ["--nameformat", r"(?P<subject_id>[^_]+)_(?P<session_name>.+)"]
    code = main([*args, "-q"])
    assert code == 4
    err = capsys.readouterr().err
    assert reason in err and "--mapping" in err  # (naming the label, as the user gave it)
    for path in out.rglob("*"):  # the refused label went nowhere
        assert secret not in path.name.upper()
        if path.is_file():
            assert secret.encode() not in path.read_bytes().upper()


def test_anonymized_dataset_validates(runs):
    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")
    from bidsport.validator import run_validator

    result = run_validator(runs["out"])
    assert not result.errors, [e.describe() for e in result.errors]


def test_an_anonymized_dataset_takes_only_runs_with_its_key(tmp_path, runs, capsys):
    """The dataset records the fingerprint of its key: a run without --anonymize (one task
    of a job array without the flag), or with another key, is refused before it writes
    anything; the dataset's own key is taken."""
    import shutil

    out = tmp_path / "bids"
    shutil.copytree(runs["out"], out, symlinks=True)
    record = json.loads((out / "sourcedata/bidsport/anonymization.json").read_text())
    assert set(record) == {"anonymized_by", "key_fingerprint", "note"}
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    inbox = str(runs["inbox"])
    plain = [inbox, str(out), "participant", "--nameformat", NAMEFORMAT]
    assert main([*plain, "-q"]) == 2
    assert "is an anonymized dataset" in capsys.readouterr().err
    other = [*plain, "--anonymize", "--anonymize-key", str(tmp_path / "other.key"), "-q"]
    assert main(other) == 2
    assert "was anonymized with another key" in capsys.readouterr().err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    same = [*plain, "--anonymize", "--anonymize-key", str(runs["key"]), "-q"]
    same += ["-w", str(runs["work"])]
    assert main(same) == 0


def test_a_work_dir_inside_the_dataset_is_refused_with_anonymize(tmp_path, runs, capsys):
    out = tmp_path / "bids"
    args = [str(runs["inbox"]), str(out), "participant", "--nameformat", NAMEFORMAT]
    args += ["--anonymize", "--anonymize-key", str(tmp_path / "k.key"), "-w", str(out / "w")]
    assert main([*args, "-q"]) == 2
    assert "is inside OUTPUT_DIR" in capsys.readouterr().err
    assert not (out / "w").exists()


def test_flat_names_hash_the_source_paths_with_the_key(runs):
    """A flat folder's file names end in a hash of the file's source path: with
    --anonymize a keyed one (anyone could otherwise confirm a guessed path, which names
    the patient, and link datasets made with different keys)."""

    def hashes(root: Path) -> set[str]:
        return {p.stem.rpartition("_")[2] for p in (root / "sourcedata/dicom").rglob("*.dcm")}

    anonymized = hashes(runs["out"])
    assert anonymized and hashes(runs["plain"])
    assert not anonymized & hashes(runs["plain"])
