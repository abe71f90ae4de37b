"""BIDS names: entity order, run numbering, and dcm2niix output names → BIDS names.

Pure functions only: they are tested without files or binaries.

>>> bids_basename("01", "pre", {"task": "rest", "run": "2"}, "bold")
'sub-01_ses-pre_task-rest_run-2_bold'
>>> bids_basename("01", None, {"acq": "mprage"}, "T1w")
'sub-01_acq-mprage_T1w'
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bidsport.layout import sub_ses_prefix

#: BIDS entity order (after sub and ses) for the datatypes bidsport writes.
ENTITY_ORDER = (
    "task",
    "acq",
    "ce",
    "rec",
    "dir",
    "run",
    "mod",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "chunk",
)


def sanitize_label(value: str) -> str:
    """Keep only BIDS-legal alphanumerics of a label.

    >>> sanitize_label("MP-RAGE_1.0mm")
    'MPRAGE10mm'
    """
    return re.sub(r"[^A-Za-z0-9]", "", value)


def bids_basename(
    subject: str, session: str | None, entities: Mapping[str, str], suffix: str
) -> str:
    """``sub-<s>[_ses-<t>]_<entities in BIDS order>_<suffix>`` (empty entities left out)."""
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities: {sorted(unknown)}")
    parts = [sub_ses_prefix(subject, session)]
    parts += [f"{key}-{entities[key]}" for key in ENTITY_ORDER if entities.get(key)]
    parts.append(suffix)
    return "_".join(parts)


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunCandidate:
    """A series that will be written under a base name, for run numbering."""

    series_id: str
    datatype: str
    suffix: str
    entities: Mapping[str, str]  #: without "run"
    order_key: tuple[str, str, int]  #: (acquisition date, acquisition time, series number)

    @property
    def group_key(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        return (self.datatype, self.suffix, tuple(sorted(self.entities.items())))


def assign_runs(
    candidates: Sequence[RunCandidate], existing: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The ``run`` label of every series ("" when it needs none).

    Series that share datatype, suffix and entities are numbered ``1..n`` by acquisition
    date and time (then series number). ``existing`` holds the labels given in an earlier
    run (series id → run label) to series named as they are now: they are kept as they
    are, so re-running or adding data never renames what exists; new series take the next
    free numbers. Of earlier labels that would now clash (two series given one name), the
    earliest series keeps its label and the others are numbered as new.

    >>> c = [RunCandidate("b", "anat", "T1w", {}, ("20240101", "100000", 5)),
    ...      RunCandidate("a", "anat", "T1w", {}, ("20240101", "090000", 9))]
    >>> assign_runs(c)
    {'a': '1', 'b': '2'}
    >>> assign_runs(c[:1], {})
    {'b': ''}
    >>> assign_runs(c, {"b": ""})
    {'b': '', 'a': '2'}
    >>> assign_runs(c, {"a": "", "b": ""})
    {'a': '', 'b': '2'}
    """
    existing = existing or {}
    groups: dict[tuple[object, ...], list[RunCandidate]] = defaultdict(list)
    for cand in candidates:
        groups[cand.group_key].append(cand)
    runs: dict[str, str] = {}
    for members in groups.values():
        members = sorted(members, key=lambda c: (c.order_key, c.series_id))
        kept: dict[str, str] = {}
        for c in members:
            label = existing.get(c.series_id)
            if label is not None and label not in kept.values():
                kept[c.series_id] = label
        new = [c for c in members if c.series_id not in kept]
        runs.update(kept)
        if not kept:
            if len(new) == 1:
                runs[new[0].series_id] = ""
            else:
                runs.update({c.series_id: str(i) for i, c in enumerate(new, start=1)})
            continue
        used = {int(label) for label in kept.values() if label.isdigit()}
        next_run = max(used | {1 if "" in kept.values() else 0}) + 1
        for cand in new:
            runs[cand.series_id] = str(next_run)
            next_run += 1
    return runs


# --------------------------------------------------------------------------- dcm2niix outputs

_ECHO = re.compile(r"^e(\d+)$")


#: why dcm2niix's ``_Eq`` output is not exported: it writes that copy when the slices
#: are not equally spaced (a file missing, a variable spacing), beside the image as read
RESAMPLED_COPY = (
    "dcm2niix's copy resampled to equal slice spacing (slices missing or unevenly "
    "spaced: the image as acquired is kept, and the series flagged for review)"
)


@dataclass(frozen=True)
class OutputName:
    """The BIDS suffix and extra entities for one dcm2niix output of a series."""

    postfix: str  #: what dcm2niix appended to the requested name ("" for none)
    suffix: str
    entities: Mapping[str, str]
    dropped: str | None = None  #: reason the output is not exported (e.g. scanner ADC)


def _tokens(postfix: str) -> list[str]:
    return [t for t in postfix.split("_") if t]


def map_outputs(suffix: str, datatype: str, postfixes: Sequence[str]) -> list[OutputName]:
    """Turn dcm2niix's several outputs of one series into BIDS suffixes and entities.

    dcm2niix appends ``_e<n>`` for echoes, ``_ph`` for phase, ``_real``/``_imaginary``,
    ``_fieldmaphz`` for a GE/Philips field map in Hz, ``_ADC`` for a scanner ADC map, and
    others (``_i<n>``, ``_c<n>``, ``_t<n>``, ``_Eq_<n>``) that have no BIDS meaning.

    >>> [o.suffix for o in map_outputs("magnitude", "fmap", ["_e1", "_e2"])]
    ['magnitude1', 'magnitude2']
    >>> [(o.suffix, dict(o.entities)) for o in map_outputs("phasediff", "fmap", ["_e2_ph"])]
    [('phasediff', {})]
    >>> [(o.suffix, dict(o.entities)) for o in map_outputs("bold", "func", ["_e1", "_e2"])]
    [('bold', {'echo': '1'}), ('bold', {'echo': '2'})]
    >>> [(o.suffix, dict(o.entities)) for o in map_outputs("T1w", "anat", ["", "_ph"])]
    [('T1w', {'part': 'mag'}), ('T1w', {'part': 'phase'})]
    >>> [o.dropped is not None for o in map_outputs("T1w", "anat", ["", "_Eq_1"])]
    [False, True]
    """
    parsed = []
    for postfix in postfixes:
        tokens = _tokens(postfix)
        echo = next((int(m.group(1)) for t in tokens if (m := _ECHO.match(t))), None)
        flags = {t.lower() for t in tokens if not _ECHO.match(t)}
        parsed.append((postfix, echo, flags))

    def is_phase(flags: set[str]) -> bool:
        return "ph" in flags

    known = {"ph", "real", "imaginary", "fieldmaphz", "adc"}
    n_phase = sum(1 for _, _, f in parsed if is_phase(f))
    n_mag = sum(1 for _, _, f in parsed if not f)
    echoes = {e for _, e, _ in parsed if e is not None}
    results: list[OutputName] = []
    mag_index = 0
    phase_index = 0
    for postfix, echo, flags in parsed:
        entities: dict[str, str] = {}
        unknown = flags - known
        if "adc" in flags:
            results.append(
                OutputName(postfix, suffix, {}, dropped="scanner-derived ADC map (not raw data)")
            )
            continue
        if "eq" in flags:
            results.append(OutputName(postfix, suffix, {}, dropped=RESAMPLED_COPY))
            continue
        if unknown:
            # no BIDS meaning: keep the image, distinguished by an acq label
            entities["acq"] = sanitize_label("".join(sorted(unknown)))
        if datatype == "fmap" and suffix in ("magnitude", "phasediff", "fieldmap"):
            if "fieldmaphz" in flags:
                out_suffix = "fieldmap"
            elif is_phase(flags):
                phase_index += 1
                out_suffix = "phasediff" if n_phase == 1 else f"phase{echo or phase_index}"
            else:
                mag_index += 1
                has_fieldmap = any("fieldmaphz" in f for _, _, f in parsed) or suffix == "fieldmap"
                if has_fieldmap and n_mag == 1:
                    out_suffix = "magnitude"
                else:
                    out_suffix = f"magnitude{echo or mag_index}"
            results.append(OutputName(postfix, out_suffix, entities))
            continue
        if len(echoes) > 1 and echo is not None:
            entities["echo"] = str(echo)
        if n_phase and is_phase(flags):
            entities["part"] = "phase"
        elif "real" in flags:
            entities["part"] = "real"
        elif "imaginary" in flags:
            entities["part"] = "imag"
        elif n_phase:
            entities["part"] = "mag"
        results.append(OutputName(postfix, suffix, entities))
    return results
