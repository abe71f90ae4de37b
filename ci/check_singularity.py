"""Check the structure of Singularity.def (Apptainer cannot be installed on CI machines).

``python ci/check_singularity.py [Singularity.def]`` exits 0 when the file

* has only known header keys (``Bootstrap``, ``From``, ...), each once, ``Bootstrap`` first,
  and the ``From`` image is ``bidsport/bidsport:<version of the package>``;
* has only known section names (spython silently skips unknown ones such as ``%runscipt``),
  each once, and the sections bidsport needs: ``%runscript`` (exactly
  ``exec bidsport "$@"``), ``%test`` and ``%help``;
* is parsed by spython to the same image, runscript and test.

Otherwise it prints one line per problem and exits 1. Needs spython (PyPI).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_REPOSITORY = "bidsport/bidsport"
RUNSCRIPT = 'exec bidsport "$@"'
REQUIRED_SECTIONS = ("runscript", "test", "help")

#: Header keywords of the agents that take a Docker image (Apptainer user guide,
#: "Definition Files": Bootstrap, From, Stage, Registry, Namespace, IncludeCmd).
HEADER_KEYS = {
    "docker": {"bootstrap", "from", "stage", "registry", "namespace", "includecmd"},
    "docker-daemon": {"bootstrap", "from", "stage", "includecmd"},
    "docker-archive": {"bootstrap", "from", "stage", "includecmd"},
}
SECTIONS = {
    "arguments",
    "setup",
    "files",
    "environment",
    "post",
    "runscript",
    "startscript",
    "test",
    "labels",
    "help",
}
#: SCIF app sections take an app name: %apprun NAME.
APP_SECTIONS = {
    "appenv",
    "appfiles",
    "apphelp",
    "appinstall",
    "applabels",
    "apprun",
    "appsetup",
    "appstart",
    "apptest",
}

_SECTION = re.compile(r"^%(\S+)(.*)$")
_HEADER = re.compile(r"^([A-Za-z]+)\s*:\s*(.*?)\s*$")


def package_version() -> str:
    init = (REPO / "src" / "bidsport" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', init, re.MULTILINE)
    if not match:
        raise SystemExit("no __version__ in src/bidsport/__init__.py")
    return match.group(1)


def read_definition(
    text: str,
) -> tuple[list[tuple[int, str, str]], dict[str, list[str]], list[str]]:
    """Header entries (line, key, value), section bodies by name, and problems."""
    header: list[tuple[int, str, str]] = []
    sections: dict[str, list[str]] = {}
    problems: list[str] = []
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        match = _SECTION.match(line)
        if match:
            name, rest = match.group(1), match.group(2).strip()
            key = name.lower()
            if key in APP_SECTIONS:
                if not rest:
                    problems.append(f"line {number}: %{name} needs an app name")
                key = f"{key} {rest}"
            elif key not in SECTIONS:
                problems.append(f"line {number}: unknown section %{name}")
            elif rest and not rest.startswith("#"):
                problems.append(f"line {number}: unexpected text after %{name}: {rest!r}")
            if key in sections:
                problems.append(f"line {number}: section %{name} appears twice")
            current = sections.setdefault(key, [])
            continue
        if current is not None:
            current.append(line)
        elif stripped and not stripped.startswith("#"):
            header_match = _HEADER.match(stripped)
            if header_match is None:
                problems.append(f"line {number}: not a 'Key: value' header line: {stripped!r}")
            else:
                header.append((number, header_match.group(1), header_match.group(2)))
    return header, sections, problems


def check_header(header: list[tuple[int, str, str]], version: str) -> list[str]:
    problems: list[str] = []
    if not header or header[0][1].lower() != "bootstrap":
        return ["the header must start with 'Bootstrap:'"]
    agent = header[0][2].lower()
    allowed = HEADER_KEYS.get(agent)
    if allowed is None:
        return [f"Bootstrap agent {header[0][2]!r}: expected one of {sorted(HEADER_KEYS)}"]
    seen: set[str] = set()
    for number, key, value in header:
        if key.lower() not in allowed:
            problems.append(f"line {number}: header key {key!r} is not valid for {agent}")
        if key.lower() in seen:
            problems.append(f"line {number}: header key {key!r} appears twice")
        seen.add(key.lower())
        if not value:
            problems.append(f"line {number}: header key {key!r} has no value")
    values = {key.lower(): value for _, key, value in header}
    if "from" not in values:
        problems.append("the header has no 'From:'")
    elif agent == "docker" and values["from"] != f"{IMAGE_REPOSITORY}:{version}":
        problems.append(
            f"From: {values['from']} is not {IMAGE_REPOSITORY}:{version} "
            "(the version of src/bidsport/__init__.py)"
        )
    return problems


def body(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def check_sections(sections: dict[str, list[str]]) -> list[str]:
    problems = [f"section %{name} is missing" for name in REQUIRED_SECTIONS if name not in sections]
    problems += [f"section %{name} is empty" for name in sections if not body(sections[name])]
    if "runscript" in sections and body(sections["runscript"]) != [RUNSCRIPT]:
        problems.append(f"%runscript must be exactly: {RUNSCRIPT}")
    return problems


def check_spython(path: Path, header: list[tuple[int, str, str]]) -> list[str]:
    from spython.main.parse.parsers import SingularityParser

    try:
        recipe = SingularityParser(str(path)).recipe
    except Exception as exc:  # spython raises bare exceptions (e.g. NotImplementedError)
        return [f"spython cannot parse {path}: {exc!r}"]
    layer = next(iter(recipe.values()))  # spython keeps one recipe per stage
    problems = []
    expected_from = {key.lower(): value for _, key, value in header}.get("from", "")
    if layer.fromHeader != expected_from.lower():
        problems.append(f"spython reads the image as {layer.fromHeader!r}, not {expected_from!r}")
    if layer.cmd != RUNSCRIPT:
        problems.append(f"spython reads the runscript as {layer.cmd!r}")
    if not layer.test:
        problems.append("spython finds no %test")
    return problems


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else REPO / "Singularity.def"
    header, sections, problems = read_definition(path.read_text(encoding="utf-8"))
    problems += check_header(header, package_version())
    problems += check_sections(sections)
    problems += check_spython(path, header)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(
        f"{path}: OK (header {', '.join(k for _, k, _ in header)}; sections "
        f"{', '.join('%' + name for name in sections)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
