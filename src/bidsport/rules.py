r"""User classification rules: a TOML or JSON file that overrides the automatic classifier.

Rules are tried in file order before anything automatic; the first rule whose every
condition matches a series decides for it (see :func:`bidsport.classify.classify_series`).
A documented example ships as ``bidsport/data/rules-example.toml``.

Format (TOML; JSON has the same structure, ``{"rules": [{...}, ...]}``)::

    [[rules]]
    name = "site-t1"                     # required, unique
    description = "our custom MPRAGE"    # optional, free text
    [rules.match]                        # required: every condition must hold
    protocol_name = "^T1_MPR_custom"     # string field: regex, searched, case-insensitive
    image_type = 'PRIMARY\\M\\'          # tuple field: regex on the backslash-joined value
    repetition_time = [2000, 2500]       # number field: [min, max] inclusive ...
    echo_number = 1                      # ... or an exact number
    [rules.set]                          # either set ...
    datatype = "anat"
    suffix = "T1w"
    entities = { acq = "custom" }
    sidecar = { PulseSequenceDetails = "site MPRAGE v2" }
    # exclude = "not needed"             # ... or exclude (a reason), not both

Matchable fields: every :class:`~bidsport.records.FileHeader` field by name (the header
of the series' first file), plus the series-level ``n_volumes``, ``n_files``,
``b_values`` (the largest b-value of the series), ``echo_numbers`` and ``echo_times`` (a
number or range matches when any value of the series does; a regex is searched in the
backslash-joined values) and ``series_id``. A missing header value is the empty string
for regexes (so ``"^$"`` matches it) and never matches a number or range. Regexes use
Python syntax (``re.search``); ``"^(?!.*phase)"`` is how to say "does not contain".
Ranges may also be written as tables: ``{ min = 1000 }`` or ``{ max = 10 }``.

``set`` keys: ``datatype`` and ``suffix`` (together; a BIDS datatype and one of its
suffixes), ``entities`` (BIDS entity → label; an empty label removes an entity the
classifier found; ``run`` is not allowed: bidsport numbers runs itself), ``provenance``
(one of :data:`bidsport.records.PROVENANCES`), ``review`` (true/false) and ``sidecar``
(BIDS metadata key → JSON value or list, written into the JSON sidecar of every image of
the series, over what dcm2niix wrote: for what the headers do not say, e.g. the
PhaseEncodingDirection of a Philips ``epi`` fieldmap, whose polarity Philips does not
record; bidsport's own keys, identifying keys and dates are refused) and ``corrects``
(of a fieldmap: the datatypes of the images it may correct, a list of ``func``, ``dwi``,
``perf``, or ``[]`` for none; by default each func/dwi/perf image is corrected by the
latest set of fieldmaps acquired before it, see :func:`bidsport.export.fieldmap_sets` and
:func:`bidsport.export.fieldmap_acquisition`).
A rule that sets only entities, provenance, review, sidecar or corrects refines the
automatic classification; a rule that sets datatype and suffix decides the series and
keeps it even when it is derived.
"""

from __future__ import annotations

import json
import math
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bidsport.errors import ConfigError
from bidsport.naming import ENTITY_ORDER
from bidsport.phi import SIDECAR_PHI_KEYS, is_anonymized_sidecar_key
from bidsport.records import CORRECTED_DATATYPES, DATATYPES, PROVENANCES, FileHeader, Series

# --------------------------------------------------------------------------- BIDS vocabulary

_ANAT_NONPARAMETRIC = (
    "T1w",
    "T2w",
    "PDw",
    "T2starw",
    "FLAIR",
    "inplaneT1",
    "inplaneT2",
    "PDT2",
    "angio",
)
_ANAT_PARAMETRIC = (
    "T1map",
    "T2map",
    "T2starmap",
    "R1map",
    "R2map",
    "R2starmap",
    "PDmap",
    "MTRmap",
    "MTsat",
    "UNIT1",
    "T1rho",
    "MWFmap",
    "MTVmap",
    "Chimap",
    "S0map",
    "M0map",
)
_ANAT_FILE_COLLECTIONS = ("MEGRE", "MESE", "VFA", "IRT1", "MP2RAGE", "MPM", "MTS", "MTR")
_FMAP_GRE = ("phasediff", "phase1", "phase2", "magnitude1", "magnitude2", "magnitude", "fieldmap")
_FMAP_B1 = (
    "TB1DAM",
    "TB1EPI",
    "TB1AFI",
    "TB1TFL",
    "TB1RFM",
    "TB1SRGE",
    "TB1map",
    "RB1COR",
    "RB1map",
)

#: The raw MRI suffixes of each datatype (BIDS 1.10 schema) that a rule may set.
SUFFIXES: Mapping[str, frozenset[str]] = types.MappingProxyType(
    {
        "anat": frozenset(_ANAT_NONPARAMETRIC + _ANAT_PARAMETRIC + _ANAT_FILE_COLLECTIONS),
        "dwi": frozenset(("dwi", "sbref")),
        "func": frozenset(("bold", "cbv", "sbref", "noRF")),
        "fmap": frozenset((*_FMAP_GRE, *_FMAP_B1, "epi", "m0scan")),
        "perf": frozenset(("asl", "m0scan", "noRF")),
    }
)

#: Entities a rule may set (``sub``/``ses`` come from the import, ``run`` from run numbering).
ENTITIES = tuple(e for e in ENTITY_ORDER if e != "run")
_INDEX_ENTITIES = frozenset(("echo", "flip", "inv", "chunk"))  # labels are numbers
_PART_LABELS = frozenset(("mag", "phase", "real", "imag"))
_MT_LABELS = frozenset(("on", "off"))
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_INDEX = re.compile(r"^[0-9]+$")

_RULE_KEYS = frozenset(("name", "description", "match", "set", "exclude"))
_SET_KEYS = frozenset(
    ("datatype", "suffix", "entities", "provenance", "review", "sidecar", "corrects")
)
#: BIDS metadata keys are CamelCase
_SIDECAR_KEY = re.compile(r"[A-Z][A-Za-z0-9]*")
#: the values BIDS allows for PhaseEncodingDirection
_PHASE_ENCODING_DIRECTIONS = ("i", "i-", "j", "j-", "k", "k-")
#: sidecar keys bidsport writes itself, and what to set instead
_SIDECAR_MANAGED: Mapping[str, str] = types.MappingProxyType(
    {
        "TaskName": "set entities.task: TaskName follows it",
        "IntendedFor": "bidsport links fieldmaps to the images acquired with them",
        "BidsportSourceDicom": "bidsport records the source files itself",
        "SeriesInstanceUID": "it comes from the headers (with --anonymize, replaced)",
        "BidsGuess": "dcm2niix's guess is not kept: bidsport names the series itself",
    }
)

# --------------------------------------------------------------------------- field kinds

#: "text": regex on a string; "texts": regex on backslash-joined strings; "number": exact
#: or range; "numbers": any value exact/in range, or regex on the joined values; "flag": bool
_SERIES_FIELDS: Mapping[str, str] = types.MappingProxyType(
    {
        "n_volumes": "number",
        "n_files": "number",
        "b_values": "max",
        "echo_numbers": "numbers",
        "echo_times": "numbers",
        "series_id": "text",
    }
)


def _kind_of(annotation: Any) -> str:
    """The matcher kind of a FileHeader field from its type annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if len(args) == 1 and typing.get_origin(annotation) is not tuple else annotation
    if base is bool:
        return "flag"
    if base in (int, float):
        return "number"
    if base in (str, Path):
        return "text"
    if typing.get_origin(base) is tuple:
        return "texts" if typing.get_args(base)[0] is str else "numbers"
    raise TypeError(f"no matcher for FileHeader annotation {annotation!r}")  # pragma: no cover


_HINTS = typing.get_type_hints(FileHeader)
#: Every matchable field name → its kind.
FIELD_KINDS: Mapping[str, str] = types.MappingProxyType(
    {
        **{f.name: _kind_of(_HINTS[f.name]) for f in fields(FileHeader)},
        **_SERIES_FIELDS,
    }
)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Condition:
    """One condition of a rule: a regex, an exact number, a range or a flag."""

    field: str
    pattern: re.Pattern[str] | None = None
    value: float | None = None  #: exact number
    low: float | None = None  #: inclusive range bounds (either may be None)
    high: float | None = None
    flag: bool | None = None

    def describe(self) -> str:
        if self.pattern is not None:
            return f"{self.field} ~ /{self.pattern.pattern}/"
        if self.flag is not None:
            return f"{self.field} is {str(self.flag).lower()}"
        if self.value is not None:
            return f"{self.field} = {_num(self.value)}"
        low = "-inf" if self.low is None else _num(self.low)
        high = "inf" if self.high is None else _num(self.high)
        return f"{self.field} in [{low}, {high}]"


@dataclass(frozen=True)
class Rule:
    """A user classification rule (see the module docstring for the file format)."""

    name: str
    match: Mapping[str, Condition]
    datatype: str | None = None
    suffix: str | None = None
    entities: Mapping[str, str] = field(default_factory=dict)  #: "" removes an entity
    provenance: str | None = None
    review: bool | None = None
    sidecar: Mapping[str, Any] = field(default_factory=dict)  #: sidecar key → JSON value
    corrects: tuple[str, ...] | None = None  #: datatypes a fieldmap may correct
    exclude: str | None = None  #: reason; the series is reported but not converted
    description: str | None = None
    source: str = ""  #: the file the rule came from


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --------------------------------------------------------------------------- matching


def _series_value(series: Series, name: str) -> Any:
    if name == "n_files":
        return series.n_files
    if name == "b_values":
        return max(series.b_values) if series.b_values else None
    if name in _SERIES_FIELDS:
        return getattr(series, name)
    return getattr(series.header, name)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return "\\".join(_num(v) if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return _num(value)
    return str(value)


def _number_matches(cond: Condition, value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    number = float(value)
    if cond.value is not None:
        return math.isclose(number, cond.value, rel_tol=1e-6, abs_tol=1e-9)
    return (cond.low is None or number >= cond.low - 1e-9) and (
        cond.high is None or number <= cond.high + 1e-9
    )


def condition_matches(cond: Condition, series: Series) -> bool:
    """True when ``cond`` holds for ``series``."""
    value = _series_value(series, cond.field)
    if cond.pattern is not None:
        return cond.pattern.search(_as_text(value)) is not None
    if cond.flag is not None:
        return bool(value) is cond.flag
    if isinstance(value, tuple):
        return any(_number_matches(cond, v) for v in value)
    return _number_matches(cond, value)


def rule_matches(rule: Rule, series: Series) -> bool:
    """True when every condition of ``rule`` holds for ``series``."""
    return all(condition_matches(cond, series) for cond in rule.match.values())


def rule_evidence(rule: Rule, series: Series) -> str:
    """Why ``rule`` matched, e.g. ``rule 'site-t1': protocol_name 'T1_x' ~ /^T1_/``."""
    parts = []
    for cond in rule.match.values():
        shown = _as_text(_series_value(series, cond.field))
        parts.append(f"{cond.describe()} ({shown!r})" if shown else cond.describe())
    return f"rule {rule.name!r}: " + ", ".join(parts)


# --------------------------------------------------------------------------- loading


class _Problem(Exception):
    """One validation problem of a rule (turned into a ConfigError with the context)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _condition(name: str, spec: Any) -> Condition:
    kind = FIELD_KINDS.get(name)
    if kind is None and name in _RULE_KEYS:
        raise _Problem(
            f"{name!r} is inside match: in TOML, keys after a [rules.match] line belong to "
            f"that table; write {name} before [rules.match]"
        )
    if kind is None:
        raise _Problem(f"unknown field {name!r} in match (known: {', '.join(sorted(FIELD_KINDS))})")
    if isinstance(spec, str):
        if kind in ("number", "max", "flag"):
            raise _Problem(
                f"{name} is a {'flag' if kind == 'flag' else 'number'}: "
                f"give {'true/false' if kind == 'flag' else 'a number or [min, max]'},"
                f" not the string {spec!r}"
            )
        try:
            return Condition(name, pattern=re.compile(spec, re.IGNORECASE))
        except re.error as exc:
            raise _Problem(f"invalid regex for {name}: {spec!r} ({exc})") from None
    if isinstance(spec, bool):
        if kind != "flag":
            raise _Problem(f"{name} is not a true/false field")
        return Condition(name, flag=spec)
    if kind == "flag":
        raise _Problem(f"{name} is a flag: give true or false, not {spec!r}")
    if kind in ("text", "texts"):
        raise _Problem(f"{name} is text: give a regex string, not {spec!r}")
    if _is_number(spec):
        return Condition(name, value=float(spec))
    low: Any
    high: Any
    if isinstance(spec, list):
        if len(spec) != 2:
            raise _Problem(f"range for {name} must be [min, max], not {spec!r}")
        low, high = spec
    elif isinstance(spec, dict):
        extra = set(spec) - {"min", "max"}
        if extra or not spec:
            raise _Problem(f"range table for {name} takes 'min' and/or 'max', not {sorted(spec)}")
        low, high = spec.get("min"), spec.get("max")
    else:
        raise _Problem(f"cannot match {name} with {spec!r}: use a number or [min, max]")
    for bound in (low, high):
        if bound is not None and not _is_number(bound):
            raise _Problem(f"range bounds for {name} must be numbers, not {bound!r}")
    if low is not None and high is not None and low > high:
        raise _Problem(f"empty range for {name}: {low} > {high}")
    return Condition(
        name,
        low=None if low is None else float(low),
        high=None if high is None else float(high),
    )


def _entities(spec: Any) -> dict[str, str]:
    if not isinstance(spec, dict):
        raise _Problem(f"set.entities must be a table of entity = label, not {spec!r}")
    result: dict[str, str] = {}
    for key, raw in spec.items():
        if key == "run":
            raise _Problem("entity 'run' cannot be set: bidsport numbers runs itself")
        if key in ("sub", "ses"):
            raise _Problem(f"entity {key!r} cannot be set by a rule (it comes from the import)")
        if key not in ENTITIES:
            raise _Problem(f"unknown BIDS entity {key!r} (known: {', '.join(ENTITIES)})")
        if _is_number(raw) and float(raw).is_integer():
            raw = str(int(raw))
        if not isinstance(raw, str):
            raise _Problem(f"label of entity {key!r} must be a string, not {raw!r}")
        if raw and key in _INDEX_ENTITIES and not _INDEX.match(raw):
            raise _Problem(f"entity {key!r} needs a number, not {raw!r}")
        if raw and not _LABEL.match(raw):
            raise _Problem(f"label {raw!r} of entity {key!r} must be letters and digits only")
        if raw and key == "part" and raw not in _PART_LABELS:
            raise _Problem(f"part must be one of {sorted(_PART_LABELS)}, not {raw!r}")
        if raw and key == "mt" and raw not in _MT_LABELS:
            raise _Problem(f"mt must be 'on' or 'off', not {raw!r}")
        result[key] = raw
    return result


def _json_value(value: Any, where: str) -> Any:
    """``value`` when JSON can hold it (TOML dates and times, NaN and infinities cannot);
    lists, but no tables (nested keys would escape the checks of :func:`_sidecar`)."""
    if isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Problem(f"{where}: {value} is not a number JSON can hold")
        return value
    if isinstance(value, list):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise _Problem(f"{where}: a {type(value).__name__} cannot be written to JSON (quote it)")


def _corrects(spec: Any) -> tuple[str, ...]:
    """Validate ``set.corrects``: a list of the datatypes fieldmaps correct (maybe empty)."""
    if not isinstance(spec, list) or not all(isinstance(d, str) for d in spec):
        raise _Problem(
            f"set.corrects must be a list of datatypes ({', '.join(CORRECTED_DATATYPES)}), "
            f"or [] for none, not {spec!r}"
        )
    unknown = [d for d in spec if d not in CORRECTED_DATATYPES]
    if unknown:
        raise _Problem(
            f"set.corrects: {', '.join(map(repr, unknown))} is not a datatype fieldmaps "
            f"correct ({', '.join(CORRECTED_DATATYPES)})"
        )
    return tuple(d for d in CORRECTED_DATATYPES if d in spec)


def _sidecar(spec: Any) -> dict[str, Any]:
    """Validate ``set.sidecar``: BIDS keys bidsport does not manage or drop, JSON values."""
    if not isinstance(spec, dict) or not spec:
        raise _Problem("set.sidecar must be a non-empty table of key = value")
    result = {}
    for key, value in spec.items():
        if not _SIDECAR_KEY.fullmatch(key):
            raise _Problem(f"sidecar key {key!r} is not a BIDS key (CamelCase letters and digits)")
        if key in _SIDECAR_MANAGED:
            raise _Problem(f"sidecar key {key!r} cannot be set: {_SIDECAR_MANAGED[key]}")
        if key in SIDECAR_PHI_KEYS or is_anonymized_sidecar_key(key):
            raise _Problem(
                f"sidecar key {key!r} cannot be set: it identifies (bidsport drops it, "
                "or --anonymize does)"
            )
        if isinstance(value, dict):
            raise _Problem(f"set.sidecar.{key}: a table cannot be a value here, only values")
        result[key] = _json_value(value, f"set.sidecar.{key}")
    pe = result.get("PhaseEncodingDirection")
    if pe is not None and pe not in _PHASE_ENCODING_DIRECTIONS:
        raise _Problem(
            f"sidecar PhaseEncodingDirection must be one of "
            f"{', '.join(_PHASE_ENCODING_DIRECTIONS)} (BIDS), not {pe!r}"
        )
    trt = result.get("TotalReadoutTime")
    if trt is not None and (not _is_number(trt) or trt <= 0):
        raise _Problem(f"sidecar TotalReadoutTime is in seconds, above 0, not {trt!r}")
    return result


def _rule(spec: Any, source: str, names: set[str]) -> Rule:
    if not isinstance(spec, dict):
        raise _Problem("a rule must be a table")
    unknown = set(spec) - _RULE_KEYS
    if unknown:
        raise _Problem(f"unknown key(s) {sorted(unknown)} (known: {sorted(_RULE_KEYS)})")
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _Problem("missing 'name' (a non-empty string)")
    if name in names:
        raise _Problem("duplicate rule name")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise _Problem("'description' must be a string")
    match = spec.get("match")
    if not isinstance(match, dict) or not match:
        raise _Problem("missing 'match' (a table of at least one field = condition)")
    conditions = {key: _condition(key, value) for key, value in match.items()}
    has_set, exclude = "set" in spec, spec.get("exclude")
    if has_set == (exclude is not None):
        raise _Problem("give exactly one of 'set' (a table) or 'exclude' (a reason)")
    if exclude is not None:
        if not isinstance(exclude, str) or not exclude.strip():
            raise _Problem("'exclude' must be a non-empty reason string")
        return Rule(
            name, conditions, exclude=exclude.strip(), description=description, source=source
        )
    action = spec["set"]
    if not isinstance(action, dict) or not action:
        raise _Problem("'set' must be a non-empty table")
    unknown = set(action) - _SET_KEYS
    if unknown:
        raise _Problem(f"unknown key(s) {sorted(unknown)} in set (known: {sorted(_SET_KEYS)})")
    datatype, suffix = action.get("datatype"), action.get("suffix")
    if (datatype is None) != (suffix is None):
        raise _Problem("set.datatype and set.suffix go together: give both or neither")
    if datatype is not None:
        if datatype not in DATATYPES:
            raise _Problem(f"unknown datatype {datatype!r} (known: {', '.join(DATATYPES)})")
        if suffix not in SUFFIXES[datatype]:
            raise _Problem(
                f"suffix {suffix!r} is not a suffix of datatype {datatype} "
                f"(known: {', '.join(sorted(SUFFIXES[datatype]))})"
            )
    provenance = action.get("provenance")
    if provenance is not None and provenance not in PROVENANCES:
        raise _Problem(f"unknown provenance {provenance!r} (known: {', '.join(PROVENANCES)})")
    review = action.get("review")
    if review is not None and not isinstance(review, bool):
        raise _Problem("set.review must be true or false")
    entities = _entities(action.get("entities", {}))
    if datatype == "func" and suffix in ("bold", "cbv", "sbref") and entities.get("task") == "":
        raise _Problem("a func series needs a task: do not remove it")
    sidecar = _sidecar(action["sidecar"]) if "sidecar" in action else {}
    corrects = _corrects(action["corrects"]) if "corrects" in action else None
    if corrects is not None and datatype not in (None, "fmap"):
        raise _Problem(f"set.corrects is for fieldmaps (datatype fmap), not {datatype}")
    return Rule(
        name,
        conditions,
        datatype=datatype,
        suffix=suffix,
        entities=entities,
        provenance=provenance,
        review=review,
        sidecar=sidecar,
        corrects=corrects,
        description=description,
        source=source,
    )


def parse_rules(data: Any, source: str) -> list[Rule]:
    """Validate already-parsed rules data (the content of a rules file)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a table with a 'rules' list")
    unknown = set(data) - {"rules"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {sorted(unknown)} (only 'rules' is allowed)",
            'rules are written as [[rules]] tables (TOML) or a "rules" list (JSON)',
        )
    specs = data.get("rules", [])
    if not isinstance(specs, list):
        raise ConfigError(f"{source}: 'rules' must be a list of tables")
    rules: list[Rule] = []
    names: set[str] = set()
    for index, spec in enumerate(specs, start=1):
        label = f"rule {index}"
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            label += f" ({spec['name']!r})"
        try:
            rule = _rule(spec, source, names)
        except _Problem as exc:
            raise ConfigError(
                f"{source}: {label}: {exc}",
                "see the format in bidsport/data/rules-example.toml",
            ) from None
        names.add(rule.name)
        rules.append(rule)
    return rules


def load_rules(path: Path) -> list[Rule]:
    """Read and validate a TOML (``.toml``) or JSON (``.json``) rules file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read rules file {path}: {exc.strerror or exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":  # tomllib is imported here, not with this module (~5 ms)
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(raw.decode("utf-8"))
        elif suffix == ".json":
            data = json.loads(raw.decode("utf-8"))
        else:
            raise ConfigError(
                f"rules file {path} must end in .toml or .json", "rename it to say its format"
            )
    except ValueError as exc:  # TOMLDecodeError, JSONDecodeError, UnicodeDecodeError
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from exc
    return parse_rules(data, str(path))
