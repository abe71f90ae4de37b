"""A participant-level re-run with nothing new, answered before the pipeline is loaded.

A participant-level run that leaves every selected session converted writes a *stamp*,
``OUTPUT_DIR/sourcedata/bidsport/uptodate/<key>.json``, one per command line and working
folder. It holds:

- what the run read before it started, each as a ``stat`` signature: the inbox's entries,
  every file named on the command line (``--rules``, ``--mapping``, ``--manifest``...),
  bidsport's own code; and the user's ids, which decide what is readable;
- what a re-run reads of the output: each session's status record and folders (the
  session's and its datatype folders: an image deleted there is seen), as signatures, and
  the sessions' rows of the status table, as text (other runs, e.g. the other tasks of a
  SLURM array, write their own rows to the same table: a change there is not a change
  for this run, see :func:`table_holds`); and the scratch folder that a killed run would
  leave behind;
- what that re-run prints, reports and exits with. Every session is "already done
  (skipped)", rendered by the code of the full path
  (:func:`bidsport.cli.levels.write_shortcut`).

:func:`replay` runs before anything else is imported. It compares the stamp with the
disk: the same command line, folder, bidsport and signatures, and no session locked by
another run. Then it writes the run's log and report and returns the stamped outcome.
Otherwise it returns None and the run takes the full path, which writes a new stamp
when it ends. A stamp is written only for runs without ``--anonymize``, ``--dry-run``
or ``--verbose``, with ``--overwrite skip`` (the default), in which every session
succeeded and every packet of the inbox was assigned.

The signatures are taken before the run reads its inputs and after it wrote its
records: a change made during the run makes the stamp differ, never hides the change.

A replay imports zlib and the C half of json (fcntl when it checks locks) besides what a
Python interpreter loads at start. argparse, logging, pathlib and dataclasses together
take longer than the whole check (~50 ms of a ~0.1 s re-run). That is why it uses plain
dicts and lists, string paths, and a slotted class instead of a frozen dataclass. Even
``import json`` costs ~9 ms, a third of a quick re-run (its decoder and encoder compile
regular expressions when imported), so the stamp is read with the C scanner that
``json.loads`` itself uses (:func:`_loads`) and the report is stamped as JSON text.
"""

from __future__ import annotations

import os
import stat
import sys
import time
import zlib

from bidsport import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

    Stamp = dict[str, Any]

FORMAT = 3
STAMP_DIR = ("sourcedata", "bidsport", "uptodate")
#: where a participant run without --anonymize logs (``DatasetLayout.logs_dir``)
LOGS_DIR = ("derivatives", "bidsport", "logs")
#: stands for the report's path in the stamped output (each run has its own report)
REPORT_SENTINEL = "\x00report\x00"
#: stand for the report's times in its stamped JSON text (no path or name holds a NUL)
STARTED = "\x00started\x00"
FINISHED = "\x00finished\x00"
#: what the log says of a session skipped as already converted (both paths)
SKIPPED = "%s: already converted, skipped (--overwrite skip)"


class Replay:
    """The outcome of a re-run with nothing new: the lines to print and the exit code.

    ``lines`` are (stream, text) pairs, in order; stream 1 is stdout and 2 stderr.
    """

    __slots__ = ("exit_code", "lines")

    def __init__(self, lines: list[tuple[int, str]], exit_code: int) -> None:
        self.lines = lines
        self.exit_code = exit_code


# --------------------------------------------------------------------------- names


def stamp_name(cwd: str, argv: list[str]) -> str:
    """The stamp's file name for a command line run in ``cwd``."""
    # NUL joins the words without ambiguity: no path or argument can hold one
    key = "\0".join([cwd, *argv]).encode("utf-8", "surrogateescape")
    return f"{zlib.crc32(key):08x}{zlib.adler32(key):08x}.json"


def stamp_path(output_dir: str, cwd: str, argv: list[str]) -> str:
    return os.path.join(output_dir, *STAMP_DIR, stamp_name(cwd, argv))


def log_file_name(level: str, who: str, when: float | None = None) -> str:
    """``<level>_<who>_<UTC time>_<host>_<pid>.log``: unique per run, also on a cluster."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
    return f"{level}_{who}_{stamp}_{os.uname().nodename}_{os.getpid()}.log"


def iso_utc(when: float) -> str:
    """``when`` as ISO 8601 UTC with seconds (``2024-01-02T09:00:00+00:00``), as
    ``datetime.isoformat(timespec="seconds")`` gives it, without importing datetime."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(when))


# --------------------------------------------------------------------------- observe


def _sig(st: os.stat_result) -> list[int]:
    return [
        st.st_mode,
        st.st_ino,
        st.st_dev,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_uid,
        st.st_gid,
    ]


def signature(path: str) -> list[list[int] | None] | None:
    """The ``lstat`` signature of ``path``, and its target's for a symbolic link; None
    when it does not exist. A write, a chmod, a rename over it all change it (ctime)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISLNK(st.st_mode):
        return [_sig(st)]
    try:
        return [_sig(st), _sig(os.stat(path))]
    except OSError:
        return [_sig(st), None]


def _code_digest() -> int:
    """A checksum of the names, sizes and mtimes of bidsport's own files."""
    parts = []
    stack = [os.path.dirname(os.path.abspath(__file__))]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.name == "__pycache__":
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    st = entry.stat(follow_symlinks=False)
                    parts.append(f"{entry.path}\0{st.st_size}\0{st.st_mtime_ns}")
    return zlib.crc32("\n".join(sorted(parts)).encode("utf-8", "surrogateescape"))


def _named_files(argv: list[str]) -> dict[str, list[list[int] | None] | None]:
    """The signature of every regular file named on the command line (``--opt=file``
    too): whichever option reads it, a change to it is seen."""
    found = {}
    for token in argv:
        candidates = [token]
        if token.startswith("--") and "=" in token:
            candidates.append(token.partition("=")[2])
        for candidate in candidates:
            if candidate and os.path.isfile(candidate):
                found[candidate] = signature(candidate)
    return found


def observe_inputs(argv: list[str], inbox: str) -> dict[str, object]:
    """What a participant-level run reads before its first session, as signatures.

    Raises OSError when the inbox cannot be listed.
    """
    names = sorted(n for n in os.listdir(inbox) if not n.startswith("."))
    return {
        "bidsport": __version__,
        "code": _code_digest(),
        "python": sys.version,
        "ids": [os.getuid(), os.getgid(), sorted(os.getgroups())],
        "entries": {name: signature(os.path.join(inbox, name)) for name in names},
        "files": _named_files(argv),
    }


def observe_outputs(paths: list[str]) -> dict[str, list[list[int] | None] | None]:
    return {path: signature(path) for path in paths}


def table_label(cell: str, prefix: str) -> str:
    """A status table cell as the label in ``StatusRow.key`` ("" for none)."""
    cell = cell.strip()
    return "" if cell in ("", "n/a") else cell.removeprefix(prefix)


#: Columns of ``status.tsv``, in order (``bidsport.status`` writes them; defined here,
#: where a re-run reads the table without importing it). Then its flag columns, and the
#: cells of those that ``status.read_status`` accepts.
STATUS_COLUMNS = (
    "participant_id",
    "session_id",
    "packet",
    "imported",
    "organized",
    "converted",
    "last_error",
    "updated",
)
_FLAGS = ("imported", "organized", "converted")
_FLAG_VALUES = frozenset({"true", "1", "yes", "false", "0", "no", "n/a", ""})


def _rows_by_session(lines: list[str]) -> dict[tuple[str, str], str] | None:
    """The line of each session (by ``StatusRow.key``) of a status table's ``lines``,
    the header first; None when ``status.read_status`` would refuse the table: a missing
    column, a column named twice, a line whose number of cells is not the header's, a
    flag that is not true or false, a label that is not letters and digits, a session
    with two rows (then the full path warns, and decides).
    """
    header = lines[0].split("\t") if lines else []
    if len(set(header)) != len(header) or not all(name in header for name in STATUS_COLUMNS):
        return None
    subject, session = header.index("participant_id"), header.index("session_id")
    flags = [header.index(name) for name in _FLAGS]
    found: dict[tuple[str, str], str] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header) or any(
            cells[i].strip().lower() not in _FLAG_VALUES for i in flags
        ):
            return None
        key = (table_label(cells[subject], "sub-"), table_label(cells[session], "ses-"))
        named = cells[session].strip() not in ("", "n/a")  # ("ses-" alone: an empty label)
        if (
            not (key[0].isascii() and key[0].isalnum())
            or (named and not (key[1].isascii() and key[1].isalnum()))
            or key in found
        ):
            return None
        found[key] = line
    return found


def _read_lines(path: str) -> list[str] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None


def table_rows(path: str, sessions: list[tuple[str, str]]) -> dict[str, object] | None:
    """What a stamp keeps of the status table at ``path``: its signature, its header line
    and the line of each of ``sessions`` (``StatusRow.key``s); None when the table is
    unreadable, changes while it is read, or does not hold each session exactly once.
    """
    before = signature(path)
    lines = _read_lines(path)
    if lines is None or signature(path) != before:
        return None
    found = _rows_by_session(lines)
    if found is None or any(key not in found for key in sessions):
        return None
    return {
        "path": path,
        "signature": before,
        "header": lines[0],
        "rows": [found[key] for key in sessions],
    }


def table_holds(stamped: dict[str, object]) -> bool:
    """True when the status table still holds the stamped rows (:func:`table_rows`).

    Unchanged (the same signature), or changed by other runs only: the same header, a
    well-formed line per row, and the stamped line, once, for each stamped session. Then
    the full path would find each session's row equal to its record and not write the
    table. Lines are compared as text, so a row written by other code, even equal once
    read, makes this False (and the full path decides).
    """
    path = str(stamped["path"])
    if signature(path) == stamped["signature"]:
        return True
    lines = _read_lines(path)
    if not lines or lines[0] != stamped["header"]:
        return False
    found = _rows_by_session(lines)
    rows = stamped["rows"]
    if found is None or not isinstance(rows, list):
        return False
    wanted = _rows_by_session([lines[0], *rows]) or {}
    return all(found.get(key) == mine for key, mine in wanted.items())


def _writable(folders: list[str]) -> bool:
    """True when each folder exists and can be written (the full path writes there)."""
    return all(os.path.isdir(f) and os.access(f, os.W_OK | os.X_OK) for f in folders)


def lock_held(path: str) -> bool:
    """True when another process holds this session lock (``fileops.file_lock``).

    The lock is taken and released at once (``LOCK_NB``), never waited for; a lock file
    that does not exist is free. Opened for writing, as ``file_lock`` opens it (NFS locks
    need it): a lock file that cannot be opened so, or a file system without ``flock``,
    raises OSError.
    """
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def held_locks(folder: str) -> tuple[list[str], list[tuple[str, OSError]]]:
    """The session locks (``*.lock``) in ``folder`` that another process holds, sorted
    (each tested by :func:`lock_held`), and those that cannot be tested, with why (not
    writable by this user, a file system without ``flock``). A missing folder holds
    none; a folder that cannot be listed raises OSError.
    """
    try:
        names = sorted(name for name in os.listdir(folder) if name.endswith(".lock"))
    except FileNotFoundError:
        return [], []
    held: list[str] = []
    untestable: list[tuple[str, OSError]] = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            if lock_held(path):
                held.append(path)
        except OSError as exc:
            untestable.append((path, exc))
    return held, untestable


def _locks_free(paths: list[str]) -> bool:
    """False when another run holds one of these session locks (:func:`lock_held`).

    A lock file that cannot be opened for writing raises OSError, and the full path
    reports it.
    """
    return not any(lock_held(path) for path in paths)


# --------------------------------------------------------------------------- replay


class _Decoding:
    """What the C scanner of ``_json`` reads from a ``json.JSONDecoder``: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not in a stamp")


def _loads(text: str) -> object:
    """``json.loads(text)``, by the C scanner that ``json.loads`` uses, without importing
    json. Anything the scanner does not take (and an interpreter without it) goes to
    ``json.loads``, which decodes it or raises as it always does."""
    try:
        from _json import make_scanner

        # typeshed's stub wants a scanner as context; the C code reads the attributes
        value, end = make_scanner(_Decoding())(text, 0)  # type: ignore[arg-type]
    except Exception:
        value, end = None, -1
    if end != len(text.rstrip(" \t\n\r")):  # JSON's whitespace, not str.isspace's
        import json

        return json.loads(text)
    return value


def _load_stamp(argv: list[str], cwd: str) -> Stamp | None:
    """The stamp of this command line, under the OUTPUT_DIR it names.

    Each word of the command line may be OUTPUT_DIR. A stamp counts only when this user
    wrote it (owned by us, writable by nobody else) for the folder it lies in, and when
    the folders it names are this command's: the inbox is one of its words and the logs
    go to OUTPUT_DIR's log folder. A stamp put into another folder the command names
    (the inbox, say) cannot redirect the run.
    """
    name = stamp_name(cwd, argv)
    for token in argv:
        if token.startswith("-"):
            continue
        path = os.path.join(token, *STAMP_DIR, name)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_uid != os.getuid() or st.st_mode & 0o022:
                    continue
                stamp = _loads(fh.read().decode("ascii"))
        except (OSError, ValueError):  # unreadable or damaged: look further, then decide
            continue
        if isinstance(stamp, dict) and _names_this_run(stamp, argv, token, path):
            return stamp
    return None


def _names_this_run(stamp: Stamp, argv: list[str], output_dir: str, path: str) -> bool:
    same = os.path.normpath
    who = stamp.get("who")
    log_dir = stamp.get("log_dir")
    return bool(
        isinstance(stamp.get("output_dir"), str)
        and same(stamp["output_dir"]) == same(output_dir)
        and isinstance(stamp.get("path"), str)
        and same(stamp["path"]) == same(path)
        and isinstance(stamp.get("inbox"), str)
        and same(stamp["inbox"]) in {same(word) for word in argv if word != output_dir}
        and isinstance(who, str)
        and who
        and os.sep not in who
        and not who.startswith(".")
        and isinstance(log_dir, str)
        and same(log_dir) == same(os.path.join(os.path.abspath(output_dir), *LOGS_DIR))
    )


def _fresh(stamp: Stamp, argv: list[str], cwd: str) -> bool:
    return bool(
        stamp["format"] == FORMAT
        and stamp["cwd"] == cwd
        and stamp["argv"] == argv
        and _writable(stamp["writable"])
        and observe_inputs(argv, stamp["inbox"]) == stamp["inputs"]
        and observe_outputs(list(stamp["outputs"])) == stamp["outputs"]
        and table_holds(stamp["table"])
        and not any(os.path.lexists(path) for path in stamp["absent"])
        and _locks_free(stamp["locks"])
    )


def replay(argv: list[str]) -> Replay | None:
    """The outcome of this participant-level run when its stamp says nothing is new.

    Writes the run's log file and JSON report, as the full path does. Returns None (take
    the full path) when there is no stamp, when anything differs from it, and on any
    error reading it or writing the log and report.
    """
    if "participant" not in argv:
        return None
    try:
        cwd = os.getcwd()
        stamp = _load_stamp(argv, cwd)
        if stamp is None or not _fresh(stamp, argv, cwd):
            return None
        return _write_outcome(stamp, argv, time.time())
    except Exception:  # whatever is wrong with a stamp, the full path decides
        return None


def _log_line(when: float, logger: str, message: str, level: str = "INFO") -> str:
    """A line as the log file's handler formats it (``cli.logs``)."""
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return f"{clock},{int(when % 1 * 1000):03d} {level} {logger}: {message}\n"


def _write_outcome(stamp: Stamp, argv: list[str], started: float) -> Replay:
    log_file = os.path.join(stamp["log_dir"], log_file_name("participant", stamp["who"]))
    report_file = log_file[: -len(".log")] + "_report.json"
    os.makedirs(stamp["log_dir"], exist_ok=True)
    lines = [
        _log_line(started, "bidsport", f"bidsport {__version__}: bidsport {' '.join(argv)}"),
        _log_line(started, "bidsport", f"effective configuration: {stamp['config']}", "DEBUG"),
        _log_line(
            started,
            __name__,
            f"nothing new since the run that ended {stamp['finished']}: the inbox's "
            f"{len(stamp['inputs']['entries'])} entries, the files named on the command "
            f"line, and the sessions' records and folders ({len(stamp['outputs'])}) are as it "
            f"left them, and the status table holds their rows ({stamp['path']})",
        ),
    ]
    lines += [_log_line(started, __name__, message) for message in stamp["log"]]
    with open(log_file, "a", encoding="utf-8", errors="backslashreplace") as fh:
        fh.write("".join(lines))
    report = stamp["report"].replace(_quoted(STARTED), f'"{iso_utc(started)}"')
    _write_text(report_file, report.replace(_quoted(FINISHED), f'"{iso_utc(time.time())}"'))
    lines_out = [
        (int(stream), text.replace(REPORT_SENTINEL, report_file)) for stream, text in stamp["lines"]
    ]
    return Replay(lines_out, int(stamp["exit_code"]))


def _quoted(placeholder: str) -> str:
    """How ``json.dumps`` writes STARTED or FINISHED (``"\\u0000started\\u0000"``)."""
    return '"' + placeholder.replace("\x00", "\\u0000") + '"'


def _write_text(path: str, text: str) -> None:
    """Atomic, like ``fileops.write_text`` (which would load pathlib and tempfile)."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- write


def write_stamp(output_dir: str, cwd: str, argv: list[str], stamp: Stamp) -> str:
    """Write the stamp of a run (``stamp`` holds all but the keys this adds); its path.

    ``stamp["report"]`` is the re-run's report as the text of its file, with STARTED and
    FINISHED for its times, once each (ValueError otherwise).
    """
    import json
    from pathlib import Path

    from bidsport import fileops

    for placeholder in (STARTED, FINISHED):
        if stamp["report"].count(_quoted(placeholder)) != 1:
            raise ValueError(f"the stamped report must hold {placeholder!r} once")
    path = stamp_path(output_dir, cwd, argv)
    full = {"format": FORMAT, "cwd": cwd, "argv": argv, "output_dir": output_dir, "path": path}
    full.update(stamp)
    # ASCII: names that are not UTF-8 (surrogate escapes) are written as \udcXX
    fileops.write_text(Path(path), json.dumps(full, indent=1, ensure_ascii=True) + "\n")
    return path


def remove_stamp(output_dir: str, cwd: str, argv: list[str]) -> None:
    """Remove the stamp of this command line, if any (the run did not end up to date)."""
    import contextlib

    with contextlib.suppress(FileNotFoundError):
        os.unlink(stamp_path(output_dir, cwd, argv))
