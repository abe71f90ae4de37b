"""The curation status table: records, concurrent updates, backups, regeneration."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest

from bidsport import fileops, uptodate
from bidsport.errors import LabelError, LockedError, OutputError
from bidsport.layout import DatasetLayout
from bidsport.records import SessionResult
from bidsport.status import (
    IMAGES_MISSING,
    INTERRUPTED,
    KEEP_BACKUPS,
    STATUS_COLUMNS,
    StatusRow,
    TableUpdates,
    add_expected,
    backup_status,
    build_status,
    outcome_missing,
    read_records,
    read_status,
    read_status_file,
    read_status_record,
    record_session,
    regenerate_status,
    row_from_result,
    status_lock_file,
    unrecorded_outcome,
)

N_WORKERS = 8
N_SESSIONS = 10
RAW_ERROR = "import failed:\tbad archive\nsecond line"


# --------------------------------------------------------------------------- helpers


def _stages(index: int) -> tuple[bool, bool, bool]:
    """(imported, organized, converted) for the index-th session of a worker."""
    level = index % 4
    return level >= 1, level >= 2, level >= 3


def _make_evidence(layout: DatasetLayout, sub: str, ses: str | None, index: int) -> None:
    """Files on disk matching what the index-th session recorded."""
    imported, organized, converted = _stages(index)
    if imported:
        raw = layout.raw_dir(sub, ses) / "PKT" / "1.dcm"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_bytes(b"dicom")
    if organized:
        dicom = layout.dicom_dir(sub, ses) / "1.dcm"
        dicom.parent.mkdir(parents=True, exist_ok=True)
        dicom.write_bytes(b"dicom")
    if converted:
        anat = layout.session_dir(sub, ses) / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        name = f"sub-{sub}_ses-{ses}_T1w.nii.gz" if ses else f"sub-{sub}_T1w.nii.gz"
        (anat / name).write_bytes(b"nifti")


def _expected(worker: int, index: int) -> StatusRow:
    imported, organized, converted = _stages(index)
    return StatusRow(
        participant_id=f"w{worker}",
        session_id=f"{index + 1}",
        packet=f"PKT{worker}x{index}",
        imported=imported,
        organized=organized,
        converted=converted,
        last_error=None if imported else RAW_ERROR,
        updated=f"2024-01-02T09:{worker:02d}:{index:02d}+00:00",
    )


def _worker(root: str, worker: int, start: multiprocessing.synchronize.Event) -> None:
    """One participant-level job: records its sessions one after the other."""
    layout = DatasetLayout(Path(root))
    start.wait(30)
    for index in range(N_SESSIONS):
        row = _expected(worker, index)
        _make_evidence(layout, row.participant_id, row.session_id, index)
        record_session(layout, row)


def _row(sub: str, ses: str | None = None, **kw: object) -> StatusRow:
    values: dict[str, object] = {
        "packet": "P1",
        "imported": True,
        "organized": True,
        "converted": False,
        "last_error": None,
        "updated": "2024-01-02T09:00:00+00:00",
    }
    values.update(kw)
    return StatusRow(sub, ses, **values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- concurrency


def test_many_processes_record_at_once(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path / "bids")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_worker, args=(str(layout.root), w, start)) for w in range(N_WORKERS)
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0] * N_WORKERS

    expected = sorted(
        (_expected(w, i) for w in range(N_WORKERS) for i in range(N_SESSIONS)),
        key=lambda r: r.key,
    )
    rows = read_status(layout)
    assert len(rows) == N_WORKERS * N_SESSIONS
    assert rows == expected
    assert read_records(layout) == expected

    # every table ever replaced was backed up whole: the last KEEP_BACKUPS versions
    # had 60..79 rows (each record added one session), each complete and parseable
    backups = sorted(layout.status_backup_dir.iterdir())
    assert len(backups) == KEEP_BACKUPS
    sizes = [len(read_status_file(b)) for b in backups]
    total = N_WORKERS * N_SESSIONS
    assert sizes == list(range(total - KEEP_BACKUPS, total))
    for backup in backups:
        assert set(read_status_file(backup)) <= set(expected)
    leftovers = [p for p in layout.root.rglob("*.tmp")]
    assert leftovers == []

    # the group level rebuilds the same table from the records and the disk
    before = layout.status_file.read_bytes()
    assert regenerate_status(layout) == expected
    assert layout.status_file.read_bytes() == before
    assert sorted(layout.status_backup_dir.iterdir()) == backups  # unchanged: no backup

    # and from the records alone when the table is lost
    layout.status_file.unlink()
    assert regenerate_status(layout) == expected
    assert layout.status_file.read_bytes() == before


def test_status_tsv_format(tmp_path: Path) -> None:
    # records and rows are made field by field in this order (not with dataclasses.asdict)
    assert tuple(f.name for f in dataclasses.fields(StatusRow)) == STATUS_COLUMNS
    layout = DatasetLayout(tmp_path)
    record_session(layout, _row("01", None, packet="A;B", last_error="boom"))
    record_session(layout, _row("02", "pre", converted=True))
    lines = layout.status_file.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == list(STATUS_COLUMNS)
    assert lines[1].split("\t") == [
        "sub-01", "n/a", "A;B", "true", "true", "false", "boom", "2024-01-02T09:00:00+00:00"
    ]  # fmt: skip
    assert lines[2].split("\t")[:2] == ["sub-02", "ses-pre"]
    record = read_status_record(layout, "01", None)
    assert record == _row("01", None, packet="A;B", last_error="boom")
    assert layout.status_row_file("01", None).is_file()
    assert read_status_record(layout, "99", None) is None


def test_record_replaces_own_row_only(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path)
    record_session(layout, _row("01", last_error="failed once"))
    record_session(layout, _row("02"))
    record_session(layout, _row("01", converted=True, updated="2024-01-03T10:00:00+00:00"))
    rows = read_status(layout)
    assert rows == [
        _row("01", converted=True, updated="2024-01-03T10:00:00+00:00"),
        _row("02"),
    ]
    assert len(list(layout.status_backup_dir.iterdir())) == 2


def test_columns_a_curator_added_are_kept(tmp_path: Path) -> None:
    """A curator adds "notes" between packet and imported, and "qc" at the end: every
    rewrite of the table (a participant run's row, the manifest's rows, the group
    level's rebuild) keeps both in their place, with each session's cells; a new
    session's are n/a. The stamp of a re-run reads the table as the full path does."""
    layout = DatasetLayout(tmp_path)
    record_session(layout, _row("01", None))
    record_session(layout, _row("02", None, last_error="boom"))
    lines = layout.status_file.read_text(encoding="utf-8").splitlines()
    columns = list(STATUS_COLUMNS)
    columns.insert(3, "notes")
    edited = ["\t".join(columns) + "\tqc"]
    for line, notes, qc in zip(
        lines[1:], ["motion in run 2", "n/a"], ["pass", "fail"], strict=True
    ):
        cells = line.split("\t")
        cells.insert(3, notes)
        edited.append("\t".join([*cells, qc]))
    layout.status_file.write_text("\n".join(edited) + "\n", encoding="utf-8")
    rows = read_status(layout)

    def table() -> list[list[str]]:
        return [line.split("\t") for line in layout.status_file.read_text().splitlines()]

    def notes_and_qc() -> dict[str, tuple[str, str]]:
        return {cells[0]: (cells[3], cells[-1]) for cells in table()[1:]}

    record_session(layout, _row("02", None, converted=True))  # the row is replaced
    record_session(layout, _row("03", None))  # a new row
    add_expected(layout, [("04", "1")])
    assert table()[0] == [*columns, "qc"]
    assert notes_and_qc() == {
        "sub-01": ("motion in run 2", "pass"),
        "sub-02": ("n/a", "fail"),
        "sub-03": ("n/a", "n/a"),
        "sub-04": ("n/a", "n/a"),
    }
    assert read_status(layout)[:2] == [rows[0], _row("02", None, converted=True)]
    assert regenerate_status(layout, [("04", "1")])  # rebuilt: stages from the disk
    assert table()[0] == [*columns, "qc"]
    assert notes_and_qc()["sub-01"] == ("motion in run 2", "pass")
    assert uptodate.table_rows(str(layout.status_file), [("01", "")]) is not None

    # a column named twice is refused, naming it, by both readers
    layout.status_file.write_text("\n".join(edited).replace("\tqc", "\tnotes") + "\n")
    with pytest.raises(OutputError, match=r"status\.tsv has the column\(s\) notes more than once"):
        read_status(layout)
    assert uptodate.table_rows(str(layout.status_file), [("01", "")]) is None


def test_an_unreadable_table_is_rebuilt_with_the_columns_a_curator_added(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A curator's mistake makes the table unreadable (a flag that is not true or false,
    a session given twice): participant runs leave it alone, the group level rebuilds it
    from the records, and the added column comes back with each session's cell (the
    first of a session given twice); the warning names the backup of the old table."""
    layout = DatasetLayout(tmp_path)
    record_session(layout, _row("01", "1"))
    record_session(layout, _row("02", None))
    header, first, second = layout.status_file.read_text(encoding="utf-8").splitlines()
    typo = first.replace("\ttrue\t", "\tyes?\t", 1)
    layout.status_file.write_text(
        f"{header}\tnotes\n{typo}\tre-scan asked\n{second}\tn/a\n{second}\tcopied\n"
    )
    with pytest.raises(OutputError, match=r"status\.tsv, line 2: imported is 'yes\?'"):
        read_status(layout)
    with caplog.at_level(logging.WARNING):
        rows = regenerate_status(layout)
    assert [r.key for r in rows] == [("01", "1"), ("02", "")]
    warning = next(r.getMessage() for r in caplog.records if "unreadable" in r.getMessage())
    assert str(layout.status_backup_dir) in warning and "columns added to it are kept" in warning
    lines = layout.status_file.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == [*STATUS_COLUMNS, "notes"]
    assert [line.split("\t")[-1] for line in lines[1:]] == ["re-scan asked", "n/a"]
    assert read_status(layout) == rows

    # a session given twice is refused, naming both lines, by both readers
    header, first, second = layout.status_file.read_text(encoding="utf-8").splitlines()
    layout.status_file.write_text(f"{header}\n{first}\n{second}\n{second}\n")
    with pytest.raises(OutputError, match=r"status\.tsv, lines 3 and 4: two rows of sub-02"):
        read_status(layout)
    assert uptodate.table_rows(str(layout.status_file), [("01", "1")]) is None


def test_the_stamp_reader_refuses_what_the_full_reader_refuses(tmp_path: Path) -> None:
    """The re-run stamp reads the status table's text (``uptodate``): every table the
    full path refuses, it refuses too, even when the stamped session's row is intact."""
    layout = DatasetLayout(tmp_path)
    for subject, session in (("01", "1"), ("02", None), ("03", "2")):
        record_session(layout, _row(subject, session))
    good = layout.status_file.read_text(encoding="utf-8")
    header, first, second, third = good.splitlines()
    broken = {
        "a bare session prefix": good.replace("ses-2", "ses-"),
        "a bare subject prefix": good.replace("sub-02", "sub-"),
        "no packet column": "\n".join(
            "\t".join(c for i, c in enumerate(line.split("\t")) if i != 2)
            for line in good.splitlines()
        ),
        "a column named twice": "".join(f"{line}\tx\ty\n" for line in good.splitlines()).replace(
            "x\ty", "notes\tnotes", 1
        ),
        "a session given twice": f"{header}\n{first}\n{second}\n{third}\n{third}\n",
        "a flag that is not true or false": f"{header}\n{first}\n{second.replace('true', 'maybe')}\n",
    }
    stamped = [("01", "1")]
    for what, text in broken.items():
        layout.status_file.write_text(text, encoding="utf-8")
        with pytest.raises(OutputError):
            read_status(layout)
        assert uptodate.table_rows(str(layout.status_file), stamped) is None, what
    layout.status_file.write_text(good, encoding="utf-8")
    assert uptodate.table_rows(str(layout.status_file), stamped) is not None


# --------------------------------------------------------------------------- lock timeout


def test_lock_timeout_does_not_fail_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = DatasetLayout(tmp_path)
    record_session(layout, _row("01"))
    before = layout.status_file.read_bytes()
    with fileops.file_lock(status_lock_file(layout)), caplog.at_level(logging.WARNING):
        record_session(layout, _row("02"), lock_timeout=0.3)
    assert layout.status_file.read_bytes() == before  # table untouched
    assert read_status_record(layout, "02", None) == _row("02")  # record written
    assert any(
        "not updated" in r.getMessage() and "sub-02" in r.getMessage() for r in caplog.records
    )
    # the group level adds the missing row from the record
    assert regenerate_status(layout) == [
        _row("01", imported=False, organized=False),
        _row("02", imported=False, organized=False),
    ]


# --------------------------------------------------------------------------- one run's rows


def test_a_run_writes_its_rows_a_few_at_a_time(tmp_path: Path) -> None:
    """Rows put within the interval of the table's last write wait for the next write
    (rewriting the whole table per session is quadratic in a run of many sessions); the
    records are written at once, and closing writes what waits."""
    layout = DatasetLayout(tmp_path)
    table = TableUpdates(layout, interval=3600)
    record_session(layout, _row("01"), table=table)  # the first row: at once
    assert read_status(layout) == [_row("01")]
    record_session(layout, _row("01", converted=True), table=table)
    for sub in ("02", "03"):
        record_session(layout, _row(sub), table=table)
    assert read_status(layout) == [_row("01")]  # waiting...
    assert read_status_record(layout, "03", None) == _row("03")  # ...but recorded
    assert not layout.status_backup_dir.exists()  # nothing replaced yet
    table.close()
    assert read_status(layout) == [_row("01", converted=True), _row("02"), _row("03")]
    assert len(list(layout.status_backup_dir.iterdir())) == 1  # one write: one backup
    record_session(layout, _row("04"), table=table)  # closed: at once
    assert [r.participant_id for r in read_status(layout)] == ["01", "02", "03", "04"]


def test_rows_that_wait_are_written_when_the_interval_ends(tmp_path: Path) -> None:
    """A row put just after a write does not wait for the run's end (a curator watching
    the table of a long session sees it begin)."""
    layout = DatasetLayout(tmp_path)
    table = TableUpdates(layout, interval=1.0)
    try:
        table.put(_row("01"))
        table.put(_row("02"))
        assert read_status(layout) == [_row("01")]
        deadline = time.monotonic() + 30
        while len(read_status(layout)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read_status(layout) == [_row("01"), _row("02")]
    finally:
        table.close()


def test_a_row_that_waited_does_not_undo_what_another_run_recorded_since(tmp_path: Path) -> None:
    """A run's row waits after the session's lock was released; another run redoes the
    session meanwhile (its record and row say unfinished): the write that comes later puts
    the session's record as it then is, not the row that waited."""
    layout = DatasetLayout(tmp_path)
    first = TableUpdates(layout, interval=3600)
    record_session(layout, _row("01", "1"), table=first)
    record_session(layout, _row("01", "1", converted=True), table=first)  # waits
    redo = _row("01", "1", last_error="unfinished: a run began this session")
    record_session(layout, redo)  # the other run: at once
    first.close()
    assert read_status(layout) == [redo] == [read_status_record(layout, "01", "1")]


def test_an_unexpected_error_of_a_write_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The rows are in the records already: a bug while writing the table must not stop
    the run that ends (nor be printed by the timer's thread)."""
    from bidsport import status

    layout = DatasetLayout(tmp_path)
    table = TableUpdates(layout, interval=3600)
    record_session(layout, _row("01"), table=table)
    record_session(layout, _row("02"), table=table)

    def broken(*_args: object, **_kwargs: object) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(status, "update_table_rows", broken)
    with caplog.at_level(logging.ERROR):
        table.close()
    assert any("could not update" in r.getMessage() and r.exc_info for r in caplog.records)
    monkeypatch.undo()
    assert [r.participant_id for r in regenerate_status(layout)] == ["01", "02"]


def test_rows_written_together_that_cannot_get_the_lock_are_left_to_the_group_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = DatasetLayout(tmp_path)
    table = TableUpdates(layout, interval=3600, lock_timeout=0.3)
    for sub in ("01", "02", "03"):
        record_session(layout, _row(sub), table=table)
    with fileops.file_lock(status_lock_file(layout)), caplog.at_level(logging.WARNING):
        table.close()
    assert read_status(layout) == [_row("01")]
    message = next(r.getMessage() for r in caplog.records if "not updated" in r.getMessage())
    assert "sub-02, sub-03" in message and str(layout.status_rows_dir) in message
    assert regenerate_status(layout) == [
        _row(sub, imported=False, organized=False) for sub in ("01", "02", "03")
    ]


def test_regenerate_refuses_a_held_lock(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path)
    with fileops.file_lock(status_lock_file(layout)), pytest.raises(LockedError) as err:
        regenerate_status(layout, lock_timeout=0.2)
    assert "status.tsv" in str(err.value)


# --------------------------------------------------------------------------- manifest


def test_add_expected_keeps_existing_rows(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path)
    done = _row("01", None, converted=True, last_error="x")
    record_session(layout, done)
    add_expected(layout, [("01", None), ("02", "1"), ("03", None)])
    rows = read_status(layout)
    assert rows[0] == done
    assert [(r.participant_id, r.session_id) for r in rows] == [
        ("01", None), ("02", "1"), ("03", None)
    ]  # fmt: skip
    for row in rows[1:]:
        assert (row.imported, row.organized, row.converted) == (False, False, False)
        assert row.packet is None and row.last_error is None and row.updated
    # adding the same pairs again changes nothing (no rewrite, no new backup)
    backups = sorted(layout.status_backup_dir.iterdir())
    table = layout.status_file.read_bytes()
    add_expected(layout, [("02", "1")])
    assert layout.status_file.read_bytes() == table
    assert sorted(layout.status_backup_dir.iterdir()) == backups


def test_regenerate_keeps_manifest_rows(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path)
    rows = regenerate_status(layout, [("02", "1"), ("03", None)])
    assert [(r.participant_id, r.session_id, r.imported) for r in rows] == [
        ("02", "1", False), ("03", None, False)
    ]  # fmt: skip
    table = layout.status_file.read_bytes()
    # rows of the table stay (unchanged, same time) even without the manifest
    assert regenerate_status(layout) == rows
    assert layout.status_file.read_bytes() == table


def test_bad_labels_are_refused(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path)
    with pytest.raises(LabelError, match="sub-01"):
        add_expected(layout, [("sub-01", None)])
    with pytest.raises(LabelError, match="a_b"):
        _row("01", "a_b")
    assert not layout.status_file.exists()


# --------------------------------------------------------------------------- values


def test_last_error_and_packet_are_one_line(tmp_path: Path) -> None:
    row = _row("01", last_error=RAW_ERROR, packet="A\tB")
    assert row.last_error == "import failed: bad archive second line"
    assert row.packet == "A B"
    assert _row("01", last_error=" \n\t ").last_error is None
    long = _row("01", last_error="x" * 2000).last_error
    assert long is not None and len(long) == 500 and long.endswith("…")

    layout = DatasetLayout(tmp_path)
    record_session(layout, _row("01", last_error=RAW_ERROR))
    lines = layout.status_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert all(len(line.split("\t")) == len(STATUS_COLUMNS) for line in lines)
    assert read_status(layout)[0].last_error == "import failed: bad archive second line"


def test_row_from_session_result() -> None:
    result = SessionResult("01", "2", imported=True, organized=True, error="dcm2niix\nfailed")
    row = row_from_result(result, ["P1", "P2"], updated="2024-01-02T09:00:00+00:00")
    assert row == StatusRow("01", "2", "P1;P2", True, True, False, "dcm2niix failed",
                            "2024-01-02T09:00:00+00:00")  # fmt: skip


def test_malformed_table_names_file_and_line(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path)
    record_session(layout, _row("01"))
    text = layout.status_file.read_text(encoding="utf-8").replace("\ttrue\t", "\tmaybe\t", 1)
    layout.status_file.write_text(text, encoding="utf-8")
    with pytest.raises(OutputError, match=r"status\.tsv, line 2: imported is 'maybe'"):
        read_status(layout)
    # a participant-level run does not fail on it; the group level rebuilds it
    record_session(layout, _row("02"))
    assert read_status_record(layout, "02", None) == _row("02")
    rows = regenerate_status(layout)
    assert [r.participant_id for r in rows] == ["01", "02"]
    assert read_status(layout) == rows


# --------------------------------------------------------------------------- disk


def test_build_status_derives_stages_from_disk(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path)
    # 01: imported only (raw packet folder), no record
    (layout.raw_dir("01", None) / "PKTA").mkdir(parents=True)
    (layout.raw_dir("01", None) / "PKTA" / "x.dcm").write_bytes(b"x")
    # 02/ses-1: organized, record says converted but there is no image
    _make_evidence(layout, "02", "1", 2)
    record_02 = _row("02", "1", converted=True)
    # 02/ses-2: converted with image and record; 02 has no session-less row
    _make_evidence(layout, "02", "2", 3)
    record_022 = _row("02", "2", converted=True)
    # 03: image but no record: not converted
    _make_evidence(layout, "03", None, 3)
    # 04: only a broken link in the dicom folder: not organized
    link = layout.dicom_dir("04", None) / "gone.dcm"
    link.parent.mkdir(parents=True)
    link.symlink_to("../../raw/sub-04/gone.dcm")
    rows = build_status(layout, [record_02, record_022], now="2024-05-05T00:00:00+00:00")
    got = {(r.participant_id, r.session_id): r for r in rows}
    assert sorted(got, key=lambda k: (k[0], k[1] or "")) == [
        ("01", None), ("02", "1"), ("02", "2"), ("03", None), ("04", None)
    ]  # fmt: skip
    assert (got["01", None].imported, got["01", None].organized) == (True, False)
    assert got["01", None].packet == "PKTA"
    assert got["01", None].updated == "2024-05-05T00:00:00+00:00"
    assert (got["02", "1"].organized, got["02", "1"].converted) == (True, False)
    assert got["02", "2"].converted is True
    assert got["02", "2"].updated == record_022.updated
    assert (got["03", None].imported, got["03", None].converted) == (True, False)
    assert (got["04", None].imported, got["04", None].organized) == (False, False)


def test_backups_are_pruned(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path)
    assert backup_status(layout) is None
    record_session(layout, _row("01"))
    (layout.status_backup_dir).mkdir(parents=True, exist_ok=True)
    keep = layout.status_backup_dir / "notes.txt"
    keep.write_text("mine", encoding="utf-8")
    made = [backup_status(layout) for _ in range(KEEP_BACKUPS + 5)]
    names = sorted(p.name for p in layout.status_backup_dir.glob("status-*.tsv"))
    assert len(names) == KEEP_BACKUPS
    assert names == sorted(p.name for p in made[-KEEP_BACKUPS:] if p)
    assert keep.read_text(encoding="utf-8") == "mine"


def test_regenerate_drops_removed_sessions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A session whose record and folders are all gone leaves the table (the backup keeps
    it); manifest rows, sessions with a record or a folder stay."""
    layout = DatasetLayout(tmp_path)
    for sub in ("01", "02", "03"):
        _make_evidence(layout, sub, "1", 3)
        record_session(layout, _row(sub, "1", converted=True))
    add_expected(layout, [("09", None)])  # a manifest of an earlier run
    tables = layout.tables_dir("03", "1")  # 03: only its tables are left
    tables.mkdir(parents=True)
    (tables / "series.tsv").write_text("series_id\n", encoding="utf-8")
    for sub in ("02", "03"):
        for top in (layout.root, layout.sourcedata_dir / "raw", layout.sourcedata_dir / "dicom"):
            shutil.rmtree(top / f"sub-{sub}")
        layout.status_row_file(sub, "1").unlink()
    with caplog.at_level(logging.WARNING, logger="bidsport.status"):
        rows = regenerate_status(layout, [("08", "1")])
    assert [(r.participant_id, r.session_id) for r in rows] == [
        ("01", "1"), ("03", "1"), ("08", "1"), ("09", None)
    ]  # fmt: skip
    assert read_status(layout) == rows
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and "sub-02 ses-1" in dropped[0], dropped
    newest = sorted(layout.status_backup_dir.glob("status-*.tsv"))[-1]
    assert ("02", "1") in {(r.participant_id, r.session_id) for r in read_status_file(newest)}
    # the manifest row stays without the manifest, and nothing changes again
    before = layout.status_file.read_bytes()
    assert regenerate_status(layout) == rows
    assert layout.status_file.read_bytes() == before


def test_unrecorded_outcome() -> None:
    killed = _row("01", "1")  # imported, organized, not converted, no error
    assert outcome_missing(killed)
    assert unrecorded_outcome(killed, None) == INTERRUPTED
    assert unrecorded_outcome(killed, killed) == INTERRUPTED
    assert unrecorded_outcome(killed, _row("01", "1", converted=True)) == IMAGES_MISSING
    for row in (
        _row("01", "1", converted=True),
        _row("01", "1", last_error="dcm2niix failed"),
        _row("01", "1", packet=None, imported=False, organized=False),  # expected
    ):
        assert not outcome_missing(row)
        assert unrecorded_outcome(row, None) is None


def test_images_are_found_in_every_output_layout(tmp_path: Path) -> None:
    """--layout flat writes images into the session folder itself, --output-format dcm
    folders of DICOM copies: both are converted sessions (they were counted as not
    converted, then as interrupted)."""
    from bidsport.status import _has_image

    for layout, name in (
        ("anat", "sub-01_T1w.nii.gz"),
        (".", "sub-01_T1w.nii"),
        ("anat/sub-01_T1w", "0002_000001_ab.dcm"),
    ):
        session = tmp_path / layout.replace("/", "_").strip(".") / "sub-01"
        (session / layout).mkdir(parents=True, exist_ok=True)
        assert not _has_image(session)
        (session / layout / name).write_bytes(b"x")
        assert _has_image(session), layout
    with_sessions = tmp_path / "multi" / "sub-01"
    (with_sessions / "ses-2" / "anat").mkdir(parents=True)
    (with_sessions / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz").write_bytes(b"x")
    assert not _has_image(with_sessions)  # another session's image
