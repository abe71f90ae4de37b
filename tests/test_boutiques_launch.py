"""bosh runs bidsport from the descriptor: participant, then group level, on the example inbox.

Exactly what a boutiques user runs (without a container engine)::

    python -m bidsport.example example/inbox
    bosh exec launch --no-container --skip-data-collection \\
        descriptors/bidsport.json descriptors/invocations/participant.json
    bosh exec launch ... descriptors/invocations/group.json

The invocations use paths relative to the working directory (example/inbox,
example/bids), so the test runs bosh in tmp_path.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DESCRIPTOR = REPO / "descriptors" / "bidsport.json"
INVOCATIONS = REPO / "descriptors" / "invocations"
BIN = Path(sys.executable).parent
BOSH = BIN / "bosh"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

pytestmark = pytest.mark.slow


def _launch(invocation: str, cwd: Path) -> tuple[int, dict[str, str]]:
    """Run ``bosh exec launch``; return bidsport's exit code and bosh's report sections."""
    assert BOSH.exists(), f"bosh not found at {BOSH}: install boutiques (the 'test' extra)"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["NO_COLOR"] = "1"
    command = ["exec", "launch", "--no-container", "--skip-data-collection"]
    result = subprocess.run(
        [str(BOSH), *command, str(DESCRIPTOR), str(INVOCATIONS / invocation)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = ANSI.sub("", result.stdout)
    # bosh prints titled sections: "Shell command", "Exit code", ..., "Missing files"
    titles = ["Shell command", "Container location", "Container command", "Exit code",
              "Std out", "Std err", "Error message", "Output files", "Missing files"]  # fmt: skip
    pattern = re.compile(rf"^({'|'.join(titles)})$", re.MULTILINE)
    parts = pattern.split(report)
    sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    assert "Exit code" in sections, report + result.stderr
    return int(sections["Exit code"]), sections


def _output_ids(section: str) -> set[str]:
    """Boutiques output ids from lines like ``- example/bids/x (status_table, Optional)``."""
    return set(re.findall(r"\((\w+), (?:Required|Optional)\)", section))


def test_participant_then_group_level_through_bosh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "bidsport.example", "example/inbox"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    inbox = tmp_path / "example" / "inbox"
    before = sorted((p.relative_to(inbox), p.stat().st_size) for p in inbox.rglob("*"))
    bids = tmp_path / "example" / "bids"

    code, report = _launch("participant.json", tmp_path)
    assert code == 0, report.get("Std err", "") + report.get("Std out", "")
    assert report["Shell command"].startswith("bidsport example/inbox example/bids participant")
    assert report["Missing files"] == ""
    assert {"bids_dataset", "status_table"} <= _output_ids(report["Output files"])
    subjects = sorted(p.name for p in bids.glob("sub-*"))
    assert subjects == ["sub-P01", "sub-P02", "sub-P03", "sub-P04"]
    sessions = sorted(f"{p.parent.name}_{p.name}" for p in bids.glob("sub-*/ses-*"))
    assert len(sessions) == 7, sessions
    for session in bids.glob("sub-*/ses-*"):
        assert list(session.glob("anat/*_T1w.nii.gz")), f"{session}: no T1w"
    assert not (bids / "dataset_description.json").exists()  # written by the group level

    code, report = _launch("group.json", tmp_path)
    assert code == 0, report.get("Std err", "") + report.get("Std out", "")
    assert report["Missing files"] == ""
    assert {"bids_dataset", "status_table", "dataset_description", "participants_table"} <= (
        _output_ids(report["Output files"])
    )
    description = json.loads((bids / "dataset_description.json").read_text(encoding="utf-8"))
    assert description["DatasetType"] == "raw" and description["GeneratedBy"]
    with open(bids / "participants.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["participant_id"] for r in rows] == subjects
    with open(bids / "sourcedata" / "status.tsv", newline="", encoding="utf-8") as fh:
        status = list(csv.DictReader(fh, delimiter="\t"))
    assert len(status) == 7

    after = sorted((p.relative_to(inbox), p.stat().st_size) for p in inbox.rglob("*"))
    assert after == before, "the inbox was changed"
