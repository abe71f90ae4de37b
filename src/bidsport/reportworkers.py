"""Worker processes for the group report's thumbnails, started before the group level loads.

Making a thumbnail needs numpy and nibabel, ~0.2 s of imports; the group level's own
modules take ~0.15 s more, and its own work on a small dataset less than that. The
command line starts these workers first (:func:`thumbnail_workers`), so that both imports
run at once, on two cores, and :func:`bidsport.htmlreport.prepare_report` hands them the
thumbnails to make (:func:`make_thumbnail`). This module imports little, so that the
workers are forked early, and they import only what making a thumbnail needs
(:mod:`bidsport.thumbnails`, not the report's own modules).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bidsport import uptodate
from bidsport.fileops import count_files
from bidsport.layout import NIFTI_ENDINGS, sub_ses_dir

if TYPE_CHECKING:
    from collections.abc import Iterator
    from concurrent.futures import Executor
    from pathlib import Path

    from bidsport.layout import DatasetLayout

#: Written into every thumbnail; a thumbnail without it is made again even when it is
#: newer than its image. Change the number whenever thumbnails change (size, layout).
THUMBNAIL_SOFTWARE = "bidsport thumbnail 1"

#: Images (of the sessions recorded since the report) per worker started: a worker more
#: imports numpy and nibabel once more, on a core the main process also needs (on the 1k
#: benchmark inbox, 5 images: one worker, 0.48 s; two, 0.54 s).
IMAGES_PER_WORKER = 8


@dataclass(frozen=True)
class ThumbnailPool:
    """Worker processes started by :func:`thumbnail_workers`, and how many there are."""

    executor: Executor
    workers: int


def sessions_since_report(layout: DatasetLayout) -> list[Path]:
    """The status records newer than the report (all of them when there is no report
    yet): of the sessions whose thumbnails may have to be made."""
    try:
        since = layout.report_file.stat().st_mtime_ns
    except OSError:
        since = -1
    found = []
    try:
        with os.scandir(layout.status_rows_dir) as entries:
            for entry in entries:
                if entry.name.endswith(".json") and entry.stat().st_mtime_ns > since:
                    found.append(layout.status_rows_dir / entry.name)
    except OSError:  # no records yet, or one removed while listed
        pass
    return sorted(found)


def images_to_preview(layout: DatasetLayout, limit: int) -> int:
    """The NIfTI images of the sessions recorded since the report, counted up to ``limit``
    (an unreadable record counts for nothing)."""
    count = 0
    for record in sessions_since_report(layout):
        if count >= limit:
            break
        try:
            with open(record, encoding="utf-8") as fh:
                data = json.load(fh)
            subject, session = data["participant_id"], data["session_id"]
            folder = layout.root / sub_ses_dir(subject, session)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        count += count_files(
            folder, suffixes=NIFTI_ENDINGS, skip_sessions=not session, limit=limit - count
        )
    return count


def usable_cpus() -> int:
    """The processors this process may run on (its affinity: a batch job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def sessions_in_progress(layout: DatasetLayout) -> bool:
    """True when a participant-level job holds a session lock of the dataset (the group
    level then refuses to run: no worker is worth starting). A lock that cannot be
    tested counts as free, as for the group level's own check
    (:func:`bidsport.group.held_session_locks`, which also warns about it)."""
    try:
        held, _untestable = uptodate.held_locks(str(layout.locks_dir))
    except OSError:
        return False
    return bool(held)


def make_thumbnail(image: Path) -> bytes | str:
    """Worker task: the thumbnail PNG of ``image``, or why it cannot be made."""
    from bidsport import thumbnails  # numpy and nibabel: only when a thumbnail is made

    try:
        return thumbnails.thumbnail_png(image, software=THUMBNAIL_SOFTWARE)
    except thumbnails.UNREADABLE as exc:
        return str(exc) or type(exc).__name__


def _warm_up() -> None:
    """Worker start: load what making a thumbnail needs, before the first task."""
    from bidsport import thumbnails  # noqa: F401


@contextlib.contextmanager
def thumbnail_workers(layout: DatasetLayout, n_procs: int) -> Iterator[ThumbnailPool | None]:
    """Worker processes for the report's thumbnails, started at once, or None.

    They are started only when thumbnails are likely to be made: the sessions whose
    status records are newer than the report hold NIfTI images, ``n_procs`` is 2 or
    more, as is the number of processors this process may use, and no participant-level
    job holds a session lock. One worker per :data:`IMAGES_PER_WORKER` such images, up
    to ``n_procs``. The workers end when the block is left (or earlier, see
    :func:`bidsport.group.run_group`), once they are done with their imports (~0.3 s
    after the start, at most).
    """
    most = min(n_procs, usable_cpus())
    images = images_to_preview(layout, most * IMAGES_PER_WORKER) if most > 1 else 0
    if not images or sessions_in_progress(layout):
        yield None
        return
    from bidsport.runner import process_pool

    workers = -(-images // IMAGES_PER_WORKER)
    with process_pool(workers, initializer=_warm_up) as executor:
        executor.submit(int)  # a pool forks its workers at its first task: now
        yield ThumbnailPool(executor, workers)
