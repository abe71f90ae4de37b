"""Safe extraction: every archive here is built by the test, most of them hostile.

After each extraction nothing may have appeared outside the destination (the whole
tmp_path is listed before and after) and the input archive is byte- and mtime-identical.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import lzma
import os
import stat
import struct
import tarfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from archive_fixtures import tar_member
from bidsport.archive import (
    DEFAULT_LIMITS,
    MAX_NESTING,
    ArchiveLimitError,
    ExtractBudget,
    ExtractLimits,
    archive_kind,
    expand_nested,
    extract_archive,
    member_parts,
    might_be_archive,
    read_head,
    sanitize_component,
    strip_archive_suffix,
)
from bidsport.errors import ArchiveError, ConfigError
from bidsport.synthetic import SeriesSpec, write_series

MiB = 1024**2
GiB = 1024**3


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A few real DICOM files (name → bytes) to pack."""
    folder = tmp_path_factory.mktemp("series")
    paths = write_series(SeriesSpec("t1_mprage", 2, n_slices=3, rows=8, columns=8), folder)
    return {p.name: p.read_bytes() for p in paths}


def listing(root: Path, exclude: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` except ``exclude`` and below: (mode, size)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path == exclude or exclude in path.parents:
                continue
            st = os.lstat(path)
            size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
            found[path.relative_to(root).as_posix()] = (st.st_mode, size)
    return found


def fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


@dataclass
class Checked:
    """Runs an extraction and checks that nothing escaped and the input is unchanged."""

    root: Path

    def __call__(self, archive: Path, dest: Path, run: Callable[[], object]) -> object:
        (self.root / "outside").mkdir(exist_ok=True)
        before = listing(self.root, dest)
        archive_before = fingerprint(archive)
        try:
            return run()
        finally:
            assert listing(self.root, dest) == before, "something was written outside dest"
            assert fingerprint(archive) == archive_before, "the input archive changed"


@pytest.fixture
def checked(tmp_path: Path) -> Checked:
    return Checked(tmp_path)


def extract(checked: Checked, archive: Path, dest: Path, limits: ExtractLimits = DEFAULT_LIMITS):
    return checked(archive, dest, lambda: extract_archive(archive, dest, limits))


def tree(root: Path) -> dict[str, bytes]:
    """Regular files under root (relative path → bytes); fails on links."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            assert not (Path(dirpath) / name).is_symlink(), f"a link was created: {name}"
        for name in filenames:
            path = Path(dirpath) / name
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def write_tar(
    path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w"
) -> Path:
    with tarfile.open(
        path, mode, format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names on purpose
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    return path


@dataclass
class RawEntry:
    name: bytes
    data: bytes  # as stored (already compressed for method 8)
    size: int  # uncompressed size declared
    crc: int
    method: int = 0
    flags: int = 0


def raw_zip(entries: list[RawEntry]) -> bytes:
    """A zip written byte by byte, to say things zipfile would never write."""
    local = b""
    central = b""
    for e in entries:
        offset = len(local)
        fields = (e.flags, e.method, 0, 0x21, e.crc, len(e.data), e.size, len(e.name))
        local += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, *fields, 0) + e.name + e.data
        central += (
            struct.pack("<4sHH", b"PK\x01\x02", 20, 20)
            + struct.pack("<HHHHIIIHHHHHII", *fields, 0, 0, 0, 0, 0, offset)
            + e.name
        )
    n = len(entries)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(central), len(local), 0)
    return local + central + eocd


def stored(name: bytes, data: bytes, flags: int = 0, method: int = 0) -> RawEntry:
    return RawEntry(name, data, len(data), zlib.crc32(data), method=method, flags=flags)


def reasons(problems: object) -> str:
    assert isinstance(problems, list)
    return "\n".join(f"{p.where}: {p.reason}" for p in problems)


# --------------------------------------------------------------------------- names and kinds


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("S01.zip", "zip"),
        ("S01.ZIP", "zip"),
        ("S01.tar", "tar"),
        ("S01.tgz", "tar"),
        ("S01.tar.gz", "tar"),
        ("S01.tar.bz2", "tar"),
        ("S01.tar.xz", "tar"),
        ("S01.tbz2", "tar"),
        ("S01.txz", "tar"),
        ("IM0001.dcm.gz", "gz"),
        ("IM0001.dcm", None),
        ("notes.txt", None),
        (".zip", None),
    ],
)
def test_archive_kind_by_name(name: str, kind: str | None) -> None:
    assert archive_kind(Path("/nonexistent") / name) == kind


def test_strip_archive_suffix() -> None:
    assert strip_archive_suffix("S01.tar.gz") == "S01"
    assert strip_archive_suffix("S01.TGZ") == "S01"
    assert strip_archive_suffix("IM1.dcm.gz") == "IM1.dcm"
    assert strip_archive_suffix("S01") == "S01"


def test_archive_kind_trusts_content_over_name(tmp_path: Path, series: dict[str, bytes]) -> None:
    name, data = next(iter(series.items()))
    tar_named_zip = write_tar(tmp_path / "a.zip", [tar_member(name, data)])
    zip_without_suffix = write_zip(tmp_path / "export", {name: data})
    dicom_named_zip = tmp_path / "b.zip"
    dicom_named_zip.write_bytes(data)
    targz_named_gz = write_tar(tmp_path / "c.gz", [tar_member(name, data)], mode="w:gz")
    plain_tar_no_suffix = write_tar(tmp_path / "d", [tar_member(name, data)])
    (tmp_path / "folder.zip").mkdir()
    assert archive_kind(tar_named_zip) == "tar"
    assert archive_kind(zip_without_suffix) == "zip"
    assert archive_kind(dicom_named_zip) is None
    assert archive_kind(targz_named_gz) == "tar"
    assert archive_kind(plain_tar_no_suffix) == "tar"
    assert archive_kind(tmp_path / "folder.zip") is None
    dest = tmp_path / "out"
    assert extract_archive(tar_named_zip, dest) == []
    assert tree(dest) == {name: data}


@pytest.mark.parametrize(
    ("name", "parts", "reason"),
    [
        ("a/b.dcm", ["a", "b.dcm"], None),
        ("./a//b.dcm", ["a", "b.dcm"], None),
        ("../../evil", [], "'..'"),
        ("a/../../evil", [], "'..'"),
        ("/etc/evil", [], "absolute"),
        ("C:/evil", [], "absolute"),
        ("", [], "empty"),
        ("a/" + "x" * 300, [], "longer than 255"),
    ],
)
def test_member_parts(name: str, parts: list[str], reason: str | None) -> None:
    got_parts, got_reason = member_parts(name)
    assert got_parts == parts
    assert (got_reason is None) if reason is None else (reason in (got_reason or ""))


def test_sanitize_component() -> None:
    assert sanitize_component("IM0001.dcm") == "IM0001.dcm"
    assert sanitize_component("caf\udce9.dcm") == "caf_.dcm"  # byte 0xE9, not UTF-8
    assert sanitize_component("a\x00b\nc\u202e") == "a_b_c_"  # NUL, newline, RTL override
    assert sanitize_component("Müller") == "Müller"
    # printable ASCII comes back as it is (a fast path); ASCII controls and \\ do not
    assert sanitize_component(" a~b (1).dcm") == " a~b (1).dcm"
    assert sanitize_component("a\\b\x7fc\x1f") == "a_b_c_"


def test_might_be_archive_never_misses_what_archive_kind_finds(
    tmp_path: Path, series: dict[str, bytes]
) -> None:
    """The cheap pre-filter of the import: False only for files archive_kind rejects."""
    name, data = next(iter(series.items()))
    one_tar = [tar_member(name, data)]
    files = {
        "IM1": data,  # DICOM without extension
        "IM2.zip": data,  # DICOM named like an archive: not an archive
        "raw_dicom": b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + bytes(600),  # no preamble
        "notes.txt": b"just text\n" * 100,
        "empty": b"",
        "tiny": b"PK",
    }
    paths = {n: tmp_path / n for n in files}
    for n, content in files.items():
        paths[n].write_bytes(content)
    archives = {
        "export": write_zip(tmp_path / "export", {name: data}),
        "plain_tar": write_tar(tmp_path / "plain_tar", one_tar),
        "tgz_no_suffix": write_tar(tmp_path / "tgz_no_suffix", one_tar, mode="w:gz"),
        "bz2_tar": write_tar(tmp_path / "bz2_tar", one_tar, mode="w:bz2"),
        "xz_tar.tar": write_tar(tmp_path / "xz_tar.tar", one_tar, mode="w:xz"),
        "gz_no_suffix": tmp_path / "gz_no_suffix",
        "IM3.dcm.gz": tmp_path / "IM3.dcm.gz",
        "damaged.zip": tmp_path / "damaged.zip",
        "short.gz": tmp_path / "short.gz",
    }
    archives["gz_no_suffix"].write_bytes(gzip.compress(data))
    archives["IM3.dcm.gz"].write_bytes(gzip.compress(data))
    archives["damaged.zip"].write_bytes(b"not a zip at all")
    archives["short.gz"].write_bytes(gzip.compress(b"x")[:5])
    for n, path in {**paths, **archives}.items():
        head = read_head(path)
        assert head == path.read_bytes()[:512]
        if archive_kind(path) is not None:
            assert might_be_archive(path.name, head), n
    assert all(archive_kind(p) is not None for p in archives.values())
    assert not any(
        might_be_archive(p.name, read_head(p)) for p in paths.values() if p.name != "tiny"
    )
    assert archive_kind(paths["tiny"]) is None  # "PK" alone: a candidate, then rejected


def test_expand_nested_reads_only_the_candidates_given(
    tmp_path: Path, series: dict[str, bytes]
) -> None:
    name, data = next(iter(series.items()))
    dest = tmp_path / "packet"
    (dest / "a").mkdir(parents=True)
    write_zip(dest / "a" / "given.zip", {name: data})
    write_zip(dest / "not_given.zip", {name: data})
    (dest / "a" / "IM1").write_bytes(data)
    candidates = [dest / "a" / "IM1", dest / "a" / "given.zip"]  # IM1: not an archive
    assert expand_nested(dest, candidates=candidates) == []
    assert set(tree(dest)) == {"a/given/" + name, "not_given.zip", "a/IM1"}
    assert expand_nested(dest, candidates=[]) == []  # nothing given: nothing read
    assert set(tree(dest)) == {"a/given/" + name, "not_given.zip", "a/IM1"}
    assert expand_nested(dest) == []  # None: the whole folder is searched
    assert set(tree(dest)) == {"a/given/" + name, "not_given/" + name, "a/IM1"}


def test_limits_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_ratio"):
        ExtractLimits(max_ratio=0)


# --------------------------------------------------------------------------- every kind


@pytest.mark.parametrize(
    ("suffix", "tar_mode"),
    [
        (".tar", "w"),
        (".tgz", "w:gz"),
        (".tar.gz", "w:gz"),
        (".tar.bz2", "w:bz2"),
        (".tar.xz", "w:xz"),
        (".zip", None),
    ],
)
def test_each_archive_kind_extracts(
    checked: Checked, tmp_path: Path, series: dict[str, bytes], suffix: str, tar_mode: str | None
) -> None:
    archive = tmp_path / f"S01{suffix}"
    members = {f"S01/t1/{name}": data for name, data in series.items()}
    if tar_mode is None:
        write_zip(archive, members)
    else:
        entries = [tar_member("S01", None, type=tarfile.DIRTYPE, mode=0o500)]
        entries += [tar_member(n, d, mode=0o400) for n, d in members.items()]
        write_tar(archive, entries, mode=tar_mode)
    dest = tmp_path / "out"
    assert extract(checked, archive, dest) == []
    assert tree(dest) == members
    for path in dest.rglob("*"):  # owner-writable, whatever the archive said
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644)


def test_single_gz_file(checked: Checked, tmp_path: Path, series: dict[str, bytes]) -> None:
    name, data = next(iter(series.items()))
    archive = tmp_path / f"{name}.gz"
    archive.write_bytes(gzip.compress(data))
    dest = tmp_path / "out"
    assert extract(checked, archive, dest) == []
    assert tree(dest) == {name: data}


def test_multi_member_gz_with_padding(checked: Checked, tmp_path: Path) -> None:
    archive = tmp_path / "x.dcm.gz"
    archive.write_bytes(gzip.compress(b"abc") + gzip.compress(b"def") + b"\0" * 100)
    dest = tmp_path / "out"
    assert extract(checked, archive, dest) == []
    assert tree(dest) == {"x.dcm": b"abcdef"}


# --------------------------------------------------------------------------- hostile paths


def test_zip_slip(checked: Checked, tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "slip.zip",
        {
            "../../evil": b"x",
            "ok/../../evil2": b"x",
            "/abs/evil": b"x",
            "..\\..\\evil3": b"x",
            "C:/evil4": b"x",
            "ok/good.dcm": b"good",
        },
    )
    dest = tmp_path / "work" / "out"
    dest.parent.mkdir()
    problems = extract(checked, archive, dest)
    assert tree(dest) == {"ok/good.dcm": b"good"}
    text = reasons(problems)
    assert text.count("'..'") == 3 and text.count("absolute path") == 2
    assert "slip.zip:../../evil:" in text  # names the archive and the member


def test_tar_absolute_and_dotdot(checked: Checked, tmp_path: Path) -> None:
    archive = write_tar(
        tmp_path / "t.tar",
        [
            tar_member("/abs/evil"),
            tar_member("../../evil"),
            tar_member("a/../../evil"),
            tar_member(str(tmp_path / "outside" / "evil")),
            tar_member("good/f.dcm", b"good"),
        ],
    )
    dest = tmp_path / "out"
    problems = extract(checked, archive, dest)
    assert tree(dest) == {"good/f.dcm": b"good"}
    assert len(problems) == 4


def test_tar_symlink_then_write_through_it(checked: Checked, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    archive = write_tar(
        tmp_path / "t.tar.gz",
        [
            tar_member("d", type=tarfile.SYMTYPE, linkname=str(outside)),
            tar_member("d/f", b"through the link"),
            tar_member("rel", type=tarfile.SYMTYPE, linkname="../outside"),
            tar_member("rel/g", b"through the relative link"),
            tar_member("inside", type=tarfile.SYMTYPE, linkname="d/f"),
        ],
        mode="w:gz",
    )
    dest = tmp_path / "out"
    problems = extract(checked, archive, dest)
    assert list(outside.iterdir()) == []
    # The links were never made, so d/ and rel/ are plain folders of our own.
    assert tree(dest) == {"d/f": b"through the link", "rel/g": b"through the relative link"}
    assert reasons(problems).count("symbolic link") == 3


def test_tar_hard_links(checked: Checked, tmp_path: Path) -> None:
    archive = write_tar(
        tmp_path / "t.tar",
        [
            tar_member("a.dcm", b"inside"),
            tar_member("passwd", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
            tar_member("b.dcm", type=tarfile.LNKTYPE, linkname="a.dcm"),
            tar_member("passwd", b"write through the hard link"),
        ],
    )
    dest = tmp_path / "out"
    problems = extract(checked, archive, dest)
    assert tree(dest) == {"a.dcm": b"inside", "passwd": b"write through the hard link"}
    assert os.stat(dest / "passwd").st_nlink == 1
    text = reasons(problems)
    assert "hard link to /etc/passwd" in text and "hard link to a.dcm" in text


def test_tar_devices_and_fifos(checked: Checked, tmp_path: Path) -> None:
    archive = write_tar(
        tmp_path / "t.tar",
        [
            tar_member("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
            tar_member("disk", type=tarfile.BLKTYPE, devmajor=8, devminor=0),
            tar_member("pipe", type=tarfile.FIFOTYPE),
            tar_member("ok.dcm", b"ok"),
        ],
    )
    dest = tmp_path / "out"
    problems = extract(checked, archive, dest)
    assert tree(dest) == {"ok.dcm": b"ok"}
    text = reasons(problems)
    assert text.count("device node") == 2 and "FIFO" in text


def test_zip_symlink_and_fifo_members(checked: Checked, tmp_path: Path) -> None:
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, mode, data in (
            ("link", stat.S_IFLNK | 0o777, b"/etc/passwd"),
            ("pipe", stat.S_IFIFO | 0o644, b""),
            ("ok.dcm", stat.S_IFREG | 0o000, b"ok"),
        ):
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            zf.writestr(info, data)
    dest = tmp_path / "out"
    problems = extract(checked, archive, dest)
    assert tree(dest) == {"ok.dcm": b"ok"}
    assert stat.S_IMODE((dest / "ok.dcm").stat().st_mode) == 0o644
    text = reasons(problems)
    assert "symbolic link" in text and "FIFO" in text


def test_duplicate_names_keep_the_first(checked: Checked, tmp_path: Path) -> None:
    zip_archive = tmp_path / "dup.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(zip_archive, "w") as zf:
            zf.writestr("a/x.dcm", b"first")
            zf.writestr("a/x.dcm", b"second")
            zf.writestr("a", b"a file where a folder is")
    tar_archive = write_tar(
        tmp_path / "dup.tar",
        [
            tar_member("x.dcm", b"first"),
            tar_member("./x.dcm", b"second"),
            tar_member("x.dcm/y", b"under a file"),
        ],
    )
    for archive, expected in (
        (zip_archive, {"a/x.dcm": b"first"}),
        (tar_archive, {"x.dcm": b"first"}),
    ):
        dest = tmp_path / f"out-{archive.suffix}"
        problems = extract(checked, archive, dest)
        assert tree(dest) == expected
        assert "first member of this name was kept" in reasons(problems)
        assert len(problems) == 2


def test_existing_files_are_never_overwritten(checked: Checked, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "x.dcm").write_bytes(b"mine")
    archive = write_zip(tmp_path / "a.zip", {"x.dcm": b"theirs"})
    problems = extract(checked, archive, dest)
    assert (dest / "x.dcm").read_bytes() == b"mine"
    assert "exists already" in reasons(problems)


def test_non_utf8_member_names(checked: Checked, tmp_path: Path) -> None:
    tar_archive = write_tar(tmp_path / "names.tar", [tar_member("caf\udce9/\udcff.dcm", b"t")])
    zip_archive = tmp_path / "names.zip"
    zip_archive.write_bytes(raw_zip([stored(b"caf\xe9/\xff\x01.dcm", b"z")]))
    utf8_zip = write_zip(tmp_path / "utf8.zip", {"Müller/ok.dcm": b"u"})
    assert tree_after(checked, tar_archive, tmp_path / "t") == {"caf_/_.dcm": b"t"}
    assert tree_after(checked, zip_archive, tmp_path / "z") == {"caf_/__.dcm": b"z"}
    assert tree_after(checked, utf8_zip, tmp_path / "u") == {"Müller/ok.dcm": b"u"}


def tree_after(checked: Checked, archive: Path, dest: Path) -> dict[str, bytes]:
    problems = extract(checked, archive, dest)
    if archive.name != "utf8.zip":
        assert "renamed to" in reasons(problems)
    return tree(dest)


# --------------------------------------------------------------------------- bombs


def test_total_size_limit_aborts_and_cleans_up(checked: Checked, tmp_path: Path) -> None:
    archive = tmp_path / "big.tar.gz"
    write_tar(
        archive,
        [tar_member("first.dcm", b"small"), tar_member("big.dcm", b"\0" * (2 * MiB))],
        mode="w:gz",
    )
    dest = tmp_path / "out"
    limits = ExtractLimits(max_total_bytes=1 * MiB)
    with pytest.raises(ArchiveLimitError) as err:
        extract(checked, archive, dest, limits)
    assert str(archive) in err.value.message and "max_total_bytes" in err.value.message
    assert err.value.hint is not None and "--max-extract-size" in err.value.hint
    assert not dest.exists()  # the first member was removed too


def test_zip_declared_size_aborts_before_writing(checked: Checked, tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "big.zip", {"first.dcm": b"small", "big.dcm": b"\0" * (2 * MiB)})
    dest = tmp_path / "out"
    with pytest.raises(ArchiveLimitError, match="max_total_bytes"):
        extract(checked, archive, dest, ExtractLimits(max_total_bytes=1 * MiB))
    assert not dest.exists()


def test_ratio_limit(checked: Checked, tmp_path: Path) -> None:
    limits = ExtractLimits(max_ratio=10, ratio_floor_bytes=64 * 1024)
    zip_archive = write_zip(tmp_path / "r.zip", {"zeros.dcm": b"\0" * MiB})
    tar_archive = write_tar(tmp_path / "r.tgz", [tar_member("zeros.dcm", b"\0" * MiB)], mode="w:gz")
    for archive in (zip_archive, tar_archive):
        with pytest.raises(ArchiveLimitError, match="max_ratio") as err:
            extract(checked, archive, tmp_path / "out", limits)
        assert err.value.hint is not None and "--max-extract-ratio" in err.value.hint
        assert not (tmp_path / "out").exists()
    # Small, highly compressible files pass: the ratio is not checked below the floor.
    small = write_zip(tmp_path / "small.zip", {"zeros.dcm": b"\0" * 32 * 1024})
    assert extract(checked, small, tmp_path / "ok", limits) == []


def test_member_count_limit(checked: Checked, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "many.tar", [tar_member(f"{i}.dcm") for i in range(5)])
    with pytest.raises(ArchiveLimitError, match="max_members"):
        extract(checked, archive, tmp_path / "out", ExtractLimits(max_members=3))
    zipped = write_zip(tmp_path / "many.zip", {f"{i}.dcm": b"x" for i in range(5)})
    with pytest.raises(ArchiveLimitError, match="max_members"):
        extract(checked, zipped, tmp_path / "out", ExtractLimits(max_members=3))
    assert not (tmp_path / "out").exists()


def _zeros_deflate(n_blocks: int, block: int = 16 * MiB) -> bytes:
    """A raw deflate stream of n_blocks * block zero bytes, built without inflating it."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = comp.compress(b"\0" * block) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(b"\0" * block) + comp.flush(zlib.Z_FULL_FLUSH)
    assert again == one  # after a full flush every block compresses the same way
    return one * n_blocks + comp.flush(zlib.Z_FINISH)


def test_default_ratio_guard_stops_gigabyte_bombs_early(checked: Checked, tmp_path: Path) -> None:
    """3 GiB when inflated, ~3 MiB on disk: stopped after a few MiB, with default limits."""
    n = 3 * GiB // (16 * MiB)
    one_gz = gzip.compress(b"\0" * (16 * MiB), 9)
    bombs = []
    # A single gzip (multi-member: one compressed block repeated).
    gz_bomb = tmp_path / "bomb.dcm.gz"
    gz_bomb.write_bytes(one_gz * n)
    bombs.append(gz_bomb)
    # A tar.gz with one 3 GiB member: its header, then the same zero blocks.
    header = tar_member("zeros.dcm", None)[0]
    header.size = n * 16 * MiB
    tar_bomb = tmp_path / "bomb.tar.gz"
    tar_bomb.write_bytes(gzip.compress(header.tobuf(tarfile.GNU_FORMAT)) + one_gz * n)
    bombs.append(tar_bomb)
    # A zip whose only member declares 3 GiB out of ~3 MiB (CRC unknown: never reached).
    deflated = _zeros_deflate(n)
    zip_bomb = tmp_path / "bomb.zip"
    zip_bomb.write_bytes(raw_zip([RawEntry(b"zeros.dcm", deflated, n * 16 * MiB, crc=0, method=8)]))
    bombs.append(zip_bomb)
    for bomb in bombs:
        assert bomb.stat().st_size < 4 * MiB
        budget = ExtractBudget(DEFAULT_LIMITS, bomb.stat().st_size)
        dest = tmp_path / "out"
        start = time.monotonic()
        with pytest.raises(ArchiveLimitError, match="max_ratio"):
            checked(bomb, dest, functools.partial(extract_archive, bomb, dest, budget=budget))
        # stopped just past the 8 MiB floor below which ratios are not checked
        assert budget.bytes_written <= DEFAULT_LIMITS.ratio_floor_bytes + 2 * MiB, bomb.name
        assert time.monotonic() - start < 10
        assert not dest.exists()


def test_huge_tar_header_is_refused(checked: Checked, tmp_path: Path) -> None:
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = 200 * MiB  # tarfile would read it into memory at once
    archive = tmp_path / "longname.tar"
    archive.write_bytes(info.tobuf(tarfile.GNU_FORMAT) + b"a" * 4096)
    with pytest.raises(ArchiveError, match=r"header of 200\.0 MiB"):
        extract(checked, archive, tmp_path / "out")


# --------------------------------------------------------------------------- damaged


def test_corrupt_zip(checked: Checked, tmp_path: Path, series: dict[str, bytes]) -> None:
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    good = write_zip(tmp_path / "good.zip", series).read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good[: len(good) // 2])
    for archive in (garbage, truncated):
        with pytest.raises(ArchiveError, match="not a readable zip") as err:
            extract(checked, archive, tmp_path / "out")
        assert str(archive) in str(err.value)
    bad_crc = tmp_path / "crc.zip"
    bad_crc.write_bytes(
        raw_zip([stored(b"a.dcm", b"first"), RawEntry(b"b.dcm", b"data", 4, crc=1)])
    )
    with pytest.raises(ArchiveError, match=r"b\.dcm.*damaged"):
        extract(checked, bad_crc, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # a.dcm, extracted before, was removed


def test_encrypted_zip_member(checked: Checked, tmp_path: Path) -> None:
    archive = tmp_path / "secret.zip"
    archive.write_bytes(raw_zip([stored(b"open.dcm", b"x"), stored(b"secret.dcm", b"y", flags=1)]))
    with pytest.raises(ArchiveError, match=r"secret\.dcm is encrypted") as err:
        extract(checked, archive, tmp_path / "out")
    assert str(archive) in err.value.message
    assert not (tmp_path / "out").exists()


def test_unsupported_zip_method(checked: Checked, tmp_path: Path) -> None:
    archive = tmp_path / "d64.zip"
    archive.write_bytes(raw_zip([stored(b"a.dcm", b"x", method=9)]))
    with pytest.raises(ArchiveError, match="deflate64"):
        extract(checked, archive, tmp_path / "out")


def test_truncated_tar_gz(checked: Checked, tmp_path: Path, series: dict[str, bytes]) -> None:
    good = tmp_path / "good.tar.gz"
    write_tar(good, [tar_member(n, d) for n, d in series.items()], mode="w:gz")
    data = good.read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 4):
        archive = tmp_path / "cut.tar.gz"
        archive.write_bytes(data[:cut])
        with pytest.raises(ArchiveError, match="truncated") as err:
            extract(checked, archive, tmp_path / "out")
        assert str(archive) in err.value.message
        assert not (tmp_path / "out").exists()
        archive.unlink()


def test_bad_gzip(checked: Checked, tmp_path: Path) -> None:
    good = gzip.compress(b"abc" * 1000)
    cases = {
        "notgzip.dcm.gz": b"this is not gzip at all",
        "crc.dcm.gz": good[:-8] + b"\1\2\3\4" + good[-4:],
        "garbage-after.dcm.gz": good + b"garbage",
        "cut.dcm.gz": good[:-3],
    }
    for name, data in cases.items():
        archive = tmp_path / name
        archive.write_bytes(data)
        with pytest.raises(ArchiveError) as err:
            extract(checked, archive, tmp_path / "out")
        assert str(archive) in err.value.message
        assert not (tmp_path / "out").exists()


def test_damaged_plain_tar(checked: Checked, tmp_path: Path) -> None:
    good = write_tar(tmp_path / "good.tar", [tar_member("a.dcm", b"a"), tar_member("b.dcm", b"b")])
    data = good.read_bytes()  # header a @0, data @512, header b @1024, data @1536, end @2048
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:1124])
    with pytest.raises(ArchiveError, match="truncated inside a member header"):
        extract(checked, cut, tmp_path / "out")
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(data[:1024] + b"\x01" * 512 + data[1536:])
    with pytest.raises(ArchiveError, match="invalid tar header at offset 1024"):
        extract(checked, garbage, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # Cut at a member boundary, no end-of-archive marker: extracted, with a warning.
    no_end = tmp_path / "noend.tar"
    no_end.write_bytes(data[:2048])
    problems = extract(checked, no_end, tmp_path / "out")
    assert "no end-of-archive marker" in reasons(problems)
    assert tree(tmp_path / "out") == {"a.dcm": b"a", "b.dcm": b"b"}


# --------------------------------------------------------------------------- nested


def test_nested_archives_are_expanded(
    checked: Checked, tmp_path: Path, series: dict[str, bytes]
) -> None:
    names = sorted(series)
    deeper = io.BytesIO()
    with tarfile.open(fileobj=deeper, mode="w:gz") as tf:
        info = tarfile.TarInfo(names[2])
        info.size = len(series[names[2]])
        tf.addfile(info, io.BytesIO(series[names[2]]))
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr(f"series/{names[0]}", series[names[0]])
        zf.writestr(f"series/{names[1]}.gz", gzip.compress(series[names[1]]))
        zf.writestr("deeper.tar.gz", deeper.getvalue())
    outer = write_tar(
        tmp_path / "outer.tar",
        [
            tar_member("inner.zip", inner.getvalue()),
            tar_member("inner", None, type=tarfile.DIRTYPE),
        ],
    )
    dest = tmp_path / "out"

    def run() -> list[object]:
        budget = ExtractBudget(DEFAULT_LIMITS, outer.stat().st_size)
        return [*extract_archive(outer, dest, budget=budget), *expand_nested(dest, budget=budget)]

    assert checked(outer, dest, run) == []
    # inner/ existed (an empty folder in the tar), so the zip went to inner_2/.
    assert tree(dest) == {
        f"inner_2/series/{names[0]}": series[names[0]],
        f"inner_2/series/{names[1]}": series[names[1]],
        f"inner_2/deeper/{names[2]}": series[names[2]],
    }


def test_nested_depth_limit(tmp_path: Path) -> None:
    # depth1.zip holds depth2.zip ... which holds depth6.zip, which holds bottom.dcm.
    name, data = "bottom.dcm", b"bottom"
    for depth in range(MAX_NESTING + 1, 0, -1):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(name, data)
        name, data = f"depth{depth}.zip", buf.getvalue()
    dest = tmp_path / "packet"
    dest.mkdir()
    (dest / name).write_bytes(data)
    problems = expand_nested(dest)
    assert len(problems) == 1 and problems[0].where.endswith("depth6.zip")
    assert f"nested more than {MAX_NESTING} levels" in problems[0].reason
    files = tree(dest)
    assert list(files) == ["depth1/depth2/depth3/depth4/depth5/depth6.zip"]


def test_damaged_nested_archive_is_left_with_a_problem(tmp_path: Path) -> None:
    dest = tmp_path / "packet"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    (dest / "sub" / "IM1.dcm").write_bytes(b"keep")
    problems = expand_nested(dest)
    assert len(problems) == 1 and problems[0].where == "sub/broken.zip"
    assert "left as is" in problems[0].reason
    assert tree(dest) == {"sub/broken.zip": b"PK\x03\x04 not really", "sub/IM1.dcm": b"keep"}


def test_nested_bomb_shares_the_budget(tmp_path: Path) -> None:
    dest = tmp_path / "packet"
    dest.mkdir()
    for i in range(3):
        write_zip(dest / f"part{i}.zip", {"zeros.dcm": b"\0" * (600 * 1024)})
    with pytest.raises(ArchiveLimitError, match="max_total_bytes"):
        expand_nested(dest, ExtractLimits(max_total_bytes=1 * MiB))


def test_gz_next_to_existing_file_is_kept(tmp_path: Path) -> None:
    dest = tmp_path / "packet"
    dest.mkdir()
    (dest / "IM1.dcm").write_bytes(b"plain")
    zipped = gzip.compress(b"zipped", mtime=0)
    (dest / "IM1.dcm.gz").write_bytes(zipped)
    problems = expand_nested(dest)
    assert "exists already" in reasons(problems)
    assert tree(dest) == {"IM1.dcm": b"plain", "IM1.dcm.gz": zipped}


def test_bz2_and_xz_streams(tmp_path: Path) -> None:
    """A .tar.bz2 and .tar.xz bomb are stopped by the stream ratio too."""
    limits = ExtractLimits(max_ratio=50, ratio_floor_bytes=256 * 1024)
    header = tar_member("zeros.dcm", None)[0]
    header.size = 8 * MiB
    payload = header.tobuf(tarfile.GNU_FORMAT) + b"\0" * (8 * MiB)
    for name, data in (("b.tar.bz2", bz2.compress(payload)), ("x.tar.xz", lzma.compress(payload))):
        archive = tmp_path / name
        archive.write_bytes(data)
        with pytest.raises(ArchiveLimitError, match="max_ratio"):
            extract_archive(archive, tmp_path / "out", limits)
        assert not (tmp_path / "out").exists()


def test_tar_gz_with_many_members_reads_every_byte(tmp_path):
    """Regression: the gzip decoder returns short reads, which tarfile takes for truncation."""
    import random

    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(7)
    for i in range(40):
        size = rng.randint(1_000, 200_000)
        (src / f"f{i:02d}").write_bytes(bytes(rng.getrandbits(3) for _ in range(size)))
    packed = tmp_path / "p.tar.gz"
    with tarfile.open(packed, "w:gz") as tf:
        tf.add(src, arcname="p")
    dest = tmp_path / "out"
    assert extract_archive(packed, dest) == []
    for path in src.iterdir():
        assert (dest / "p" / path.name).read_bytes() == path.read_bytes()
