"""Anonymization throughput: bidsport's de-identification next to ``python -m dicognito``.

    python bench/bench_anonymize.py [FOLDER ...] [--n-procs N] [--keep-private]

FOLDER defaults to every ``In/`` folder of ../shared/data. Prints files/s (wall) and files
per CPU-second for bidsport (``privacy.anonymize_files``, the code the pipeline runs, with
``--n-procs`` worker processes) and for the dicognito command line on a copy of the same
files (it anonymizes in place, one process; run once per folder, as it stops at the first
file it cannot anonymize: a folder it fails on is left out of its figures and named).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bidsport.anonymize import default_policy
from bidsport.errors import DicomReadError
from bidsport.header import read_header
from bidsport.phi import Identifiers
from bidsport.privacy import Anonymization, anonymize_files

REPO = Path(__file__).resolve().parents[1]


def dicom_files(folders: list[Path]) -> list[Path]:
    files = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            try:
                header = read_header(path)
            except DicomReadError:
                continue
            if header.has_pixel_data:
                files.append(path)
    return files


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--n-procs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep-private", action="store_true")
    args = parser.parse_args()
    folders = args.folders or sorted((REPO.parent / "shared" / "data").glob("*/In"))
    files = dicom_files(folders)
    if not files:
        print("no DICOM image files found", file=sys.stderr)
        return 2
    print(f"{len(files)} DICOM files from {len(folders)} folder(s), {args.n_procs} process(es)")
    with tempfile.TemporaryDirectory(prefix="bidsport-bench-anon-") as tmp:
        out = Path(tmp) / "out"
        anon = Anonymization(os.urandom(32), default_policy(args.keep_private), Path(tmp) / "phi")
        pairs = [(src, out / f"{i:06d}.dcm") for i, src in enumerate(files)]
        cpu0, cpuc0, start = cpu_self(), cpu_children(), time.perf_counter()
        reasons = anonymize_files(anon, pairs, "01", Identifiers(), n_procs=args.n_procs)
        wall = time.perf_counter() - start
        cpu = cpu_self() - cpu0 + cpu_children() - cpuc0
        excluded = sum(1 for r in reasons if r)
        print(
            f"bidsport : {len(files) / wall:8.0f} files/s wall, {len(files) / cpu:6.0f} files "
            f"per CPU-second ({wall:.2f} s, {excluded} excluded by the policy)"
        )
        copy = Path(tmp) / "copy"
        by_folder: dict[Path, list[Path]] = {}
        for i, src in enumerate(files):
            folder = next(f for f in folders if src.is_relative_to(f))
            dst = copy / str(folders.index(folder)) / f"{i:06d}.dcm"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            by_folder.setdefault(folder, []).append(dst)
        done = 0
        wall = cpu = 0.0
        failed = []
        for folder, copies in by_folder.items():
            cpuc0, start = cpu_children(), time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "dicognito", "--quiet", "--in-place", str(copies[0].parent)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                failed.append(folder.parent.name)
                continue
            wall += time.perf_counter() - start
            cpu += cpu_children() - cpuc0
            done += len(copies)
        status = f" (failed on, left out: {', '.join(failed)})" if failed else ""
        if done:
            print(
                f"dicognito: {done / wall:8.0f} files/s wall, {done / cpu:6.0f} files "
                f"per CPU-second ({wall:.2f} s for {done} files){status}"
            )
        else:
            print(f"dicognito: failed on every folder{status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
