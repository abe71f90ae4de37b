"""Run the BIDS validator (``bids-validator-deno``, from PyPI) and read its findings.

The validator is optional: when it is not installed, :func:`run_validator` returns a
result with ``ran=False`` and the group level goes on.

``bids-validator-deno --format json DIR`` prints one JSON document on stdout and exits
with 16 when it found errors (0 otherwise)::

    {"issues": {"issues": [{"code": "NOT_INCLUDED", "severity": "error",
                            "location": "/sub-01/anat/sub-01_T1x.nii.gz"},
                           {"code": "JSON_KEY_RECOMMENDED", "subCode": "License",
                            "severity": "warning", "location": "/dataset_description.json",
                            "issueMessage": "Field description: ...", "rule": "..."}],
                "codeMessages": {"NOT_INCLUDED": "Files with such naming scheme ..."}},
     "summary": {"subjects": ["01"], ..., "schemaVersion": "1.2.7"}}

Each issue may also carry ``suggestion``, ``affects``, ``line`` and ``character``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import mmap
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidsport.errors import ExternalToolError
from bidsport.runner import RunningCommand, run_command, start_command

log = logging.getLogger(__name__)

VALIDATOR_SCRIPT = "bids-validator-deno"
#: The Python package of the validator (it holds the JavaScript bundle).
VALIDATOR_PACKAGE = "bids_validator_deno"
#: Exit code of the validator when it found errors (its JSON is still on stdout).
EXIT_INVALID = 16
#: Seconds the validator may take on a large dataset.
VALIDATOR_TIMEOUT = 3600.0

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_VERSION = re.compile(r"\d+\.\d+\.\d+\S*")
# A validator older than --prune (2024-11): ``error: Unknown option "--prune".``
_UNKNOWN_PRUNE = re.compile(r"[Uu]nknown (option|argument)\W+--prune")
# Deno: ``NotCapable: Requires all access to "/dev/shm/ds", run again with the --allow-all flag``
_REFUSED = re.compile(r'Requires all access to "([^"]+)"')
# In the validator's bundled schema: ``..., bids_version: "1.11.1", schema_version: ...``
_BIDS_VERSION = re.compile(rb"""["']?bids_version["']?\s*:\s*["'](\d+\.\d+\.\d+[^"']*)["']""")


@dataclass(frozen=True)
class Issue:
    """One finding of the validator."""

    code: str  #: e.g. "NOT_INCLUDED", "JSON_KEY_RECOMMENDED"
    severity: str  #: "error" or "warning"
    location: str | None = None  #: dataset path, e.g. "/sub-01/anat/sub-01_T1w.nii.gz"
    sub_code: str | None = None  #: e.g. the missing key of JSON_KEY_RECOMMENDED
    message: str | None = None  #: the issue's own message, else the code's message
    rule: str | None = None  #: the schema rule that raised it
    line: int | None = None  #: line in the file at ``location``, when given

    def describe(self) -> str:
        """``CODE[subCode] location``, for one line of a report."""
        code = f"{self.code}[{self.sub_code}]" if self.sub_code else self.code
        return f"{code} {self.location}" if self.location else code


@dataclass(frozen=True)
class ValidationResult:
    """What the validator said about a dataset (``ran=False``: no validator installed)."""

    ran: bool
    command: tuple[str, ...] = ()
    errors: tuple[Issue, ...] = ()
    warnings: tuple[Issue, ...] = ()
    version: str | None = None  #: the validator's version, e.g. "3.0.2"
    schema_version: str | None = None  #: version of the BIDS schema package it used

    @property
    def valid(self) -> bool:
        """True when the validator ran and found no error."""
        return self.ran and not self.errors


def find_validator() -> list[str] | None:
    """The command that runs ``bids-validator-deno``, or None when it is not installed.

    Looks next to the running Python first (the same virtual environment), then on PATH.
    """
    beside = Path(sys.executable).parent / VALIDATOR_SCRIPT
    if beside.is_file():
        return [str(beside)]
    found = shutil.which(VALIDATOR_SCRIPT)
    return [found] if found else None


def validator_env(deno_dir: Path | None) -> dict[str, str] | None:
    """The validator's environment: ours, with Deno's caches in ``deno_dir`` (Deno's
    default is ~/.cache/deno, outside OUTPUT_DIR); None (ours as it is) without one, or
    when the user set DENO_DIR."""
    if deno_dir is None or os.environ.get("DENO_DIR"):
        return None
    return {**os.environ, "DENO_DIR": str(deno_dir)}


def _ask_version(command: Sequence[str], env: dict[str, str] | None) -> RunningCommand | None:
    """Start ``command --version`` (Deno starts in ~0.3 s: ask while something else runs)."""
    try:
        return start_command([*command, "--version"], timeout=120, env=env)
    except ExternalToolError as exc:
        log.warning("cannot ask the BIDS validator its version: %s", exc)
        return None


def _answered_version(asked: RunningCommand | None) -> str | None:
    """The version the validator printed for :func:`_ask_version` (e.g. "3.0.2"), or None."""
    if asked is None:
        return None
    try:
        result = asked.wait()
    except ExternalToolError as exc:
        log.warning("cannot ask the BIDS validator its version: %s", exc)
        return None
    match = _VERSION.search(_ANSI.sub("", result.stdout))
    if match:
        return match.group(0)
    # some builds print a commit hash instead: the Python package knows its version
    import importlib.metadata  # ~10 ms of imports, for this fallback only

    try:
        return importlib.metadata.version("bids-validator-deno")
    except importlib.metadata.PackageNotFoundError:
        return None


def validator_bids_version(command: Sequence[str] | None = None) -> str | None:
    """The BIDS version of the schema bundled with the validator (e.g. "1.11.1").

    The validator has no option that prints it, so it is read from the validator's
    JavaScript bundle (``bids_validator_deno/bids-validator.js``, found through the
    Python of the console script) or, for a compiled binary, from the binary itself.
    None when the validator is not installed or the version cannot be found.
    """
    command = list(command) if command is not None else find_validator()
    if not command:
        return None
    for candidate in _bundle_candidates(Path(command[0])):
        version = _scan_bids_version(str(candidate))
        if version:
            return version
    log.warning("cannot tell which BIDS version %s validates against", command[0])
    return None


def _bundle_candidates(executable: Path) -> list[Path]:
    """Files that may hold the validator's schema: its JS bundle, or the executable."""
    candidates = []
    shebang = _shebang(executable)
    package = _package_dir_here(shebang[0], len(shebang) > 1) if shebang else None
    if package is not None:
        candidates.append(package / "bids-validator.js")
    elif shebang:
        try:
            result = run_command(
                [
                    shebang[0],
                    "-c",
                    f"import {VALIDATOR_PACKAGE} as m, os; print(os.path.dirname(m.__file__))",
                ],
                timeout=60,
            )
        except ExternalToolError as exc:
            log.debug("cannot locate the validator bundle: %s", exc)
        else:
            if result.returncode == 0 and result.stdout.strip():
                candidates.append(Path(result.stdout.strip()) / "bids-validator.js")
    else:
        candidates.append(executable)
    return [c for c in candidates if c.is_file()]


def _package_dir_here(interpreter: str, options: bool) -> Path | None:
    """The folder of the ``bids_validator_deno`` package as ``interpreter`` would find it,
    when that is this process's Python: the same program, in the same folder (a virtual
    environment's ``bin``), run without ``options``. Looked up in this process (no import:
    ~0.1 ms, against ~30 ms for asking another Python). None in any other case, or when
    the package is not found here: then ``interpreter`` is asked."""
    import importlib.util

    if options:
        return None
    try:
        if not (
            os.path.samefile(interpreter, sys.executable)
            and os.path.samefile(os.path.dirname(interpreter), os.path.dirname(sys.executable))
        ):
            return None
        spec = importlib.util.find_spec(VALIDATOR_PACKAGE)
    except (OSError, ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    return Path(locations[0]) if locations else None


def _shebang(executable: Path) -> list[str] | None:
    """The interpreter of a ``#!`` script (a Python console script) and its options (after
    ``env``, when the script names it), else None."""
    try:
        with open(executable, "rb") as fh:
            first = fh.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode("utf-8", "replace").split()
    if parts and Path(parts[0]).name == "env" and len(parts) > 1:
        parts = parts[1:]
    return parts or None


@functools.lru_cache(maxsize=8)
def _scan_bids_version(path: str) -> str | None:
    """The BIDS version in the schema a validator bundle (or binary) holds, or None.

    The schema is near the end of the ~13 MB bundle: the name is searched from the end
    (``rfind`` in a memory map, memchr speed: only the pages after it are read, ~0.5 ms
    instead of ~20 ms for reading the whole file, and ~230 ms for a regular expression
    that cannot start from a literal) and the pattern matched there; the last match wins.
    """
    try:
        with open(path, "rb") as fh, contextlib.ExitStack() as stack:
            data: bytes | mmap.mmap
            try:
                data = stack.enter_context(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
            except (OSError, ValueError):  # a file system without mmap; an empty file
                data = fh.read()
            at = data.rfind(b"bids_version")
            while at >= 0:
                match = _BIDS_VERSION.match(data, max(at - 1, 0)) or _BIDS_VERSION.match(data, at)
                if match:
                    return match.group(1).decode("ascii", "replace")
                at = data.rfind(b"bids_version", 0, at)
    except OSError:
        return None
    return None


def parse_validator_json(text: str) -> tuple[tuple[Issue, ...], tuple[Issue, ...], str | None]:
    """(errors, warnings, schema version) from the validator's ``--format json`` output.

    Raises :class:`ExternalToolError` when ``text`` is not the validator's JSON.
    """
    try:
        data = json.loads(text)
        raw_issues = data["issues"]["issues"]
        code_messages: Mapping[str, Any] = data["issues"].get("codeMessages") or {}
    except (ValueError, KeyError, TypeError) as exc:
        raise ExternalToolError(
            f"unexpected output of the BIDS validator ({exc}): {text[:200]!r}",
            "check that bids-validator-deno works: run it by hand on the dataset",
        ) from exc
    errors: list[Issue] = []
    warnings: list[Issue] = []
    for item in raw_issues:
        if not isinstance(item, dict) or "code" not in item:
            continue
        issue = _issue(item, code_messages)
        if issue.severity == "error":
            errors.append(issue)
        elif issue.severity == "warning":
            warnings.append(issue)
    summary = data.get("summary") if isinstance(data, dict) else None
    schema = summary.get("schemaVersion") if isinstance(summary, dict) else None
    return tuple(errors), tuple(warnings), str(schema) if schema else None


def _issue(item: Mapping[str, Any], code_messages: Mapping[str, Any]) -> Issue:
    code = str(item["code"])
    message = item.get("issueMessage") or code_messages.get(code)
    line = item.get("line")
    return Issue(
        code=code,
        severity=str(item.get("severity") or "error"),
        location=_text(item.get("location")),
        sub_code=_text(item.get("subCode")),
        message=" ".join(str(message).split()) if message else None,
        rule=_text(item.get("rule")),
        line=line if isinstance(line, int) else None,
    )


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def refused_by_deno(path: Path) -> bool:
    """Whether the validator cannot read ``path``: it, as given or as its target, lies
    under /dev, /proc or /sys, which Deno reads only with every permission
    (``--allow-all``), which the validator does not ask for."""
    forms = [path.absolute()]  # Deno checks both the path as given and its target
    with contextlib.suppress(OSError, RuntimeError):  # a link loop: no target
        forms.append(path.resolve())
    return any(f.is_relative_to(top) for f in forms for top in ("/dev", "/proc", "/sys"))


def _refused_device_path(stderr: str, dataset_dir: Path) -> Path | None:
    """The path Deno refused to read (:func:`refused_by_deno`): the one its error names (a
    file of the dataset may link there), else ``dataset_dir`` when it lies there. None
    when the failure is something else."""
    if "NotCapable" not in stderr:
        return None
    named = _REFUSED.search(stderr)
    candidates = [Path(named.group(1))] if named else []
    return next((path for path in (*candidates, dataset_dir) if refused_by_deno(path)), None)


def run_validator(
    dataset_dir: Path,
    *,
    command: Sequence[str] | None = None,
    timeout: float = VALIDATOR_TIMEOUT,
    deno_dir: Path | None = None,
) -> ValidationResult:
    """Validate ``dataset_dir`` with ``bids-validator-deno --format json --prune``.

    ``--prune`` keeps the validator out of the folders it ignores (on a 10k-file dataset,
    3.0 s and 233 MB without it, 0.6 s and 165 MB with it; the same issues); a validator
    without that option is run again without it.

    ``command`` defaults to :func:`find_validator`; when the validator is not installed
    the result has ``ran=False`` (not an error). A validator that crashes or prints no
    JSON raises :class:`ExternalToolError`. ``deno_dir``: where Deno keeps its caches
    (:func:`validator_env`).
    """
    with start_validator(
        dataset_dir, command=command, timeout=timeout, deno_dir=deno_dir
    ) as pending:
        return pending.result()


def start_validator(
    dataset_dir: Path,
    *,
    command: Sequence[str] | None = None,
    timeout: float = VALIDATOR_TIMEOUT,
    deno_dir: Path | None = None,
) -> PendingValidation:
    """:func:`run_validator` in the background: the validator starts now, and
    :meth:`PendingValidation.result` waits for its findings.

    The validator only reads the dataset, and with ``--prune`` not the folders it ignores
    (``derivatives/``...): those may still be written while it runs, nothing else. No
    thread is started, so worker processes may be forked meanwhile. A validator that
    cannot be started raises from :meth:`~PendingValidation.result`, not here, so the
    caller's other work is done first.
    """
    cmd = list(command) if command is not None else find_validator()
    if not cmd:
        log.warning("%s is not installed: the dataset was not validated", VALIDATOR_SCRIPT)
        return PendingValidation(dataset_dir, [], None, None, timeout)
    # --prune: the validator does not walk the folders it ignores anyway (sourcedata/,
    # derivatives/, code/...), where bidsport keeps a link and a copy of every DICOM file
    argv = [*cmd, "--format", "json", "--prune", str(dataset_dir)]
    env = validator_env(deno_dir)
    try:
        running = start_command(argv, timeout=timeout, env=env)
    except ExternalToolError as exc:
        return PendingValidation(dataset_dir, argv, None, None, timeout, unstarted=exc)
    try:
        asked = _ask_version(cmd, env)
    except BaseException:  # e.g. KeyboardInterrupt: the validator does not outlive us
        running.stop()
        raise
    return PendingValidation(dataset_dir, argv, running, asked, timeout, env=env)


class PendingValidation:
    """A validation started by :func:`start_validator`. A context manager: leaving the
    block stops the validator when its :meth:`result` was not taken."""

    def __init__(
        self,
        dataset_dir: Path,
        argv: list[str],
        running: RunningCommand | None,
        asked: RunningCommand | None,
        timeout: float,
        *,
        unstarted: ExternalToolError | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.dataset_dir = dataset_dir
        self._env = env
        self._argv = argv
        self._running = running
        self._asked = asked
        self._timeout = timeout
        self._unstarted = unstarted  #: why the validator could not be started

    def __enter__(self) -> PendingValidation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The validator's process ID (None when it is not installed)."""
        return self._running.pid if self._running is not None else None

    def stop(self) -> None:
        """Stop the validator (and the question of its version) if they still run."""
        for command in (self._running, self._asked):
            if command is not None:
                command.stop()

    def result(self) -> ValidationResult:
        """The validator's findings, once it has finished (see :func:`run_validator`)."""
        if self._unstarted is not None:
            raise self._unstarted
        if self._running is None:
            return ValidationResult(ran=False)
        argv, dataset_dir = self._argv, self.dataset_dir
        try:
            result = self._running.wait()
            plain = _ANSI.sub("", result.stderr)  # without terminal colours
            if result.returncode not in (0, EXIT_INVALID) and _UNKNOWN_PRUNE.search(plain):
                log.info("%s has no --prune option: it walks the whole dataset", argv[0])
                argv = [a for a in argv if a != "--prune"]
                result = run_command(argv, timeout=self._timeout, env=self._env)
                plain = _ANSI.sub("", result.stderr)
            version = _answered_version(self._asked)
        finally:
            self.stop()
        if result.returncode not in (0, EXIT_INVALID):
            lines = [" ".join(line.split()) for line in plain.splitlines()]
            # Deno's first "error:" line says what went wrong; a stack trace follows it
            said = next((line for line in lines if line.startswith("error:")), None)
            stderr = (said or " ".join(lines)[-300:])[:500]
            hint = f"run {' '.join(argv)} by hand to see what went wrong"
            refused = _refused_device_path(plain, dataset_dir)
            if refused is not None:
                hint = (
                    f"the validator (Deno) does not read under /dev, /proc or /sys ({refused}): "
                    "validate a copy of the dataset made elsewhere, or use --skip-validation"
                )
            raise ExternalToolError(
                f"{VALIDATOR_SCRIPT} failed on {dataset_dir} (exit {result.returncode}): {stderr}",
                hint,
            )
        errors, warnings, schema = parse_validator_json(result.stdout)
        if result.returncode == EXIT_INVALID and not errors:
            log.warning("%s exited with %d but reported no error", VALIDATOR_SCRIPT, EXIT_INVALID)
        log.info(
            "BIDS validator %s: %d errors, %d warnings", version or "?", len(errors), len(warnings)
        )
        return ValidationResult(
            ran=True,
            command=tuple(argv),
            errors=errors,
            warnings=warnings,
            version=version,
            schema_version=schema,
        )
