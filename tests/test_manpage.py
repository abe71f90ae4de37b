"""The man page: generated from the parser by argparse-manpage, shipped in the wheel.

The page is rendered through argparse-manpage's API with the specification in
``[tool.build_manpages]`` of pyproject.toml, and linted with ``groff -ww`` (every warning).
One test builds the wheel (``pip wheel --no-deps``, ~5 s) from a copy of the sources and
checks that it carries ``share/man/man1/bidsport.1`` dated by SOURCE_DATE_EPOCH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from bidsport import __version__
from bidsport.cli.parser import build_parser

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
EPOCH = 1_700_000_000  # 2023-11-14
EPOCH_DATE = datetime.fromtimestamp(EPOCH, timezone.utc).strftime("%Y-%m-%d")
EPOCH_TH = EPOCH_DATE.replace("-", r"\-")  # as groff source: 2023\-11\-14
GROFF = shutil.which("groff")
NO_MANPAGE = "argparse-manpage is not installed (pip install argparse-manpage)"
needs_groff = pytest.mark.skipif(
    GROFF is None, reason="groff not installed (Debian: groff-base; ci/system.sh installs it)"
)


def _manpage_spec() -> tuple[str, dict[str, Any]]:
    """The one page configured in pyproject.toml: (output file, argparse-manpage data)."""
    pytest.importorskip("build_manpages", reason=NO_MANPAGE)
    from build_manpages.build_manpages import parse_manpages_spec

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    spec = "\n".join(pyproject["tool"]["build_manpages"]["manpages"])
    pages: dict[str, dict[str, Any]] = parse_manpages_spec(spec)
    assert len(pages) == 1
    return next(iter(pages.items()))


def _render(monkeypatch: pytest.MonkeyPatch) -> str:
    from argparse_manpage.manpage import Manpage
    from argparse_manpage.tooling import get_parser

    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    _, data = _manpage_spec()
    parser = get_parser(
        data["import_type"], data["import_from"], data["objname"], data["objtype"], data["prog"]
    )
    page = dict(data, version=__version__, project_name="bidsport")
    return str(Manpage(parser, format=data.get("format", "pretty"), _data=page))


def _groff_lint(page_file: Path) -> None:
    assert GROFF is not None
    result = subprocess.run(
        [GROFF, "-man", "-Tutf8", "-ww", "-z", str(page_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_spec_builds_the_page_from_build_parser() -> None:
    out, data = _manpage_spec()
    assert out == "man/bidsport.1"
    assert (data["import_from"], data["objname"], data["prog"]) == (
        "bidsport.cli.parser",
        "build_parser",
        "bidsport",
    )
    assert data["manual_section"] == "1"


@needs_groff
def test_page_renders_without_groff_warnings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    page_file = tmp_path / "bidsport.1"
    page_file.write_text(_render(monkeypatch), encoding="utf-8")
    _groff_lint(page_file)


def test_page_has_name_date_version_and_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _render(monkeypatch)
    title = text.splitlines()[0]
    assert title.startswith('.TH BIDSPORT "1"')
    assert f'"{EPOCH_TH}"' in title and f"bidsport {__version__}" in title
    assert r"bidsport \- " in text.split(".SH SYNOPSIS")[0]  # NAME: "name \- summary"
    plain = text.replace(r"\-", "-")
    for action in build_parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        for option in action.option_strings:
            assert f"\\fB{option}\\fR" in plain, option
        if action.help:
            first_words = " ".join(action.help.split()[:3]).replace(r"\-", "-")
            assert first_words in plain, action.dest
    assert "exit codes:" in plain  # the epilog


@needs_groff
def test_wheel_ships_the_page(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(
        REPO / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    dist = tmp_path / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet"]
    result = subprocess.run(
        [*pip_wheel, "--disable-pip-version-check", "--wheel-dir", str(dist), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = dist.glob(f"bidsport-{__version__}-*.whl")
    member = f"bidsport-{__version__}.data/data/share/man/man1/bidsport.1"
    with zipfile.ZipFile(wheel) as zf:
        assert member in zf.namelist()
        page = zf.read(member).decode("utf-8")
    assert page.startswith(f'.TH BIDSPORT "1" "{EPOCH_TH}"')
    assert f"bidsport {__version__}" in page.splitlines()[0]
    page_file = tmp_path / "bidsport.1"
    page_file.write_text(page, encoding="utf-8")
    _groff_lint(page_file)
