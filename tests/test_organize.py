from __future__ import annotations

import os
from pathlib import Path

from bidsport.header import read_header
from bidsport.organize import decide_files, flat_name, lay_out
from bidsport.synthetic import SeriesSpec, write_series


def _headers(paths):
    return [read_header(p) for p in paths]


def test_flat_names_are_unique_stable_and_carry_no_source_names(tmp_path):
    raw = tmp_path / "raw"
    a = write_series(SeriesSpec("t1", 2, n_slices=3), raw / "Doe^Jane" / "a")
    b = write_series(SeriesSpec("t1", 2, n_slices=3), raw / "Doe^Jane" / "b")  # same numbers
    decisions = decide_files(_headers(a + b), raw)
    used = [d for d in decisions if d.flat_name]
    # b repeats a's SOPInstanceUIDs: excluded as duplicates, naming the first copy
    assert len(used) == 3
    dup = [d for d in decisions if d.reason]
    assert len(dup) == 3 and all("duplicate SOPInstanceUID" in d.reason for d in dup)
    names = [d.flat_name for d in used]
    assert len(set(names)) == 3
    assert all("Doe" not in n for n in names)
    assert names == [d.flat_name for d in decide_files(_headers(a + b), raw) if d.flat_name]


def test_relative_symlinks_survive_a_move(tmp_path):
    root = tmp_path / "ds"
    raw = root / "sourcedata" / "raw" / "sub-01"
    files = write_series(SeriesSpec("t1", 2, n_slices=2), raw / "pkt")
    decisions = decide_files(_headers(files), raw)
    flat = root / "sourcedata" / "dicom" / "sub-01"
    assert lay_out(decisions, flat) == 2
    assert lay_out(decisions, flat) == 0  # already there: nothing redone
    for link in flat.iterdir():
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    for link in (moved / "sourcedata" / "dicom" / "sub-01").iterdir():
        assert link.resolve().is_file()
        assert link.resolve().is_relative_to(moved.resolve())


def test_copies_instead_of_links(tmp_path):
    raw = tmp_path / "raw"
    files = write_series(SeriesSpec("t1", 2, n_slices=2), raw)
    flat = tmp_path / "flat"
    lay_out(decide_files(_headers(files), raw), flat, symlink=False)
    entries = list(flat.iterdir())
    assert len(entries) == 2 and not any(e.is_symlink() for e in entries)


def test_derived_images_are_excluded_unless_kept(tmp_path):
    raw = tmp_path / "raw"
    files = write_series(
        SeriesSpec("adc", 9, n_slices=2, image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC")),
        raw,
    )
    assert all(
        d.reason and "derived" in d.reason.lower() for d in decide_files(_headers(files), raw)
    )
    kept = decide_files(_headers(files), raw, keep_derived=True)
    assert all(d.reason is None for d in kept)


def test_flat_name_format():
    from bidsport.records import FileHeader

    h = FileHeader(Path("x"), 0, 0)
    assert flat_name(h, "a").startswith("0000_000000_")
