"""Every external command bidsport runs goes through here (logged with its exit code)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shlex
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bidsport.errors import ExternalToolError

if TYPE_CHECKING:
    from concurrent.futures import Executor, ProcessPoolExecutor

_T = TypeVar("_T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_command(
    args: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> CommandResult:
    """Run a command, capture its output, log the command line and exit code.

    A missing program raises :class:`ExternalToolError`; a non-zero exit does not (the
    caller decides what it means).
    """
    return start_command(args, cwd=cwd, timeout=timeout, env=env).wait()


def start_command(
    args: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> RunningCommand:
    """Start a command in the background: :func:`run_command`, but it returns at once and
    :meth:`RunningCommand.wait` gives the result (``timeout`` counts from that call).

    No thread is started (the output is read in :meth:`~RunningCommand.wait`), so worker
    processes may still be forked while the command runs. A program that is missing or
    cannot be run raises :class:`ExternalToolError` here.
    """
    argv = tuple(str(a) for a in args)
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
        )
    except FileNotFoundError as exc:
        raise ExternalToolError(f"program not found: {argv[0]}") from exc
    except OSError as exc:  # e.g. not executable
        raise ExternalToolError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    return RunningCommand(argv, proc, start, timeout)


class RunningCommand:
    """A command started by :func:`start_command`: :meth:`wait` for its result, or
    :meth:`stop` it. A context manager: leaving the block stops a command not waited for."""

    def __init__(
        self,
        argv: tuple[str, ...],
        proc: subprocess.Popen[str],
        start: float,
        timeout: float | None,
    ) -> None:
        self.argv = argv
        self._proc = proc
        self._start = start
        self._timeout = timeout
        self._result: CommandResult | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def wait(self) -> CommandResult:
        """Wait for the command's end and return its output; a command still running
        ``timeout`` seconds later is killed and raises :class:`ExternalToolError`.

        The timeout counts from this call, not from the start: until then nobody reads the
        command's output, and a command that has more to say than a pipe holds waits for
        that, its work done, without being late.
        """
        if self._result is not None:
            return self._result
        try:
            stdout, stderr = self._proc.communicate(timeout=self._timeout)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise ExternalToolError(f"{self.argv[0]} timed out after {self._timeout} s") from exc
        except BaseException:  # e.g. KeyboardInterrupt: the command does not outlive us
            self.stop()
            raise
        seconds = time.perf_counter() - self._start
        code = self._proc.returncode
        log.debug("ran %s -> exit %d (%.2f s)", shlex.join(self.argv), code, seconds)
        self._result = CommandResult(self.argv, code, stdout, stderr, seconds)
        return self._result

    def stop(self) -> None:
        """Kill the command if it still runs, reap it and close its pipes."""
        if self._proc.poll() is None:
            self._proc.kill()
            log.debug("stopped %s", shlex.join(self.argv))
        self._proc.wait()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> RunningCommand:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._result is None:
            self.stop()


#: seconds between two checks of a worker process that its parent still runs
PARENT_CHECK_SECONDS = 1.0


def process_pool(
    n_procs: int,
    *,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    **options: Any,
) -> ProcessPoolExecutor:
    """A pool of ``n_procs`` worker processes started by :func:`process_pool_context`'s
    method (``initializer``, ``initargs`` and ``options``: as for ``ProcessPoolExecutor``).

    Each worker ends when its parent is gone: a worker waits for tasks on a pipe whose
    other end it holds itself, so a main process killed alone (``kill -9``, the OOM
    killer) would leave it waiting forever.
    """
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        max_workers=n_procs,
        mp_context=process_pool_context(),
        initializer=_start_worker,
        initargs=(initializer, initargs),
        **options,
    )


def _start_worker(initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
    """Worker start: watch the parent (:func:`process_pool`), then the pool's initializer."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)  # orphaned: the pool's owner is gone, nobody will send a task

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def in_worker(executor: Executor | None, fn: Callable[..., _T], *args: Any) -> Callable[[], _T]:
    """Start ``fn(*args)`` in ``executor``'s worker process (with no executor: run it now,
    in this process) and return a function that waits for its result.

    A worker process that died (killed, or out of memory) leaves its pool broken for the
    rest of the run: ``fn`` then runs in this process, so the run goes on (a warning says
    so, once per pool). An exception raised by ``fn`` itself is raised by the returned
    function.
    """
    from concurrent.futures import BrokenExecutor

    if executor is None:
        value = fn(*args)
        return lambda: value
    try:
        future = executor.submit(fn, *args)
    except BrokenExecutor:
        future = None

    def result() -> _T:
        if future is not None:
            try:
                return future.result()
            except BrokenExecutor:
                pass
        worker_gone(getattr(fn, "__name__", "a task"), executor)
        return fn(*args)

    return result


_gone_lock = threading.Lock()
_gone_pools: weakref.WeakSet[object] = weakref.WeakSet()  # the pools warned about


def worker_gone(what: str, pool: object) -> None:
    """Log that a worker process of ``pool`` is gone and ``what`` runs in this process
    instead: a warning the first time for a pool, debug lines afterwards."""
    with _gone_lock:
        first = pool not in _gone_pools
        _gone_pools.add(pool)
    if not first:
        log.debug("worker process gone: %s runs in the main process", what)
        return
    log.warning(
        "a worker process of this run stopped unexpectedly (killed, or out of memory?): "
        "its work (%s) goes on in the main process, more slowly",
        what,
    )


def process_pool_context() -> Any:
    """The start method for worker processes: ``fork`` when safe (one thread: quick, and
    no ``__main__`` guard needed in scripts), else ``forkserver`` (or ``spawn``)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
