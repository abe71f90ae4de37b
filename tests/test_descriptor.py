"""The boutiques descriptor (descriptors/bidsport.json) against the real argument parser.

The descriptor is written by hand; these tests make it impossible for it to drift from
``build_parser()``: every option is described with the same flag, choices, list-ness and
(where constant) default, and a command line that bosh builds from the descriptor parses
back to the values that went in. They also tie the version and the dcm2niix pin of the
descriptor, the Dockerfile and Singularity.def to the package.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bidsport import __version__
from bidsport.cli.parser import build_parser
from bidsport.errors import ExitCode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DESCRIPTOR = REPO / "descriptors" / "bidsport.json"
INVOCATIONS = sorted((REPO / "descriptors" / "invocations").glob("*.json"))
BOSH = Path(sys.executable).parent / "bosh"
IMAGE = f"bidsport/bidsport:{__version__}"

#: Defaults that depend on the machine, so the descriptor leaves them to the tool.
MACHINE_DEFAULTS = {"n_procs"}  # os.cpu_count()


def _bosh(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert BOSH.exists(), f"bosh not found at {BOSH}: install boutiques (the 'test' extra)"
    return subprocess.run(
        [str(BOSH), *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def descriptor() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DESCRIPTOR.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def inputs(descriptor: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in descriptor["inputs"]}


def _actions() -> dict[str, argparse.Action]:
    """The parser's arguments by dest, without --help and --version (they only print)."""
    skip = (argparse._HelpAction, argparse._VersionAction)
    return {a.dest: a for a in build_parser()._actions if not isinstance(a, skip)}


ACTIONS = _actions()
POSITIONALS = [dest for dest, a in ACTIONS.items() if not a.option_strings]
BASE_ARGS = ["inbox", "out", "participant"]


def _parse(args: list[str]) -> argparse.Namespace:
    return build_parser().parse_args([*BASE_ARGS, *args])


def test_bosh_validate_passes() -> None:
    result = _bosh("validate", str(DESCRIPTOR))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_parser_argument_is_described_and_nothing_else(inputs: dict[str, Any]) -> None:
    assert set(inputs) == set(ACTIONS), (
        f"only in the parser: {sorted(set(ACTIONS) - set(inputs))}; "
        f"only in the descriptor: {sorted(set(inputs) - set(ACTIONS))}"
    )


def test_command_line_has_positionals_first_then_every_value_key_once(
    descriptor: dict[str, Any], inputs: dict[str, Any]
) -> None:
    words = descriptor["command-line"].split()
    assert words[0] == "bidsport"
    keys = [inputs[dest]["value-key"] for dest in POSITIONALS]
    assert words[1 : 1 + len(keys)] == keys
    for dest, item in inputs.items():
        assert item["value-key"] == f"[{dest.upper()}]"
        assert words.count(item["value-key"]) == 1, item["value-key"]
    assert len(words) == 1 + len(inputs)


@pytest.mark.parametrize("dest", sorted(ACTIONS))
def test_input_matches_parser_argument(dest: str, inputs: dict[str, Any]) -> None:
    action, item = ACTIONS[dest], inputs[dest]
    assert item.get("description"), f"{dest}: no description"
    if not action.option_strings:  # positional
        assert item["optional"] is False and "command-line-flag" not in item
    else:
        assert item["optional"] is not action.required
    if isinstance(action, argparse._CountAction):
        # -v, -vv: the value is the flag itself, repeated
        short = next(o for o in action.option_strings if not o.startswith("--"))
        assert item["type"] == "String" and "command-line-flag" not in item
        for n, choice in enumerate(item["value-choices"], start=1):
            assert choice == short[0] + short[1] * n
            assert getattr(_parse([choice]), dest) == n
        return
    if action.option_strings:
        assert item["command-line-flag"] in action.option_strings
        assert item["command-line-flag"].startswith("--"), "use the long form"
    if isinstance(action, argparse._StoreTrueAction):
        assert item["type"] == "Flag"
        return
    assert item["type"] in ("String", "File", "Number")
    assert bool(item.get("list")) == (action.nargs == "+")
    if isinstance(action.choices, range):
        assert item["type"] == "Number" and item.get("integer") is True
        assert (item["minimum"], item["maximum"]) == (action.choices[0], action.choices[-1])
    elif action.choices is not None:
        assert item["value-choices"] == list(action.choices)
    else:
        assert "value-choices" not in item
    if item["type"] == "Number":
        assert item.get("integer") is True  # every number bidsport takes is whole
        if "minimum" in item and action.option_strings:  # the parser rejects one less
            with pytest.raises(SystemExit):
                _parse([item["command-line-flag"], str(item["minimum"] - 1)])


@pytest.mark.parametrize("dest", sorted(ACTIONS))
def test_default_means_the_same_as_the_parser_default(dest: str, inputs: dict[str, Any]) -> None:
    action, item = ACTIONS[dest], inputs[dest]
    has_default = action.default not in (None, False) and not isinstance(
        action, argparse._CountAction
    )
    if dest in MACHINE_DEFAULTS or not has_default:
        assert "default-value" not in item, f"{dest}: the parser has no constant default"
        return
    assert "default-value" in item, f"{dest}: the parser defaults to {action.default!r}"
    parsed = _parse([item["command-line-flag"], str(item["default-value"])])
    assert getattr(parsed, dest) == action.default


def test_groups_follow_the_parser(descriptor: dict[str, Any]) -> None:
    parser = build_parser()
    groups = {tuple(g["members"]): g for g in descriptor["groups"]}
    for group in parser._action_groups:
        members = tuple(a.dest for a in group._group_actions if a.dest in ACTIONS)
        if group.title in ("positional arguments", "options") or not members:
            continue
        assert members in groups, f"no descriptor group for {group.title!r}: {members}"
    for mutex in parser._mutually_exclusive_groups:
        members = tuple(a.dest for a in mutex._group_actions)
        assert groups[members].get("mutually-exclusive") is True
    exclusive = [g for g in descriptor["groups"] if g.get("mutually-exclusive")]
    assert len(exclusive) == len(parser._mutually_exclusive_groups)


def _value_for(item: dict[str, Any], files_dir: Path) -> Any:
    """A non-default value of the input's type, as an invocation holds it."""
    if item["type"] == "Flag":
        return True
    if "value-choices" in item:
        choices = item["value-choices"]
        return choices[-2:] if item.get("list") else choices[-1]
    if item["type"] == "Number":
        return item.get("maximum", item.get("minimum", 0) + 2)
    if item["type"] == "File":
        path = files_dir / f"{item['id']}.txt"
        path.write_text("", encoding="utf-8")
        return str(path)
    value = {"max_extract_size": "3G", "pattern": "(?P<packet_name>.+)"}.get(item["id"], "X7")
    return [value, "Y8"] if item.get("list") else value


@pytest.mark.parametrize("left_out", ["quiet", "verbose"])  # mutually exclusive
def test_bosh_command_line_parses_back_to_every_value(
    left_out: str, inputs: dict[str, Any], tmp_path: Path
) -> None:
    invocation = {
        dest: _value_for(item, tmp_path) for dest, item in inputs.items() if dest != left_out
    }
    invocation_file = tmp_path / "invocation.json"
    invocation_file.write_text(json.dumps(invocation), encoding="utf-8")
    result = _bosh("exec", "simulate", str(DESCRIPTOR), "-i", str(invocation_file))
    assert result.returncode == 0, result.stdout + result.stderr
    command = result.stdout.strip().splitlines()[-1]
    words = shlex.split(command)
    assert words[0] == "bidsport"
    parsed = build_parser().parse_args(words[1:])
    for dest, value in invocation.items():
        got = getattr(parsed, dest)
        if inputs[dest]["type"] == "Flag":
            assert got is True, dest
        elif dest == "verbose":
            assert got == len(value) - 1
        elif dest == "max_extract_size":
            assert got == 3 << 30
        elif isinstance(value, list):
            assert [str(v) for v in got] == value, dest
        else:
            assert str(got) == str(value), dest


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=[p.stem for p in INVOCATIONS])
def test_example_invocations_are_valid_and_parse(invocation: Path) -> None:
    assert _bosh("invocation", str(DESCRIPTOR), "-i", str(invocation)).returncode == 0
    result = _bosh("exec", "simulate", str(DESCRIPTOR), "-i", str(invocation))
    assert result.returncode == 0, result.stdout + result.stderr
    words = shlex.split(result.stdout.strip().splitlines()[-1])
    parsed = build_parser().parse_args(words[1:])
    assert parsed.analysis_level == json.loads(invocation.read_text())["analysis_level"]


def test_invocations_cover_both_levels() -> None:
    levels = {json.loads(p.read_text())["analysis_level"] for p in INVOCATIONS}
    assert levels == {"participant", "group"}


def test_metadata_versions_and_exit_codes(descriptor: dict[str, Any]) -> None:
    assert descriptor["schema-version"] == "0.5"
    assert descriptor["tool-version"] == __version__
    assert descriptor["container-image"] == {"type": "docker", "image": IMAGE}
    assert descriptor["custom"]["BIDSApplicationVersion"]
    codes = {e["code"] for e in descriptor["error-codes"]}
    assert codes == {int(c) for c in ExitCode if c != ExitCode.SUCCESS}
    outputs = {o["id"]: o for o in descriptor["output-files"]}
    assert outputs["bids_dataset"]["path-template"] == "[OUTPUT_DIR]"
    assert not outputs["bids_dataset"].get("optional")


def _dockerfile_arg(name: str) -> str:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(rf"^ARG {name}=(\S+)$", text, re.MULTILINE)
    assert match, f"Dockerfile: no 'ARG {name}=' default"
    return match.group(1)


def test_dockerfile_and_singularity_agree_with_the_package() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("dcm2niix==")]
    assert pins == [f"dcm2niix=={_dockerfile_arg('DCM2NIIX_VERSION')}"]
    assert _dockerfile_arg("VERSION") == __version__
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r'^ENTRYPOINT \["bidsport"\]$', dockerfile, re.MULTILINE)
    definition = (REPO / "Singularity.def").read_text(encoding="utf-8")
    assert re.search(rf"^From: {re.escape(IMAGE)}$", definition, re.MULTILINE)
