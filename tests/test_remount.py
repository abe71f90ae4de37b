"""The output dataset stays whole wherever it is mounted or moved.

bidsport links only by relative paths inside OUTPUT_DIR (``sourcedata/dicom`` →
``sourcedata/raw``), so the dataset must survive being exposed at another path: bind-mounted
elsewhere in a private mount namespace with its original location hidden (as a container
or an HPC job sees it), or moved with a plain ``mv``. After either, every symbolic link
must resolve to a file inside the dataset and the BIDS validator must still pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bidsport.cli.run import main
from bidsport.layout import DatasetLayout
from bidsport.synthetic import Study, Subject, typical_session, write_series
from bidsport.validator import find_validator

NAMEFORMAT = r"(?P<subject_id>[^_]+)_(?P<session_name>.+)"

#: Run inside the namespace: argv = dataset, original path, validator command (JSON).
CHECK = """
import json, os, sys
from pathlib import Path
from bidsport.validator import run_validator

root, original, command = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
real_root = os.path.realpath(root)
links, broken, outside = 0, [], []
for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
        path = os.path.join(dirpath, name)
        if not os.path.islink(path):
            continue
        links += 1
        rel = os.path.relpath(path, root)
        if not os.path.exists(path):
            broken.append(rel)
        elif not os.path.realpath(path).startswith(real_root + os.sep):
            outside.append(rel)
result = run_validator(Path(root), command=command)
print(json.dumps({
    "links": links, "broken": broken, "outside": outside,
    "original_visible": os.path.exists(original),
    "validator_ran": result.ran,
    "errors": sorted({f"{i.code} {i.location}" for i in result.errors}),
}))
"""


def _namespace_runner(probe_dir: Path) -> list[str] | None:
    """A command prefix that runs ``sh -c SCRIPT`` in a private mount namespace, or None.

    Tries ``unshare --mount`` (root), then ``unshare --map-root-user --mount`` (an
    unprivileged user namespace); each is probed with a real bind and tmpfs mount.
    """
    if shutil.which("unshare") is None:
        return None
    src, dst = probe_dir / "src", probe_dir / "dst"
    src.mkdir(parents=True)
    dst.mkdir()
    for prefix in (["unshare", "--mount"], ["unshare", "--map-root-user", "--mount"]):
        probe = subprocess.run(
            [*prefix, "sh", "-c", 'mount --bind "$1" "$2" && mount -t tmpfs tmpfs "$1"',
             "sh", str(src), str(dst)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return prefix
    return None


def _run_remounted(prefix: list[str], source: Path, target: Path) -> dict[str, object]:
    """Bind ``source`` at ``target``, hide ``source``'s parent, run CHECK on ``target``."""
    command = find_validator()
    assert command is not None, "bids-validator-deno (a test dependency) is not installed"
    script = (
        'mount --bind "$1" "$2" && mount -t tmpfs tmpfs "$3" && exec "$4" -c "$5" "$2" "$1" "$6"'
    )
    result = subprocess.run(
        [*prefix, "sh", "-c", script, "sh", str(source), str(target), str(source.parent),
         sys.executable, CHECK, json.dumps(command)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _snapshot(root: Path) -> dict[str, tuple[str, int] | str]:
    """Every entry below ``root`` but the logs and the re-run stamps (they hold the stat
    signatures of one run): link targets, file hashes and mtimes."""
    entries: dict[str, tuple[str, int] | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("derivatives/bidsport/logs", "sourcedata/bidsport/uptodate")):
            continue
        if path.is_symlink():
            entries[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            entries[rel] = (digest, path.stat().st_mtime_ns)
    return entries


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(inbox, dataset): two subjects through the participant and group levels."""
    base = tmp_path_factory.mktemp("remount")
    specs = typical_session()
    keep = [specs[i] for i in (0, 1, 4, 5, 6, 7, 8)]  # localizer T1w sbref bold dwi fieldmaps
    for number, subject in enumerate(("R01", "R02")):
        for spec in keep:
            write_series(
                spec,
                base / "inbox" / f"{subject}_1" / f"S{spec.series_number:02d}",
                Subject(patient_id=f"PID{subject}"),
                Study(key=f"{subject}-1", date=f"2024020{number + 1}"),
            )
    inbox, out = base / "inbox", base / "site" / "bids"
    args = [str(inbox), str(out)]
    assert main([*args, "participant", "-q", "--n-procs", "1", "--nameformat", NAMEFORMAT]) == 0
    assert main([*args, "group", "-q"]) == 0
    return inbox, out


def test_dataset_has_relative_links_to_check(converted: tuple[Path, Path]) -> None:
    _, out = converted
    links = [p for p in out.rglob("*") if p.is_symlink()]
    assert len(links) > 50  # the organized DICOM folders
    assert all(not os.path.isabs(os.readlink(p)) for p in links)
    intended = json.loads(next(out.rglob("*_phasediff.json")).read_text(encoding="utf-8"))
    assert all(t.startswith("bids::") for t in intended["IntendedFor"])


def test_bind_mounted_elsewhere_with_the_original_hidden(
    tmp_path: Path, converted: tuple[Path, Path]
) -> None:
    prefix = _namespace_runner(tmp_path / "probe")
    if prefix is None:
        pytest.skip(
            "no private mount namespace: 'unshare --mount' (as root) and 'unshare "
            "--map-root-user --mount' (user namespaces) are not permitted here"
        )
    _, out = converted
    target = tmp_path / "mnt" / "data"
    target.mkdir(parents=True)
    seen = _run_remounted(prefix, out, target)
    assert seen["original_visible"] is False  # nothing can resolve through the old path
    assert seen["validator_ran"] is True
    assert seen["errors"] == []
    assert seen["broken"] == [] and seen["outside"] == []
    assert seen["links"] == sum(1 for p in out.rglob("*") if p.is_symlink())
    assert not any(target.iterdir())  # the mount was private: nothing left outside


def test_remount_check_catches_links_that_escape(
    tmp_path: Path, converted: tuple[Path, Path]
) -> None:
    """The namespace check fails for an absolute link and for a link out of the dataset."""
    prefix = _namespace_runner(tmp_path / "probe")
    if prefix is None:
        pytest.skip("no private mount namespace (see test_bind_mounted_elsewhere...)")
    inbox, out = converted
    copy = tmp_path / "site" / "bids"
    shutil.copytree(out, copy, symlinks=True)
    sidecar = next(copy.glob("sub-R01/ses-1/anat/*_T1w.json"))
    kept = copy / "sourcedata" / "T1w.json"
    shutil.move(sidecar, kept)
    sidecar.symlink_to(kept)  # absolute: breaks once the dataset is elsewhere
    first_dicom = next(iter(sorted(inbox.rglob("*.dcm"))))
    escape = copy / "sourcedata" / "escape.dcm"
    escape.symlink_to(os.path.relpath(first_dicom, escape.parent))  # relative, but outside
    target = tmp_path / "mnt" / "data"
    target.mkdir(parents=True)

    seen = _run_remounted(prefix, copy, target)
    rel = sidecar.relative_to(copy).as_posix()
    assert seen["broken"] == [rel]
    assert seen["outside"] == ["sourcedata/escape.dcm"]
    assert f"SYMLINK_BROKEN /{rel}" in seen["errors"]  # the validator notices it too


def test_moved_with_mv(tmp_path: Path, converted: tuple[Path, Path]) -> None:
    inbox, out = converted
    copy = tmp_path / "before" / "bids"
    shutil.copytree(out, copy, symlinks=True)  # keep the module's dataset where it is
    before = _snapshot(copy)
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    result = subprocess.run(["mv", str(copy), str(moved)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not copy.exists()

    links = [p for p in moved.rglob("*") if p.is_symlink()]
    assert links and all(p.resolve().is_file() for p in links)
    assert all(p.resolve().is_relative_to(moved.resolve()) for p in links)

    # both levels run at the new place: nothing to redo, nothing rewritten, still valid
    code = main([str(inbox), str(moved), "participant", "-q", "--nameformat", NAMEFORMAT])
    assert code == 0
    assert main([str(inbox), str(moved), "group", "-q"]) == 0  # 6 when invalid
    assert _snapshot(moved) == before
    layout = DatasetLayout(moved)
    assert str(copy) not in layout.report_file.read_text(encoding="utf-8")
    assert str(copy) not in layout.status_file.read_text(encoding="utf-8")
