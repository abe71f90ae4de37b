"""De-identification of DICOM files with dicognito, consistent per subject and project key.

Public API::

    policy = load_policy(path, keep_private=..., allow_burned_in=...)   # or default_policy()
    key = load_or_create_key(key_file, forbidden_root=output_dir)
    anonymizer = Anonymizer(key, policy)
    outcome = anonymizer.anonymize_file(src, dst, subject)    # outcome.excluded: reason
    describe_actions(policy)                                    # lines for --dry-run

What is done (``describe_actions`` lists it per element): dicognito's handling (new UIDs,
random person names and IDs, shifted dates, a few patient attributes removed), with
bidsport's policy in front of it (:mod:`bidsport.anonymize.policy`): removed residence,
occupation, birth date, free-text comments and staff names; descriptions scrubbed of the
subject's identifiers; site and scanner identifiers replaced by pseudonyms of the project
key; AE titles and all private elements removed (``--keep-private-tags``: except the ones
dcm2niix needs, listed in :data:`DCM2NIIX_PRIVATE`, whose UIDs and identifiers are
overwritten); and behind it, every other text element (LO, SH, ST, LT, UT, UC, PN, in
sequences too) scrubbed of the subject's identifiers unless the policy keeps it
(:class:`~bidsport.anonymize.handlers.TextScrubber`).

Consistency: the seed of dicognito, the PatientID pseudonym and the date shift are
HMAC-SHA256 functions of (project key, subject label) (:mod:`bidsport.anonymize.keys`);
UIDs and site pseudonyms of the key alone. Every session, packet and run of a subject
therefore gets the same pseudonyms and the same date shift (intervals between sessions are
kept), and a UID maps to the same new UID wherever it appears.

Dates are shifted by whole days to 1925 or earlier (BIDS); use
:meth:`Anonymizer.date_shift_days` and :func:`shift_iso_datetime` for ``acq_time`` in
_scans.tsv, and :meth:`Anonymizer.new_uid` for UIDs written into tables.

Performance (1,714 real GE/Siemens/Philips/UIH files of the dcm_qa collection,
``bench/bench_anonymize.py``): about 300-390 files per CPU-second, eight to ten times
``python -m dicognito`` on the same files (37 per CPU-second); files are anonymized on
their raw element stream, see :mod:`bidsport.anonymize.stream` and
:mod:`bidsport.anonymize.engine`.
"""

from bidsport.anonymize.engine import (
    AnonymizeOutcome,
    Anonymizer,
    describe_actions,
    exclusion_reason,
)
from bidsport.anonymize.keys import (
    date_shift_days,
    key_fingerprint,
    load_or_create_key,
    normalize_subject,
    patient_pseudonym,
    shift_iso_datetime,
)
from bidsport.anonymize.policy import (
    ACTIONS,
    DCM2NIIX_PRIVATE,
    AnonymizePolicy,
    PrivateKeep,
    default_policy,
    load_policy,
)
from bidsport.phi import subject_label_identity_check

__all__ = [
    "ACTIONS",
    "DCM2NIIX_PRIVATE",
    "AnonymizeOutcome",
    "AnonymizePolicy",
    "Anonymizer",
    "PrivateKeep",
    "date_shift_days",
    "default_policy",
    "describe_actions",
    "exclusion_reason",
    "key_fingerprint",
    "load_or_create_key",
    "load_policy",
    "normalize_subject",
    "patient_pseudonym",
    "shift_iso_datetime",
    "subject_label_identity_check",
]
