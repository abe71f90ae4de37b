"""Many participant-level processes at once on one OUTPUT_DIR (an HPC job array).

Eight ``bidsport`` processes start together: six take one participant each, two take the
same two participants (so they race for the same sessions). Then the group level runs.
Every session must be converted exactly once (the other process gets the lock message or
finds it done), and the tables, outputs and validation must be complete and consistent.
A separate test holds a session's lock itself, so the lock path is taken for certain.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bidsport import fileops
from bidsport.errors import ExitCode
from bidsport.layout import DatasetLayout, sub_ses_prefix
from bidsport.status import KEEP_BACKUPS, read_status, read_status_file
from bidsport.synthetic import Study, Subject, typical_session, write_series
from bidsport.validator import find_validator

NAMEFORMAT = r"(?P<subject_id>[^_]+)_(?P<session_name>.+)"
SUBJECTS = [f"C{i}" for i in range(1, 9)]
#: (subject, session) of every packet: two sessions for the two contested subjects
SESSIONS = [(s, "1") for s in SUBJECTS] + [("C7", "2"), ("C8", "2")]
#: the --participant-label of each of the eight processes
SELECTIONS = [[s] for s in SUBJECTS[:6]] + [["C7", "C8"], ["C8", "C7"]]
#: what every session holds (localizer, T1w, sbref, bold, field map pair)
SERIES = [0, 1, 4, 5, 7, 8]
IMAGES = [
    "anat/{p}_T1w.nii.gz",
    "func/{p}_task-rest_dir-AP_sbref.nii.gz",
    "func/{p}_task-rest_dir-AP_bold.nii.gz",
    "fmap/{p}_magnitude1.nii.gz",
    "fmap/{p}_phasediff.nii.gz",
]
LOCK_MESSAGE = "is being processed by another bidsport run"


def _bidsport(*args: str) -> list[str]:
    return [sys.executable, "-m", "bidsport.cli.run", *args]


def _result_lines(stdout: str) -> dict[str, str]:
    """``sub-X_ses-Y: <outcome>`` lines of a participant-level run, by session label."""
    lines = {}
    for line in stdout.splitlines():
        match = re.match(r"(sub-\w+_ses-\w+): (.*)", line)
        if match:
            lines[match.group(1)] = match.group(2)
    return lines


@pytest.fixture(scope="module")
def inbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hpc") / "inbox"
    specs = typical_session()
    for number, (subject, session) in enumerate(SESSIONS):
        for index in SERIES:
            spec = specs[index]
            write_series(
                spec,
                folder / f"{subject}_{session}" / f"S{spec.series_number:02d}",
                Subject(patient_id=f"PID{subject}", patient_name=f"Hpc^{subject}"),
                Study(key=f"{subject}-{session}", date=f"202403{number + 1:02d}"),
            )
    return folder


@pytest.fixture(scope="module")
def array_run(inbox: Path) -> tuple[DatasetLayout, list[subprocess.CompletedProcess[str]]]:
    """The eight participant-level processes, started together on one OUTPUT_DIR."""
    out = inbox.parent / "bids"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = ["participant", "--nameformat", NAMEFORMAT, "--n-procs", "1"]
    procs = []
    for labels in SELECTIONS:
        args = _bidsport(str(inbox), str(out), *common, "--participant-label", *labels)
        procs.append(
            subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
    done = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return DatasetLayout(out), done


def test_every_session_is_converted_exactly_once(
    array_run: tuple[DatasetLayout, list[subprocess.CompletedProcess[str]]],
) -> None:
    _, runs = array_run
    converted_by: dict[str, list[int]] = {}
    for number, (labels, run) in enumerate(zip(SELECTIONS, runs, strict=True)):
        lines = _result_lines(run.stdout)
        wanted = {sub_ses_prefix(s, t) for s, t in SESSIONS if s in labels}
        assert set(lines) == wanted, f"process {number}: {run.stdout}\n{run.stderr}"
        failed = []
        for label, outcome in lines.items():
            if re.fullmatch(r"\d+ images", outcome):
                assert outcome == f"{len(IMAGES)} images", (label, outcome)
                converted_by.setdefault(label, []).append(number)
            elif outcome.startswith("FAILED:"):
                assert LOCK_MESSAGE in outcome, f"process {number}: {label}: {outcome}"
                failed.append(label)
            else:
                assert outcome == "already done (skipped)", (label, outcome)
        if len(labels) == 1:  # no competitor: nothing but success
            assert run.returncode == 0 and not failed, run.stderr
        else:
            expected = (
                ExitCode.SUCCESS if not failed
                else ExitCode.FAILED if len(failed) == len(lines)
                else ExitCode.PARTIAL
            )  # fmt: skip
            assert run.returncode == expected, run.stderr
            for label in failed:
                assert f"{label}: " in run.stderr and LOCK_MESSAGE in run.stderr
    assert {label: len(who) for label, who in converted_by.items()} == {
        sub_ses_prefix(s, t): 1 for s, t in SESSIONS
    }


def test_outputs_and_tables_are_complete(
    array_run: tuple[DatasetLayout, list[subprocess.CompletedProcess[str]]],
) -> None:
    layout, _ = array_run
    root = layout.root
    for subject, session in SESSIONS:
        prefix = sub_ses_prefix(subject, session)
        session_dir = layout.session_dir(subject, session)
        images = sorted(p.relative_to(session_dir).as_posix() for p in session_dir.rglob("*.nii*"))
        assert images == sorted(i.format(p=prefix) for i in IMAGES), prefix  # no dcm2niix "a"
        scans = fileops.read_tsv(layout.scans_file(subject, session))
        assert sorted(r["filename"] for r in scans) == images
        phasediff = json.loads((session_dir / f"fmap/{prefix}_phasediff.json").read_text())
        assert any(t.endswith("_bold.nii.gz") for t in phasediff["IntendedFor"])
        series = fileops.read_tsv(layout.series_table(subject, session))
        assert len(series) == len(SERIES)
        assert sum(r["outputs"] != "n/a" for r in series) == len(IMAGES)
        record = json.loads(layout.status_row_file(subject, session).read_text())
        assert record["converted"] is True and record["last_error"] is None, record

    # status.tsv as the participant-level runs left it (each under the table lock)
    rows = read_status(layout)
    assert [(r.participant_id, r.session_id) for r in rows] == sorted(SESSIONS)
    assert all(r.imported and r.organized and r.converted and not r.last_error for r in rows)
    backups = sorted(layout.status_backup_dir.iterdir())
    assert 0 < len(backups) <= KEEP_BACKUPS
    for backup in backups:
        read_status_file(backup)  # every previous version is a whole table

    # nothing half-written or left behind
    leftovers = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if (p.name.startswith(".") and p.name.endswith(".tmp"))
        or (p.is_symlink() and not p.exists())
    ]
    assert leftovers == []
    assert not layout.work_dir.exists()
    logs = list(layout.logs_dir.glob("participant_*.log"))
    assert len(logs) == len(SELECTIONS)


def test_group_level_after_the_array(
    array_run: tuple[DatasetLayout, list[subprocess.CompletedProcess[str]]], inbox: Path
) -> None:
    layout, _ = array_run
    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")
    status_before = layout.status_file.read_bytes()
    group = subprocess.run(
        _bidsport(str(inbox), str(layout.root), "group"),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert group.returncode == 0, group.stdout + group.stderr  # 6 if the validator complains
    assert "0 errors" in group.stdout
    # the table the participant runs kept equals the one rebuilt from the records and disk
    assert layout.status_file.read_bytes() == status_before
    participants = fileops.read_tsv(layout.participants_file)
    assert [r["participant_id"] for r in participants] == [f"sub-{s}" for s in SUBJECTS]
    page = layout.report_file.read_text(encoding="utf-8")
    for subject, session in SESSIONS:
        assert f'<section id="{sub_ses_prefix(subject, session)}">' in page
    assert page.count("<img ") == len(SESSIONS) * len(IMAGES)


# --------------------------------------------------------------------------- the lock


def _session_files(layout: DatasetLayout, subject: str, session: str) -> dict[str, str]:
    """Hashes (and link targets) of everything a session's run owns, but its status."""
    found = {}
    for folder in (
        layout.session_dir(subject, session),
        layout.dicom_dir(subject, session),
        layout.tables_dir(subject, session),
        layout.raw_dir(subject, session),
    ):
        for path in sorted(folder.rglob("*")):
            key = path.relative_to(layout.root).as_posix()
            if path.is_symlink():
                found[key] = os.readlink(path)
            elif path.is_file():
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _status_files(layout: DatasetLayout, subject: str, session: str) -> tuple[bytes, bytes]:
    return (
        layout.status_row_file(subject, session).read_bytes(),
        layout.status_file.read_bytes(),
    )


def _locked_out_run(
    layout: DatasetLayout, inbox: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, str], tuple[bytes, bytes]]:
    """Run ``--overwrite clean`` on sub-C1 ses-1 while this test holds that session's lock.

    Returns the run and what the session's files and status were before it.
    """
    files, status = _session_files(layout, "C1", "1"), _status_files(layout, "C1", "1")
    time.sleep(1.1)  # a rewrite would show in the status time stamp (seconds)
    with fileops.file_lock(layout.lock_file("C1", "1"), blocking=False):
        run = subprocess.run(
            _bidsport(str(inbox), str(layout.root), "participant", "--nameformat", NAMEFORMAT,
                      "--participant-label", "C1", "--overwrite", "clean"),
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    return run, files, status


def test_a_locked_session_is_left_alone(
    array_run: tuple[DatasetLayout, list[subprocess.CompletedProcess[str]]], inbox: Path
) -> None:
    layout, _ = array_run
    run, files, _ = _locked_out_run(layout, inbox)
    assert run.returncode == ExitCode.FAILED, run.stdout + run.stderr
    outcome = _result_lines(run.stdout)["sub-C1_ses-1"]
    assert outcome.startswith("FAILED:") and LOCK_MESSAGE in outcome
    assert LOCK_MESSAGE in run.stderr
    assert _session_files(layout, "C1", "1") == files  # --overwrite clean did not clean


def test_a_locked_session_keeps_its_status(
    array_run: tuple[DatasetLayout, list[subprocess.CompletedProcess[str]]], inbox: Path
) -> None:
    layout, _ = array_run
    run, _, status = _locked_out_run(layout, inbox)
    assert LOCK_MESSAGE in run.stdout
    assert _status_files(layout, "C1", "1") == status


def test_a_run_gets_its_scratch_folder_when_another_removes_the_shared_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs share OUTPUT_DIR's scratch folder and remove it when it is empty as they end.
    Two runs end just after this one made the shared folder and before it made its own
    folder in it: it makes the shared folder again instead of failing."""
    import tempfile

    from bidsport import participant

    base = tmp_path / "work"
    dead = base / f"{os.uname().nodename}-999999999-x"  # a killed run's, on this host
    other = base / "otherhost-1-x"  # a run of another node: cannot be checked from here
    mkdtemp = tempfile.mkdtemp
    ended: list[bool] = []

    def other_runs_end_first(*args: object, **kwargs: object) -> str:
        if len(ended) < 2:
            os.rmdir(base)
            ended.append(True)
        return mkdtemp(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(tempfile, "mkdtemp", other_runs_end_first)
    path = participant._shared_scratch(base)
    assert path.is_dir() and path.parent == base and len(ended) == 2
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    for folder in (dead, other):
        folder.mkdir()
    second = participant._shared_scratch(base)
    assert sorted(base.iterdir()) == sorted([path, second, other])


@pytest.mark.parametrize("where", ["--work-dir", "--anonymize"])
def test_a_killed_runs_scratch_folder_outside_the_dataset_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The scratch folders of runs in the user's --work-dir, or (--anonymize without one)
    in the system's temporary folder, where they hold the original identifiable files:
    the next run on this machine removes those of killed runs, and nothing else there."""
    import tempfile

    from bidsport import participant
    from bidsport.options import RunOptions

    base = tmp_path / ("work" if where == "--work-dir" else "tmp")
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    host = os.uname().nodename
    dead = base / f"bidsport-{host}-999999999-x"  # a killed run's, on this host
    kept = [base / "bidsport-anonymize.key", base / "logs", base / f"{host}-999999999-y"]
    kept[0].write_bytes(b"key")
    for folder in (dead, *kept[1:]):
        folder.mkdir()
    opts = RunOptions(work_dir=base if where == "--work-dir" else None, anonymize=True)
    with participant._work_dir(opts, DatasetLayout(tmp_path / "bids")) as scratch:
        assert scratch.parent == base and scratch.name.startswith(f"bidsport-{host}-{os.getpid()}-")
        assert not dead.exists() and all(os.path.lexists(p) for p in kept)
    assert not scratch.exists()
