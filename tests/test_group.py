"""The group level on a tiny real BIDS dataset (real dcm2niix, real validator)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dcm2niix
import pytest

from bidsport import reportworkers, uptodate
from bidsport.errors import ExitCode, LockedError
from bidsport.group import (
    DEFAULT_BIDS_VERSION,
    VALIDATION_FILE_NAME,
    GroupResult,
    SessionsInProgress,
    SummaryRow,
    format_summary,
    held_session_locks,
    in_progress_error,
    merge_description,
    name_locked_sessions,
    run_group,
    summarize,
    validation_from_record,
)
from bidsport.layout import DatasetLayout
from bidsport.runner import run_command
from bidsport.status import INTERRUPTED as STATUS_INTERRUPTED
from bidsport.status import StatusRow, read_status, record_session
from bidsport.synthetic import Subject, typical_session, write_series
from bidsport.validator import Issue, ValidationResult, find_validator, validator_bids_version

T1W = typical_session()[1]
UPDATED = "2024-01-02T09:00:00+00:00"
EXPECTED: list[tuple[str, str | None]] = [
    ("02", None)
]  # the manifest: sub-02 is expected before its data arrive


def _group(
    layout: DatasetLayout,
    manifest: list[tuple[str, str | None]] | None = None,
    *,
    validate: bool = True,
) -> GroupResult:
    return run_group(
        layout,
        dcm2niix_version="v1.0.20260724",
        bidsport_version="0.1.0",
        manifest_pairs=manifest or [],
        validate=validate,
    )


def _add_subject(layout: DatasetLayout, label: str) -> None:
    """What a participant-level run leaves behind: flat DICOMs, a T1w, its record."""
    dicom_dir = layout.dicom_dir(label, None)
    write_series(T1W, dicom_dir, Subject(patient_id=f"PID{label}"))
    anat = layout.session_dir(label, None) / "anat"
    anat.mkdir(parents=True)
    result = run_command(
        [dcm2niix.bin, "-b", "y", "-ba", "y", "-z", "y", "-f", f"sub-{label}_T1w", "-o", anat,
         dicom_dir]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (anat / f"sub-{label}_T1w.nii.gz").is_file()
    record_session(layout, StatusRow(label, None, f"PKT{label}", True, True, True, None, UPDATED))


def _snapshot(layout: DatasetLayout) -> dict[str, bytes]:
    names = ["dataset_description.json", "participants.tsv", "participants.json", "README"]
    files = {name: (layout.root / name).read_bytes() for name in names}
    files["status.tsv"] = layout.status_file.read_bytes()
    return files


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetLayout:
    """sub-01 converted, sub-02 expected (manifest), a log in derivatives/."""
    layout = DatasetLayout(tmp_path_factory.mktemp("group") / "study")
    _add_subject(layout, "01")
    layout.logs_dir.mkdir(parents=True)
    (layout.logs_dir / "participant-sub-01.log").write_text("INFO done\n", encoding="utf-8")
    return layout


@pytest.fixture(scope="module")
def validator() -> list[str]:
    command = find_validator()
    assert command is not None, "bids-validator-deno (a test dependency) is not installed"
    return command


def test_group_writes_a_valid_dataset(dataset: DatasetLayout, validator: list[str]) -> None:
    result = _group(dataset, EXPECTED)

    description = json.loads(dataset.dataset_description_file.read_text(encoding="utf-8"))
    assert description == {
        "Name": "study",
        "BIDSVersion": validator_bids_version(validator),
        "DatasetType": "raw",
        "GeneratedBy": [
            {"Name": "bidsport", "Version": "0.1.0", "CodeURL": description["GeneratedBy"][0]
             ["CodeURL"]},
            {"Name": "dcm2niix", "Version": "v1.0.20260724"},
        ],
    }  # fmt: skip
    assert description["GeneratedBy"][0]["CodeURL"].startswith("https://")
    derivative = json.loads((dataset.derivatives_dir / "dataset_description.json").read_text())
    assert derivative["DatasetType"] == "derivative"
    assert derivative["BIDSVersion"] == description["BIDSVersion"]
    assert derivative["GeneratedBy"] == description["GeneratedBy"][:1]
    assert dataset.participants_file.read_text(encoding="utf-8") == "participant_id\nsub-01\n"
    sidecar = json.loads((dataset.root / "participants.json").read_text(encoding="utf-8"))
    assert list(sidecar) == ["participant_id"] and sidecar["participant_id"]["Description"]
    assert "study" in (dataset.root / "README").read_text(encoding="utf-8")
    assert not (dataset.root / ".bidsignore").exists()

    assert result.participants == ("01",)
    assert read_status(dataset) == list(result.status)
    assert [(r.participant_id, r.imported, r.organized, r.converted) for r in result.status] == [
        ("01", True, True, True), ("02", False, False, False)
    ]  # fmt: skip
    assert result.summary == (SummaryRow("01", 1, 1, 1, 1, 0), SummaryRow("02", 1, 0, 0, 0, 0))
    assert result.totals == SummaryRow("all", 2, 1, 1, 1, 0)

    validation = result.validation
    assert validation is not None and validation.ran
    assert validation.errors == (), [i.describe() for i in validation.errors]
    # nothing bidsport keeps in sourcedata/ or derivatives/ bothers the validator
    for issue in validation.warnings:
        assert not (issue.location or "").startswith(("/sourcedata", "/derivatives")), issue

    text = format_summary(result)
    assert "sub-01" in text and "total" in text and "0 errors" in text

    # the HTML report: every status row, and where it is in the summary
    assert result.report == dataset.report_file and dataset.report_file in result.written
    page = dataset.report_file.read_text(encoding="utf-8")
    assert '<section id="sub-01">' in page and '<section id="sub-02">' in page
    assert "<title>study: bidsport report</title>" in page and "bidsport 0.1.0" in page
    assert text.splitlines()[-1] == f"report: {dataset.report_file}"


def test_group_is_idempotent_and_adds_subjects(
    tmp_path: Path, dataset: DatasetLayout, validator: list[str]
) -> None:
    shutil.copytree(dataset.root, tmp_path / "study", symlinks=True)
    dataset = DatasetLayout(tmp_path / "study")
    _group(dataset, EXPECTED)
    first = _snapshot(dataset)
    backups = sorted(dataset.status_backup_dir.glob("*"))
    again = _group(dataset, EXPECTED, validate=False)
    assert again.written == ()
    assert again.validation is None
    assert _snapshot(dataset) == first
    assert sorted(dataset.status_backup_dir.glob("*")) == backups

    _add_subject(dataset, "02")
    result = _group(dataset, EXPECTED)
    assert dataset.participants_file.read_text(encoding="utf-8") == (
        "participant_id\nsub-01\nsub-02\n"
    )
    assert result.totals == SummaryRow("all", 2, 2, 2, 2, 0)
    validation = result.validation
    assert validation is not None
    assert validation.valid, [i.describe() for i in validation.errors]
    second = _snapshot(dataset)
    assert second["README"] == first["README"]
    rerun = _group(dataset, EXPECTED, validate=False)
    assert rerun.written == ()
    assert _snapshot(dataset) == second


def test_group_keeps_what_curators_edited(tmp_path: Path, dataset: DatasetLayout) -> None:
    root = tmp_path / "edited"
    shutil.copytree(dataset.root, root, symlinks=True)
    layout = DatasetLayout(root)
    description = {
        "Name": "My study",
        "BIDSVersion": "1.10.0",
        "Authors": ["A. Curator"],
        "License": "CC0",
        "GeneratedBy": [
            {"Name": "dcm2niix", "Version": "v0.old"},
            {"Name": "bidsport", "Version": "0.0.1"},
            {"Name": "manual QC", "Description": "checked by hand"},
        ],
    }
    layout.dataset_description_file.write_text(json.dumps(description), encoding="utf-8")
    layout.participants_file.write_text(
        "participant_id\tgroup\nsub-01\tpatient\nsub-99\tcontrol\n", encoding="utf-8"
    )
    (root / "participants.json").write_text(
        json.dumps({"group": {"Description": "study arm"}}), encoding="utf-8"
    )
    (root / "README").write_text("written by a human\n", encoding="utf-8")

    run_group(layout, validate=False, dcm2niix_version=None, bidsport_version="0.2.0")

    kept = json.loads(layout.dataset_description_file.read_text(encoding="utf-8"))
    assert (kept["Name"], kept["Authors"], kept["License"]) == ("My study", ["A. Curator"], "CC0")
    assert (kept["BIDSVersion"], kept["DatasetType"]) == ("1.10.0", "raw")
    assert kept["GeneratedBy"][0]["Version"] == "0.2.0"
    assert kept["GeneratedBy"][1] == {"Name": "dcm2niix", "Version": "v0.old"}
    assert kept["GeneratedBy"][2] == {"Name": "manual QC", "Description": "checked by hand"}
    participants = layout.participants_file.read_text(encoding="utf-8")
    assert participants == "participant_id\tgroup\nsub-01\tpatient\n"  # sub-99: no folder
    sidecar = json.loads((root / "participants.json").read_text(encoding="utf-8"))
    assert set(sidecar) == {"participant_id", "group"}
    assert (root / "README").read_text(encoding="utf-8") == "written by a human\n"


def test_broken_dataset_reports_the_error(tmp_path: Path, dataset: DatasetLayout) -> None:
    root = tmp_path / "broken"
    shutil.copytree(dataset.root, root, symlinks=True)
    anat = root / "sub-01" / "anat"
    shutil.copyfile(anat / "sub-01_T1w.nii.gz", anat / "sub-01_T1wx.nii.gz")
    result = _group(DatasetLayout(root))
    assert result.validation is not None and result.validation.ran
    assert not result.validation.valid
    errors = {(e.code, e.location) for e in result.validation.errors}
    assert ("NOT_INCLUDED", "/sub-01/anat/sub-01_T1wx.nii.gz") in errors
    text = format_summary(result)
    assert "error: NOT_INCLUDED /sub-01/anat/sub-01_T1wx.nii.gz" in text

    # every finding is kept in derivatives/bidsport/validation.json, and shown in the report
    layout = DatasetLayout(root)
    saved_file = layout.derivatives_dir / VALIDATION_FILE_NAME
    assert saved_file in result.written
    saved = json.loads(saved_file.read_text(encoding="utf-8"))
    assert saved["validator"]["version"] == result.validation.version
    assert saved["validator"]["command"][0] == "bids-validator-deno"
    assert saved["validator"]["command"][-1] == "."
    assert str(root) not in saved_file.read_text(encoding="utf-8")  # no path of this machine
    assert saved["counts"] == {
        "errors": len(result.validation.errors), "warnings": len(result.validation.warnings)
    }  # fmt: skip
    issues = saved["issues"]
    assert len(issues) == len(result.validation.errors) + len(result.validation.warnings)
    assert set(issues[0]) == {"severity", "code", "sub_code", "location", "line", "message",
                              "rule"}  # fmt: skip
    assert {
        "severity": "error", "code": "NOT_INCLUDED", "location": "/sub-01/anat/sub-01_T1wx.nii.gz"
    }.items() <= issues[0].items()  # fmt: skip
    assert issues[0]["message"]
    back = validation_from_record(saved, saved_file)  # the same findings, sorted
    assert (back.version, back.schema_version) == (
        result.validation.version, result.validation.schema_version
    )  # fmt: skip
    assert sorted(map(repr, back.errors)) == sorted(map(repr, result.validation.errors))
    assert sorted(map(repr, back.warnings)) == sorted(map(repr, result.validation.warnings))
    page = layout.report_file.read_text(encoding="utf-8")
    assert '<h2 id="validation">BIDS validation</h2>' in page
    assert '<a href="validation.json">validation.json</a>' in page
    assert "<code>NOT_INCLUDED</code>" in page and "/sub-01/anat/sub-01_T1wx.nii.gz" in page

    # the same findings again: neither file is rewritten; without validation, the report
    # shows the findings saved (those of the last validation)
    again = _group(layout)
    assert saved_file not in again.written and layout.report_file not in again.written
    skipped = _group(layout, validate=False)
    assert skipped.written == ()
    assert layout.report_file.read_text(encoding="utf-8") == page


def test_group_without_report(tmp_path: Path, dataset: DatasetLayout) -> None:
    root = tmp_path / "noreport"
    shutil.copytree(dataset.root, root, symlinks=True, ignore=shutil.ignore_patterns("report.html"))
    layout = DatasetLayout(root)
    result = run_group(
        layout, validate=False, report=False, dcm2niix_version=None, bidsport_version="0.1.0"
    )
    assert result.report is None and not layout.report_file.exists()
    assert not any(path.suffix == ".html" for path in result.written)
    assert "report:" not in format_summary(result)


def test_a_validator_that_cannot_start_is_said_after_the_report(
    tmp_path: Path, dataset: DatasetLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validator starts before the report is written; one that cannot be run (here
    not executable) fails the group level with its name, once the report is written."""
    import sys

    from bidsport.errors import ExternalToolError

    root = tmp_path / "copy"
    shutil.copytree(dataset.root, root, symlinks=True, ignore=shutil.ignore_patterns("*.html"))
    broken = tmp_path / "bin" / "bids-validator-deno"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    broken.chmod(0o644)
    monkeypatch.setattr(sys, "executable", str(broken.parent / "python"))
    with pytest.raises(ExternalToolError, match=f"cannot run {broken}"):
        _group(DatasetLayout(root))
    assert DatasetLayout(root).report_file.is_file()


def test_group_needs_the_dataset(tmp_path: Path) -> None:
    from bidsport.errors import UsageError

    with pytest.raises(UsageError, match="does not exist"):
        _group(DatasetLayout(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- running jobs

#: A participant-level job at work, as the group level sees it: a process holding session
#: locks (``fileops.file_lock``, as ``participant.process_session`` takes them) until killed.
HOLDER = """
import sys, time
from contextlib import ExitStack
from pathlib import Path
from bidsport.fileops import file_lock
with ExitStack() as stack:
    for name in sys.argv[1:]:
        stack.enter_context(file_lock(Path(name), blocking=False))
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold(*locks: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *map(str, locks)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``root``: (mtime in ns, size)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            info = (Path(folder) / name).lstat()
            found[os.path.relpath(Path(folder) / name, root)] = (info.st_mtime_ns, info.st_size)
    return found


def test_group_refuses_while_participant_jobs_convert(
    tmp_path: Path, dataset: DatasetLayout
) -> None:
    """A job converting sub-02 ses-V1 (imported, not converted yet) and one that has not
    written anything yet: the group level names them, exits FAILED and writes nothing;
    once the jobs are killed (SIGKILL: no clean-up), it runs."""
    root = tmp_path / "busy"
    shutil.copytree(dataset.root, root, symlinks=True)
    layout = DatasetLayout(root)
    write_series(T1W, layout.raw_dir("02", "V1") / "PKT02", Subject(patient_id="PID02"))
    holder = _hold(layout.lock_file("02", "V1"), layout.lock_file("03", None))
    try:
        before = _tree(root)
        with pytest.raises(LockedError) as refused:
            _group(layout)  # the validator and the report would start: they do not
        assert _tree(root) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert refused.value.exit_code == ExitCode.FAILED
    assert refused.value.message == (
        f"participant-level jobs are still converting 2 sessions in {root}: "
        "sub-02 ses-V1 and 1 more"
    )
    assert refused.value.hint is not None
    assert "--dependency=afterok:<array job id>" in refused.value.hint

    assert layout.lock_file("02", "V1").is_file()  # left by the killed job, free
    result = _group(layout, validate=False)
    rows = {(r.participant_id, r.session_id): r for r in result.status}
    assert rows["02", "V1"].imported and not rows["02", "V1"].converted
    assert layout.report_file.is_file()


def test_sessions_of_killed_jobs_are_reported_interrupted(
    tmp_path: Path, dataset: DatasetLayout
) -> None:
    """sub-03's first run was killed after organizing (no record, no lock held); sub-01's
    images were deleted after its record said converted: neither is "in progress"."""
    root = tmp_path / "killed"
    shutil.copytree(dataset.root, root, symlinks=True)
    layout = DatasetLayout(root)
    write_series(T1W, layout.dicom_dir("03", None), Subject(patient_id="PID03"))
    (layout.lock_file("03", None)).parent.mkdir(parents=True, exist_ok=True)
    layout.lock_file("03", None).touch()  # left by the killed job, free
    shutil.rmtree(layout.session_dir("01", None) / "anat")
    result = _group(layout, EXPECTED, validate=False)
    rows = {r.participant_id: r for r in result.status}
    assert (rows["03"].organized, rows["03"].converted, rows["03"].last_error) == (
        True, False, None
    )  # fmt: skip
    assert result.totals == SummaryRow("all", 3, 2, 2, 0, 2)
    assert SummaryRow("03", 1, 1, 1, 0, 1) in result.summary
    page = layout.report_file.read_text(encoding="utf-8")
    assert "in progress" not in page and "not organized" not in page
    assert page.count('class="state">interrupted<') == 2
    assert page.count('class="state">expected<') == 1  # sub-02, from the manifest
    assert "3 sessions: 0 converted, 2 failed (2 interrupted), 1 expected" in page
    section = page[page.index('<section id="sub-03">') :].split("</section>")[0]
    assert STATUS_INTERRUPTED in section
    assert "no series table: the last run of this session ended before writing one" in section
    section = page[page.index('<section id="sub-01">') :].split("</section>")[0]
    assert "images missing: the session&#x27;s record says converted" in section


def test_the_command_line_exits_with_the_refusal(tmp_path: Path, dataset: DatasetLayout) -> None:
    root = tmp_path / "cli"
    shutil.copytree(dataset.root, root, symlinks=True)
    layout = DatasetLayout(root)
    holder = _hold(layout.lock_file("01", None))
    logs_before = sorted(layout.logs_dir.glob("*")) if layout.logs_dir.is_dir() else []
    (tmp_path / "inbox").mkdir(exist_ok=True)
    try:
        group = subprocess.run(
            [sys.executable, "-m", "bidsport.cli.run", str(tmp_path / "inbox"), str(root), "group"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        regenerate = subprocess.run(
            [sys.executable, "-m", "bidsport.cli.run", str(tmp_path / "inbox"), str(root),
             "participant", "--regenerate"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        logs_after = sorted(layout.logs_dir.glob("*")) if layout.logs_dir.is_dir() else []
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert group.returncode == ExitCode.FAILED, group.stdout + group.stderr
    assert group.stdout == ""
    lines = group.stderr.splitlines()
    assert lines[0] == (
        f"bidsport: error: participant-level jobs are still converting 1 session in {root}: sub-01"
    )
    assert lines[1].startswith("  hint: wait for the participant-level jobs to finish")
    assert logs_after == logs_before  # not even a log file
    assert regenerate.returncode == ExitCode.FAILED and regenerate.stdout == ""
    assert "participant-level jobs are still converting 1 session" in regenerate.stderr


# --------------------------------------------------------------------------- pure


def test_merge_description_new_and_existing() -> None:
    new = merge_description(
        None, name="x", bids_version=DEFAULT_BIDS_VERSION, bidsport_version="1",
        dcm2niix_version=None,
    )  # fmt: skip
    assert new["Name"] == "x" and new["DatasetType"] == "raw"
    assert new["GeneratedBy"][1] == {"Name": "dcm2niix"}
    old = {"BIDSVersion": "1.8.0", "Name": "kept", "GeneratedBy": "not a list"}
    merged = merge_description(
        old, name="x", bids_version="1.11.1", bidsport_version="1", dcm2niix_version="v2"
    )
    assert list(merged)[:2] == ["BIDSVersion", "Name"]  # order of the user's file kept
    assert merged["BIDSVersion"] == "1.8.0" and merged["Name"] == "kept"
    assert [e["Name"] for e in merged["GeneratedBy"]] == ["bidsport", "dcm2niix"]


def _status(sub: str, ses: str | None, stage: int, error: str | None = None) -> StatusRow:
    return StatusRow(sub, ses, None, stage >= 1, stage >= 2, stage >= 3, error, UPDATED)


def test_summarize_and_format() -> None:
    rows = [
        _status("01", "1", 3),
        _status("01", "2", 1, error="dcm2niix failed"),
        _status("02", None, 0),
    ]
    summary, totals = summarize(rows)
    assert summary == (SummaryRow("01", 2, 2, 1, 1, 1), SummaryRow("02", 1, 0, 0, 0, 0))
    assert totals == SummaryRow("all", 3, 2, 1, 1, 1)
    issues = tuple(
        Issue("SIDECAR_KEY_RECOMMENDED", "warning", f"/sub-0{i}/anat/x.nii.gz", "Coil")
        for i in range(3)
    )
    result = GroupResult(
        participants=("01", "02"),
        status=tuple(rows),
        summary=summary,
        totals=totals,
        validation=ValidationResult(
            ran=True,
            errors=(Issue("NOT_INCLUDED", "error", "/x"),),
            warnings=issues,
            version="3.0.2",
        ),
        written=(),
    )
    lines = format_summary(result).splitlines()
    assert lines[0].split() == [
        "participant", "sessions", "imported", "organized", "converted", "failed"
    ]  # fmt: skip
    assert lines[1].split() == ["sub-01", "2", "2", "1", "1", "1"]
    assert lines[4].split() == ["total", "3", "2", "1", "1", "1"]
    assert "BIDS validator 3.0.2: 1 error, 3 warnings" in lines
    assert "  warning: SIDECAR_KEY_RECOMMENDED[Coil] /sub-00/anat/x.nii.gz (+2 more)" in lines
    skipped = GroupResult((), (), (), SummaryRow("all", 0, 0, 0, 0, 0), None, ())
    assert format_summary(skipped).splitlines()[-1] == "BIDS validation: skipped"
    missing = GroupResult((), (), (), SummaryRow("all", 0, 0, 0, 0, 0),
                          ValidationResult(ran=False), ())  # fmt: skip
    assert "not installed" in format_summary(missing)


def test_held_locks_are_told_from_free_and_untestable_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One lock held by a job, one left free, one that cannot be opened for writing (a
    folder: even root cannot), one file that is no lock: the group level names the held
    one and warns about the untestable one; the early thumbnail workers see the held one."""
    layout = DatasetLayout(tmp_path)
    held, free = layout.lock_file("01", "V1"), layout.lock_file("02", "V1")
    held.parent.mkdir(parents=True)
    free.touch()
    odd = layout.locks_dir / "sub-03_ses-V1.lock"
    odd.mkdir()
    (layout.locks_dir / "notes.txt").write_text("not a lock\n")
    holder = _hold(held)
    try:
        found, untestable = uptodate.held_locks(str(layout.locks_dir))
        with caplog.at_level("WARNING", logger="bidsport"):
            assert held_session_locks(layout) == [held]
        assert reportworkers.sessions_in_progress(layout)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert found == [str(held)]
    assert [(path, type(exc)) for path, exc in untestable] == [(str(odd), IsADirectoryError)]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"cannot tell whether a participant-level job holds {odd}"
    ]
    assert held_session_locks(layout) == []  # the job was killed: its lock is free
    assert not reportworkers.sessions_in_progress(layout)
    assert uptodate.held_locks(str(tmp_path / "nowhere")) == ([], [])


def test_locked_sessions_are_named_from_what_the_dataset_knows() -> None:
    layout = DatasetLayout(Path("/ds"))
    known = [(f"{n:02d}", "1") for n in range(1, 13)] + [("99", None)]
    held = [layout.lock_file(sub, ses) for sub, ses in reversed(known[:12])]
    held.append(layout.lock_file("77", "new"))  # a job that has written nothing yet
    progress = name_locked_sessions(held, known, layout.lock_file)
    assert progress.sessions == tuple(known[:12])
    assert progress.unnamed == (layout.lock_file("77", "new"),)
    assert progress.count == 13
    message = in_progress_error(layout.root, progress).message
    assert message == (
        "participant-level jobs are still converting 13 sessions in /ds: "
        + ", ".join(f"sub-{n:02d} ses-1" for n in range(1, 11))
        + " and 3 more"
    )
    alone = SessionsInProgress((), (layout.lock_file("77", "new"),))
    assert in_progress_error(layout.root, alone).message == (
        "participant-level jobs are still converting 1 session in /ds"
    )
    bare = name_locked_sessions([layout.lock_file("99", None)], known, layout.lock_file)
    assert in_progress_error(layout.root, bare).message.endswith("/ds: sub-99")


def test_the_validator_writes_nothing_outside_the_dataset_or_work_dir(
    dataset: DatasetLayout, validator: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deno caches in ~/.cache/deno by default: the group level gives it a scratch folder
    of OUTPUT_DIR (removed afterwards), or the work dir (kept for the next run)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("DENO_DIR", raising=False)
    result = _group(dataset, EXPECTED)
    assert result.validation is not None and result.validation.ran
    assert list(home.iterdir()) == [] and not dataset.work_dir.exists()
    work = tmp_path / "work"
    result = run_group(dataset, dcm2niix_version=None, bidsport_version="0.1.0", work_dir=work)
    assert result.validation is not None and result.validation.ran
    assert list(home.iterdir()) == [] and (work / "deno").is_dir()


def test_a_session_with_nothing_to_convert_is_done_at_both_levels(tmp_path: Path) -> None:
    """A session of localizers only (or one whose filters select none of its series):
    the participant level converts nothing and says so; the group level counts it done,
    not "images missing" (which a participant run, finding it done, would never mend)."""
    from bidsport.cli.run import main

    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    localizer = typical_session()[0]
    write_series(localizer, inbox / "S01_V1" / "loc", Subject(patient_id="S01"))
    nameformat = r"(?P<subject_id>[^_]+)_(?P<session_name>.+)"
    assert main([str(inbox), str(out), "participant", "--nameformat", nameformat, "-q"]) == 0
    assert main([str(inbox), str(out), "group", "--skip-validation", "-q"]) == 0
    (row,) = read_status(DatasetLayout(out))
    assert (row.imported, row.organized, row.converted, row.last_error) == (True, True, True, None)
    # images that were converted and are gone since still say so
    write_series(typical_session()[1], inbox / "S02_V1" / "t1", Subject(patient_id="S02"))
    assert main([str(inbox), str(out), "participant", "--nameformat", nameformat, "-q"]) == 0
    for image in (out / "sub-S02").rglob("*.nii.gz"):
        image.unlink()
    assert main([str(inbox), str(out), "group", "--skip-validation", "-q"]) == ExitCode.PARTIAL
