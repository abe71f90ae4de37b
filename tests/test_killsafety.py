"""Crash safety: a participant run SIGKILLed at any point is finished by the next run.

A small wrapper script (written into tmp_path) runs ``bidsport.cli.run.main`` in a child
process after replacing one library function by a version that, on its Nth call,
SIGKILLs the process (no clean-up runs, as after a power loss) or pauses it while
holding the session lock. The library itself has no test hooks.

After each kill the same command is run again (in this process); its exit code must be
0 and the output dataset must equal that of an uninterrupted run: the same files, the
same TSV/JSON content (apart from the ``updated`` time stamps of the status), the same
NIfTI voxels and affines, and no leftover of the killed run (temporary names, half
imports, scratch folders).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from bidsport.cli.run import main
from bidsport.fileops import file_lock
from bidsport.layout import DatasetLayout
from bidsport.synthetic import Study, Subject, typical_session, write_series

WRAPPER = '''\
"""Test-only: run bidsport with one function replaced by a killer (or a pause)."""
import importlib
import os
import signal
import sys
import time
from pathlib import Path

target = os.environ["KILL_TARGET"]  # "module:attr" or "module:Class.method"
nth = int(os.environ["KILL_NTH"])
mode = os.environ.get("KILL_MODE", "kill")
match = os.environ.get("KILL_MATCH", "")  # count only calls whose arguments show this
module_name, _, attr = target.partition(":")
owner = importlib.import_module(module_name)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, name)
calls = 0


def hooked(*args, **kwargs):
    global calls
    if match and match not in repr((args, kwargs)):
        return original(*args, **kwargs)
    calls += 1
    if calls == nth:
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        Path(os.environ["PAUSED_FILE"]).write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not Path(os.environ["RELEASE_FILE"]).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return original(*args, **kwargs)


setattr(owner, name, hooked)
from bidsport.cli.run import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


# --------------------------------------------------------------------------- inputs


def write_inbox(inbox: Path) -> None:
    """Two packets: a zip (T1w, T2w, bold) and a folder (T1w, dwi)."""
    specs = {s.series_number: s for s in typical_session()}
    staging = inbox.parent / "staging"
    files = []
    for number in (2, 3, 6):
        files += write_series(specs[number], staging, Subject(patient_id="IDKA"), Study("KA"))
    inbox.mkdir()
    with zipfile.ZipFile(inbox / "KA.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, f"exam/{path.name}")
    for number in (2, 7):
        write_series(specs[number], inbox / "KB", Subject(patient_id="IDKB"), Study("KB"))


def command(inbox: Path, out: Path, *extra: str) -> list[str]:
    return [str(inbox), str(out), "participant", "--n-procs", "1", "-q", *extra]


def run_quietly(args: list[str]) -> tuple[int, str]:
    """``main(args)`` in this process; (exit code, what it printed)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(args)
    return code, buf.getvalue()


def run_child(
    wrapper: Path, args: list[str], target: str, nth: int, **env: str
) -> subprocess.Popen[str]:
    environ = {**os.environ, "KILL_TARGET": target, "KILL_NTH": str(nth), **env}
    return subprocess.Popen(
        [sys.executable, str(wrapper), *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def paused_child(
    wrapper: Path, args: list[str], target: str, folder: Path
) -> tuple[subprocess.Popen[str], Path]:
    """A run paused at its first call of ``target``, and the file that releases it (to
    be written, in a ``finally``, once the test is done with the pause)."""
    paused, release = folder / "paused", folder / "release"
    child = run_child(
        wrapper,
        args,
        target,
        1,
        KILL_MODE="pause",
        PAUSED_FILE=str(paused),
        RELEASE_FILE=str(release),
    )
    deadline = time.monotonic() + 60
    while not paused.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            release.write_text("go")
            pytest.fail(f"the run never reached its pause:\n{child.communicate()[0]}")
        time.sleep(0.02)
    return child, release


# --------------------------------------------------------------------------- comparison

#: run-specific files: logs and run reports, backups of status.tsv (named by time), the
#: stamps that let a re-run with nothing new skip the pipeline (stat signatures)
VOLATILE = (
    "derivatives/bidsport/logs/",
    "sourcedata/backups/",
    "sourcedata/bidsport/uptodate/",
)


def _content(path: Path, rel: str) -> Any:
    if path.is_symlink():
        return ("link", os.readlink(path))
    if path.is_dir():
        return "dir"
    name = path.name
    if name.endswith((".nii", ".nii.gz")):
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        return (
            "nifti",
            img.shape,
            str(data.dtype),
            hashlib.sha256(data.tobytes()).hexdigest(),
            np.round(img.affine, 5).tolist(),
        )
    if name.endswith(".json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if rel.startswith("sourcedata/bidsport/status/"):
            data.pop("updated", None)
        return ("json", data)
    if name.endswith(".tsv"):
        lines = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
        if rel == "sourcedata/status.tsv" and lines:
            drop = lines[0].index("updated")
            lines = [line[:drop] + line[drop + 1 :] for line in lines]
        return ("tsv", lines)
    return ("bytes", hashlib.sha256(path.read_bytes()).hexdigest())


def dataset_tree(out: Path) -> dict[str, Any]:
    """Every entry of the output dataset (names and normalised content)."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(out):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(out).as_posix()
            if rel.startswith(VOLATILE) or f"{rel}/" in VOLATILE:
                continue
            tree[rel] = _content(path, rel)
    return tree


def assert_same_dataset(out: Path, expected: dict[str, Any]) -> None:
    got = dataset_tree(out)
    assert sorted(got) == sorted(expected), {
        "missing": sorted(set(expected) - set(got)),
        "extra": sorted(set(got) - set(expected)),
    }
    differ = [rel for rel in expected if got[rel] != expected[rel]]
    assert not differ, {rel: (got[rel], expected[rel]) for rel in differ[:3]}


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Baseline:
    inbox: Path
    wrapper: Path
    tree: dict[str, Any]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    base = tmp_path_factory.mktemp("kill")
    inbox = base / "inbox"
    write_inbox(inbox)
    wrapper = base / "killer.py"
    wrapper.write_text(WRAPPER)
    out = base / "uninterrupted"
    code, text = run_quietly(command(inbox, out))
    assert code == 0, text
    tree = dataset_tree(out)
    assert "sub-KA/anat/sub-KA_T1w.nii.gz" in tree and "sub-KB/dwi/sub-KB_dir-AP_dwi.bval" in tree
    return Baseline(inbox, wrapper, tree)


KILL_POINTS = [
    # (function replaced, the call that kills[, only calls whose arguments show this])
    pytest.param("bidsport.archive:_Extractor.write_member", 5, id="extracting-the-zip"),
    pytest.param("bidsport.ingest:fileops.hardlink_or_copy", 7, id="importing-the-folder"),
    pytest.param("bidsport.index:read_header", 4, id="reading-headers"),
    pytest.param("bidsport.organize:relative_symlink", 4, id="organizing"),
    pytest.param("bidsport.convert:run_command", 2, id="converting"),
    pytest.param("bidsport.export:may_be_3d", 1, id="exporting-a-series-half-done"),
    pytest.param("bidsport.participant:record_session", 1, id="before-the-status-record"),
    # the second session begins while the first one's last row of status.tsv may wait
    pytest.param("bidsport.participant:record_session", 3, id="with-a-status-row-waiting"),
    pytest.param("bidsport.status:_replace_table", 1, id="between-record-and-table"),
    pytest.param("bidsport.status:_replace_table", 2, id="second-session-status"),
    # a file written in full under its temporary name, not yet renamed into place
    pytest.param("bidsport.fileops:os.replace", 1, "sub-KA_T2w.json", id="renaming-a-sidecar"),
    pytest.param("bidsport.fileops:os.replace", 1, "files.tsv", id="renaming-files-tsv"),
    pytest.param("bidsport.fileops:os.replace", 2, ".status.tsv.", id="renaming-status-tsv"),
    pytest.param(
        "bidsport.fileops:os.replace",
        1,
        "sub-KB.json",
        id="renaming-a-record",
    ),
]


@pytest.mark.parametrize(
    ("target", "nth", "match"),
    [
        pytest.param(*p.values, "", id=p.id, marks=p.marks) if len(p.values) == 2 else p
        for p in KILL_POINTS
    ],
)
def test_a_killed_run_is_finished_by_the_next(
    baseline: Baseline, tmp_path: Path, target: str, nth: int, match: str
) -> None:
    out = tmp_path / "bids"
    args = command(baseline.inbox, out)
    child = run_child(baseline.wrapper, args, target, nth, KILL_MATCH=match)
    output, _ = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, f"the kill point was not reached:\n{output}"
    code, text = run_quietly(args)
    assert code == 0, text
    assert_same_dataset(out, baseline.tree)


def test_a_run_killed_twice_is_finished_too(baseline: Baseline, tmp_path: Path) -> None:
    out = tmp_path / "bids"
    args = command(baseline.inbox, out)
    for target, nth in (("bidsport.convert:run_command", 1), ("bidsport.export:may_be_3d", 1)):
        child = run_child(baseline.wrapper, args, target, nth)
        output, _ = child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, output
    assert run_quietly(args)[0] == 0
    assert_same_dataset(out, baseline.tree)


@pytest.mark.parametrize("mode", ["clean", "overwrite"])
def test_a_killed_redo_of_a_done_session_is_not_taken_for_done(
    baseline: Baseline, tmp_path: Path, mode: str
) -> None:
    """A converted session redone with --overwrite clean/overwrite and killed while its
    outputs are being replaced: its record must not say it is done, so the next ordinary
    run (--overwrite skip) converts it again instead of skipping it."""
    out = tmp_path / "bids"
    args = command(baseline.inbox, out)
    assert run_quietly(args)[0] == 0
    redo = [*args, "--overwrite", mode, "--participant-label", "KA"]
    child = run_child(baseline.wrapper, redo, "bidsport.convert:run_command", 1)
    output, _ = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, output
    record = json.loads(DatasetLayout(out).status_row_file("KA", None).read_text())
    assert record["converted"] is False and record["last_error"].startswith("unfinished:")
    code, text = run_quietly(args)
    assert code == 0, text
    assert "sub-KA: already done" not in text
    assert_same_dataset(out, baseline.tree)


# --------------------------------------------------------------------------- the lock


@dataclass(frozen=True)
class Contended:
    code: int  #: exit code of the second run
    text: str  #: what the second run printed
    record_before: bytes | None  #: the session's status record while the first run held it
    record_after: bytes | None  #: ... and after the second run
    first_code: int
    first_output: str
    out: Path


@pytest.fixture(scope="module")
def contended(baseline: Baseline, tmp_path_factory: pytest.TempPathFactory) -> Contended:
    """A second run of sub-KA while a first one is paused inside it (holding its lock)."""
    base = tmp_path_factory.mktemp("lock")
    out = base / "bids"
    args = command(baseline.inbox, out)
    first, release = paused_child(baseline.wrapper, args, "bidsport.convert:run_command", base)
    try:
        layout = DatasetLayout(out)
        record = layout.status_row_file("KA", None)
        record_before = record.read_bytes() if record.exists() else None
        code, text = run_quietly([*args[:-1], "--participant-label", "KA"])
        record_after = record.read_bytes() if record.exists() else None
    finally:
        release.write_text("go")
        first_output, _ = first.communicate(timeout=120)
    return Contended(code, text, record_before, record_after, first.returncode, first_output, out)


def test_a_second_run_is_refused_with_a_clear_message(contended: Contended) -> None:
    assert contended.code == 4
    assert "sub-KA: FAILED" in contended.text
    assert "being processed by another bidsport run" in contended.text


def test_the_refused_run_does_not_touch_the_session_status(contended: Contended) -> None:
    # the first run recorded the session as unfinished when it began: a run killed from
    # there on is not shown as in progress for ever
    assert contended.record_before is not None
    assert json.loads(contended.record_before)["last_error"].startswith("unfinished:")
    assert contended.record_after == contended.record_before


def test_the_first_run_finishes_unharmed(contended: Contended, baseline: Baseline) -> None:
    assert contended.first_code == 0, contended.first_output
    assert_same_dataset(contended.out, baseline.tree)


def test_the_session_lock_is_released_when_its_holder_is_killed(
    baseline: Baseline, tmp_path: Path
) -> None:
    out = tmp_path / "bids"
    child = run_child(
        baseline.wrapper, command(baseline.inbox, out), "bidsport.convert:run_command", 1
    )
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    with file_lock(DatasetLayout(out).lock_file("KA", None), blocking=False):
        pass  # a held lock would raise LockedError


def test_sigterm_ends_the_run_like_ctrl_c_and_removes_its_scratch(
    baseline: Baseline, tmp_path: Path
) -> None:
    """SIGTERM (a batch system's time limit, ``docker stop``) while a session is being
    anonymized: exit 143, and the scratch folder, which holds the identifiable originals,
    is removed (it stayed until a later run on the same host); the next run converts."""
    out, work = tmp_path / "bids", tmp_path / "work"

    def scratch() -> list[Path]:  # (not the key and its store, also in the work dir)
        return [p for p in work.iterdir() if p.name.startswith(f"bidsport-{os.uname()[1]}")]

    args = command(baseline.inbox, out, "--anonymize", "-w", str(work))
    child, release = paused_child(
        baseline.wrapper, args, "bidsport.privacy:anonymize_files", tmp_path
    )
    try:
        assert scratch()
        child.send_signal(signal.SIGTERM)
        output, _ = child.communicate(timeout=60)
    finally:
        release.write_text("go")
        if child.poll() is None:
            child.kill()
    assert child.returncode == 143, output
    assert "terminated (SIGTERM)" in output and "Traceback" not in output
    assert not scratch()
    code, text = run_quietly(args)
    assert code == 0, text
