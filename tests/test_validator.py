"""The BIDS validator wrapper: finding it, running it, reading its JSON."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsport import validator as validator_module
from bidsport.errors import ExternalToolError
from bidsport.validator import (
    Issue,
    find_validator,
    parse_validator_json,
    run_validator,
    start_validator,
    validator_bids_version,
    validator_env,
)

# Shortened from real ``bids-validator-deno 3.0.2 --format json`` output.
REAL_OUTPUT = {
    "issues": {
        "issues": [
            {
                "code": "NOT_INCLUDED",
                "severity": "error",
                "location": "/sub-01/anat/sub-01_T1x.nii.gz",
            },
            {
                "code": "TSV_COLUMN_MISSING",
                "subCode": "participant_id",
                "severity": "error",
                "location": "/participants.tsv",
                "issueMessage": "Required initial column 1 not found.",
                "rule": "rules.tabular_data.modality_agnostic.Participants",
            },
            {
                "code": "JSON_KEY_RECOMMENDED",
                "subCode": "License",
                "severity": "warning",
                "location": "/dataset_description.json",
                "issueMessage": "Field description: The license for the dataset.\nThe use ...",
                "rule": "rules.dataset_metadata.dataset_description",
            },
            {"code": "SOMETHING_IGNORED", "severity": "ignore", "location": "/x"},
        ],
        "codeMessages": {
            "NOT_INCLUDED": "Files with such naming scheme are not part of BIDS specification.\n",
            "TSV_COLUMN_MISSING": "A required column is missing.",
            "JSON_KEY_RECOMMENDED": "A JSON file is missing a key listed as recommended.",
        },
    },
    "summary": {"subjects": ["01"], "schemaVersion": "1.2.7"},
}


def _validator() -> list[str]:
    command = find_validator()
    assert command is not None, "bids-validator-deno (a test dependency) is not installed"
    return command


def _tiny_dataset(root: Path) -> Path:
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    image = nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4))
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, anat / "sub-01_T1w.nii.gz")
    (anat / "sub-01_T1w.json").write_text("{}\n", encoding="utf-8")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw"}),
        encoding="utf-8",
    )
    (root / "participants.tsv").write_text("participant_id\nsub-01\n", encoding="utf-8")
    (root / "README").write_text("tiny\n", encoding="utf-8")
    return root


def test_parse_real_json() -> None:
    errors, warnings, schema = parse_validator_json(json.dumps(REAL_OUTPUT))
    assert schema == "1.2.7"
    assert [e.code for e in errors] == ["NOT_INCLUDED", "TSV_COLUMN_MISSING"]
    assert errors[0] == Issue(
        code="NOT_INCLUDED",
        severity="error",
        location="/sub-01/anat/sub-01_T1x.nii.gz",
        message="Files with such naming scheme are not part of BIDS specification.",
    )  # message from codeMessages when the issue has none
    assert errors[1].sub_code == "participant_id"
    assert errors[1].message == "Required initial column 1 not found."
    assert errors[1].describe() == "TSV_COLUMN_MISSING[participant_id] /participants.tsv"
    assert [w.sub_code for w in warnings] == ["License"]
    assert "\n" not in (warnings[0].message or "")


@pytest.mark.parametrize("text", ["", "not json", '{"issues": []}', "[1, 2]"])
def test_parse_garbage_raises(text: str) -> None:
    with pytest.raises(ExternalToolError, match="unexpected output of the BIDS validator"):
        parse_validator_json(text)


def test_find_validator_prefers_our_environment() -> None:
    command = _validator()
    beside = Path(sys.executable).parent / "bids-validator-deno"
    if beside.is_file():
        assert command == [str(beside)]


def test_missing_validator_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_validator() is None
    assert validator_bids_version() is None
    result = run_validator(tmp_path)
    assert result.ran is False and result.errors == () and not result.valid
    assert start_validator(tmp_path).pid is None


def test_bids_version_of_the_installed_schema() -> None:
    version = validator_bids_version(_validator())
    assert version is not None and re.fullmatch(r"1\.\d+\.\d+", version)


def test_bids_version_is_read_from_the_end_of_the_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bids-validator.js"
    schema = b'{ rules: {} }, bids_version: "1.10.0", schema_version: "1.0.0" };'
    bundle.write_bytes(b"const bids_version = schema.bids_version;\n" + b"x" * 100_000 + schema)
    assert validator_module._scan_bids_version(str(bundle)) == "1.10.0"
    (tmp_path / "empty.js").write_bytes(b"")
    (tmp_path / "none.js").write_bytes(b"var bids_version;" * 10)
    for name in ("empty.js", "none.js", "missing.js"):
        assert validator_module._scan_bids_version(str(tmp_path / name)) is None


def test_bundle_of_this_environment_is_found_without_asking_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A validator script run by this process's Python: its package is looked up in this
    process. Another Python (another environment's, or run with options) is asked (here a
    stand-in script that answers as such a Python would)."""
    here = validator_module._package_dir_here(sys.executable, False)
    if (Path(sys.executable).parent / "bids-validator-deno").is_file():
        assert here is not None  # installed beside us: found without a second Python
        asked = validator_module.run_command(
            [
                sys.executable,
                "-c",
                "import bids_validator_deno as m, os; print(os.path.dirname(m.__file__))",
            ]
        )
        assert here == Path(asked.stdout.strip())
        expected = validator_bids_version(_validator())
        validator_module._scan_bids_version.cache_clear()
        with monkeypatch.context() as patch:
            patch.setattr(validator_module, "run_command", lambda *a, **k: pytest.fail("asked"))
            assert validator_bids_version(_validator()) == expected
    assert validator_module._package_dir_here(sys.executable, True) is None  # e.g. "-s"
    other = tmp_path / "other-env" / "bin"
    package = tmp_path / "other-env" / "site" / "bids_validator_deno"
    package.mkdir(parents=True)
    (package / "bids-validator.js").write_bytes(b'x; bids_version: "1.9.0" }')
    other.mkdir(parents=True)
    python = other / "python3"
    python.write_text(f"#!/bin/sh\necho {shlex.quote(str(package))}\n")
    python.chmod(0o755)
    script = other / "bids-validator-deno"
    script.write_text(f"#!{python}\nimport sys\n")
    script.chmod(0o755)
    assert validator_module._package_dir_here(str(python), False) is None
    assert validator_bids_version([str(script)]) == "1.9.0"


def test_real_run_valid_then_broken(tmp_path: Path) -> None:
    root = _tiny_dataset(tmp_path / "ds")
    result = run_validator(root, command=_validator())
    assert result.ran and result.valid, [i.describe() for i in result.errors]
    assert result.version and re.fullmatch(r"\d+\.\d+\.\d+\S*", result.version)
    assert result.command[-4:] == ("--format", "json", "--prune", str(root))
    assert result.warnings  # e.g. recommended keys missing from the empty sidecar

    (root / "sub-01" / "anat" / "sub-01_T1w.nii.gz").rename(
        root / "sub-01" / "anat" / "sub-01_T1x.nii.gz"
    )
    broken = run_validator(root, command=_validator())
    assert broken.ran and not broken.valid
    located = {(e.code, e.location) for e in broken.errors}
    assert ("NOT_INCLUDED", "/sub-01/anat/sub-01_T1x.nii.gz") in located


def test_the_validator_caches_where_it_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deno keeps its caches in ~/.cache/deno unless told otherwise (``deno_dir``); a
    DENO_DIR the user set wins."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("DENO_DIR", raising=False)
    root = _tiny_dataset(tmp_path / "ds")
    cache = tmp_path / "cache"
    result = run_validator(root, command=_validator(), deno_dir=cache)
    assert result.ran and result.valid, [i.describe() for i in result.errors]
    assert list(home.iterdir()) == [] and cache.is_dir()
    mine = tmp_path / "mine"
    monkeypatch.setenv("DENO_DIR", str(mine))
    assert validator_env(cache) is None and validator_env(None) is None
    assert run_validator(root, command=_validator(), deno_dir=cache).valid and mine.is_dir()


def test_a_validation_left_unfinished_is_stopped(tmp_path: Path) -> None:
    """The group level validates while it writes the report: when the report fails, the
    validator is stopped and reaped (no process, not even a zombie, is left)."""
    root = _tiny_dataset(tmp_path / "ds")
    with (
        pytest.raises(RuntimeError, match="the report failed"),
        start_validator(root, command=_validator()) as pending,
    ):
        pid = pending.pid
        assert pid is not None
        raise RuntimeError("the report failed")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_validator_crash_raises(tmp_path: Path) -> None:
    with pytest.raises(ExternalToolError, match="failed on"):
        run_validator(tmp_path, command=[sys.executable, "-c", "import sys; sys.exit(3)"])


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no writable /dev/shm here")
@pytest.mark.parametrize("where", ["in /dev/shm", "linked from /dev/shm"])
def test_a_dataset_under_dev_gets_a_hint_not_deno_colours(tmp_path: Path, where: str) -> None:
    """Deno refuses to read under /dev (HPC jobs often work in /dev/shm), also through a
    link there to a dataset elsewhere: the message has the validator's words without
    terminal colour codes, and the hint says what to do."""
    with tempfile.TemporaryDirectory(prefix="bidsport-test-", dir="/dev/shm") as tmp:
        if where == "in /dev/shm":
            root = _tiny_dataset(Path(tmp) / "ds")
        else:
            root = Path(tmp) / "ds"
            root.symlink_to(_tiny_dataset(tmp_path / "ds"), target_is_directory=True)
        with pytest.raises(ExternalToolError) as caught:
            run_validator(root, command=_validator())
    assert "NotCapable" in caught.value.message and "\x1b[" not in caught.value.message
    assert f"does not read under /dev, /proc or /sys ({root})" in (caught.value.hint or "")


def test_a_validator_without_prune_is_run_again_without_it(tmp_path: Path) -> None:
    """Validators before 2024-11 have no --prune: the real validator behind a wrapper that
    refuses the option as they do (their own words) still validates the dataset."""
    root = _tiny_dataset(tmp_path / "ds")
    old = tmp_path / "old-validator"
    old.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = --prune ] && '
        "{ echo 'error: Unknown option \"--prune\".' >&2; exit 2; }; done\n"
        f'exec {shlex.quote(_validator()[0])} "$@"\n',
        encoding="utf-8",
    )
    old.chmod(0o755)
    result = run_validator(root, command=[str(old)])
    assert result.ran and result.valid, [i.describe() for i in result.errors]
    assert "--prune" not in result.command and result.command[-1] == str(root)
