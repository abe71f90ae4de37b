"""Tests of bidsport.index: session scanning, the header cache, exclusion and series."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import types
import weakref
from pathlib import Path

import nibabel as nib
import pydicom
import pytest
from pydicom.uid import UID

from bidsport import index
from bidsport.index import file_exclusion, group_series, scan_session
from bidsport.records import FileHeader, Problem, Series
from bidsport.synthetic import SeriesSpec, typical_session, uid, write_series

# --------------------------------------------------------------------------- helpers


def _headers(results: list[FileHeader | Problem]) -> list[FileHeader]:
    return [r for r in results if isinstance(r, FileHeader)]


def _problems(results: list[FileHeader | Problem]) -> list[Problem]:
    return [r for r in results if isinstance(r, Problem)]


def _write(
    spec: SeriesSpec, folder: Path, *, series_uid: str | None = None, tag: str = ""
) -> list[Path]:
    """Write a synthetic series; with ``series_uid``, under that UID (unique SOP UIDs)."""
    if series_uid is None:
        return write_series(spec, folder)
    spec = dataclasses.replace(spec, extra={**spec.extra, "SeriesInstanceUID": series_uid})
    paths = write_series(spec, folder, name_pattern=f"{tag}{{series:03d}}_{{instance:05d}}.dcm")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(
            uid(series_uid, path.name)
        )
        ds.save_as(path)
    return paths


def _series(folder: Path, *, keep_derived: bool = False) -> list[Series]:
    headers = _headers(list(scan_session(folder)))
    return group_series(h for h in headers if not file_exclusion(h, keep_derived=keep_derived))


def _junk_keeping_stat(path: Path) -> None:
    """Overwrite a file with non-DICOM bytes of the same size and modification time."""
    st = path.stat()
    path.write_bytes(b"J" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# --------------------------------------------------------------------------- scanning


def test_scan_walks_every_file_in_order(tmp_path: Path) -> None:
    root = tmp_path / "session"
    outside = tmp_path / "outside"
    write_series(SeriesSpec("t1", 2, n_slices=3), root / "a" / "b" / "c",
                 name_pattern="IM{instance:04d}")  # fmt: skip
    write_series(SeriesSpec("t2", 3, n_slices=2), root / "x")
    shutil.copy(root / "x" / "003_00001.dcm", root / "x" / ".hidden")
    (root / "notes.txt").write_text("not DICOM\n")
    write_series(SeriesSpec("other", 9, n_slices=2), outside / "series")
    (root / "linked_folder").symlink_to(outside / "series")  # not followed
    (root / "linked_file.dcm").symlink_to(outside / "series" / "009_00001.dcm")  # followed
    (root / "broken").symlink_to(tmp_path / "nowhere")
    cache = root / "index-cache.tsv"
    (root / ".index-cache.tsv.k2j4.tmp").write_text("left by a killed run")  # skipped too

    results = list(scan_session(root, cache_file=cache))
    rels = [
        r.where if isinstance(r, Problem) else r.path.relative_to(root).as_posix() for r in results
    ]
    assert rels == sorted(rels)
    assert rels == [
        "a/b/c/IM0001", "a/b/c/IM0002", "a/b/c/IM0003", "broken", "linked_file.dcm",
        "notes.txt", "x/.hidden", "x/003_00001.dcm", "x/003_00002.dcm",
    ]  # fmt: skip
    problems = {p.where: p for p in _problems(results)}
    assert problems["broken"].reason == "broken symbolic link"
    assert problems["notes.txt"].reason.startswith("not a DICOM file")
    assert all(p.stage == "organize" and not p.fatal for p in problems.values())
    linked = next(h for h in _headers(results) if h.path.name == "linked_file.dcm")
    assert linked.series_number == 9 and linked.path == root / "linked_file.dcm"
    assert cache.is_file()  # and the cache itself is never listed
    assert [r for r in scan_session(root, cache_file=cache)] == results


def test_parallel_scan_equals_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in typical_session()[:6]:
        write_series(spec, tmp_path / spec.description)
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 300)
    monkeypatch.setattr(index, "_CHUNK", 8)  # enough chunks for the worker pool
    serial = list(scan_session(tmp_path, n_procs=1))
    parallel = list(scan_session(tmp_path, n_procs=2))
    assert len(serial) > 2 * 8
    assert parallel == serial


def test_the_runs_pool_reads_a_small_session_in_its_workers(tmp_path: Path) -> None:
    """The run's worker processes, running already, read a session of a few dozen files
    (in chunks spread over them); before, fewer than 256 files were read in the main
    process, holding the GIL that the conversion threads wait for."""
    from concurrent.futures import Executor

    from bidsport.runner import process_pool

    for spec in typical_session()[:2]:  # localizer, T1w
        write_series(spec, tmp_path / spec.description)
    write_series(SeriesSpec("bold", 5, n_slices=4, n_volumes=6), tmp_path / "bold")
    chunks: list[int] = []  # the number of files of each chunk submitted

    class Counted(Executor):
        """The run's pool, counting the chunks it is given."""

        def __init__(self, pool: Executor) -> None:
            self.pool = pool

        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            chunks.append(len(args[0]))
            return self.pool.submit(fn, *args, **kwargs)

    serial = list(scan_session(tmp_path, n_procs=1))
    assert 16 <= len(serial) < 2 * index._CHUNK
    with process_pool(2) as pool:
        parallel = list(scan_session(tmp_path, n_procs=2, pool=Counted(pool)))
    assert parallel == serial
    assert len(chunks) == 4 and sum(chunks) == len(serial)  # a quarter each
    with process_pool(2) as pool:  # fewer than 16 files: read here
        chunks.clear()
        few = list(scan_session(tmp_path / "localizer", n_procs=2, pool=Counted(pool)))
    assert len(few) < 16 and chunks == []


def test_a_dead_worker_leaves_the_rest_of_the_scan_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A scan worker killed mid-session (the OOM killer, an admin) breaks the run's pool:
    the chunks its workers had read are kept, the others are read in this process, in
    order, with one warning naming where; a later session, the pool refusing its tasks,
    is read here at once."""
    from concurrent.futures import Executor, Future
    from concurrent.futures.process import BrokenProcessPool

    from bidsport import runner

    monkeypatch.setattr(runner, "_gone_pools", weakref.WeakSet())
    monkeypatch.setattr(index, "_CHUNK", 8)
    for spec in typical_session()[:2]:  # localizer, T1w
        write_series(spec, tmp_path / spec.description)
    write_series(SeriesSpec("bold", 5, n_slices=4, n_volumes=6), tmp_path / "bold")
    submitted: list[list[str]] = []

    class Dying(Executor):
        """A pool whose worker died while it read the second chunk: the tasks given
        before were read, the later ones refused (as a broken pool does)."""

        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            if len(submitted) >= 5:
                raise BrokenProcessPool("a worker died")
            submitted.append(args[0])
            future: Future[list[object]] = Future()
            if len(submitted) == 2:
                future.set_exception(BrokenProcessPool("a worker died"))
            else:
                future.set_result(fn(*args, **kwargs))
            return future

    serial = list(scan_session(tmp_path, n_procs=1))
    assert len(serial) == 33  # 5 chunks of 8 or 9
    with caplog.at_level("WARNING", logger="bidsport.runner"):
        dying = Dying()
        assert list(scan_session(tmp_path, n_procs=2, pool=dying)) == serial
        assert len(submitted) == 5
        assert list(scan_session(tmp_path, n_procs=2, pool=dying)) == serial  # refused
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "stopped unexpectedly" in warnings[0], warnings
    second = submitted[1]
    assert f"reading the headers of {len(second)} files, from {second[0]}" in warnings[0]


# --------------------------------------------------------------------------- cache


def test_cache_reuses_unchanged_files(tmp_path: Path) -> None:
    root = tmp_path / "session"
    paths = write_series(SeriesSpec("bold", 5, n_slices=3, n_volumes=2), root)
    cache = tmp_path / "cache" / "index.tsv"
    first = list(scan_session(root, cache_file=cache))
    assert len(_headers(first)) == 6

    # Proof that a cached file is not read again: its bytes become junk, its size and
    # modification time stay; without the cache it is a Problem, with it the old header.
    _junk_keeping_stat(paths[0])
    assert isinstance(next(iter(scan_session(root))), Problem)
    assert list(scan_session(root, cache_file=cache)) == first

    # A changed modification time means the file is read again.
    os.utime(paths[0], ns=(0, paths[0].stat().st_mtime_ns + 1_000_000_000))
    again = list(scan_session(root, cache_file=cache))
    assert isinstance(again[0], Problem) and again[0].where == paths[0].name
    assert again[1:] == first[1:]
    assert isinstance(next(iter(scan_session(root, cache_file=cache))), Problem)  # cached


def test_cache_survives_a_moved_session(tmp_path: Path) -> None:
    root = tmp_path / "session"
    paths = write_series(SeriesSpec("t1", 2, n_slices=3), root / "dicom")
    cache = tmp_path / "index.tsv"
    first = _headers(list(scan_session(root, cache_file=cache)))
    moved = tmp_path / "moved"
    root.rename(moved)
    _junk_keeping_stat(moved / "dicom" / paths[1].name)  # proves the cache is used
    after = _headers(list(scan_session(moved, cache_file=cache)))
    assert [h.path for h in after] == [moved / "dicom" / p.name for p in paths]
    assert [dataclasses.replace(h, path=Path()) for h in after] == [
        dataclasses.replace(h, path=Path()) for h in first
    ]


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff garbage \x89PNG",
        b"",
        b'{"bidsport_index": 999}\nnonsense\n',
        None,  # a valid cache with damaged lines (filled in below)
    ],
)
def test_corrupt_cache_is_ignored(tmp_path: Path, content: bytes | None) -> None:
    root = tmp_path / "session"
    paths = write_series(SeriesSpec("t1", 2, n_slices=4), root)
    cache = tmp_path / "index.tsv"
    expected = list(scan_session(root))
    if content is None:
        list(scan_session(root, cache_file=cache))
        lines = cache.read_bytes().splitlines(keepends=True)
        lines[1] = lines[1][:40] + b"\n"  # cut a line
        lines[2] = lines[2].rsplit(b"\t", 1)[0] + b'\t{"hedaer": []}\n'  # an unknown payload
        image_type = b'["ORIGINAL","PRIMARY","M","ND"]'
        assert image_type in lines[3]
        lines[3] = lines[3].replace(image_type, b'"ORIGINAL"')  # valid JSON, not a header
        assert lines[4].endswith(b"]\n")
        lines[4] = lines[4][: -len(b"]\n")] + b',"more"]\n'  # one value too many
        cache.write_bytes(b"".join(lines))
    else:
        cache.write_bytes(content)
    assert list(scan_session(root, cache_file=cache)) == expected
    # the cache was rewritten and is valid again: junk with the same stat is not read
    _junk_keeping_stat(paths[2])
    assert list(scan_session(root, cache_file=cache)) == expected


def test_cache_of_an_older_reader_is_read_again(tmp_path: Path) -> None:
    """A cache written before ``has_preamble`` existed is not trusted: files are re-read,
    and the field survives the new cache (organize relies on it to repair files)."""
    root = tmp_path / "session"
    paths = write_series(SeriesSpec("t1", 2, n_slices=3), root)
    cache = tmp_path / "index.tsv"
    first = list(scan_session(root, cache_file=cache))
    assert [h.has_preamble for h in _headers(first)] == [True, True, True]
    # the same cache as the previous reader wrote it: no has_preamble anywhere
    signature, *lines = cache.read_text(encoding="utf-8").splitlines()
    old = json.loads(signature)
    old["reader"] -= 1
    old["fields"] = [f for f in old["fields"] if f != "has_preamble"]
    stripped = [line.removesuffix(",true]") + "]" for line in lines]  # has_preamble: last
    assert all(line.endswith(",null]") for line in stripped)  # complex_image_component
    cache.write_text("\n".join([json.dumps(old), *stripped]) + "\n", encoding="utf-8")
    # the first file loses its preamble, keeping its size and modification time
    st = paths[0].stat()
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[128:] + bytes(128))
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    again = _headers(list(scan_session(root, cache_file=cache)))
    assert [h.has_preamble for h in again] == [False, True, True]  # read again, not cached
    cached = _headers(list(scan_session(root, cache_file=cache)))
    assert [h.has_preamble for h in cached] == [False, True, True]


def test_cache_is_written_atomically(tmp_path: Path) -> None:
    root = tmp_path / "session"
    write_series(SeriesSpec("t1", 2, n_slices=3), root)
    cache = tmp_path / "index.tsv"
    scan = scan_session(root, cache_file=cache)
    next(scan)
    assert isinstance(scan, types.GeneratorType)
    scan.close()  # stopped early: no (partial) cache is left behind
    assert not cache.exists()
    assert list(tmp_path.iterdir()) == [root]


# --------------------------------------------------------------------------- exclusion


@pytest.fixture(scope="module")
def mr_header(tmp_path_factory: pytest.TempPathFactory) -> FileHeader:
    folder = tmp_path_factory.mktemp("mr")
    path = write_series(SeriesSpec("t1", 2, n_slices=1), folder)[0]
    return index.read_header(path)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.66"}, "raw data (Raw Data Storage)"),
        ({"sop_class_uid": "1.3.12.2.1107.5.9.1"}, "Siemens CSA non-image"),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.22"}, "structured report"),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.59"}, "key object selection"),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.11.1"}, "presentation state"),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.104.1"}, "encapsulated PDF"),
        (
            {
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7",
                "series_description": "PhoenixZIPReport",
            },
            "scanner protocol report (PhoenixZIPReport)",
        ),
        (
            {"image_type": ("ORIGINAL", "PRIMARY", "OTHER", "CSA REPORT")},
            "scanner protocol report (ImageType",
        ),
        ({"modality": "CT"}, "modality CT is not MR"),
        ({"modality": None}, "modality (missing) is not MR"),
        ({"has_pixel_data": False}, "no pixel data"),
        ({"series_uid": None}, "no SeriesInstanceUID"),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.7"}, "secondary capture / screen save"),
        ({"image_type": ("DERIVED", "SECONDARY", "SCREEN SAVE")}, "secondary capture"),
        (
            {"image_type": ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")},
            "derived image (ImageType DERIVED\\PRIMARY\\DIFFUSION\\ADC)",
        ),
    ],
)
def test_file_exclusion(
    mr_header: FileHeader, changes: dict[str, object], reason: str | None
) -> None:
    h = dataclasses.replace(mr_header, **changes)  # type: ignore[arg-type]
    got = file_exclusion(h)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason), got


def test_keep_derived(mr_header: FileHeader) -> None:
    derived = dataclasses.replace(mr_header, image_type=("DERIVED", "PRIMARY", "MPR"))
    screen = dataclasses.replace(mr_header, sop_class_uid="1.2.840.10008.5.1.4.1.1.7")
    report = dataclasses.replace(screen, series_description="PhoenixZIPReport")
    assert file_exclusion(derived, keep_derived=True) is None
    assert file_exclusion(screen, keep_derived=True) is None
    assert file_exclusion(report, keep_derived=True) is not None  # never image data


# --------------------------------------------------------------------------- series


def test_typical_session(tmp_path: Path) -> None:
    for spec in typical_session():
        write_series(spec, tmp_path / f"{spec.series_number:02d}")
    series = _series(tmp_path)
    names = [s.header.series_description for s in series]
    assert names == [
        "localizer",
        "t1_mprage_sag",
        "t2_spc_sag",
        "t2_flair_tra",
        "rfMRI_REST_AP_SBRef",
        "rfMRI_REST_AP",
        "dMRI_dir6_AP",
        "gre_field_mapping",
        "gre_field_mapping",
    ]  # fmt: skip  (ADC map excluded as derived; fieldmaps ordered by series number)
    by_name = {s.header.series_description: s for s in series}
    assert by_name["rfMRI_REST_AP"].n_volumes == 5
    assert by_name["dMRI_dir6_AP"].n_volumes == 7
    assert by_name["dMRI_dir6_AP"].b_values == (0.0, 1000.0)
    assert by_name["t1_mprage_sag"].n_volumes == 1
    assert by_name["t1_mprage_sag"].n_files == 6
    assert all(s.series_id == s.header.series_uid and not s.merged_from for s in series)
    assert [s.echo_times for s in series[-2:]] == [(4.92,), (7.38,)]
    assert series[0].acquisition_time == "090000.000000"
    assert series[0].acquisition_date == "20240102"
    # files in instance order, header of the first instance
    bold = by_name["rfMRI_REST_AP"]
    assert [pydicom.dcmread(p).InstanceNumber for p in bold.files] == list(range(1, 31))
    assert bold.header.instance_number == 1


def test_group_series_is_deterministic(tmp_path: Path) -> None:
    for spec in typical_session()[:7]:
        write_series(spec, tmp_path / spec.description)
    headers = [h for h in _headers(list(scan_session(tmp_path))) if not file_exclusion(h)]
    shuffled = list(headers)
    random.Random(5).shuffle(shuffled)
    assert group_series(shuffled) == group_series(headers)


def test_magnitude_and_phase_in_one_series_are_split(tmp_path: Path) -> None:
    one_uid = uid("fieldmap-uid")
    mag = SeriesSpec("gre_field_mapping", 8, n_slices=3, echo_time=4.92)
    phase = dataclasses.replace(
        mag, image_type=("ORIGINAL", "PRIMARY", "P", "ND"), echo_time=7.38, echo_number=2
    )
    _write(mag, tmp_path, series_uid=one_uid, tag="m")
    _write(phase, tmp_path, series_uid=one_uid, tag="p")
    series = _series(tmp_path)
    assert sorted(s.series_id for s in series) == [f"{one_uid}-mag", f"{one_uid}-phase"]
    for s in series:
        assert s.n_files == 3 and s.n_volumes == 1
        assert len(s.image_types) == 1
    assert {s.image_types[0][2] for s in series} == {"M", "P"}


def test_echoes_stay_together_orientations_split(tmp_path: Path) -> None:
    echoes = uid("multi-echo")
    e1 = SeriesSpec("me_gre", 4, n_slices=3, echo_time=5.0, echo_number=1)
    _write(e1, tmp_path / "me", series_uid=echoes, tag="e1")
    _write(dataclasses.replace(e1, echo_time=10.0, echo_number=2), tmp_path / "me",
           series_uid=echoes, tag="e2")  # fmt: skip
    (series,) = _series(tmp_path / "me")
    assert series.series_id == echoes
    assert (series.echo_numbers, series.echo_times, series.n_volumes) == ((1, 2), (5.0, 10.0), 1)

    localizer = uid("3-plane")
    for plane in ("axial", "coronal", "sagittal"):
        spec = SeriesSpec("localizer", 1, n_slices=2, orientation=plane)
        _write(spec, tmp_path / "loc", series_uid=localizer, tag=plane)
    series_ids = sorted(s.series_id for s in _series(tmp_path / "loc"))
    assert series_ids == [f"{localizer}-geom{i}" for i in (1, 2, 3)]


def test_original_and_derived_split_when_kept(tmp_path: Path) -> None:
    one_uid = uid("mixed")
    spec = SeriesSpec("dwi", 7, n_slices=2)
    _write(spec, tmp_path, series_uid=one_uid, tag="o")
    derived = dataclasses.replace(spec, image_type=("DERIVED", "PRIMARY", "M", "ND"))
    _write(derived, tmp_path, series_uid=one_uid, tag="d")
    assert [s.series_id for s in _series(tmp_path)] == [one_uid]  # derived excluded
    kept = _series(tmp_path, keep_derived=True)
    assert sorted(s.series_id for s in kept) == [f"{one_uid}-derived", f"{one_uid}-original"]


def _mfsplit_run(
    folder: Path, key: str, number: int, start: str, n: int, **kw: object
) -> list[str]:
    """A run saved as one series per volume (Siemens XA interoperability export)."""
    uids = []
    for volume in range(n):
        seconds = int(start[4:6]) + volume  # TR 1 s
        spec = SeriesSpec(
            "fMRI_rest", number, n_slices=3, repetition_time=1000.0,
            image_type=("ORIGINAL", "PRIMARY", "M", "ND", "MFSPLIT"),
            acquisition_time=f"{start[:4]}{seconds:02d}.000000", **kw,  # type: ignore[arg-type]
        )  # fmt: skip
        uids.append(uid(key, volume))
        _write(spec, folder, series_uid=uids[-1], tag=f"{key}{volume}_")
    return uids


def test_mfsplit_volumes_are_merged(tmp_path: Path) -> None:
    run1 = _mfsplit_run(tmp_path, "run1", 6, "100000", 5)
    write_series(SeriesSpec("t1", 7, n_slices=3, acquisition_time="100100.000000"), tmp_path)
    run2 = _mfsplit_run(tmp_path, "run2", 8, "100200", 4)  # other series numbers...
    # ... and a run whose volumes have different series numbers (merged by name)
    run3 = []
    for volume in range(3):
        run3 += _mfsplit_run(tmp_path, f"run3v{volume}", 20 + volume, f"1003{volume:02d}", 1)
    series = _series(tmp_path)
    assert [(s.header.series_number, s.n_volumes, s.n_files) for s in series] == [
        (6, 5, 15), (7, 1, 3), (8, 4, 12), (20, 3, 9),
    ]  # fmt: skip
    assert series[0].merged_from == tuple(run1)
    assert series[0].series_id == f"{run1[0]}-mfsplit"
    assert series[2].merged_from == tuple(run2)
    assert series[3].merged_from == tuple(run3)
    assert series[1].merged_from == ()
    assert series[0].acquisition_time == "100000.000000"
    # volume order: all slices of volume 1, then volume 2, ...
    times = [pydicom.dcmread(p).AcquisitionTime for p in series[0].files]
    assert times == sorted(times)


def test_mfsplit_runs_apart_are_not_merged(tmp_path: Path) -> None:
    _mfsplit_run(tmp_path, "a", 6, "100000", 3)
    _mfsplit_run(tmp_path, "b", 6, "100500", 3)  # same series number, minutes later
    _mfsplit_run(tmp_path, "c", 6, "100003", 2, orientation="sagittal")  # other geometry
    series = _series(tmp_path)
    assert sorted((s.n_volumes, len(s.merged_from)) for s in series) == [(2, 2), (3, 3), (3, 3)]


def test_files_without_series_uid(tmp_path: Path, mr_header: FileHeader) -> None:
    a = dataclasses.replace(mr_header, series_uid=None, series_number=4, path=tmp_path / "a")
    b = dataclasses.replace(a, instance_number=2, path=tmp_path / "b",
                            image_position=(0.0, 0.0, 2.0))  # fmt: skip
    (series,) = group_series([b, a])
    assert series.series_id.startswith("nouid-4-")
    assert series.files == (tmp_path / "a", tmp_path / "b")


def test_enhanced_volume_counts(shared_data: Path) -> None:
    by_number = {s.header.series_number: s for s in _series(shared_data / "dcm_qa_enh/In")}
    assert by_number[6].n_volumes == 4  # 4 files of 6 frames, TemporalPositionIndex 1..4
    assert by_number[801].n_volumes == 1  # magnitude + field map frames of one 3D volume


# --------------------------------------------------------------------------- real data

#: dataset -> {(series number, manufacturer prefix): reference output stem in Ref/}
REFERENCES: dict[str, dict[tuple[int, str], str]] = {
    "dcm_qa_enh": {
        (801, "Philips"): "Philips_WIP_B0_NS_801_e1", (6, "Siemens"): "Siemens_REST1_w_SMS_PF7-8_6",
    },
    "dcm_qa_ge": {
        (1, "GE"): "Ax_DWI_TENSOR_R2_1", (4, "GE"): "Ax_DWI_TENSOR_R2MB2_4",
        (5, "GE"): "3D_Ax_T1_MP-RAGE_R22_5", (14, "GE"): "Ax_fMRI_HB3_48sl_int_asc_14",
    },
    "dcm_qa_nih": {
        **{(n, "GE"): f"DCM2NIIX_regression_test_{n}" for n in (4, 5, 6, 7)},
        (3, "SIEMENS"): "EPI_PE=AP_3", (4, "SIEMENS"): "EPI_PE=PA_4",
        (5, "SIEMENS"): "EPI_PE=RL_5", (6, "SIEMENS"): "EPI_PE=LR_6",
    },
    "dcm_qa_philips": {(201, "Philips"): "EPI_asc_CLEAR_201", (601, "Philips"): "WIP_dti_ax_601"},
    "dcm_qa_ts": {(n, "SIEMENS"): str(n) for n in range(1, 10)},
    "dcm_qa_uih": {
        (6, "UIH"): "dti_tra_dir16_PA_6_134431", (9, "UIH"): "dti_tra_dir16_AP_9_134431",
    },
}  # fmt: skip


@pytest.mark.parametrize("dataset", sorted(REFERENCES))
def test_real_sessions_match_dcm2niix(shared_data: Path, dataset: str) -> None:
    """Series and volume counts agree with what dcm2niix made from the same files (Ref/)."""
    results = list(scan_session(shared_data / dataset / "In"))
    assert all(p.where.endswith(".txt") for p in _problems(results))  # READMEs, notes
    headers = _headers(results)
    assert headers and not [h for h in headers if file_exclusion(h)]
    series = group_series(headers)
    found = {}
    for s in series:
        key = (s.header.series_number or 0, (s.header.manufacturer or "").split()[0])
        prefix = next(p for n, p in REFERENCES[dataset] if n == key[0] and key[1].startswith(p))
        found[(key[0], prefix)] = s
    assert set(found) == set(REFERENCES[dataset])
    ref = shared_data / dataset / "Ref"
    for key, stem in REFERENCES[dataset].items():
        s = found[key]
        nii, bval = ref / f"{stem}.nii", ref / f"{stem}.bval"
        if nii.exists():
            shape = nib.Nifti1Image.from_filename(nii).shape
            assert s.n_volumes == (shape[3] if len(shape) > 3 else 1), stem
        if bval.exists():
            bvals = [float(b) for b in bval.read_text().split()]
            extra = 1 if stem == "WIP_dti_ax_601" else 0  # dcm2niix drops Philips' isotropic
            assert s.n_volumes == len(bvals) + extra, stem
            if dataset != "dcm_qa_uih":  # UIH keeps b-values in a private tag we do not read
                assert set(s.b_values) == set(bvals), stem
