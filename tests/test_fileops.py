"""Tests of bidsport.fileops: relative symbolic links."""

from __future__ import annotations

import itertools
import json
import os
import random
import stat
from pathlib import Path

import pytest

from bidsport import fileops
from bidsport.errors import OutputError
from bidsport.fileops import relative_symlink, relative_target

# --------------------------------------------------------------------------- relative_target

_PARTS = ("a", "b", "c", "..", ".", "", "x y", "ä")


def _random_path(rnd: random.Random) -> str:
    text = "/".join(rnd.choice(_PARTS) for _ in range(rnd.randint(0, 5)))
    return "/" + text if rnd.random() < 0.85 else text or "a"


def test_relative_target_is_relpath() -> None:
    """The same text as os.path.relpath, including folders given twice, ``..``, ``//``,
    relative paths, and a link folder at or below the target."""
    cases = [
        ("/ds/raw/sub-01/pkt/IM1", "/ds/dicom/sub-01"),
        ("/ds/dicom/IM1", "/ds/dicom"),
        ("/ds/dicom/IM1", "/ds/dicom/"),
        ("/ds/dicom", "/ds/dicom/sub-01"),  # the target holds the link's folder
        ("/ds/dicom", "/ds/dicom"),
        ("/", "/ds"),
        ("//ds/raw/x", "/ds/dicom"),
        ("/ds/raw/../raw/./x", "/ds//dicom/."),
        ("raw/x", "dicom"),  # relative to the working directory
        ("/ds/raw/x", "dicom"),
    ]
    rnd = random.Random(7)
    cases += [(_random_path(rnd), _random_path(rnd)) for _ in range(5_000)]
    for target, link_dir in itertools.chain(cases, cases):  # twice: cached the second time
        assert relative_target(target, link_dir) == os.path.relpath(target, link_dir), (
            target,
            link_dir,
        )
    assert relative_target(Path("/ds/raw/x"), Path("/ds/dicom")) == "../raw/x"


# --------------------------------------------------------------------------- relative_symlink


def test_relative_symlink_replaces_what_is_there(tmp_path: Path) -> None:
    target = tmp_path / "raw" / "IM1"
    target.parent.mkdir()
    target.write_bytes(b"dicom")
    outside = tmp_path / "outside"
    outside.write_bytes(b"not yours")
    link = tmp_path / "ds" / "dicom" / "0001.dcm"
    relative_symlink(target, link)  # makes the folder
    assert os.readlink(link) == "../../raw/IM1" and link.read_bytes() == b"dicom"
    link.unlink()
    link.symlink_to(outside)
    relative_symlink(target, link)
    assert os.readlink(link) == "../../raw/IM1"
    assert outside.read_bytes() == b"not yours"  # the old link was replaced, not followed
    link.unlink()
    link.write_bytes(b"old copy")
    relative_symlink(target, link)
    assert link.is_symlink() and link.read_bytes() == b"dicom"
    assert sorted(p.name for p in link.parent.iterdir()) == ["0001.dcm"]  # no temporary left


def test_relative_symlink_without_replace_never_touches_an_entry(tmp_path: Path) -> None:
    target = tmp_path / "raw" / "IM1"
    target.parent.mkdir()
    target.write_bytes(b"dicom")
    folder = tmp_path / "dicom"
    folder.mkdir()
    relative_symlink(target, folder / "a.dcm", replace=False)
    relative_symlink(str(target), str(folder / "b.dcm"), replace=False)
    assert os.readlink(folder / "a.dcm") == os.readlink(folder / "b.dcm") == "../raw/IM1"
    (folder / "c.dcm").write_bytes(b"someone's file")
    for name in ("a.dcm", "c.dcm"):
        with pytest.raises(OutputError, match=f"{name}: an entry of that name exists"):
            relative_symlink(tmp_path / "elsewhere", folder / name, replace=False)
    assert (folder / "c.dcm").read_bytes() == b"someone's file"
    assert os.readlink(folder / "a.dcm") == "../raw/IM1"
    with pytest.raises(OutputError, match="missing"):  # the caller makes the folder
        relative_symlink(target, tmp_path / "missing" / "a.dcm", replace=False)


def test_json_of_a_name_that_is_not_utf8_reads_back_as_the_same_string(tmp_path: Path) -> None:
    """Surrogates (bytes of a non-UTF-8 name, as Python keeps them) become JSON escapes."""
    data = {"path": os.fsdecode(b"/data/M\xfcller"), "ok": "Müller"}
    fileops.write_json(tmp_path / "a.json", data)
    raw = (tmp_path / "a.json").read_bytes()
    assert b"\\udcfc" in raw and "Müller".encode() in raw  # valid UTF-8, readable
    assert json.loads(raw.decode("utf-8")) == data


def test_files_written_atomically_get_the_mode_of_new_files(tmp_path):
    """A dataset shared by a lab must stay readable by its members: files written through
    a temporary name (tables, index caches, copies, outputs moved from another file
    system) get 0666 less the umask, as ``open`` gives, not ``mkstemp``'s 0600; a copy
    keeps its source's mode."""
    old = os.umask(0o027)
    try:
        fileops.write_json(tmp_path / "a.json", {"a": 1})  # write_bytes: 0644 by design
        with fileops.atomic_path(tmp_path / "b.tsv") as tmp:
            tmp.write_text("x\n")
        src = tmp_path / "src.dcm"
        src.write_bytes(b"x")
        os.chmod(src, 0o640)
        fileops.copy_file(src, tmp_path / "copy.dcm")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.tsv").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "copy.dcm").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.tsv", "copy.dcm", "src.dcm"]


def test_remove_tree_removes_a_link_itself_never_what_it_points_to(tmp_path: Path) -> None:
    from bidsport.errors import OutputError
    from bidsport.fileops import remove_tree

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "data.nii").write_text("keep", encoding="utf-8")
    link = root / "sub" / "image.nii"
    link.symlink_to(outside / "data.nii")
    folder_link = root / "sub" / "folder"
    folder_link.symlink_to(outside)
    remove_tree(link, root)
    remove_tree(folder_link, root)
    assert not os.path.lexists(link) and not os.path.lexists(folder_link)
    assert (outside / "data.nii").read_text(encoding="utf-8") == "keep"
    with pytest.raises(OutputError, match="not inside"):
        remove_tree(outside / "data.nii", root)
    with pytest.raises(OutputError, match="not inside"):
        remove_tree(root, root)
    assert (outside / "data.nii").exists() and root.is_dir()


def test_count_files_counts_what_the_status_and_report_look_for(tmp_path: Path) -> None:
    """Regular files at any depth, links followed; hidden entries, other sessions'
    folders (with ``skip_sessions``, at the top only) and broken links are not counted;
    the walk stops at ``limit``."""
    top = tmp_path / "sub-01"
    (top / "anat").mkdir(parents=True)
    (top / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"1")
    (top / "anat" / "sub-01_T1w.json").write_text("{}")
    (top / "dwi" / "deeper" / "ses-x").mkdir(parents=True)  # a ses-* folder below the top
    (top / "dwi" / "deeper" / "ses-x" / "b.nii").write_bytes(b"2")
    (top / "ses-V1" / "anat").mkdir(parents=True)  # another session's folder
    (top / "ses-V1" / "anat" / "c.nii.gz").write_bytes(b"3")
    (top / ".hidden").mkdir()
    (top / ".hidden" / "d.nii.gz").write_bytes(b"4")
    (top / ".lock.nii.gz").write_bytes(b"5")
    (top / "linked.nii.gz").symlink_to(top / "anat" / "sub-01_T1w.nii.gz")
    (top / "broken.nii.gz").symlink_to(top / "missing.nii.gz")
    images = (".nii", ".nii.gz")

    assert fileops.count_files(top) == 5
    assert fileops.count_files(top, suffixes=images) == 4
    assert fileops.count_files(top, suffixes=images, skip_sessions=True) == 3
    assert fileops.count_files(top, suffixes=(".json",), skip_sessions=True) == 1
    assert fileops.count_files(top, suffixes=images, limit=2) == 2
    assert fileops.count_files(top, suffixes=(".tsv",), limit=1) == 0
    assert fileops.count_files(top, limit=0) == 0
    assert fileops.count_files(tmp_path / "missing") == 0
