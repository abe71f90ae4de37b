"""End-to-end benchmark: bidsport against bare dcm2niix, HeuDiConv and Dcm2Bids.

For each case (a synthetic inbox of about N files, or a real inbox), every tool converts
the same files, one tool at a time (with ``--repeat``, in rounds: each tool once per
round), from a warm page cache, each in its own process:

* ``bidsport``: ``bidsport INBOX OUT participant`` (the console script, ``--n-procs``
  workers); stage wall times come from the run's JSON report; then the same command again
  (the re-run with nothing new) and ``bidsport INBOX OUT group --skip-validation``;
* ``dcm2niix``: the binary bidsport uses (``import dcm2niix; dcm2niix.bin``), ``-z y``,
  one call per session folder, as a user would;
* ``heudiconv``: ``--files SESSION -s SUB -ss SES -f reproin -c dcm2niix -b``, one call per
  session (when installed, and the inbox is not larger than ``--competitor-max-files``);
* ``dcm2bids``: ``-d SESSION -p SUB -s SES -c bench/dcm2bids_config.json``, one call per
  session (same conditions).

Per tool: wall time, files/s, CPU time (user + system, all processes), the largest RSS of
any one process (GNU ``time``), and the peak memory of the whole process tree (the sum of
the processes' PSS, sampled from /proc every 0.2 s: shared pages, e.g. those of forked
workers, are counted once). Results accumulate in ``bench/out/results.json`` (one
entry per case, replaced when the case is run again); ``bench/RESULTS.md`` and the plot
``bench/out/time_vs_files.png`` are rewritten from all entries.

    python bench/run.py --sizes 1000 10000 100000
    python bench/run.py --sizes 100000 --sessions 1 --tools bidsport,dcm2niix
    python bench/run.py --real                       # /work/shared/data/*/In as one inbox
    python bench/run.py --inbox /data/inbox --nameformat REGEX  # a real inbox
    python bench/run.py --sizes 10000 --profile      # + a py-spy profile of bidsport

See bench/README.md.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import ctypes
import dataclasses
import datetime
import importlib.metadata
import json
import multiprocessing
import os
import platform
import queue
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import synth  # noqa: E402

TOOLS = ("bidsport", "dcm2niix", "heudiconv", "dcm2bids")
#: The synthetic slices and private headers of the scaling cases (another size makes a
#: case of its own, named for it, off the scale).
DEFAULT_MATRIX = 64
DEFAULT_PRIVATE_KB = 32
STAGES = ("import", "scan", "classify", "organize", "convert", "finalize", "status")
REAL_DATA = REPO_DIR.parent / "shared" / "data"

#: Folders set aside by :func:`discard`, deleted when the whole run is over.
_TRASH: list[Path] = []


def discard(path: Path) -> None:
    """Set ``path`` aside (a rename) to be deleted at the end of the run, not now.

    Deleting many files just before a measured run skews it on some file systems: on ext4
    without a journal (this VM's root) inode allocation skips inodes freed in the last
    seconds to minutes, checking each one, so every file, folder or symbolic link a tool
    creates right after a large delete costs up to ~700 µs of system CPU instead of
    ~5-35 µs. Tools that create an inode per input file (bidsport's flat folder of links)
    would pay for the benchmark's own cleanup.
    """
    if not path.exists() and not path.is_symlink():
        return
    aside = path.with_name(f".trash-{len(_TRASH)}-{path.name}")
    path.rename(aside)
    _TRASH.append(aside)


def empty_trash() -> None:
    while _TRASH:
        shutil.rmtree(_TRASH.pop(), ignore_errors=True)


IMAGE_SKIP_DIRS = {"tmp_dcm2bids", ".heudiconv", "sourcedata", "derivatives", "code"}
PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- measuring


@dataclass
class Measure:
    """One tool's run over a whole inbox (one or more commands, one after the other)."""

    tool: str
    wall: float = 0.0
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    max_rss_mb: float = 0.0  #: largest RSS of any one process (GNU time)
    tree_rss_mb: float = 0.0  #: peak of the summed PSS of the process tree (sampled)
    calls: int = 0
    failed_calls: int = 0
    images: int | None = None
    note: str = ""
    load: tuple[float, float] = (0.0, 0.0)  #: 1-min load average before and after
    probe: tuple[float, float] = (0.0, 0.0)  #: :func:`cpu_probe` ms before and after
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_sys


def _children(pid: int) -> list[int]:
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return found


def _memory(pid: int) -> int:
    """Bytes of memory of a process: its PSS (shared pages split between the processes
    sharing them, so a tree's sum counts forked copies once), else its RSS."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


#: kcmp(2), which tells whether two processes share their memory (KCMP_VM)
_KCMP = {"x86_64": 312, "aarch64": 272}.get(platform.machine())
_KCMP_VM = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _shares_memory(parent: int, child: int, new: bool) -> bool:
    """Whether ``child`` runs in ``parent``'s memory: a process being spawned
    (``subprocess`` uses ``vfork``: until ``exec`` the child shows its parent's whole
    memory as its own PSS). Asked of the kernel (kcmp); where that is refused, a child
    that is ``new`` (not seen in the previous sample) and runs its parent's executable."""
    if _KCMP is not None:
        answer = _libc.syscall(_KCMP, parent, child, _KCMP_VM, 0, 0)
        if answer >= 0:
            return answer == 0
    return new and _exe(child) == _exe(parent)


class _TreeSampler(threading.Thread):
    """Samples the summed memory (PSS) of a process and all its descendants; a child
    sharing its parent's memory (being spawned, :func:`_shares_memory`) is counted once,
    with its parent."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        before: set[int] = set()
        while not self.stop.is_set():
            total, seen = 0, set()
            todo: list[tuple[int, int | None]] = [(self.pid, None)]
            while todo:
                pid, parent = todo.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                if parent is None or not _shares_memory(parent, pid, pid not in before):
                    total += _memory(pid)
                todo += [(child, pid) for child in _children(pid)]
            before = seen
            self.peak = max(self.peak, total)
            self.stop.wait(self.interval)


@dataclass(frozen=True)
class _Usage:
    user: float
    system: float
    max_rss_kb: int


def _gnu_time() -> str | None:
    """/usr/bin/time when it is GNU time (measures the tool, not this Python's fork)."""
    path = shutil.which("time", path="/usr/bin:/bin")
    if path is None:
        return None
    probe = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return path if "GNU" in probe.stdout + probe.stderr else None


def run_measured(
    cmd: Sequence[str | Path],
    *,
    log_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 7200.0,
) -> tuple[int, float, _Usage | None, int, str]:
    """Run one command; (exit code, wall s, usage of its tree, peak tree RSS, stdout).

    The command runs under GNU time when there is one: a child's peak RSS counts the
    memory of the process it was forked from, so forking the tool from this (large)
    Python process would add this process's size to the tool's. stdout and stderr go to
    ``log_file`` (appended); stdout is also returned.
    """
    argv = [str(c) for c in cmd]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    timer = _gnu_time()
    with (
        open(log_file, "a", encoding="utf-8") as log,
        tempfile.TemporaryFile("w+") as out,
        tempfile.NamedTemporaryFile("r", suffix=".time") as timing,
    ):
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        full = [timer, "-f", "%U %S %M", "-o", timing.name, *argv] if timer else argv
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(
            full, stdout=out, stderr=log, env=env, cwd=cwd, start_new_session=True
        )
        killed = threading.Event()

        def kill() -> None:  # the whole group: GNU time, the tool and its children
            killed.set()
            with contextlib.suppress(ProcessLookupError):  # none of them is left
                os.killpg(proc.pid, signal.SIGKILL)

        killer = threading.Timer(timeout, kill)
        sampler = _TreeSampler(proc.pid)
        try:
            sampler.start()
            killer.start()
            # A blocking wait: Popen.wait(timeout) polls with sleeps that double up to
            # 50 ms, which made a 16 ms run measure 31 ms and added 0-50 ms to every wall
            # time. WNOWAIT leaves the child unreaped, so its pid (the group's id) stays
            # reserved until the timer is stopped.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            wall = time.perf_counter() - start
        except BaseException:  # Ctrl-C, SIGTERM (see main): the tool is stopped too
            kill()
            raise
        finally:
            killer.cancel()
            with contextlib.suppress(RuntimeError):  # not started
                killer.join()
            sampler.stop.set()
            with contextlib.suppress(RuntimeError):
                sampler.join()
            proc.wait()
        if killed.is_set():
            log.write(f"killed after {timeout} s\n")
        usage = None
        if timer:
            lines = timing.read().split("\n")
            fields = next((ln.split() for ln in reversed(lines) if ln.strip()), [])
            with contextlib.suppress(ValueError, IndexError):  # none when killed
                usage = _Usage(float(fields[0]), float(fields[1]), int(fields[2]))
        else:
            own = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU: this command's
            user, system = own.ru_utime - before.ru_utime, own.ru_stime - before.ru_stime
            usage = _Usage(user, system, own.ru_maxrss)  # RSS: the largest child so far
        out.seek(0)
        stdout = out.read()
        log.write(stdout)
        log.write(f"-> exit {proc.returncode} in {wall:.2f} s\n")
    return proc.returncode, wall, usage, sampler.peak, stdout


#: the probe's data: incompressible enough that zlib works for its time
_PROBE_DATA = bytes(range(256)) * 64 + random.Random(0).randbytes(1 << 16)


def _probe_seconds(repeat: int) -> float:
    """Seconds of the probe's workload (a Python loop and zlib), best of ``repeat``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i % 7
        for level in (1, 6):
            zlib.compress(_PROBE_DATA * 4, level)
        best = min(best, time.perf_counter() - start)
    return best


def _probe_worker(barrier: Any, repeat: int, results: Any) -> None:
    barrier.wait()
    results.put(_probe_seconds(repeat))


def cpu_probe(repeat: int = 3, cores: int | None = None) -> float:
    """Milliseconds of a fixed CPU-bound workload run on ``cores`` cores at once (default:
    every core this process may use), best of ``repeat`` on each: the slowest core's
    time, tens of milliseconds.

    The load average misses a host slowed by other tenants of the hypervisor (their
    time is not always reported as steal); this figure shows it. Every core is busy at
    once because the tools run on all of them: on 2026-11-22 one core alone was often
    as fast as ever while two at once were not. Timed before and after each tool,
    outside the tool's timing.
    """
    cores = cores or len(os.sched_getaffinity(0))
    if cores <= 1:
        return _probe_seconds(repeat) * 1000
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(cores, timeout=30), ctx.Queue()
    others = [
        ctx.Process(target=_probe_worker, args=(barrier, repeat, results)) for _ in range(cores - 1)
    ]
    for process in others:
        process.start()
    try:
        barrier.wait()
        mine = _probe_seconds(repeat)
        theirs = [results.get(timeout=30) for _ in others]
    except (threading.BrokenBarrierError, queue.Empty):  # a worker did not start or answer
        return _probe_seconds(repeat) * 1000
    finally:
        for process in others:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
    return max(mine, *theirs) * 1000


#: probe spread within a case above which its table says the host's speed varied (and a
#: run whose probes are slower than the fastest by more is redone: see --retries)
PROBE_SPREAD_WARN = 0.15


def probe_spread(probes: Sequence[float]) -> float:
    """How much slower the slowest probe was than the fastest (0.2: 20% slower)."""
    seen = [p for p in probes if p > 0]
    return max(seen) / min(seen) - 1 if seen else 0.0


def measure(
    tool: str,
    commands: Sequence[Sequence[str | Path]],
    *,
    log_file: Path,
    env: dict[str, str] | None = None,
    timeout: float = 7200.0,
) -> tuple[Measure, list[str]]:
    """Run ``commands`` one after the other and add up what they cost."""
    m = Measure(tool, load=(os.getloadavg()[0], 0.0), probe=(cpu_probe(), 0.0))
    outputs = []
    for cmd in commands:
        code, wall, usage, tree, stdout = run_measured(
            cmd, log_file=log_file, env=env, timeout=timeout
        )
        outputs.append(stdout)
        m.calls += 1
        m.failed_calls += code != 0
        m.wall += wall
        if usage is not None:
            m.cpu_user += usage.user
            m.cpu_sys += usage.system
            m.max_rss_mb = max(m.max_rss_mb, usage.max_rss_kb / 1024)
        m.tree_rss_mb = max(m.tree_rss_mb, tree / 2**20)
    m.load = (m.load[0], os.getloadavg()[0])
    m.probe = (m.probe[0], cpu_probe())
    return m, outputs


def count_images(root: Path) -> int:
    """NIfTI images below ``root``, outside temporary/derived folders of the tools."""
    n = 0
    for _dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in IMAGE_SKIP_DIRS]
        n += sum(1 for f in filenames if f.endswith((".nii", ".nii.gz")))
    return n


# --------------------------------------------------------------------------- the machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def fs_microbench(folder: Path, n: int = 500) -> dict[str, float]:
    """Microseconds per metadata operation in ``folder`` (what organize/convert pay per file)."""
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bidsport-fs-", dir=folder) as tmp:
        base = Path(tmp)
        target = base / "target"
        target.write_bytes(b"x")

        def timed(name: str, func: Any) -> None:
            start = time.perf_counter()
            for i in range(n):
                func(i)
            results[name] = (time.perf_counter() - start) / n * 1e6

        timed("create", lambda i: (base / f"f{i}").touch())
        timed("symlink", lambda i: os.symlink("target", base / f"s{i}"))
        timed("hardlink", lambda i: os.link(target, base / f"h{i}"))
        timed("rename", lambda i: os.replace(base / f"h{i}", base / f"r{i}"))
        timed("stat", lambda i: os.stat(base / f"f{i}"))
        timed("unlink", lambda i: os.unlink(base / f"r{i}"))
    return {k: round(v, 1) for k, v in results.items()}


def machine_info(work: Path) -> dict[str, Any]:
    from bidsport import __version__
    from bidsport.convert import dcm2niix_binary, dcm2niix_version

    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    commit = subprocess.run(
        ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        # the report this run rewrites does not count as a local change of the code
        [
            "git",
            "-C",
            str(REPO_DIR),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)bench/RESULTS.md",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    fs = ""
    best = ""
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if (
            len(parts) > 2
            and str(work.resolve()).startswith(parts[1])
            and len(parts[1]) > len(best)
        ):
            best, fs = parts[1], f"{parts[2]} on {parts[0]} ({parts[1]})"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "ram_gb": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "bidsport": f"{__version__} ({commit}{' + local changes' if dirty else ''})",
        "dcm2niix": f"{dcm2niix_version()} ({dcm2niix_binary()})",
        "heudiconv": _version("heudiconv"),
        "dcm2bids": _version("dcm2bids"),
        "pydicom": _version("pydicom"),
        "pigz": shutil.which("pigz", path=_tool_path()),
        "bidsport command": _console_script(),
        "work_fs": fs,
        "fs_us_per_op": fs_microbench(work),
        "load_at_start": round(os.getloadavg()[0], 2),
        "cpu_probe_ms_at_start": round(cpu_probe(), 1),
    }


def _console_script() -> str:
    """The ``bidsport`` command the bench runs, and whether it imports ``re``: the console
    script of pip < 25 does (~7 ms of every start, a quarter of a quick re-run)."""
    path = _console("bidsport")
    if path is None:
        return f"{sys.executable} -m bidsport.cli.run"
    text = _read(path)
    return f"{path} ({'imports' if re.search(r'^import re$', text, re.M) else 'without'} re)"


def compile_bidsport() -> str:
    """Compile bidsport's modules to bytecode, as ``pip install`` does (HeuDiConv's and
    Dcm2Bids' were compiled when they were installed).

    An editable install run with ``PYTHONDONTWRITEBYTECODE=1`` (as on the development
    machines) would otherwise compile every module from source at every start: ~60 ms
    more for each bidsport call, which is not what users of an installed bidsport or of
    the container see.
    """
    import bidsport

    package = Path(bidsport.__file__).parent
    ok = compileall.compile_dir(package, quiet=1)
    return f"compiled before timing ({package})" if ok else f"compiling {package} failed"


# --------------------------------------------------------------------------- the tools


@dataclass(frozen=True)
class Session:
    subject: str
    session: str | None
    folder: Path
    n_files: int


@dataclass(frozen=True)
class Case:
    name: str
    inbox: Path
    sessions: tuple[Session, ...]
    n_files: int
    n_bytes: int
    kind: str  #: "synthetic" or "real"
    nameformat: str | None
    describe: str
    extra: dict[str, Any] = field(default_factory=dict)


def _tool_path() -> str:
    """PATH with this Python's bin folder first (heudiconv/dcm2bids find that dcm2niix)."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = _tool_path()
    env["NO_ET"] = "1"  # HeuDiConv/nipype: no etelemetry call home
    env.pop("PYTHONWARNINGS", None)
    return env


def _console(name: str) -> str | None:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def _program(name: str) -> str:
    """The path of an installed console script (the caller checked that there is one)."""
    path = _console(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed")
    return path


def bidsport_command(case: Case, out: Path, n_procs: int) -> list[str]:
    exe = _console("bidsport")
    base = [exe] if exe else [sys.executable, "-m", "bidsport.cli.run"]
    cmd = [*base, str(case.inbox), str(out), "participant", "--n-procs", str(n_procs)]
    if case.nameformat:
        cmd += ["--nameformat", case.nameformat]
    return cmd


def _report_of(stdout: str, out: Path) -> dict[str, Any] | None:
    """The JSON report of a participant-level run (its path is printed; else the newest)."""
    match = re.search(r"^report: (.+)$", stdout, re.M)
    candidates = [Path(match.group(1))] if match else []
    candidates += sorted(
        (out / "derivatives" / "bidsport" / "logs").glob("participant_*_report.json"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in candidates:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(path.read_text(encoding="utf-8")))
    return None


def stage_seconds(report: dict[str, Any] | None) -> dict[str, float]:
    """Seconds per stage, summed over the sessions of a report."""
    total: dict[str, float] = {}
    for session in (report or {}).get("sessions", []):
        for stage, seconds in (session.get("seconds") or {}).items():
            total[stage] = total.get(stage, 0.0) + float(seconds)
    return total


def run_bidsport(
    case: Case, work: Path, logs: Path, n_procs: int, timeout: float, profile: Path | None
) -> list[Measure]:
    out = work / "out-bidsport"
    discard(out)
    cmd = bidsport_command(case, out, n_procs)
    first, outputs = measure("bidsport", [cmd], log_file=logs / "bidsport.log", timeout=timeout)
    report = _report_of(outputs[0], out)
    first.extra["stages"] = stage_seconds(report)
    if report is not None:
        summary = report.get("summary", {})
        first.extra["sessions_done"] = summary.get("done")
        first.extra["sessions_failed"] = summary.get("failed")
        first.images = sum(len(s.get("images", [])) for s in report.get("sessions", []))
        first.extra["problems"] = summary.get("excluded_or_failed_items")
    else:
        first.note = "no JSON report"
        first.images = count_images(out)
    rerun, _ = measure(
        "bidsport re-run", [cmd], log_file=logs / "bidsport-rerun.log", timeout=timeout
    )
    rerun.note = "nothing new (--overwrite skip)"
    group_cmd = [*cmd[: cmd.index("participant")], "group", "--skip-validation"]
    group, _ = measure(
        "bidsport group", [group_cmd], log_file=logs / "bidsport-group.log", timeout=timeout
    )
    group.note = "--skip-validation"
    end = Measure(
        "bidsport e2e",
        wall=first.wall + group.wall,
        cpu_user=first.cpu_user + group.cpu_user,
        cpu_sys=first.cpu_sys + group.cpu_sys,
        max_rss_mb=max(first.max_rss_mb, group.max_rss_mb),
        tree_rss_mb=max(first.tree_rss_mb, group.tree_rss_mb),
        calls=2,
        failed_calls=first.failed_calls + group.failed_calls,
        images=first.images,
        note="participant + group",
        load=(first.load[0], group.load[1]),
        probe=(first.probe[0], group.probe[1]),
    )
    results = [first, rerun, group, end]
    if profile is not None:
        results.append(profile_bidsport(case, work, logs, n_procs, timeout, profile))
    return results


def profile_bidsport(
    case: Case, work: Path, logs: Path, n_procs: int, timeout: float, profile_dir: Path
) -> Measure:
    """Run the participant level once more under py-spy (all processes), or cProfile."""
    out = work / "out-bidsport-profile"
    discard(out)
    cmd = bidsport_command(case, out, n_procs)
    profile_dir.mkdir(parents=True, exist_ok=True)
    raw = profile_dir / f"profile-{case.name}.txt"
    spy = _console("py-spy")
    if spy:
        prof_cmd = [spy, "record", "--subprocesses", "-r", "100", "-f", "raw", "-o", str(raw)]
        prof_cmd += ["--", *cmd]
        m, _ = measure(
            "bidsport profile", [prof_cmd], log_file=logs / "profile.log", timeout=timeout
        )
        m.extra["profile"] = summarize_pyspy(raw) if raw.is_file() else {}
        m.note = f"py-spy, 100 Hz, {raw.name}"
    else:
        stats = profile_dir / f"profile-{case.name}.pstats"
        head = [sys.executable, "-m", "cProfile", "-o", str(stats)]
        prof_cmd = [*head, *cmd[1:]] if cmd[0] == sys.executable else [*head, *cmd]
        m, _ = measure(
            "bidsport profile", [prof_cmd], log_file=logs / "profile.log", timeout=timeout
        )
        m.note = f"cProfile (main process only), {stats.name}"
    discard(out)
    return m


#: functions of the participant level that mark a stage in a profile's stacks
PROFILE_STAGES = (
    ("_read_chunk", "scan (worker processes)"),
    ("import_packet", "import"),
    ("scan_session", "scan (main process)"),
    ("classify_session", "classify"),
    ("lay_out", "organize"),
    ("_write_files_table", "organize"),
    ("convert_series", "convert (dcm2niix calls, links)"),
    ("export_series", "convert (export: sidecars, renames)"),
    ("intended_for", "finalize"),
    ("complete_phasediff", "finalize"),
    ("write_scans", "finalize"),
    ("_write_series_table", "finalize"),
    ("record_session", "status"),
    ("plan_sessions", "inbox discovery"),
    ("build_run_report", "report"),
    ("_find_and_load", "imports"),
)


def _stage_of(frames: list[str]) -> str:
    names = [f.split(" (", 1)[0] for f in frames]
    for function, stage in PROFILE_STAGES:
        if function in names:
            return stage
    return "other (start-up, pool and thread management)"


def summarize_pyspy(raw: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by inclusive and self samples, and samples per stage, from py-spy's
    raw (collapsed) output. Only Python is sampled: dcm2niix's own time is not in it."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
        stages[_stage_of(frames)] += n

    def pct(c: Counter[str], n: int = top) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(total, 1), 1)) for k, v in c.most_common(n)]

    return {
        "samples": total,
        "inclusive": pct(inclusive),
        "self": pct(own),
        "stages": pct(stages, len(stages)),
    }


def run_dcm2niix(case: Case, work: Path, logs: Path, timeout: float) -> Measure:
    from bidsport.convert import dcm2niix_binary

    out = work / "out-dcm2niix"
    discard(out)
    commands = []
    for s in case.sessions:
        folder = out / (s.folder.name or "session")
        folder.mkdir(parents=True, exist_ok=True)
        commands.append([str(dcm2niix_binary()), "-z", "y", "-o", str(folder), str(s.folder)])
    m, _ = measure("dcm2niix", commands, log_file=logs / "dcm2niix.log", timeout=timeout)
    m.images = count_images(out)
    m.note = "-z y, one call per session folder"
    return m


def run_heudiconv(case: Case, work: Path, logs: Path, timeout: float) -> Measure:
    out = work / "out-heudiconv"
    discard(out)
    exe = _program("heudiconv")
    commands = []
    for s in case.sessions:
        cmd = [exe, "--files", str(s.folder), "-s", s.subject, "-f", "reproin"]
        cmd += ["-c", "dcm2niix", "-b", "-o", str(out)]
        if s.session:
            cmd += ["-ss", s.session]
        commands.append(cmd)
    m, _ = measure(
        "heudiconv", commands, log_file=logs / "heudiconv.log", env=_env(), timeout=timeout
    )
    m.images = count_images(out)
    m.note = "reproin, one call per session"
    return m


def run_dcm2bids(case: Case, work: Path, logs: Path, timeout: float) -> Measure:
    out = work / "out-dcm2bids"
    discard(out)
    out.mkdir(parents=True)
    exe = _program("dcm2bids")
    config = BENCH_DIR / "dcm2bids_config.json"
    commands = []
    for s in case.sessions:
        cmd = [exe, "-d", str(s.folder), "-p", s.subject, "-c", str(config), "-o", str(out)]
        if s.session:
            cmd += ["-s", s.session]
        commands.append(cmd)
    m, _ = measure(
        "dcm2bids", commands, log_file=logs / "dcm2bids.log", env=_env(), timeout=timeout
    )
    m.images = count_images(out)
    m.note = "bench/dcm2bids_config.json, one call per session"
    return m


# --------------------------------------------------------------------------- cases


#: the measure that stands for a tool's whole output, which the validator checks
VALIDATED = {"bidsport": "bidsport e2e", "heudiconv": "heudiconv", "dcm2bids": "dcm2bids"}


def dataset_roots(out: Path) -> list[Path]:
    """The BIDS datasets a tool wrote in ``out``: ``out`` itself, or else the folders below
    it that hold a ``dataset_description.json`` (HeuDiConv's ReproIn heuristic writes into
    ``OUT/<StudyDescription as folders>/``), outside hidden folders, ``sourcedata/`` and
    ``derivatives/``; ``out`` when there is none (the validator then says what is missing).
    """
    if (out / "dataset_description.json").is_file():
        return [out]
    roots: list[Path] = []
    for found in sorted(out.rglob("dataset_description.json"), key=lambda f: len(f.parts)):
        folders = found.relative_to(out).parts[:-1]
        if any(f.startswith(".") or f in ("sourcedata", "derivatives") for f in folders):
            continue
        if not any(found.parent.is_relative_to(root) for root in roots):
            roots.append(found.parent)
    return roots or [out]


def _readable_tmp() -> str:
    """A temporary folder the validator can read: the system's, unless that is under /dev
    (``TMPDIR=/dev/shm`` on some HPC nodes), else /var/tmp or /tmp."""
    from bidsport.validator import refused_by_deno

    for folder in (tempfile.gettempdir(), "/var/tmp", "/tmp"):
        if not refused_by_deno(Path(folder)) and os.access(folder, os.W_OK):
            return folder
    return tempfile.gettempdir()  # the validator will say why it cannot read there


def _copy_dataset(root: Path, dest: Path) -> None:
    """Copy a dataset (links as links) without its ``sourcedata/`` and ``derivatives/``."""
    top = str(root)

    def ignored(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if folder == top and n in ("sourcedata", "derivatives")]

    shutil.copytree(root, dest, symlinks=True, ignore=ignored)


def validate_output(out: Path) -> dict[str, Any] | None:
    """What the BIDS validator (bidsport's :func:`~bidsport.validator.run_validator`) says
    of the datasets a tool wrote in ``out`` (:func:`dataset_roots`): errors, warnings and
    the codes of the errors, summed over the datasets.

    None when the validator is not installed. The validator (Deno) refuses to read under
    ``/dev`` (``--work /dev/shm``; :func:`bidsport.validator.refused_by_deno`): a dataset
    is then copied to a temporary folder it can read (:func:`_readable_tmp`) first,
    without ``sourcedata/`` and ``derivatives/``, which it ignores anyway.
    """
    from bidsport.errors import BidsportError
    from bidsport.validator import find_validator, refused_by_deno, run_validator

    command = find_validator()
    if command is None or not out.is_dir():
        return None
    roots = dataset_roots(out)
    summary: dict[str, Any] = {"errors": 0, "warnings": 0, "codes": [],
                               "datasets": [str(r.relative_to(out)) for r in roots]}  # fmt: skip
    codes: set[str] = set()
    tmp_dir = _readable_tmp()
    for root in roots:
        with tempfile.TemporaryDirectory(prefix="bench-validate-", dir=tmp_dir) as tmp:
            where = root
            try:
                if refused_by_deno(root):
                    where = Path(tmp) / root.name
                    _copy_dataset(root, where)
                result = run_validator(where, command=command)
            except (BidsportError, OSError, shutil.Error) as exc:
                summary.update(errors=None, warnings=None, failed=str(exc)[:200])
                return summary
        summary["errors"] += len(result.errors)
        summary["warnings"] += len(result.warnings)
        codes.update(issue.code for issue in result.errors)
    summary["codes"] = sorted(codes)
    return summary


def _validation_note(validation: dict[str, Any] | None) -> str:
    if not validation:
        return ""
    if validation.get("failed"):
        return "validator failed"
    n = validation["errors"]
    codes = ", ".join(validation["codes"][:4]) + (", ..." if len(validation["codes"]) > 4 else "")
    return f"validator: {n} errors" + (f" ({codes})" if n else "")


def steady(m: Measure, floor: float) -> bool:
    """Whether both probes of ``m`` (before and after the tool) are within
    :data:`PROBE_SPREAD_WARN` of ``floor``, the fastest probe of the benchmark so far: the
    host was in its usual state, not slowed by other work."""
    return floor <= 0 or all(p <= floor * (1 + PROBE_SPREAD_WARN) for p in m.probe if p > 0)


def best_of(runs: list[list[Measure]], floor: float = 0.0) -> list[Measure]:
    """Per tool, the repetition with the shortest wall time, with every wall time seen.

    Measures that were not :func:`steady` are not left out: a host slowed by other work
    makes a tool slower, never faster, so the shortest time is the best estimate either
    way. ``extra`` says how many were not steady, and whether any was (see
    :func:`interleaved_runs`, which runs a tool again until one is).
    """
    by_tool: dict[str, list[Measure]] = {}
    for run in runs:
        for m in run:
            by_tool.setdefault(m.tool, []).append(m)
    best = []
    for measures in by_tool.values():
        calm = [m for m in measures if steady(m, floor)]
        m = min(measures, key=lambda m: m.wall)
        if len(measures) > 1:
            m.extra["walls"] = [round(x.wall, 3) for x in measures]
        if len(calm) < len(measures):
            m.extra["unsteady_runs"] = len(measures) - len(calm)
            m.extra["steady"] = bool(calm)
        best.append(m)
    return best


def interleaved_runs(
    one_runs: dict[str, Callable[[int], list[Measure]]], repeat: int, retries: int, floor: float
) -> tuple[dict[str, list[list[Measure]]], float]:
    """Runs of several tools (``one_runs[tool](attempt)``: its measures): ``repeat`` rounds
    in which each tool runs once, the order rotated by one tool each round, then per tool
    up to ``retries`` more runs while one of its measures (bidsport's participant level,
    group level...) was :func:`steady` in none of its runs; the runs by tool and the
    fastest probe seen (the new floor).

    Rounds rather than all runs of one tool, then all of the next: a host that slows down
    or speeds up during a case (other jobs on a shared machine) then does so across every
    tool's runs, not during one tool's, and the ratios between tools stay fair.
    """
    names = list(one_runs)
    runs: dict[str, list[list[Measure]]] = {tool: [] for tool in names}

    def run(tool: str) -> None:
        nonlocal floor
        runs[tool].append(one_runs[tool](len(runs[tool])))
        floor = fastest_probe(runs[tool][-1], floor)

    def settled(tool: str) -> bool:
        measures = [m for r in runs[tool] for m in r]
        kinds = {m.tool for m in measures}
        return all(any(steady(m, floor) for m in measures if m.tool == k) for k in kinds)

    for round_ in range(repeat):
        shift = round_ % len(names) if names else 0
        for tool in names[shift:] + names[:shift]:
            run(tool)
    for tool in names:
        while len(runs[tool]) < repeat + retries and not settled(tool):
            print(f"   the CPU probe moved during every run of {tool} so far: one more", flush=True)
            run(tool)
    return runs, floor


def fastest_probe(run: Sequence[Measure], floor: float) -> float:
    """The fastest probe among ``floor`` (0: none yet) and those of ``run``'s measures."""
    probes = [p for m in run for p in m.probe if p > 0]
    probes += [floor] if floor > 0 else []
    return min(probes, default=0.0)


def _warm(root: Path) -> float:
    """Read every file once (the page cache then holds the inbox); seconds taken."""
    start = time.perf_counter()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as fh:
                while fh.read(1 << 20):
                    pass
    return time.perf_counter() - start


def synthetic_case(n_files: int, work: Path, args: argparse.Namespace) -> Case:
    inbox = work / "inbox"
    protocol = synth.PROTOCOLS[args.protocol]
    info = synth.write_inbox(
        inbox,
        n_files,
        n_sessions=args.sessions,
        session_files=args.session_files,
        matrix=args.matrix,
        private_kb=args.private_kb,
        protocol=protocol,
        layout=args.layout,
    )
    sessions = tuple(
        Session(sub, ses, info.packet_dir(sub, ses), n) for sub, ses, n in info.sessions
    )
    layout = "1 session" if len(sessions) == 1 else f"{len(sessions)} sessions"
    name = f"synthetic-{_short(n_files)}-{len(sessions)}ses"
    if args.protocol != "standard":
        name += f"-{args.protocol}"
    if args.layout != "series":
        name += f"-{args.layout}"
    if args.matrix != DEFAULT_MATRIX:
        name += f"-{args.matrix}px"
    if args.private_kb != DEFAULT_PRIVATE_KB:
        name += f"-{args.private_kb}kB"
    return Case(
        name,
        inbox,
        sessions,
        info.n_files,
        info.n_bytes,
        "synthetic",
        synth.NAMEFORMAT,
        f"synthetic, {layout}, {info.n_series} series ({args.layout} folders), "
        f"{args.matrix}x{args.matrix} slices, "
        f"{args.private_kb} kB private header",
        {
            "generate_seconds": round(info.seconds, 2),
            "series": info.n_series,
            "requested_files": n_files,
            "protocol": args.protocol,
            "layout": args.layout,
            "matrix": args.matrix,
            "private_kb": args.private_kb,
        },
    )


def on_the_scale(case: dict[str, Any]) -> bool:
    """Whether a case is a point of the scaling table, fit and plot: a synthetic inbox of
    the standard protocol in series folders, with slices and private headers of the
    default sizes (the others cost differently per file; cases written before these were
    recorded have the defaults)."""
    extra = case.get("extra") or {}
    return (
        case["kind"] == "synthetic"
        and extra.get("protocol", "standard") == "standard"
        and extra.get("layout", "series") == "series"
        and extra.get("matrix", DEFAULT_MATRIX) == DEFAULT_MATRIX
        and extra.get("private_kb", DEFAULT_PRIVATE_KB) == DEFAULT_PRIVATE_KB
    )


def _short(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def inbox_case(
    inbox: Path, name: str, nameformat: str | None, describe: str, kind: str = "real"
) -> Case:
    from bidsport.ingest import assign_packets, discover_packets

    packets, _problems = discover_packets(inbox, None)
    assignments, _ = assign_packets(packets, nameformat, None)
    sessions = []
    n_files = n_bytes = 0
    for a in assignments:
        count = 0
        for dirpath, _dirs, names in os.walk(a.packet.path):
            for n in names:
                count += 1
                n_bytes += os.path.getsize(os.path.join(dirpath, n))
        if a.packet.path.is_dir():
            sessions.append(Session(a.subject, a.session, a.packet.path, count))
        n_files += count
    return Case(name, inbox, tuple(sessions), n_files, n_bytes, kind, nameformat, describe)


def real_case(work: Path) -> Case:
    """/work/shared/data/*/In copied into one inbox, one packet (subject) per collection."""
    inbox = work / "inbox"
    names = []
    for folder in sorted(REAL_DATA.glob("*/In")):
        name = folder.parent.name.replace("dcm_qa_", "qa").replace("_", "")
        shutil.copytree(folder, inbox / name, symlinks=True)
        names.append(folder.parent.name)
    return inbox_case(
        inbox,
        "real-dcm_qa",
        None,
        f"real vendor data, {len(names)} collections ({', '.join(names)}), one packet each",
    )


def run_case(case: Case, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    logs = args.out_dir / "logs" / case.name
    shutil.rmtree(logs, ignore_errors=True)
    tools = [t for t in args.tools if t in TOOLS]
    result: dict[str, Any] = {
        "case": case.name,
        "kind": case.kind,
        "describe": case.describe,
        "files": case.n_files,
        "bytes": case.n_bytes,
        "sessions": len(case.sessions),
        "n_procs": args.n_procs,
        "extra": case.extra,
        "warm_seconds": round(_warm(case.inbox), 2),
        "measures": [],
    }
    print(
        f"== {case.name}: {case.n_files} files, {case.n_bytes / 1e6:.0f} MB, "
        f"{len(case.sessions)} sessions ({case.describe})",
        flush=True,
    )
    not_run: dict[str, Measure] = {}
    one_runs: dict[str, Callable[[int], list[Measure]]] = {}
    for tool in tools:
        if tool in ("heudiconv", "dcm2bids"):
            if not _console(tool):
                not_run[tool] = Measure(tool, note="not installed (pip install bidsport[bench])")
                continue
            if case.n_files > args.competitor_max_files:
                not_run[tool] = Measure(
                    tool,
                    note=f"skipped: more than --competitor-max-files "
                    f"{args.competitor_max_files} files",
                )
                continue

        def one_run(attempt: int, tool: str = tool) -> list[Measure]:
            if tool == "bidsport":
                profile = args.out_dir if args.profile and attempt == args.repeat - 1 else None
                return run_bidsport(case, work, logs, args.n_procs, args.timeout, profile)
            if tool == "dcm2niix":
                return [run_dcm2niix(case, work, logs, args.timeout)]
            if tool == "heudiconv":
                return [run_heudiconv(case, work, logs, args.timeout)]
            return [run_dcm2bids(case, work, logs, args.timeout)]

        one_runs[tool] = one_run
    runs, args.probe_floor = interleaved_runs(one_runs, args.repeat, args.retries, args.probe_floor)
    measures: list[Measure] = []
    for tool in tools:
        if tool in not_run:
            measures.append(not_run[tool])
            continue
        done = best_of(runs[tool], args.probe_floor)
        if args.validate and tool in VALIDATED:  # the last run's output: all runs write the same
            for m in done:
                if m.tool == VALIDATED[tool]:
                    m.extra["validation"] = validate_output(work / f"out-{tool}")
        for m in done:
            print(
                f"   {m.tool:18s} {m.wall:8.2f} s  cpu {m.cpu:8.2f} s  "
                f"rss {m.max_rss_mb:6.0f} MB (tree {m.tree_rss_mb:6.0f} MB)  "
                f"images {m.images}  {m.note}",
                flush=True,
            )
        measures += done
    if not args.keep:
        for out in work.glob("out-*"):
            discard(out)
    result["measures"] = [dataclasses.asdict(m) for m in measures]
    if args.scan:
        result["scan"] = scan_benchmark([case.inbox], logs, args)
    return result


def scan_benchmark(roots: list[Path], logs: Path, args: argparse.Namespace) -> dict[str, Any]:
    """bench/scan.py in a fresh process (its memory and imports apart from the runner),
    between two CPU probes, as a tool runs (:func:`steady`): run again, up to
    ``--retries`` more times, while a probe was more than :data:`PROBE_SPREAD_WARN`
    slower than the fastest of the benchmark so far. The run whose ``read_header`` read
    the most files per CPU second is kept (a slowed host makes it slower, never faster),
    with its probes and how many runs were made."""
    best: dict[str, Any] | None = None
    runs = 0
    while True:
        runs += 1
        before = cpu_probe()
        result = _scan_once(roots, logs, args)
        probes = (before, cpu_probe())
        if "error" in result:  # (a run that failed after one that did not: that one)
            return result if best is None else best | {"runs": runs}
        result["probe"] = list(probes)
        if best is None or _per_core(result["read_header"]) > _per_core(best["read_header"]):
            best = result
        args.probe_floor = min((p for p in (args.probe_floor, *probes) if p > 0), default=0.0)
        if steady(Measure("scan", probe=probes), args.probe_floor) or runs > args.retries:
            best["runs"] = runs
            return best
        print("   the CPU probe moved during the header scan: once more", flush=True)


def _scan_once(roots: list[Path], logs: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = logs / "scan.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(BENCH_DIR / "scan.py"), *map(str, roots)]
    cmd += ["--n-procs", str(args.n_procs), "--repeat", str(args.scan_repeat), "--json", str(out)]
    code, *_ = run_measured(cmd, log_file=logs / "scan.log", timeout=args.timeout)
    if code != 0 or not out.is_file():
        return {"error": f"bench/scan.py exited {code}, see {logs / 'scan.log'}"}
    return dict(json.loads(out.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- reporting


def _find(case: dict[str, Any], tool: str) -> dict[str, Any] | None:
    for m in case["measures"]:
        if m["tool"] == tool and m["calls"]:
            return dict(m)
    return None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """(intercept s, slope s/file, R²) of a least-squares line, or None."""
    if len(points) < 2 or len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for _, y in points)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in points)
    return intercept, slope, 1 - ss_res / ss_tot if ss_tot else 1.0


def case_table(case: dict[str, Any]) -> list[str]:
    files = case["files"]
    base = _find(case, "dcm2niix")
    lines = [
        "| tool | wall s | files/s | CPU s | max RSS MB (one process) "
        "| peak MB (process tree, PSS) | images | x dcm2niix wall | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in case["measures"]:
        if not m["calls"]:
            lines.append(f"| {m['tool']} | - | - | - | - | - | - | - | {m['note']} |")
            continue
        ratio = m["wall"] / base["wall"] if base and base["wall"] else None
        note = m["note"]
        if m["failed_calls"]:
            note += f"; {m['failed_calls']} of {m['calls']} calls failed"
        if m["extra"].get("walls"):
            note += "; walls " + "/".join(
                f"{w:.1f}" if w >= 1 else f"{w:.3f}" for w in m["extra"]["walls"]
            )
        if unsteady := m["extra"].get("unsteady_runs"):
            note += (
                f" ({unsteady} with the probe {PROBE_SPREAD_WARN:.0%}+ above the fastest)"
                if m["extra"].get("steady")
                else f" (probe {PROBE_SPREAD_WARN:.0%}+ above the fastest in every run)"
            )
        note += f"; load {m['load'][0]:.1f}→{m['load'][1]:.1f}"
        if probe := m.get("probe"):
            note += f"; probe {probe[0]:.0f}→{probe[1]:.0f} ms"
        if validated := _validation_note(m["extra"].get("validation")):
            note += f"; {validated}"
        rate = files / m["wall"] if m["wall"] and not m["tool"].endswith("group") else None
        images = "-" if m["images"] is None else str(m["images"])
        lines.append(
            _row(
                m["tool"], _fmt(m["wall"]), _fmt(rate, 0), _fmt(m["cpu_user"] + m["cpu_sys"]),
                _fmt(m["max_rss_mb"], 0), _fmt(m["tree_rss_mb"], 0), images, _fmt(ratio), note,
            )
        )  # fmt: skip
    return lines


def probe_lines(case: dict[str, Any]) -> list[str]:
    """A warning under a case's table when the host's speed varied while it ran."""
    probes = [p for m in case["measures"] for p in m.get("probe") or () if p > 0]
    spread = probe_spread(probes)
    if spread <= PROBE_SPREAD_WARN:
        return []
    return [
        "",
        f"**The host's speed varied during this case:** the CPU probe took "
        f"{min(probes):.0f} to {max(probes):.0f} ms ({spread:.0%} slower at its slowest), "
        "so the ratios between tools are less reliable than usual.",
    ]


def _row(*cells: str) -> str:
    """A Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def stage_table(case: dict[str, Any]) -> list[str]:
    m = _find(case, "bidsport")
    if m is None or not m["extra"].get("stages"):
        return []
    stages = m["extra"]["stages"]
    total = sum(stages.values())
    # two sessions are in flight at once (participant.sessions_at_once): then the stage
    # times, summed over sessions, add up to more than the wall time
    overlap = total > m["wall"]
    lines = [
        f"| stage | s{' (summed over sessions in flight at once)' if overlap else ''} | files/s "
        f"| share of {'the summed stage times' if overlap else 'the participant run'} |",
        "|---|---:|---:|---:|",
    ]
    base = total if overlap else m["wall"]
    for stage in [*STAGES, *sorted(set(stages) - set(STAGES))]:
        if stage not in stages:
            continue
        sec = stages[stage]
        rate = case["files"] / sec if sec > 0 else None
        lines.append(f"| {stage} | {_fmt(sec)} | {_fmt(rate, 0)} | {100 * sec / base:.0f}% |")
    if not overlap:
        other = m["wall"] - total
        share = f"{100 * other / m['wall']:.0f}%"
        lines.append(_row("(start-up, inbox discovery, report)", _fmt(other), "-", share))
    rate = _fmt(case["files"] / m["wall"], 0)
    lines.append(_row("**participant level**", f"**{_fmt(m['wall'])}**", f"**{rate}**", "100%"))
    return lines


def profile_lines(case: dict[str, Any]) -> list[str]:
    m = _find(case, "bidsport profile")
    if m is None or not m["extra"].get("profile"):
        return []
    prof = m["extra"]["profile"]
    lines = [
        f"Profile ({m['note']}): {prof['samples']} samples of the Python processes "
        "(dcm2niix itself is not sampled), by stage and by function (self time):",
        "",
        "| stage | share of samples |",
        "|---|---:|",
    ]
    lines += [_row(name, f"{share}%") for name, share in prof.get("stages", [])]
    lines += ["", "| function | self % |", "|---|---:|"]
    lines += [_row(f"`{name}`", f"{share}") for name, share in prof["self"][:12]]
    return lines


#: packets with fewer files are left out of the slowest packet (multi-frame collections
#: of a few files, whose rate per file says little)
SCAN_MIN_FILES = 100


def _per_core(read: dict[str, Any]) -> float:
    """Files read per CPU second."""
    return float(read["count"]) / max(float(read["cpu"]), 1e-9)


def _slowest_folder(read: dict[str, Any]) -> tuple[str, float] | None:
    """(packet, files/s per core) of the slowest packet of at least SCAN_MIN_FILES files."""
    rates = [
        (folder, _per_core(entry))
        for folder, entry in (read.get("by_folder") or {}).items()
        if entry["count"] >= SCAN_MIN_FILES
    ]
    return min(rates, key=lambda item: item[1]) if rates else None


def scan_folder_lines(name: str, scan: dict[str, Any]) -> list[str]:
    """One line per packet: read_header's files/s per core (real inboxes)."""
    by_folder = scan.get("read_header", {}).get("by_folder") or {}
    return [
        f"- {name}, `{folder}`: {entry['count']:,} of {entry['files']:,} files read, "
        f"{_per_core(entry):,.0f} files/s/core"
        for folder, entry in sorted(by_folder.items())
    ]


def scan_lines(name: str, scan: dict[str, Any]) -> list[str]:
    if "error" in scan:
        return [f"- {name}: {scan['error']}"]
    n = scan["files"]
    rh, pd = scan["read_header"], scan["pydicom"]
    return [
        f"| {name} | {n:,} | {scan['bytes'] / 1e6:,.0f} | {_per_core(rh):,.0f} "
        f"| {_per_core(pd):,.0f} | {n / scan['scan_session']['wall']:,.0f} "
        f"| {n / scan['scan_session_cached']['wall']:,.0f} | {_scan_memory_cells(scan)} |"
    ]


def _scan_memory_cells(scan: dict[str, Any]) -> str:
    """The memory columns of the header-scan table: main process start → peak (and per
    file), largest worker."""
    mem = scan.get("memory") or {}
    if "main_peak_mb" not in mem:
        return f"- | - ({mem['error'][:80]})" if "error" in mem else "- | -"
    grew = mem["main_peak_mb"] - mem["main_start_mb"]
    per_file = f"{1024 * grew / mem['files']:.2f} kB/file" if mem.get("files") else "-"
    worker = mem.get("worker_peak_mb")
    return (
        f"{mem['main_start_mb']:.0f} → {mem['main_peak_mb']:.0f} MB ({per_file}) "
        f"| {f'{worker:.0f} MB' if worker is not None else '-'}"
    )


def write_results(results: dict[str, Any], md_file: Path, png_file: Path | None) -> str:
    machine = results["machine"]
    cases = sorted(
        results["cases"].values(), key=lambda c: (c["kind"] != "real", c["files"], c["case"])
    )
    out: list[str] = [
        "# bidsport benchmark results",
        "",
        "Written by `bench/run.py` (see `bench/README.md` for the method and the profile "
        "analysis). Every tool converts the same files from a warm page cache, one tool "
        "at a time; times are wall clock seconds on a machine shared with other jobs "
        "(the 1-minute load average before→after each tool is in the notes, and so is a "
        "CPU probe: a fixed workload timed before→after each tool, slower on a busier host).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    for key in (
        "date",
        "cpu",
        "cores",
        "ram_gb",
        "os",
        "python",
        "bidsport",
        "bidsport command",
        "dcm2niix",
        "heudiconv",
        "dcm2bids",
        "pydicom",
        "pigz",
        "work_fs",
        "load_at_start",
        "cpu_probe_ms_at_start",
        "bytecode",
    ):
        out.append(f"| {key} | {machine.get(key)} |")
    fs = machine.get("fs_us_per_op", {})
    out.append(
        "| µs per metadata operation (work folder) | "
        + ", ".join(f"{k} {v}" for k, v in fs.items())
        + " |"
    )
    out += ["", "## Targets", ""]
    out += target_lines(cases)
    synthetic = [c for c in cases if on_the_scale(c)]
    if synthetic:
        out += ["", "## Scaling (synthetic inboxes, standard protocol)", ""]
        out += scaling_lines(synthetic)
        if png_file is not None and png_file.is_file():
            rel = os.path.relpath(png_file, md_file.parent)
            out += ["", f"Plot (not committed; written by the run): `{rel}`"]
    for c in cases:
        out += [
            "",
            f"## {c['case']}",
            "",
            f"{c['files']:,} files, {c['bytes'] / 1e6:,.0f} MB, "
            f"{c['sessions']} sessions: {c['describe']}. bidsport `--n-procs {c['n_procs']}`. "
            f"Run {c.get('date', '?')}.",
        ]
        if c["extra"].get("generate_seconds") is not None:
            gen = c["extra"]["generate_seconds"]
            out[-1] += f" Generated in {gen:.1f} s ({c['files'] / max(gen, 1e-9):,.0f} files/s)."
        out += ["", *case_table(c)]
        out += probe_lines(c)
        stages = stage_table(c)
        if stages:
            out += ["", "bidsport participant level by stage (summed over sessions):", "", *stages]
        prof = profile_lines(c)
        if prof:
            out += ["", *prof]
    scans = [(c["case"], c["scan"]) for c in cases if c.get("scan")]
    if scans:
        out += [
            "",
            "## Header scan (warm cache)",
            "",
            "`bench/scan.py`: bidsport's `read_header` and pydicom "
            "(`dcmread(stop_before_pixels=True)` + 30 attributes) in one process "
            "(files per CPU second), and `scan_session` with the run's worker count, "
            "first without and then with the index cache (files per wall second). "
            "Memory: peak RSS of a fresh process streaming the inbox through "
            "`scan_session` without keeping the results, workers started first (main "
            "process before → at its peak, and the growth per file: the scan's sorted "
            "list of the files; largest worker). Between two CPU probes, as a tool: run "
            "again while a probe was 15%+ slower than the fastest so far (up to "
            "`--retries` more times), the run with the fastest `read_header` kept.",
            "",
            "| files of | files | MB | read_header files/s/core | pydicom files/s/core "
            "| scan_session files/s | with index cache files/s | scan memory, main "
            "| scan memory, worker |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, scan in scans:
            out += scan_lines(name, scan)
        probed = [(name, scan) for name, scan in scans if scan.get("probe")]
        if probed:
            out += [""] + [
                f"- {name}: CPU probe {scan['probe'][0]:.0f}→{scan['probe'][1]:.0f} ms "
                f"({scan.get('runs', 1)} run{'s' if scan.get('runs', 1) > 1 else ''})"
                for name, scan in probed
            ]
        real = [(c["case"], c["scan"]) for c in cases if c.get("scan") and c["kind"] == "real"]
        folders = [line for name, scan in real for line in scan_folder_lines(name, scan)]
        if folders:
            out += [
                "",
                "read_header per packet of the real inboxes (one vendor's collection each; "
                f"the target row names the slowest of those with {SCAN_MIN_FILES}+ files):",
                "",
                *folders,
            ]
    text = "\n".join(out) + "\n"
    md_file.write_text(text, encoding="utf-8")
    return text


def scaling_lines(cases: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| tool | "
        + " | ".join(f"{c['case']} ({c['files']:,} files)" for c in cases)
        + " | fit: s per 1,000 files | fit: intercept s | R² |",
        "|---|" + "---:|" * (len(cases) + 3),
    ]
    for tool in ("bidsport", "bidsport e2e", "dcm2niix", "heudiconv", "dcm2bids"):
        points = []
        cells = []
        for c in cases:
            m = _find(c, tool)
            if m is None:
                cells.append("-")
                continue
            cells.append(f"{m['wall']:,.1f} s ({1e6 * m['wall'] / c['files']:,.0f} µs/file)")
            points.append((float(c["files"]), m["wall"]))
        if not points:
            continue
        fit = linear_fit(points)
        fit_cells = [f"{1000 * fit[1]:.3f}", f"{fit[0]:.2f}", f"{fit[2]:.4f}"] if fit else ["-"] * 3
        lines.append(f"| {tool} | " + " | ".join(cells + fit_cells) + " |")
    return lines


def target_lines(cases: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | case | measured | met |", "|---|---|---:|:---:|"]

    def ratio(c: dict[str, Any], a: str, b: str) -> float | None:
        ma, mb = _find(c, a), _find(c, b)
        if ma is None or mb is None or not ma["wall"]:
            return None
        return float(mb["wall"]) / float(ma["wall"])

    def yes(ok: bool) -> str:
        return "yes" if ok else "no"

    for c in cases:
        name = c["case"]
        r = ratio(c, "dcm2niix", "bidsport")
        if r is not None:
            ok = "yes" if r <= 1.0 else ("at most 1.3" if r <= 1.3 else "no")
            target = "participant level ≤ 1.0x (≤ 1.3x at most) bare dcm2niix"
            lines.append(_row(target, name, f"{r:.2f}x", ok))
        for tool, factor, cmp in (("heudiconv", 15.0, "≥ 15x"), ("dcm2bids", 1.2, "≥ 1.2x")):
            r = ratio(c, "bidsport e2e", tool)
            if r is not None:
                target = f"end to end {cmp} faster than {tool}, output passes the validator"
                other = _find(c, tool) or {}
                ours = (_find(c, "bidsport e2e") or {}).get("extra", {}).get("validation")
                theirs = other.get("extra", {}).get("validation")
                met = yes(r >= factor)
                if other.get("failed_calls"):  # a tool that stopped early did less work
                    calls = f"{other['failed_calls']} of {other['calls']} calls"
                    met = f"not comparable: {tool} failed on {calls}"
                if ours is None:
                    met = f"speed: {met}; output not validated"
                elif ours.get("failed"):
                    met = f"speed: {met}; the validator failed"
                elif ours.get("errors") != 0:
                    met = f"no: bidsport's output fails the validator (speed: {met})"
                measured = f"{r:.1f}x"
                if theirs and theirs.get("errors"):
                    measured += f" ({tool}'s output: {theirs['errors']} validator errors)"
                lines.append(_row(target, name, measured, met))
        first, rerun = _find(c, "bidsport"), _find(c, "bidsport re-run")
        if first and rerun:
            share = 100 * rerun["wall"] / first["wall"]
            target = "re-run with nothing new < 5% of the first run"
            lines.append(_row(target, name, f"{share:.1f}%", yes(share < 5)))
        scan = c.get("scan") or {}
        if c["kind"] == "real" and "read_header" in scan:
            target = "header scan ≥ 4,000 files/s per core (warm cache, real vendor files)"
            rate = _per_core(scan["read_header"])
            measured = f"{rate:,.0f} files/s/core"
            slowest = _slowest_folder(scan["read_header"])
            if slowest:
                measured += f" (slowest packet: {slowest[0]}, {slowest[1]:,.0f})"
            lines.append(_row(target, name, measured, yes(rate >= 4000)))
        requested = c["extra"].get("requested_files", c["files"])
        if first and requested >= 100_000 and c["sessions"] == 1:
            peak = first["tree_rss_mb"]
            target = "100k files in one session: completes, peak memory < 500 MB (process tree)"
            ok = yes(peak < 500 and not first["failed_calls"])
            lines.append(_row(target, name, f"{peak:.0f} MB", ok))
    points = [
        (float(c["files"]), float(m["wall"]))
        for c in cases
        if on_the_scale(c) and (m := _find(c, "bidsport")) is not None
    ]
    fit = linear_fit(points)
    if fit:
        measured = f"{1000 * fit[1]:.3f} s per 1,000 files, R² {fit[2]:.4f}"
        target = "time linear in the file count"
        lines.append(_row(target, "synthetic cases", measured, yes(fit[2] > 0.99)))
    return lines


def plot(results: dict[str, Any], png_file: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = [c for c in results["cases"].values() if on_the_scale(c)]
    if not cases:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    for tool in ("bidsport", "bidsport e2e", "dcm2niix", "heudiconv", "dcm2bids"):
        points = sorted((c["files"], m["wall"]) for c in cases if (m := _find(c, tool)) is not None)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=tool)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("DICOM files in the inbox")
    ax.set_ylabel("wall time (s)")
    ax.set_title("Time vs number of files (synthetic inboxes)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    png_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_file, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[],
        help="synthetic inboxes of about these numbers of files",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=None,
        help="sessions per synthetic inbox (default: one per --session-files)",
    )
    parser.add_argument(
        "--session-files",
        type=int,
        default=3000,
        help="files per session when --sessions is not given (default: 3000)",
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(synth.PROTOCOLS),
        default="standard",
        help="session shape (tiny: 3 series of 4-slice volumes, for tests)",
    )
    parser.add_argument(
        "--layout",
        choices=synth.LAYOUTS,
        default="series",
        help="packet folders: a folder per series (default), flat, or mixed",
    )
    parser.add_argument(
        "--matrix",
        type=int,
        default=DEFAULT_MATRIX,
        help=f"slice size (default: {DEFAULT_MATRIX}; another size is a case of its own)",
    )
    parser.add_argument(
        "--private-kb",
        type=int,
        default=DEFAULT_PRIVATE_KB,
        help=f"kB of Siemens-like private header per file (default: {DEFAULT_PRIVATE_KB})",
    )
    parser.add_argument(
        "--inbox",
        type=Path,
        action="append",
        default=[],
        help="a real inbox (folder of packets); may be repeated",
    )
    parser.add_argument("--nameformat", default=None, help="bidsport --nameformat for --inbox")
    parser.add_argument(
        "--real", action="store_true", help=f"the real vendor data {REAL_DATA}/*/In as one inbox"
    )
    parser.add_argument(
        "--tools",
        type=lambda v: v.split(","),
        default=list(TOOLS),
        help="comma-separated subset of " + ",".join(TOOLS),
    )
    parser.add_argument("--n-procs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--competitor-max-files",
        type=int,
        default=20000,
        help="skip HeuDiConv and Dcm2Bids above this many files (default: 20000)",
    )
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds per command")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each tool this many times, in rounds (each tool once per round, the "
        "order rotated), report the fastest (default: 1)",
    )
    parser.add_argument(
        "--no-scan",
        dest="scan",
        action="store_false",
        help="skip the header-scan benchmark of each inbox",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="run a tool up to this many more times while one of its measures had no "
        "steady run (both CPU probes within "
        f"{PROBE_SPREAD_WARN:.0%}% of the fastest probe seen; default: %(default)s)",
    )
    parser.add_argument("--scan-repeat", type=int, default=3)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run bidsport under py-spy (or cProfile) and summarise",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where inboxes and outputs are made (default: the temp folder)",
    )
    parser.add_argument("--keep", action="store_true", help="keep inboxes and outputs")
    parser.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="do not check the BIDS outputs with the validator (it runs after the timing)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=BENCH_DIR / "out",
        help="results.json, logs, plot, profiles (default: bench/out)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=BENCH_DIR / "RESULTS.md",
        help="the Markdown report (default: bench/RESULTS.md)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="forget the cases of earlier runs in results.json"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rewrite the report and the plot from results.json",
    )
    return parser


@contextlib.contextmanager
def _case_dir(work: Path, keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bidsport-bench-", dir=work))
    try:
        yield path
    finally:
        if keep:
            print(f"   kept {path}")
        else:
            discard(path)


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP stop the runner as Ctrl-C does, so that the tool being measured
    (in its own session, out of reach of these signals) is killed too."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop_on_signals()
    unknown = [t for t in args.tools if t not in TOOLS]
    if unknown:
        print(f"unknown tools: {', '.join(unknown)} (known: {', '.join(TOOLS)})", file=sys.stderr)
        return 2
    if not (args.sizes or args.inbox or args.real or args.report_only):
        args.sizes = [1000, 10000]
    args.out_dir = args.out_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    results_file = args.out_dir / "results.json"
    results: dict[str, Any] = {"cases": {}}
    if results_file.is_file() and not args.fresh:
        with contextlib.suppress(ValueError, OSError):
            results = json.loads(results_file.read_text(encoding="utf-8"))
    if not args.report_only or "machine" not in results:
        results["machine"] = machine_info(args.work)
        results["machine"]["bytecode"] = compile_bidsport()
        print("machine:", json.dumps(results["machine"]), flush=True)
    args.probe_floor = results["machine"].get("cpu_probe_ms_at_start") or 0.0

    def record(case_result: dict[str, Any]) -> None:
        case_result["date"] = results["machine"]["date"]
        results["cases"][case_result["case"]] = case_result
        results_file.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")

    try:
        for n in args.sizes:
            with _case_dir(args.work, args.keep) as work:
                case = synthetic_case(n, work, args)
                record(run_case(case, work, args))
        for inbox in args.inbox:
            with _case_dir(args.work, args.keep) as work:
                case = inbox_case(
                    inbox.resolve(),
                    f"inbox-{inbox.name}",
                    args.nameformat,
                    f"inbox {inbox}",
                    kind="real",
                )
                record(run_case(case, work, args))
        if args.real:
            if not REAL_DATA.is_dir():
                print(f"no real data at {REAL_DATA}: --real skipped", file=sys.stderr)
            else:
                with _case_dir(args.work, args.keep) as work:
                    record(run_case(real_case(work), work, args))
    finally:
        if not args.keep:
            empty_trash()
    png = args.out_dir / "time_vs_files.png"
    plotted = plot(results, png)
    text = write_results(results, args.results, png if plotted else None)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
