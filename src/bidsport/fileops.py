"""Every change bidsport makes to the file system goes through here.

Writes are atomic (temporary name in the same folder, then ``os.replace``), so a run
killed at any moment leaves either the old file or the new one, never half of one.
Links are relative, so a dataset stays valid wherever it is mounted.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bidsport.errors import OutputError


def _explain(exc: OSError, path: Path) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"no space left on device while writing {path}", "free some space")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputError(
            f"cannot write {path}: {exc.strerror}",
            "the output folder must be writable (in a container, mount it without :ro)",
        )
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _explain(exc, path) from exc
    return path


#: The longest file name, in bytes, of the file systems bidsport writes to (NAME_MAX).
NAME_MAX = 255


def temp_prefix(name: str, tag: str = "", room: int = 0) -> str:
    """``.<name>.<tag>``: how the temporary names made for ``name`` start. A file or a
    packet may have a name of up to :data:`NAME_MAX` bytes, and its temporary names must
    fit too: when ``room`` more bytes would not, ``name`` is cut short and ends with
    ``~`` and the CRC-32 of the whole name (two long names alike in their first 230
    bytes still get temporary names of their own).

    >>> temp_prefix("IM0001", "importing-", room=8)
    '.IM0001.importing-'
    >>> len(os.fsencode(temp_prefix("é" * 200, room=12))) + 12 <= NAME_MAX
    True
    """
    keep = NAME_MAX - len(os.fsencode(f"..{tag}")) - room
    data = os.fsencode(name)
    if len(data) > keep:
        # (a character cut in two stays as its bytes)
        name = f"{os.fsdecode(data[: max(keep - 9, 0)])}~{zlib.crc32(data):08x}"
    return f".{name}.{tag}"


def _pid_temp(path: Path) -> Path:
    """``.<name>.<pid>.tmp`` beside ``path`` (:func:`temp_prefix`)."""
    return path.with_name(f"{temp_prefix(path.name, room=11)}{os.getpid()}.tmp")


def _new_temp(folder: Path, name: str) -> Path:
    """Create an empty ``.<name>.<random>.tmp`` in ``folder``, as ``open`` creates files:
    mode 0666 less the umask (``tempfile.mkstemp`` makes 0600, and a dataset shared by a
    lab must stay readable by its members). The name is new (``O_EXCL``); a long ``name``
    is cut short in it (:func:`temp_prefix`)."""
    prefix = temp_prefix(name, room=12)
    for _ in range(100):
        tmp = folder / f"{prefix}{os.urandom(4).hex()}.tmp"  # (secrets.token_hex, not imported)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(folder))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    The temporary file exists (empty), with the mode a new file gets (0666 less the
    umask); a caller writing secrets makes it 0600 before writing.
    """
    ensure_dir(path.parent)
    try:
        tmp = _new_temp(path.parent, path.name)
    except OSError as exc:
        raise _explain(exc, path) from exc
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _explain(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def json_text(data: Any) -> str:
    """``data`` as the text of a JSON file written by :func:`write_json`.

    A name that is not UTF-8 (a path on the command line, say) reaches Python with
    surrogates, which no UTF-8 file can hold: each is written as its JSON escape
    (``\\udcff``), which a JSON reader turns back into the same string.
    """
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False)
    return text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n"


def write_json(path: Path, data: Any) -> None:
    write_text(path, json_text(data))


def write_tsv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Write a TSV with a header; missing or None values become ``n/a`` (BIDS)."""

    def cell(value: Any) -> str:
        if value is None or value == "":
            return "n/a"
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value).replace("\t", " ").replace("\n", " ")

    lines = ["\t".join(columns)]
    lines += ["\t".join(cell(row.get(col)) for col in columns) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Read a TSV written by :func:`write_tsv` (``n/a`` stays a string)."""
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]


def tsv_cell(row: Mapping[str, str], column: str) -> str | None:
    """A cell of a row that :func:`read_tsv` read: None when missing, empty or ``n/a``."""
    value = row.get(column)
    return None if value is None or value in ("", "n/a") else value


def move_into_place(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` (same file system), replacing a file there."""
    ensure_dir(dst.parent)
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            src.unlink()
            return
        raise _explain(exc, dst) from exc


def relative_target(target: Path | str, link_dir: Path | str) -> str:
    """The relative path by which a link in ``link_dir`` reaches ``target``.

    The same text as ``os.path.relpath(target, link_dir)`` (lexical: symbolic links on
    the way are not resolved), computed once per pair of absolute folders.

    >>> relative_target("/ds/sourcedata/raw/sub-01/pkt/IM1", "/ds/sourcedata/dicom/sub-01")
    '../../raw/sub-01/pkt/IM1'
    """
    target_s, link_dir_s = os.fspath(target), os.fspath(link_dir)
    folder, name = os.path.split(target_s)
    if name in ("", os.curdir, os.pardir) or not (
        os.path.isabs(folder) and os.path.isabs(link_dir_s)
    ):
        return os.path.relpath(target_s, link_dir_s)  # relative paths depend on the cwd
    rel_folder, below = _relative_folder(folder, link_dir_s)
    if name == below:  # the link's folder is the target or below it
        return os.path.relpath(target_s, link_dir_s)
    return name if rel_folder == os.curdir else rel_folder + os.sep + name


@functools.lru_cache(maxsize=256)
def _relative_folder(folder: str, link_dir: str) -> tuple[str, str | None]:
    """``folder`` relative to ``link_dir`` (both absolute), and the name of the entry of
    ``folder`` that holds ``link_dir`` (None when ``link_dir`` is not below ``folder``)."""
    outer = [part for part in os.path.normpath(folder).split(os.sep) if part]
    inner = [part for part in os.path.normpath(link_dir).split(os.sep) if part]
    below = inner[len(outer)] if len(inner) > len(outer) and inner[: len(outer)] == outer else None
    return os.path.relpath(folder, link_dir), below


def relative_symlink(target: Path | str, link: Path | str, *, replace: bool = True) -> None:
    """Make ``link`` a symlink to ``target`` by a relative path.

    With ``replace`` (the default) an entry at ``link`` is replaced atomically (a new link
    under a temporary name, then renamed) and the link's folder is made. ``replace=False``
    is for a caller that made the folder itself and saw nothing at ``link`` (it listed the
    folder): the link is made straight under its final name (one system call; a link
    appears whole or not at all), and an entry found at ``link`` raises
    :class:`OutputError` instead of being replaced.
    """
    rel = relative_target(target, os.path.dirname(link))
    if not replace:
        try:
            os.symlink(rel, link)
        except FileExistsError as exc:
            raise OutputError(f"cannot link {link}: an entry of that name exists already") from exc
        except OSError as exc:
            raise _explain(exc, Path(link)) from exc
        return
    link = Path(link)
    ensure_dir(link.parent)
    tmp = _pid_temp(link)
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(rel, tmp)
        os.replace(tmp, link)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _explain(exc, link) from exc


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (content and mode, not ownership)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        shutil.copymode(src, tmp)


def hardlink_or_copy(src: Path | str, dst: Path | str, *, replace: bool = True) -> str:
    """Hard-link ``src`` at ``dst`` when the file system allows it, else copy.

    Returns "hardlink" or "copy". The source is never modified (only its link count).
    With ``replace`` (the default) a file at ``dst`` is replaced and its folder made.
    ``replace=False`` is for a caller that made ``dst``'s folder itself and put nothing
    at ``dst``: the link is made straight under its final name (one system call: a hard
    link appears whole or not at all; a copy still goes through a temporary name), and
    an entry found at ``dst`` raises :class:`OutputError` instead of being replaced.
    """
    if not replace:
        try:
            os.link(src, dst, follow_symlinks=True)
            return "hardlink"
        except FileExistsError as exc:
            raise OutputError(f"cannot link {dst}: an entry of that name exists already") from exc
        except OSError:
            pass  # another file system, links refused: copy
        copy_file(Path(src), Path(dst))
        return "copy"
    src, dst = Path(src), Path(dst)
    ensure_dir(dst.parent)
    tmp = _pid_temp(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp, follow_symlinks=True)
        os.replace(tmp, dst)
        return "hardlink"
    except OSError:
        tmp.unlink(missing_ok=True)
    copy_file(src, dst)
    return "copy"


def remove_stale_temps(folder: Path) -> int:
    """Remove the temporary files a killed run left below ``folder``; return how many.

    Every temporary name this module makes is ``.<name>.<something>.tmp``; call this only
    on folders no other run is writing to (under the session lock).
    """
    removed = 0
    if not folder.is_dir():
        return removed
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            if name.startswith(".") and name.endswith(".tmp"):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


def count_files(
    folder: Path,
    *,
    suffixes: tuple[str, ...] = (),
    skip_sessions: bool = False,
    limit: int | None = None,
) -> int:
    """The regular files (links followed) in ``folder``, at any depth, counted up to
    ``limit`` (the walk stops there: ``limit=1`` asks whether there is one).

    Hidden entries (lock files, temporary files of atomic writes) are neither counted
    nor looked into; with ``suffixes``, only files whose names end with one of them
    count; with ``skip_sessions``, the ``ses-*`` folders directly in ``folder`` are not
    looked into (they belong to other sessions). What cannot be read counts for nothing.
    """
    count = 0
    stack = [(folder, skip_sessions)]
    while stack and (limit is None or count < limit):
        current, skip_here = stack.pop()
        try:
            with os.scandir(current) as listing:
                entries = list(listing)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if skip_here and entry.name.startswith("ses-"):
                continue
            try:
                if entry.is_file():
                    if not suffixes or entry.name.endswith(suffixes):
                        count += 1
                        if count == limit:
                            return count
                elif entry.is_dir():
                    stack.append((Path(entry.path), False))
            except OSError:
                continue
    return count


def process_alive(pid: int) -> bool:
    """True when a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_within(path: Path, root: Path) -> bool:
    """True when ``path`` (resolved) is ``root`` or below it."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
    except ValueError:
        return False
    return True


def remove_tree(path: Path, root: Path) -> None:
    """Remove ``path`` (a folder or file) — only if it lies inside ``root``.

    A symbolic link is removed itself, never followed: it lies inside ``root`` when its
    folder does, wherever it points.
    """
    link = path.is_symlink()
    where = path.parent if link else path
    real = Path(os.path.realpath(path))
    if not is_within(where, root) or (not link and real == Path(os.path.realpath(root))):
        raise OutputError(f"refusing to remove {path}: it is not inside {root}")
    if link or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True, what: str | None = None) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) held on ``path`` for the block.

    With ``blocking=False`` a held lock raises :class:`LockedError` at once, naming
    ``what`` is locked (default: the lock file's folder).
    """
    import fcntl

    from bidsport.errors import LockedError

    ensure_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError as exc:
            raise LockedError(
                f"{what or path.parent} is being processed by another bidsport run (lock {path})",
                "wait for the other run to finish; a lock of a killed run is released "
                "automatically",
            ) from exc
        yield
    finally:
        os.close(fd)
