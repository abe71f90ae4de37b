"""Write the example inbox: ``python -m bidsport.example DIR``.

Four participants, seven packets, one of every archive kind (.zip, .tar, .tgz, .tar.gz,
.tar.bz2, .tar.xz) and a folder; nested folders, files without extension, gzipped
files, a zip inside a folder, junk (text, zero-byte, truncated and random files), a
localizer and a derived series (ADC map). Packets are named ``<subject>_<session>``, so::

    bidsport DIR/inbox DIR/bids participant \\
        --nameformat '(?P<subject_id>[^_]+)_(?P<session_name>.+)'
"""

from __future__ import annotations

import argparse
import gzip
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

from bidsport.synthetic import Study, Subject, typical_session, write_series

ARCHIVE_KINDS = {
    "P01_V2": "zip",
    "P02_V1": "tar.gz",
    "P02_V2": "tar.bz2",
    "P03_V1": "tar.xz",
    "P03_V2": "tgz",
    "P04_V1": "tar",
}

NAMEFORMAT = r"(?P<subject_id>[^_]+)_(?P<session_name>.+)"


def _session_files(folder: Path, subject: Subject, study: Study, start: str) -> None:
    """A messy session: nested series folders, files without extension, some gzipped."""
    for spec in typical_session(start):
        series_dir = folder / "DICOM" / f"S{spec.series_number:04d}" / "IMAGES"
        paths = write_series(spec, series_dir, subject, study, name_pattern="IM{instance:05d}")
        if spec.series_number == 3:  # gzip the files of one series one by one
            for path in paths:
                with open(path, "rb") as src, gzip.open(f"{path}.dcm.gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                path.unlink()
    (folder / "README.txt").write_text("Exported from the scanner console.\n")
    (folder / "DICOM" / "empty.dat").write_bytes(b"")
    (folder / "DICOM" / "Thumbs.db").write_bytes(bytes(range(256)) * 4)
    first = next((folder / "DICOM" / "S0002" / "IMAGES").iterdir())
    (folder / "DICOM" / "truncated").write_bytes(first.read_bytes()[:300])


def write_example_inbox(inbox: Path) -> list[Path]:
    """Create the example inbox in ``inbox`` (which must not exist or be empty)."""
    inbox.mkdir(parents=True, exist_ok=True)
    if any(inbox.iterdir()):
        raise FileExistsError(f"{inbox} is not empty")
    staging = inbox.parent / f".{inbox.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    packets = []
    names = ["P01_V1", *ARCHIVE_KINDS]
    for i, name in enumerate(names):
        subject_id, visit = name.split("_")
        subject = Subject(
            patient_id=f"EX{subject_id}",
            patient_name=f"Example^{subject_id}",
            birth_date=f"19{70 + i}0101",
        )
        study = Study(key=name, date=f"2024010{1 + int(visit[1:])}", accession=f"ACC{i:04d}")
        folder = staging / name
        _session_files(folder, subject, study, start=f"{9 + i:02d}0000")
        kind = ARCHIVE_KINDS.get(name)
        if kind is None:  # the folder packet also carries a zip of one series inside
            buf = io.BytesIO()
            extra = folder / "DICOM" / "S0004"
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(extra.rglob("*")):
                    if path.is_file():
                        zf.write(path, path.relative_to(folder / "DICOM"))
            shutil.rmtree(extra)
            (folder / "DICOM" / "flair.zip").write_bytes(buf.getvalue())
            target = inbox / name
            shutil.move(str(folder), target)
        elif kind == "zip":
            target = inbox / f"{name}.zip"
            with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        zf.write(path, path.relative_to(folder))
        else:
            mode = {
                "tar": "w",
                "tar.gz": "w:gz",
                "tgz": "w:gz",
                "tar.bz2": "w:bz2",
                "tar.xz": "w:xz",
            }[kind]
            target = inbox / f"{name}.{kind}"
            with tarfile.open(target, mode) as tf:  # type: ignore[call-overload]
                tf.add(folder, arcname=name)
        packets.append(target)
    shutil.rmtree(staging, ignore_errors=True)
    return packets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bidsport.example",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inbox", type=Path, help="folder to create the example inbox in")
    args = parser.parse_args(argv)
    for packet in write_example_inbox(args.inbox):
        print(packet)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
