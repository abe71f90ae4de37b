"""User rules: file format, validation messages, matching, and how they steer classification."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

import pytest

from bidsport.classify import classify_series
from bidsport.errors import ConfigError, ExitCode
from bidsport.records import FileHeader, Series
from bidsport.rules import FIELD_KINDS, Rule, load_rules, parse_rules, rule_matches

EXAMPLE = Path(str(resources.files("bidsport") / "data" / "rules-example.toml"))


def series(
    desc: str = "t1_mprage_sag",
    *,
    prot: str | None = None,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    seq: str | None = "*tfl3d1_16ns",
    ss: tuple[str, ...] = ("GR", "IR"),
    tr: float | None = 2300.0,
    te: float | None = 2.98,
    ti: float | None = 900.0,
    field_strength: float | None = 3.0,
    vols: int = 1,
    b_values: tuple[float, ...] = (),
    echoes: tuple[int, ...] = (1,),
    n_files: int = 3,
    pixels: bool = True,
) -> Series:
    header = FileHeader(
        path=Path("raw/IM0001"),
        size=10,
        mtime_ns=0,
        manufacturer="SIEMENS",
        series_description=desc,
        protocol_name=prot if prot is not None else desc,
        sequence_name=seq,
        image_type=image_type,
        scanning_sequence=ss,
        repetition_time=tr,
        echo_time=te,
        inversion_time=ti,
        magnetic_field_strength=field_strength,
        series_number=7,
        has_pixel_data=pixels,
    )
    return Series(
        series_id="1.2.3.7",
        header=header,
        files=tuple(Path(f"raw/IM{i:04d}") for i in range(n_files)),
        n_volumes=vols,
        b_values=b_values,
        echo_numbers=echoes,
    )


def bold(desc: str, *, vols: int = 150, prot: str | None = None) -> Series:
    return series(desc, prot=prot, seq="epfid2d1_64", ss=("EP",), tr=800, te=37, ti=None, vols=vols)


def philips(s: Series) -> Series:
    return dataclasses.replace(s, header=dataclasses.replace(s.header, manufacturer="Philips"))


def rules_from(data: object) -> list[Rule]:
    return parse_rules(data, "test.toml")


# --------------------------------------------------------------------------- the example


def test_example_file_loads() -> None:
    rules = load_rules(EXAMPLE)
    assert [r.name for r in rules] == [
        "site-t1-custom",
        "nback-task",
        "no-qa-scans",
        "symri-t2",
        "symri-t1map",
        "multiband-acq",
        "low-field-review",
        "philips-topup-pa",
        "dwi-b0-fieldmap",
    ]
    assert all(r.source == str(EXAMPLE) for r in rules)
    assert rules[-2].sidecar == {"PhaseEncodingDirection": "j", "TotalReadoutTime": 0.0415}
    assert rules[-1].corrects == ("dwi",)


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        (
            series("NEURO_3D_ANAT_v2", seq=None, ss=(), tr=None, te=None, ti=None),
            ("anat", "T1w", {"acq": "neuro3d"}, "raw", None, "site-t1-custom"),
        ),
        (
            bold("paradigm 2", vols=150),
            ("func", "bold", {"task": "nback"}, "raw", None, "nback-task"),
        ),
        (
            series("QA_weekly"),
            (
                "anat",
                "T1w",
                {},
                "raw",
                "rule 'no-qa-scans': scanner quality-assurance scan, not part of the study",
                "no-qa-scans",
            ),
        ),
        (
            series("SyMRI T2W", image_type=("DERIVED", "PRIMARY", "SYNTHETIC")),
            ("anat", "T2w", {"rec": "synthetic"}, "synthetic", None, "symri-t2"),
        ),
        (
            series("SyMRI T1 map", image_type=("DERIVED", "PRIMARY", "SYNTHETIC")),
            ("anat", "T1map", {"rec": "synthetic"}, "synthetic", None, "symri-t1map"),
        ),
        (
            bold("rfMRI_REST_AP", prot="rfMRI_REST_AP_mb8"),
            (
                "func",
                "bold",
                {"task": "rest", "acq": "mb8", "dir": "AP"},
                "raw",
                None,
                "multiband-acq",
            ),
        ),
        (
            philips(series("SE-EPI_topup_PA", seq=None, ss=("SE", "EP"), tr=3000, te=50, ti=None)),
            ("fmap", "epi", {"dir": "PA"}, "raw", None, "philips-topup-pa"),
        ),
        (
            series("b0_PA", seq="epse2d1_86", ss=("EP",), tr=8000, te=70, ti=None),
            ("fmap", "epi", {"acq": "b0", "dir": "PA"}, "raw", None, "dwi-b0-fieldmap"),
        ),
    ],
    ids=[
        "site-t1",
        "nback",
        "exclude",
        "symri-t2",
        "symri-t1map",
        "refine-acq",
        "topup-pa",
        "dwi-b0",
    ],
)
def test_example_rules_decide(s: Series, expected: tuple[object, ...]) -> None:
    cls = classify_series(s, load_rules(EXAMPLE))
    got = (cls.datatype, cls.suffix, dict(cls.entities), cls.provenance, cls.excluded, cls.rule)
    assert got == expected, cls.evidence
    assert cls.evidence[0].startswith(f"rule {cls.rule!r}: "), cls.evidence
    assert cls.review is False


def test_example_rule_conditions_must_all_hold() -> None:
    rules = load_rules(EXAMPLE)
    short = classify_series(bold("paradigm 2", vols=20), rules)  # n_volumes min = 50
    assert short.rule is None and short.entities.get("task") != "nback"
    low = classify_series(series(field_strength=0.55), rules)
    assert low.rule == "low-field-review" and low.review and low.suffix == "T1w"


def test_symri_is_excluded_without_the_rule() -> None:
    s = series("SyMRI T2W", image_type=("DERIVED", "PRIMARY", "SYNTHETIC"))
    cls = classify_series(s)
    assert cls.provenance == "synthetic" and cls.excluded is not None


def test_json_format_is_equivalent(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(
        json.dumps(
            {
                "rules": [
                    {
                        "name": "nback",
                        "match": {"series_description": "paradigm", "n_volumes": [50, 1000]},
                        "set": {
                            "datatype": "func",
                            "suffix": "bold",
                            "entities": {"task": "nback"},
                        },
                    }
                ]
            }
        )
    )
    [rule] = load_rules(path)
    cls = classify_series(bold("paradigm 2"), [rule])
    assert (cls.suffix, dict(cls.entities), cls.rule) == ("bold", {"task": "nback"}, "nback")


# --------------------------------------------------------------------------- matching


def one(match: dict[str, object]) -> Rule:
    return rules_from({"rules": [{"name": "r", "match": match, "exclude": "x"}]})[0]


@pytest.mark.parametrize(
    ("match", "hit"),
    [
        ({"series_description": "MPRAGE"}, True),  # case-insensitive search
        ({"series_description": "^mprage"}, False),
        ({"image_type": r"PRIMARY\\M\\ND"}, True),  # backslash-joined tuple
        ({"image_type": "^DERIVED"}, False),
        ({"scanning_sequence": r"GR\\IR"}, True),
        ({"repetition_time": 2300}, True),
        ({"repetition_time": 2300.0000001}, True),
        ({"repetition_time": 2000}, False),
        ({"inversion_time": [800, 1000]}, True),
        ({"inversion_time": {"min": 1000}}, False),
        ({"echo_time": {"max": 3}}, True),
        ({"flip_angle": [0, 90]}, False),  # missing number never matches
        ({"model": "^$"}, True),  # missing text is ""
        ({"n_volumes": 1}, True),
        ({"n_files": [3, 3]}, True),
        ({"b_values": {"min": 1}}, False),  # no b-values: no maximum
        ({"echo_numbers": 1}, True),
        ({"echo_numbers": "^1$"}, True),
        ({"has_pixel_data": True}, True),
        ({"has_pixel_data": False}, False),
        ({"series_id": r"\.7$"}, True),
        ({"path": "IM0001$"}, True),
        ({"series_description": "t1", "repetition_time": 1}, False),  # all must hold
    ],
)
def test_rule_matches(match: dict[str, object], hit: bool) -> None:
    assert rule_matches(one(match), series()) is hit


def test_b_values_match_the_largest() -> None:
    dwi = series("dwi", b_values=(0.0, 1000.0, 3000.0))
    assert rule_matches(one({"b_values": [2500, 3500]}), dwi)
    assert not rule_matches(one({"b_values": 1000}), dwi)


def test_every_header_field_is_matchable() -> None:
    from dataclasses import fields

    names = {f.name for f in fields(FileHeader)}
    assert names <= set(FIELD_KINDS)
    assert {"n_volumes", "n_files", "b_values", "echo_numbers"} <= set(FIELD_KINDS)


# --------------------------------------------------------------------------- semantics


def test_first_matching_rule_wins() -> None:
    rules = rules_from(
        {
            "rules": [
                {
                    "name": "first",
                    "match": {"series_description": "mprage"},
                    "set": {"datatype": "anat", "suffix": "T1w", "entities": {"acq": "one"}},
                },
                {
                    "name": "second",
                    "match": {"series_description": "t1"},
                    "set": {"datatype": "anat", "suffix": "T1w", "entities": {"acq": "two"}},
                },
            ]
        }
    )
    cls = classify_series(series(), rules)
    assert (cls.rule, dict(cls.entities)) == ("first", {"acq": "one"})
    assert classify_series(series("t1_other"), rules).rule == "second"


def test_forcing_a_suffix_keeps_only_allowed_entities() -> None:
    rules = rules_from(
        {
            "rules": [
                {
                    "name": "as-t2",
                    "match": {"series_description": "mprage"},
                    "set": {"datatype": "anat", "suffix": "T2w"},
                }
            ]
        }
    )
    cls = classify_series(series("t1_mprage_PA"), rules)
    assert (cls.datatype, cls.suffix, dict(cls.entities)) == ("anat", "T2w", {})
    assert any("overrides the automatic anat/T1w" in e for e in cls.evidence)


def test_forcing_func_without_task_gets_unknown_and_review() -> None:
    rules = rules_from(
        {
            "rules": [
                {
                    "name": "as-bold",
                    "match": {"series_description": "^odd"},
                    "set": {"datatype": "func", "suffix": "bold"},
                }
            ]
        }
    )
    cls = classify_series(bold("odd_sequence"), rules)
    assert dict(cls.entities) == {"task": "unknown"} and cls.review


def test_refining_rule_can_remove_an_entity_and_keep_derived() -> None:
    adc = series(
        "dwi_AP_ADC",
        image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"),
        seq="*ep_b0_1000",
        ss=("EP",),
    )
    rules = rules_from(
        {
            "rules": [
                {
                    "name": "keep-adc",
                    "match": {"image_type": "ADC"},
                    "set": {"provenance": "raw", "entities": {"dir": ""}},
                }
            ]
        }
    )
    auto = classify_series(adc)
    assert auto.excluded is not None and auto.entities == {"dir": "AP", "rec": "ADC"}
    cls = classify_series(adc, rules)
    assert cls.excluded is None and cls.provenance == "raw"
    assert (cls.datatype, cls.suffix, dict(cls.entities)) == ("dwi", "dwi", {"rec": "ADC"})


def test_refining_rule_can_mark_a_series_derived() -> None:
    rules = rules_from(
        {
            "rules": [
                {
                    "name": "derived",
                    "match": {"series_description": "mprage"},
                    "set": {"provenance": "derived"},
                }
            ]
        }
    )
    cls = classify_series(series(), rules)
    assert cls.excluded == "derived: derived (use --keep-derived to keep)"
    assert classify_series(series(), rules, keep_derived=True).excluded is None


# --------------------------------------------------------------------------- validation

VALID_SET = {"datatype": "anat", "suffix": "T1w"}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"rule": []}, "unknown top-level key(s) ['rule']"),
        ({"rules": {}}, "'rules' must be a list"),
        (
            {"rules": [{"name": "x", "match": {"foo": "a"}, "set": VALID_SET}]},
            "unknown field 'foo' in match",
        ),
        (
            {
                "rules": [
                    {"name": "x", "match": {"series_description": "(unclosed"}, "set": VALID_SET}
                ]
            },
            "invalid regex for series_description",
        ),
        (
            {"rules": [{"name": "x", "match": {"repetition_time": "long"}, "set": VALID_SET}]},
            "repetition_time is a number",
        ),
        (
            {"rules": [{"name": "x", "match": {"series_description": 3}, "set": VALID_SET}]},
            "series_description is text",
        ),
        (
            {"rules": [{"name": "x", "match": {"echo_time": [1, 2, 3]}, "set": VALID_SET}]},
            "must be [min, max]",
        ),
        (
            {"rules": [{"name": "x", "match": {"echo_time": [5, 1]}, "set": VALID_SET}]},
            "empty range",
        ),
        (
            {"rules": [{"name": "x", "match": {"echo_time": {"low": 1}}, "set": VALID_SET}]},
            "takes 'min' and/or 'max'",
        ),
        (
            {"rules": [{"name": "x", "match": {"has_pixel_data": 1}, "set": VALID_SET}]},
            "has_pixel_data is a flag",
        ),
        ({"rules": [{"name": "x", "match": {}, "set": VALID_SET}]}, "missing 'match'"),
        ({"rules": [{"match": {"series_description": "a"}, "set": VALID_SET}]}, "missing 'name'"),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"series_description": "a"},
                        "colour": 1,
                        "set": VALID_SET,
                    }
                ]
            },
            "unknown key(s) ['colour']",
        ),
        ({"rules": [{"name": "x", "match": {"series_description": "a"}}]}, "exactly one of 'set'"),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"series_description": "a"},
                        "set": VALID_SET,
                        "exclude": "no",
                    }
                ]
            },
            "exactly one of 'set'",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"series_description": "a"},
                        "set": {"datatype": "anatomy", "suffix": "T1w"},
                    }
                ]
            },
            "unknown datatype 'anatomy'",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"series_description": "a"},
                        "set": {"datatype": "anat", "suffix": "bold"},
                    }
                ]
            },
            "suffix 'bold' is not a suffix of datatype anat (known: ",
        ),
        (
            {
                "rules": [
                    {"name": "x", "match": {"series_description": "a"}, "set": {"datatype": "anat"}}
                ]
            },
            "go together",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"series_description": "a"},
                        "set": {"entities": {"colour": "red"}},
                    }
                ]
            },
            "unknown BIDS entity 'colour'",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"series_description": "a"},
                        "set": {"entities": {"run": "1"}},
                    }
                ]
            },
            "bidsport numbers runs itself",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"series_description": "a"},
                        "set": {"entities": {"acq": "mp_rage"}},
                    }
                ]
            },
            "letters and digits only",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"series_description": "a"},
                        "set": {"entities": {"echo": "one"}},
                    }
                ]
            },
            "needs a number",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"series_description": "a"},
                        "set": {"entities": {"part": "both"}},
                    }
                ]
            },
            "part must be one of",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"series_description": "a"},
                        "set": {"provenance": "cooked"},
                    }
                ]
            },
            "unknown provenance 'cooked'",
        ),
        (
            {
                "rules": [
                    {"name": "x", "match": {"series_description": "a"}, "set": {"review": "yes"}}
                ]
            },
            "review must be true or false",
        ),
        (
            {"rules": [{"name": "x", "match": {"series_description": "a"}, "set": {}}]},
            "non-empty table",
        ),
        (
            {"rules": [{"name": "x", "match": {"series_description": "a"}, "exclude": " "}]},
            "non-empty reason",
        ),
        (
            {
                "rules": [
                    {"name": "x", "match": {"series_description": "a"}, "exclude": "1"},
                    {"name": "x", "match": {"series_description": "b"}, "exclude": "2"},
                ]
            },
            "duplicate rule name",
        ),
    ],
)
def test_invalid_rules_name_file_rule_and_problem(data: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        rules_from(data)
    message = str(info.value)
    assert message.startswith("test.toml: "), message
    assert problem in message, message
    if isinstance(data, dict) and isinstance(data.get("rules"), list) and data["rules"]:
        name = data["rules"][-1].get("name")
        index = len(data["rules"])
        assert f"rule {index}" in message and (name is None or f"'{name}'" in message), message
    assert info.value.exit_code == ExitCode.USAGE


def test_toml_key_after_match_table_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\nname = "qa"\n[rules.match]\nseries_description = "QA"\nexclude = "not needed"\n'
    )
    with pytest.raises(ConfigError, match=r"rule 1 \('qa'\): 'exclude' is inside match"):
        load_rules(path)


def test_file_level_errors(tmp_path: Path) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[[rules]\nname = 'x'\n")
    with pytest.raises(ConfigError, match=rf"{bad_toml}: not valid TOML"):
        load_rules(bad_toml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{'rules': []}")
    with pytest.raises(ConfigError, match=rf"{bad_json}: not valid JSON"):
        load_rules(bad_json)
    for latin1 in (tmp_path / "latin1.toml", tmp_path / "latin1.json"):
        latin1.write_bytes("# Siège\n".encode("latin-1"))
        with pytest.raises(ConfigError, match=rf"{latin1}: not valid .*utf-8"):
            load_rules(latin1)
    yaml = tmp_path / "rules.yaml"
    yaml.write_text("rules: []\n")
    with pytest.raises(ConfigError, match=r"must end in \.toml or \.json"):
        load_rules(yaml)
    with pytest.raises(ConfigError, match="cannot read rules file"):
        load_rules(tmp_path / "missing.toml")
    empty = tmp_path / "empty.toml"
    empty.write_text("# no rules yet\n")
    assert load_rules(empty) == []


def test_rule_evidence_shows_conditions_and_values() -> None:
    rules = rules_from(
        {
            "rules": [
                {
                    "name": "t1",
                    "match": {"series_description": "mprage", "inversion_time": [800, 1000]},
                    "set": {"datatype": "anat", "suffix": "T1w"},
                }
            ]
        }
    )
    cls = classify_series(series(), rules)
    assert cls.evidence[0] == (
        "rule 't1': series_description ~ /mprage/ ('t1_mprage_sag'), "
        "inversion_time in [800, 1000] ('900')"
    )


def test_the_evidence_accounts_for_every_entity_a_rule_leaves_or_sets() -> None:
    """A rule's name keeps entities of the automatic one (dir of an EPI made bold) and sets
    its own (replacing the automatic ones): the evidence says which, and why."""
    epi = series("EPI PE=RL", seq="epfid2d1_64", ss=("EP",), tr=3000, te=30, ti=None, vols=2)
    assert classify_series(epi).entities == {"dir": "RL"}
    as_bold, refine = rules_from(
        {
            "rules": [
                {
                    "name": "bold",
                    "match": {"series_description": "PE=RL"},
                    "set": {"datatype": "func", "suffix": "bold", "entities": {"task": "rest"}},
                },
                {
                    "name": "pa",
                    "match": {"series_description": "PE"},
                    "set": {"entities": {"dir": "PA"}},
                },
            ]
        }
    )
    cls = classify_series(epi, [as_bold])
    assert cls.entities == {"dir": "RL", "task": "rest"}
    kept = [e for e in cls.evidence if e.startswith("keeps dir-RL of the automatic name (")]
    assert kept and "SeriesDescription 'EPI PE=RL': dir RL" in kept[0]
    assert "rule 'bold' sets task-rest" in cls.evidence
    cls = classify_series(epi, [refine])
    assert cls.entities == {"dir": "PA"}
    assert "rule 'pa' sets dir-PA (not dir-RL)" in cls.evidence


# --------------------------------------------------------------------------- set.sidecar

PHILIPS_EPI_RULE = """
[[rules]]
name = "philips-topup"
[rules.match]
series_description = "^SE_EPI_(AP|PA)$"
[rules.set]
datatype = "fmap"
suffix = "epi"
sidecar = { PhaseEncodingDirection = "j-", TotalReadoutTime = 0.0415, MultibandAccelerationFactor = 2 }
"""


def test_a_rule_sets_sidecar_keys_and_says_so(tmp_path: Path) -> None:
    """What the headers do not say (a Philips fieldmap's polarity) is set by a rule: the
    classification carries the keys, in file order, and the evidence names them."""
    path = tmp_path / "rules.toml"
    path.write_text(PHILIPS_EPI_RULE, encoding="utf-8")
    (rule,) = load_rules(path)
    s = series("SE_EPI_AP", seq=None, ss=("SE", "EP"), tr=6000, te=60, ti=None)
    cls = classify_series(s, [rule])
    assert (cls.datatype, cls.suffix, cls.rule) == ("fmap", "epi", "philips-topup")
    assert list(cls.sidecar.items()) == [
        ("PhaseEncodingDirection", "j-"),
        ("TotalReadoutTime", 0.0415),
        ("MultibandAccelerationFactor", 2),
    ]
    assert (
        "rule 'philips-topup' sets in the sidecar: PhaseEncodingDirection = \"j-\", "
        "TotalReadoutTime = 0.0415, MultibandAccelerationFactor = 2"
    ) in cls.evidence


def test_a_refining_rule_sets_only_sidecar_keys() -> None:
    """Without datatype/suffix the automatic name stands; only the sidecar keys are added."""
    (rule,) = rules_from(
        {
            "rules": [
                {
                    "name": "slice-timing",
                    "match": {"series_description": "rest"},
                    "set": {"sidecar": {"SliceTiming": [0, 0.4, 0.2, 0.6], "Pairs": [[1, 2]]}},
                }
            ]
        }
    )
    auto = classify_series(bold("fMRI_rest"))
    cls = classify_series(bold("fMRI_rest"), [rule])
    assert (cls.datatype, cls.suffix, dict(cls.entities)) == (
        auto.datatype,
        auto.suffix,
        dict(auto.entities),
    )
    assert cls.sidecar == {"SliceTiming": [0, 0.4, 0.2, 0.6], "Pairs": [[1, 2]]}
    assert auto.sidecar == {}


@pytest.mark.parametrize(
    ("sidecar", "problem"),
    [
        ({}, "set.sidecar must be a non-empty table"),
        ("j-", "set.sidecar must be a non-empty table"),
        ({"phaseEncodingDirection": "j-"}, "'phaseEncodingDirection' is not a BIDS key"),
        ({"Total_Readout": 1}, "'Total_Readout' is not a BIDS key"),
        ({"IntendedFor": ["bids::sub-01/func/x.nii.gz"]}, "'IntendedFor' cannot be set"),
        ({"TaskName": "rest"}, "set entities.task"),
        ({"InstitutionName": "General"}, "'InstitutionName' cannot be set: it identifies"),
        ({"AcquisitionDateTime": "2024-01-02T09:00:00"}, "'AcquisitionDateTime' cannot be set"),
        ({"PatientWeight": 70}, "'PatientWeight' cannot be set: it identifies"),
        ({"BidsGuess": ["anat", "T1w"]}, "'BidsGuess' cannot be set: dcm2niix's guess"),
        ({"Custom": {"PatientName": "Doe"}}, "set.sidecar.Custom: a table cannot be a value"),
        ({"TotalReadoutTime": float("nan")}, "set.sidecar.TotalReadoutTime: nan is not a number"),
        ({"SliceTiming": [0, float("inf")]}, "set.sidecar.SliceTiming[1]: inf"),
        ({"PhaseEncodingDirection": "AP"}, "must be one of i, i-, j, j-, k, k- (BIDS), not 'AP'"),
        ({"PhaseEncodingDirection": "-j"}, "not '-j'"),
        ({"TotalReadoutTime": 0}, "TotalReadoutTime is in seconds, above 0, not 0"),
        ({"TotalReadoutTime": "0.04"}, "not '0.04'"),
    ],
)
def test_invalid_sidecar_keys_and_values_are_named(sidecar: object, problem: str) -> None:
    data = {"rules": [{"name": "x", "match": {"series_description": "a"}, "set": {}}]}
    data["rules"][0]["set"] = {"sidecar": sidecar}
    with pytest.raises(ConfigError) as info:
        rules_from(data)
    assert "rule 1 ('x')" in str(info.value) and problem in str(info.value), str(info.value)


def test_a_toml_date_in_a_sidecar_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\nname = "d"\n[rules.match]\nseries_description = "a"\n'
        "[rules.set]\nsidecar = { PulseSequenceDetails = 2024-01-02 }\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"set\.sidecar\.PulseSequenceDetails: a date cannot be"):
        load_rules(path)


# --------------------------------------------------------------------------- set.corrects


def test_a_rule_limits_what_a_fieldmap_corrects() -> None:
    """``set.corrects`` (datatypes, in a fixed order; [] for none) reaches the
    classification of a fieldmap, with a word in the evidence, and is ignored (and said)
    for a series that is not one."""
    (dwi_only,) = rules_from(
        {
            "rules": [
                {
                    "name": "b0",
                    "match": {"series_description": "b0"},
                    "set": {"datatype": "fmap", "suffix": "epi", "corrects": ["dwi"]},
                }
            ]
        }
    )
    cls = classify_series(bold("b0_PA", vols=1), [dwi_only])
    assert (cls.datatype, cls.suffix, cls.corrects) == ("fmap", "epi", ("dwi",))
    assert "rule 'b0': corrects only dwi images" in cls.evidence
    assert classify_series(bold("b0_PA", vols=1)).corrects is None  # no rule: any
    (refining,) = rules_from(
        {
            "rules": [
                {
                    "name": "r",
                    "match": {"series_description": "rest"},
                    "set": {"corrects": ["perf", "func"]},
                }
            ]
        }
    )
    assert refining.corrects == ("func", "perf")
    cls = classify_series(bold("fMRI_rest"), [refining])
    assert cls.datatype == "func" and cls.corrects is None
    assert "rule 'r' sets corrects, ignored: not a B0 fieldmap or M0 scan" in cls.evidence
    (b1,) = rules_from(
        {"rules": [{"name": "b1", "match": {"series_description": "b1"},
                    "set": {"datatype": "fmap", "suffix": "TB1TFL", "corrects": ["func"]}}]}
    )  # fmt: skip
    cls = classify_series(series("tfl_b1map"), [b1])
    assert (cls.suffix, cls.corrects) == ("TB1TFL", None)
    assert "rule 'b1' sets corrects, ignored: not a B0 fieldmap or M0 scan" in cls.evidence
    (none,) = rules_from(
        {"rules": [{"name": "n", "match": {"series_description": "b0"}, "set": {"corrects": []}}]}
    )
    assert none.corrects == ()


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        ({"corrects": "dwi"}, "set.corrects must be a list of datatypes (func, dwi, perf)"),
        ({"corrects": ["dwi", "anat"]}, "set.corrects: 'anat' is not a datatype fieldmaps"),
        (
            {"datatype": "func", "suffix": "bold", "corrects": ["func"]},
            "set.corrects is for fieldmaps (datatype fmap), not func",
        ),
    ],
)
def test_invalid_corrects_is_refused(action: dict[str, object], problem: str) -> None:
    data = {"rules": [{"name": "x", "match": {"series_description": "a"}, "set": action}]}
    with pytest.raises(ConfigError) as info:
        rules_from(data)
    assert "rule 1 ('x')" in str(info.value) and problem in str(info.value), str(info.value)
