"""The shortcut of a participant re-run with nothing new (:mod:`bidsport.uptodate`).

It must print, report and exit exactly as the full path would, load nothing of the
pipeline, and give way to the full path whenever anything that path reads has changed.
Which path a run took is told by its log: only the shortcut writes "nothing new since".
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bidsport import __version__, uptodate
from bidsport.cli.run import main
from bidsport.fileops import file_lock
from bidsport.layout import DatasetLayout
from bidsport.synthetic import Study, Subject, typical_session, write_series

SHORTCUT_LINE = "nothing new since"


def write_packets(inbox: Path, *names: str) -> None:
    """One folder packet per name, each holding a small T1w series."""
    t1w = next(s for s in typical_session() if s.description.lower().startswith("t1"))
    for name in names:
        write_series(t1w, inbox / name / "t1", Subject(patient_id=f"PID{name}"), Study(key=name))


def run(args: list[str]) -> tuple[int, str, str]:
    """``main(args)`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def shortcuts(out: Path) -> int:
    """How many runs so far took the shortcut (each says so once in its log)."""
    logs = (out / "derivatives" / "bidsport" / "logs").glob("*.log")
    return sum(path.read_text(encoding="utf-8").count(SHORTCUT_LINE) for path in logs)


def stamps(out: Path) -> list[Path]:
    return sorted((out / Path(*uptodate.STAMP_DIR)).glob("*.json"))


ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"


def report_text(stdout: str) -> str:
    """The text of the report a run printed the path of, its two times made ``<time>``."""
    match = re.search(r"^report: (.+)$", stdout, re.M)
    assert match, stdout
    text = Path(match.group(1)).read_text(encoding="utf-8")
    text, n = re.subn(
        rf'^(  "(started|finished)": )"{ISO_UTC}",$', r'\1"<time>",', text, flags=re.M
    )
    assert n == 2, text
    return text


def report_of(stdout: str) -> dict[str, object]:
    report = json.loads(report_text(stdout))
    return {k: v for k, v in report.items() if k not in ("started", "finished")}


def without_report_path(stdout: str) -> str:
    return re.sub(r"^report: .+$", "report: ...", stdout, flags=re.M)


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """An inbox of two packets converted once; (inbox, OUTPUT_DIR, the command)."""
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_packets(inbox, "S01", "S02")
    args = [str(inbox), str(out), "participant", "--n-procs", "1"]
    code, stdout, stderr = run(args)
    assert code == 0, stdout + stderr
    assert "sub-S01: 1 images" in stdout and "sub-S02: 1 images" in stdout
    assert len(stamps(out)) == 1
    return inbox, out, args


# --------------------------------------------------------------------------- same outcome


@pytest.mark.parametrize("extra", [[], ["-q"]], ids=["default", "quiet"])
def test_the_shortcut_prints_reports_and_exits_as_the_full_path(
    tmp_path: Path, extra: list[str]
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_packets(inbox, "S01", "S02")
    args = [str(inbox), str(out), "participant", "--n-procs", "1", *extra]
    assert run(args)[0] == 0

    fast = run(args)
    assert shortcuts(out) == 1
    fast_report = report_of(fast[1]) if not extra else None

    for stamp in stamps(out):
        stamp.unlink()  # the full path, as before the shortcut existed
    full = run(args)
    assert shortcuts(out) == 1
    assert fast[0] == full[0] == 0
    assert without_report_path(fast[1]) == without_report_path(full[1])
    assert fast[2] == full[2]
    if not extra:
        assert "sub-S01: already done (skipped)" in fast[1]
        assert fast_report == report_of(full[1])
        assert report_text(fast[1]) == report_text(full[1])  # the same file, byte for byte
        assert fast_report["summary"] == {  # type: ignore[index]
            "sessions": 2,
            "done": 0,
            "skipped": 2,
            "failed": 0,
            "excluded_or_failed_items": 0,
        }
    # the full path's re-run stamped itself: the next one is short again
    assert len(stamps(out)) == 1
    assert run(args)[1] == fast[1] or not extra
    assert shortcuts(out) == 2


def test_the_shortcut_loads_neither_argparse_nor_logging_nor_the_pipeline(
    dataset: tuple[Path, Path, list[str]],
) -> None:
    _, out, args = dataset
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from bidsport.cli.run import main\n"
        f"code = main({args!r})\n"
        "loaded = sorted(set(sys.modules) - before)\n"
        "import json\n"
        "print(json.dumps([code, loaded]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    code, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0
    assert shortcuts(out) == 1
    heavy = {"argparse", "logging", "pathlib", "dataclasses", "typing", "tempfile", "shutil"}
    heavy |= {"json", "re", "collections", "enum", "functools"}  # ~9 ms of a ~20 ms re-run
    assert not heavy & set(loaded), loaded
    ours = {name for name in loaded if name.split(".")[0] == "bidsport"}
    assert ours == {"bidsport", "bidsport.cli", "bidsport.cli.run", "bidsport.uptodate"}


def test_the_stamp_is_found_however_the_output_dir_is_spelled(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_packets(inbox, "S01")
    args = [f"{inbox}/", f"{tmp_path}/./bids/", "participant", "--n-procs", "1"]
    assert run(args)[0] == 0
    assert run(args)[0] == 0 and shortcuts(out) == 1


# --------------------------------------------------------------------------- gives way


def _new_packet(inbox: Path, out: Path) -> None:
    write_packets(inbox, "S03")


def _record_removed(inbox: Path, out: Path) -> None:
    DatasetLayout(out).status_row_file("S01", None).unlink()


def _entry_touched(inbox: Path, out: Path) -> None:
    st = (inbox / "S02").stat()
    os.utime(inbox / "S02", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _dead_scratch_folder(inbox: Path, out: Path) -> None:
    # as a run killed on this machine leaves it (its pid is not alive)
    (DatasetLayout(out).work_dir / f"{os.uname().nodename}-999999999-x").mkdir(parents=True)


def _series_table_removed(inbox: Path, out: Path) -> None:
    DatasetLayout(out).series_table("S01", None).unlink()


def _image_removed(inbox: Path, out: Path) -> None:
    next((out / "sub-S02" / "anat").glob("*.nii.gz")).unlink()


def _own_row_edited(inbox: Path, out: Path) -> None:
    # as --regenerate may leave it: the table says S01 is not converted, its record says it is
    table = DatasetLayout(out).status_file
    lines = table.read_text(encoding="utf-8").splitlines()
    lines = [
        line.replace("\ttrue\tn/a", "\tfalse\tn/a") if "sub-S01\t" in line else line
        for line in lines
    ]
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _own_row_removed(inbox: Path, out: Path) -> None:
    table = DatasetLayout(out).status_file
    lines = table.read_text(encoding="utf-8").splitlines()
    table.write_text("\n".join(x for x in lines if "sub-S02\t" not in x) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_new_packet, {"sub-S01": "already done (skipped)", "sub-S03": "1 images"}),
        (_record_removed, {"sub-S01": "1 images", "sub-S02": "already done (skipped)"}),
        (_entry_touched, {"sub-S01": "already done (skipped)"}),
        (_dead_scratch_folder, {"sub-S01": "already done (skipped)"}),
        (_series_table_removed, {"sub-S01": "1 images", "sub-S02": "already done (skipped)"}),
        (_image_removed, {"sub-S01": "already done (skipped)", "sub-S02": "1 images"}),
        (_own_row_edited, {"sub-S01": "already done (skipped)"}),
        (_own_row_removed, {"sub-S02": "already done (skipped)"}),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_any_change_takes_the_full_path(
    dataset: tuple[Path, Path, list[str]],
    change: Callable[[Path, Path], None],
    expected: dict[str, str],
) -> None:
    inbox, out, args = dataset
    change(inbox, out)
    code, stdout, stderr = run(args)
    assert code == 0, stdout + stderr
    assert shortcuts(out) == 0
    for label, status in expected.items():
        assert f"{label}: {status}" in stdout
    assert not DatasetLayout(out).work_dir.exists()  # a killed run's scratch: removed
    # ... and the full run stamped what it found: the next re-run is short
    code, stdout, _ = run(args)
    assert code == 0 and shortcuts(out) == 1
    assert "1 images" not in stdout


def test_the_tasks_of_an_array_rerun_by_the_shortcut(tmp_path: Path) -> None:
    """One job per participant (a SLURM array): each task's run changes the status table
    that the earlier tasks stamped. Their rows are unchanged, so each re-run is short; a
    task whose own row changed, or a table the full path would refuse, is not."""
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_packets(inbox, "S01", "S02", "S03")
    tasks = [
        [str(inbox), str(out), "participant", "--n-procs", "1", "--participant-label", label]
        for label in ("S01", "S02", "S03")
    ]
    for args in tasks:
        code, stdout, stderr = run(args)
        assert code == 0 and "1 images" in stdout, stdout + stderr
    layout = DatasetLayout(out)
    table = layout.status_file.read_bytes()
    assert len(stamps(out)) == 3 and table.count(b"\ttrue\ttrue\ttrue\t") == 3
    for n, args in enumerate(tasks, start=1):
        code, stdout, _ = run(args)
        assert code == 0 and "already done (skipped)" in stdout
        assert shortcuts(out) == n
    assert layout.status_file.read_bytes() == table

    # another session's row, changed as the group level's merge may change it: still short
    text = table.decode("utf-8")
    other = text.replace("\tS03\ttrue\t", "\tS03;S03b\ttrue\t")
    assert other != text
    layout.status_file.write_text(other, encoding="utf-8")
    assert run(tasks[0])[0] == 0 and shortcuts(out) == 4

    # the task's own row changed: the full path puts its record back into the table
    layout.status_file.write_text(
        other.replace("\tS01\ttrue\ttrue\ttrue\t", "\tS01\ttrue\ttrue\tfalse\t"),
        encoding="utf-8",
    )
    assert run(tasks[0])[0] == 0 and shortcuts(out) == 4
    assert layout.status_file.read_text(encoding="utf-8") == other

    # another row the full path would refuse: it warns, and writes no stamp
    bad = other.replace("\tS02\ttrue\ttrue\ttrue\t", "\tS02\ttrue\tmaybe\ttrue\t")
    assert bad != other
    layout.status_file.write_text(bad, encoding="utf-8")
    code, stdout, stderr = run(tasks[0])
    assert code == 0 and shortcuts(out) == 4
    assert "organized is 'maybe', not true/false" in stdout + stderr
    assert run(tasks[0])[0] == 0 and shortcuts(out) == 4


def test_a_file_named_on_the_command_line_is_watched(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_packets(inbox, "S01", "S02")
    mapping = tmp_path / "mapping.tsv"
    mapping.write_text("packet\tsubject\nS01\tone\nS02\ttwo\n", encoding="utf-8")
    args = [str(inbox), str(out), "participant", "--n-procs", "1", f"--mapping={mapping}"]
    assert run(args)[0] == 0
    assert run(args)[0] == 0 and shortcuts(out) == 1

    mapping.write_text("packet\tsubject\nS01\tone\nS02\tthree\n", encoding="utf-8")
    code, stdout, stderr = run(args)
    assert code == 0, stdout + stderr
    assert shortcuts(out) == 1
    assert "sub-three: 1 images" in stdout and "sub-one: already done (skipped)" in stdout


def test_a_session_locked_by_another_run_takes_the_full_path(
    dataset: tuple[Path, Path, list[str]],
) -> None:
    _, out, args = dataset
    with file_lock(DatasetLayout(out).lock_file("S02", None)):
        code, stdout, _ = run(args)
    assert shortcuts(out) == 0
    assert code != 0
    assert "sub-S02: FAILED" in stdout and "another bidsport run" in stdout
    assert "sub-S01: already done (skipped)" in stdout
    assert stamps(out) == []  # a run with a failed session leaves no stamp


def test_a_damaged_stamp_is_ignored_and_replaced(dataset: tuple[Path, Path, list[str]]) -> None:
    _, out, args = dataset
    (stamp,) = stamps(out)
    stamp.write_text('{"format": 1, "output_dir": 5', encoding="utf-8")
    assert run(args)[0] == 0 and shortcuts(out) == 0
    assert json.loads(stamp.read_text(encoding="utf-8"))["argv"] == args
    stamp.write_text('{"format": 1, "output_dir": "elsewhere"}', encoding="utf-8")
    assert run(args)[0] == 0 and shortcuts(out) == 0
    stamp.write_text("[" * 200_000, encoding="utf-8")  # too deep for the JSON parser
    assert run(args)[0] == 0 and shortcuts(out) == 0
    assert run(args)[0] == 0 and shortcuts(out) == 1


def test_a_stamp_planted_elsewhere_or_by_someone_else_is_not_trusted(
    dataset: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    """A stamp in the inbox (a shared drop folder, say) that claims the inbox is the
    output and sends the logs elsewhere must neither hide a new packet nor write there."""
    inbox, out, args = dataset
    (stamp_file,) = stamps(out)
    genuine = json.loads(stamp_file.read_text(encoding="utf-8"))
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    elsewhere = tmp_path / "elsewhere"
    planted = inbox / Path(*uptodate.STAMP_DIR) / stamp_file.name
    planted.parent.mkdir(parents=True)
    forged = {
        **genuine,
        "output_dir": str(inbox),
        "path": str(planted),
        "inbox": str(frozen),
        "inputs": uptodate.observe_inputs(args, str(frozen)),
        "log_dir": str(elsewhere),
    }
    planted.write_text(json.dumps(forged), encoding="utf-8")
    planted.chmod(0o644)
    write_packets(inbox, "S03")
    code, stdout, _ = run(args)
    assert "sub-S03: 1 images" in stdout
    # the planted folder is a packet of the inbox, with nothing to convert
    assert code == 3 and "sub-sourcedata: FAILED: no DICOM image series" in stdout
    assert not elsewhere.exists()
    assert shortcuts(out) == 0
    shutil.rmtree(inbox / "sourcedata")
    assert run(args)[0] == 0 and shortcuts(out) == 0  # stamped again

    # the genuine stamp, made writable by others, or owned by another user: not trusted
    (stamp_file,) = stamps(out)
    stamp_file.chmod(0o664)
    assert run(args)[0] == 0 and shortcuts(out) == 0
    (stamp_file,) = stamps(out)
    if os.getuid() == 0:
        os.chown(stamp_file, 4321, -1)
        assert run(args)[0] == 0 and shortcuts(out) == 0
    assert run(args)[0] == 0 and shortcuts(out) == 1


def test_a_work_dir_that_cannot_be_used_takes_the_full_path(tmp_path: Path) -> None:
    inbox, out, work = tmp_path / "inbox", tmp_path / "bids", tmp_path / "scratch" / "work"
    write_packets(inbox, "S01")
    args = [str(inbox), str(out), "participant", "--n-procs", "1", "--work-dir", str(work)]
    assert run(args)[0] == 0
    assert run(args)[0] == 0 and shortcuts(out) == 1
    (tmp_path / "scratch").rename(tmp_path / "scratch-gone")
    (tmp_path / "scratch").write_text("a file where the work dir's parent was\n")
    code, _, stderr = run(args)
    assert shortcuts(out) == 1
    assert code != 0 and "cannot write" in stderr and str(work) in stderr


def test_an_inbox_entry_named_in_another_encoding(tmp_path: Path) -> None:
    """A packet name that is not UTF-8 (a Latin-1 export): stamped, and the stamp works."""
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_packets(inbox, "S01", "S02")
    (inbox / "S02").rename(inbox / os.fsdecode(b"M\xfcller"))
    args = [str(inbox), str(out), "participant", "--n-procs", "1"]
    code, first, stderr = run(args)
    assert code == 0, first + stderr
    assert "stamp" not in stderr
    assert len(stamps(out)) == 1
    code, again, _ = run(args)
    assert code == 0 and shortcuts(out) == 1 and "already done (skipped)" in again


def test_an_inbox_path_in_another_encoding(tmp_path: Path) -> None:
    """A command line naming a folder that is not UTF-8: both paths log it, report it (as
    JSON escapes, which read back as the same string) and give the same outcome."""
    inbox, out = tmp_path / os.fsdecode(b"Eing\xe4nge"), tmp_path / "bids"
    write_packets(inbox, "S01")
    args = [str(inbox), str(out), "participant", "--n-procs", "1"]
    code, first, stderr = run(args)
    assert code == 0, first + stderr
    assert "Logging error" not in stderr and "internal error" not in stderr
    assert json.loads(report_text(first))["command"] == ["bidsport", *args]
    code, again, stderr_again = run(args)
    assert code == 0 and shortcuts(out) == 1, again + stderr_again
    assert "sub-S01: already done (skipped)" in again and stderr_again == stderr
    assert json.loads(report_text(again))["command"] == ["bidsport", *args]
    logs = "".join(
        log.read_text(encoding="utf-8")
        for log in (out / "derivatives" / "bidsport" / "logs").glob("*.log")
    )
    assert logs.count(f"bidsport {__version__}: bidsport {tmp_path}/Eing\\udce4nge ") == 2, logs


# --------------------------------------------------------------------------- not stamped


def test_runs_that_a_rerun_would_not_merely_skip_leave_no_stamp(
    dataset: tuple[Path, Path, list[str]],
) -> None:
    inbox, out, args = dataset
    (inbox / "notes.txt").write_text("not a packet\n", encoding="utf-8")
    code, _, stderr = run(args)
    assert code == 0 and "packet notes.txt: not imported" in stderr
    assert stamps(out) == []  # the older stamp went too
    code, _, again = run(args)  # so the problem is reported on every run
    assert shortcuts(out) == 0 and again == stderr
    (inbox / "notes.txt").unlink()

    for extra in (["--overwrite", "overwrite"], ["-v"], ["--dry-run"]):
        assert run([*args, *extra])[0] == 0
        assert stamps(out) == [], extra
    assert run(args)[0] == 0
    assert len(stamps(out)) == 1


def test_a_rerun_skips_all_only_when_records_and_table_agree(tmp_path: Path) -> None:
    """A session whose table row misses its record (a table update that timed out on
    the lock) would make the re-run write the table: that run must not be stamped."""
    from bidsport.options import RunOptions
    from bidsport.participant import rerun_skips_all, run_participant_level
    from bidsport.status import read_status, read_status_record, record_session

    inbox, layout = tmp_path / "inbox", DatasetLayout(tmp_path / "bids")
    write_packets(inbox, "S01", "S02")
    run = run_participant_level(inbox, layout, RunOptions())
    assert [r.error for r in run.results] == [None, None]
    assert rerun_skips_all(layout, run)

    rows = read_status(layout)
    layout.status_file.write_text(
        "\n".join(layout.status_file.read_text(encoding="utf-8").splitlines()[:-1]) + "\n",
        encoding="utf-8",
    )
    assert len(read_status(layout)) == len(rows) - 1
    assert not rerun_skips_all(layout, run)

    record = read_status_record(layout, "S02", None)
    assert record is not None
    record_session(layout, record)  # the table is whole again
    assert rerun_skips_all(layout, run)
    record_session(layout, dataclasses.replace(record, last_error="it broke"))
    assert not rerun_skips_all(layout, run)


# --------------------------------------------------------------------------- the stamp's text


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, -2, 2.5, 1e300, true, false, null], "b": {"c": ""}}\n',
        '{"name": "\\udcff\\u00e9\\u0000", "sig": [[33188, 12, 0]], "x": "\\"\\\\/"}',
        '  {"leading": "space"}',
        '{"a": NaN, "b": -Infinity}',
        '[{"deep": [[[]]]}]  \n',
        '{"a": 1} {"b": 2}',  # extra data
        '{"a": 1}\x0c',  # not JSON whitespace, though str.isspace says it is
        '{"a": 1}\u2028',
        '{"a" 1}',
        '{"a": "unterminated',
        "",
        "[" * 2000,
    ],
)
def test_the_stamp_is_read_as_json_loads_reads_it(text: str) -> None:
    try:
        expected = repr(json.loads(text))  # repr: NaN is not equal to itself
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            uptodate._loads(text)
    else:
        assert repr(uptodate._loads(text)) == expected


def test_a_stamp_is_written_only_with_both_report_times_to_fill_in(tmp_path: Path) -> None:
    report = json.dumps({"started": uptodate.STARTED, "finished": uptodate.FINISHED}, indent=2)
    where = (str(tmp_path), str(tmp_path), ["in", str(tmp_path), "participant"])
    path = uptodate.write_stamp(*where, {"report": report})
    assert json.loads(Path(path).read_text(encoding="ascii"))["report"] == report
    for broken in (json.dumps({"finished": uptodate.FINISHED}), report + report):
        with pytest.raises(ValueError, match="report must hold"):
            uptodate.write_stamp(*where, {"report": broken})
