from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from bidsport.errors import OutputError
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


# --------------------------------------------------------------------------- preamble


def _strip(path: Path, cut: int) -> None:
    """Drop the first ``cut`` bytes (132: no preamble nor "DICM"; 128: no preamble)."""
    path.write_bytes(path.read_bytes()[cut:])


def test_files_without_preamble_become_repaired_copies(tmp_path):
    raw = tmp_path / "raw"
    files = write_series(SeriesSpec("t1", 2, n_slices=4), raw)
    originals = {p: p.read_bytes() for p in files}
    _strip(files[1], 132)
    _strip(files[2], 128)
    decisions = decide_files(_headers(files), raw)
    assert [d.has_preamble for d in decisions] == [True, False, False, True]
    for symlink in (True, False):
        flat = tmp_path / f"flat-{symlink}"
        assert lay_out(decisions, flat, symlink=symlink) == 4
        for d in decisions:
            entry = flat / d.flat_name
            assert entry.read_bytes() == originals[d.source]  # every entry is Part 10 again
            assert entry.is_symlink() == (symlink and d.has_preamble)
        assert lay_out(decisions, flat, symlink=symlink) == 0  # re-run: nothing redone
    assert files[1].read_bytes() == originals[files[1]][132:]  # the imported file is untouched


def test_only_files_the_header_says_lack_a_preamble_are_opened_again(tmp_path):
    raw = tmp_path / "raw"
    files = write_series(SeriesSpec("t1", 2, n_slices=2), raw)
    decisions = decide_files(_headers(files), raw)
    _strip(files[0], 128)  # after the scan: organize goes by the header, not the file
    flat = tmp_path / "flat"
    assert lay_out(decisions, flat) == 2
    assert all((flat / d.flat_name).is_symlink() for d in decisions)


# --------------------------------------------------------------------------- re-runs


def test_entries_of_an_earlier_layout_are_fixed_without_writing_elsewhere(tmp_path):
    raw = tmp_path / "raw"
    files = write_series(SeriesSpec("t1", 2, n_slices=5), raw)
    decisions = decide_files(_headers(files), raw)
    flat = tmp_path / "flat"
    assert lay_out(decisions, flat) == 5
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"not yours")
    names = [d.flat_name for d in decisions]
    (flat / names[0]).unlink()  # missing
    (flat / names[1]).unlink()
    (flat / names[1]).symlink_to(outside)  # a link elsewhere (absolute)
    (flat / names[2]).unlink()
    (flat / names[2]).write_bytes(b"an old copy")  # a file where a link belongs
    (flat / "unrelated.txt").write_text("kept")
    assert lay_out(decisions, flat) == 3
    for d in decisions:
        entry = flat / d.flat_name
        assert entry.is_symlink() and entry.resolve() == d.source.resolve()
    assert outside.read_bytes() == b"not yours"  # replaced the link, not written through it
    assert (flat / "unrelated.txt").read_text() == "kept"
    assert not [p for p in flat.iterdir() if p.name.endswith(".tmp")]

    # --copy over the links: every entry becomes a copy, the link targets stay as they were
    before = {p: p.read_bytes() for p in files}
    (flat / names[3]).unlink()
    (flat / names[3]).symlink_to(outside)
    assert lay_out(decisions, flat, symlink=False) == 5
    assert not any(p.is_symlink() for p in flat.iterdir())
    assert all((flat / d.flat_name).read_bytes() == before[d.source] for d in decisions)
    assert outside.read_bytes() == b"not yours"
    assert {p: p.read_bytes() for p in files} == before
    assert lay_out(decisions, flat, symlink=False) == 0


def test_a_folder_in_the_way_is_an_error_naming_it(tmp_path):
    raw = tmp_path / "raw"
    files = write_series(SeriesSpec("t1", 2, n_slices=2), raw)
    decisions = decide_files(_headers(files), raw)
    flat = tmp_path / "flat"
    (flat / decisions[1].flat_name).mkdir(parents=True)
    (flat / decisions[1].flat_name / "inside").write_text("kept")
    with pytest.raises(OutputError, match=decisions[1].flat_name):
        lay_out(decisions, flat)
    assert (flat / decisions[1].flat_name / "inside").read_text() == "kept"


def test_a_name_given_twice_in_one_call_is_made_once_and_replaced(tmp_path):
    raw = tmp_path / "raw"
    files = write_series(SeriesSpec("t1", 2, n_slices=2), raw)
    first, second = decide_files(_headers(files), raw)
    clash = [first, dataclasses.replace(second, flat_name=first.flat_name)]
    flat = tmp_path / "flat"
    assert lay_out(clash, flat) == 2
    assert [p.name for p in flat.iterdir()] == [first.flat_name]
    assert (flat / first.flat_name).resolve() == second.source.resolve()


def test_a_new_folder_costs_one_system_call_per_link(tmp_path, monkeypatch):
    """No temporary name, rename or folder check per file: each link is made straight
    under its name (whole or absent if the run is killed), with the relative path."""
    raw = tmp_path / "raw"
    files = write_series(SeriesSpec("t1", 2, n_slices=3), raw)
    decisions = decide_files(_headers(files), raw)
    flat = tmp_path / "ds" / "flat"
    made: list[tuple[str, str]] = []
    real_symlink = os.symlink

    def symlink(src, dst, *args, **kwargs):  # the real call, recorded
        made.append((os.fspath(src), os.fspath(dst)))
        real_symlink(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "symlink", symlink)
    assert lay_out(decisions, flat) == 3
    assert made == [
        (os.path.relpath(d.source, flat), os.path.join(flat, d.flat_name)) for d in decisions
    ]


def test_derived_series_kept_by_a_rule_or_as_a_raw_reconstruction(tmp_path: Path) -> None:
    """Derived images are excluded unless --keep-derived; a series of them is kept when a
    user rule names it (datatype and suffix), or when it is the scanner's reconstruction
    that BIDS keeps as raw data (an MP2RAGE UNI image: UNIT1), each said in its evidence."""
    import contextlib
    import io

    from bidsport.cli.run import main
    from bidsport.fileops import read_tsv
    from bidsport.layout import DatasetLayout

    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    derived = ("DERIVED", "PRIMARY", "M", "ND")
    for number, description in ((3, "special_map"), (4, "other_map")):
        spec = SeriesSpec(description, number, image_type=derived, sequence_name="*fl3d1")
        write_series(spec, inbox / "P" / f"s{number}")
    uni = SeriesSpec(
        "t1_mp2rage_sag_UNI_Images",
        5,
        image_type=("DERIVED", "PRIMARY", "M", "UNI", "ND"),
        scanning_sequence=("GR", "IR"),
        sequence_name="*tfl3d1_16",
        repetition_time=5000.0,
        echo_time=2.9,
    )
    write_series(uni, inbox / "P" / "s5")
    rules = tmp_path / "map.toml"
    rules.write_text(
        '[[rules]]\nname = "map"\n[rules.match]\nseries_description = "special_map"\n'
        '[rules.set]\ndatatype = "anat"\nsuffix = "T1map"\n',
        encoding="utf-8",
    )
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main([str(inbox), str(out), "participant", "--rules", str(rules)]) == 0
    assert sorted(p.name for p in (out / "sub-P" / "anat").glob("*.nii.gz")) == [
        "sub-P_T1map.nii.gz",
        "sub-P_UNIT1.nii.gz",
    ]
    rows = {r["series_number"]: r for r in read_tsv(DatasetLayout(out).series_table("P", None))}
    assert "kept although derived: rule 'map' names it" in rows["3"]["evidence"]
    assert "kept although its files are derived: its classification is raw" in rows["5"]["evidence"]
    assert rows["4"]["outputs"] == "n/a"
    assert rows["4"]["excluded"].startswith("derived") and "--keep-derived" in rows["4"]["excluded"]
