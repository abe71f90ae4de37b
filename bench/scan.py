"""Header-scan benchmark: files/s of bidsport's header reader, per core and in parallel.

For the files below the given folders (warm page cache: every file is read once first):

* ``read_header``: :func:`bidsport.header.read_header` on every file, one process,
  each pass starting with nothing remembered (:func:`bidsport.header.forget`);
  files/s per core = files / CPU seconds of that process; ``by_folder``: the same per
  folder just below a root (a packet of an inbox: one vendor's collection in the real
  data), from the fastest pass;
* ``pydicom``: ``pydicom.dcmread(stop_before_pixels=True)`` and the values bidsport needs
  (what a pydicom-based tool does to scan headers), one process, on at most
  ``--pydicom-max`` files;
* ``scan_session``: :func:`bidsport.index.scan_session` with ``--n-procs`` workers and no
  cache (what the participant level does on a first run), then again with a warm
  index cache (what a re-run does).
* ``memory``: the peak RSS of a fresh process that streams every root through
  ``scan_session`` without keeping the results, its workers started first (as the
  participant level starts them): the main process before and at its peak, and the
  largest worker. What the scan itself holds per file (the sorted list of the files), not
  what the participant level keeps for classification.

Best of ``--repeat`` runs. Prints one JSON object (or writes it with ``--json``).

    python bench/scan.py /work/shared/data/*/In [--n-procs 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the attributes a pydicom-based scan decodes (about what bidsport's reader keeps)
_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "Manufacturer", "SeriesNumber", "InstanceNumber", "EchoNumbers", "SeriesDescription",
    "ProtocolName", "SequenceName", "ImageType", "ScanningSequence", "SequenceVariant",
    "ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "InversionTime",
    "FlipAngle", "ImageOrientationPatient", "ImagePositionPatient", "Rows", "Columns",
    "AcquisitionDate", "AcquisitionTime", "SeriesTime", "ContentTime", "NumberOfFrames",
)  # fmt: skip


def _files(roots: list[Path]) -> list[Path]:
    files = []
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            files += [Path(dirpath, n) for n in sorted(names)]
    return files


def _warm(files: list[Path]) -> int:
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
    return total


def _best(func: Callable[[], Any], repeat: int) -> dict[str, Any]:
    """Best wall and CPU seconds of ``repeat`` calls (CPU of this process only), with
    what the fastest call returned: its count of files read, or (count, details)."""
    best: dict[str, Any] = {}
    for _ in range(repeat):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        returned = func()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        if not best or wall < best["wall"]:
            count, details = returned if isinstance(returned, tuple) else (returned, None)
            best = {"wall": wall, "cpu": cpu, "count": count}
            if details is not None:
                best |= details
    return best


def _folder_of(path: Path, roots: list[Path]) -> str:
    """The folder just below one of ``roots`` that holds ``path`` (the root's own name
    for a file directly in it)."""
    for root in roots:
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            continue
        return parts[0] if len(parts) > 1 else root.name
    return path.parent.name


def bench_scan(
    roots: list[Path], *, n_procs: int = 2, repeat: int = 3, pydicom_max: int = 5000
) -> dict[str, Any]:
    import warnings

    import pydicom

    warnings.simplefilter("ignore")  # pydicom's warnings about non-conformant values

    from bidsport.errors import DicomReadError
    from bidsport.header import forget, read_header
    from bidsport.index import scan_session

    files = _files(roots)
    n_bytes = _warm(files)
    result: dict[str, Any] = {"files": len(files), "bytes": n_bytes, "n_procs": n_procs}

    # the files of each folder below a root, in walking order (each folder's files are
    # consecutive: the clock is read per folder, not per file)
    runs = [
        (folder, [path for path, _ in group])
        for folder, group in itertools.groupby(
            ((path, _folder_of(path, roots)) for path in files), key=lambda item: item[1]
        )
    ]

    def headers() -> tuple[int, dict[str, Any]]:
        forget()  # (each pass reads the files as a scan does: nothing remembered)
        by_folder: dict[str, dict[str, Any]] = {}
        for folder, paths in runs:
            ok = 0
            start = time.process_time()
            for path in paths:
                try:
                    read_header(path)
                    ok += 1
                except DicomReadError:
                    pass
            cpu = time.process_time() - start
            entry = by_folder.setdefault(folder, {"files": 0, "count": 0, "cpu": 0.0})
            entry["files"] += len(paths)
            entry["count"] += ok
            entry["cpu"] += cpu
        return sum(e["count"] for e in by_folder.values()), {"by_folder": by_folder}

    sample = files[:pydicom_max]

    def full_pydicom() -> int:
        ok = 0
        for path in sample:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                for keyword in _KEYWORDS:
                    ds.get(keyword)
                ok += 1
            except Exception:  # non-DICOM files are counted as not read
                pass
        return ok

    def scan(root: Path, cache: Path | None) -> int:
        forget()  # (the workers fork from this process)
        return sum(1 for _ in scan_session(root, n_procs=n_procs, cache_file=cache))

    result["read_header"] = _best(headers, repeat)
    result["pydicom"] = _best(full_pydicom, repeat) | {"files": len(sample)}
    with tempfile.TemporaryDirectory(prefix="bidsport-scan-") as tmp:
        walls = []
        cached_walls = []
        for _ in range(repeat):
            wall = cached = 0.0
            for i, root in enumerate(roots):
                cache = Path(tmp) / f"cache-{i}.tsv"
                cache.unlink(missing_ok=True)
                t0 = time.perf_counter()
                scan(root, cache)
                t1 = time.perf_counter()
                scan(root, cache)
                wall += t1 - t0
                cached += time.perf_counter() - t1
            walls.append(wall)
            cached_walls.append(cached)
        result["scan_session"] = {"wall": min(walls)}
        result["scan_session_cached"] = {"wall": min(cached_walls)}
    result["memory"] = scan_memory(roots, n_procs)
    return result


_MEMORY_PROBE = """
import json, resource, sys
from pathlib import Path
from bidsport.index import scan_pool, scan_session

def peak_mb(who):
    if who == resource.RUSAGE_SELF:  # this process's own high-water mark: ru_maxrss
        # keeps the parent's from before the exec (fork and vfork copy the counter)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux

n_procs, roots = int(sys.argv[1]), [Path(r) for r in sys.argv[2:]]
pool = scan_pool(n_procs) if n_procs > 1 else None
if pool is not None:
    pool.submit(int).result()  # the workers start now, before any file is listed
start = peak_mb(resource.RUSAGE_SELF)
count = 0
for root in roots:
    for _ in scan_session(root, n_procs=n_procs, pool=pool):
        count += 1
main = peak_mb(resource.RUSAGE_SELF)
if pool is not None:
    pool.shutdown()
print(json.dumps({"files": count, "main_start_mb": start, "main_peak_mb": main,
                  "worker_peak_mb": peak_mb(resource.RUSAGE_CHILDREN) if pool else None}))
"""


def scan_memory(roots: list[Path], n_procs: int) -> dict[str, Any]:
    """Peak memory of streaming ``roots`` through ``scan_session`` in a fresh process."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(n_procs), *map(str, roots)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    return dict(json.loads(proc.stdout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--n-procs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pydicom-max", type=int, default=5000)
    parser.add_argument("--json", type=Path, help="write the result here (default: stdout)")
    args = parser.parse_args(argv)
    result = bench_scan(
        args.roots, n_procs=args.n_procs, repeat=args.repeat, pydicom_max=args.pydicom_max
    )
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
