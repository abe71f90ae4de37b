"""Import: the packets of the inbox, their subject/session labels, and their files.

Like QuNex ``import_dicom``: every entry of DICOM_DIR (a folder, an archive, a single
gzipped file, or a loose DICOM file) is a *packet*; ``--pattern`` picks the entries and
their packet names, ``--nameformat`` (or a mapping file) turns packet names into
subject/session labels, and ``--archive`` says what happens to a packet once it was
imported and converted.

- :func:`discover_packets` lists the inbox (no recursion, hidden entries ignored);
- :func:`clean_label`, :func:`assign_packets` decide the labels (pure, no I/O);
- :func:`read_mapping`, :func:`read_manifest` read the user's tables;
- :func:`import_packet` brings one packet's files into bidsport's own folder (hard
  links or copies for folders, safe extraction for archives; never touching the input);
- :func:`apply_archive_policy` leaves, copies, moves or deletes the input afterwards.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import stat
import tempfile
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bidsport import fileops
from bidsport.archive import (
    DEFAULT_LIMITS,
    ExtractBudget,
    ExtractLimits,
    archive_kind,
    expand_nested,
    extract_archive,
    might_be_archive,
    read_head,
    sanitize_component,
    strip_archive_suffix,
    unread_format,
)
from bidsport.errors import ConfigError, LabelError, OutputError, UsageError
from bidsport.records import Assignment, Packet, Problem

log = logging.getLogger(__name__)

STAGE = "import"
ARCHIVE_POLICIES = ("leave", "copy", "move", "delete")

_PREFIX = re.compile(r"^\s*(sub|ses)-", re.IGNORECASE)
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")
_EMPTY_CELLS = ("", "n/a", "na", "none")

_PACKET_COLUMNS = ("packet", "packet_name")
_SUBJECT_COLUMNS = ("subject", "participant_id", "subject_id", "participant")
_SESSION_COLUMNS = ("session", "session_id", "session_name")


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_packet` did for one packet."""

    n_files: int  #: regular files under the destination at the end (after unpacking)
    mode: str  #: "hardlink", "copy", "mixed" (folders, loose files) or "extract" (archives)
    problems: tuple[Problem, ...]  #: members and files skipped, renamed or left packed


# --------------------------------------------------------------------------- discover


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    # Part 10 files have "DICM" after a 128-byte preamble; old raw files start with a
    # group 0002 or 0008 tag (little endian).
    return head[128:132] == b"DICM" or head[:2] in (b"\x02\x00", b"\x08\x00")


def _default_packet_name(entry: str, kind: str) -> str:
    if kind == "folder":
        return entry
    stripped = strip_archive_suffix(entry)
    if stripped != entry:
        return stripped
    return Path(entry).stem if kind == "file" else entry


def _compile(regex: str | None, option: str, group: str | None = None) -> re.Pattern[str] | None:
    if regex is None:
        return None
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise ConfigError(f"{option} {regex!r} is not a valid regular expression: {exc}") from exc
    if group is not None and group not in compiled.groupindex:
        raise ConfigError(
            f"{option} {regex!r} has no named group {group!r}",
            f"write it like (?P<{group}>...)",
        )
    return compiled


def discover_packets(
    dicom_dir: Path, pattern: str | None = None
) -> tuple[list[Packet], list[Problem]]:
    """The packets of the inbox ``dicom_dir``, sorted by entry name.

    Entries are folders, archives (see :func:`bidsport.archive.archive_kind`), single
    gzipped files, and loose DICOM files (kind "file"); hidden entries (``.*``) are
    ignored. ``pattern`` is searched (``re.search``) in each entry name: its named group
    ``packet_name`` (else the whole match) is the packet name; entries that do not match
    are skipped with a Problem. The default packet name is the entry name without its
    archive extension(s) (``S01.tar.gz`` → ``S01``; a loose ``IM1.dcm`` → ``IM1``).
    Broken links, unreadable entries, DICOMDIR files and other files are skipped with a
    Problem. Raises :class:`UsageError` when ``dicom_dir`` is not a readable folder and
    :class:`ConfigError` for an invalid ``pattern``.
    """
    regex = _compile(pattern, "--pattern")
    try:
        entries = sorted(os.listdir(dicom_dir))
    except OSError as exc:
        raise UsageError(
            f"cannot list the DICOM folder {dicom_dir}: {exc.strerror or exc}",
            "give an existing, readable folder (in a container: is it mounted?)",
        ) from exc
    packets: list[Packet] = []
    problems: list[Problem] = []

    def skip(entry: str, reason: str, fatal: bool = False) -> None:
        problems.append(Problem(where=entry, reason=reason, stage=STAGE, fatal=fatal))
        log.warning("inbox entry %s skipped: %s", entry, reason)

    for entry in entries:
        if entry.startswith("."):
            continue
        shown = sanitize_component(entry)
        name: str | None = None
        if regex is not None:
            match = regex.search(entry)
            if match is None:
                skip(shown, f"does not match --pattern {pattern!r}")
                continue
            if "packet_name" in regex.groupindex and match.group("packet_name"):
                name = match.group("packet_name")
            else:
                name = match.group(0)
            if not name:
                skip(shown, f"--pattern {pattern!r} gives an empty packet name")
                continue
        path = Path(dicom_dir) / entry
        try:
            st = path.stat()
        except OSError as exc:
            if path.is_symlink():
                skip(shown, f"broken symbolic link to {os.readlink(path)}", fatal=True)
            else:
                skip(shown, f"cannot read: {exc.strerror or exc}", fatal=True)
            continue
        if stat.S_ISDIR(st.st_mode):
            kind = "folder"
            readable = os.access(path, os.R_OK | os.X_OK)
        elif stat.S_ISREG(st.st_mode):
            readable = os.access(path, os.R_OK)
            kind = (archive_kind(path) or "file") if readable else "file"
        else:
            skip(shown, "not a folder or a file (FIFO, socket or device)")
            continue
        if not readable:
            skip(shown, "cannot read: permission denied", fatal=True)
            continue
        if kind == "file":
            if entry.upper() == "DICOMDIR":
                skip(shown, "DICOMDIR index: not a packet (the images are in folders)")
                continue
            if unread := unread_format(path):
                skip(
                    shown,
                    f"a {unread}: bidsport reads folders, zip and tar archives (plain or "
                    "compressed by gzip, bzip2 or xz) and gzipped files: unpack it into a "
                    "folder of the inbox",
                    fatal=True,
                )
                continue
            if not _looks_like_dicom(path):
                skip(shown, "not a folder, an archive or a DICOM file")
                continue
        name = sanitize_component(name or _default_packet_name(entry, kind))
        packets.append(Packet(path=path, name=name, kind=kind))
    return packets, problems


# --------------------------------------------------------------------------- labels


def _strip_prefix(raw: str) -> str:
    return _PREFIX.sub("", raw.strip(), count=1)


def clean_label(raw: str) -> str:
    """A BIDS-legal label: a leading ``sub-``/``ses-`` removed, then ASCII letters and digits.

    ``QPN_001`` → ``QPN001``, ``sub-01`` → ``01``. Letters with accents lose them and
    compatibility forms become the plain ones (Unicode NFKD) first, so that a name is
    one label however it was written (``José`` composed, or decomposed as macOS writes
    names: ``Jose``; a full-width letter: the plain one). Raises :class:`LabelError` naming
    ``raw`` when nothing is left.

    >>> clean_label("sub-QPN_001")
    'QPN001'
    >>> clean_label("Jos\u00e9") == clean_label("Jose\u0301") == "Jose"
    True
    """
    cleaned = _NOT_ALNUM.sub("", unicodedata.normalize("NFKD", _strip_prefix(raw)))
    if not cleaned:
        raise LabelError(
            f"label {raw!r} has no ASCII letters or digits left after cleaning",
            "BIDS labels are made of letters and digits: map this packet with a mapping file",
        )
    return cleaned


def _same_text(text: str) -> str:
    """``text`` in Unicode's composed form (NFC): two spellings of one name (``é`` as one
    character, or as ``e`` and an accent, as macOS writes names) are then equal."""
    return unicodedata.normalize("NFC", text)


@dataclass(frozen=True)
class _Candidate:
    packet: Packet
    raw_subject: str
    raw_session: str | None
    subject: str
    session: str | None
    source: str


def _target(subject: str, session: str | None) -> str:
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def _labels_for(
    packet: Packet,
    regex: re.Pattern[str] | None,
    mapping: dict[str, tuple[str, str | None]] | None,
) -> tuple[str, str | None, str]:
    """Raw (subject, session, source) of a packet; raises LabelError when there are none."""
    if mapping is not None and packet.name in mapping:
        subject, session = mapping[packet.name]
        return subject, session, "mapping"
    if regex is not None:
        match = regex.search(packet.name)
        if match is None or not match.group("subject_id"):
            raise LabelError(
                f"packet name {packet.name!r} does not match --nameformat {regex.pattern!r}",
                "fix --nameformat, or map this packet in a mapping file",
            )
        session = match.groupdict().get("session_name") or None
        return match.group("subject_id"), session, "nameformat"
    return packet.name, None, "default"


def assign_packets(
    packets: Sequence[Packet],
    nameformat: str | None = None,
    mapping: dict[str, tuple[str, str | None]] | None = None,
    *,
    merge_sessions: bool = False,
) -> tuple[list[Assignment], list[Problem]]:
    """Give each packet a subject (and session) label.

    Precedence: ``mapping`` (packet name → (subject, session)), then ``nameformat`` (a
    regex searched in the packet name, with named groups ``subject_id`` and optionally
    ``session_name``), then the whole packet name as subject without session. Labels are
    cleaned with :func:`clean_label`.

    A packet gets a fatal Problem, and no assignment, when its name does not match
    ``nameformat`` (and it is not mapped), when its label cannot be cleaned, when its
    name holds a ``;`` (the separator of packet names in ``status.tsv``), or when it
    collides: two packets with the same subject/session; two different raw labels that
    become the same after cleaning (``QPN_001`` vs ``QPN-001``, or labels differing only
    in case, which clash on case-insensitive file systems); a subject with some packets
    with a session and some without (BIDS needs all or none); or two inbox entries with
    the same packet name (``X_V1/`` and ``X_V1.zip``, or two entries ``--pattern`` names
    alike, ignoring case), which would be imported into the same folder. Each colliding
    packet's Problem names the others. The remaining packets are assigned, in order.

    With ``merge_sessions``, several packets of one subject/session are not a collision:
    a session sent in several parts (a PACS push per series, a series split across two
    exports) is imported as one; :func:`group_by_session` gathers them. Labels that
    differ only once cleaned, and packet names, still collide.
    """
    regex = _compile(nameformat, "--nameformat", "subject_id")
    problems: list[Problem] = []
    candidates: list[_Candidate] = []
    for packet in packets:
        if ";" in packet.name:
            reason = (
                f"packet name {packet.name!r} (inbox entry {packet.path.name!r}) holds a ';', "
                "which separates packet names in status.tsv: rename the inbox entry, or give "
                "it a packet name without ';' with --pattern"
            )
            problems.append(Problem(packet.name, reason, STAGE, fatal=True))
            log.error("packet %s not assigned: %s", packet.name, reason)
            continue
        try:
            raw_subject, raw_session, source = _labels_for(packet, regex, mapping)
            raw_session = raw_session.strip() if raw_session and raw_session.strip() else None
            subject = clean_label(raw_subject)
            session = clean_label(raw_session) if raw_session is not None else None
        except LabelError as exc:
            problems.append(Problem(packet.name, exc.message, STAGE, fatal=True))
            log.error("packet %s not assigned: %s", packet.name, exc.message)
            continue
        candidates.append(
            _Candidate(
                packet,
                _same_text(_strip_prefix(raw_subject)),
                _same_text(_strip_prefix(raw_session)) if raw_session is not None else None,
                subject,
                session,
                source,
            )
        )
    reasons: dict[int, list[str]] = defaultdict(list)

    def others(group: list[int], i: int) -> str:
        return ", ".join(repr(candidates[j].packet.name) for j in group if j != i)

    by_subject: dict[str, list[int]] = defaultdict(list)
    by_session: dict[tuple[str, str], list[int]] = defaultdict(list)
    by_target: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, cand in enumerate(candidates):
        by_subject[cand.subject.lower()].append(i)
        if cand.session:
            by_session[(cand.subject.lower(), cand.session.lower())].append(i)
        by_target[(cand.subject.lower(), cand.session.lower() if cand.session else None)].append(i)
        by_name[_same_text(cand.packet.name).casefold()].append(i)
    for group in by_name.values():
        if len(group) > 1:
            for i in group:
                entries = ", ".join(repr(candidates[j].packet.path.name) for j in group if j != i)
                reasons[i].append(
                    f"inbox entry {candidates[i].packet.path.name!r} has the same packet name "
                    f"{candidates[i].packet.name!r} as inbox entry(ies) {entries}: they would "
                    "be imported into the same folder, one replacing the other; rename one of "
                    "them (or give them distinct packet names with --pattern)"
                )
    for group in by_subject.values():
        raws = {candidates[i].raw_subject for i in group}
        if len(raws) > 1:
            for i in group:
                reasons[i].append(
                    f"subject label {candidates[i].raw_subject!r} becomes "
                    f"{candidates[i].subject!r}, like a different label in packet(s) "
                    f"{others(group, i)}"
                )
        with_session = [i for i in group if candidates[i].session]
        if with_session and len(with_session) < len(group):
            for i in group:
                reasons[i].append(
                    f"subject {candidates[i].subject!r} has packets with and without a session "
                    f"(BIDS needs all or none): see packet(s) {others(group, i)}"
                )
    for group in by_session.values():
        session_raws = {candidates[i].raw_session for i in group}
        if len(session_raws) > 1:
            for i in group:
                reasons[i].append(
                    f"session label {candidates[i].raw_session!r} becomes "
                    f"{candidates[i].session!r}, like a different label in packet(s) "
                    f"{others(group, i)}"
                )
    for group in by_target.values():
        if len(group) > 1 and not merge_sessions:
            for i in group:
                cand = candidates[i]
                reasons[i].append(
                    f"{_target(cand.subject, cand.session)} is also the target of packet(s) "
                    f"{others(group, i)}"
                )
    assignments: list[Assignment] = []
    for i, cand in enumerate(candidates):
        if i in reasons:
            reason = "; ".join(dict.fromkeys(reasons[i]))
            problems.append(Problem(cand.packet.name, reason, STAGE, fatal=True))
            log.error("packet %s not assigned: %s", cand.packet.name, reason)
            continue
        assignments.append(Assignment(cand.packet, cand.subject, cand.session, cand.source))
    return assignments, problems


def group_by_session(assignments: Sequence[Assignment]) -> list[tuple[Assignment, ...]]:
    """The assignments of each subject/session together (several packets of one session).

    Sessions come in the order of their first packet; packets keep their order.

    >>> from pathlib import Path
    >>> a, b, c = (Packet(Path(n), n, "folder") for n in ("S1_V1a", "S2_V1", "S1_V1b"))
    >>> groups = group_by_session(
    ...     [Assignment(a, "S1", "V1", "nameformat"), Assignment(b, "S2", "V1", "nameformat"),
    ...      Assignment(c, "S1", "V1", "nameformat")])
    >>> [[x.packet.name for x in g] for g in groups]
    [['S1_V1a', 'S1_V1b'], ['S2_V1']]
    """
    groups: dict[tuple[str, str | None], list[Assignment]] = {}
    for assignment in assignments:
        groups.setdefault((assignment.subject, assignment.session), []).append(assignment)
    return [tuple(group) for group in groups.values()]


# --------------------------------------------------------------------------- tables


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header (lower-case) and rows (with their line numbers) of a CSV or TSV file.

    The delimiter is sniffed from the header line (tab, comma or semicolon), the file
    extension breaking ties. Blank lines and lines starting with ``#`` are ignored.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    lines = [
        (n, line)
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise ConfigError(f"{path} is empty")
    header_line = lines[0][1]
    counts = {d: header_line.count(d) for d in ("\t", ",", ";")}
    preferred = "\t" if path.suffix.lower() == ".tsv" else ","
    delimiter = max(counts, key=lambda d: (counts[d], d == preferred))
    if counts[delimiter] == 0:
        delimiter = preferred

    def split(line: str) -> list[str]:
        return [cell.strip() for cell in next(csv.reader([line], delimiter=delimiter))]

    header = [cell.lower() for cell in split(header_line)]
    rows = []
    for number, line in lines[1:]:
        cells = split(line)
        if len(cells) > len(header) and any(cells[len(header) :]):
            raise ConfigError(
                f"{path}, line {number}: {len(cells)} columns, but the header has {len(header)}"
            )
        rows.append((number, dict(zip(header, cells, strict=False))))
    return header, rows


def _column(header: list[str], names: Iterable[str], path: Path, required: bool) -> str | None:
    for name in names:
        if name in header:
            return name
    if required:
        raise ConfigError(
            f"{path} has no column {' or '.join(names)} (columns: {', '.join(header)})"
        )
    return None


def _cell(row: dict[str, str], column: str | None) -> str | None:
    if column is None:
        return None
    value = row.get(column, "").strip()
    return None if value.lower() in _EMPTY_CELLS else value


def _checked_label(value: str, path: Path, number: int) -> str:
    try:
        return clean_label(value)
    except LabelError as exc:
        raise ConfigError(f"{path}, line {number}: {exc.message}") from exc


def read_mapping(path: Path) -> dict[str, tuple[str, str | None]]:
    """Read a mapping file: packet name → (subject, session).

    CSV or TSV with columns ``packet`` (or ``packet_name``), ``subject`` (or
    ``participant_id``, ``subject_id``) and optionally ``session`` (or ``session_id``,
    ``session_name``); an empty or ``n/a`` session means none. Values may carry
    ``sub-``/``ses-`` prefixes, which are removed; the labels are otherwise returned as
    written (:func:`assign_packets` cleans them and reports collisions), but each must
    be cleanable. A packet listed twice with the same target is accepted; with different
    targets, or a row without packet or subject, raises :class:`ConfigError` naming the
    file and line.
    """
    header, rows = _read_table(path)
    packet_col = _column(header, _PACKET_COLUMNS, path, required=True)
    subject_col = _column(header, _SUBJECT_COLUMNS, path, required=True)
    session_col = _column(header, _SESSION_COLUMNS, path, required=False)
    mapping: dict[str, tuple[str, str | None]] = {}
    seen: dict[str, tuple[int, tuple[str, str | None]]] = {}
    for number, row in rows:
        packet = _cell(row, packet_col)
        subject = _cell(row, subject_col)
        session = _cell(row, session_col)
        if not packet or not subject:
            missing = "packet" if not packet else "subject"
            raise ConfigError(f"{path}, line {number}: the {missing} is empty")
        target = (
            _checked_label(subject, path, number),
            _checked_label(session, path, number) if session else None,
        )
        if packet in seen:
            first, first_target = seen[packet]
            if first_target != target:
                raise ConfigError(
                    f"{path}, line {number}: packet {packet!r} is mapped again, to "
                    f"{_target(*target)}; line {first} maps it to {_target(*first_target)}"
                )
            continue
        seen[packet] = (number, target)
        mapping[packet] = (_strip_prefix(subject), _strip_prefix(session) if session else None)
    return mapping


def read_manifest(path: Path) -> list[tuple[str, str | None]]:
    """Read a manifest of expected (subject, session) pairs, cleaned and deduplicated.

    CSV or TSV with ``participant_id`` (or ``subject``) and optionally ``session_id``
    (or ``session``); ``sub-``/``ses-`` prefixes are removed and labels cleaned with
    :func:`clean_label`. Order is kept, duplicates dropped. Raises :class:`ConfigError`
    (naming the file and line) for a missing column, an empty or uncleanable label, two
    different labels that clean to the same one, or a subject listed both with and
    without sessions.
    """
    header, rows = _read_table(path)
    subject_col = _column(header, _SUBJECT_COLUMNS, path, required=True)
    session_col = _column(header, _SESSION_COLUMNS, path, required=False)
    pairs: dict[tuple[str, str | None], None] = {}
    raw_of: dict[tuple[str, str, str], tuple[str, int]] = {}
    sessions_of: dict[str, set[bool]] = defaultdict(set)
    for number, row in rows:
        raw_subject = _cell(row, subject_col)
        raw_session = _cell(row, session_col)
        if not raw_subject:
            raise ConfigError(f"{path}, line {number}: the participant_id is empty")
        subject = _checked_label(raw_subject, path, number)
        session = _checked_label(raw_session, path, number) if raw_session else None
        checks = [("subject", "", raw_subject, subject)]
        if raw_session is not None and session is not None:
            checks.append(("session", subject.lower(), raw_session, session))
        for kind, scope, raw, label in checks:
            first = raw_of.setdefault((kind, scope, label.lower()), (_strip_prefix(raw), number))
            if first[0] != _strip_prefix(raw):
                raise ConfigError(
                    f"{path}, line {number}: {kind} {raw!r} and {first[0]!r} (line {first[1]}) "
                    f"both become {label!r} after cleaning",
                    "give them distinct labels (letters and digits only)",
                )
        sessions_of[subject].add(session is not None)
        if len(sessions_of[subject]) > 1:
            raise ConfigError(
                f"{path}, line {number}: subject {subject!r} is listed with and without "
                "sessions (BIDS needs all or none)"
            )
        pairs.setdefault((subject, session), None)
    return list(pairs)


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class _Linked:
    """What :func:`_link_folder` did."""

    modes: dict[str, int]  #: files linked ("hardlink") and copied ("copy")
    archives: list[Path]  #: files that may be archives (see might_be_archive), os.walk order
    problems: list[Problem]


def _walk_key(parts: tuple[str, ...]) -> tuple[tuple[int, str], ...]:
    """Sort key of a file (its path's components) in the order of a sorted ``os.walk``."""
    return (*((1, part) for part in parts[:-1]), (0, parts[-1]))


def _link_folder(src_root: Path, dst_root: Path, packet_name: str) -> _Linked:
    """Hard-link (or copy) every regular file of ``src_root`` under ``dst_root`` (new, empty).

    One pass over the folder listings (``os.scandir``: the entry types come with the
    listing, no ``stat`` per file), each destination folder made once, before its first
    file, and each file linked straight under its final name (``dst_root`` is bidsport's
    fresh work folder, renamed into place only when the import is complete). Every file
    is read once (its first bytes: readable? DICOM? archive?) so that only the files
    that may be archives are looked at again.

    A folder or file that cannot be read (permissions, a file gone while importing) is a
    fatal Problem naming the packet: the packet is incomplete, so its session must not
    count as done nor its input be archived or deleted. Special files, links leading
    outside the packet and name clashes are skipped with a (non-fatal) Problem.
    """
    modes = {"hardlink": 0, "copy": 0}
    problems: list[Problem] = []
    real_root = Path(os.path.realpath(src_root))
    taken: set[str] = set()
    made: set[str] = {str(dst_root)}
    found: list[tuple[tuple[tuple[int, str], ...], str]] = []

    def skip(rel: str, reason: str) -> None:
        problems.append(Problem(where=rel, reason=reason, stage=STAGE))
        log.warning("skipped %s: %s", rel, reason)

    def unreadable(rel: str, what: str, exc: OSError) -> None:
        reason = (
            f"cannot read {what} {rel!r} of packet {packet_name}: {exc.strerror or exc} "
            "(the packet is incomplete: make it readable, or complete, and run again)"
        )
        problems.append(Problem(where=rel, reason=reason, stage=STAGE, fatal=True))
        log.error("%s", reason)

    # Folders to visit, last first: (source path, safe relative parts, renamed on the way).
    stack: list[tuple[str, tuple[str, ...], bool]] = [(str(src_root), (), False)]
    while stack:
        folder, dir_parts, dir_renamed = stack.pop()
        rel_dir = "/".join(dir_parts)
        dest_dir = os.path.join(str(dst_root), *dir_parts)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            unreadable(rel_dir or ".", "folder", exc)
            continue
        # As os.walk: files (and links to files), then links to folders, then folders.
        files: list[os.DirEntry[str]] = []
        dir_links: list[os.DirEntry[str]] = []
        subdirs: list[os.DirEntry[str]] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(entry)
            elif entry.is_symlink():
                dir_links.append(entry)
            else:
                subdirs.append(entry)
        for entry in files + dir_links:
            name = entry.name
            safe = sanitize_component(name)
            rel = f"{rel_dir}/{safe}" if rel_dir else safe
            source = entry.path
            try:
                is_link = entry.is_symlink()
                is_file = is_link or entry.is_file(follow_symlinks=False)
            except OSError as exc:
                unreadable(rel, "file", exc)
                continue
            if is_link:
                target = Path(os.path.realpath(source))
                if not fileops.is_within(target, real_root):
                    skip(rel, f"symbolic link to {target}, outside the packet: not imported")
                    continue
                if not target.is_file():
                    what = "a folder" if target.is_dir() else "nothing (broken)"
                    skip(rel, f"symbolic link to {what}: not imported")
                    continue
                source = str(target)
            elif not is_file:
                skip(rel, "not a regular file (FIFO, socket or device): not imported")
                continue
            try:
                head = read_head(source)
            except OSError as exc:
                unreadable(rel, "file", exc)
                continue
            dest = os.path.join(dest_dir, safe)
            if dest in taken:
                skip(rel, "same name as another file once made safe: not imported")
                continue
            if dir_renamed or safe != name:
                problems.append(
                    Problem(rel, "renamed: its name had unsafe or non-UTF-8 characters", STAGE)
                )
            taken.add(dest)
            if dest_dir not in made:
                fileops.ensure_dir(Path(dest_dir))
                made.add(dest_dir)
            modes[fileops.hardlink_or_copy(source, dest, replace=False)] += 1
            if might_be_archive(safe, head):
                found.append((_walk_key((*dir_parts, safe)), dest))
        for entry in reversed(subdirs):
            safe = sanitize_component(entry.name)
            stack.append((entry.path, (*dir_parts, safe), dir_renamed or safe != entry.name))
    return _Linked(modes, [Path(dest) for _key, dest in sorted(found)], problems)


def _count_files(root: Path) -> int:
    """Files below ``root`` (links to files count, as ``os.path.isfile``), from the listings."""
    count = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file():
                        count += 1
        except OSError:
            continue
    return count


def _work_prefix(dest: Path, tag: str) -> str:
    """How the hidden work folders beside ``dest`` start (``tempfile.mkdtemp`` adds 8
    characters; a packet's name of up to 255 bytes is cut short in them)."""
    return fileops.temp_prefix(dest.name, tag, room=8)


def _stale_work_dirs(dest_dir: Path) -> list[Path]:
    prefixes = (_work_prefix(dest_dir, "importing-"), _work_prefix(dest_dir, "replaced-"))
    try:
        return [p for p in dest_dir.parent.iterdir() if p.name.startswith(prefixes)]
    except OSError:
        return []


def _swap_into_place(new: Path, dest_dir: Path) -> None:
    """Rename ``new`` to ``dest_dir``, replacing an existing one only now, at the end."""
    parent = dest_dir.parent
    if os.path.lexists(dest_dir):
        old = Path(tempfile.mkdtemp(prefix=_work_prefix(dest_dir, "replaced-"), dir=parent))
        fileops.move_into_place(dest_dir, old / "old")
        fileops.move_into_place(new, dest_dir)
        fileops.remove_tree(old, parent)
    else:
        fileops.move_into_place(new, dest_dir)


def import_packet(
    packet: Packet, dest_dir: Path, limits: ExtractLimits = DEFAULT_LIMITS
) -> ImportResult:
    """Bring the files of ``packet`` under ``dest_dir`` (created or replaced).

    A folder's regular files keep their relative paths and are hard-linked when the
    file system allows it, else copied; symbolic links to files inside the packet are
    imported as files, other links skipped with a Problem. A loose file is linked or
    copied the same way. Archives and gzipped files are extracted safely
    (:func:`bidsport.archive.extract_archive`). Then every archive inside is unpacked
    (:func:`bidsport.archive.expand_nested`), all under one :class:`ExtractLimits`.

    The input is never modified. Everything is built in a hidden sibling folder and
    renamed to ``dest_dir`` at the end; an existing ``dest_dir`` is replaced only then,
    so a killed import never leaves a complete-looking half import (hidden leftovers of
    killed imports are removed on the next call: the caller must hold the session
    lock). Files may be hard links to the input: later stages must replace files, never
    write into them (:mod:`bidsport.fileops` writes are atomic replacements).

    Raises :class:`~bidsport.errors.ArchiveError` (damaged, encrypted or hostile
    archive), :class:`OutputError` (destination not writable, or inside the packet).
    """
    src = packet.path
    if fileops.is_within(dest_dir, src) or fileops.is_within(src, dest_dir):
        raise OutputError(
            f"cannot import packet {packet.name} into {dest_dir}: one contains the other",
            "the output dataset must not be inside the DICOM folder, nor the other way round",
        )
    parent = fileops.ensure_dir(dest_dir.parent)
    for stale in _stale_work_dirs(dest_dir):
        log.info("removing %s, left by an interrupted import", stale)
        fileops.remove_tree(stale, parent)
    try:
        work = Path(tempfile.mkdtemp(prefix=_work_prefix(dest_dir, "importing-"), dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write in {parent}: {exc.strerror or exc}") from exc
    try:
        os.chmod(work, 0o755)
        problems: list[Problem] = []
        if packet.kind == "folder":
            linked = _link_folder(src, work, packet.name)
            problems = linked.problems
            used = [mode for mode, count in linked.modes.items() if count]
            mode = used[0] if len(used) == 1 else ("mixed" if used else "copy")
            n_files = sum(linked.modes.values())
            if linked.archives:
                # measured against the files imported (the default budget): only here
                problems += expand_nested(work, limits, candidates=linked.archives, packet=src)
                n_files = _count_files(work)
        else:
            if packet.kind == "file":
                name = sanitize_component(src.name)
                mode = fileops.hardlink_or_copy(src, work / name, replace=False)
                budget = ExtractBudget(limits, src.stat().st_size)
            else:
                budget = ExtractBudget(limits, src.stat().st_size)
                problems = extract_archive(src, work, budget=budget)
                mode = "extract"
            problems += expand_nested(work, budget=budget, packet=src)
            n_files = _count_files(work)
        _swap_into_place(work, dest_dir)
    except BaseException:
        if os.path.lexists(work):
            fileops.remove_tree(work, parent)
        raise
    log.info("imported packet %s: %d files (%s) into %s", packet.name, n_files, mode, dest_dir)
    return ImportResult(n_files=n_files, mode=mode, problems=tuple(problems))


# --------------------------------------------------------------------------- archive


def _copy_regular(src: str, dst: Path, *, follow: bool = False) -> bool:
    """Copy ``src`` to ``dst`` (atomically, with its mode and times) when it is a regular
    file; False, with nothing written, when it is not (a FIFO, device or socket: opened
    without blocking and checked on the open file, so a FIFO or ``/dev/zero`` swapped in
    after the listing is never read). A symbolic link is followed only with ``follow``.
    Raises OSError."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(src, flags)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        with fileops.atomic_path(dst) as tmp:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(fh, out)
            shutil.copystat(src, tmp)
    return True


def _copy_tree(src: Path, dst: Path) -> list[str]:
    """Copy the folder ``src`` into the new, empty folder ``dst``: its folders, regular
    files and symbolic links (as links, not followed). Other entries (FIFOs, sockets,
    device nodes) are skipped: their paths relative to ``src`` are returned. Raises
    OSError (or OutputError from :mod:`bidsport.fileops`)."""
    skipped: list[str] = []
    stack: list[tuple[Path, Path, str]] = [(src, dst, "")]
    made: list[tuple[Path, Path]] = []
    while stack:
        folder, target, rel_dir = stack.pop()
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            out = target / entry.name
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), out)
            elif entry.is_dir(follow_symlinks=False):
                fileops.ensure_dir(out)
                stack.append((Path(entry.path), out, rel))
            elif not (entry.is_file(follow_symlinks=False) and _copy_regular(entry.path, out)):
                skipped.append(rel)
        made.append((folder, target))
    for folder, target in reversed(made):  # times last: writing inside changes them
        shutil.copystat(folder, target, follow_symlinks=False)
    return skipped


def _copy_into(src: Path, target: Path) -> list[str]:
    """Copy a file or folder to ``target`` atomically (replacing what is there).

    Only folders, regular files and symbolic links (as links) are copied; the special
    files skipped (FIFOs, sockets, devices) are returned, relative to ``src``. Raises
    :class:`OutputError` naming the packet and the reason when the copy fails (nothing
    is left at ``target`` then, and a previous copy there is kept).
    """
    parent = fileops.ensure_dir(target.parent)
    try:
        if src.is_dir():
            work = Path(tempfile.mkdtemp(prefix=_work_prefix(target, "archiving-"), dir=parent))
            try:
                os.chmod(work, 0o755)
                skipped = _copy_tree(src, work)
                _swap_into_place(work, target)
            except BaseException:
                if os.path.lexists(work):
                    fileops.remove_tree(work, parent)
                raise
            return skipped
        if not _copy_regular(str(src), target, follow=True):
            return [src.name]
        return []
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise OutputError(
            f"cannot copy packet {src} to {target}: {exc.strerror or exc}{where}",
            "the input is left as it was; check the permissions of the packet and of the "
            "archive folder, and the free space",
        ) from exc


def _listing(path: Path) -> list[tuple[str, int, int]] | None:
    """(relative path, size, mtime) of every regular file of ``path`` (a file or folder,
    links not followed), sorted: what an archived copy, which keeps the times, shares with
    its packet. None when it cannot be read."""
    try:
        if not path.is_dir() or path.is_symlink():
            st = path.lstat()
            return [("", st.st_size, st.st_mtime_ns)]
        found = []
        for folder, _dirs, files in os.walk(path, onerror=_raise):
            for name in files:
                full = os.path.join(folder, name)
                st = os.lstat(full)
                if stat.S_ISREG(st.st_mode):
                    found.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
        return sorted(found)
    except OSError:
        return None


def _raise(exc: OSError) -> None:
    raise exc


def _archive_target(target: Path, src: Path) -> Path:
    """Where ``src`` is archived: ``target``, or ``target.2``, ``target.3``...: the one
    that holds the same delivery already (it is replaced), else the first free one.
    Another delivery under that name, archived before, is kept (after ``move`` it is the
    only copy of it)."""
    listing = None
    candidate, n = target, 1
    while os.path.lexists(candidate):
        if listing is None:
            listing = _listing(src)
        if _listing(candidate) == listing:
            return candidate
        n += 1
        candidate = target.with_name(f"{target.name}.{n}")
    return candidate


def _unremovable(path: Path) -> str | None:
    """Why ``path`` (an inbox entry) cannot be removed whole, or None when it can.

    Checked before anything is removed, so that a packet is not left half-deleted: the
    folder holding the entry must be writable, and so must every folder inside it
    (listable, writable, searchable). Links are not followed. A check, not a promise
    (immutable files, sticky folders owned by others, or a change after the check can
    still make the removal fail).
    """
    parent = path.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the folder {parent} is not writable"
    if path.is_symlink() or not path.is_dir():
        return None
    stack = [str(path)]
    while stack:
        folder = stack.pop()
        if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            return f"the folder {folder} is not readable and writable"
        try:
            with os.scandir(folder) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
        except OSError as exc:
            return f"cannot list {folder}: {exc.strerror or exc}"
    return None


def _remove_input(path: Path, policy: str) -> None:
    """Remove an inbox entry whole, having checked first that it can be (see
    :func:`_unremovable`); raises :class:`OutputError`, which says when a failure
    half-way left the entry partly removed."""
    if reason := _unremovable(path):
        raise OutputError(
            f"cannot {policy} {path}: {reason}; nothing was removed",
            "the DICOM folder must be writable for --archive move or delete",
        )
    try:
        # an inbox entry that is a link is removed itself; what it points to stays
        fileops.remove_tree(path, path.parent)
    except OSError as exc:
        partly = " (it is now partly removed)" if os.path.lexists(path) else ""
        raise OutputError(
            f"cannot remove {path}: {exc.strerror or exc}{partly}",
            "the DICOM folder must be writable for --archive move or delete",
        ) from exc


def apply_archive_policy(packet: Packet, policy: str, archive_dir: Path) -> str | None:
    """Apply ``--archive`` to a packet's input: "leave", "copy", "move" or "delete".

    Call it only after the packet was imported AND converted successfully (no fatal
    Problem): "move" and "delete" remove the input. "copy" copies the entry into
    ``archive_dir`` atomically (a previous copy of the same packet there is replaced; a
    different delivery under that name is kept, the new one named ``<name>.2``...): folders, regular
    files and symbolic links (as links) only; FIFOs, sockets and device nodes are
    skipped, with a warning, and named in the returned text. "move" copies, then removes
    the original; "delete" removes the original. Both first check that the whole entry
    can be removed (every folder in it writable), and touch nothing when it cannot. For
    an inbox entry that is a symbolic link, only the link is removed. Returns what was
    done ("leave": None).

    Raises :class:`ConfigError` for an unknown policy and :class:`OutputError` when it
    would destroy data (``archive_dir`` inside the packet, the copy landing on the
    packet itself, a packet path that is a file-system root), when the entry cannot be
    removed whole, and when the copy or the removal fails (the message names the path
    and the reason, and says when a removal that failed half-way left the entry partly
    removed).
    """
    if policy not in ARCHIVE_POLICIES:
        raise ConfigError(
            f"unknown archive policy {policy!r}", f"use one of {', '.join(ARCHIVE_POLICIES)}"
        )
    if policy == "leave":
        return None
    src = packet.path
    if not os.path.lexists(src):
        raise OutputError(f"packet {packet.name}: {src} does not exist any more")
    real = Path(os.path.realpath(src))
    if real == Path(real.anchor) or src.parent == src:
        raise OutputError(f"refusing to {policy} {src}: it is a file-system root")
    if fileops.is_within(archive_dir, src):
        raise OutputError(
            f"refusing to {policy} packet {packet.name}: the archive folder {archive_dir} "
            f"is inside it",
            "choose an archive folder outside the DICOM folder's packets",
        )
    if policy in ("copy", "move"):
        target = archive_dir / src.name
        try:
            same = os.path.lexists(target) and os.path.samefile(target, src)
        except OSError:
            same = False
        if fileops.is_within(src, target) or same:
            raise OutputError(
                f"refusing to {policy} packet {packet.name} to {target}: that is the packet itself",
                "choose an archive folder other than the DICOM folder",
            )
        target = _archive_target(target, src)
        if policy == "move" and (reason := _unremovable(src)):
            raise OutputError(
                f"cannot move {src}: {reason}; nothing was copied nor removed",
                "the DICOM folder must be writable for --archive move or delete",
            )
        skipped = _copy_into(src, target)
        for rel in skipped:
            log.warning(
                "packet %s: %s not archived: not a regular file, folder or link "
                "(FIFO, socket or device)",
                packet.name,
                rel,
            )
        note = f" (special files not copied: {', '.join(skipped)})" if skipped else ""
        if target.name != src.name:
            note += (
                f" as {target.name}: {archive_dir / src.name} holds another delivery of "
                "that packet, kept"
            )
        if policy == "copy":
            return f"copied {src.name} to {archive_dir}{note}"
        _remove_input(src, policy)
        return f"moved {src.name} to {archive_dir}{note}"
    _remove_input(src, policy)
    return f"deleted {src}"
