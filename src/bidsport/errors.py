"""One error base for bidsport, carrying an exit code and a hint.

Library code raises these; only the CLI turns them into exit codes and messages.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in the README and the man page."""

    SUCCESS = 0
    #: An unexpected internal error (a bug): please report it.
    INTERNAL = 1
    #: Bad usage: wrong options, unreadable configuration, missing input folder.
    USAGE = 2
    #: Some packets, sessions or series failed; the rest were done.
    PARTIAL = 3
    #: Nothing could be done (every selected packet or session failed).
    FAILED = 4
    #: The PHI audit found identifiers in the output dataset.
    PHI_FOUND = 5
    #: The BIDS validator reported errors (group level).
    INVALID = 6


class BidsportError(Exception):
    """Base of every error bidsport raises on purpose.

    ``hint`` says what the user can do about it.
    """

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(BidsportError):
    """The command line or a configuration file is wrong."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A rules, mapping, manifest or policy file is invalid."""


class LabelError(BidsportError):
    """A subject/session label cannot be derived, or collides with another."""


class ArchiveError(BidsportError):
    """A packet archive is corrupt, truncated, encrypted or hostile."""


class DicomReadError(BidsportError):
    """A file could not be read as DICOM."""


class NotDicomError(DicomReadError):
    """A file is empty, or holds no DICOM data at all (no other reader should try it)."""


class DicomTooLargeError(DicomReadError):
    """A file was not read because reading it would take too much memory (a deflated
    data set inflating past the limit): no other reader should try it either."""


class ConversionError(BidsportError):
    """dcm2niix (or another converter) failed on a series."""


class OutputError(BidsportError):
    """The output dataset cannot be written (read-only, disk full, locked)."""


class LockedError(OutputError):
    """Another bidsport run holds the lock of this participant/session."""


class ExternalToolError(BidsportError):
    """An external program is missing or failed."""


class AnonymizationError(BidsportError):
    """De-identification failed or would leak identifiers."""


class PhiFoundError(BidsportError):
    """The PHI audit found identifiers in the output dataset."""

    exit_code = ExitCode.PHI_FOUND


class ReferenceError_(BidsportError):
    """A NIfTI does not match the reference DICOM series (todicom)."""
