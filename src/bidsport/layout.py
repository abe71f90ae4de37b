"""Where everything lives in the output dataset (and the work dir).

One place that knows the layout, so that no stage builds paths by hand::

    OUTPUT_DIR/
      dataset_description.json participants.tsv README .bidsignore
      sub-<s>/[ses-<t>/]<datatype>/sub-<s>[_ses-<t>]_..._<suffix>.nii.gz
      sub-<s>/[ses-<t>/]sub-<s>[_ses-<t>]_scans.tsv
      sourcedata/
        status.tsv                       curation status (one row per subject/session)
        backups/status-<time>.tsv        previous versions of status.tsv
        raw/sub-<s>/[ses-<t>/]<packet>/  imported packet contents (not with --anonymize)
        dicom/sub-<s>/[ses-<t>/]         flat folder: relative symlinks (or copies)
        bidsport/sub-<s>/[ses-<t>/]      files.tsv, series.tsv, index cache, lock
      derivatives/bidsport/
        logs/                            one log per run and participant
        report.html                      group report

``sourcedata/`` and ``derivatives/`` are ignored by the BIDS validator.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

#: The endings of the NIfTI images bidsport writes, longest first.
NIFTI_ENDINGS = (".nii.gz", ".nii")


def nifti_stem(name: str) -> str | None:
    """``name`` without its NIfTI ending; None when it is no NIfTI image name.

    >>> nifti_stem("sub-01_T1w.nii.gz"), nifti_stem("sub-01_T1w.json"), nifti_stem(".nii")
    ('sub-01_T1w', None, None)
    """
    stem = next((name[: -len(x)] for x in NIFTI_ENDINGS if name.endswith(x)), None)
    return stem or None


def sub_ses_dir(subject: str, session: str | None) -> Path:
    """``sub-<s>[/ses-<t>]`` as a relative path."""
    base = Path(f"sub-{subject}")
    return base / f"ses-{session}" if session else base


def sub_ses_prefix(subject: str, session: str | None) -> str:
    """``sub-<s>[_ses-<t>]``, the start of every BIDS file name of a session."""
    return f"sub-{subject}_ses-{session}" if session else f"sub-{subject}"


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of one output dataset."""

    root: Path

    @property
    def sourcedata_dir(self) -> Path:
        return self.root / "sourcedata"

    @property
    def status_file(self) -> Path:
        return self.sourcedata_dir / "status.tsv"

    @property
    def status_backup_dir(self) -> Path:
        return self.sourcedata_dir / "backups"

    @property
    def status_rows_dir(self) -> Path:
        """Per-session status records written by participant-level runs."""
        return self.sourcedata_dir / "bidsport" / "status"

    @property
    def anonymization_file(self) -> Path:
        """The record that the dataset is anonymized, and with which key (its fingerprint:
        :func:`bidsport.privacy.claim_dataset`)."""
        return self.sourcedata_dir / "bidsport" / "anonymization.json"

    @property
    def dataset_description_file(self) -> Path:
        return self.root / "dataset_description.json"

    @property
    def participants_file(self) -> Path:
        return self.root / "participants.tsv"

    @property
    def derivatives_dir(self) -> Path:
        return self.root / "derivatives" / "bidsport"

    @property
    def logs_dir(self) -> Path:
        return self.derivatives_dir / "logs"

    @property
    def report_file(self) -> Path:
        return self.derivatives_dir / "report.html"

    @property
    def work_dir(self) -> Path:
        """Default scratch space of participant runs (removed when they end)."""
        return self.sourcedata_dir / "bidsport" / "work"

    @property
    def status_lock_file(self) -> Path:
        """Held while ``status.tsv`` is replaced."""
        return self.status_file.with_name(f".{self.status_file.name}.lock")

    @property
    def participants_json_file(self) -> Path:
        return self.root / "participants.json"

    @property
    def readme_file(self) -> Path:
        return self.root / "README"

    def raw_dir(self, subject: str, session: str | None) -> Path:
        return self.sourcedata_dir / "raw" / sub_ses_dir(subject, session)

    def dicom_dir(self, subject: str, session: str | None) -> Path:
        return self.sourcedata_dir / "dicom" / sub_ses_dir(subject, session)

    def tables_dir(self, subject: str, session: str | None) -> Path:
        return self.sourcedata_dir / "bidsport" / sub_ses_dir(subject, session)

    def files_table(self, subject: str, session: str | None) -> Path:
        return self.tables_dir(subject, session) / "files.tsv"

    def series_table(self, subject: str, session: str | None) -> Path:
        return self.tables_dir(subject, session) / "series.tsv"

    def index_cache(self, subject: str, session: str | None) -> Path:
        return self.tables_dir(subject, session) / "index-cache.tsv"

    def status_row_file(self, subject: str, session: str | None) -> Path:
        return self.status_rows_dir / f"{sub_ses_prefix(subject, session)}.json"

    @property
    def locks_dir(self) -> Path:
        """The folder of the sessions' locks (:meth:`lock_file`)."""
        return self.sourcedata_dir / "bidsport" / "locks"

    def lock_file(self, subject: str, session: str | None) -> Path:
        """The session's lock: named by a hash, so that a label refused for carrying a
        patient's identity (with --anonymize) is never written into the dataset."""
        digest = hashlib.sha256(sub_ses_prefix(subject, session).encode()).hexdigest()[:20]
        return self.locks_dir / f"{digest}.lock"

    def session_dir(self, subject: str, session: str | None) -> Path:
        """The BIDS folder of a subject/session (``sub-<s>[/ses-<t>]``)."""
        return self.root / sub_ses_dir(subject, session)

    def scans_file(self, subject: str, session: str | None) -> Path:
        return self.session_dir(subject, session) / (
            f"{sub_ses_prefix(subject, session)}_scans.tsv"
        )
