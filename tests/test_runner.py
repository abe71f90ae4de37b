"""Running external commands: in the foreground and in the background (real processes)."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

from bidsport.errors import ExternalToolError
from bidsport.runner import run_command, start_command


def _gone(pid: int) -> bool:
    """Whether no process (not even an unreaped zombie) has ``pid``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_run_command_captures_output_and_exit_code() -> None:
    probe = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    result = run_command([sys.executable, "-c", probe], timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.args == (sys.executable, "-c", probe) and result.seconds > 0


def test_a_missing_program_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-tool"
    with pytest.raises(ExternalToolError, match=re.escape(f"program not found: {missing}")):
        start_command([missing])


def test_a_program_that_cannot_be_run_is_named(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n", encoding="utf-8")
    script.chmod(0o644)
    with pytest.raises(ExternalToolError, match=re.escape(f"cannot run {script}: Permission")):
        run_command([script])


def test_a_started_command_runs_while_the_caller_goes_on(tmp_path: Path) -> None:
    """start_command returns before the command ends; wait() gives what it printed, more
    than a pipe holds (64 kB), and starts no thread (worker processes may be forked)."""
    gate = tmp_path / "gate"
    probe = (
        "import os, sys, time\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
        "sys.stdout.write('x' * 1_000_000)\n"
    )
    threads = threading.active_count()
    with start_command([sys.executable, "-c", probe], timeout=60) as running:
        assert threading.active_count() == threads
        gate.touch()  # the command cannot have ended before this
        result = running.wait()
        assert running.wait() is result  # asked again: the same result
    assert result.returncode == 0 and len(result.stdout) == 1_000_000
    assert _gone(running.pid)


def test_a_command_past_its_timeout_is_killed() -> None:
    running = start_command([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    start = time.perf_counter()
    with pytest.raises(ExternalToolError, match=r"timed out after 0\.5 s"):
        running.wait()
    assert time.perf_counter() - start < 30
    assert _gone(running.pid)


def test_a_command_blocked_on_its_output_is_not_late() -> None:
    """Nobody reads a background command's output before wait(): one with more to say than
    a pipe holds waits, its work done, and is not timed out for that."""
    running = start_command([sys.executable, "-c", "print('x' * 1_000_000)"], timeout=1)
    time.sleep(1.5)  # the caller comes back after the timeout
    assert len(running.wait().stdout) == 1_000_001


def test_leaving_the_block_without_waiting_stops_the_command() -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(RuntimeError, match="the caller failed"), start_command(sleeper) as running:
        raise RuntimeError("the caller failed")
    assert _gone(running.pid)


OWNER = """
import os, signal, sys
from bidsport.runner import process_pool

def init(path):
    open(path, "w").write("initialized")

pool = process_pool(2, initializer=init, initargs=(sys.argv[1],))
pids = {pool.submit(os.getpid).result() for _ in range(8)}
print(" ".join(map(str, sorted(pids))), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would: no clean-up at all
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pool_workers_end_when_their_owner_is_killed(tmp_path: Path) -> None:
    """A pool's workers wait for tasks forever once their owner is SIGKILLed alone (they
    hold the other end of their task pipe): each checks that its parent still runs and
    ends when it does not. The pool's own initializer still runs."""
    import subprocess

    marker = tmp_path / "init"
    owner = subprocess.run(
        [sys.executable, "-c", OWNER, str(marker)], capture_output=True, text=True, timeout=30
    )
    assert owner.returncode == -9, owner.stderr
    workers = [int(pid) for pid in owner.stdout.split()]
    assert workers and marker.read_text() == "initialized"
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def test_a_task_of_a_dead_worker_runs_here(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """:func:`in_worker`: the worker's result while its process lives; once the pool is
    broken (its worker killed), the task runs in this process, with one warning for the
    pool; the task's own exceptions are raised; with no pool the task runs at once."""
    from bidsport import runner
    from bidsport.runner import in_worker, process_pool

    monkeypatch.setattr(runner, "_gone_pools", weakref.WeakSet())
    here = os.getpid()
    with process_pool(1) as pool, caplog.at_level("DEBUG", logger="bidsport.runner"):
        assert in_worker(pool, os.getpid)() != here
        with pytest.raises(ValueError):
            in_worker(pool, int, "not a number")()
        pool.submit(os._exit, 1)  # the worker dies before it gets the next task
        pending = in_worker(pool, time.sleep, 0.01)
        assert pending() is None  # slept here, once the worker was gone
        assert in_worker(pool, os.getpid)() == here  # refused by the broken pool
        with pytest.raises(ValueError):
            in_worker(pool, int, "not a number")()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "(sleep)" in warnings[0], warnings
    assert sum("getpid runs in the main process" in r.getMessage() for r in caplog.records) == 1
    calls: list[int] = []
    later = in_worker(None, calls.append, 1)
    assert calls == [1] and later() is None  # no pool: run at once, here
