"""Names across re-runs: a session redone keeps the names of what it converted before,
leaves no stale image behind, never writes two series to one file, and a packet with
nothing to convert fails instead of counting as converted.

Real DICOM files (bidsport.synthetic) converted by the real dcm2niix.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from bidsport.cli.run import main
from bidsport.fileops import read_tsv
from bidsport.layout import DatasetLayout
from bidsport.status import read_status_record
from bidsport.synthetic import SeriesSpec, Study, Subject, write_series

MPRAGE = {
    "scanning_sequence": ("GR", "IR"),
    "sequence_variant": ("SK", "SP", "MP"),
    "sequence_name": "*tfl3d1_16ns",
    "repetition_time": 2300.0,
    "echo_time": 2.98,
    "inversion_time": 900.0,
}
NAMEFORMAT = r"(?P<subject_id>[^_]+)_(?P<session_name>.+)"
SPIN_ECHO_T1 = {
    "scanning_sequence": ("SE",),
    "sequence_variant": ("SP",),
    "sequence_name": "*se2d1",
    "mr_acquisition_type": "2D",
    "repetition_time": 500.0,
    "echo_time": 12.0,
}


def series(folder: Path, description: str, number: int, time: str, **kw: object) -> None:
    spec = SeriesSpec(description, number, acquisition_time=f"{time}.000000", **kw)  # type: ignore[arg-type]
    write_series(spec, folder / f"s{number}", Subject(), Study(key="rerun"))


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([*args, "--n-procs", "1"])
    return code, out.getvalue()


def images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.nii.gz"))


def test_a_packet_added_to_a_session_renames_nothing(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    mapping = tmp_path / "map.csv"
    mapping.write_text("packet,subject,session\npA,01,1\npB,01,1\n", encoding="utf-8")
    series(inbox / "pA", "t1_mprage_sag", 2, "090100", **MPRAGE)
    assert run(str(inbox), str(out), "participant", "--mapping", str(mapping))[0] == 0
    anat = out / "sub-01" / "ses-1" / "anat"
    assert images(anat) == ["sub-01_ses-1_T1w.nii.gz"]

    # a second T1w protocol arrives: alone, the session would name both with acq- labels
    series(inbox / "pB", "t1_se_tra", 20, "094000", **SPIN_ECHO_T1)
    code, text = run(str(inbox), str(out), "participant", "--mapping", str(mapping))
    assert code == 0, text
    assert images(anat) == ["sub-01_ses-1_T1w.nii.gz", "sub-01_ses-1_acq-t1setra_T1w.nii.gz"]
    assert sorted(p.name for p in anat.iterdir()) == sorted(
        name.replace(".nii.gz", ext) for name in images(anat) for ext in (".nii.gz", ".json")
    )
    scans = read_tsv(out / "sub-01" / "ses-1" / "sub-01_ses-1_scans.tsv")
    assert [r["filename"] for r in scans] == [f"anat/{name}" for name in images(anat)]
    rows = {r["series_number"]: r for r in read_tsv(DatasetLayout(out).series_table("01", "1"))}
    assert "as an earlier run named it" in rows["2"]["evidence"]
    assert "acq-t1mpragesag" in rows["2"]["evidence"]  # what this run alone would have named it


def test_overwrite_after_a_rules_change_writes_each_series_once(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    series(inbox / "P04", "t1_mprage_sag", 2, "090100", **MPRAGE)
    series(inbox / "P04", "t1_mprage_sag", 3, "090600", **MPRAGE)
    rules = tmp_path / "split.toml"
    rules.write_text(
        "".join(
            f'[[rules]]\nname = "r{n}"\n[rules.match]\nseries_number = {n}\n'
            f'[rules.set]\nentities = {{ acq = "{acq}" }}\n'
            for n, acq in ((2, "a"), (3, "b"))
        ),
        encoding="utf-8",
    )
    assert run(str(inbox), str(out), "participant", "--rules", str(rules))[0] == 0
    anat = out / "sub-P04" / "anat"
    assert images(anat) == ["sub-P04_acq-a_T1w.nii.gz", "sub-P04_acq-b_T1w.nii.gz"]

    code, text = run(str(inbox), str(out), "participant", "--overwrite", "overwrite")
    assert code == 0, text
    assert images(anat) == ["sub-P04_run-1_T1w.nii.gz", "sub-P04_run-2_T1w.nii.gz"]
    assert not list(anat.glob("*acq-*"))  # the earlier names' images and sidecars are gone
    assert "removed anat/sub-P04_acq-a_T1w.nii.gz" in text
    scans = read_tsv(out / "sub-P04" / "sub-P04_scans.tsv")
    assert [r["filename"] for r in scans] == [f"anat/{name}" for name in images(anat)]

    # and back: the same run labels are no longer kept for names that changed again
    assert run(str(inbox), str(out), "participant", "--rules", str(rules), "--overwrite",
               "overwrite")[0] == 0  # fmt: skip
    assert images(anat) == ["sub-P04_acq-a_T1w.nii.gz", "sub-P04_acq-b_T1w.nii.gz"]


def test_a_packet_with_nothing_to_convert_fails_and_is_not_archived(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    (inbox / "EMPTY").mkdir(parents=True)
    (inbox / "EMPTY" / "notes.txt").write_text("scanner notes\n", encoding="utf-8")
    (inbox / "EMPTY" / "cut.dcm").write_bytes(b"\0" * 128 + b"DICM\x02\x00")
    series(inbox / "GOOD", "t1_mprage_sag", 2, "090100", **MPRAGE)

    code, text = run(str(inbox), str(out), "participant", "--archive", "delete")
    assert code == 3, text  # some sessions failed
    assert "sub-EMPTY: no DICOM image series in packet EMPTY: 2 files, none usable" in text
    record = read_status_record(DatasetLayout(out), "EMPTY", None)
    assert record is not None and not record.converted and record.last_error
    assert (inbox / "EMPTY" / "notes.txt").is_file() and (inbox / "EMPTY" / "cut.dcm").is_file()
    assert not (inbox / "GOOD").exists()  # the converted packet was archived (deleted)

    # a default re-run tries the failed session again, and still says why
    code, text = run(str(inbox), str(out), "participant")
    assert code == 4 and "no DICOM image series in packet EMPTY" in text


def test_the_dry_run_names_series_as_the_run_does(tmp_path: Path) -> None:
    """A session sent as two packets is previewed as one (run numbers across packets);
    on a converted dataset the preview says the session is skipped, and keeps the names
    an earlier run gave when a packet was added, as the run does."""
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    mapping = tmp_path / "map.csv"
    mapping.write_text("packet,subject,session\npA,01,1\npB,01,1\n", encoding="utf-8")
    series(inbox / "pA", "t1_mprage_sag", 2, "090100", **MPRAGE)
    series(inbox / "pB", "t1_mprage_sag", 3, "091000", **MPRAGE)
    args = [str(inbox), str(out), "participant", "--mapping", str(mapping)]

    code, plan = run(*args, "--dry-run")
    assert code == 0 and not out.exists()
    assert "packets pA, pB -> sub-01 ses-1 (mapping)" in plan
    assert plan.count("-> anat/sub-01_ses-1_run-") == 2
    assert "-> anat/sub-01_ses-1_run-1_T1w" in plan and "-> anat/sub-01_ses-1_run-2_T1w" in plan

    assert run(*args)[0] == 0
    code, plan = run(*args, "--dry-run")
    assert code == 0 and "already converted from these packets: skipped" in plan

    series(inbox / "pC", "t1_se_tra", 20, "094000", **SPIN_ECHO_T1)
    mapping.write_text(mapping.read_text(encoding="utf-8") + "pC,01,1\n", encoding="utf-8")
    code, plan = run(*args, "--dry-run")
    assert code == 0 and "skipped" not in plan
    code, text = run(*args)
    assert code == 0, text
    written = images(out / "sub-01" / "ses-1" / "anat")
    assert [f"-> anat/{name.removesuffix('.nii.gz')}" in plan for name in written] == [True] * 3
    assert "sub-01_ses-1_run-1_T1w.nii.gz" in written  # named as before the new packet


def test_a_rule_that_decides_no_series_is_named(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    series(inbox / "P01", "t1_mprage_sag", 2, "090100", **MPRAGE)
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nname = "t1"\n[rules.match]\nseries_description = "mprage"\n'
        '[rules.set]\ndatatype = "anat"\nsuffix = "T1w"\n'
        '[[rules]]\nname = "typo"\n[rules.match]\nseries_description = "mpraeg"\n'
        '[rules.set]\ndatatype = "anat"\nsuffix = "T2w"\n',
        encoding="utf-8",
    )
    args = [str(inbox), str(out), "participant", "--rules", str(rules)]
    code, text = run(*args)
    assert code == 0, text
    assert "--rules: 'typo' decided no series of the 1 session(s) classified by this run" in text
    assert "'t1'" not in text
    code, text = run(*args)  # every session skipped: nothing is said of the rules
    assert code == 0 and "already" in text and "--rules:" not in text


def test_mapping_rows_without_packet_and_unmapped_packets_are_named(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    series(inbox / "pA", "t1_mprage_sag", 2, "090100", **MPRAGE)
    series(inbox / "Doe_John", "t1_mprage_sag", 2, "090100", **MPRAGE)
    mapping = tmp_path / "map.csv"
    mapping.write_text("packet,subject,session\npA,01,1\npAA,02,1\n", encoding="utf-8")
    code, text = run(str(inbox), str(out), "participant", "--mapping", str(mapping), "--dry-run")
    assert code == 0
    assert "--mapping: no packet of the inbox is named pAA" in text
    assert (
        "--mapping does not name 1 packet(s), labelled from their names instead "
        "(--nameformat, or the whole name): Doe_John"
    ) in text


T2W = {"scanning_sequence": ("SE",), "repetition_time": 5000.0, "echo_time": 100.0}
DWI = {
    "scanning_sequence": ("EP",),
    "sequence_variant": ("SK",),
    "sequence_name": "ep_b1000",
    "mr_acquisition_type": "2D",
    "n_volumes": 3,
    "b_values": (0.0, 1000.0, 1000.0),
    "extra": {"DiffusionDirectionality": "DIRECTIONAL"},
}


def test_another_output_format_keeps_the_sidecars_it_wrote(tmp_path: Path) -> None:
    """nii.gz then nii: the old images go, their sidecars (the same names) are the new
    images' and stay, bval/bvec too."""
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    series(inbox / "P", "t1_mprage_sag", 2, "090100", **MPRAGE)
    series(inbox / "P", "ep2d_diff_b1000", 5, "091000", **DWI)
    assert run(str(inbox), str(out), "participant")[0] == 0
    dwi = out / "sub-P" / "dwi"
    assert sorted(p.name for p in dwi.iterdir())[-1] == "sub-P_dwi.nii.gz"
    args = ["--output-format", "nii", "--overwrite", "overwrite"]
    code, text = run(str(inbox), str(out), "participant", *args)
    assert code == 0, text
    assert sorted(p.name for p in dwi.iterdir()) == [
        "sub-P_dwi.bval", "sub-P_dwi.bvec", "sub-P_dwi.json", "sub-P_dwi.nii"
    ]  # fmt: skip
    assert "removed dwi/sub-P_dwi.nii.gz" in text
    assert (out / "sub-P" / "anat" / "sub-P_T1w.json").is_file()


def converted_then_deleted(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Packet pA (a T1w of sub-01 ses-1) converted with --anonymize --archive delete, so
    gone from the inbox; (inbox, OUTPUT_DIR, the command) for packet pB of that session."""
    inbox, out, key = tmp_path / "inbox", tmp_path / "bids", tmp_path / "study.key"
    mapping = tmp_path / "map.csv"
    mapping.write_text("packet,subject,session\npA,01,1\npB,01,1\n", encoding="utf-8")
    series(inbox / "pA", "t1_mprage_sag", 2, "090100", **MPRAGE)
    anon = ["--mapping", str(mapping), "--anonymize", "--anonymize-key", str(key)]
    args = [str(inbox), str(out), "participant", *anon, "--archive", "delete"]
    assert run(*args)[0] == 0 and not (inbox / "pA").exists()
    return inbox, out, args


def test_the_images_of_packets_gone_from_the_inbox_are_kept(tmp_path: Path) -> None:
    """--anonymize --archive delete: the first packet is gone when a second one arrives
    for the session. The new one is converted (not taken for done), and the first one's
    images, which this run cannot see, stay on disk and in the tables."""
    inbox, out, args = converted_then_deleted(tmp_path)
    anat = out / "sub-01" / "ses-1" / "anat"
    assert images(anat) == ["sub-01_ses-1_T1w.nii.gz"]

    series(inbox / "pB", "t2_tse_tra", 3, "091000", **T2W)
    code, text = run(*args)
    assert code == 0, text
    assert images(anat) == ["sub-01_ses-1_T1w.nii.gz", "sub-01_ses-1_T2w.nii.gz"]
    rows = read_tsv(DatasetLayout(out).series_table("01", "1"))
    assert sorted(r["outputs"] for r in rows) == [
        "anat/sub-01_ses-1_T1w.nii.gz", "anat/sub-01_ses-1_T2w.nii.gz"
    ]  # fmt: skip
    scans = read_tsv(out / "sub-01" / "ses-1" / "sub-01_ses-1_scans.tsv")
    assert [r["filename"] for r in scans] == [f"anat/{n}" for n in images(anat)]
    assert all(r["acq_time"] != "n/a" for r in scans)
    record = read_status_record(DatasetLayout(out), "01", "1")
    assert record is not None and all(
        name.startswith("packet-") for name in (record.packet or "").split(";")
    )  # pseudonyms: packet names may be the patient's
    assert "pA" not in (record.packet or "") and "pB" not in (record.packet or "")


def test_copying_identifiable_packets_into_the_dataset_is_refused(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    series(inbox / "pA", "t1_mprage_sag", 2, "090100", **MPRAGE)
    for policy in ("copy", "move"):
        code, text = run(str(inbox), str(tmp_path / "bids"), "participant", "--anonymize",
                         "--anonymize-key", str(tmp_path / "k"), "--archive", policy)  # fmt: skip
        assert code == 2 and "which --anonymize keeps free of them" in text
    assert not (tmp_path / "bids").exists()


def test_a_session_whose_images_were_deleted_is_converted_again(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    series(inbox / "P", "t1_mprage_sag", 2, "090100", **MPRAGE)
    assert run(str(inbox), str(out), "participant")[0] == 0
    shutil.rmtree(out / "sub-P")
    code, text = run(str(inbox), str(out), "participant")
    assert code == 0 and "sub-P: 1 images" in text
    assert images(out / "sub-P" / "anat") == ["sub-P_T1w.nii.gz"]


def test_only_images_bidsport_writes_are_removed(tmp_path: Path) -> None:
    """A hand-edited or foreign series table can name anything: only NIfTI images (or
    DICOM-copy folders) named like the session's, below it, are removed; a link itself,
    never its target; not what this run wrote, nor the sidecars of an image it wrote."""
    from bidsport.participant import remove_outputs

    session = tmp_path / "sub-01"
    anat = session / "anat"
    anat.mkdir(parents=True)
    for name in ("sub-01_T1w.nii.gz", "sub-01_T1w.json", "sub-01_T2w.nii.gz", "sub-01_T2w.json",
                 "sub-01_T1w_defaced.nii.gz", "notes.txt"):  # fmt: skip
        (anat / name).write_text("x", encoding="utf-8")
    outside = tmp_path / "outside.nii.gz"
    outside.write_text("keep", encoding="utf-8")
    (anat / "sub-01_link.nii.gz").symlink_to(outside)
    wanted = ["anat", "anat/notes.txt", "../outside.nii.gz", "/etc/passwd",
              "anat/sub-01_link.nii.gz", "anat/sub-01_T1w.nii.gz", "anat/sub-01_T2w.nii.gz"]  # fmt: skip
    removed, kept = remove_outputs(session, "sub-01", wanted, {"anat/sub-01_T2w.nii"})
    assert removed == [
        "anat/sub-01_link.nii.gz",
        "anat/sub-01_T1w.nii.gz",
        "anat/sub-01_T2w.nii.gz",
    ]
    assert [k.split(": ")[0] for k in kept] == wanted[:4]
    assert outside.read_text(encoding="utf-8") == "keep"
    # the T2w's sidecar is the sidecar of the .nii this run wrote: kept
    assert sorted(p.name for p in anat.iterdir()) == [
        "notes.txt", "sub-01_T1w_defaced.nii.gz", "sub-01_T2w.json"
    ]  # fmt: skip


def test_a_foreign_table_names_nothing_and_a_killed_runs_journal_is_read(tmp_path: Path) -> None:
    from bidsport.participant import OUTPUTS_JOURNAL, earlier_names

    table = tmp_path / "series.tsv"
    table.write_text(
        "series_id\tsuffix\tentities\trun\toutputs\n1.2\tT1w\tn/a\tn/a\tanat/sub-01_T1w.nii.gz\n",
        encoding="utf-8",
    )  # no datatype column: the names are not kept, the outputs are known
    journal = tmp_path / OUTPUTS_JOURNAL
    journal.write_text("1.2\tanat/sub-01_acq-x_T1w.nii.gz\n1.3\tfunc/sub-01_bold.nii.gz\n")
    names = earlier_names(table, journal)
    assert not names["1.2"].named and not names["1.3"].named
    assert names["1.2"].outputs == ("anat/sub-01_T1w.nii.gz", "anat/sub-01_acq-x_T1w.nii.gz")
    assert names["1.3"].outputs == ("func/sub-01_bold.nii.gz",) and names["1.3"].row is None


def test_earlier_images_of_failed_or_unseen_series_are_kept(tmp_path: Path) -> None:
    from bidsport.participant import EarlierName, _settle_earlier_outputs

    session = tmp_path / "sub-01"
    (session / "anat").mkdir(parents=True)
    for name in ("sub-01_T1w", "sub-01_acq-x_T1w", "sub-01_T2w", "sub-01_FLAIR", "sub-01_PDw"):
        (session / "anat" / f"{name}.nii.gz").write_text("x", encoding="utf-8")
    row = {"series_id": "?"}
    earlier = {
        "renamed": EarlierName("anat", "T1w", {}, "", ("anat/sub-01_T1w.nii.gz",), row),
        "failed": EarlierName("anat", "T2w", {}, "", ("anat/sub-01_T2w.nii.gz",), row),
        "unseen": EarlierName("anat", "FLAIR", {}, "", ("anat/sub-01_FLAIR.nii.gz",), row),
        "killed": EarlierName("", "", {}, "", ("anat/sub-01_PDw.nii.gz",)),  # journal only
    }
    written = {"renamed": ["anat/sub-01_acq-x_T1w.nii.gz"]}
    carried, notes = _settle_earlier_outputs(
        session, "sub-01", earlier, {"renamed", "failed"}, written, {"failed": "dcm2niix"}
    )
    assert carried == {"failed": ["anat/sub-01_T2w.nii.gz"], "unseen": ["anat/sub-01_FLAIR.nii.gz"]}
    assert sorted(p.name for p in (session / "anat").iterdir()) == [
        "sub-01_FLAIR.nii.gz", "sub-01_T2w.nii.gz", "sub-01_acq-x_T1w.nii.gz"
    ]  # fmt: skip
    assert [n.where for n in notes] == ["renamed", "failed", "killed"]


def test_a_packet_without_usable_image_fails_its_session_and_is_kept(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    mapping = tmp_path / "map.csv"
    mapping.write_text("packet,subject,session\npA,01,1\npB,01,1\n", encoding="utf-8")
    series(inbox / "pA", "t1_mprage_sag", 2, "090100", **MPRAGE)
    (inbox / "pB").mkdir()
    (inbox / "pB" / "IM0001").write_bytes(b"\0" * 128 + b"DICM\x02\x00\x00")  # cut short
    args = [str(inbox), str(out), "participant", "--mapping", str(mapping)]
    code, text = run(*args, "--archive", "delete")
    assert code == 3, text
    assert "sub-01_ses-1: FAILED: 1 fatal problem: packet pB holds no usable DICOM image" in text
    assert (inbox / "pA").is_dir() and (inbox / "pB" / "IM0001").is_file()  # none deleted
    assert images(out / "sub-01" / "ses-1" / "anat") == ["sub-01_ses-1_T1w.nii.gz"]
    record = read_status_record(DatasetLayout(out), "01", "1")
    assert record is not None and not record.converted and record.last_error


def test_anonymize_on_a_dataset_made_without_it_is_refused(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    series(inbox / "P", "t1_mprage_sag", 2, "090100", **MPRAGE)
    assert run(str(inbox), str(out), "participant")[0] == 0
    anon = ["--anonymize", "--anonymize-key", str(tmp_path / "study.key")]
    code, text = run(str(inbox), str(out), "participant", *anon)
    assert code == 2 and "holds the identifiable imports of runs without --anonymize" in text


def test_a_new_series_never_takes_the_name_of_one_the_run_cannot_see(tmp_path: Path) -> None:
    """--anonymize --archive delete: the first packet's T1w is kept (its packet is gone);
    a repeat of that T1w in a new packet is numbered beside it, never written over it."""
    import hashlib

    inbox, out, args = converted_then_deleted(tmp_path)
    anat = out / "sub-01" / "ses-1" / "anat"
    first = hashlib.md5((anat / "sub-01_ses-1_T1w.nii.gz").read_bytes()).hexdigest()
    series(inbox / "pB", "t1_mprage_sag", 7, "093000", **MPRAGE)
    code, text = run(*args)
    assert code == 0, text
    assert images(anat) == ["sub-01_ses-1_T1w.nii.gz", "sub-01_ses-1_run-2_T1w.nii.gz"]
    assert hashlib.md5((anat / "sub-01_ses-1_T1w.nii.gz").read_bytes()).hexdigest() == first
    rows = read_tsv(DatasetLayout(out).series_table("01", "1"))
    assert sorted(r["outputs"] for r in rows) == [f"anat/{n}" for n in images(anat)]


def test_a_lone_unusable_packet_joining_a_converted_session_fails_it(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    mapping = tmp_path / "map.csv"
    mapping.write_text("packet,subject,session\npA,01,1\npB,01,1\n", encoding="utf-8")
    series(inbox / "pA", "t1_mprage_sag", 2, "090100", **MPRAGE)
    args = [str(inbox), str(out), "participant", "--mapping", str(mapping), "--archive", "delete"]
    assert run(*args)[0] == 0 and not (inbox / "pA").exists()
    (inbox / "pB").mkdir()
    (inbox / "pB" / "IM0001").write_bytes(b"\0" * 128 + b"DICM\x02\x00\x00")
    code, text = run(*args)
    assert code == 3 and "packet pB holds no usable DICOM image" in text
    assert (inbox / "pB" / "IM0001").is_file()


def test_the_dry_run_numbers_runs_anew_with_overwrite_as_the_run_does(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    mapping = tmp_path / "map.csv"
    mapping.write_text("packet,subject,session\npA,01,1\npB,01,1\n", encoding="utf-8")
    series(inbox / "pA", "t1_mprage_sag", 3, "091000", **MPRAGE)
    args = [str(inbox), str(out), "participant", "--mapping", str(mapping)]
    assert run(*args)[0] == 0
    series(inbox / "pB", "t1_mprage_sag", 2, "090100", **MPRAGE)  # acquired earlier
    code, plan = run(*args, "--overwrite", "overwrite", "--dry-run")
    assert code == 0
    assert "-> anat/sub-01_ses-1_run-1_T1w" in plan and "-> anat/sub-01_ses-1_run-2_T1w" in plan
    assert run(*args, "--overwrite", "overwrite")[0] == 0
    rows = {r["series_number"]: r for r in read_tsv(DatasetLayout(out).series_table("01", "1"))}
    assert rows["2"]["run"] == "1" and rows["3"]["run"] == "2"


def test_packet_names_are_replaced_whole_and_once(tmp_path: Path) -> None:
    from bidsport import privacy
    from bidsport.anonymize import default_policy

    anon = privacy.Anonymization(b"k" * 32, default_policy(False), tmp_path)
    hide = privacy.packet_scrubber(anon, ["4711", "14", "20"])
    a, b = hide("4711"), hide("14")
    assert a.startswith("packet-") and b.startswith("packet-") and a != b
    assert hide("4711;14") == f"{a};{b}"
    assert hide("raw/20/IM1 and 1.2.498.20345") == f"raw/{hide('20')}/IM1 and 1.2.498.20345"


def test_a_run_with_filters_left_out_does_not_skip_what_they_left(tmp_path: Path) -> None:
    """The anatomy converted first (--include-datatype anat), then everything: the
    second run converts the series the first one's filter left out, and renames none."""
    from bidsport.synthetic import typical_session

    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    specs = {s.description: s for s in typical_session()}
    for name in ("t1_mprage_sag", "rfMRI_REST_AP"):
        write_series(specs[name], inbox / "01_1" / name, Subject(), Study(key="filters"))
    args = [str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT]
    assert run(*args, "--include-datatype", "anat")[0] == 0
    session = out / "sub-01" / "ses-1"
    assert sorted(p.name for p in session.glob("*/*.nii.gz")) == ["sub-01_ses-1_T1w.nii.gz"]
    code, text = run(*args, "--include-datatype", "anat")  # the same selection: done
    assert code == 0 and "already done (skipped)" in text
    code, text = run(*args)
    assert code == 0 and "already done" not in text, text
    assert sorted(p.relative_to(session).as_posix() for p in session.glob("*/*.nii.gz")) == [
        "anat/sub-01_ses-1_T1w.nii.gz",
        "func/sub-01_ses-1_task-rest_dir-AP_bold.nii.gz",
    ]
    code, text = run(*args, "--exclude-datatype", "func")  # a narrower selection: done
    assert code == 0 and "already done (skipped)" in text
