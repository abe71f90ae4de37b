"""Worker processes for the group report's thumbnails, started before the group level loads.

Making a thumbnail needs numpy and nibabel, ~0.25 s of imports; the group level's own
modules take ~0.15 s more, and its own work on a small dataset less than that. The
command line starts these workers first (:func:`thumbnail_workers`), so that both imports
run at once, on two cores, and :func:`bidsport.htmlreport.prepare_report` hands them the
thumbnails to make. This module imports little, so that the workers are forked early.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from concurrent.futures import Executor

    from bidsport.layout import DatasetLayout


def sessions_since_report(layout: DatasetLayout) -> int:
    """How many sessions' status records are newer than the report (all of them when
    there is no report yet): the sessions whose thumbnails may have to be made."""
    try:
        since = layout.report_file.stat().st_mtime_ns
    except OSError:
        since = -1
    count = 0
    try:
        with os.scandir(layout.status_rows_dir) as entries:
            for entry in entries:
                if entry.name.endswith(".json") and entry.stat().st_mtime_ns > since:
                    count += 1
    except OSError:  # no records yet, or one removed while listed: guess no thumbnails
        return count
    return count


def usable_cpus() -> int:
    """The processors this process may run on (its affinity: a batch job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _warm_up() -> None:
    """Worker start: load what making a thumbnail needs, before the first task."""
    from bidsport import htmlreport, thumbnails  # noqa: F401


@contextlib.contextmanager
def thumbnail_workers(layout: DatasetLayout, n_procs: int) -> Iterator[Executor | None]:
    """Worker processes for the report's thumbnails, started at once, or None.

    They are started only when thumbnails are likely to be made: some session's status
    record is newer than the report, ``n_procs`` is 2 or more and so is the number of
    processors this process may use. There is one worker per such session, up to
    ``n_procs``. When no thumbnail is made after all, leaving the block waits for the
    workers to finish their imports.
    """
    stale = sessions_since_report(layout) if n_procs > 1 and usable_cpus() > 1 else 0
    if not stale:
        yield None
        return
    from bidsport.runner import process_pool

    with process_pool(min(n_procs, stale), initializer=_warm_up) as pool:
        pool.submit(int)  # a pool forks its workers at its first task: now
        yield pool
