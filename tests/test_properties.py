"""Properties of the pure naming decisions: labels, BIDS names, dcm2niix outputs, runs.

``tests/test_naming.py`` holds the examples (and two properties); here hypothesis checks
what must hold for every input: cleaned labels are BIDS-legal and stable, a BIDS name
parses back into what built it, two outputs of one series never get the same name, and
run numbers are dense, ordered by acquisition, independent of input order and never
renumber what exists.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidsport.errors import LabelError
from bidsport.ingest import clean_label
from bidsport.naming import (
    ENTITY_ORDER,
    RunCandidate,
    assign_runs,
    bids_basename,
    map_outputs,
)

ALNUM = st.text(st.sampled_from("abcXYZ0189"), min_size=1, max_size=8)
#: any text, including non-ASCII letters, control characters and lone surrogates
ANY_TEXT = st.text(st.characters(codec=None), max_size=30)
PREFIXES = ("sub-", "ses-", "SUB-", "Ses-", " sub-")


# --------------------------------------------------------------------------- clean_label


def _ascii_alnum(text: str) -> str:
    """The ASCII letters and digits of ``text`` in its compatibility decomposition (NFKD:
    ``é`` is ``e`` and an accent, a full-width ``A`` an ``A``)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if c.isascii() and c.isalnum())


@given(ANY_TEXT)
def test_clean_label_is_bids_legal_or_refused(raw: str) -> None:
    try:
        label = clean_label(raw)
    except LabelError as exc:
        assert repr(raw) in exc.message  # names the label at fault
        assert not _ascii_alnum(re.sub(r"^\s*(sub|ses)-", "", raw.strip(), flags=re.I))
        return
    assert re.fullmatch(r"[A-Za-z0-9]+", label)
    assert clean_label(label) == label  # idempotent


@given(ANY_TEXT)
def test_clean_label_keeps_the_letters_and_digits_in_order(raw: str) -> None:
    stripped = re.sub(r"^\s*(sub|ses)-", "", raw.strip(), count=1, flags=re.I)
    expected = _ascii_alnum(stripped)
    if expected:
        assert clean_label(raw) == expected
    else:
        with pytest.raises(LabelError):
            clean_label(raw)


@given(st.sampled_from(PREFIXES), ANY_TEXT)
def test_clean_label_ignores_one_prefix(prefix: str, raw: str) -> None:
    if re.match(r"^\s*(sub|ses)-", raw, flags=re.I):
        return  # a second prefix is part of the label ("sub-sub-01" -> "sub01")
    try:
        expected = clean_label(raw)
    except LabelError:
        with pytest.raises(LabelError):
            clean_label(prefix + raw)
        return
    assert clean_label(prefix + raw) == expected


# --------------------------------------------------------------------------- bids_basename

ENTITIES = st.dictionaries(st.sampled_from(ENTITY_ORDER), st.one_of(ALNUM, st.just("")))
BIDS_NAME = re.compile(
    r"sub-(?P<sub>[A-Za-z0-9]+)(?:_ses-(?P<ses>[A-Za-z0-9]+))?"
    r"(?P<entities>(?:_[a-z]+-[A-Za-z0-9]+)*)_(?P<suffix>[A-Za-z0-9]+)"
)


@given(ALNUM, st.one_of(st.none(), ALNUM), ENTITIES, ALNUM, st.randoms())
def test_a_bids_name_parses_back_into_its_parts(
    subject: str, session: str | None, entities: dict[str, str], suffix: str, rnd
) -> None:
    shuffled = list(entities.items())
    rnd.shuffle(shuffled)
    name = bids_basename(subject, session, dict(shuffled), suffix)
    assert name == bids_basename(subject, session, entities, suffix)  # order of the dict
    match = BIDS_NAME.fullmatch(name)
    assert match, name
    assert (match["sub"], match["ses"], match["suffix"]) == (subject, session, suffix)
    parsed = [tuple(part.split("-")) for part in match["entities"].split("_")[1:]]
    assert parsed == [(k, entities[k]) for k in ENTITY_ORDER if entities.get(k)]


@given(ALNUM, st.text(st.characters(codec="ascii"), min_size=1, max_size=6), ALNUM)
def test_unknown_entities_are_refused(subject: str, entity: str, value: str) -> None:
    if entity in ENTITY_ORDER:
        return
    with pytest.raises(ValueError, match="unknown BIDS entities"):
        bids_basename(subject, None, {entity: value}, "T1w")


# --------------------------------------------------------------------------- map_outputs

#: (datatype, suffix) of series bidsport converts, and the image components dcm2niix may
#: split them into (fieldmaps: magnitude and phase only)
SERIES_KINDS = [
    ("anat", "T1w", ("", "_ph", "_real", "_imaginary")),
    ("anat", "T2starw", ("", "_ph", "_real", "_imaginary")),
    ("anat", "MESE", ("", "_ph")),
    ("func", "bold", ("", "_ph", "_real", "_imaginary")),
    ("dwi", "dwi", ("", "_ph")),
    ("fmap", "magnitude", ("", "_ph")),
    ("fmap", "phasediff", ("", "_ph")),
    ("fmap", "fieldmap", ("", "_fieldmaphz")),
    ("perf", "asl", ("",)),
]


@st.composite
def dcm2niix_postfixes(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    """A realistic set of dcm2niix outputs of one series: echoes, components and extras."""
    datatype, suffix, components = draw(st.sampled_from(SERIES_KINDS))
    echoes = draw(
        st.one_of(st.just([None]), st.lists(st.integers(1, 8), min_size=2, max_size=4, unique=True))
    )
    if "_fieldmaphz" in components:
        echoes = [None]  # a field map in Hz is one image, whatever the echoes
    chosen = draw(st.lists(st.sampled_from(components), min_size=1, max_size=4, unique=True))
    extras = draw(
        st.lists(
            st.sampled_from(["_i00001", "_i00002", "_c2", "_t120", "_Eq_1"]),
            max_size=2,
            unique=True,
        )
    )
    postfixes = []
    for extra in ["", *extras]:
        for echo in echoes:
            for component in chosen:
                postfixes.append(f"{f'_e{echo}' if echo else ''}{component}{extra}")
    if draw(st.booleans()):
        postfixes.append("_ADC")
    return datatype, suffix, postfixes


@given(dcm2niix_postfixes())
def test_no_two_outputs_of_a_series_get_the_same_name(case: tuple[str, str, list[str]]) -> None:
    datatype, suffix, postfixes = case
    mapped = map_outputs(suffix, datatype, postfixes)
    assert [m.postfix for m in mapped] == postfixes  # one per output, in order
    kept = [m for m in mapped if m.dropped is None]
    names = [bids_basename("01", None, dict(m.entities), m.suffix) for m in kept]
    assert not [n for n, k in Counter(names).items() if k > 1], list(
        zip(postfixes, names, strict=False)
    )
    assert all(m.dropped for m in mapped if m.postfix == "_ADC")
    for m in kept:  # every entity is one bids_basename accepts, with a legal label
        assert all(
            k in ENTITY_ORDER and re.fullmatch(r"[A-Za-z0-9]+", v) for k, v in m.entities.items()
        ), m


@given(st.lists(st.text(max_size=12), max_size=6), st.sampled_from(SERIES_KINDS))
def test_map_outputs_never_fails_on_odd_postfixes(postfixes: list[str], kind) -> None:
    datatype, suffix, _ = kind
    mapped = map_outputs(suffix, datatype, postfixes)
    assert len(mapped) == len(postfixes)
    for m in mapped:
        if m.dropped is None:
            bids_basename("01", None, dict(m.entities), m.suffix)  # raises on a bad entity


# --------------------------------------------------------------------------- assign_runs

TIMES = st.integers(0, 235959).map(lambda t: f"{t:06d}")
GROUPS = st.sampled_from(
    [("anat", "T1w", ()), ("anat", "T2w", ()), ("func", "bold", (("task", "rest"),))]
)


@st.composite
def candidates(draw: st.DrawFn, max_size: int = 10) -> list[RunCandidate]:
    specs = draw(
        st.lists(st.tuples(GROUPS, TIMES, st.integers(1, 40)), min_size=1, max_size=max_size)
    )
    return [
        RunCandidate(f"s{i}", dt, sfx, dict(ents), ("20240101", time, number))
        for i, ((dt, sfx, ents), time, number) in enumerate(specs)
    ]


@given(candidates(), st.randoms())
@settings(max_examples=200)
def test_fresh_runs_are_dense_ordered_and_independent_of_input_order(
    cands: list[RunCandidate], rnd
) -> None:
    runs = assign_runs(cands)
    assert set(runs) == {c.series_id for c in cands}
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    assert assign_runs(shuffled) == runs
    groups: dict[object, list[RunCandidate]] = {}
    for c in cands:
        groups.setdefault(c.group_key, []).append(c)
    for members in groups.values():
        labels = [runs[c.series_id] for c in members]
        if len(members) == 1:
            assert labels == [""]
            continue
        assert sorted(labels, key=int) == [str(i) for i in range(1, len(members) + 1)]
        by_run = sorted(members, key=lambda c: int(runs[c.series_id]))
        keys = [(c.order_key, c.series_id) for c in by_run]
        assert keys == sorted(keys)  # run 1 was acquired first


@given(candidates(), candidates())
def test_groups_do_not_affect_each_other(a: list[RunCandidate], b: list[RunCandidate]) -> None:
    b = [
        RunCandidate(f"b{c.series_id}", c.datatype, f"{c.suffix}x", c.entities, c.order_key)
        for c in b
    ]
    both = assign_runs(a + b)
    assert {k: both[k] for k in assign_runs(a)} == assign_runs(a)


@given(candidates(max_size=12), st.integers(0, 12), st.randoms())
def test_new_series_never_renumber_old_ones(cands: list[RunCandidate], n_old: int, rnd) -> None:
    old = cands[:n_old]
    first = assign_runs(old)
    later = list(cands)
    rnd.shuffle(later)
    second = assign_runs(later, first)
    assert {k: second[k] for k in first} == first
    for key in {c.group_key for c in cands}:
        labels = [second[c.series_id] for c in cands if c.group_key == key]
        assert len(labels) == len(set(labels))  # no two series of a group share a name
        olds = {first[c.series_id] for c in old if c.group_key == key}
        news = [second[c.series_id] for c in cands[n_old:] if c.group_key == key]
        top = max((int(x) if x else 1 for x in olds), default=0)
        assert all(int(x) > top for x in news if olds)  # new ones come after the old ones
