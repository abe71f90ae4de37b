"""The benchmark (bench/): synthetic inboxes are right, and the runner works end to end.

The runner is run as a user runs it (a subprocess) on a tiny inbox: 2 sessions of 3
series, one session with a folder per series and one flat, bidsport and bare dcm2niix.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pydicom
import pytest

from bidsport.header import read_header
from bidsport.validator import find_validator

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


synth = _load("synth")
run = _load("run")


def test_synthetic_files_are_patched_into_distinct_valid_instances(tmp_path):
    info = synth.write_inbox(
        tmp_path, 60, n_sessions=2, protocol=synth.PROTOCOLS["tiny"], private_kb=8
    )
    files = sorted(tmp_path.rglob("*.dcm"))
    assert info.n_files == len(files) == 56  # 2 x (4 T1w + 12 DWI + 12 bold), 60 is a target
    assert {p.parent.name for p in files} >= {"001_anat-T1w", "002_dwi_dir-AP"}
    datasets = [pydicom.dcmread(f) for f in files]
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(files)
    assert all(ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID for ds in datasets)
    assert len({ds.StudyInstanceUID for ds in datasets}) == 2
    assert len({(ds.StudyInstanceUID, ds.SeriesInstanceUID) for ds in datasets}) == 6
    assert all(len(ds[0x00291020].value) >= 8 * 1024 * 3 // 4 for ds in datasets)  # CSA-like
    study = datasets[0].StudyInstanceUID
    dwi = sorted(
        (
            ds
            for ds in datasets
            if ds.SeriesDescription == "dwi_dir-AP" and ds.StudyInstanceUID == study
        ),
        key=lambda ds: ds.InstanceNumber,
    )
    assert [int(ds.InstanceNumber) for ds in dwi] == list(range(1, 13))
    assert [float(ds.DiffusionBValue) for ds in dwi[::4]] == [0.0, 1000.0, 1000.0]
    assert Counter(tuple(ds.ImagePositionPatient) for ds in dwi).most_common(1)[0][1] == 3
    # bidsport's reader agrees with pydicom
    header = read_header(files[0])
    assert header.sop_instance_uid == datasets[0].SOPInstanceUID
    assert header.has_pixel_data and header.rows == 64


def test_synthetic_epi_series_carry_the_phase_encoding_dcm2niix_needs(tmp_path):
    """BIDS requires PhaseEncodingDirection and TotalReadoutTime of an epi fieldmap:
    dcm2niix finds them in the CSA header, as it does in dcm_qa_nih's Siemens EPI."""
    from bidsport.convert import dcm2niix_binary

    protocol = synth.Protocol(4, 4, 3, 3, localizers=False, derived=False, sbref=False)
    synth.write_inbox(tmp_path / "in", 60, n_sessions=1, protocol=protocol, private_kb=8)
    sidecars = {}
    for series in sorted((tmp_path / "in").glob("*/*")):
        out = tmp_path / "out" / series.name
        out.mkdir(parents=True)
        subprocess.run([dcm2niix_binary(), "-b", "o", "-o", out, series], check=True,
                       capture_output=True)  # fmt: skip
        (sidecar,) = out.glob("*.json")
        sidecars[series.name.split("_", 1)[1]] = json.loads(sidecar.read_text())
    pe = {name: s.get("PhaseEncodingDirection") for name, s in sidecars.items()}
    assert pe.pop("func-bold_task-rest_run-01") == "j-"
    assert {pe.pop(name) for name in list(pe) if name.startswith("func-bold")} <= {"j-"}
    assert pe == {"anat-T1w": None, "fmap-epi_dir-AP": "j-", "fmap-epi_dir-PA": "j",
                  "dwi_dir-AP": "j-", "anat-T2w": None}  # fmt: skip
    ees = 1 / (synth.EPI_BANDWIDTH_PE * 64)  # 1 / (bandwidth per pixel x phase lines)
    for name in ("fmap-epi_dir-AP", "fmap-epi_dir-PA", "dwi_dir-AP"):
        assert sidecars[name]["TotalReadoutTime"] == pytest.approx(ees * 63, rel=1e-3)


def test_the_datasets_a_tool_wrote_are_found_below_its_output(tmp_path):
    """HeuDiConv's ReproIn heuristic writes OUT/<study description as folders>/: that is
    the dataset the validator must see, not OUT (which has no description)."""
    out = tmp_path / "out"
    for folder in ("Lab/Study", "Lab/Study/derivatives/x", ".heudiconv/S01", "Other/sourcedata"):
        (out / folder).mkdir(parents=True)
        (out / folder / "dataset_description.json").write_text("{}")
    assert run.dataset_roots(out) == [out / "Lab" / "Study"]
    (out / "Lab" / "dataset_description.json").write_text("{}")  # a dataset in a dataset
    assert run.dataset_roots(out) == [out / "Lab"]
    (out / "dataset_description.json").write_text("{}")
    assert run.dataset_roots(out) == [out]
    assert run.dataset_roots(tmp_path / "empty") == [tmp_path / "empty"]


def test_linear_fit_and_best_of():
    intercept, slope, r2 = run.linear_fit([(1000.0, 3.0), (10000.0, 21.0), (100000.0, 201.0)])
    assert slope == pytest.approx(0.002) and intercept == pytest.approx(1.0) and r2 == 1.0
    assert run.linear_fit([(5.0, 1.0)]) is None
    fast, slow = run.Measure("bidsport", wall=2.0), run.Measure("bidsport", wall=3.0)
    (best,) = run.best_of([[slow], [fast]])
    assert best is fast and best.extra["walls"] == [3.0, 2.0]


def test_only_standard_synthetic_cases_are_points_of_the_scale():
    """The 300-session case of tiny series costs differently per file: it has its own
    table, not a point of the time-per-file fit."""
    standard = {"kind": "synthetic", "extra": {"protocol": "standard", "layout": "series"}}
    assert run.on_the_scale(standard)
    assert run.on_the_scale({"kind": "synthetic", "extra": {}})  # written before the keys
    assert not run.on_the_scale({"kind": "synthetic", "extra": {"protocol": "tiny"}})
    assert not run.on_the_scale({"kind": "synthetic", "extra": {"layout": "flat"}})
    assert not run.on_the_scale({"kind": "synthetic", "extra": {"matrix": 256}})
    assert not run.on_the_scale({"kind": "synthetic", "extra": {"private_kb": 165}})
    assert run.on_the_scale({"kind": "synthetic", "extra": {"matrix": 64, "private_kb": 32}})
    assert not run.on_the_scale({"kind": "real", "extra": {}})


def test_a_case_whose_host_slowed_down_says_so():
    """The CPU probe, timed before and after each tool: a case during which the host's
    speed varied by more than 15% gets a warning under its table."""
    assert run.cpu_probe(repeat=1, cores=1) > 0 and run.cpu_probe(repeat=1, cores=2) > 0

    def case(*probes: tuple[float, float]) -> dict:
        return {"measures": [{"tool": "x", "probe": list(p)} for p in probes] + [{"tool": "y"}]}

    assert run.probe_lines(case((30.0, 31.0), (32.0, 30.5))) == []
    (warning,) = run.probe_lines(case((30.0, 31.0), (40.0, 33.0)))[1:]
    assert "the CPU probe took 30 to 40 ms (33% slower at its slowest)" in warning


def test_targets_say_when_a_competitor_failed():
    """A competitor that failed on some calls did less work: its ratio is not a target met
    or missed, and the table says why."""

    def measure(tool: str, wall: float, calls: int = 2, failed: int = 0, errors=0) -> dict:
        validation = {"errors": errors, "warnings": 3, "codes": ["X"] * bool(errors)}
        extra = {"validation": validation}
        return {"tool": tool, "wall": wall, "calls": calls, "failed_calls": failed, "extra": extra}

    case = {
        "case": "real",
        "kind": "real",
        "files": 100,
        "sessions": 2,
        "extra": {},
        "measures": [
            measure("bidsport e2e", 1.0),
            measure("heudiconv", 5.0, failed=1),
            measure("dcm2bids", 1.1),
        ],
    }

    def rows() -> dict[str, str]:
        lines = run.target_lines([case])[2:]
        return {line.split(" | ")[0].lstrip("| ").split(",")[0]: line for line in lines}

    heudiconv = rows()["end to end ≥ 15x faster than heudiconv"]
    assert "| 5.0x | not comparable: heudiconv failed on 1 of 2 calls |" in heudiconv
    assert rows()["end to end ≥ 1.2x faster than dcm2bids"].endswith("| 1.1x | no |")
    # the targets ask for output that passes the validator: a competitor's errors are
    # shown, bidsport's own errors fail the target however fast it was
    case["measures"][2] = measure("dcm2bids", 1.5, errors=2)
    dcm2bids = rows()["end to end ≥ 1.2x faster than dcm2bids"]
    assert dcm2bids.endswith("| 1.5x (dcm2bids's output: 2 validator errors) | yes |")
    case["measures"][0] = measure("bidsport e2e", 1.0, errors=1)
    dcm2bids = rows()["end to end ≥ 1.2x faster than dcm2bids"]
    assert dcm2bids.endswith("| no: bidsport's output fails the validator (speed: yes) |")
    heudiconv = rows()["end to end ≥ 15x faster than heudiconv"]  # not hidden by "not comparable"
    assert "no: bidsport's output fails the validator (speed: not comparable" in heudiconv
    case["measures"][0]["extra"]["validation"] = None  # no validator installed
    assert rows()["end to end ≥ 1.2x faster than dcm2bids"].endswith(
        "| speed: yes; output not validated |"
    )


def test_scan_target_judged_on_the_real_inbox_and_its_slowest_packet_named():
    """The issue's header-scan target (4,000 files/s per core on real vendor files) is a
    row of the table, for real inboxes only; the slowest packet of 100+ files is named."""

    def read(count: int, cpu: float) -> dict:
        return {"files": count, "count": count, "cpu": cpu}

    scan = {
        "files": 1105,
        "read_header": read(1100, 0.25)
        | {"by_folder": {"qage": read(350, 0.1), "qanih": read(700, 0.14), "qaenh": read(5, 0.01)}},
    }
    case = {"case": "real", "kind": "real", "files": 1105, "sessions": 3, "extra": {},
            "measures": [], "scan": scan}  # fmt: skip
    (row,) = run.target_lines([case])[2:]
    assert row == (
        "| header scan ≥ 4,000 files/s per core (warm cache, real vendor files) | real "
        "| 4,400 files/s/core (slowest packet: qage, 3,500) | yes |"
    )
    scan["read_header"]["cpu"] = 0.3
    assert run.target_lines([case])[2:][0].endswith("| no |")
    assert run.target_lines([case | {"kind": "synthetic"}])[2:] == []
    assert run.scan_folder_lines("real", scan)[0] == (
        "- real, `qaenh`: 5 of 5 files read, 500 files/s/core"
    )


def test_scan_memory_columns():
    """The scan's memory: main process start → peak with the growth per file, worker."""
    memory = {"files": 102400, "main_start_mb": 19.2, "main_peak_mb": 99.2, "worker_peak_mb": 20.4}
    assert run._scan_memory_cells({"memory": memory}) == "19 → 99 MB (0.80 kB/file) | 20 MB"
    assert run._scan_memory_cells({}) == "- | -"  # results from before the probe existed
    assert run._scan_memory_cells({"memory": {"error": "boom"}}) == "- | - (boom)"


def test_pyspy_summary_counts_inclusive_and_self_samples(tmp_path):
    raw = tmp_path / "p.txt"
    raw.write_text(
        'process 1:"bidsport";main (a.py:1);scan (b.py:2);read (c.py:3) 6\n'
        'process 1:"bidsport";main (a.py:1);lay_out (d.py:4) 4\n'
    )
    summary = run.summarize_pyspy(raw)
    assert summary["samples"] == 10
    assert dict(summary["inclusive"])["main (a.py:1)"] == 100.0
    assert summary["self"][0] == ("read (c.py:3)", 60.0)
    assert dict(summary["stages"])["organize"] == 40.0  # lay_out is the organize stage


@pytest.fixture
def work_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder under /dev/shm when there is one (the benchmark's usual --work, where the
    validator refuses to read: the runner must copy the output out first), else tmp_path."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    work = Path(tempfile.mkdtemp(prefix="bidsport-test-bench-", dir="/dev/shm"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_header_scan_runs_again_while_the_host_is_slowed(monkeypatch, tmp_path):
    """As a tool's runs: a probe 15%+ slower than the fastest so far makes the scan run
    again (up to --retries more times); the fastest read_header is kept, with its probes."""
    probes = iter([30.0, 45.0, 33.0, 31.0, 50.0, 52.0, 51.0, 53.0, 54.0, 55.0])
    cpu = iter([0.05, 0.025, 0.04, 0.03, 0.035])
    monkeypatch.setattr(run, "cpu_probe", lambda: next(probes))
    monkeypatch.setattr(
        run, "_scan_once", lambda *a: {"read_header": {"count": 100, "cpu": next(cpu)}}
    )
    args = argparse.Namespace(retries=2, probe_floor=30.0)
    steadied = run.scan_benchmark([tmp_path], tmp_path, args)  # steady at the second run
    assert (steadied["runs"], steadied["probe"], steadied["read_header"]["cpu"]) == (
        2, [33.0, 31.0], 0.025
    )  # fmt: skip
    never = run.scan_benchmark([tmp_path], tmp_path, args)  # 1 + 2 retries, none steady
    assert (never["runs"], never["probe"], never["read_header"]["cpu"]) == (3, [51.0, 53.0], 0.03)

    probes = iter([50.0, 52.0, 51.0, 53.0])  # an unsteady run, then one that fails
    answers = iter([{"read_header": {"count": 100, "cpu": 0.04}}, {"error": "exited 1"}])
    monkeypatch.setattr(run, "_scan_once", lambda *a: next(answers))
    kept = run.scan_benchmark([tmp_path], tmp_path, args)
    assert (kept["runs"], kept["probe"], kept["read_header"]["cpu"]) == (2, [50.0, 52.0], 0.04)


def test_runner_on_a_tiny_inbox_prints_and_writes_its_table(tmp_path, work_dir):
    out, results = tmp_path / "out", tmp_path / "RESULTS.md"
    cmd = [
        sys.executable, str(BENCH / "run.py"), "--sizes", "56", "--sessions", "2",
        "--protocol", "tiny", "--layout", "mixed", "--matrix", "32", "--tools", "bidsport,dcm2niix",
        "--scan-repeat", "1", "--work", str(work_dir), "--out-dir", str(out),
        "--results", str(results),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = results.read_text(encoding="utf-8")
    assert table in proc.stdout  # the table is printed too
    assert "| cpu |" in table and "| dcm2niix | v1.0." in table
    assert "| cpu_probe_ms_at_start |" in table and "; probe " in table
    assert "| bidsport |" in table and "| dcm2niix |" in table and "| import |" in table

    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    case = data["cases"]["synthetic-56-2ses-tiny-mixed-32px"]  # (not the default 64)
    assert (case["files"], case["sessions"]) == (56, 2)
    measures = {m["tool"]: m for m in case["measures"]}
    bidsport, dcm2niix = measures["bidsport"], measures["dcm2niix"]
    assert bidsport["failed_calls"] == 0 and bidsport["images"] == 6  # 3 series x 2 sessions
    assert dcm2niix["failed_calls"] == 0 and dcm2niix["images"] == 6
    assert dcm2niix["calls"] == 2  # one call per session folder
    stages = bidsport["extra"]["stages"]
    assert {"import", "scan", "classify", "organize", "convert"} <= set(stages)
    # summed over the two sessions, which are in flight at once: they may overlap
    assert 0 < sum(stages.values()) < 2 * bidsport["wall"]
    for m in (bidsport, dcm2niix):
        assert m["cpu_user"] >= 0 and m["cpu_sys"] >= 0 and 1 < m["max_rss_mb"] < 2000
    # (GNU time counts in 10 ms: dcm2niix on 56 tiny files may take less on a fast host)
    assert bidsport["cpu_user"] + bidsport["cpu_sys"] > 0
    assert measures["bidsport re-run"]["wall"] < bidsport["wall"]
    assert measures["bidsport group"]["failed_calls"] == 0
    # the real validator checked the output (after the timing): participant + group is valid
    validation = measures["bidsport e2e"]["extra"]["validation"]
    if find_validator() is not None:
        assert validation is not None and validation["errors"] == 0, validation
        assert "validator: 0 errors" in table
    assert case["scan"]["files"] == 56 and case["scan"]["read_header"]["count"] == 56
    by_folder = case["scan"]["read_header"]["by_folder"]  # one entry per packet
    assert len(by_folder) == 2 and sum(e["count"] for e in by_folder.values()) == 56
    memory = case["scan"]["memory"]  # streamed through scan_session in a fresh process
    assert memory["files"] == 56 and 5 < memory["main_start_mb"] <= memory["main_peak_mb"] < 500
    assert 1 < memory["worker_peak_mb"] < 500
    assert not list(work_dir.glob("bidsport-bench-*"))  # inbox and outputs removed


def test_memory_sampler_counts_a_process_being_spawned_once():
    """subprocess spawns with vfork: until exec the child shares its parent's memory and
    shows it as its own PSS. The sampler must not count the parent twice (it did: a 100k
    run once read 490 MB instead of ~370)."""
    code = (
        "import subprocess\n"
        "b = bytearray(200 << 20)\n"
        "for i in range(0, len(b), 4096): b[i] = 1\n"
        "for _ in range(1000): subprocess.run(['/bin/true'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    sampler = run._TreeSampler(proc.pid, interval=0.0002)
    sampler.start()
    assert proc.wait(timeout=120) == 0
    sampler.stop.set()
    sampler.join()
    assert 200 << 20 <= sampler.peak < 300 << 20


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_command_past_its_timeout_is_stopped_with_its_children(tmp_path: Path) -> None:
    """The runner kills the whole process group (GNU time, the tool, what the tool
    started), says so in the log and goes on; nothing is left running."""
    pid_file = tmp_path / "child.pid"
    log = tmp_path / "tool.log"
    code, *_ = run.run_measured(
        ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], log_file=log, timeout=1.0
    )
    assert code == -9
    assert "killed after 1.0 s" in log.read_text(encoding="utf-8")
    child = int(pid_file.read_text(encoding="utf-8"))
    for _ in range(100):  # SIGKILL is delivered at once; its reaping may take a moment
        if not _running(child):
            break
        time.sleep(0.05)
    assert not _running(child)


def test_a_runner_stopped_by_sigterm_stops_the_tool(tmp_path: Path) -> None:
    """A cancelled CI job or ``timeout`` sends SIGTERM: the tool must not run on."""
    pid_file = tmp_path / "child.pid"
    probe = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r}); import run; run.stop_on_signals()\n"
        f"run.run_measured(['sh', '-c', 'sleep 60 & echo $! > {pid_file}; wait'],"
        f" log_file=__import__('pathlib').Path({str(tmp_path / 'tool.log')!r}))\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", probe], stderr=subprocess.PIPE)
    for _ in range(200):
        if pid_file.is_file() and pid_file.read_text(encoding="utf-8").strip():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text(encoding="utf-8"))
    assert _running(child)
    runner.terminate()
    assert runner.wait(timeout=30) == 128 + 15
    for _ in range(100):
        if not _running(child):
            break
        time.sleep(0.05)
    assert not _running(child)


def _runs_of_one(one_run, repeat: int, retries: int, floor: float):
    """:func:`interleaved_runs` of a single tool: its runs and the new floor."""
    runs, floor = run.interleaved_runs({"tool": one_run}, repeat, retries, floor)
    return runs["tool"], floor


def test_a_run_during_which_the_host_slowed_is_redone():
    """A run whose CPU probes are more than 15% slower than the fastest probe seen is
    unsteady: up to --retries more runs are made while none is steady. The kept figure is
    the fastest run (a slowed host makes a tool slower, never faster), and the notes say
    how many runs were unsteady."""
    probes = iter([(40.0, 41.0), (30.0, 44.0), (30.0, 31.0), (29.0, 30.0)])
    walls = iter([5.0, 4.0, 6.0, 7.0])

    def one_run(attempt: int) -> list:
        return [run.Measure("dcm2bids", wall=next(walls), probe=next(probes), calls=1)]

    # the first run sets the floor (40 ms): it is steady against itself, so no retry
    runs, floor = _runs_of_one(one_run, repeat=1, retries=2, floor=0.0)
    assert len(runs) == 1 and floor == 40.0
    # the machine's first probe (30 ms) is the floor: the next run moves (44 ms), the third
    # is steady, and no more is made
    runs, floor = _runs_of_one(one_run, repeat=1, retries=2, floor=30.0)
    assert [r[0].wall for r in runs] == [4.0, 6.0] and floor == 30.0
    (kept,) = run.best_of(runs, floor)
    assert kept.wall == 4.0
    assert kept.extra == {"walls": [4.0, 6.0], "unsteady_runs": 1, "steady": True}
    note = run.case_table({"files": 10, "measures": [dataclasses.asdict(kept)]})[-1]
    assert "walls 4.0/6.0 (1 with the probe 15%+ above the fastest)" in note
    # no steady run at all: the retries stop, the fastest run is kept and the notes say it
    slow = iter([(50.0, 50.0), (45.0, 50.0), (50.0, 48.0)])
    runs, floor = _runs_of_one(
        lambda _a: [run.Measure("x", wall=1.0, probe=next(slow), calls=1)],
        repeat=1,
        retries=2,
        floor=30,
    )
    assert len(runs) == 3 and floor == 30
    (kept,) = run.best_of(runs, floor)
    assert kept.extra["unsteady_runs"] == 3 and kept.extra["steady"] is False
    note = run.case_table({"files": 10, "measures": [dataclasses.asdict(kept)]})[-1]
    assert "(probe 15%+ above the fastest in every run)" in note


def test_tools_run_in_rounds_with_the_order_rotated_then_each_is_retried_alone():
    """With --repeat, each round runs every tool once, the order rotated by one tool per
    round (a host that drifts during a case slows every tool alike); retries follow the
    rounds, for the tools that were steady in none of their runs."""
    order: list[tuple[str, int]] = []
    probes = {
        "a": iter([(26.0, 26.0)] * 3),
        "b": iter([(40.0, 40.0)] * 3 + [(26.0, 26.0)]),
        "c": iter([(26.0, 27.0)] * 3),
    }

    def one_run_of(tool: str):
        def one_run(attempt: int) -> list:
            order.append((tool, attempt))
            return [run.Measure(tool, wall=1.0, probe=next(probes[tool]), calls=1)]

        return one_run

    runs, floor = run.interleaved_runs(
        {"a": one_run_of("a"), "b": one_run_of("b"), "c": one_run_of("c")},
        repeat=3, retries=2, floor=26.0,
    )  # fmt: skip
    assert order[:9] == [
        ("a", 0), ("b", 0), ("c", 0),
        ("b", 1), ("c", 1), ("a", 1),
        ("c", 2), ("a", 2), ("b", 2),
    ]  # fmt: skip
    assert order[9:] == [("b", 3)]  # b was unsteady in its 3 rounds: one retry, then steady
    assert [len(runs[t]) for t in "abc"] == [3, 4, 3] and floor == 26.0


def test_each_measure_of_a_run_is_judged_on_its_own_probes():
    """bidsport's run holds several measures (participant level, group level...): a retry
    is made only while one of them was steady in no run, and each is counted apart."""
    plan = iter(
        [
            [("bidsport", 3.0, (26.0, 26.0)), ("bidsport group", 0.5, (26.0, 40.0))],
            [("bidsport", 2.0, (26.0, 40.0)), ("bidsport group", 0.6, (27.0, 26.0))],
        ]
    )

    def one_run(attempt: int) -> list:
        return [run.Measure(t, wall=w, probe=p, calls=1) for t, w, p in next(plan)]

    runs, floor = _runs_of_one(one_run, repeat=1, retries=2, floor=26.0)
    assert len(runs) == 2  # the group level was unsteady in the first: one more run
    kept = {m.tool: m for m in run.best_of(runs, floor)}
    assert kept["bidsport"].wall == 2.0 and kept["bidsport group"].wall == 0.5
    assert kept["bidsport"].extra["unsteady_runs"] == 1 and kept["bidsport"].extra["steady"]
    assert kept["bidsport group"].extra["unsteady_runs"] == 1


def test_the_documented_command_prints_its_help() -> None:
    """``python bench/run.py --help`` (a % in a help text broke it)."""
    text = run.build_parser().format_help()
    assert "--retries" in text and "--real" in text
