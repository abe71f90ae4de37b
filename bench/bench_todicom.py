"""Benchmark ``bidsport todicom``: seconds to write a 256x256x176 volume as a DICOM series.

Builds a synthetic sagittal 3D T1w reference series (176 slices of 256x256, 1 mm), converts
it with dcm2niix, then times :func:`bidsport.todicom.export_nifti` end to end (read the
NIfTI and its sidecar, read the 176 reference headers, encode, write every file
atomically) for each output kind, and for float data (quantized with a rescale slope).
Wall time includes one fsync per file (fileops.write_bytes); CPU time is steadier on a
shared machine.

    /opt/bpvenv/bin/python bench/bench_todicom.py [--repeat 3] [--kinds mr,enhanced,seg]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import dcm2niix
import nibabel as nib
import numpy as np

from bidsport.runner import run_command
from bidsport.synthetic import SeriesSpec, write_series
from bidsport.todicom import ExportOptions, export_nifti

SHAPE = (256, 256, 176)


def build(work: Path) -> tuple[Path, Path, Path, Path]:
    """Reference DICOM folder, the T1w NIfTI, a float map and a label map on its grid."""
    ref_dir = work / "reference"
    spec = SeriesSpec(
        "t1_mprage_sag",
        2,
        n_slices=SHAPE[2],
        rows=SHAPE[0],
        columns=SHAPE[1],
        orientation="sagittal",
        mr_acquisition_type="2D",
        pixel_spacing=1.0,
        slice_thickness=1.0,
        repetition_time=2300.0,
        echo_time=2.98,
        flip_angle=9.0,
    )
    write_series(spec, ref_dir)
    nifti_dir = work / "nifti"
    nifti_dir.mkdir()
    result = run_command([dcm2niix.bin, "-z", "n", "-f", "sub-01_T1w", "-o", nifti_dir, ref_dir])
    if result.returncode != 0:
        raise SystemExit(f"dcm2niix failed: {result.stdout}{result.stderr}")
    t1w = nifti_dir / "sub-01_T1w.nii"
    img = nib.load(t1w)
    data = np.asanyarray(img.dataobj).astype(np.float64)
    t1map = nifti_dir / "sub-01_T1map.nii"
    nib.save(nib.Nifti1Image((data * 0.731 + 0.05).astype(np.float32), img.affine), t1map)
    labels = np.zeros(img.shape, np.uint8)
    for n, q in enumerate(np.percentile(data, [50, 70, 85, 95]), start=1):
        labels[data > q] = n
    dseg = nifti_dir / "sub-01_desc-bench_dseg.nii"
    nib.save(nib.Nifti1Image(labels, img.affine), dseg)
    return ref_dir, t1w, t1map, dseg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median reported)")
    parser.add_argument("--kinds", default="mr,sc,enhanced,seg", help="comma-separated kinds")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    with tempfile.TemporaryDirectory(prefix="bench_todicom_") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        ref_dir, t1w, t1map, dseg = build(work)
        print(f"setup (synthetic reference + dcm2niix): {time.perf_counter() - start:.1f} s")
        cases = [(kind, dseg if kind == "seg" else t1w) for kind in kinds]
        if "mr" in kinds:
            cases.append(("mr (float32, rescaled)", t1map))
        print(f"volume {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} (sagittal, 1 mm), median of {args.repeat}:")
        for n, (label, nifti) in enumerate(cases):
            kind = label.split()[0]
            times, cpu = [], []
            for r in range(args.repeat):
                out = work / f"out_{n}_{r}"
                t0, c0 = time.perf_counter(), time.process_time()
                result = export_nifti(nifti, out, ExportOptions(kind=kind, reference=ref_dir))
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            size = sum(p.stat().st_size for p in result.files) / 1e6
            print(
                f"  {label:24s} {statistics.median(times):6.2f} s wall, "
                f"{statistics.median(cpu):5.2f} s CPU "
                f"({len(result.files)} file(s), {size:.1f} MB; {result.encoding})"
            )


if __name__ == "__main__":
    main()
