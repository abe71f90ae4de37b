"""The effective options of a run, as one frozen record built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bidsport.archive import ExtractLimits

if TYPE_CHECKING:
    from bidsport.rules import Rule


@dataclass(frozen=True)
class RunOptions:
    """Everything a participant- or group-level run needs to know (no argparse below here)."""

    # selection
    participant_labels: tuple[str, ...] = ()
    session_labels: tuple[str, ...] = ()
    # import
    pattern: str | None = None
    nameformat: str | None = None
    mapping: dict[str, tuple[str, str | None]] | None = None
    manifest: tuple[tuple[str, str | None], ...] = ()
    archive: str = "leave"
    limits: ExtractLimits = field(default_factory=ExtractLimits)
    # organize
    symlink: bool = True
    keep_derived: bool = False
    skip_dicom_check: bool = False
    # classify
    rules: tuple[Rule, ...] = ()
    # convert
    output_format: str = "nii.gz"
    layout: str = "bids"
    include_datatypes: frozenset[str] | None = None
    exclude_datatypes: frozenset[str] = frozenset()
    include_provenances: frozenset[str] | None = None
    exclude_provenances: frozenset[str] = frozenset()
    overwrite: str = "skip"
    compression_level: int = 2
    # anonymize
    anonymize: bool = False
    anonymize_key: Path | None = None
    anonymize_policy: Path | None = None
    keep_private_tags: bool = False
    allow_burned_in: bool = False
    # run
    work_dir: Path | None = None
    n_procs: int = 1
    dry_run: bool = False
    progress: bool = False
