"""A hostile inbox through the whole CLI: one bad file never costs a session.

One participant-level run of ``bidsport.cli.run.main`` over an inbox that holds two good
packets beside every kind of bad input a PACS, a console or a collaborator may send:

* hostile archives (zip slip, tar members with absolute and ``..`` paths, a symbolic
  link followed by a write through it, hard links to ``/etc/passwd``, device nodes and
  FIFOs, decompression bombs of 3 GiB kept to ~3 MiB on disk, a corrupt zip, a broken
  gzip), each packet also holding a few good images;
* bad files inside an otherwise good packet (truncated, zero-byte, random bytes, DICOM
  without the 128-byte preamble, no SeriesInstanceUID, no pixel data, a broken
  ``.dcm.gz``, non-UTF-8 names, the same SOPInstanceUID twice with different content,
  a session spread over two StudyInstanceUIDs, links and FIFOs in the folder).

The run must convert the good data (and the group level must validate it), write
nothing outside OUTPUT_DIR and the work dir (the whole tmp_path tree and the temporary
folder are compared before and after), leave the inbox byte- and timestamp-identical,
end with exit code 3 (partial success), and name every bad packet on stderr and in the
run report. Every bad file is decided (used, or skipped with its reason) in the session's
``files.tsv``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from archive_fixtures import tar_member
from bidsport.cli.run import main
from bidsport.fileops import read_tsv
from bidsport.synthetic import SeriesSpec, Study, Subject, typical_session, uid, write_series
from bidsport.validator import find_validator, run_validator

MiB = 1024**2
GiB = 1024**3
#: the packet name ends with _V<n>: everything before it is the subject
NAMEFORMAT = r"^(?P<subject_id>.+?)_(?P<session_name>V\d+)"
SMALL_T1 = SeriesSpec(
    "t1_mprage_sag",
    2,
    n_slices=3,
    rows=8,
    columns=8,
    orientation="sagittal",
    scanning_sequence=("GR", "IR"),
    sequence_variant=("SK", "SP", "MP"),
    sequence_name="*tfl3d1_16ns",
    repetition_time=2300.0,
    echo_time=2.98,
    inversion_time=900.0,
)

#: packets whose session must fail (nothing usable, or hostile beyond repair)
FAILING = {
    "CORRUPT_V1.zip": "not a readable zip archive",
    "BROKENGZ_V1.dcm.gz": "damaged or truncated",
    "BOMB_V1.tar.gz": "max_ratio",
    "ZIPBOMB_V1.zip": "max_ratio",
}
#: packets that convert, with the members or files that were skipped (and why)
PARTIAL = {
    "ZIPSLIP_V1.zip": ["'..' in its path", "absolute path", "symbolic link"],
    "TARPATHS_V1.tar": ["'..' in its path", "absolute path"],
    "SYMLINK_V1.tar.gz": ["symbolic link to"],
    "HARDLINK_V1.tar": ["hard link to /etc/passwd", "hard link to ../../../../etc/passwd"],
    "DEVICE_V1.tar": ["device node", "FIFO"],
    "NESTED_V1.zip": ["nested archive not extracted"],
}


# --------------------------------------------------------------------------- archives


def write_tar(
    path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w"
) -> None:
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tf:  # type: ignore[call-overload]
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)


def zip_entry(name: str, data: bytes, mode: int | None = None) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 9, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    if mode is not None:
        info.create_system = 3
        info.external_attr = mode << 16
    return info, data


def write_zip(path: Path, entries: list[tuple[zipfile.ZipInfo, bytes]]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)


def raw_zip_bomb(n_blocks: int, block: int = 16 * MiB) -> bytes:
    """A zip whose one member declares n_blocks * block zero bytes (built without them)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = comp.compress(b"\0" * block) + comp.flush(zlib.Z_FULL_FLUSH)
    data = one * n_blocks + comp.flush(zlib.Z_FINISH)
    name = b"zeros.dcm"
    fields = (0, 8, 0, 0x21, 0, len(data), n_blocks * block, len(name))
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, *fields, 0) + name + data
    central = (
        struct.pack("<4sHH", b"PK\x01\x02", 20, 20)
        + struct.pack("<HHHHIIIHHHHHII", *fields, 0, 0, 0, 0, 0, 0)
        + name
    )
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + eocd


def gzip_bomb_tar(n_blocks: int, block: int = 16 * MiB) -> bytes:
    """A .tar.gz of one member of n_blocks * block zero bytes (one gzip block repeated)."""
    header = tar_member("zeros.dcm", None)[0]
    header.size = n_blocks * block
    one = gzip.compress(b"\0" * block, 9)
    return gzip.compress(header.tobuf(tarfile.GNU_FORMAT)) + one * n_blocks


# --------------------------------------------------------------------------- the inbox


def good_series(name: str, staging: Path) -> dict[str, bytes]:
    """The files of a small good T1 series (name → bytes)."""
    paths = write_series(SMALL_T1, staging / name, Subject(patient_id=f"ID{name}"), Study(key=name))
    return {p.name: p.read_bytes() for p in paths}


def reencoded(data: bytes, change: dict[str, object], delete: tuple[str, ...] = ()) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    for keyword in delete:
        delattr(ds, keyword)
    if "SOPInstanceUID" in change:
        ds.file_meta.MediaStorageSOPInstanceUID = change["SOPInstanceUID"]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_messy_packet(folder: Path) -> None:
    """A good session (T1w, T2w, FLAIR) full of bad files, in a folder packet."""
    subject = Subject(patient_id="IDMESSY")
    study = Study(key="messy")
    specs = {s.series_number: s for s in typical_session()}
    t1 = write_series(specs[2], folder / "t1", subject, study, name_pattern="IM{instance:05d}")
    t2 = write_series(specs[3], folder / "t2", subject, study, name_pattern="IM{instance:05d}")
    # The FLAIR comes from a second StudyInstanceUID (the patient was re-registered).
    write_series(specs[4], folder / "other_study", subject, Study(key="messy-2"))
    junk = folder / "junk"
    junk.mkdir()
    first = t1[0].read_bytes()
    (junk / "truncated.dcm").write_bytes(first[:300])
    (junk / "truncated_pixels.dcm").write_bytes(first[:-100])
    (junk / "empty.dcm").write_bytes(b"")
    (junk / "random.bin").write_bytes(np.random.default_rng(7).bytes(4096))
    (junk / "broken.dcm.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"not deflate at all" * 20)
    (junk / "no_series_uid.dcm").write_bytes(
        reencoded(first, {"SOPInstanceUID": uid("messy", "no-series")}, ("SeriesInstanceUID",))
    )
    (junk / "no_pixels.dcm").write_bytes(
        reencoded(first, {"SOPInstanceUID": uid("messy", "no-pixels")}, ("PixelData",))
    )
    # The same SOPInstanceUID as t1/IM00003, with other pixel values, sorted after it.
    third = pydicom.dcmread(t1[2])
    third.PixelData = bytes(len(third.PixelData))
    (folder / "zz_resent").mkdir()
    third.save_as(folder / "zz_resent" / "IM00003", enforce_file_format=True)
    # DICOM without the 128-byte preamble: meta group first, and "DICM" first.
    for path, cut in ((t2[1], 132), (t2[3], 128)):
        data = path.read_bytes()
        path.unlink()
        path.with_name(path.name + "_nopreamble").write_bytes(data[cut:])
    # A name that is not UTF-8.
    os.rename(t2[4], os.fsencode(t2[4].parent) + b"/IM\xff\xfe05")
    os.symlink("/etc/passwd", folder / "junk" / "passwd_link")
    os.mkfifo(folder / "junk" / "fifo")


def write_hostile_inbox(inbox: Path, outside: Path, staging: Path) -> None:
    inbox.mkdir(parents=True)
    outside.mkdir(parents=True)
    # ---- good packets
    specs = {s.series_number: s for s in typical_session()}
    for number in (2, 3, 5, 6):
        write_series(specs[number], inbox / "GOOD_V1", Subject(patient_id="IDGOOD"))
    write_messy_packet(inbox / "MESSY_V1")
    non_utf8 = os.fsencode(inbox) + b"/NON\xffUTF_V1"
    os.mkdir(non_utf8)
    for name, data in good_series("nonutf8", staging).items():
        Path(os.fsdecode(non_utf8), name).write_bytes(data)

    # ---- hostile archives, each also carrying a small good series
    def good(prefix: str) -> dict[str, bytes]:
        return {
            f"{prefix}{name}": data
            for name, data in good_series(prefix.strip("/"), staging).items()
        }

    write_zip(
        inbox / "ZIPSLIP_V1.zip",
        [
            zip_entry("../../../../evil_zipslip.txt", b"escaped"),
            zip_entry("ok/../../../evil_zipslip2.txt", b"escaped"),
            zip_entry("/tmp/evil_zipslip_abs.txt", b"escaped"),
            zip_entry("..\\..\\evil_zipslip_bs.txt", b"escaped"),
            zip_entry("link", str(outside).encode(), mode=stat.S_IFLNK | 0o777),
            zip_entry("link/evil.txt", b"through the link"),
            *(zip_entry(n, d) for n, d in good("zipslip/").items()),
        ],
    )
    write_tar(
        inbox / "TARPATHS_V1.tar",
        [
            tar_member("/tmp/evil_tar_abs.txt", b"escaped"),
            tar_member(str(outside / "evil_tar_abs2.txt"), b"escaped"),
            tar_member("../../evil_tar_dotdot.txt", b"escaped"),
            tar_member("a/../../evil_tar_dotdot2.txt", b"escaped"),
            *(tar_member(n, d) for n, d in good("tarpaths/").items()),
        ],
    )
    write_tar(
        inbox / "SYMLINK_V1.tar.gz",
        [
            tar_member("d", type=tarfile.SYMTYPE, linkname=str(outside)),
            tar_member("d/evil.txt", b"written through the link?"),
            tar_member("rel", type=tarfile.SYMTYPE, linkname="../../../outside"),
            tar_member("rel/evil.txt", b"written through the relative link?"),
            *(tar_member(n, d) for n, d in good("symlink/").items()),
        ],
        mode="w:gz",
    )
    write_tar(
        inbox / "HARDLINK_V1.tar",
        [
            tar_member("passwd", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
            tar_member("passwd", b"write through the hard link?"),
            tar_member("rel_passwd", type=tarfile.LNKTYPE, linkname="../../../../etc/passwd"),
            *(tar_member(n, d) for n, d in good("hardlink/").items()),
        ],
    )
    write_tar(
        inbox / "DEVICE_V1.tar",
        [
            tar_member("dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
            tar_member("dev/sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0),
            tar_member("dev/pipe", type=tarfile.FIFOTYPE),
            *(tar_member(n, d) for n, d in good("device/").items()),
        ],
    )
    # a zip holding a good tar.gz and a damaged one
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        for name, data in good("series/").items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    write_zip(
        inbox / "NESTED_V1.zip",
        [
            zip_entry("exam/series.tar.gz", inner.getvalue()),
            zip_entry("exam/damaged.tar.gz", inner.getvalue()[:200]),
        ],
    )
    # ---- packets that cannot be used at all
    n_blocks = 3 * GiB // (16 * MiB)
    (inbox / "BOMB_V1.tar.gz").write_bytes(gzip_bomb_tar(n_blocks))
    (inbox / "ZIPBOMB_V1.zip").write_bytes(raw_zip_bomb(n_blocks))
    good_zip = io.BytesIO()
    with zipfile.ZipFile(good_zip, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in good("corrupt/").items():
            zf.writestr(name, data)
    (inbox / "CORRUPT_V1.zip").write_bytes(good_zip.getvalue()[: len(good_zip.getvalue()) // 2])
    (inbox / "BROKENGZ_V1.dcm.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + b"\xff" * 64)
    # ---- inbox entries that are not packets
    (inbox / "notes.txt").write_text("sent by the PACS\n")
    (inbox / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")


# --------------------------------------------------------------------------- snapshots


def snapshot(root: Path, exclude: tuple[Path, ...] = ()) -> dict[str, tuple[int, int, int, str]]:
    """Every entry below ``root`` (not following links): mode, size, mtime and content hash."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in exclude]
        for name in dirnames + filenames:
            path = here / name
            if path in exclude:
                continue
            st = os.lstat(path)
            digest = ""
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(path)
            found[os.fsdecode(path.relative_to(root))] = (
                st.st_mode,
                0 if stat.S_ISDIR(st.st_mode) else st.st_size,
                st.st_mtime_ns,
                digest,
            )
    return found


@dataclass(frozen=True)
class HostileRun:
    inbox: Path
    out: Path
    work: Path
    code: int
    stderr: str
    stdout: str
    tree_before: dict[str, tuple[int, int, int, str]]
    tree_after: dict[str, tuple[int, int, int, str]]
    inbox_before: dict[str, tuple[int, int, int, str]]
    temp_left: list[str]

    @property
    def report(self) -> dict:  # type: ignore[type-arg]
        reports = sorted((self.out / "derivatives/bidsport/logs").glob("*_report.json"))
        assert len(reports) == 1, reports
        return dict(json.loads(reports[0].read_text()))

    def session(self, subject: str) -> dict:  # type: ignore[type-arg]
        return next(s for s in self.report["sessions"] if s["participant_id"] == f"sub-{subject}")

    def files(self, subject: str) -> dict[str, str]:
        table = self.out / f"sourcedata/bidsport/sub-{subject}/ses-V1/files.tsv"
        return {r["file"]: r["excluded"] for r in read_tsv(table)}


@contextlib.contextmanager
def private_tempdir(folder: Path) -> Iterator[Path]:
    """Point the temporary folder of this process and of its children at ``folder``.

    The machine is shared, so the real /tmp changes under our feet; a private one shows
    exactly what the run wrote there (it must stay empty).
    """
    folder.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(folder))
        for var in ("TMPDIR", "TEMP", "TMP"):
            mp.setenv(var, str(folder))
        yield folder


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> HostileRun:
    base = tmp_path_factory.mktemp("hostile")
    inbox, out, work = base / "inbox", base / "bids", base / "work"
    write_hostile_inbox(inbox, base / "outside", base / "staging")
    inbox_before = snapshot(inbox)
    with private_tempdir(base / "systmp") as systmp:
        tree_before = snapshot(base)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(
                [
                    str(inbox),
                    str(out),
                    "participant",
                    "--nameformat",
                    NAMEFORMAT,
                    "-w",
                    str(work),
                    "--n-procs",
                    "2",
                ]
            )
        tree_after = snapshot(base, exclude=(out, work))
        temp_left = sorted(os.listdir(systmp))
    return HostileRun(
        inbox,
        out,
        work,
        code,
        stderr.getvalue(),
        stdout.getvalue(),
        tree_before,
        tree_after,
        inbox_before,
        temp_left,
    )


# --------------------------------------------------------------------------- the run


def test_the_run_ends_with_partial_success(hostile: HostileRun) -> None:
    assert hostile.code == 3, hostile.stderr
    assert hostile.report["exit_code"] == 3
    assert "internal error" not in hostile.stderr


def test_nothing_is_written_outside_the_output_and_work_dirs(hostile: HostileRun) -> None:
    before = {k: v for k, v in hostile.tree_before.items() if not k.startswith(("bids", "work"))}
    assert hostile.tree_after == before
    assert hostile.temp_left == []
    assert not any(p.name.startswith("evil") for p in Path("/tmp").iterdir())
    # no link in the output dataset points outside it
    root = os.path.realpath(hostile.out)
    for dirpath, dirnames, filenames in os.walk(hostile.out):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                assert not os.path.isabs(os.readlink(path)), path
                assert os.path.realpath(path).startswith(root + os.sep), path
    # nothing escaped into the work dir's parent, and the work dir was cleaned
    assert sorted(p.name for p in hostile.work.iterdir()) == []


def test_the_inbox_is_unchanged(hostile: HostileRun) -> None:
    assert snapshot(hostile.inbox) == hostile.inbox_before


def test_good_packets_convert_completely(hostile: HostileRun) -> None:
    good = hostile.out / "sub-GOOD/ses-V1"
    names = sorted(str(p.relative_to(good)) for p in good.rglob("*.nii.gz"))
    assert names == [
        "anat/sub-GOOD_ses-V1_T1w.nii.gz",
        "anat/sub-GOOD_ses-V1_T2w.nii.gz",
        "func/sub-GOOD_ses-V1_task-rest_dir-AP_bold.nii.gz",
        "func/sub-GOOD_ses-V1_task-rest_dir-AP_sbref.nii.gz",
    ]
    messy = hostile.out / "sub-MESSY/ses-V1/anat"
    # every slice is there: the files without preamble and with a non-UTF-8 name are used
    for suffix in ("T1w", "T2w", "FLAIR"):
        img = nib.load(messy / f"sub-MESSY_ses-V1_{suffix}.nii.gz")
        assert 6 in img.shape, (suffix, img.shape)
    # the two files without preamble are repaired copies in the organized folder
    flat = hostile.out / "sourcedata/dicom/sub-MESSY/ses-V1"
    copies = [p for p in flat.iterdir() if not p.is_symlink()]
    assert len(copies) == 2 and all(p.read_bytes()[128:132] == b"DICM" for p in copies)
    # the re-sent T1 slice (same SOPInstanceUID, zeroed pixels) was not used
    t1 = np.asarray(nib.load(messy / "sub-MESSY_ses-V1_T1w.nii.gz").dataobj)
    assert all(t1.take(i, axis=int(np.argmin(t1.shape))).any() for i in range(6))
    for packet in PARTIAL:
        subject = packet.split("_V1")[0]
        images = list((hostile.out / f"sub-{subject}/ses-V1").rglob("*_T1w.nii.gz"))
        assert len(images) == 1, packet
    assert (hostile.out / "sub-NONUTF/ses-V1/anat/sub-NONUTF_ses-V1_T1w.nii.gz").is_file()


def test_every_bad_file_is_decided_in_the_files_table(hostile: HostileRun) -> None:
    files = hostile.files("MESSY")
    expected = {
        "MESSY_V1/junk/truncated.dcm": "truncated",
        "MESSY_V1/junk/truncated_pixels.dcm": "truncated",
        "MESSY_V1/junk/empty.dcm": "empty file",
        "MESSY_V1/junk/random.bin": "not a DICOM file",
        "MESSY_V1/junk/broken.dcm.gz": "not a DICOM file",
        "MESSY_V1/junk/no_series_uid.dcm": "SeriesInstanceUID",
        "MESSY_V1/junk/no_pixels.dcm": "no pixel data",
        "MESSY_V1/zz_resent/IM00003": "SOPInstanceUID",
    }
    for name, reason in expected.items():
        assert reason in files.get(name, "(not in files.tsv)"), (name, files.get(name))
    used = [
        "MESSY_V1/t1/IM00003",
        "MESSY_V1/t2/IM00002_nopreamble",
        "MESSY_V1/t2/IM00004_nopreamble",
        "MESSY_V1/t2/IM__05",
    ]
    for name in used:
        assert files.get(name) == "n/a", (name, files.get(name))
    assert sum(1 for reason in files.values() if reason == "n/a") == 18  # 3 series x 6
    # what the import skipped is in the report of the session
    problems = " | ".join(
        f"{p['where']}: {p['reason']}" for p in hostile.session("MESSY")["problems"]
    )
    for fragment in (
        "passwd_link: symbolic link to /etc/passwd",
        "fifo: not a regular file",
        "IM__05: renamed",
        "broken.dcm.gz: nested archive not extracted",
    ):
        assert fragment in problems, fragment


def test_two_studies_of_one_session_are_merged(hostile: HostileRun) -> None:
    rows = read_tsv(hostile.out / "sourcedata/bidsport/sub-MESSY/ses-V1/series.tsv")
    assert sorted(r["suffix"] for r in rows) == ["FLAIR", "T1w", "T2w"]
    assert all(r["excluded"] == "n/a" for r in rows)


def test_every_bad_packet_is_named_on_stderr_and_in_the_report(hostile: HostileRun) -> None:
    report = hostile.report
    for packet, reason in FAILING.items():
        subject = packet.split("_V1")[0]
        session = hostile.session(subject)
        assert session["status"] == "failed", packet
        assert reason in session["error"], (packet, session["error"])
        assert packet in session["error"], packet
        assert f"sub-{subject}_ses-V1: FAILED" in hostile.stdout
        assert packet in hostile.stderr or packet in hostile.stdout, packet
    for packet, reasons in PARTIAL.items():
        subject = packet.split("_V1")[0]
        session = hostile.session(subject)
        assert session["status"] == "done", packet
        text = " | ".join(f"{p['where']}: {p['reason']}" for p in session["problems"])
        for reason in reasons:
            assert reason in text, (packet, reason, text)
        assert packet in text or packet.split(".")[0] in text, text
        assert "importing-" not in text, text  # no name of a working copy in the reasons
        assert packet.split(".")[0] in hostile.stderr, packet  # the packet name
    not_packets = {p["where"]: p["reason"] for p in report["packets_not_imported"]}
    assert set(not_packets) == {"notes.txt", "DICOMDIR"}
    assert report["summary"]["failed"] == len(FAILING)
    assert report["summary"]["done"] == len(PARTIAL) + 3  # GOOD, MESSY, NONUTF


def test_the_status_table_says_what_did_not_finish(hostile: HostileRun) -> None:
    rows = {r["participant_id"]: r for r in read_tsv(hostile.out / "sourcedata/status.tsv")}
    for packet in FAILING:
        row = rows[f"sub-{packet.split('_V1')[0]}"]
        assert row["converted"] == "false" and row["last_error"] != "n/a", row
    for subject in ("GOOD", "MESSY", "NONUTF", *(p.split("_V1")[0] for p in PARTIAL)):
        assert rows[f"sub-{subject}"]["converted"] == "true", subject


def test_failed_archives_leave_no_partial_import(hostile: HostileRun) -> None:
    raw = hostile.out / "sourcedata/raw"
    for packet in FAILING:
        subject = packet.split("_V1")[0]
        assert not [p for p in (raw / f"sub-{subject}").rglob("*") if not p.is_dir()], packet
    assert not list(raw.rglob(".*"))  # no hidden leftovers of interrupted imports


def test_the_group_level_validates(hostile: HostileRun) -> None:
    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")
    code = main([str(hostile.inbox), str(hostile.out), "group", "--skip-validation", "-q"])
    assert code == 3  # sessions of hostile packets failed: the curation is not complete
    result = run_validator(hostile.out)
    assert result.ran
    assert not result.errors, [e.describe() for e in result.errors]


# --------------------------------------------------------------------------- split sessions


def test_a_series_split_across_packets_is_merged(tmp_path: Path) -> None:
    """A session sent in two parts, the second later, with a series cut between them."""
    t1 = write_series(typical_session()[1], tmp_path / "staging", Subject(patient_id="IDSPLIT"))
    bold = typical_session()[5]
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    part1, part2 = inbox / "SPLIT_V1_part1", inbox / "SPLIT_V1_part2"
    part1.mkdir(parents=True)
    for path in t1[:3]:
        (part1 / path.name).write_bytes(path.read_bytes())
    args = [str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT, "-q"]
    assert main(args) == 0
    anat = out / "sub-SPLIT/ses-V1/anat/sub-SPLIT_ses-V1_T1w.nii.gz"
    assert nib.load(anat).shape == (3, 16, 16)
    # the rest arrives: the session is done again with both packets, nothing renamed
    part2.mkdir()
    for path in t1[3:]:
        (part2 / path.name).write_bytes(path.read_bytes())
    write_series(bold, part2, Subject(patient_id="IDSPLIT"))
    assert main(args) == 0
    assert nib.load(anat).shape == (6, 16, 16)
    assert (out / "sub-SPLIT/ses-V1/func/sub-SPLIT_ses-V1_task-rest_dir-AP_bold.nii.gz").is_file()
    files = read_tsv(out / "sourcedata/bidsport/sub-SPLIT/ses-V1/files.tsv")
    assert {r["file"].split("/")[0] for r in files} == {"SPLIT_V1_part1", "SPLIT_V1_part2"}
    (row,) = read_tsv(out / "sourcedata/status.tsv")
    assert row["packet"] == "SPLIT_V1_part1;SPLIT_V1_part2" and row["converted"] == "true"
    reports = sorted((out / "derivatives/bidsport/logs").glob("*_report.json"))
    (session,) = json.loads(reports[-1].read_text())["sessions"]
    assert session["packets"] == ["SPLIT_V1_part1", "SPLIT_V1_part2"]


# --------------------------------------------------------------------------- output and input


def test_an_unwritable_output_path_fails_clearly_and_loses_nothing(tmp_path: Path) -> None:
    """A session whose BIDS folder cannot be made (as on a read-only or full disk)."""
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_series(SMALL_T1, inbox / "DONE_V1", Subject(patient_id="IDDONE"), Study("done"))
    args = [str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT]
    assert run(args)[0] == 0
    done = snapshot(out / "sub-DONE")
    write_series(SMALL_T1, inbox / "LATE_V1", Subject(patient_id="IDLATE"), Study("late"))
    (out / "sub-LATE").write_text("a file where the subject folder must go\n")
    code, stdout, stderr = run(args)
    assert code == 3, stderr
    blocked = out / "sub-LATE" / "ses-V1" / "anat"
    assert f"cannot write {blocked}" in stdout + stderr  # names the path
    assert snapshot(out / "sub-DONE") == done  # what was done is untouched
    rows = {r["participant_id"]: r for r in read_tsv(out / "sourcedata/status.tsv")}
    assert rows["sub-DONE"]["converted"] == "true"
    assert rows["sub-LATE"]["converted"] == "false"
    assert str(blocked) in rows["sub-LATE"]["last_error"]
    # once the way is clear, the next run finishes the job
    (out / "sub-LATE").unlink()
    assert run(args)[0] == 0
    assert (out / "sub-LATE/ses-V1/anat/sub-LATE_ses-V1_T1w.nii.gz").is_file()


def test_archive_move_only_takes_packets_that_were_converted(tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_series(SMALL_T1, inbox / "GOOD_V1", Subject(patient_id="IDGOOD"), Study("good"))
    (inbox / "CORRUPT_V1.zip").write_bytes(b"PK\x03\x04" + bytes(200))
    corrupt = inbox / "CORRUPT_V1.zip"
    before = (corrupt.read_bytes(), corrupt.stat().st_mtime_ns)
    code, _, stderr = run(
        [str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT, "--archive", "move"]
    )
    assert code == 3, stderr
    assert sorted(p.name for p in inbox.iterdir()) == ["CORRUPT_V1.zip"]
    assert (corrupt.read_bytes(), corrupt.stat().st_mtime_ns) == before  # never touched
    moved = out / "sourcedata/packets/GOOD_V1"
    assert len(list(moved.iterdir())) == 3
    assert (out / "sub-GOOD/ses-V1/anat/sub-GOOD_ses-V1_T1w.nii.gz").is_file()


def test_clashing_packet_names_fail_and_special_files_are_not_archived(tmp_path: Path) -> None:
    """X_V1/ and X_V1.zip would be imported into one folder, one replacing the other: both
    fail before anything is imported, and --archive move leaves them in the inbox. A FIFO
    in another packet is skipped by the import and by the archive copy (it hung it)."""
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_series(SMALL_T1, inbox / "X_V1" / "S2", Subject(patient_id="IDX"), Study("x"))
    staged = write_series(SMALL_T1, tmp_path / "staging", Subject(patient_id="IDX"), Study("x2"))
    with zipfile.ZipFile(inbox / "X_V1.zip", "w") as zf:
        for path in staged:
            zf.write(path, f"S3/{path.name}")
    write_series(SMALL_T1, inbox / "F_V1", Subject(patient_id="IDF"), Study("f"))
    os.mkfifo(inbox / "F_V1" / "pipe")
    clashing = {name: snapshot(inbox / name) for name in ("X_V1", "X_V1.zip")}
    code, stdout, stderr = run(
        [str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT, "--archive", "move"]
    )
    assert code == 3, stderr
    said = stdout + stderr
    assert (
        "inbox entry 'X_V1' has the same packet name 'X_V1' as inbox entry(ies) 'X_V1.zip'" in said
    )
    assert (
        "inbox entry 'X_V1.zip' has the same packet name 'X_V1' as inbox entry(ies) 'X_V1'" in said
    )
    assert sorted(os.listdir(inbox)) == ["X_V1", "X_V1.zip"]
    assert {name: snapshot(inbox / name) for name in clashing} == clashing
    assert not (out / "sub-X").exists() and not (out / "sourcedata/raw/sub-X").exists()
    assert (out / "sub-F/ses-V1/anat/sub-F_ses-V1_T1w.nii.gz").is_file()
    moved = out / "sourcedata/packets/F_V1"
    assert sorted(os.listdir(moved)) == sorted(p.name for p in staged)  # all but the FIFO
    assert "F_V1" in said and "pipe not archived" in said
    rows = {r["participant_id"]: r for r in read_tsv(out / "sourcedata/status.tsv")}
    assert rows["sub-F"]["converted"] == "true" and rows["sub-F"]["last_error"] == "n/a"


def bidsport_where_permissions_hold() -> list[str]:
    """The command that runs bidsport where file permissions hold: as root, without the
    capabilities that override them (the test is skipped without setpriv)."""
    cmd = [sys.executable, "-c", "import sys; from bidsport.cli.run import main; sys.exit(main())"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        cmd = [setpriv, "--inh-caps=-all", "--bounding-set=-all", *cmd]
    return cmd


def test_an_unreadable_series_folder_fails_its_session_and_is_not_deleted(
    tmp_path: Path,
) -> None:
    """A series folder of mode 000 (run where permissions hold: as root, without the
    capabilities that override them): the session fails naming the folder, and
    --archive delete deletes the other packet only (it used to half-delete this one)."""
    cmd = bidsport_where_permissions_hold()
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_series(SMALL_T1, inbox / "A_V1" / "S2", Subject(patient_id="IDA"), Study("a"))
    write_series(SMALL_T1, inbox / "A_V1" / "S3", Subject(patient_id="IDA"), Study("a"))
    write_series(SMALL_T1, inbox / "B_V1", Subject(patient_id="IDB"), Study("b"))
    (inbox / "A_V1" / "S3").chmod(0)
    before = snapshot(inbox / "A_V1")
    args = [str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT, "--archive", "delete"]
    try:
        done = subprocess.run(
            [*cmd, *args, "-w", str(tmp_path / "work")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        (inbox / "A_V1" / "S3").chmod(0o755)
    assert done.returncode == 3, done.stderr
    assert "cannot read folder 'S3' of packet A_V1: Permission denied" in done.stderr
    (inbox / "A_V1" / "S3").chmod(0)
    assert snapshot(inbox / "A_V1") == before  # not deleted, not even in part
    (inbox / "A_V1" / "S3").chmod(0o755)
    assert sorted(os.listdir(inbox)) == ["A_V1"]  # B_V1 converted, then deleted
    rows = {r["participant_id"]: r for r in read_tsv(out / "sourcedata/status.tsv")}
    assert "cannot read folder 'S3' of packet A_V1" in rows["sub-A"]["last_error"]
    assert rows["sub-B"]["last_error"] == "n/a"


def run(args: list[str]) -> tuple[int, str, str]:
    """``main(args)``: (exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(args)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.mark.parametrize("policy", ["move", "delete"])
@pytest.mark.parametrize("damage", ["cut short", "a member twice"])
def test_a_packet_with_files_not_imported_stays_in_the_inbox(
    tmp_path: Path, policy: str, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The images beside a damaged nested archive, or beside an archive member skipped for
    its name, are converted; what was not imported is only in the inbox, so --archive
    move/delete must not take the packet from it."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    write_series(SeriesSpec("t1_mprage", 2), inbox / "P01" / "t1")
    whole = io.BytesIO()
    with zipfile.ZipFile(whole, "w") as zf:
        zf.writestr("IM0001", b"x" * 4096)
        if damage == "a member twice":
            with pytest.warns(UserWarning, match="Duplicate name"):
                zf.writestr("IM0001", b"y" * 4096)
    data = whole.getvalue()
    (inbox / "P01" / "more.zip").write_bytes(data[:100] if damage == "cut short" else data)
    before = sorted(p.relative_to(inbox) for p in inbox.rglob("*"))
    assert main([str(inbox), str(out), "participant", "--archive", policy]) == 0
    text = capsys.readouterr()
    assert "sub-P01: 1 images" in text.out
    said = "nested archive not extracted" if damage == "cut short" else "duplicate name"
    assert "more.zip" in text.err and said in text.err
    verb = "moved" if policy == "move" else "deleted"
    assert f"not {verb} (--archive {policy}): files of it were not imported" in text.err
    assert sorted(p.relative_to(inbox) for p in inbox.rglob("*")) == before
    assert not (out / "sourcedata" / "packets").exists()


def test_an_output_dir_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    """As a folder docker made for a mount, owned by root, is to the container's user:
    exit 2 and a hint, not an internal error with a traceback."""
    cmd = bidsport_where_permissions_hold()
    inbox, out = tmp_path / "inbox", tmp_path / "bids"
    write_series(SMALL_T1, inbox / "A_V1" / "S2", Subject(patient_id="IDA"), Study("a"))
    out.mkdir()
    out.chmod(0o555)
    try:
        for where in (out, out / "deeper"):
            done = subprocess.run(
                [*cmd, str(inbox), str(where), "participant"], capture_output=True, text=True
            )
            assert done.returncode == 2, done.stderr
            assert f"cannot write to OUTPUT_DIR {where}" in done.stderr
            assert "Traceback" not in done.stderr
    finally:
        out.chmod(0o755)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "damage", ["tar cut at a member's end", "two tars joined", "a member named ../x"]
)
def test_a_tar_read_in_part_stays_in_the_inbox(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tar cut at a member's end reads as complete but for its end-of-archive marker,
    and tar stops at the first one of two tars joined: what it read is converted, and
    --archive delete must not take the packet, which may hold more."""
    made = tmp_path / "made"
    write_series(SeriesSpec("t1_mprage", 3), made / "t1")
    members = sorted(p for p in made.rglob("*") if p.is_file())

    def tar_of(paths: list[Path], names: list[str] | None = None) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for i, path in enumerate(paths):
                tf.add(path, arcname=names[i] if names else path.relative_to(made).as_posix())
        return buf.getvalue()

    def size_in_tar(path: Path) -> int:  # its header block and its data, in blocks
        return tarfile.BLOCKSIZE * (1 + -(-path.stat().st_size // tarfile.BLOCKSIZE))

    names = [m.relative_to(made).as_posix() for m in members]
    if damage == "tar cut at a member's end":  # all but the last one
        data = tar_of(members)[: sum(size_in_tar(m) for m in members[:-1])]
    elif damage == "two tars joined":
        data = tar_of(members[:-1]) + tar_of(members[-1:])
    else:
        data = tar_of(members, [*names[:-1], "../x"])
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    (inbox / "P01.tar").write_bytes(data)
    assert main([str(inbox), str(out), "participant", "--archive", "delete"]) == 0
    text = capsys.readouterr()
    assert "sub-P01: 1 images" in text.out  # of the files read
    assert "not deleted (--archive delete): files of it were not imported" in text.err
    assert (inbox / "P01.tar").read_bytes() == data


def test_a_reader_that_goes_away_ends_the_run_quietly(tmp_path: Path) -> None:
    """``bidsport ... --list-participants | head -1``: the reader closes the pipe; the
    run ends with 141 (as a shell says of SIGPIPE), no traceback, no "internal error"."""
    inbox = tmp_path / "inbox"
    for label in ("A_V1", "B_V1"):
        write_series(SMALL_T1, inbox / label / "S2", Subject(patient_id=label), Study(label))
    cmd = [sys.executable, "-m", "bidsport", str(inbox), str(tmp_path / "out")]  # __main__
    cmd += ["participant", "--nameformat", NAMEFORMAT, "--list-participants"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141, err
    assert "Traceback" not in err and "internal error" not in err


def test_a_series_with_a_slice_missing_is_flagged_not_doubled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A slice missing from the middle of a volume: dcm2niix writes the image as read and
    a copy resampled to equal spacing (``_Eq_1``, without a sidecar). bidsport exports the
    first, not the copy (no ``acq-1eq`` image), says what dcm2niix said, and flags the
    series for review in series.tsv."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    spec = SeriesSpec("t1_mprage_sag", 2, n_slices=12, scanning_sequence=("GR", "IR"))
    files = write_series(spec, inbox / "P01_V1" / "t1", Subject(patient_id="P01"), Study("p"))
    files[6].unlink()
    assert main([str(inbox), str(out), "participant", "--nameformat", NAMEFORMAT]) == 0
    err = capsys.readouterr().err
    assert "'_Eq_1' not exported" in err and "dcm2niix: " in err
    anat = out / "sub-P01" / "ses-V1" / "anat"
    assert sorted(p.name for p in anat.iterdir()) == [
        "sub-P01_ses-V1_T1w.json",
        "sub-P01_ses-V1_T1w.nii.gz",
    ]
    (row,) = read_tsv(out / "sourcedata" / "bidsport" / "sub-P01" / "ses-V1" / "series.tsv")
    assert row["review"] == "true" and "dcm2niix: " in row["evidence"]
