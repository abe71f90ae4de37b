"""``group --audit-phi`` on an anonymized dataset made from archive packets named after the
patient: the audit reads the packets again, and nothing it logs meanwhile may enter
OUTPUT_DIR (its own log file included); free text the tag policy does not list (a nested
CodeMeaning, ContrastBolusAgent) is scrubbed in every DICOM file written.
"""

from __future__ import annotations

import gzip
import os
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from bidsport.cli.run import main
from bidsport.synthetic import Study, Subject, typical_session, write_series

NAME = "Zorblatt^Quentin"
NEEDLE = b"zorblatt"
NAMEFORMAT = r"(?P<subject_id>S\d+)_(?P<session_name>ses\d)_.*"


def _zip_packet(inbox: Path, staging: Path) -> None:
    code = Dataset()
    code.CodeValue = "X1"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = "MRI head Zorblatt"
    subject = Subject(
        patient_id="MRN7734521",
        patient_name=NAME,
        extra={
            "ProcedureCodeSequence": Sequence([code]),
            "ContrastBolusAgent": "none (Zorblatt)",
        },
    )
    t1 = next(s for s in typical_session() if s.series_number == 2)
    folder = staging / "S01_ses1_Zorblatt"
    write_series(t1, folder, subject, Study())
    inbox.mkdir(parents=True)
    with zipfile.ZipFile(inbox / "S01_ses1_Zorblatt.zip", "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(staging).as_posix())


def _holding_the_name(root: Path) -> list[str]:
    """Files under ``root`` whose name, bytes (or gunzipped bytes) hold the name."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if NEEDLE in name.lower().encode():
                found.append(f"{dirpath}/{name} (name)")
        for name in filenames:
            path = Path(dirpath, name)
            data = path.read_bytes()
            if name.endswith(".gz"):
                data += gzip.decompress(data)
            if NEEDLE in data.lower():
                found.append(str(path.relative_to(root)))
    return found


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | int]:
    base = tmp_path_factory.mktemp("audit")
    inbox, out, work, key = base / "inbox", base / "bids", base / "work", base / "k.key"
    _zip_packet(inbox, base / "staging")
    code = main(
        [
            str(inbox),
            str(out),
            "participant",
            "--nameformat",
            NAMEFORMAT,
            "--anonymize",
            "--anonymize-key",
            str(key),
            "-w",
            str(work),
            "--output-format",
            "dcm",
            "--n-procs",
            "1",
            "-q",
        ]
    )
    return {"inbox": inbox, "out": out, "work": work, "key": key, "code": code}


def test_free_text_outside_the_policy_is_scrubbed_in_every_dicom(dataset) -> None:
    assert dataset["code"] == 0
    out = dataset["out"]
    dicoms = sorted(out.rglob("*.dcm"))
    assert any("sourcedata" in p.parts for p in dicoms)
    assert any(p.parts[len(out.parts)].startswith("sub-") for p in dicoms)
    for path in dicoms:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.ProcedureCodeSequence[0].CodeMeaning == "MRI head X", path
        assert ds.ProcedureCodeSequence[0].CodeValue == "X1", path  # untouched
        assert ds.ContrastBolusAgent == "none (X)", path
    assert _holding_the_name(out) == []


def test_the_audit_passes_and_logs_nothing_identifying_into_the_dataset(
    dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox, out, work, key = (dataset[k] for k in ("inbox", "out", "work", "key"))
    group = [str(inbox), str(out), "group", "--audit-phi", "--anonymize-key", str(key)]
    # without a work dir: the audit logs only to the console, as a participant run with
    # --anonymize does
    assert main([*group, "--skip-validation", "-vv"]) == 0
    assert "S01_ses1_Zorblatt" in capsys.readouterr().err
    # again (a second audit would see the first one's log), with a work dir: the log goes
    # to the work dir, never into OUTPUT_DIR
    assert main([*group, "--skip-validation", "-w", str(work), "-q"]) == 0
    assert "PHI audit: no identifier" in capsys.readouterr().out
    assert not sorted((out / "derivatives").rglob("group_*.log"))
    assert _holding_the_name(out) == []
    diverted = [p for p in (work / "logs").glob("group_*.log") if NEEDLE in p.read_bytes().lower()]
    assert diverted, "the lines naming the packet belong in the work dir's log"
