"""The project key, and everything derived from it.

Pseudonyms, UIDs and date shifts are deterministic functions of (key, subject) — never of
the batch — so separate runs, separate sessions and separate packets of one subject agree.
Whoever holds the key can recompute every pseudonym; whoever does not, cannot link the
dataset back to the source (HMAC-SHA256).

Where to keep the key: OUTSIDE OUTPUT_DIR (the shared tree must not contain it) and
somewhere that survives the run. In a container, ``$HOME``/``$XDG_CONFIG_HOME`` and the
temporary folder are discarded with the container: a key created there changes every
pseudonym and date shift on the next run. bidsport therefore wants ``--anonymize-key FILE``
on a mounted path; the file is created on the first run (random 256-bit key, mode 0600) and
reused afterwards. Back it up with the source data; do not share it with the dataset.
:func:`key_fingerprint` can be stored in the dataset to detect a run with another key.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from bidsport import fileops
from bidsport.errors import ConfigError, UsageError

log = logging.getLogger(__name__)

KEY_BYTES = 32
MIN_KEY_BYTES = 16
#: shifted dates end before this year for any acquisition up to ~2050 (BIDS recommends
#: shifting dates to 1925 or earlier, by the same number of days within a subject)
DATE_SHIFT_BASE_DAYS = 125 * 365 + 31
DATE_SHIFT_SPREAD_DAYS = 3653

_HEADER = (
    "# bidsport anonymization key: keep it private, back it up, never put it in the dataset.\n"
    "# Losing it changes every pseudonym and date shift of later runs.\n"
)


def load_or_create_key(path: Path, *, forbidden_root: Path | None = None) -> bytes:
    """The key in ``path``; a new random one (mode 0600) if the file does not exist.

    ``forbidden_root`` is OUTPUT_DIR: a key inside it raises :class:`UsageError`. The key
    file holds one line of hex (comment lines start with ``#``); a file written by hand may
    instead hold a passphrase of at least 16 characters.
    """
    path = path.expanduser()
    if forbidden_root is not None and fileops.is_within(path, forbidden_root):
        raise UsageError(
            f"the anonymization key {path} lies inside the output dataset {forbidden_root}",
            "keep the key outside OUTPUT_DIR: whoever gets it can undo the pseudonyms",
        )
    if not path.exists():
        fileops.ensure_dir(path.parent)
        with fileops.file_lock(path.with_name(f".{path.name}.lock")):
            if not path.exists():  # another run may have created it meanwhile
                with fileops.atomic_path(path) as tmp:
                    os.chmod(tmp, 0o600)
                    tmp.write_text(_HEADER + secrets.token_hex(KEY_BYTES) + "\n")
                log.warning(
                    "created a new anonymization key in %s: keep this file (mode 0600) and "
                    "reuse it for every run of this dataset",
                    path,
                )
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the anonymization key {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the anonymization key %s is readable by other users: chmod 600 it", path)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) == 1 and re.fullmatch(r"[0-9a-fA-F]+", lines[0]) and len(lines[0]) % 2 == 0:
        key = bytes.fromhex(lines[0])
    else:
        key = "\n".join(lines).encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the anonymization key {path} is too short ({len(key)} bytes)",
            f"use at least {MIN_KEY_BYTES} bytes, or delete the file to get a new random key",
        )
    return key


def normalize_subject(subject: str) -> str:
    """The subject label without ``sub-`` (``sub-01`` and ``01`` are the same subject)."""
    label = subject.strip().removeprefix("sub-")
    if not label:
        raise UsageError("empty subject label given to the anonymizer")
    return label


def _mac(key: bytes, purpose: str, *parts: str) -> bytes:
    # (surrogateescape: a path may hold bytes that are not UTF-8; other text is the same)
    message = "\x00".join((purpose, *parts)).encode("utf-8", "surrogateescape")
    return hmac.new(key, message, hashlib.sha256).digest()


def key_fingerprint(key: bytes) -> str:
    """A short public fingerprint of ``key`` (16 hex digits; reveals nothing about it)."""
    return _mac(key, "bidsport fingerprint").hex()[:16]


def subject_seed(key: bytes, subject: str) -> str:
    """dicognito's seed for one subject: random-looking, the same in every run."""
    return _mac(key, "subject", normalize_subject(subject)).hex()


def dataset_seed(key: bytes) -> str:
    """Seed of the values shared by all subjects (UIDs, site and scanner pseudonyms)."""
    return _mac(key, "dataset").hex()


def date_shift_days(key: bytes, subject: str) -> int:
    """Days added to every date of ``subject`` (negative: 125 to 135 years back)."""
    mac = _mac(key, "date-shift", normalize_subject(subject))
    return -(DATE_SHIFT_BASE_DAYS + int.from_bytes(mac[:8], "big") % DATE_SHIFT_SPREAD_DAYS)


def patient_pseudonym(key: bytes, subject: str) -> str:
    """The PatientID written into the anonymized DICOM of ``subject`` (12 characters)."""
    mac = _mac(key, "patient-id", normalize_subject(subject))
    return base64.b32encode(mac).decode("ascii")[:12]


def packet_pseudonym(key: bytes, packet: str) -> str:
    """How a packet is named in OUTPUT_DIR with --anonymize (packet names often hold the
    patient's name or record number): ``packet-`` and 8 hex digits, the same in every run.
    """
    return "packet-" + _mac(key, "packet", packet).hex()[:8]


def path_pseudonym(key: bytes, path: str) -> str:
    """How the path of a file below its packet is named in OUTPUT_DIR with --anonymize
    (an export's folders carry dates, sites and patient names): ``file-`` and 12 hex
    digits, the same in every run. ``path`` may hold bytes that are not UTF-8."""
    return "file-" + _mac(key, "path", path).hex()[:12]


def flat_pseudonym(key: bytes, name: str) -> str:
    """A flat folder's file name (``0003_000012_<hash>.dcm``, the hash of the file's path:
    :func:`bidsport.organize.flat_name`) with --anonymize: the hash is replaced by a keyed
    one, so that nobody without the key can confirm a path (a patient's name, a date), nor
    link the datasets of two keys.

    >>> flat_pseudonym(b"k", "0003_000012_247a3c68.dcm")[:12], len(flat_pseudonym(b"k", "x.dcm"))
    ('0003_000012_', 12)
    """
    head, _, _ = name.rpartition("_")
    digest = _mac(key, "flat", name).hex()[:8]
    return f"{head}_{digest}.dcm" if head else f"{digest}.dcm"


def value_pseudonym(key: bytes, keyword: str, value: str) -> str:
    """A pseudonym of a site/scanner value, the same in every subject (12 characters)."""
    mac = _mac(key, "value", keyword, value.strip().upper())
    return base64.b32encode(mac).decode("ascii")[:12]


def shift_iso_datetime(value: str | None, days: int) -> str | None:
    """``value`` (ISO 8601 date or date-time, as in _scans.tsv acq_time) moved by ``days``.

    The time of day and its precision are kept; None, ``n/a`` and unparseable values give
    None (write ``n/a``: an unshifted date must not be written).
    """
    if value is None:
        return None
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})(T.*)?", value.strip())
    if not m:
        return None
    try:
        day = datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        shifted = day + datetime.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{shifted.year:04d}-{shifted.month:02d}-{shifted.day:02d}{m.group(4) or ''}"
