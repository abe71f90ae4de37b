"""``--anonymize`` in the pipeline, and the identifiers the PHI audit looks for.

The de-identification itself is :mod:`bidsport.anonymize` (dicognito plus bidsport's
policy); this module connects it to a participant run:

* the project key: ``--anonymize-key FILE``, else ``<work dir>/bidsport-anonymize.key``
  when a ``--work-dir`` is given (it must outlive the run: a new key means new
  pseudonyms); never inside OUTPUT_DIR;
* the identifiers of the source data, read from the originals before anonymization, kept
  beside the key in ``<key>.phi/`` (one JSON file per subject, named by a keyed hash, mode
  0600): they are PHI, needed by ``group --audit-phi``, and never enter OUTPUT_DIR;
* de-identified copies of a session's files, written in parallel worker processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass
from pathlib import Path

from bidsport import fileops
from bidsport.anonymize import (
    AnonymizePolicy,
    Anonymizer,
    default_policy,
    keys,
    load_or_create_key,
    load_policy,
)
from bidsport.errors import BidsportError, UsageError
from bidsport.export import Deidentify
from bidsport.fileids import read_identifiers
from bidsport.layout import DatasetLayout
from bidsport.options import RunOptions
from bidsport.phi import (
    Identifiers,
    load_identifiers,
    matcher_for,
    merge_identifiers,
    save_identifiers,
)
from bidsport.runner import process_pool

log = logging.getLogger(__name__)

KEY_FILE_NAME = "bidsport-anonymize.key"


@dataclass(frozen=True)
class Anonymization:
    """Everything a participant run needs to de-identify files."""

    key: bytes
    policy: AnonymizePolicy
    store_dir: Path  #: where the source identifiers are kept (PHI, outside OUTPUT_DIR)


def key_file(opts: RunOptions) -> Path:
    """The key file of this run (see the module docstring)."""
    if opts.anonymize_key is not None:
        return opts.anonymize_key
    if opts.work_dir is not None:
        return opts.work_dir / KEY_FILE_NAME
    raise UsageError(
        "--anonymize needs a project key that outlives the run",
        "give --anonymize-key FILE (a path outside OUTPUT_DIR, created on the first run and "
        "reused: the same key gives the same pseudonyms and date shifts), or a --work-dir",
    )


def set_up(opts: RunOptions, output_dir: Path) -> Anonymization:
    """Load (or create) the key and the policy; raises UsageError/ConfigError."""
    path = key_file(opts).absolute()
    key = load_or_create_key(path, forbidden_root=output_dir)
    if opts.anonymize_policy is not None:
        policy = load_policy(
            opts.anonymize_policy,
            keep_private=opts.keep_private_tags,
            allow_burned_in=opts.allow_burned_in,
        )
    else:
        policy = default_policy(opts.keep_private_tags, allow_burned_in=opts.allow_burned_in)
    return Anonymization(key, policy, path.with_name(path.name + ".phi"))


def claim_dataset(layout: DatasetLayout, key: bytes) -> None:
    """Record in the dataset that it is anonymized, with the fingerprint of ``key`` (a
    keyed hash: it tells keys apart and reveals nothing); refuse a key other than the one
    it was anonymized with: its subjects would get other pseudonyms and date shifts. Runs
    without --anonymize are refused on such a dataset (by the command line)."""
    fingerprint = keys.key_fingerprint(key)
    path = layout.anonymization_file
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("key_fingerprint")
    except FileNotFoundError:
        recorded = None
    except (OSError, ValueError, AttributeError) as exc:
        raise UsageError(
            f"{path}: unreadable ({exc}): bidsport cannot tell which key anonymized this dataset",
            "restore the file, or give --anonymize runs a new OUTPUT_DIR",
        ) from exc
    if recorded is None:
        fileops.write_json(
            path,
            {
                "anonymized_by": "bidsport --anonymize",
                "key_fingerprint": fingerprint,
                "note": "runs on this dataset must give --anonymize with the same key",
            },
        )
    elif recorded != fingerprint:
        raise UsageError(
            f"OUTPUT_DIR {layout.root} was anonymized with another key (fingerprint "
            f"{recorded}; this run's key: {fingerprint}): its subjects would get other "
            "pseudonyms and date shifts",
            "give --anonymize-key the key the dataset was made with",
        )


# --------------------------------------------------------------------------- identifiers


def _subject_file(anon: Anonymization, subject: str, suffix: str = ".json") -> Path:
    """The file of ``subject`` (or of a subject's session) in the store, named by a keyed
    hash."""
    digest = hashlib.sha256(anon.key + subject.encode("utf-8")).hexdigest()[:16]
    return anon.store_dir / f"{digest}{suffix}"


def remember_identifiers(anon: Anonymization, subject: str, identifiers: Identifiers) -> None:
    """Add ``identifiers`` to what is kept for ``subject`` (for the PHI audit)."""
    path = _subject_file(anon, subject)
    if path.is_file():
        identifiers = load_identifiers(path) | identifiers
    save_identifiers(path, identifiers)


def stored_identifiers(store_dir: Path) -> Identifiers:
    """Every subject's identifiers kept in ``store_dir``."""
    if not store_dir.is_dir():
        return Identifiers()
    return merge_identifiers(load_identifiers(p) for p in sorted(store_dir.glob("*.json")))


# --------------------------------------------------------------------------- outputs

_UID = re.compile(r"\b[0-2](?:\.(?:0|[1-9]\d*)){3,}\b")


def packet_scrubber(anon: Anonymization, packets: Sequence[str]) -> Callable[[str], str]:
    """A function that replaces the names of these packets in a text by their pseudonyms
    (:func:`bidsport.anonymize.keys.packet_pseudonym`): a packet with no readable DICOM
    file gives no identifier to scrub its name with, and its name may be the patient's.
    Each pseudonym is logged, to the log file outside OUTPUT_DIR (if any)."""
    pseudonyms = {name: keys.packet_pseudonym(anon.key, name) for name in packets if name}
    for name, pseudonym in pseudonyms.items():
        log.info("packet %s is named %s in OUTPUT_DIR", name, pseudonym)
    if not pseudonyms:
        return str
    # whole names only (not "20" inside a UID), longest first, in one pass (a pseudonym
    # is never replaced again)
    names = "|".join(re.escape(n) for n in sorted(pseudonyms, key=len, reverse=True))
    pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{names})(?![A-Za-z0-9])")

    def hide(text: str) -> str:
        return pattern.sub(lambda m: pseudonyms[m.group()], text)

    return hide


#: what may follow a packet's name in a ``where``: its archive's extensions, then the
#: separator of the path below it ("/" in the packet's folder, ":" in its archive)
_BELOW_PACKET = re.compile(r"((?:\.[A-Za-z0-9]{1,4}){0,2})([/:])(.+)", re.DOTALL)


def path_hider(anon: Anonymization, packets: Sequence[str]) -> Callable[[str], str]:
    """A function that replaces the path below its packet of a file named in a table or a
    problem's ``where`` (``P01/20180918GE/mr_0004/IM1``, ``P01.zip:Vanderbilt_2018/IM1``)
    by its pseudonym (:func:`bidsport.anonymize.keys.path_pseudonym`): an export's
    folder names carry dates, sites and patient names that no identifier read from the
    headers covers. The packet's name is left to :func:`packet_scrubber`. Any other
    path (one with a ``/``: a nested archive's, relative to its packet) is replaced
    whole; anything else is returned as it is.

    >>> hide = path_hider(Anonymization(b"k", None, Path()), ["P01"])
    >>> hide("P01/20180918GE/IM1")[:9], hide("P01.zip:Site_2018/IM1")[:13], hide("1.2.3-s4")
    ('P01/file-', 'P01.zip:file-', '1.2.3-s4')
    >>> hide("20180918GE/series.zip:IM1")[:5]
    'file-'
    """
    names = sorted((name for name in packets if name), key=len, reverse=True)

    def hide(where: str) -> str:
        for name in names:
            if where.startswith(name) and (below := _BELOW_PACKET.fullmatch(where, len(name))):
                ext, sep, path = below.groups()
                return f"{name}{ext}{sep}{keys.path_pseudonym(anon.key, path)}"
        return keys.path_pseudonym(anon.key, where) if "/" in where else where

    return hide


def remember_file_names(
    anon: Anonymization, subject: str, session: str | None, names: dict[str, str]
) -> None:
    """Keep, beside the key (mode 0600), which source file each pseudonymous path of a
    session's ``files.tsv`` is (``names``: pseudonymous path -> path in the inbox's
    packet), so that the user holding the key can find a file named there."""
    lines = ["file\tsource"] + [f"{k}\t{v}" for k, v in sorted(names.items())]
    text = "\n".join(lines) + "\n"
    path = _subject_file(anon, f"{subject}\x00{session or ''}", ".files.tsv")
    with fileops.atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")


def deidentifier(anon: Anonymization, subject: str, identifiers: Identifiers) -> Deidentify:
    """How the outputs of ``subject``'s session are de-identified (see :class:`Deidentify`)."""
    anonymizer = Anonymizer(anon.key, anon.policy)
    matcher = matcher_for(identifiers)

    def text(value: str) -> str:
        return matcher.scrub(_UID.sub(lambda m: anonymizer.new_uid(m.group()), value))

    return Deidentify(
        identifiers=identifiers,
        date_shift_days=anonymizer.date_shift_days(subject),
        series_uid=anonymizer.new_uid,
        text=text,
    )


# --------------------------------------------------------------------------- files

_WORKER: Anonymizer | None = None


def _init_worker(key: bytes, policy: AnonymizePolicy) -> None:
    global _WORKER
    _WORKER = Anonymizer(key, policy)


def _anonymize_chunk(
    pairs: Sequence[tuple[Path, Path]], subject: str, identifiers: Identifiers
) -> list[str | None]:
    assert _WORKER is not None
    reasons: list[str | None] = []
    for src, dst in pairs:
        try:
            reasons.append(_WORKER.anonymize_file(src, dst, subject, identifiers).excluded)
        except BidsportError as exc:
            reasons.append(f"cannot be anonymized: {exc.message}")
    return reasons


def anonymize_files(
    anon: Anonymization,
    pairs: Sequence[tuple[Path, Path]],
    subject: str,
    identifiers: Identifiers,
    *,
    n_procs: int = 1,
    chunk: int = 64,
) -> list[str | None]:
    """Write de-identified copies (``src`` → ``dst``); per pair, the exclusion reason or None.

    A file the policy excludes (burned-in annotations, screen saves) is not written.
    """
    chunks = [pairs[i : i + chunk] for i in range(0, len(pairs), chunk)]
    if n_procs <= 1 or len(chunks) <= 1:
        _init_worker(anon.key, anon.policy)
        return [r for c in chunks for r in _anonymize_chunk(c, subject, identifiers)]
    try:
        with process_pool(
            n_procs, initializer=_init_worker, initargs=(anon.key, anon.policy)
        ) as pool:
            results = pool.map(
                _anonymize_chunk, chunks, [subject] * len(chunks), [identifiers] * len(chunks)
            )
            return [r for part in results for r in part]
    except BrokenExecutor as exc:  # not redone here: a file may have exhausted the memory
        raise BidsportError(
            f"a worker process stopped unexpectedly (killed, or out of memory?) while "
            f"de-identifying the {len(pairs)} files of {subject}: not converted",
            hint="run the session again (with fewer --n-procs if memory is short)",
        ) from exc


def inbox_identifiers(dicom_dir: Path, opts: RunOptions) -> Identifiers:
    """The identifiers in every DICOM file of the inbox's packets (for the PHI audit).

    Archive packets are extracted into a temporary folder (in the work dir when one is
    given) that is removed afterwards.
    """
    import shutil
    import tempfile

    from bidsport.ingest import discover_packets, import_packet

    packets, _ = discover_packets(dicom_dir, opts.pattern)
    found = []
    for packet in packets:
        if packet.kind == "folder":
            found.append(read_identifiers(p for p in packet.path.rglob("*") if p.is_file()))
            continue
        tmp = Path(tempfile.mkdtemp(prefix="bidsport-audit-", dir=opts.work_dir))
        try:
            import_packet(packet, tmp / "packet", opts.limits)
            found.append(read_identifiers(p for p in (tmp / "packet").rglob("*") if p.is_file()))
        except BidsportError as exc:
            log.warning("PHI audit: identifiers of packet %s not read: %s", packet.name, exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return merge_identifiers(found)
