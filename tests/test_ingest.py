"""Import stage: inbox discovery, labels, mapping/manifest files, packet import, archiving."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from bidsport import ingest
from bidsport.archive import ExtractLimits
from bidsport.errors import ArchiveError, ConfigError, LabelError, OutputError, UsageError
from bidsport.fileops import hardlink_or_copy
from bidsport.ingest import (
    ImportResult,
    apply_archive_policy,
    assign_packets,
    clean_label,
    discover_packets,
    import_packet,
    read_manifest,
    read_mapping,
)
from bidsport.records import Packet
from bidsport.synthetic import SeriesSpec, write_series


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A few real DICOM files (name → bytes)."""
    folder = tmp_path_factory.mktemp("series")
    paths = write_series(SeriesSpec("t1_mprage", 2, n_slices=3, rows=8, columns=8), folder)
    return {p.name: p.read_bytes() for p in paths}


def snapshot(path: Path) -> dict[str, tuple[bytes | None, int]]:
    """Bytes and mtimes of a file or of everything under a folder (folders too)."""
    if not path.is_dir():
        return {".": (path.read_bytes(), path.stat().st_mtime_ns)}
    found: dict[str, tuple[bytes | None, int]] = {".": (None, path.stat().st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
            found[p.relative_to(path).as_posix()] = (data, st.st_mtime_ns)
    return found


def contents(path: Path) -> dict[str, bytes | None]:
    """Like snapshot, without the mtimes."""
    return {k: v[0] for k, v in snapshot(path).items()}


def tree(root: Path) -> dict[str, bytes]:
    files = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            assert not path.is_symlink()
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_tar(path: Path, members: dict[str, bytes], mode: str) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def packet(path: Path, name: str, kind: str) -> Packet:
    return Packet(path=path, name=name, kind=kind)


def run_without_dac_override(code: str) -> object:
    """Run ``code`` (Python printing one JSON value last) where permissions hold.

    As root, through ``setpriv`` without the capabilities that override file permissions
    (root can otherwise read and remove anything); skipped when that is not possible.
    """
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        cmd = [setpriv, "--inh-caps=-all", "--bounding-set=-all", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# --------------------------------------------------------------------------- discover


@pytest.fixture
def inbox(tmp_path: Path, series: dict[str, bytes]) -> Path:
    inbox = tmp_path / "inbox"
    (inbox / "S01_V1" / "t1").mkdir(parents=True)
    for name, data in series.items():
        (inbox / "S01_V1" / "t1" / name).write_bytes(data)
    write_zip(inbox / "S02_V1.zip", {f"t1/{n}": d for n, d in series.items()})
    write_tar(inbox / "S03_V2.tar.gz", series, "w:gz")
    first = next(iter(series.values()))
    (inbox / "S04_V1.dcm.gz").write_bytes(gzip.compress(first))
    (inbox / "S05_V1.dcm").write_bytes(first)
    (inbox / "README.txt").write_text("not a packet")
    (inbox / "DICOMDIR").write_bytes(first)
    (inbox / ".DS_Store").write_bytes(b"hidden")
    (inbox / ".hidden_dir").mkdir()
    (inbox / "S06_broken").symlink_to(tmp_path / "gone")
    os.mkfifo(inbox / "S07_fifo")
    return inbox


def test_discover_packets(inbox: Path) -> None:
    packets, problems = discover_packets(inbox)
    assert [(p.name, p.kind) for p in packets] == [
        ("S01_V1", "folder"),
        ("S02_V1", "zip"),
        ("S03_V2", "tar"),
        ("S04_V1.dcm", "gz"),
        ("S05_V1", "file"),
    ]
    assert all(p.path.parent == inbox for p in packets)
    by_where = {p.where: p for p in problems}
    assert set(by_where) == {"DICOMDIR", "README.txt", "S06_broken", "S07_fifo"}
    assert by_where["S06_broken"].fatal and "broken symbolic link" in by_where["S06_broken"].reason
    assert not by_where["README.txt"].fatal
    assert all(p.stage == "import" for p in problems)


def test_discover_with_pattern(inbox: Path) -> None:
    packets, problems = discover_packets(inbox, r"^(?P<packet_name>S0[1-3])_V\d")
    assert [p.name for p in packets] == ["S01", "S02", "S03"]
    skipped = {p.where for p in problems}
    assert {"S04_V1.dcm.gz", "S05_V1.dcm", "README.txt", "DICOMDIR"} <= skipped
    assert all("does not match --pattern" in p.reason for p in problems)
    # Without a packet_name group, the whole match is the name.
    packets, _ = discover_packets(inbox, r"S0[12]_V1")
    assert [p.name for p in packets] == ["S01_V1", "S02_V1"]


def test_discover_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="missing"):
        discover_packets(tmp_path / "missing")
    with pytest.raises(ConfigError, match="--pattern"):
        discover_packets(tmp_path, "(unclosed")


def test_discover_unreadable_entry(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions cannot make an entry unreadable")
    folder = tmp_path / "S01"
    folder.mkdir()
    folder.chmod(0)
    try:
        packets, problems = discover_packets(tmp_path)
    finally:
        folder.chmod(0o755)
    assert packets == [] and problems[0].fatal and "cannot read" in problems[0].reason


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("QPN_001", "QPN001"),
        ("sub-01", "01"),
        ("ses-BL", "BL"),
        ("SUB-abc", "abc"),
        (" 07 ", "07"),
        ("Z\u00fcrich-2", "Zurich2"),  # ü composed
        ("Zu\u0308rich-2", "Zurich2"),  # u and a diaeresis (as macOS writes names)
        ("\uff33\uff10\uff11", "S01"),  # full-width letters and digits
        ("\u00df01", "01"),  # no ASCII form: dropped
        ("sub-sub-01", "sub01"),
    ],
)
def test_clean_label(raw: str, clean: str) -> None:
    assert clean_label(raw) == clean


@pytest.mark.parametrize("raw", ["", "sub-", "___", "\u00df", "\u65e5\u672c"])  # (ß, 日本)
def test_clean_label_empty(raw: str) -> None:
    with pytest.raises(LabelError) as err:
        clean_label(raw)
    assert repr(raw) in err.value.message


def packets_named(*names: str) -> list[Packet]:
    return [packet(Path("/inbox") / n, n, "folder") for n in names]


def test_assign_default_and_nameformat() -> None:
    assignments, problems = assign_packets(packets_named("QPN_001", "sub-002"))
    assert problems == []
    assert [(a.subject, a.session, a.source) for a in assignments] == [
        ("QPN001", None, "default"),
        ("002", None, "default"),
    ]
    fmt = r"(?P<subject_id>[A-Z]+_\d+)_(?P<session_name>V\d)"
    assignments, problems = assign_packets(packets_named("QPN_001_V1", "QPN_001_V2", "odd"), fmt)
    assert [(a.subject, a.session, a.source) for a in assignments] == [
        ("QPN001", "V1", "nameformat"),
        ("QPN001", "V2", "nameformat"),
    ]
    assert [(p.where, p.fatal) for p in problems] == [("odd", True)]
    assert "--nameformat" in problems[0].reason


def test_assign_mapping_overrides() -> None:
    mapping = {"odd": ("sub-X9", "ses-1"), "QPN_001_V1": ("Other", None)}
    fmt = r"(?P<subject_id>[A-Z]+_\d+)_(?P<session_name>V\d)"
    assignments, problems = assign_packets(packets_named("QPN_001_V1", "odd"), fmt, mapping)
    assert problems == []
    assert [(a.packet.name, a.subject, a.session, a.source) for a in assignments] == [
        ("QPN_001_V1", "Other", None, "mapping"),
        ("odd", "X9", "1", "mapping"),
    ]


def test_assign_nameformat_needs_subject_group() -> None:
    with pytest.raises(ConfigError, match="subject_id"):
        assign_packets(packets_named("a"), r"(?P<session_name>.*)")


def test_assign_collisions_after_cleaning() -> None:
    assignments, problems = assign_packets(
        packets_named("QPN_001", "QPN-001", "QPN002", "qpn002", "ok")
    )
    assert [a.subject for a in assignments] == ["ok"]
    by_where = {p.where: p.reason for p in problems}
    assert set(by_where) == {"QPN_001", "QPN-001", "QPN002", "qpn002"}
    assert "'QPN-001'" in by_where["QPN_001"] and "'QPN_001'" in by_where["QPN-001"]
    assert "'qpn002'" in by_where["QPN002"]
    assert all(p.fatal for p in problems)


def test_assign_same_target_and_session_collisions() -> None:
    mapping: dict[str, tuple[str, str | None]] = {
        "a": ("S1", "1"),
        "b": ("sub-S1", "ses-1"),  # same labels as a: same target
        "c": ("S2", "V_1"),
        "d": ("S2", "V-1"),  # different raw sessions that clean the same
        "e": ("S3", "1"),
    }
    assignments, problems = assign_packets(packets_named(*mapping), mapping=mapping)
    assert [a.packet.name for a in assignments] == ["e"]
    by_where = {p.where: p.reason for p in problems}
    assert "sub-S1_ses-1 is also the target of packet(s) 'b'" in by_where["a"]
    assert "'a'" in by_where["b"]
    assert "session label 'V_1'" in by_where["c"] and "'d'" in by_where["c"]


def test_assign_mixed_sessions_fail_that_subject_only() -> None:
    mapping = {"a": ("S1", "1"), "b": ("S1", None), "c": ("S2", "1"), "d": ("S2", "2")}
    assignments, problems = assign_packets(packets_named(*mapping), mapping=mapping)
    assert [a.packet.name for a in assignments] == ["c", "d"]
    assert {p.where for p in problems} == {"a", "b"}
    assert all("with and without a session" in p.reason for p in problems)


def test_same_packet_name_is_a_collision_even_when_sessions_merge(
    tmp_path: Path, series: dict[str, bytes]
) -> None:
    """A folder and an archive, or two entries --pattern names alike, would be imported
    into the same folder (one replacing the other): both fail, the others go on."""
    inbox = tmp_path / "inbox"
    for folder in ("X_V1/t1", "Y_V1/t1", "monday_S01/a", "tuesday_S01/b"):
        (inbox / folder).mkdir(parents=True)
        for name, data in series.items():
            (inbox / folder / name).write_bytes(data)
    write_zip(inbox / "X_V1.zip", {f"t2/{n}": d for n, d in series.items()})
    packets, _ = discover_packets(inbox)
    fmt = r"(?P<subject_id>[^_]+)_(?P<session_name>.+)"
    chosen = [p for p in packets if p.name in ("X_V1", "Y_V1")]
    assignments, problems = assign_packets(chosen, fmt, merge_sessions=True)
    assert [a.packet.path.name for a in assignments] == ["Y_V1"]
    assert [(p.where, p.fatal) for p in problems] == [("X_V1", True), ("X_V1", True)]
    assert "inbox entry 'X_V1' has the same packet name 'X_V1' as inbox entry(ies) " in (
        problems[0].reason
    )
    for problem, other in zip(problems, ("'X_V1.zip'", "'X_V1'"), strict=True):
        assert other in problem.reason and "rename one of them" in problem.reason
    packets, _ = discover_packets(inbox, r"_(?P<packet_name>S\d+)$")
    assert [p.name for p in packets] == ["S01", "S01"]
    assignments, problems = assign_packets(packets, merge_sessions=True)
    assert assignments == []
    assert {p.where for p in problems} == {"S01"} and len(problems) == 2
    assert "'monday_S01'" in problems[1].reason and "'tuesday_S01'" in problems[0].reason
    # names that differ only in case clash too (case-insensitive file systems)
    mapping: dict[str, tuple[str, str | None]] = {"ab": ("S1", None), "AB": ("S1", None)}
    assignments, problems = assign_packets(
        packets_named("ab", "AB"), None, mapping, merge_sessions=True
    )
    assert assignments == [] and len(problems) == 2


def test_a_semicolon_in_a_packet_name_is_refused(tmp_path: Path) -> None:
    """';' separates packet names in status.tsv: such a name could never be found done."""
    (tmp_path / "SEMI;COLON_V1").mkdir()
    (tmp_path / "OK_V1").mkdir()
    packets, _ = discover_packets(tmp_path)
    assignments, problems = assign_packets(packets, r"(?P<subject_id>[^_]+)_(?P<session_name>.+)")
    assert [a.packet.name for a in assignments] == ["OK_V1"]
    (problem,) = problems
    assert problem.where == "SEMI;COLON_V1" and problem.fatal
    assert "holds a ';'" in problem.reason and "rename" in problem.reason


def test_assign_uncleanable_label() -> None:
    assignments, problems = assign_packets(packets_named("___", "S1"))
    assert [a.subject for a in assignments] == ["S1"]
    assert problems[0].where == "___" and "'___'" in problems[0].reason


# --------------------------------------------------------------------------- tables


def test_read_mapping_csv_and_tsv(tmp_path: Path) -> None:
    csv_file = tmp_path / "map.csv"
    csv_file.write_text(
        "\ufeffpacket_name,participant_id,session_id\n"
        "# a comment\n"
        "S01_V1,sub-QPN_001,ses-V1\n"
        'S02,"QPN002",\n'
        "S03,QPN003,n/a\n"
        "S01_V1,QPN_001,V1\n"  # the same again: accepted
        "\n",
        encoding="utf-8",
    )
    expected = {"S01_V1": ("QPN_001", "V1"), "S02": ("QPN002", None), "S03": ("QPN003", None)}
    assert read_mapping(csv_file) == expected
    tsv_file = tmp_path / "map.txt"  # sniffed from the content
    tsv_file.write_text("packet\tsubject\nS01\t01\n")
    assert read_mapping(tsv_file) == {"S01": ("01", None)}


def test_read_mapping_errors(tmp_path: Path) -> None:
    bad = tmp_path / "map.tsv"
    bad.write_text("packet\tsubject\tsession\nS01\tA\t1\nS02\tB\t1\nS01\tA\t2\n")
    with pytest.raises(ConfigError) as err:
        read_mapping(bad)
    assert str(bad) in err.value.message and "line 4" in err.value.message
    assert "line 2" in err.value.message
    bad.write_text("packet\tsession\nS01\t1\n")
    with pytest.raises(ConfigError, match="no column subject"):
        read_mapping(bad)
    bad.write_text("packet\tsubject\nS01\t___\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_mapping(bad)
    bad.write_text("packet\tsubject\n\tA\n")
    with pytest.raises(ConfigError, match="packet is empty"):
        read_mapping(bad)


def test_read_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(
        "participant_id\tvisit_id\tsession_id\tdatatype\n"
        "sub-01\tBL\tses-BL\t['anat']\n"
        "01\tBL\tBL\t['dwi']\n"
        "02\tM12\tM12\t[]\n"
    )
    assert read_manifest(manifest) == [("01", "BL"), ("02", "M12")]
    manifest.write_text("participant_id\nQPN_001\nQPN-001\n")
    with pytest.raises(ConfigError, match="both become 'QPN001'"):
        read_manifest(manifest)
    manifest.write_text("participant_id,session_id\n01,1\n01,\n")
    with pytest.raises(ConfigError, match="with and without sessions"):
        read_manifest(manifest)
    manifest.write_text("subject_label\n01\n")
    with pytest.raises(ConfigError, match="participant_id"):
        read_manifest(manifest)


# --------------------------------------------------------------------------- import


@pytest.mark.parametrize(
    "kind", ["folder", "zip", "tar", "tgz", "tar.gz", "tar.bz2", "tar.xz", "gz", "file"]
)
def test_import_each_packet_kind(tmp_path: Path, series: dict[str, bytes], kind: str) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    members = {f"t1/{n}": d for n, d in series.items()}
    first_name, first = next(iter(series.items()))
    if kind == "folder":
        src = inbox / "S01"
        for rel, data in members.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
    elif kind == "zip":
        src = write_zip(inbox / "S01.zip", members)
    elif kind == "gz":
        src = inbox / f"{first_name}.gz"
        src.write_bytes(gzip.compress(first))
        members = {first_name: first}
    elif kind == "file":
        src = inbox / first_name
        src.write_bytes(first)
        members = {first_name: first}
    else:
        mode = {"tar": "w", "tgz": "w:gz", "tar.gz": "w:gz", "tar.bz2": "w:bz2"}.get(kind, "w:xz")
        src = write_tar(inbox / f"S01.{kind}", members, mode)
    before = snapshot(inbox)
    dest = tmp_path / "out" / "raw" / "sub-01" / "S01"
    packet_kind = kind if kind in ("folder", "file", "gz", "zip") else "tar"
    result = import_packet(packet(src, "S01", packet_kind), dest)
    assert snapshot(inbox) == before  # the input is never modified
    assert tree(dest) == members
    assert result.n_files == len(members) and result.problems == ()
    expected_mode = "hardlink" if kind in ("folder", "file") else "extract"
    assert result.mode == expected_mode
    if kind == "folder":
        rel = next(iter(members))
        assert (dest / rel).stat().st_ino == (src / rel).stat().st_ino
    assert [p.name for p in dest.parent.iterdir()] == ["S01"]  # no work folders left


def test_import_folder_with_links_and_nested_archives(
    tmp_path: Path, series: dict[str, bytes]
) -> None:
    names = sorted(series)
    src = tmp_path / "inbox" / "S01"
    (src / "a").mkdir(parents=True)
    (src / "a" / names[0]).write_bytes(series[names[0]])
    (src / "a" / "link.dcm").symlink_to(names[0])  # inside the packet: imported as a file
    (src / "a" / "dirlink").symlink_to("../a")  # a folder: skipped
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (src / "escape.dcm").symlink_to(secret)  # outside the packet: skipped
    write_zip(src / "more.zip", {names[1]: series[names[1]]})
    (src / f"{names[2]}.gz").write_bytes(gzip.compress(series[names[2]]))
    before = snapshot(src)
    dest = tmp_path / "out" / "S01"
    result = import_packet(packet(src, "S01", "folder"), dest)
    assert snapshot(src) == before  # the zip and .gz in the input are still there
    assert tree(dest) == {
        f"a/{names[0]}": series[names[0]],
        "a/link.dcm": series[names[0]],
        f"more/{names[1]}": series[names[1]],
        names[2]: series[names[2]],
    }
    reasons = {p.where: p.reason for p in result.problems}
    assert set(reasons) == {"a/dirlink", "escape.dcm"}
    assert "outside the packet" in reasons["escape.dcm"]
    assert result.n_files == 4 and result.mode == "hardlink"


def test_import_folder_finds_archives_by_content(tmp_path: Path, series: dict[str, bytes]) -> None:
    """Each file is read once: archives without an archive name are still unpacked."""
    names = sorted(series)
    src = tmp_path / "inbox" / "S01"
    (src / "b" / "deep").mkdir(parents=True)
    (src / "empty").mkdir()  # no file: not reproduced
    (src / "b" / "IM1").write_bytes(series[names[0]])  # DICOM without extension
    (src / "b" / "fake.zip").write_bytes(series[names[0]])  # DICOM named like a zip
    write_zip(tmp_path / "x.zip", {names[1]: series[names[1]]}).rename(src / "b" / "PKG")
    (src / "b" / "deep" / "IM2").write_bytes(gzip.compress(series[names[2]]))  # gzip, no .gz
    write_tar(tmp_path / "t.tar", {"IM3": series[names[0]]}, "w").rename(src / "TARBALL")
    before = snapshot(src)
    dest = tmp_path / "out" / "S01"
    result = import_packet(packet(src, "S01", "folder"), dest)
    assert snapshot(src) == before
    assert tree(dest) == {
        "b/IM1": series[names[0]],
        "b/fake.zip": series[names[0]],
        f"b/PKG/{names[1]}": series[names[1]],
        "b/deep/IM2": series[names[2]],
        "TARBALL/IM3": series[names[0]],
    }
    assert sorted(os.listdir(dest)) == ["TARBALL", "b"]
    assert result == ImportResult(n_files=5, mode="hardlink", problems=())
    assert (dest / "b" / "IM1").stat().st_ino == (src / "b" / "IM1").stat().st_ino


def test_import_folder_renames_clashes_and_special_files(tmp_path: Path) -> None:
    src = tmp_path / "inbox" / "S01"
    (src / "d\x01").mkdir(parents=True)
    (src / "d\x01" / "IM1").write_bytes(b"one")
    (src / "a\x01").write_bytes(b"first")  # becomes a_, like the next one
    (src / "a_").write_bytes(b"second")
    os.mkfifo(src / "fifo")
    (src / "loop").symlink_to("loop")
    before = snapshot(src)
    dest = tmp_path / "out" / "S01"
    result = import_packet(packet(src, "S01", "folder"), dest)
    assert snapshot(src) == before
    assert tree(dest) == {"a_": b"first", "d_/IM1": b"one"}
    renamed = "renamed: its name had unsafe or non-UTF-8 characters"
    assert [(p.where, p.reason) for p in result.problems] == [
        ("a_", renamed),
        ("a_", "same name as another file once made safe: not imported"),
        ("fifo", "not a regular file (FIFO, socket or device): not imported"),
        ("loop", "symbolic link to nothing (broken): not imported"),
        ("d_/IM1", renamed),
    ]
    assert result.n_files == 2 and result.mode == "hardlink"


def test_unreadable_parts_of_a_folder_packet_are_fatal(tmp_path: Path) -> None:
    """A series folder or a file that cannot be read: the packet is incomplete, which must
    fail its session (never a silent gap), with the packet and the path named."""
    src = tmp_path / "inbox" / "A_V1"
    for folder in ("S2", "S3", "S4"):
        (src / folder).mkdir(parents=True)
        (src / folder / "IM1").write_bytes(b"data " + folder.encode())
    (src / "S3").chmod(0)
    (src / "S4" / "IM1").chmod(0)
    try:
        found = run_without_dac_override(
            f"""
            import json
            from pathlib import Path
            from bidsport.ingest import import_packet
            from bidsport.records import Packet
            result = import_packet(
                Packet(Path({str(src)!r}), "A_V1", "folder"), Path({str(tmp_path / "out")!r})
            )
            print(json.dumps([result.n_files, [[p.where, p.reason, p.fatal]
                                               for p in result.problems]]))
            """
        )
    finally:
        (src / "S3").chmod(0o755)
        (src / "S4" / "IM1").chmod(0o644)
    assert isinstance(found, list)
    n_files, problems = found
    assert n_files == 1
    assert [(where, fatal) for where, _, fatal in problems] == [("S3", True), ("S4/IM1", True)]
    assert problems[0][1].startswith("cannot read folder 'S3' of packet A_V1: Permission denied")
    assert problems[1][1].startswith("cannot read file 'S4/IM1' of packet A_V1: Permission denied")


def test_hardlink_or_copy_straight_to_a_new_name(tmp_path: Path) -> None:
    src = tmp_path / "IM1"
    src.write_bytes(b"data")
    (tmp_path / "new").mkdir()
    dst = tmp_path / "new" / "IM1"
    assert hardlink_or_copy(src, dst, replace=False) == "hardlink"
    assert dst.stat().st_ino == src.stat().st_ino
    other = tmp_path / "IM2"
    other.write_bytes(b"other")
    with pytest.raises(OutputError, match="exists already"):
        hardlink_or_copy(other, dst, replace=False)  # never replaced without replace
    assert dst.read_bytes() == b"data"
    assert hardlink_or_copy(other, dst) == "hardlink"  # the default replaces
    assert dst.read_bytes() == b"other" and sorted(os.listdir(dst.parent)) == ["IM1"]


def test_failed_import_keeps_previous_and_leaves_nothing(
    tmp_path: Path, series: dict[str, bytes]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = write_zip(inbox / "S01.zip", {f"t1/{n}": d for n, d in series.items()})
    data = good.read_bytes()
    broken = inbox / "S01b.zip"
    broken.write_bytes(data[: len(data) // 2])
    dest = tmp_path / "out" / "S01"
    dest.mkdir(parents=True)
    (dest / "previous.dcm").write_bytes(b"previous import")
    with pytest.raises(ArchiveError, match=r"S01b\.zip"):
        import_packet(packet(broken, "S01", "zip"), dest)
    assert tree(dest) == {"previous.dcm": b"previous import"}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["S01"]
    with pytest.raises(ArchiveError, match="max_total_bytes"):
        import_packet(packet(good, "S01", "zip"), dest, ExtractLimits(max_total_bytes=1000))
    assert tree(dest) == {"previous.dcm": b"previous import"}
    # A successful import replaces it, and removes work folders of killed imports.
    (dest.parent / ".S01.importing-killed").mkdir()
    result = import_packet(packet(good, "S01", "zip"), dest)
    assert "previous.dcm" not in tree(dest) and result.n_files == len(series)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["S01"]


def test_import_refuses_destination_inside_packet(tmp_path: Path) -> None:
    src = tmp_path / "S01"
    src.mkdir()
    with pytest.raises(OutputError, match="one contains the other"):
        import_packet(packet(src, "S01", "folder"), src / "out")


def test_import_result_is_frozen() -> None:
    result = ImportResult(n_files=1, mode="copy", problems=())
    with pytest.raises(AttributeError):
        result.n_files = 2  # type: ignore[misc]


# --------------------------------------------------------------------------- archive policy


@pytest.fixture
def packets(tmp_path: Path, series: dict[str, bytes]) -> dict[str, Packet]:
    inbox = tmp_path / "inbox"
    (inbox / "S01" / "t1").mkdir(parents=True)
    for name, data in series.items():
        (inbox / "S01" / "t1" / name).write_bytes(data)
    write_zip(inbox / "S02.zip", series)
    return {
        "folder": packet(inbox / "S01", "S01", "folder"),
        "zip": packet(inbox / "S02.zip", "S02", "zip"),
    }


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_archive_policies(tmp_path: Path, packets: dict[str, Packet], kind: str) -> None:
    pkt = packets[kind]
    archive_dir = tmp_path / "archive"
    before = snapshot(pkt.path)
    assert apply_archive_policy(pkt, "leave", archive_dir) is None
    assert snapshot(pkt.path) == before and not archive_dir.exists()
    assert "copied" in (apply_archive_policy(pkt, "copy", archive_dir) or "")
    copy = archive_dir / pkt.path.name
    assert snapshot(pkt.path) == before
    assert contents(copy) == contents(pkt.path)
    # Copying again replaces the previous copy (re-runs work).
    apply_archive_policy(pkt, "copy", archive_dir)
    assert sorted(p.name for p in archive_dir.iterdir()) == [pkt.path.name]
    moved_to = tmp_path / "moved"
    assert "moved" in (apply_archive_policy(pkt, "move", moved_to) or "")
    assert not os.path.lexists(pkt.path)
    assert contents(moved_to / pkt.path.name) == {k: v[0] for k, v in before.items()}


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_another_delivery_under_an_archived_name_keeps_the_first(
    tmp_path: Path, packets: dict[str, Packet], kind: str
) -> None:
    """After --archive move the archived copy is the only one: a packet delivered again
    under that name (other content) is archived beside it, never over it."""
    pkt = packets[kind]
    archive_dir = tmp_path / "archive"
    first = contents(pkt.path)
    assert (
        apply_archive_policy(pkt, "move", archive_dir) == f"moved {pkt.path.name} to {archive_dir}"
    )
    assert not os.path.lexists(pkt.path)
    # the second delivery: other content, same name
    if kind == "folder":
        write_series(SeriesSpec("t2_tse", 7), pkt.path / "t2")
    else:
        with zipfile.ZipFile(pkt.path, "w") as zf:
            zf.writestr("t2/IM0001", b"not the same packet")
    second = contents(pkt.path)
    assert second != first
    did = apply_archive_policy(pkt, "move", archive_dir) or ""
    assert did.endswith(f"as {pkt.path.name}.2: {archive_dir / pkt.path.name} holds another "
                        "delivery of that packet, kept")  # fmt: skip
    assert contents(archive_dir / pkt.path.name) == first
    assert contents(archive_dir / f"{pkt.path.name}.2") == second


def test_archive_delete_and_symlinked_entry(tmp_path: Path, packets: dict[str, Packet]) -> None:
    pkt = packets["folder"]
    link = pkt.path.parent / "S01_link"
    link.symlink_to(pkt.path)
    assert apply_archive_policy(packet(link, "S01", "folder"), "delete", tmp_path / "a") is not None
    assert not os.path.lexists(link) and pkt.path.is_dir()  # only the link went
    assert "deleted" in (apply_archive_policy(pkt, "delete", tmp_path / "a") or "")
    assert not pkt.path.exists()


def test_archive_policy_refusals(tmp_path: Path, packets: dict[str, Packet]) -> None:
    pkt = packets["folder"]
    before = snapshot(pkt.path)
    for policy in ("copy", "move", "delete"):
        with pytest.raises(OutputError, match="inside it"):
            apply_archive_policy(pkt, policy, pkt.path / "archive")
    for policy in ("copy", "move"):
        with pytest.raises(OutputError, match="the packet itself"):
            apply_archive_policy(pkt, policy, pkt.path.parent)
    with pytest.raises(ConfigError, match="unknown archive policy"):
        apply_archive_policy(pkt, "shred", tmp_path / "a")
    assert snapshot(pkt.path) == before


def test_archive_copy_takes_files_folders_and_links_only(
    tmp_path: Path, packets: dict[str, Packet]
) -> None:
    """A FIFO or a device node in a folder packet is never opened for the archive copy
    (a FIFO would hang it, /dev/zero fill the disk): skipped, and said so."""
    pkt = packets["folder"]
    os.mkfifo(pkt.path / "pipe")
    (pkt.path / "t1" / "link").symlink_to("../t1")
    device = False
    try:
        os.mknod(pkt.path / "null", stat.S_IFCHR | 0o644, os.makedev(1, 3))  # as /dev/null
        device = True
    except PermissionError:
        pass  # not root: the FIFO stands for every special file
    before = snapshot(pkt.path)
    did = apply_archive_policy(pkt, "copy", tmp_path / "archive")
    assert did is not None and "special files not copied: " in did
    assert "pipe" in did and ("null" in did or not device)
    copy = tmp_path / "archive" / "S01"
    expected = {k: v for k, v in contents(pkt.path).items() if k not in ("pipe", "null")}
    assert contents(copy) == expected
    assert os.readlink(copy / "t1" / "link") == "../t1"  # a link stays a link
    assert snapshot(pkt.path) == before
    assert sorted(os.listdir(tmp_path / "archive")) == ["S01"]  # nothing left half-made
    assert "moved" in (apply_archive_policy(pkt, "move", tmp_path / "moved") or "")
    assert not os.path.lexists(pkt.path)
    assert contents(tmp_path / "moved" / "S01") == expected


def test_archive_failures_are_output_errors_and_remove_nothing(
    tmp_path: Path, packets: dict[str, Packet]
) -> None:
    """A packet that cannot be removed whole is not touched by move or delete (no half-
    deleted inbox), and a copy that fails is an OutputError naming the packet (not a bug)."""
    pkt = packets["folder"]
    (pkt.path / "a").mkdir()
    (pkt.path / "a" / "IM1").write_bytes(b"first, removed before the next folder fails")
    (pkt.path / "t1").chmod(0o555)  # readable, but its files cannot be removed
    (pkt.path / "secret").write_bytes(b"unreadable")
    before = snapshot(pkt.path)
    try:
        found = run_without_dac_override(
            f"""
            import json, os
            from pathlib import Path
            from bidsport.errors import OutputError
            from bidsport.ingest import apply_archive_policy
            from bidsport.records import Packet
            pkt = Packet(Path({str(pkt.path)!r}), "S01", "folder")
            errors = []
            for policy, folder in (("delete", "d"), ("move", "m")):
                try:
                    apply_archive_policy(pkt, policy, Path({str(tmp_path)!r}) / folder)
                except OutputError as exc:
                    errors.append(str(exc))
            os.chmod(pkt.path / "t1", 0o755)
            os.chmod(pkt.path / "secret", 0)
            try:
                apply_archive_policy(pkt, "copy", Path({str(tmp_path)!r}) / "c")
            except OutputError as exc:
                errors.append(str(exc))
            print(json.dumps(errors))
            """
        )
    finally:
        (pkt.path / "t1").chmod(0o755)
        (pkt.path / "secret").chmod(0o644)
    assert isinstance(found, list) and len(found) == 3
    delete, move, copy = found
    assert delete.startswith(f"cannot delete {pkt.path}: the folder {pkt.path / 't1'} is not")
    assert "nothing was removed" in delete
    assert move.startswith(f"cannot move {pkt.path}: ") and "nothing was copied" in move
    assert copy.startswith(f"cannot copy packet {pkt.path} to {tmp_path / 'c' / 'S01'}: ")
    assert "Permission denied" in copy and str(pkt.path / "secret") in copy
    (pkt.path / "t1").chmod(0o755)
    assert snapshot(pkt.path) == before
    assert not (tmp_path / "m").exists() or os.listdir(tmp_path / "m") == []
    assert os.listdir(tmp_path / "c") == []  # the failed copy left nothing


def test_archiving_the_same_delivery_again_reuses_its_copy(
    tmp_path: Path, packets: dict[str, Packet]
) -> None:
    pkt = packets["folder"]
    archive_dir = tmp_path / "archive"
    apply_archive_policy(pkt, "copy", archive_dir)
    write_series(SeriesSpec("t2_tse", 7), archive_dir / pkt.path.name / "other")  # not ours
    for _ in range(3):  # each redo of the session archives the packet again
        apply_archive_policy(pkt, "copy", archive_dir)
    assert sorted(p.name for p in archive_dir.iterdir()) == [pkt.path.name, f"{pkt.path.name}.2"]
    assert contents(archive_dir / f"{pkt.path.name}.2") == contents(pkt.path)


# --------------------------------------------------------------------------- long names


@pytest.mark.parametrize("kind", ["folder", "zip", "tar"])
def test_names_of_up_to_255_bytes_are_imported(
    tmp_path: Path, series: dict[str, bytes], kind: str
) -> None:
    """A packet and a member may have names of 255 bytes: the temporary names made for
    them (work folders, files written under a temporary name) are cut short to fit."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    first = next(iter(series.values()))
    member = "M" * 251 + ".dcm"  # 255 bytes
    members = {f"S/{member}": first, "S/IM2": first}
    long_name = "P" * (255 - len(f".{kind}") if kind != "folder" else 255)
    if kind == "folder":
        src = inbox / long_name
        (src / "S").mkdir(parents=True)
        for rel, data in members.items():
            (src / rel).write_bytes(data)
    elif kind == "zip":
        src = write_zip(inbox / f"{long_name}.zip", members)
    else:
        src = write_tar(inbox / f"{long_name}.tar", members, "w")
    dest = tmp_path / "out" / "raw" / "sub-01" / ("é" * 127)  # 254 bytes, cut mid-character
    result = import_packet(packet(src, "P", kind), dest)
    assert tree(dest) == members and result.problems == ()
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no work folders left
    # a stale work folder of a killed import of it is found and removed by the next one
    stale = Path(tempfile.mkdtemp(prefix=ingest._work_prefix(dest, "importing-"), dir=dest.parent))
    import_packet(packet(src, "P", kind), dest)
    assert not stale.exists()


def test_a_limit_hit_in_a_nested_archive_names_the_packet_and_the_archive(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", b"\0" * (4 * 1024 * 1024))
    src = write_zip(inbox / "BOMB_V1.zip", {"S/series.zip": inner.getvalue()})
    dest = tmp_path / "out" / "BOMB_V1"
    limits = ExtractLimits(max_ratio=100, ratio_floor_bytes=1024 * 1024)
    with pytest.raises(ArchiveError) as err:
        import_packet(packet(src, "BOMB_V1", "zip"), dest, limits)
    assert err.value.message.startswith(f"{src}: nested archive S/series.zip: extraction stopped")
    assert "importing-" not in err.value.message  # not our removed working copy
    assert not dest.exists() and list(dest.parent.iterdir()) == []


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("name", "data", "said"),
    [
        ("S01.7z", b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\0" * 64, "a 7-Zip archive"),
        ("S02.tar.zst", b"\x28\xb5\x2f\xfd" + b"\0" * 64, "a Zstandard-compressed file"),
        ("IM1.dcm.bz2", None, "a bzip2-compressed file (not a tar)"),
        ("IM2.dcm.xz", None, "an xz-compressed file"),
    ],
    ids=["7z", "zstd", "bz2", "xz"],
)
def test_a_packet_in_a_format_not_read_is_refused_by_name(
    tmp_path: Path, series: dict[str, bytes], name: str, data: bytes | None, said: str
) -> None:
    import bz2
    import lzma

    first = next(iter(series.values()))
    if data is None:
        data = bz2.compress(first) if name.endswith(".bz2") else lzma.compress(first)
    (tmp_path / name).write_bytes(data)
    (tmp_path / "README.txt").write_text("notes")
    packets, problems = discover_packets(tmp_path)
    assert packets == []
    by_where = {p.where: p for p in problems}
    assert by_where[name].fatal and "unpack it into a folder" in by_where[name].reason
    assert said.removeprefix("an ").removeprefix("a ") in by_where[name].reason
    assert not by_where["README.txt"].fatal  # other files of the inbox: a note, as before


# --------------------------------------------------------------------------- unicode


def test_one_name_spelled_composed_or_decomposed_is_one_subject() -> None:
    """``José`` composed (NFC, as most systems write it) and decomposed (NFD, as macOS
    does) is the same name: one subject, ``Jose``, not two (or a clash)."""
    nameformat = r"(?P<subject_id>[^_]+)_(?P<session_name>.+)"
    assignments, problems = assign_packets(
        packets_named("Jos\u00e9_V1", "Jose\u0301_V2"), nameformat
    )
    assert problems == []
    assert [(a.subject, a.session) for a in assignments] == [("Jose", "V1"), ("Jose", "V2")]
    # the same packet name spelled both ways is one name: a clash, as for case
    _, problems = assign_packets(packets_named("Jos\u00e9_V1", "Jose\u0301_V1"), nameformat)
    assert len(problems) == 2 and all("same packet name" in p.reason for p in problems)
