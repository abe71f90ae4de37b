"""Every external command bidsport runs goes through here (logged with its exit code)."""

from __future__ import annotations

import logging
import multiprocessing
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidsport.errors import ExternalToolError

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

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
    argv = tuple(str(a) for a in args)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=env,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ExternalToolError(f"program not found: {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ExternalToolError(f"{argv[0]} timed out after {timeout} s") from exc
    seconds = time.perf_counter() - start
    log.debug("ran %s -> exit %d (%.2f s)", shlex.join(argv), proc.returncode, seconds)
    return CommandResult(argv, proc.returncode, proc.stdout, proc.stderr, seconds)


def process_pool(n_procs: int, **options: Any) -> ProcessPoolExecutor:
    """A pool of ``n_procs`` worker processes started by :func:`process_pool_context`'s
    method (``options``: more arguments of ``ProcessPoolExecutor``)."""
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=n_procs, mp_context=process_pool_context(), **options)


def process_pool_context() -> Any:
    """The start method for worker processes: ``fork`` when safe (one thread: quick, and
    no ``__main__`` guard needed in scripts), else ``forkserver`` (or ``spawn``)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
