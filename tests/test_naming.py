from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidsport.naming import (
    RunCandidate,
    assign_runs,
    bids_basename,
    map_outputs,
    sanitize_label,
)


def cand(
    sid: str, time: str, number: int = 1, suffix: str = "T1w", **entities: str
) -> RunCandidate:
    return RunCandidate(sid, "anat", suffix, entities, ("20240101", time, number))


def test_basename_orders_entities_the_bids_way():
    name = bids_basename(
        "01", "2", {"part": "mag", "echo": "1", "acq": "x", "task": "rest"}, "bold"
    )
    assert name == "sub-01_ses-2_task-rest_acq-x_echo-1_part-mag_bold"


def test_basename_rejects_unknown_entities():
    with pytest.raises(ValueError, match="foo"):
        bids_basename("01", None, {"foo": "1"}, "T1w")


def test_runs_follow_acquisition_time_not_series_number():
    runs = assign_runs([cand("late", "120000", 2), cand("early", "080000", 9)])
    assert runs == {"early": "1", "late": "2"}


def test_single_series_gets_no_run_and_groups_are_separate():
    runs = assign_runs([cand("a", "1"), cand("b", "2", suffix="T2w"), cand("c", "3", acq="x")])
    assert runs == {"a": "", "b": "", "c": ""}


def test_existing_names_are_never_renamed():
    first = assign_runs([cand("a", "090000")])
    assert first == {"a": ""}
    second = assign_runs([cand("a", "090000"), cand("b", "080000")], first)
    assert second["a"] == ""  # kept, although b was acquired earlier
    assert second["b"] == "2"
    third = assign_runs([cand("a", "090000"), cand("b", "080000"), cand("c", "1")], second)
    assert third == {"a": "", "b": "2", "c": "3"}


@given(
    st.lists(
        st.tuples(st.sampled_from(["T1w", "T2w"]), st.integers(0, 235959)),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 12),
)
def test_runs_are_unique_and_stable(series, n_existing):
    cands = [cand(f"s{i}", f"{t:06d}", i, suffix=sfx) for i, (sfx, t) in enumerate(series)]
    first = assign_runs(cands[:n_existing])
    second = assign_runs(cands, first)
    # nothing that existed is renamed
    assert all(second[k] == v for k, v in first.items())
    # no two series of one group share a name
    for suffix in ("T1w", "T2w"):
        labels = [second[c.series_id] for c in cands if c.suffix == suffix]
        assert len(labels) == len(set(labels))
    # re-running with everything known changes nothing
    assert assign_runs(cands, second) == second


@given(st.text(max_size=30))
def test_sanitized_labels_are_bids_legal(text):
    label = sanitize_label(text)
    assert all(c.isascii() and c.isalnum() for c in label)


@pytest.mark.parametrize(
    ("suffix", "datatype", "postfixes", "expected"),
    [
        ("magnitude", "fmap", ["_e1", "_e2"], [("magnitude1", {}), ("magnitude2", {})]),
        ("magnitude", "fmap", [""], [("magnitude1", {})]),
        ("phasediff", "fmap", ["_e2_ph"], [("phasediff", {})]),
        ("phasediff", "fmap", ["_e1_ph", "_e2_ph"], [("phase1", {}), ("phase2", {})]),
        ("fieldmap", "fmap", ["_e1", "_e2_fieldmaphz"], [("magnitude", {}), ("fieldmap", {})]),
        ("bold", "func", [""], [("bold", {})]),
        (
            "bold",
            "func",
            ["_e1", "_e2", "_e3"],
            [("bold", {"echo": "1"}), ("bold", {"echo": "2"}), ("bold", {"echo": "3"})],
        ),
        (
            "T2starw",
            "anat",
            ["_e1", "_e1_ph"],
            [("T2starw", {"part": "mag"}), ("T2starw", {"part": "phase"})],
        ),
        (
            "T1w",
            "anat",
            ["_real", "_imaginary"],
            [("T1w", {"part": "real"}), ("T1w", {"part": "imag"})],
        ),
        (
            "T1w",
            "anat",
            ["_i00001", "_i00002"],
            [("T1w", {"acq": "i00001"}), ("T1w", {"acq": "i00002"})],
        ),
    ],
)
def test_dcm2niix_outputs_map_to_bids(suffix, datatype, postfixes, expected):
    mapped = map_outputs(suffix, datatype, postfixes)
    assert [(m.suffix, dict(m.entities)) for m in mapped] == expected
    names = {bids_basename("01", None, m.entities, m.suffix) for m in mapped}
    assert len(names) == len(mapped)  # never two outputs on one name


def test_scanner_adc_output_is_dropped_with_a_reason():
    mapped = map_outputs("dwi", "dwi", ["", "_ADC"])
    assert mapped[0].dropped is None
    assert "ADC" in (mapped[1].dropped or "")
