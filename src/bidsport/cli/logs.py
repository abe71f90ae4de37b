"""Logging of the command-line programs: messages on stderr, everything in a log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(verbose: int, quiet: bool, log_file: Path | None = None) -> None:
    """Configure the ``bidsport`` logger (replacing what an earlier call set up)."""
    root = logging.getLogger("bidsport")
    root.setLevel(logging.DEBUG)
    for handler in root.handlers:
        handler.close()
    root.handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(
        logging.ERROR
        if quiet
        else logging.DEBUG
        if verbose > 1
        else logging.INFO
        if verbose
        else logging.WARNING
    )
    console.setFormatter(logging.Formatter("bidsport: %(levelname)s: %(message)s"))
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
