"""The whole participant + group level on the example inbox, through the CLI entry point."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from bidsport.cli.run import main
from bidsport.example import NAMEFORMAT, write_example_inbox
from bidsport.fileops import read_tsv
from bidsport.layout import DatasetLayout
from bidsport.validator import find_validator

SESSIONS = ["P01_V1", "P01_V2", "P02_V1", "P02_V2", "P03_V1", "P03_V2", "P04_V1"]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file below ``folder``."""
    result = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            result[str(path.relative_to(folder))] = (digest, path.stat().st_mtime_ns)
    return result


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    base = tmp_path_factory.mktemp("example")
    inbox = base / "inbox"
    write_example_inbox(inbox)
    before = snapshot(inbox)
    out = base / "bids"
    code = main([str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT, "-v"])
    return inbox, out, before, code


def test_participant_level_succeeds_and_leaves_the_inbox_alone(example):
    inbox, _, before, code = example
    assert code == 0
    assert snapshot(inbox) == before


def test_every_session_has_the_expected_images(example):
    _, out, _, _ = example
    for packet in SESSIONS:
        sub, ses = packet.split("_")
        d = out / f"sub-{sub}" / f"ses-{ses}"
        p = f"sub-{sub}_ses-{ses}"
        expected = [
            f"anat/{p}_T1w.nii.gz",
            f"anat/{p}_T2w.nii.gz",
            f"anat/{p}_FLAIR.nii.gz",
            f"func/{p}_task-rest_dir-AP_bold.nii.gz",
            f"func/{p}_task-rest_dir-AP_sbref.nii.gz",
            f"dwi/{p}_dir-AP_dwi.nii.gz",
            f"dwi/{p}_dir-AP_dwi.bval",
            f"dwi/{p}_dir-AP_dwi.bvec",
            f"fmap/{p}_magnitude1.nii.gz",
            f"fmap/{p}_phasediff.nii.gz",
        ]
        missing = [e for e in expected if not (d / e).is_file()]
        assert not missing, f"{packet}: missing {missing}; have {sorted(map(str, d.rglob('*')))}"
        bold = json.loads((d / f"func/{p}_task-rest_dir-AP_bold.json").read_text())
        assert bold["TaskName"] == "rest"
        assert "InstitutionName" not in bold and "StationName" not in bold
        phasediff = json.loads((d / f"fmap/{p}_phasediff.json").read_text())
        assert (
            f"bids::sub-{sub}/ses-{ses}/func/{p}_task-rest_dir-AP_bold.nii.gz"
            in (phasediff["IntendedFor"])
        )
        scans = read_tsv(d / f"{p}_scans.tsv")
        assert {r["filename"] for r in scans} >= {e for e in expected if e.endswith(".nii.gz")}
        assert all(r["acq_time"].startswith("2024-01-0") for r in scans)


def test_series_table_explains_exclusions(example):
    _, out, _, _ = example
    rows = read_tsv(out / "sourcedata/bidsport/sub-P01/ses-V1/series.tsv")
    by_desc = {r["series_description"]: r for r in rows}
    assert by_desc["localizer"]["provenance"] == "localizer"
    assert by_desc["localizer"]["outputs"] == "n/a"
    assert by_desc["dMRI_dir6_AP_ADC"]["provenance"] == "dti_map"
    assert "derived" in by_desc["dMRI_dir6_AP_ADC"]["excluded"].lower()
    assert all(r["evidence"] != "n/a" for r in rows)
    files = read_tsv(out / "sourcedata/bidsport/sub-P01/ses-V1/files.tsv")
    reasons = {Path(r["file"]).name: r["excluded"] for r in files}
    for junk in ("README.txt", "empty.dat", "Thumbs.db", "truncated"):
        assert reasons[junk] != "n/a", junk


def test_every_symlink_is_relative_and_stays_inside(example):
    _, out, _, _ = example
    links = [p for p in out.rglob("*") if p.is_symlink()]
    assert links
    root = out.resolve()
    for link in links:
        assert not os.path.isabs(os.readlink(link)), link
        assert link.resolve().is_file() and link.resolve().is_relative_to(root), link


def test_status_table_has_every_session(example):
    _, out, _, _ = example
    rows = read_tsv(out / "sourcedata/status.tsv")
    assert len(rows) == len(SESSIONS)
    assert all(r["converted"] == "true" and r["last_error"] == "n/a" for r in rows)


def test_rerun_does_no_conversion_work(example):
    inbox, out, _, _ = example
    images = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    code = main([str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT])
    assert code == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == images


def test_group_level_validates(example):
    inbox, out, _, _ = example
    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")
    code = main([str(inbox), str(out), "group"])
    assert code == 0
    participants = read_tsv(out / "participants.tsv")
    assert [r["participant_id"] for r in participants] == [
        "sub-P01",
        "sub-P02",
        "sub-P03",
        "sub-P04",
    ]
    description = json.loads((out / "dataset_description.json").read_text())
    assert any(g["Name"] == "dcm2niix" for g in description["GeneratedBy"])


def test_dry_run_writes_nothing(example, tmp_path, capsys):
    inbox, _, _, _ = example
    out = tmp_path / "dry"
    code = main([str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT, "--dry-run"])
    assert code == 0
    assert not out.exists()
    text = capsys.readouterr().out
    assert "P02_V1.tar.gz -> sub-P02 ses-V1" in text
    assert "anat/sub-P02_ses-V1_T1w" in text
    assert "Thumbs.db" in text
    # a folder packet's gzipped files and nested archives are expanded, as the run does
    assert "-> anat/sub-P01_ses-V1_T2w" in text and "-> anat/sub-P01_ses-V1_FLAIR" in text
    assert "fmap/sub-P01_ses-V1_magnitude1" in text


def test_siemens_xa_mfsplit_run_becomes_one_bold(tmp_path):
    """Every fMRI volume exported as its own series (ImageType MFSPLIT): one 4D bold."""
    import nibabel as nib

    from bidsport.synthetic import SeriesSpec, write_series

    packet = tmp_path / "inbox" / "XA01"
    for volume in range(12):
        spec = SeriesSpec(
            "fMRI_rest_AP",
            5,
            n_slices=3,
            repetition_time=1000.0,
            image_type=("ORIGINAL", "PRIMARY", "M", "ND", "MFSPLIT"),
            acquisition_time=f"1000{volume:02d}.000000",
            scanning_sequence=("EP",),
            sequence_name="epfid2d1_64",
            mr_acquisition_type="2D",
            echo_time=30.0,
            extra={"SeriesInstanceUID": f"1.2.3.4.{volume + 1}"},
        )
        write_series(spec, packet, name_pattern=f"v{volume:02d}_{{instance:05d}}.dcm")
    out = tmp_path / "bids"
    assert main([str(tmp_path / "inbox"), str(out), "participant"]) == 0
    bolds = sorted((out / "sub-XA01" / "func").glob("*_bold.nii.gz"))
    assert [b.name for b in bolds] == ["sub-XA01_task-rest_dir-AP_bold.nii.gz"]
    assert nib.load(bolds[0]).shape == (16, 16, 3, 12)


@pytest.mark.parametrize("n_procs", ["1", "2"])
def test_a_single_volume_bold_is_written_4d_and_said_so(tmp_path, n_procs):
    """BIDS wants bold 4D: a one-volume run gets a 4th axis of length 1 (nibabel, in the
    run's helper process with --n-procs 2); a 4D run is left as dcm2niix wrote it."""
    import nibabel as nib

    from bidsport.synthetic import typical_session, write_series

    bold = next(s for s in typical_session() if s.description == "rfMRI_REST_AP")
    packet = tmp_path / "inbox" / "ONE01"
    write_series(
        dataclasses.replace(bold, n_volumes=1, acquisition_time="090000.000000"), packet / "single"
    )
    write_series(dataclasses.replace(bold, series_number=9, acquisition_time="091000.000000"),
                 packet / "multi")  # fmt: skip
    out = tmp_path / "bids"
    assert main([str(tmp_path / "inbox"), str(out), "participant", "--n-procs", n_procs]) == 0
    shapes = {
        b.name: nib.load(b).shape
        for b in sorted((out / "sub-ONE01" / "func").glob("*_bold.nii.gz"))
    }
    assert shapes == {
        "sub-ONE01_task-rest_dir-AP_run-1_bold.nii.gz": (16, 16, 6, 1),
        "sub-ONE01_task-rest_dir-AP_run-2_bold.nii.gz": (16, 16, 6, 5),
    }
    report = json.loads(next((out / "derivatives/bidsport/logs").glob("*_report.json")).read_text())
    notes = [p["reason"] for s in report["sessions"] for p in s["problems"] if "4D" in p["reason"]]
    assert notes == ["a single volume: sub-ONE01_task-rest_dir-AP_run-1_bold.nii.gz written as "
                     "4D with one volume (BIDS requires 4D)"]  # fmt: skip


def test_run_report_lists_every_session_and_exclusion(example):
    _, out, _, _ = example
    reports = sorted((out / "derivatives/bidsport/logs").glob("participant_*_report.json"))
    assert reports
    report = json.loads(reports[0].read_text())
    assert report["exit_code"] == 0
    assert report["summary"]["sessions"] == len(SESSIONS)
    first = next(s for s in report["sessions"] if s["participant_id"] == "sub-P01")
    assert any("Thumbs.db" in p["where"] for p in first["problems"])
    assert {"import", "scan", "convert"} <= set(first["seconds"])


def test_one_bad_packet_gives_partial_success_and_names_it(tmp_path, capsys):
    from bidsport.synthetic import typical_session, write_series

    inbox = tmp_path / "inbox"
    write_series(typical_session()[1], inbox / "good")
    (inbox / "broken.zip").write_bytes(b"PK\x03\x04 this zip was cut short")
    out = tmp_path / "bids"
    code = main([str(inbox), str(out), "participant"])
    assert code == 3
    err = capsys.readouterr().err
    assert "broken.zip" in err
    assert (out / "sub-good" / "anat" / "sub-good_T1w.nii.gz").is_file()
    rows = {r["participant_id"]: r for r in read_tsv(out / "sourcedata/status.tsv")}
    assert rows["sub-good"]["converted"] == "true"
    assert rows["sub-broken"]["converted"] == "false" and rows["sub-broken"]["last_error"] != "n/a"


def test_nothing_done_and_bad_usage_codes(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "only.zip").write_bytes(b"PK\x03\x04 broken")
    assert main([str(inbox), str(tmp_path / "out"), "participant"]) == 4
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing"), str(tmp_path / "out"), "participant"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([str(inbox), str(tmp_path / "out"), "participant", "--participant-label", "a_b"])
    assert exc.value.code == 2


def test_a_bug_in_one_session_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    """An unexpected exception (a bug, not bad input) fails its session only: exit code 1."""
    from bidsport import participant
    from bidsport.synthetic import typical_session, write_series

    inbox = tmp_path / "inbox"
    for name in ("A1", "B2"):
        write_series(typical_session()[1], inbox / name)
    real = participant._run_session

    def buggy(assignments, *args, **kwargs):
        if assignments[0].subject == "A1":
            raise ZeroDivisionError("a bug")
        return real(assignments, *args, **kwargs)

    monkeypatch.setattr(participant, "_run_session", buggy)
    code = main([str(inbox), str(tmp_path / "out"), "participant"])
    assert code == 1
    assert (tmp_path / "out/sub-B2/anat/sub-B2_T1w.nii.gz").is_file()
    assert "internal error" in capsys.readouterr().out


def _content(out: Path) -> dict[str, str]:
    """What a run made, by relative path: the target of each link, the decompressed bytes'
    hash of each image, the text of each table and sidecar (logs, status, caches and re-run
    stamps aside)."""
    import gzip

    found = {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.is_dir() or {"logs", "status", "uptodate"} & set(path.parts):
            continue  # timestamps, timings, stat signatures
        if "cache" in path.name:
            continue  # the index cache's mtimes
        if path.name.startswith((".", "status")):
            continue
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.name.endswith(".gz"):
            found[rel] = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
        else:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_sessions_in_flight_at_once_give_the_same_dataset(example, tmp_path):
    """``--n-procs 2`` processes two sessions at a time: the dataset is the one made one
    session at a time (names, run numbers, links, tables, voxels)."""
    from bidsport.options import RunOptions
    from bidsport.participant import sessions_at_once

    assert sessions_at_once(RunOptions(n_procs=2), len(SESSIONS)) == 2
    assert sessions_at_once(RunOptions(n_procs=1), len(SESSIONS)) == 1
    inbox = example[0]
    made = {}
    for n in ("1", "2"):
        out = tmp_path / f"n{n}"
        args = [str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT, "--n-procs", n]
        assert main(args) == 0
        made[n] = _content(out)
    assert made["1"] == made["2"]
    assert any(rel.endswith("_bold.nii.gz") for rel in made["2"])
    assert any(value.startswith("-> ") for value in made["2"].values())


def test_sessions_in_flight_share_the_cores_for_their_small_series():
    """A session's small series share ``--n-procs`` dcm2niix calls when it runs alone, and
    its share of them when other sessions are in flight (each call costs before it reads
    a file, and two sessions already keep two cores busy)."""
    from bidsport.participant import RunShared

    shared = RunShared(2)
    try:
        assert shared.batches(2) == 2
        with shared.session():
            assert (shared.batches(2), shared.batches(4)) == (2, 4)
            with pytest.raises(RuntimeError), shared.session():
                assert shared.in_flight == 2
                assert (shared.batches(1), shared.batches(2), shared.batches(4)) == (1, 1, 2)
                raise RuntimeError("a session's bug")
            assert shared.in_flight == 1
            assert shared.batches(2) == 2
        assert shared.in_flight == 0
    finally:
        shared.close()


def test_small_series_converted_together_give_the_same_dataset(example, tmp_path, monkeypatch):
    """Small series share dcm2niix calls (a call costs ~10 ms before it reads a file): the
    dataset is the one made with a call per series, with fewer calls."""
    from bidsport import convert

    calls: list[int] = []
    run = convert.run_command

    def counted(*args, **kwargs):
        calls.append(1)
        return run(*args, **kwargs)

    monkeypatch.setattr(convert, "run_command", counted)
    inbox = example[0]
    made, n_calls = {}, {}
    default = convert.BATCH_MAX_FILES
    for limit in (default, 0):
        monkeypatch.setattr(convert, "BATCH_MAX_FILES", limit)
        calls.clear()
        out = tmp_path / f"limit{limit}"
        args = [str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT, "--n-procs", "2"]
        assert main(args) == 0
        made[limit], n_calls[limit] = _content(out), len(calls)
    assert made[default] == made[0]
    assert n_calls[default] <= 2 * len(SESSIONS) < n_calls[0]


def _planned(
    number: int,
    n_files: int,
    uid: str | None = None,
    merged: bool = False,
    software_versions: str | None = None,
):
    from bidsport.records import Classification, FileHeader, PlannedSeries, Series

    uid = uid if uid is not None else f"1.2.3.{number}"
    header = FileHeader(
        Path(f"/in/{number}.dcm"),
        1,
        0,
        series_number=number,
        series_uid=uid,
        manufacturer="SIEMENS",
        software_versions=software_versions or "syngo MR E11",
    )
    files = tuple(Path(f"/in/{number}/{i}.dcm") for i in range(n_files))
    series = Series(
        f"{uid}-{number}", header, files, n_volumes=1, merged_from=("x", "y") if merged else ()
    )
    return PlannedSeries(series, Classification("anat", "T1w", {}), None)


def test_conversion_groups_batch_the_small_series_over_the_cores():
    """Batched: small series with a plain UID of their own (and a CRC-32 of their own:
    dcm2niix tells series apart by it), not stacked, named after their UID by dcm2niix (not
    Siemens XA single-frame files); spread over the cores, largest first."""
    from bidsport.participant import conversion_groups
    from test_convert import CRC_TWINS

    big = _planned(1, 500)
    small = [_planned(n, n_files) for n, n_files in ((2, 40), (3, 30), (4, 20), (5, 10), (6, 5))]
    split = [_planned(7, 8, uid="1.2.3.77"), _planned(8, 8, uid="1.2.3.77")]  # one UID, split
    stacked = _planned(9, 4, merged=True)
    odd_uid = _planned(10, 4, uid="1.2.abc")
    crc_twins = [_planned(11, 3, uid=CRC_TWINS[0]), _planned(12, 3, uid=CRC_TWINS[1])]
    xa = _planned(13, 2, software_versions="syngo MR XA30")
    order = [big, *small, *split, stacked, odd_uid, *crc_twins, xa]
    groups = conversion_groups(order, n_procs=2)
    numbers = [[p.series.header.series_number for p in g] for g in groups]
    # largest task first; the small series in two batches of 55 and 50 files
    assert numbers == [[1], [2, 5, 6], [3, 4], [7], [8], [9], [10], [11], [12], [13]]
    alone = conversion_groups(order, n_procs=0)  # --output-format dcm: no dcm2niix call
    assert alone == [[p] for p in sorted(order, key=lambda p: -p.series.n_files)]
    numbers = [[p.series.header.series_number for p in g]
               for g in conversion_groups(order, n_procs=2, max_files=35)]  # fmt: skip
    assert numbers[:4] == [[1], [2], [3, 6], [4, 5]]  # 40 files: alone
    assert [len(g) for g in conversion_groups(small[:1], n_procs=4)] == [1]


TOPUP_RULES = """
[[rules]]
name = "topup-AP"
[rules.match]
series_description = "^fmap-epi_dir-AP$"
[rules.set]
sidecar = { PhaseEncodingDirection = "j-", TotalReadoutTime = 0.0415 }

[[rules]]
name = "topup-PA"
[rules.match]
series_description = "^fmap-epi_dir-PA$"
[rules.set]
sidecar = { PhaseEncodingDirection = "j", TotalReadoutTime = 0.0415 }
"""

PHILIPS_TOPUP_RULES = (
    TOPUP_RULES
    + """
[[rules]]
name = "wrong-axis"
[rules.match]
series_description = "^func-bold"
[rules.set]
sidecar = { PhaseEncodingDirection = "i-" }
"""
)


def write_philips_epi(packet: Path, *series: tuple[int, str, dict]) -> None:
    """Write Philips spin-echo EPI series (number, ReproIn description, more SeriesSpec
    fields) acquired at 09:<number>, one folder each, into ``packet``."""
    from bidsport.synthetic import SeriesSpec, Study, write_series

    study = Study(manufacturer="Philips", model="Ingenia")
    epi = {
        "mr_acquisition_type": "2D",
        "scanning_sequence": ("SE", "EP"),
        "sequence_name": "",
        "repetition_time": 3000.0,
        "echo_time": 50.0,
        "flip_angle": 90.0,
        "n_slices": 3,
    }
    for number, description, extra in series:
        at = f"09{number:02d}00.000000"
        spec = SeriesSpec(description, number, acquisition_time=at, **{**epi, **extra})
        write_series(spec, packet / description, study=study)


def test_a_philips_epi_fieldmap_is_flagged_then_completed_by_rules(tmp_path):
    """Philips does not record the phase-encoding polarity, so dcm2niix writes no
    PhaseEncodingDirection (nor TotalReadoutTime without Philips' private tags), which BIDS
    requires of an epi fieldmap. The participant level says so for each fieldmap; a rules
    file sets the keys, and the validator then finds no error. A rule's direction on
    another axis than the images' is written as asked, and said."""
    from bidsport.validator import run_validator

    write_philips_epi(
        tmp_path / "inbox" / "PH01",
        (3, "func-bold_task-rest_dir-AP", {"n_volumes": 4}),
        (4, "fmap-epi_dir-AP", {}),
        (5, "fmap-epi_dir-PA", {}),
    )
    rules = tmp_path / "topup.toml"
    rules.write_text(PHILIPS_TOPUP_RULES, encoding="utf-8")
    validator = find_validator()
    results = {}
    for label, extra in (("plain", []), ("rules", ["--rules", str(rules)])):
        out = tmp_path / label
        assert main([str(tmp_path / "inbox"), str(out), "participant", *extra]) == 0
        assert main([str(tmp_path / "inbox"), str(out), "group", "--skip-validation"]) == 0
        fmap = out / "sub-PH01" / "fmap"
        sidecars = {p.name: json.loads(p.read_text()) for p in sorted(fmap.glob("*.json"))}
        report = json.loads(
            next((out / "derivatives/bidsport/logs").glob("*_report.json")).read_text()
        )
        notes = [p["reason"] for s in report["sessions"] for p in s["problems"]]
        codes = set()
        if validator is not None:
            codes = {(i.code, i.sub_code) for i in run_validator(out, command=validator).errors}
        results[label] = sidecars, notes, codes
    sidecars, notes, codes = results["plain"]
    assert list(sidecars) == ["sub-PH01_dir-AP_epi.json", "sub-PH01_dir-PA_epi.json"]
    assert all("PhaseEncodingDirection" not in s for s in sidecars.values())
    assert [n.split(":")[0] for n in notes] == [
        "sub-PH01_dir-AP_epi.json has no PhaseEncodingDirection or TotalReadoutTime",
        "sub-PH01_dir-PA_epi.json has no PhaseEncodingDirection or TotalReadoutTime",
    ]
    assert all(n.endswith("set them with a --rules file (set.sidecar), or the validator reports "
                          "an error") for n in notes)  # fmt: skip
    if validator is not None:  # the validator agrees
        assert {code for code, _ in codes} == {
            "PHASE_ENCODING_DIRECTION_MUST_DEFINE",
            "TOTAL_READOUT_TIME_MUST_DEFINE",
        }, codes
    sidecars, notes, codes = results["rules"]
    pe = {name: s["PhaseEncodingDirection"] for name, s in sidecars.items()}
    assert pe == {"sub-PH01_dir-AP_epi.json": "j-", "sub-PH01_dir-PA_epi.json": "j"}
    assert all(s["TotalReadoutTime"] == 0.0415 for s in sidecars.values())
    assert codes == set(), codes
    bold = "bids::sub-PH01/func/sub-PH01_task-rest_dir-AP_bold.nii.gz"
    assert all(s["IntendedFor"] == [bold] for s in sidecars.values())  # both: one pair
    assert notes == [  # a rule that contradicts the images is said, not followed blindly
        "sub-PH01_task-rest_dir-AP_bold.json: rule 'wrong-axis' sets PhaseEncodingDirection "
        "i-, but dcm2niix found the phase encoded along j"
    ]
    layout = DatasetLayout(tmp_path / "rules")
    table = read_tsv(layout.series_table("PH01", None))
    evidence = [r["evidence"] for r in table if "fmap-epi_dir-PA" in r["series_description"]]
    assert any('sets in the sidecar: PhaseEncodingDirection = "j"' in e for e in evidence)


DWI_FIELDMAP_RULES = (
    """
[[rules]]
name = "dwi-b0"
description = "the b0 acquired for the DWI corrects the DWI only"
[rules.match]
series_description = "^fmap-epi_acq-b0_dir-PA$"
[rules.set]
corrects = ["dwi"]
sidecar = { PhaseEncodingDirection = "j", TotalReadoutTime = 0.0415 }
"""
    + TOPUP_RULES
)


def test_a_rule_gives_the_dwi_its_own_fieldmap(tmp_path, capsys):
    """An AP/PA pair for the BOLD, then a b0 for the DWI (acq-b0, which names no
    datatype), then both images: by default the b0 is the latest set before both, and the
    pair corrects nothing; a rule's set.corrects keeps the b0 for the DWI and gives the
    pair back to the BOLD. The dataset passes the validator."""
    from bidsport.validator import run_validator

    write_philips_epi(
        tmp_path / "inbox" / "PH02",
        (3, "fmap-epi_dir-AP", {}),
        (4, "fmap-epi_dir-PA", {}),
        (5, "fmap-epi_acq-b0_dir-PA", {}),
        (6, "func-bold_task-rest_dir-AP", {"n_volumes": 4}),
        (7, "dwi_dir-AP", {"n_volumes": 3, "b_values": (0, 1000, 1000)}),
    )
    rules = tmp_path / "dwi.toml"
    rules.write_text(DWI_FIELDMAP_RULES, encoding="utf-8")
    prefix = "bids::sub-PH02/"
    bold, dwi = (
        prefix + "func/sub-PH02_task-rest_dir-AP_bold.nii.gz",
        prefix + "dwi/sub-PH02_dir-AP_dwi.nii.gz",
    )
    expected = {
        "plain": {"dir-AP_epi": [], "dir-PA_epi": [], "acq-b0_dir-PA_epi": [dwi, bold]},
        "rules": {"dir-AP_epi": [bold], "dir-PA_epi": [bold], "acq-b0_dir-PA_epi": [dwi]},
    }  # fmt: skip
    for label, extra in (("plain", []), ("rules", ["--rules", str(rules)])):
        out = tmp_path / label
        assert main([str(tmp_path / "inbox"), str(out), "participant", *extra]) == 0
        fmap = out / "sub-PH02" / "fmap"
        intended = {
            p.name.removeprefix("sub-PH02_").removesuffix(".json"): json.loads(p.read_text()).get(
                "IntendedFor", []
            )
            for p in fmap.glob("*.json")
        }
        assert intended == expected[label], label
        report = json.loads(
            next((out / "derivatives/bidsport/logs").glob("*_report.json")).read_text()
        )
        unlinked = [
            p["reason"].split(" (")[0]
            for s in report["sessions"]
            for p in s["problems"]
            if "corrects no image" in p["reason"]
        ]
        alone = ", ".join(f"sub-PH02_{n}.json" for n, to in expected[label].items() if not to)
        assert unlinked == ([f"{alone}: corrects no image"] if alone else []), label
    # --dry-run shows the plan, before anything is converted
    capsys.readouterr()
    dry = [str(tmp_path / "inbox"), str(tmp_path / "dry"), "participant", "--dry-run"]
    assert main([*dry, "--rules", str(rules)]) == 0
    plan = capsys.readouterr().out
    assert plan.count("      corrects: func/sub-PH02_task-rest_dir-AP_bold\n") == 2
    assert "      corrects: dwi/sub-PH02_dir-AP_dwi\n" in plan
    assert main(dry) == 0
    assert capsys.readouterr().out.count("      corrects: no image\n") == 2
    table = read_tsv(DatasetLayout(tmp_path / "rules").series_table("PH02", None))
    (b0,) = [r for r in table if r["series_description"] == "fmap-epi_acq-b0_dir-PA"]
    assert "rule 'dwi-b0': corrects only dwi images" in b0["evidence"]
    validator = find_validator()
    if validator is not None:
        out = tmp_path / "rules"
        assert main([str(tmp_path / "inbox"), str(out), "group", "--skip-validation"]) == 0
        result = run_validator(out, command=validator)
        assert result.ran and not result.errors, [e.describe() for e in result.errors]


def test_notes_follow_the_series_order_not_the_conversion_order(tmp_path):
    """Series convert largest first (here the PA fieldmap, series 5); the run's notes and
    images are listed in the series' order all the same."""
    write_philips_epi(
        tmp_path / "inbox" / "PH03",
        (4, "fmap-epi_dir-AP", {"n_slices": 2}),
        (5, "fmap-epi_dir-PA", {"n_slices": 6}),
    )
    out = tmp_path / "out"
    assert main([str(tmp_path / "inbox"), str(out), "participant", "--n-procs", "1"]) == 0
    report = json.loads(next((out / "derivatives/bidsport/logs").glob("*_report.json")).read_text())
    (session,) = report["sessions"]
    assert [p["reason"].split(" ")[0] for p in session["problems"]] == [
        "sub-PH03_dir-AP_epi.json",  # no PhaseEncodingDirection (Philips)
        "sub-PH03_dir-PA_epi.json",
        "sub-PH03_dir-AP_epi.json,",  # the pair corrects no image
    ]


def test_the_exit_code_says_nothing_was_done_only_when_no_image_was_written() -> None:
    from bidsport.cli.levels import participant_exit_code
    from bidsport.errors import ExitCode
    from bidsport.participant import ParticipantRun
    from bidsport.records import ConvertedImage, SessionResult

    image = ConvertedImage("1.2", "func/sub-01_task-rest_run-2_bold.nii.gz", None)
    partly = SessionResult("01", None, True, True, False, images=(image,), error="1 series failed")
    failed = SessionResult("02", None, True, False, False, error="no DICOM image series")
    done = SessionResult("03", None, True, True, True, images=(image,))

    def code(*results: SessionResult) -> ExitCode:
        return participant_exit_code(ParticipantRun(results, (), len(results)))

    assert code(partly) == code(partly, failed) == code(done, failed) == ExitCode.PARTIAL
    assert code(failed) == ExitCode.FAILED
    assert code(done) == ExitCode.SUCCESS


def test_an_output_or_work_dir_inside_the_inbox_is_refused(tmp_path, capsys):
    from bidsport.synthetic import SeriesSpec, write_series

    inbox = tmp_path / "inbox"
    write_series(SeriesSpec("t1_mprage", 2), inbox / "P01" / "t1")
    before = sorted(p.relative_to(inbox) for p in inbox.rglob("*"))
    for args in (
        [str(inbox), str(inbox / "bids"), "participant"],
        [str(inbox), str(tmp_path / "bids"), "participant", "-w", str(inbox / "P01" / "w")],
        [str(inbox), str(inbox), "group"],
    ):
        assert main(args) == 2, args
        assert "inside DICOM_DIR" in capsys.readouterr().err
    assert sorted(p.relative_to(inbox) for p in inbox.rglob("*")) == before
    assert not (tmp_path / "bids").exists()


def test_the_group_level_before_any_participant_run_is_refused(tmp_path, capsys):
    (tmp_path / "inbox").mkdir()
    out = tmp_path / "bids"
    assert main([str(tmp_path / "inbox"), str(out), "group"]) == 2
    assert "run the participant level first" in capsys.readouterr().err
    assert not out.exists()
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("participant_id\tsession_id\nsub-01\tses-1\n", encoding="utf-8")
    args = [str(tmp_path / "inbox"), str(out), "group", "--skip-validation"]
    assert main([*args, "--manifest", str(manifest)]) == 0  # the sessions expected: a table
    assert "sub-01\tses-1\t" in (out / "sourcedata" / "status.tsv").read_text(encoding="utf-8")


def test_the_group_level_says_when_sessions_failed(tmp_path, capsys):
    from bidsport.synthetic import SeriesSpec, write_series

    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_series(SeriesSpec("t1_mprage", 2), inbox / "GOOD" / "t1")
    (inbox / "EMPTY").mkdir()
    (inbox / "EMPTY" / "notes.txt").write_text("nothing\n", encoding="utf-8")
    assert main([str(inbox), str(out), "participant", "-q"]) == 3
    group = [str(inbox), str(out), "group", "--skip-validation", "-q"]
    capsys.readouterr()
    assert main([*group[:-1], "--participant-label", "GOOD"]) == 3  # one session failed
    assert "the group level covers the whole dataset" in capsys.readouterr().err
    write_series(SeriesSpec("t1_mprage", 2), inbox / "EMPTY" / "t1")  # sent again, whole
    assert main([str(inbox), str(out), "participant", "-q"]) == 0
    assert main(group) == 0


_MODULES_AFTER_CLASSIFY = r"""
import json, sys
import bidsport.participant as participant
from bidsport.cli.run import main

classify = participant.classify_session
before = []

def classify_session(*args, **kwargs):
    if not before:
        before.append(set(sys.modules))
    return classify(*args, **kwargs)

participant.classify_session = classify_session
code = main(sys.argv[1:])
print(json.dumps({"code": code, "new": sorted(set(sys.modules) - before[0])}))
"""


def test_the_stages_after_the_scan_import_nothing_of_bidsport_of_their_own(tmp_path):
    """With worker processes, the modules of classification, the flat folder, conversion
    and export are imported while the workers read the first headers
    (``participant.LATER_STAGES``): none is left to load between the scan and the end."""
    import subprocess
    import sys

    inbox = tmp_path / "inbox"
    write_example_inbox(inbox)
    args = [str(inbox), str(tmp_path / "out"), "participant", "--nameformat", NAMEFORMAT]
    args += ["--participant-label", "P01", "--session-label", "V1", "--n-procs", "2"]
    proc = subprocess.run(
        [sys.executable, "-c", _MODULES_AFTER_CLASSIFY, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["code"] == 0
    assert [name for name in found["new"] if name.startswith("bidsport")] == []
