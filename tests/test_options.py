"""The participant-level options, each through the CLI on a small real inbox."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bidsport.cli.run import main
from bidsport.fileops import read_tsv
from bidsport.synthetic import SeriesSpec, Study, Subject, typical_session, write_series

NAMEFORMAT = r"(?P<subject_id>[^_]+)_(?P<session_name>.+)"


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """Two sessions of one subject, as folders: P01_V1 and P01_V2 (typical sessions)."""
    root = tmp_path / "inbox"
    for visit, date in (("V1", "20240101"), ("V2", "20240301")):
        for spec in typical_session():
            write_series(
                spec,
                root / f"P01_{visit}" / f"S{spec.series_number}",
                Subject(),
                Study(key=visit, date=date),
            )
    return root


def run(inbox: Path, out: Path, *args: str) -> int:
    return main([str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT, "-q", *args])


def images(out: Path) -> list[str]:
    return sorted(
        str(p.relative_to(out))
        for p in out.glob("sub-*/**/*")
        if p.is_file() and p.name.endswith((".nii", ".nii.gz"))
    )


def test_filters_by_datatype_and_provenance(inbox, tmp_path):
    out = tmp_path / "anat"
    assert run(inbox, out, "--include-datatype", "anat", "--session-label", "V1") == 0
    assert {Path(p).parts[2] for p in images(out)} == {"anat"}
    rows = read_tsv(out / "sourcedata/bidsport/sub-P01/ses-V1/series.tsv")
    bold = next(r for r in rows if r["suffix"] == "bold")
    assert "not in --include-datatype" in bold["excluded"]
    out2 = tmp_path / "noraw"
    assert run(inbox, out2, "--exclude-datatype", "func", "dwi", "--session-label", "ses-V1") == 0
    kinds = {Path(p).parts[2] for p in images(out2)}
    assert kinds == {"anat", "fmap"}


def test_keep_derived_with_provenance_filter(inbox, tmp_path):
    """--keep-derived keeps derived series of the provenances included, except the DTI maps
    (ADC...): named as dwi images they would take the DWI's bval/bvec."""
    mip = SeriesSpec(
        "tof_fl3d_tra_p2_multi-slab_MIP_SAG",
        30,
        image_type=("DERIVED", "PRIMARY", "MIP_SAG", "ND"),
        sequence_name="*fl3d1r_t70",
        repetition_time=21.0,
        echo_time=3.4,
    )
    write_series(mip, inbox / "P01_V1" / "S30", Subject(), Study(key="V1", date="20240101"))
    out = tmp_path / "derived"
    keep = ["--keep-derived", "--include-provenance", "projection", "dti_map"]
    assert run(inbox, out, *keep, "--session-label", "V1") == 0
    assert images(out) == ["sub-P01/ses-V1/anat/sub-P01_ses-V1_rec-MIP_angio.nii.gz"]
    rows = read_tsv(out / "sourcedata/bidsport/sub-P01/ses-V1/series.tsv")
    (adc,) = [r for r in rows if r["provenance"] == "dti_map"]
    assert adc["outputs"] == "n/a" and "even with --keep-derived" in adc["excluded"]


def test_nii_output_flat_layout_and_copies(inbox, tmp_path):
    out = tmp_path / "flat"
    assert (
        run(
            inbox,
            out,
            "--output-format",
            "nii",
            "--layout",
            "flat",
            "--no-symlink",
            "--session-label",
            "V1",
        )
        == 0
    )
    found = images(out)
    assert "sub-P01/ses-V1/sub-P01_ses-V1_T1w.nii" in found
    assert all(p.endswith(".nii") and len(Path(p).parts) == 3 for p in found)
    flat = out / "sourcedata/dicom/sub-P01/ses-V1"
    assert not any(p.is_symlink() for p in flat.iterdir())


def test_dicom_output_format_copies_the_series(inbox, tmp_path):
    """DICOM copies have no sidecar: a rule's sidecar keys are not applied, and said."""
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nname = "t1-sequence"\n[rules.match]\nseries_description = "mprage"\n'
        '[rules.set]\nsidecar = { PulseSequenceDetails = "site MPRAGE" }\n'
    )
    out = tmp_path / "dcm"
    assert (
        run(inbox, out, "--output-format", "dcm", "--session-label", "V1", "--rules", str(rules))
        == 0
    )
    t1 = out / "sub-P01/ses-V1/anat/sub-P01_ses-V1_T1w"
    assert t1.is_dir() and len(list(t1.iterdir())) == 6
    assert not images(out)
    report = json.loads(next((out / "derivatives/bidsport/logs").glob("*_report.json")).read_text())
    notes = [p["reason"] for s in report["sessions"] for p in s["problems"]]
    assert notes == [
        "rule 't1-sequence' sets sidecar keys (PulseSequenceDetails), but --output-format dcm "
        "writes no sidecar: not applied"
    ]


def test_rules_file_renames_a_series(inbox, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nname = "site T2"\n[rules.match]\nseries_description = "^t2_spc"\n'
        '[rules.set]\ndatatype = "anat"\nsuffix = "T2w"\nentities = { acq = "spc" }\n'
    )
    out = tmp_path / "rules"
    assert run(inbox, out, "--rules", str(rules), "--session-label", "V1") == 0
    assert (out / "sub-P01/ses-V1/anat/sub-P01_ses-V1_acq-spc_T2w.nii.gz").is_file()
    rows = read_tsv(out / "sourcedata/bidsport/sub-P01/ses-V1/series.tsv")
    assert next(r for r in rows if r["suffix"] == "T2w")["rule"] == "site T2"


def test_mapping_file_and_manifest(inbox, tmp_path):
    mapping = tmp_path / "map.tsv"
    mapping.write_text("packet\tsubject\tsession\nP01_V1\tSTUDY001\tbaseline\n")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "participant_id,session_id\nsub-STUDY001,ses-baseline\nsub-STUDY002,ses-baseline\n"
    )
    out = tmp_path / "mapped"
    code = main(
        [
            str(inbox),
            str(out),
            "participant",
            "--mapping",
            str(mapping),
            "--manifest",
            str(manifest),
            "--participant-label",
            "STUDY001",
            "-q",
        ]
    )
    assert code == 0
    assert (out / "sub-STUDY001/ses-baseline/anat/sub-STUDY001_ses-baseline_T1w.nii.gz").is_file()
    rows = {
        (r["participant_id"], r["session_id"]): r for r in read_tsv(out / "sourcedata/status.tsv")
    }
    assert rows[("sub-STUDY001", "ses-baseline")]["converted"] == "true"
    assert rows[("sub-STUDY002", "ses-baseline")]["imported"] == "false"  # expected, not here yet


def test_overwrite_modes(inbox, tmp_path):
    out = tmp_path / "ow"
    assert run(inbox, out, "--session-label", "V1") == 0
    t1 = out / "sub-P01/ses-V1/anat/sub-P01_ses-V1_T1w.nii.gz"
    stray = out / "sub-P01/ses-V1/anat/sub-P01_ses-V1_T1w_stray.txt"
    stray.write_text("left by hand")
    first = t1.stat().st_mtime_ns
    assert run(inbox, out, "--session-label", "V1") == 0  # skip: nothing redone
    assert t1.stat().st_mtime_ns == first
    assert run(inbox, out, "--session-label", "V1", "--overwrite", "overwrite") == 0
    assert t1.stat().st_mtime_ns != first and stray.exists()  # replaced in place
    assert run(inbox, out, "--session-label", "V1", "--overwrite", "clean") == 0
    assert t1.is_file() and not stray.exists()  # the session was removed first


def test_a_format_or_layout_change_is_noted_on_a_done_session(inbox, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(inbox, out, "--session-label", "V1") == 0
    before = images(out)
    capsys.readouterr()
    args = [str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT]
    changed = [*args, "--session-label", "V1", "--output-format", "nii", "--layout", "flat"]
    for _ in range(2):  # the second run is answered by the quick re-run: the same note
        assert main(changed) == 0
        captured = capsys.readouterr()
        assert "sub-P01_ses-V1: already done (skipped)" in captured.out
        assert (
            "converted earlier as nii.gz in the bids layout, not as this run's nii in the "
            "flat layout: kept as it is (--overwrite skip)" in captured.err
        )
        assert images(out) == before
    assert main([*args, "--session-label", "V1"]) == 0  # as it was converted: no note
    assert "converted earlier" not in capsys.readouterr().err
    assert main([*changed, "--overwrite", "overwrite"]) == 0
    found = images(out)
    assert found and all(p.endswith(".nii") and len(Path(p).parts) == 3 for p in found)
    session = out / "sub-P01/ses-V1"
    assert not [p for p in session.iterdir() if p.is_dir()]  # no datatype folder left empty


def test_archive_policy_copy_and_move_only_after_success(tmp_path):
    import shutil

    inbox = tmp_path / "inbox"
    write_series(typical_session()[1], tmp_path / "src" / "GOOD")
    shutil.make_archive(str(inbox / "GOOD"), "zip", tmp_path / "src" / "GOOD")
    (inbox / "BAD.zip").write_bytes(b"PK\x03\x04 truncated")
    out = tmp_path / "out"
    code = main([str(inbox), str(out), "participant", "--archive", "move", "-q"])
    assert code == 3
    assert not (inbox / "GOOD.zip").exists()  # moved after it was converted
    assert (out / "sourcedata/packets/GOOD.zip").is_file()
    assert (inbox / "BAD.zip").is_file()  # failed: left where it was


def test_second_session_later_keeps_the_first_untouched(inbox, tmp_path):
    out = tmp_path / "later"
    assert run(inbox, out, "--session-label", "V1") == 0
    before = {p: p.stat().st_mtime_ns for p in (out / "sub-P01/ses-V1").rglob("*") if p.is_file()}
    assert run(inbox, out) == 0
    after = {p: p.stat().st_mtime_ns for p in (out / "sub-P01/ses-V1").rglob("*") if p.is_file()}
    assert before == after
    assert (out / "sub-P01/ses-V2/anat/sub-P01_ses-V2_T1w.nii.gz").is_file()


def test_repeated_acquisitions_get_runs_in_time_order(tmp_path):
    inbox = tmp_path / "inbox"
    t1 = typical_session()[1]
    # series 12 acquired before series 2: runs follow time, not series numbers
    write_series(
        t1.__class__(**{**t1.__dict__, "series_number": 12, "acquisition_time": "080000.000000"}),
        inbox / "P09",
    )
    write_series(t1, inbox / "P09")
    out = tmp_path / "runs"
    assert main([str(inbox), str(out), "participant", "-q"]) == 0
    rows = {
        r["series_number"]: r
        for r in read_tsv(out / "sourcedata/bidsport/sub-P09/series.tsv")
        if r["suffix"] == "T1w"
    }
    assert rows["12"]["run"] == "1" and rows["2"]["run"] == "2"
    scans = read_tsv(out / "sub-P09/sub-P09_scans.tsv")
    run1 = next(r for r in scans if "run-1_T1w" in r["filename"])
    assert run1["acq_time"].endswith("08:00:00")
    sidecar = json.loads((out / "sub-P09/anat/sub-P09_run-1_T1w.json").read_text())
    assert sidecar["SeriesNumber"] == 12
    assert os.path.isfile(out / "sub-P09/anat/sub-P09_run-2_T1w.nii.gz")


def test_repeated_label_options_add_up_and_a_label_matching_nothing_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As in a SLURM script that builds its command from parts: every occurrence of
    --participant-label/--session-label counts (argparse would keep only the last), a
    label given twice is processed once, and labels that match no packet are named."""
    root = tmp_path / "inbox"
    for subject in ("P01", "P02", "P03"):
        for spec in typical_session()[:1]:
            write_series(spec, root / f"{subject}_V1", Subject(patient_id=subject), Study(subject))
    code = main(
        [
            str(root),
            str(tmp_path / "out"),
            "participant",
            "--nameformat",
            NAMEFORMAT,
            "--dry-run",
            "--participant-label",
            "P01",
            "sub-P01",
            "--participant-label",
            "P03",
            "p02",
            "--session-label",
            "V1",
            "--session-label",
            "V9",
        ]
    )
    assert code == 0
    out, err = capsys.readouterr()
    assert out.count("packet P01_V1 -> sub-P01 ses-V1") == 1
    assert out.count("packet P03_V1 -> sub-P03 ses-V1") == 1
    assert "sub-P02" not in out
    assert "--participant-label p02: no packet of the inbox matched it" in err
    assert "--session-label V9: no packet of the inbox matched it" in err
    assert not (tmp_path / "out").exists()

    # labels of the inbox that are never together: each is said to be in the inbox
    write_series(typical_session()[0], root / "P02_V2", Subject(patient_id="P02"), Study("b"))
    args = [str(root), str(tmp_path / "out"), "participant", "--nameformat", NAMEFORMAT]
    code = main([*args, "--dry-run", "--participant-label", "P01", "--session-label", "V2"])
    assert code == 0
    err = capsys.readouterr().err
    assert "--participant-label P01: in the inbox, but not with --session-label V2" in err
    assert "--session-label V2: in the inbox, but not with --participant-label P01" in err
    assert "no packet of the inbox matched it" not in err


def test_a_filter_both_included_and_excluded_is_refused(tmp_path, capsys):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    out = tmp_path / "out"
    for kind, value, other in (("datatype", "anat", "func"), ("provenance", "raw", "swi")):
        args = [f"--include-{kind}", value, other, f"--exclude-{kind}", value]
        assert run(inbox, out, *args) == 2
        assert f"--include-{kind} and --exclude-{kind} both name {value}" in capsys.readouterr().err
    assert not out.exists()
