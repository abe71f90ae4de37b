"""Fuzzing: mutated real DICOM files and mutated archives never crash the readers.

hypothesis mutates bytes (flips, overwrites, lengths set to 0xFFFFFFFF, VRs swapped,
cuts, insertions, deletions, duplications) of

* real vendor files from ``../shared/data`` (every transfer syntax, classic and enhanced,
  GE, Philips, Siemens, UIH) and synthetic ones, read with ``header.read_header`` and
  through ``index.scan_session`` with its cache (read, cached, read back from the cache);
* small synthetic archives (zip, tar, tar.gz/bz2/xz, gzip, nested, with hostile members),
  unpacked with ``archive.extract_archive`` then ``archive.expand_nested``.

The only errors allowed are :class:`DicomReadError` and :class:`ArchiveError`; extraction
must still write nothing outside its destination, create no link or device, leave the
input unchanged and remove what it wrote when it fails.

The normal suite runs a short, derandomized pass (~20 s). Set ``BIDSPORT_FUZZ_EXAMPLES``
(examples per test) for a longer, random run: ``ci/fuzz.sh`` (see docs/robustness.md).
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import gzip
import io
import lzma
import os
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from bidsport.archive import ExtractLimits, expand_nested, extract_archive
from bidsport.errors import ArchiveError, DicomReadError
from bidsport.header import read_header
from bidsport.index import scan_session
from bidsport.records import FileHeader, Problem
from bidsport.synthetic import SeriesSpec, series_datasets

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MiB = 1024**2
#: mutated character sets and values make pydicom warn; the warnings are not the subject
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: examples per test: a short deterministic pass by default, more (and random) on demand
LONG_RUN = int(os.environ.get("BIDSPORT_FUZZ_EXAMPLES", "0"))


def fuzz_settings(short: int) -> settings:
    common = {
        "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    if LONG_RUN:
        return settings(max_examples=LONG_RUN, **common)  # type: ignore[arg-type]
    return settings(max_examples=short, derandomize=True, **common)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- mutations

_VRS = [b"OB", b"OW", b"SQ", b"UN", b"UT", b"UL", b"US", b"DS", b"IS", b"CS", b"XX", b"\0\0"]
_LENGTHS = [
    b"\xff\xff\xff\xff",
    b"\xfe\xff\xff\xff",
    b"\x00\x00\x00\x80",
    b"\xff\xff",
    b"\x00\x00",
    b"\x08\x00\x00\x00",
    b"\xff\xff\xff\x7f",
]
_TAGS = [
    b"\xfe\xff\x00\xe0",
    b"\xfe\xff\xdd\xe0",
    b"\xfe\xff\x0d\xe0",
    b"\xe0\x7f\x10\x00",
    b"\x02\x00\x10\x00",
    b"\x08\x00\x05\x00",
    b"\x52\x00\x30\x92",
]

#: where to mutate: mostly in the first few kB (element headers), anywhere sometimes
#: (negative: from the end, where zip archives keep their central directory)
POSITIONS = st.one_of(
    st.integers(0, 1024), st.integers(0, 8192), st.integers(0, 1 << 24), st.integers(-1024, -1)
)

#: length-preserving mutations come twice: a file whose length changed is mostly refused
#: as truncated (its pixel data no longer fits), which tests less of the reader
_FLIP = st.tuples(st.just("flip"), POSITIONS, st.integers(1, 255))
_SET = st.tuples(st.just("set"), POSITIONS, st.binary(min_size=1, max_size=8))
_SET_DICOM = st.tuples(st.just("set"), POSITIONS, st.sampled_from(_VRS + _LENGTHS + _TAGS))
MUTATION = st.one_of(
    _FLIP,
    _SET,
    _SET_DICOM,
    _FLIP,
    _SET,
    _SET_DICOM,
    st.tuples(st.just("cut"), POSITIONS, st.just(0)),
    st.tuples(st.just("insert"), POSITIONS, st.binary(max_size=24)),
    st.tuples(st.just("delete"), POSITIONS, st.integers(1, 300)),
    st.tuples(st.just("repeat"), POSITIONS, st.integers(1, 300)),
)
MUTATIONS = st.lists(MUTATION, min_size=1, max_size=6)


def mutate(data: bytes, mutations: list[tuple[str, int, object]]) -> bytes:
    buf = bytearray(data)
    for op, pos, arg in mutations:
        if not buf:
            break
        pos %= len(buf)
        if op == "flip":
            buf[pos] ^= int(arg)  # type: ignore[call-overload]
        elif op == "set":
            value = bytes(arg)  # type: ignore[call-overload]
            buf[pos : pos + len(value)] = value
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = bytes(arg)  # type: ignore[call-overload]
        elif op == "delete":
            del buf[pos : pos + int(arg)]  # type: ignore[call-overload]
        elif op == "repeat":
            buf[pos:pos] = buf[pos : pos + int(arg)]  # type: ignore[call-overload]
    return bytes(buf)


# --------------------------------------------------------------------------- seeds


def _real_seeds() -> list[Path]:
    """A few files of every vendor and transfer syntax of the shared collection (< 1 MiB)."""
    if not SHARED_DATA.is_dir():
        return []
    seeds = []
    for collection in sorted(SHARED_DATA.iterdir()):
        files = sorted(p for p in (collection / "In").rglob("*") if p.is_file())
        files = [p for p in files if p.stat().st_size < MiB]
        step = max(1, len(files) // 4)
        seeds += files[::step][:9]
    return seeds


def _synthetic(spec: SeriesSpec) -> list[bytes]:
    """The files of a synthetic series, as bytes (nothing written to disk)."""
    files = []
    for ds in series_datasets(spec):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        files.append(buf.getvalue())
    return files


@functools.cache
def dicom_seeds() -> list[bytes]:
    """Seeds of the header fuzzing (module-level, so hypothesis never prints them)."""
    synthetic = _synthetic(SeriesSpec("t1", 2, n_slices=2, rows=8, columns=8))
    multi = _synthetic(
        SeriesSpec("dwi", 3, n_slices=1, n_volumes=2, b_values=(0, 1000), rows=8, columns=8)
    )
    return [p.read_bytes() for p in _real_seeds()] + [synthetic[0], multi[1]]


def test_the_real_collection_is_used_when_present() -> None:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real DICOM data not found at {SHARED_DATA}: fuzzing synthetic files only")
    seeds = _real_seeds()
    assert len(seeds) >= 20
    assert {p.relative_to(SHARED_DATA).parts[0] for p in seeds} >= {
        "dcm_qa_enh",
        "dcm_qa_ge",
        "dcm_qa_nih",
        "dcm_qa_philips",
        "dcm_qa_ts",
        "dcm_qa_uih",
    }


def _check_header(h: FileHeader, path: Path) -> None:
    assert h.path == path and h.size == path.stat().st_size
    assert isinstance(h.image_type, tuple) and all(isinstance(v, str) for v in h.image_type)
    for name in ("series_uid", "study_uid", "sop_instance_uid", "modality", "series_description"):
        value = getattr(h, name)
        assert value is None or isinstance(value, str), (name, value)
    for name in ("series_number", "instance_number", "rows", "columns", "number_of_frames"):
        value = getattr(h, name)
        assert value is None or isinstance(value, int), (name, value)


@fuzz_settings(short=1500)
@given(data=st.data(), mutations=MUTATIONS)
def test_mutated_dicom_files_never_crash_the_header_reader(
    tmp_path_factory: pytest.TempPathFactory, data, mutations
) -> None:
    seeds = dicom_seeds()
    seed = seeds[data.draw(st.integers(0, len(seeds) - 1), label="seed")]
    folder = tmp_path_factory.getbasetemp() / "fuzz-header"
    folder.mkdir(exist_ok=True)
    path = folder / "mutated.dcm"
    path.write_bytes(mutate(seed, mutations))
    try:
        header = read_header(path)
    except DicomReadError as exc:
        assert str(path) in exc.message  # names the file
        event(f"refused: {exc.message.removeprefix(f'{path}: ').split(' (')[0]}")
        return
    event("read")
    _check_header(header, path)


@fuzz_settings(short=200)
@given(data=st.data(), batch=st.lists(MUTATIONS, min_size=1, max_size=4))
def test_mutated_files_survive_a_scan_and_its_cache(
    tmp_path_factory: pytest.TempPathFactory, data, batch
) -> None:
    """What the reader returns is cached and read back unchanged (the cache is text)."""
    root = tmp_path_factory.getbasetemp() / "fuzz-scan"
    shutil.rmtree(root, ignore_errors=True)
    (root / "session").mkdir(parents=True)
    for i, mutations in enumerate(batch):
        seed = dicom_seeds()[data.draw(st.integers(0, len(dicom_seeds()) - 1), label=f"seed{i}")]
        (root / "session" / f"f{i}.dcm").write_bytes(mutate(seed, mutations))
    cache = root / "index-cache.tsv"
    first = list(scan_session(root / "session", cache_file=cache))
    again = list(scan_session(root / "session", cache_file=cache))
    assert len(first) == len(batch)
    assert all(isinstance(item, FileHeader | Problem) for item in first)

    def same(a: object, b: object) -> bool:  # NaN-tolerant equality of headers
        return a == b or repr(a) == repr(b)

    assert all(same(a, b) for a, b in zip(first, again, strict=True)), (first, again)


# --------------------------------------------------------------------------- archives

LIMITS = ExtractLimits(max_total_bytes=64 * MiB, max_members=5000, ratio_floor_bytes=1 * MiB)


def _tar(members: dict[str, bytes], mode: str, extra: list[tarfile.TarInfo] = ()) -> bytes:  # type: ignore[assignment]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tf:  # type: ignore[call-overload]
        for info in extra:
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@functools.cache
def archive_seeds() -> list[tuple[str, bytes]]:
    """(name, bytes) of small archives, hostile ones among them."""
    files = _synthetic(SeriesSpec("t1", 2, n_slices=2, rows=8, columns=8))
    members = {f"exam/s2/IM{i}.dcm": data for i, data in enumerate(files, start=1)}
    members["exam/README.txt"] = b"notes\n" * 20
    link = tarfile.TarInfo("exam/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    hard = tarfile.TarInfo("exam/passwd")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/passwd"
    dev = tarfile.TarInfo("exam/null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    hostile = {**members, "../escape.txt": b"x", "/abs.txt": b"x", "exam/link/x": b"x"}
    first = next(iter(members.values()))
    return [
        ("S.zip", _zip(members)),
        ("S.zip", _zip(members, zipfile.ZIP_STORED)),
        ("S.zip", _zip(hostile)),
        ("S.tar", _tar(members, "w", [link, hard, dev])),
        ("S.tar.gz", _tar(hostile, "w:gz", [link])),
        ("S.tgz", _tar(members, "w:gz")),
        ("S.tar.bz2", _tar(members, "w:bz2")),
        ("S.tar.xz", _tar(members, "w:xz")),
        ("IM1.dcm.gz", gzip.compress(first)),
        (
            "S.zip",
            _zip(
                {
                    "a/inner.tar.gz": _tar(members, "w:gz"),
                    "b/x.dcm.gz": gzip.compress(first),
                    "c/deeper.zip": _zip({"d.zip": _zip(members)}),
                }
            ),
        ),
        # a plain tar of archives: its members are not checksummed, so mutations reach
        # the nested archives, which expand_nested then meets damaged
        (
            "S.tar",
            _tar(
                {
                    "in/a.zip": _zip(members, zipfile.ZIP_STORED),
                    "in/b.tar": _tar(members, "w"),
                    "in/c.tar.gz": _tar(members, "w:gz"),
                    "in/IM1.dcm.gz": gzip.compress(first),
                },
                "w",
            ),
        ),
        ("S.tar", bz2.compress(_tar(members, "w"))),  # a .tar that is bzip2 inside
        ("S.gz", lzma.compress(first)),  # named gzip, is xz
    ]


def _entries(root: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st_ = os.lstat(path)
            kind = stat.S_IFMT(st_.st_mode)
            found[path.relative_to(root).as_posix()] = (
                kind,
                0 if kind == stat.S_IFDIR else st_.st_nlink,
            )
    return found


def _extract_checked(archive: Path, dest: Path, step: Callable[[], object]) -> None:
    """Run one extraction step; only ArchiveError may escape; check what it left."""
    case = archive.parent.parent
    outside_before = {k: v for k, v in _entries(case).items() if not k.startswith("out/")}
    data_before = archive.read_bytes()
    with contextlib.suppress(ArchiveError):
        step()
    outside_after = {k: v for k, v in _entries(case).items() if not k.startswith("out/")}
    assert outside_after == outside_before, "something was written outside the destination"
    assert archive.read_bytes() == data_before
    for rel, (kind, nlink) in _entries(dest).items() if dest.exists() else []:
        assert kind in (stat.S_IFREG, stat.S_IFDIR), f"{rel}: not a file or folder"
        assert kind == stat.S_IFDIR or nlink == 1, f"{rel}: a hard link"


@fuzz_settings(short=1200)
@given(data=st.data(), mutations=st.lists(MUTATION, max_size=3))
def test_mutated_archives_never_crash_the_extractor(
    tmp_path_factory: pytest.TempPathFactory,
    data,
    mutations,
) -> None:
    seeds = archive_seeds()
    name, seed = seeds[data.draw(st.integers(0, len(seeds) - 1), label="seed")]
    name = data.draw(st.sampled_from([name, name, "S.zip", "S.tar.gz", "S.gz", "S"]), label="name")
    case = tmp_path_factory.getbasetemp() / "fuzz-archive"
    shutil.rmtree(case, ignore_errors=True)
    (case / "inbox").mkdir(parents=True)
    (case / "out").mkdir()
    archive = case / "inbox" / name
    mutated = mutate(seed, mutations)
    assume(mutated)
    archive.write_bytes(mutated)
    dest = case / "out" / "dest"
    extracted: list[bool] = []

    def extract() -> None:
        extract_archive(archive, dest, LIMITS)
        extracted.append(True)

    _extract_checked(archive, dest, extract)
    if not extracted:
        assert not dest.exists(), "a failed extraction left its destination behind"
        event("extraction refused")
        return
    event("extracted")
    _extract_checked(archive, dest, lambda: expand_nested(dest, LIMITS))


# --------------------------------------------------------------------------- found by fuzzing


def _raw_zip(name: bytes, data: bytes) -> bytes:
    fields = (0, 0, 0, 0x21, zlib.crc32(data), len(data), len(data), len(name))
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, *fields, 0) + name + data
    central = (
        struct.pack("<4sHH", b"PK\x01\x02", 20, 20)
        + struct.pack("<HHHHIIIHHHHHII", *fields, 0, 0, 0, 0, 0, 0)
        + name
    )
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + eocd


def test_a_zip_member_with_an_empty_name_is_skipped(tmp_path: Path) -> None:
    """zipfile's ZipInfo.is_dir() raised IndexError on it: the whole run stopped (exit 1)."""
    archive = tmp_path / "empty-name.zip"
    archive.write_bytes(_raw_zip(b"", b"data"))
    problems = extract_archive(archive, tmp_path / "out", LIMITS)
    assert [(p.where, p.reason) for p in problems] == [("empty-name.zip:", "empty name")]
