"""Run dcm2niix per series (never on a whole session) and collect its outputs.

The binary is the one shipped by the pinned PyPI ``dcm2niix`` wheel, called by its path
(a machine may have an older dcm2niix on PATH). Each series is converted from a folder
holding that series' files only (their own folder when it holds nothing else, else a
folder of links to them), so the command line never grows with the file count. Small
series are converted several to a call (:func:`convert_batch`): a dcm2niix call costs ~10
ms before it reads a file, as much as reading ~15 files.

``.nii.gz`` outputs at the fast gzip levels (1-3, the default) are written uncompressed by
dcm2niix and gzipped by bidsport with ISA-L's igzip (python-isal): about 3x faster than
dcm2niix's own gzip at level 3, for files ~7% larger. Higher levels are dcm2niix's gzip.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidsport.errors import ConversionError, ExternalToolError
from bidsport.fileops import ensure_dir
from bidsport.records import FileHeader
from bidsport.runner import run_command

log = logging.getLogger(__name__)

#: the extensions dcm2niix writes next to an image, longest first
SIDE_EXTENSIONS = (".nii.gz", ".nii", ".json", ".bval", ".bvec")

#: the highest gzip level bidsport compresses itself (ISA-L's levels are 0-3); above it,
#: dcm2niix does. Measured on the real vendor data (58 MB of NIfTI): ISA-L level 2 takes
#: 0.15 s for a ratio of 0.359, dcm2niix's gzip at level 3 0.43 s for 0.337 (bench/README.md)
ISAL_MAX_LEVEL = 3


@functools.lru_cache(maxsize=1)
def dcm2niix_binary() -> Path:
    """Path of the dcm2niix binary shipped with the ``dcm2niix`` Python package."""
    try:
        import dcm2niix  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - a dependency
        raise ExternalToolError(
            "the dcm2niix Python package is not installed", "pip install dcm2niix"
        ) from exc
    path = Path(dcm2niix.bin)
    if not path.is_file():
        raise ExternalToolError(f"dcm2niix binary not found at {path}")
    if not os.access(path, os.X_OK):
        raise ExternalToolError(f"dcm2niix binary at {path} is not executable")
    return path


@functools.lru_cache(maxsize=4)
def dcm2niix_version(binary: Path | None = None) -> str:
    """The version string of the binary (e.g. ``v1.0.20260724``)."""
    result = run_command([binary or dcm2niix_binary(), "-h"], timeout=60)
    match = re.search(r"version (v[\w.]+)", result.stdout + result.stderr)
    if not match:
        raise ExternalToolError(f"cannot read the version of {binary or dcm2niix_binary()}")
    return match.group(1)


def build_dcm2niix_args(
    binary: Path,
    in_dir: Path,
    out_dir: Path,
    name: str,
    *,
    compress: bool = True,
    level: int = 2,
) -> list[str]:
    """The dcm2niix command line for one series (pure).

    ``-ba y`` strips the identifiers dcm2niix knows about (bidsport scrubs more later);
    ``-c ""`` leaves the NIfTI aux_file empty (dcm2niix puts ImageComments there, where
    consoles write patient names);
    ``-i n`` converts everything it was given (bidsport already decided what to convert);
    ``-w 2`` adds a suffix where two images would get one name (never overwrite: the
    output folder is private and fresh, so a clash means dcm2niix split the series);
    ``-d 0`` no recursion (the link folder is flat); ``-l o`` keeps the stored integers.
    """
    args = [
        str(binary),
        "-b",
        "y",
        "-ba",
        "y",
        "-c",
        "",
        "-i",
        "n",
        "-w",
        "2",
        "-d",
        "0",
        "-l",
        "o",
        "-x",
        "n",
        "-z",
        "y" if compress else "n",
    ]
    if compress:
        args.append(f"-{level}")
    args += ["-f", name, "-o", str(out_dir), str(in_dir)]
    return args


@dataclass(frozen=True)
class Dcm2niixOutput:
    """One image dcm2niix wrote, with the files that belong to it."""

    postfix: str  #: what dcm2niix appended to the requested name
    image: Path
    sidecar: Path | None
    bval: Path | None
    bvec: Path | None


@dataclass(frozen=True)
class SeriesConversion:
    series_id: str
    outputs: tuple[Dcm2niixOutput, ...]
    warnings: tuple[str, ...]
    seconds: float


def load_sidecar(path: Path) -> dict[str, Any]:
    """Read a dcm2niix JSON sidecar, tolerating its trailing commas (seen in the wild).

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "s.json"
    >>> _ = f.write_text('{"FrameTimesStart": [\\n0,\\n], "EchoTime": 0.03}')
    >>> load_sidecar(f)
    {'FrameTimesStart': [0], 'EchoTime': 0.03}
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = json.loads(re.sub(r",(\s*[\]}])", r"\1", text))
        except json.JSONDecodeError as exc:
            raise ConversionError(
                f"dcm2niix wrote an unreadable sidecar {path.name}: {exc}"
            ) from exc
    if not isinstance(data, dict):
        raise ConversionError(f"dcm2niix wrote a sidecar {path.name} that is not a JSON object")
    return {key: undo_double_encoding(value) for key, value in data.items()}


def undo_double_encoding(value: Any) -> Any:
    """``value`` (a sidecar's, at any depth) with its text encoded in UTF-8 twice repaired.

    dcm2niix reads the text of a DICOM file in UTF-8 (Specific Character Set ISO_IR 192)
    as Latin-1 and writes it in UTF-8 again: ``Müller`` becomes ``MÃ¼ller`` (a wrong
    description, and a name the scrubbers of :mod:`bidsport.phi` would not recognise).
    Text that, taken back to Latin-1 bytes, is valid UTF-8 was so encoded; text of a
    Latin-1 file (``Müller``: ``M\\xfcller`` is not UTF-8) is left as it is.

    >>> undo_double_encoding({"SeriesDescription": "flair MÃ¼ller", "List": ["Ã©té", 1]})
    {'SeriesDescription': 'flair Müller', 'List': ['Ã©té', 1]}
    >>> undo_double_encoding(["Ã©tÃ©", "Müller"])
    ['été', 'Müller']
    """
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            return value.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return value
    if isinstance(value, list):
        return [undo_double_encoding(v) for v in value]
    if isinstance(value, dict):
        return {k: undo_double_encoding(v) for k, v in value.items()}
    return value


def _split_ext(path: Path) -> tuple[str, str]:
    for ext in SIDE_EXTENSIONS:
        if path.name.endswith(ext):
            return path.name[: -len(ext)], ext
    return path.stem, path.suffix


def collect_outputs(out_dir: Path, name: str) -> list[Dcm2niixOutput]:
    """Group the files dcm2niix wrote for ``name`` by image (sorted by postfix)."""
    by_stem: dict[str, dict[str, Path]] = {}
    for path in out_dir.iterdir():
        stem, ext = _split_ext(path)
        if not stem.startswith(name):
            continue
        by_stem.setdefault(stem, {})[ext] = path
    outputs = []
    for stem, files in sorted(by_stem.items()):
        image = files.get(".nii.gz") or files.get(".nii")
        if image is None:
            continue
        outputs.append(
            Dcm2niixOutput(
                postfix=stem[len(name) :],
                image=image,
                sidecar=files.get(".json"),
                bval=files.get(".bval"),
                bvec=files.get(".bvec"),
            )
        )
    return outputs


def _copy_with_series_identity(
    src: Path, dst: Path, series_uid: str, number: int | None, instance: int
) -> None:
    """Copy a DICOM file as instance ``instance`` of series ``series_uid``."""
    import pydicom

    ds = pydicom.dcmread(src)
    ds.SeriesInstanceUID = series_uid
    if number is not None:
        ds.SeriesNumber = number
    ds.InstanceNumber = instance
    ds.save_as(dst)


def _link_target(path: Path, real_dirs: dict[str, str]) -> str:
    """Where ``path`` points when it is a symbolic link (one level), else ``path`` itself.

    The link's folder is resolved once per folder (``real_dirs``), so ``..`` in a relative
    link never climbs out of a symbolic link to a folder; one ``readlink`` per file.
    """
    text = str(path)
    try:
        target = os.readlink(text)
    except OSError:  # not a link
        return os.path.abspath(text)
    folder = os.path.dirname(os.path.abspath(text))
    real = real_dirs.get(folder)
    if real is None:
        real = real_dirs[folder] = os.path.realpath(folder)
    return os.path.normpath(os.path.join(real, target))


def series_folder(files: Sequence[Path]) -> Path | None:
    """The folder that holds exactly ``files`` and no other file, if there is one.

    dcm2niix then reads that folder itself (no recursion) instead of a folder of links
    made for it: scanner and PACS exports usually keep one series per folder, and on
    network file systems every link costs a round trip. ``files`` may be symbolic links
    (the flat organized folder): their targets are what counts. Sub-folders are allowed
    (dcm2niix does not descend with ``-d 0``); any other file means None.

    Files that are no links (what the import makes: hard links or copies) cost one listing
    of their folder, links one ``readlink`` each.
    """
    if not files:
        return None
    plain = _sole_folder([os.path.abspath(path) for path in files])
    if plain is not None:
        exact, linked = _holds_exactly(*plain)
        if not linked:
            return Path(plain[0]) if exact else None
    real_dirs: dict[str, str] = {}
    resolved = _sole_folder([_link_target(path, real_dirs) for path in files])
    return Path(resolved[0]) if resolved is not None and _holds_exactly(*resolved)[0] else None


def _sole_folder(paths: Sequence[str]) -> tuple[str, set[str]] | None:
    """The one folder of ``paths`` (absolute) and their names; None when they are in
    several folders, or one is there twice."""
    folder = os.path.dirname(paths[0])
    names = set()
    for path in paths:
        parent, name = os.path.split(path)
        if parent != folder:
            return None
        names.add(name)
    return (folder, names) if len(names) == len(paths) else None


def _holds_exactly(folder: str, names: set[str]) -> tuple[bool, bool]:
    """Whether ``folder`` holds every one of ``names`` and, besides, only sub-folders; and
    whether one of ``names`` is a symbolic link there."""
    found = 0
    linked = other = False
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name in names:
                    found += 1
                    linked = linked or entry.is_symlink()
                elif not entry.is_dir(follow_symlinks=False):
                    other = True
    except OSError:
        return False, False
    return found == len(names) and not other, linked


def _link_files(files: Sequence[Path], in_dir: Path) -> str:
    """Make ``in_dir`` hold one entry per file; return "hardlink" or "symlink".

    Hard links first (no new inode: on many file systems a fraction of the cost of a
    symbolic link), to the file itself when ``files`` are symbolic links: one
    ``linkat(2)`` per file, told to follow them (``link(2)`` would link the symbolic
    link, whose relative target then points nowhere). Symbolic links when the file
    system refuses hard links (another device, no support).

    This runs in the conversion threads, beside the session thread's Python: each system
    call gives up the GIL and waits to get it back, so there is one per file, not three
    (reading the link, testing its target, linking).
    """
    mode = "hardlink" if os.link in os.supports_dir_fd else "symlink"
    real_dirs: dict[str, str] = {}
    folder = os.open(in_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index, src in enumerate(files):
            name = f"{index:06d}.dcm"
            if mode == "hardlink":
                try:  # a dst_dir_fd makes os.link call linkat with AT_SYMLINK_FOLLOW
                    os.link(src, name, dst_dir_fd=folder)
                    continue
                except OSError as exc:
                    log.debug("hard links refused in %s (%s): symbolic links instead", in_dir, exc)
                    mode = "symlink"
            target = _link_target(src, real_dirs)
            if os.path.islink(target):  # a link to a link: rare, resolve it fully
                target = os.path.realpath(target)
            os.symlink(target, in_dir / name)
    finally:
        os.close(folder)
    return mode


def dcm2niix_gzips(compress: bool, level: int) -> bool:
    """Whether dcm2niix writes ``.nii.gz`` itself (above :data:`ISAL_MAX_LEVEL`), pure.

    >>> dcm2niix_gzips(True, 2), dcm2niix_gzips(True, 6), dcm2niix_gzips(False, 6)
    (False, True, False)
    """
    return compress and level > ISAL_MAX_LEVEL


def gzip_image(path: Path, level: int) -> Path:
    """Replace ``path`` (a private ``.nii`` work file) by ``path`` + ``.gz``, gzipped by
    ISA-L at ``level`` (0-3).

    The gzip header holds neither a file name nor a time, so an image gives the same bytes
    on every run on one machine. On failure (a full disk, ...) the partial ``.gz`` is
    removed, ``path`` is left, and :class:`ConversionError` names the file.
    """
    from isal import igzip, isal_zlib  # imported when an image is to be gzipped (~13 ms)

    target = path.with_name(path.name + ".gz")
    try:
        with (
            open(path, "rb") as src,
            open(target, "wb") as raw,
            igzip.IGzipFile(
                filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0
            ) as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, isal_zlib.error) as exc:  # type: ignore[misc]  # (its stub: an instance)
        target.unlink(missing_ok=True)
        raise ConversionError(f"cannot gzip {path.name}: {exc}") from exc
    path.unlink()
    return target


def convert_series(
    series_id: str,
    files: Sequence[Path],
    work_dir: Path,
    *,
    compress: bool = True,
    level: int = 2,
    merge_as: tuple[str, int | None] | None = None,
) -> SeriesConversion:
    """Convert one series: run dcm2niix on a folder holding exactly its files.

    That is the files' own folder when it holds nothing else (:func:`series_folder`),
    else a private folder of links to them (hard links where the file system allows).

    ``merge_as`` (SeriesInstanceUID, SeriesNumber) is for acquisitions a scanner split into
    one series per volume (Siemens XA MFSPLIT): dcm2niix never stacks separate series, so
    the files are copied into the private folder with one series identity instead of
    linked (the source files are not touched). Outputs stay in ``work_dir/out``; the
    caller renames them into the dataset. ``files`` must be in acquisition order (volume by
    volume) when ``merge_as`` is given: they are renumbered in that order.

    ``compress`` asks for ``.nii.gz`` at gzip ``level``: up to :data:`ISAL_MAX_LEVEL`
    dcm2niix writes ``.nii`` and :func:`gzip_image` compresses it, in this thread (ISA-L
    releases the GIL); so it does any image dcm2niix's own gzip left as ``.nii``.
    """
    binary = dcm2niix_binary()
    out_dir = ensure_dir(work_dir / "out")
    made_dir = None
    source_dir = series_folder(files) if merge_as is None else None
    if source_dir is None:
        source_dir = made_dir = ensure_dir(work_dir / "in")
        if merge_as is None:
            _link_files(files, made_dir)
        else:
            for index, src in enumerate(files):
                dst = made_dir / f"{index:06d}.dcm"
                _copy_with_series_identity(src, dst, *merge_as, instance=index + 1)
    name = "series"
    by_dcm2niix = dcm2niix_gzips(compress, level)
    args = build_dcm2niix_args(binary, source_dir, out_dir, name, compress=by_dcm2niix, level=level)
    result = run_command(args, timeout=3600)
    text = result.stdout + result.stderr
    warnings = _warning_lines(text)
    outputs = collect_outputs(out_dir, name)
    if made_dir is not None:
        shutil.rmtree(made_dir, ignore_errors=True)
    if result.returncode != 0 or not outputs:
        detail = "; ".join(warnings[-3:]) or text.strip().splitlines()[-1:]
        raise ConversionError(
            f"dcm2niix failed on series {series_id} ({len(files)} files, exit "
            f"{result.returncode}): {detail}"
        )
    start = time.perf_counter()
    outputs = _gzip_left(outputs, compress, by_dcm2niix, level, series_id)
    seconds = result.seconds + time.perf_counter() - start
    return SeriesConversion(series_id, tuple(outputs), warnings, seconds)


def _warning_lines(text: str) -> tuple[str, ...]:
    return tuple(
        line.strip() for line in text.splitlines() if line.lower().startswith(("warning", "error"))
    )


def _gzip_left(
    outputs: list[Dcm2niixOutput], compress: bool, by_dcm2niix: bool, level: int, series_id: str
) -> list[Dcm2niixOutput]:
    """``outputs`` with the ``.nii`` images gzipped when ``.nii.gz`` was asked for."""
    if not compress or not any(o.image.name.endswith(".nii") for o in outputs):
        return outputs
    if by_dcm2niix:  # its gzip writes images of 4 GiB and more as .nii
        log.warning(
            "dcm2niix left an image of series %s uncompressed (too large for its gzip): "
            "gzipped by bidsport at level %d",
            series_id,
            ISAL_MAX_LEVEL,
        )
    return gzip_outputs(outputs, level)


#: Series of at most this many files may be converted together (:func:`convert_batch`).
BATCH_MAX_FILES = 64
#: A SeriesInstanceUID dcm2niix writes into a file name as it is (``-f %j``); it cuts
#: names at 65 characters, and a DICOM UID has at most 64.
_PLAIN_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_MAX_UID = 64


def uid_key(uid: str) -> int:
    """What dcm2niix tells series apart by: the CRC-32 of the SeriesInstanceUID, not the
    UID itself (two UIDs with one CRC are stacked into one image when read together)."""
    return zlib.crc32(uid.encode("ascii", "replace"))


@dataclass(frozen=True)
class BatchItem:
    """One series of a :func:`convert_batch` call."""

    series_id: str
    series_uid: str  #: its SeriesInstanceUID, as in its files
    files: tuple[Path, ...]


def batchable_uid(uid: str | None) -> bool:
    """Whether dcm2niix names an image after ``uid`` unchanged (digits and dots only, at
    most 64 characters).

    >>> batchable_uid("1.2.840.10008.5"), batchable_uid("1.2 .3"), batchable_uid(None)
    (True, False, False)
    >>> batchable_uid("1." + "2" * 63)
    False
    """
    return bool(uid) and len(uid or "") <= _MAX_UID and _PLAIN_UID.fullmatch(uid or "") is not None


def named_by_uid(h: FileHeader) -> bool:
    """Whether dcm2niix's ``-f %j`` names this series' images after its SeriesInstanceUID:
    not for Siemens XA single-frame files (seen with XA30: named after the SeriesTime).

    >>> named_by_uid(FileHeader(Path("x"), 0, 0, manufacturer="SIEMENS",
    ...                         software_versions="syngo MR XA30"))
    False
    """
    siemens_xa = "SIEMENS" in (h.manufacturer or "").upper() and "XA" in (h.software_versions or "")
    return not (siemens_xa and (h.number_of_frames or 1) <= 1)


def _owner(name: str, uids: Sequence[str]) -> str | None:
    """The UID of ``uids`` that an image named ``name`` was written for: one that is the
    whole name, or followed by a character no UID continues with (dcm2niix's postfixes
    start with ``_`` or a letter).

    >>> _owner("1.2.3_e2", ["1.2.3", "1.2.34"]), _owner("1.2.34", ["1.2.3"])
    ('1.2.3', None)
    """
    for uid in uids:
        if name.startswith(uid) and (len(name) == len(uid) or name[len(uid)] not in "0123456789."):
            return uid
    return None


def convert_batch(
    items: Sequence[BatchItem], work_dir: Path, *, compress: bool = True, level: int = 2
) -> dict[str, SeriesConversion | None]:
    """Convert several series in one dcm2niix call; by series id, its conversion, or None
    when the call wrote nothing for it, or failed (convert it alone with
    :func:`convert_series`, which says why it fails).

    The files of every series are linked into one folder and dcm2niix names each image
    after its SeriesInstanceUID (``-f %j``). The UIDs must be distinct, made of digits and
    dots (:func:`batchable_uid`) with distinct CRC-32s (:func:`uid_key`), and each series
    must be all the files of its UID that the call sees: dcm2niix groups files by series,
    so each image is one of these series'. An image goes to the series whose UID its name
    is, or starts with followed by a postfix (``_e2``, ``a``...), which it keeps as in
    :func:`convert_series`; an image named after no series makes the whole call count as
    failed. dcm2niix's warnings go to the series whose "Convert ... as" line follows them
    (those printed while it reads the files, to the first series it converts).
    """
    uids = {item.series_uid: item for item in items}
    if len({uid_key(uid) for uid in uids}) != len(items) or not all(map(batchable_uid, uids)):
        raise ValueError(
            "convert_batch needs distinct SeriesInstanceUIDs (and CRC-32s) of digits and dots"
        )
    binary = dcm2niix_binary()
    out_dir = ensure_dir(work_dir / "out")
    in_dir = ensure_dir(work_dir / "in")
    _link_files([f for item in items for f in item.files], in_dir)
    by_dcm2niix = dcm2niix_gzips(compress, level)
    args = build_dcm2niix_args(binary, in_dir, out_dir, "%j", compress=by_dcm2niix, level=level)
    result = run_command(args, timeout=3600)
    shutil.rmtree(in_dir, ignore_errors=True)
    if result.returncode != 0:  # what it wrote may be cut short: nothing is taken
        log.info(
            "dcm2niix exited %d on a batch of %d series: each is converted alone",
            result.returncode,
            len(items),
        )
        return {item.series_id: None for item in items}
    warnings: dict[str, list[str]] = {uid: [] for uid in uids}
    pending: list[str] = []
    for line in (result.stdout + result.stderr).splitlines():
        if line.lower().startswith(("warning", "error")):
            pending.append(line.strip())
        elif line.startswith("Convert ") and " as " in line:
            uid = _owner(Path(line.split(" as ", 1)[1].split(" (")[0]).name, list(uids))
            if uid is not None:
                warnings[uid] += pending
                pending = []
    outputs: dict[str, list[Dcm2niixOutput]] = {uid: [] for uid in uids}
    for output in collect_outputs(out_dir, ""):
        uid = _owner(output.postfix, list(uids))  # the whole name: collected without prefix
        if uid is None:  # named otherwise (a scanner's naming quirk): nothing is taken
            log.info(
                "dcm2niix named an image %r, after no series of a batch of %d: "
                "each is converted alone",
                output.postfix,
                len(items),
            )
            return {item.series_id: None for item in items}
        outputs[uid].append(dataclasses.replace(output, postfix=output.postfix[len(uid) :]))
    share = result.seconds / len(items)
    converted: dict[str, SeriesConversion | None] = {}
    for uid, item in uids.items():
        if not outputs[uid]:
            converted[item.series_id] = None
            continue
        start = time.perf_counter()
        made = _gzip_left(outputs[uid], compress, by_dcm2niix, level, item.series_id)
        seconds = share + time.perf_counter() - start
        converted[item.series_id] = SeriesConversion(
            item.series_id, tuple(made), tuple(warnings[uid]), seconds
        )
    return converted


def gzip_outputs(outputs: Sequence[Dcm2niixOutput], level: int) -> list[Dcm2niixOutput]:
    """``outputs`` with each ``.nii`` image replaced by its :func:`gzip_image` (at ``level``,
    at most :data:`ISAL_MAX_LEVEL`); ``.nii.gz`` images are left as they are."""
    return [
        dataclasses.replace(o, image=gzip_image(o.image, min(level, ISAL_MAX_LEVEL)))
        if o.image.name.endswith(".nii")
        else o
        for o in outputs
    ]
