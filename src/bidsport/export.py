"""Export: a converted series' outputs become BIDS files, with complete sidecars.

dcm2niix's outputs of one series are renamed to their BIDS names and moved into the
dataset one file at a time (atomic renames). Sidecars are scrubbed of identifiers and
completed with what BIDS needs and dcm2niix cannot know from one series alone: TaskName,
IntendedFor, EchoTime1/EchoTime2 of phase-difference maps, and the source series.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import struct
import types
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidsport import fileops
from bidsport.convert import SeriesConversion, load_sidecar
from bidsport.layout import NIFTI_ENDINGS, DatasetLayout
from bidsport.naming import bids_basename, map_outputs
from bidsport.options import RunOptions
from bidsport.phi import Identifiers, ScrubbedSidecar, scrub_sidecar_changes
from bidsport.records import (
    CORRECTED_DATATYPES,
    FIELD_SUFFIXES,
    Classification,
    ConvertedImage,
    PlannedSeries,
    Problem,
    Series,
)
from bidsport.runner import in_worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deidentify:
    """How a session's outputs are de-identified (with --anonymize).

    dcm2niix reads the original files (it needs their private tags), so what it writes is
    de-identified here: identifiers scrubbed from every sidecar value (and ``text`` from
    anything else written), dates dropped from sidecars, ``acq_time`` shifted like the
    anonymized DICOMs, and UIDs replaced by those of the anonymized copies.
    """

    identifiers: Identifiers
    date_shift_days: int
    series_uid: Callable[[str], str]  #: original UID → UID in the anonymized copies
    text: Callable[[str], str]  #: removes identifiers and original UIDs from free text


def acq_datetime(date: str | None, time: str | None) -> str | None:
    """DICOM date + time → ISO 8601 (``YYYY-MM-DDThh:mm:ss``), or None."""
    if not date or len(date) < 8 or not time or len(time) < 6:
        return None
    return f"{date[0:4]}-{date[4:6]}-{date[6:8]}T{time[0:2]}:{time[2:4]}:{time[4:6]}"


def finalize_sidecar(
    sidecar: dict[str, object],
    *,
    cls: Classification,
    series: Series,
    sources: Sequence[str],
    deidentify: Deidentify | None = None,
    identifiers: Identifiers | None = None,
) -> ScrubbedSidecar:
    """The BIDS sidecar of an output: scrubbed of identifiers, completed for BIDS (and the
    keys whose values held identifiers, see :func:`bidsport.phi.scrub_sidecar_changes`).

    Always: the keys a rule sets (``cls.sidecar``) replace dcm2niix's, the identifying keys
    dcm2niix keeps are dropped and the session's ``identifiers`` scrubbed from every value.
    The source SeriesInstanceUID (Siemens UIDs embed the scanner serial and the date) is
    only recorded as the UID of the anonymized copies; ``BidsportSourceDicom`` is what
    links an image to its DICOMs.
    """
    scrubbed = scrub_sidecar_changes(
        {**sidecar, **cls.sidecar},
        anonymize=deidentify is not None,
        identifiers=deidentify.identifiers if deidentify else identifiers,
    )
    data = scrubbed.data
    data.pop("BidsGuess", None)  # dcm2niix's guess: not ours, and sometimes wrong
    if cls.datatype == "func" and cls.entities.get("task"):
        data["TaskName"] = cls.entities["task"]
    uid = series.header.series_uid
    if deidentify is not None and uid:
        data["SeriesInstanceUID"] = deidentify.series_uid(uid)
    data["BidsportSourceDicom"] = list(sources)
    return scrubbed


#: sidecar keys BIDS requires of an image (by suffix) that dcm2niix cannot always write
REQUIRED_SIDECAR_KEYS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        # Philips does not record the phase-encoding polarity, and some exports lack the
        # readout's timing: dcm2niix then writes neither
        "epi": ("PhaseEncodingDirection", "TotalReadoutTime"),
        # the sequence's timing, which no DICOM tag holds
        "MP2RAGE": ("RepetitionTimeExcitation", "RepetitionTimePreparation", "NumberShots"),
        "m0scan": ("RepetitionTimePreparation",),
    }
)


def missing_sidecar_keys(suffix: str, sidecar: Mapping[str, object]) -> list[str]:
    """The keys BIDS requires of a ``suffix`` image that ``sidecar`` lacks.

    >>> missing_sidecar_keys("epi", {"TotalReadoutTime": 0.05})
    ['PhaseEncodingDirection']
    """
    return [key for key in REQUIRED_SIDECAR_KEYS.get(suffix, ()) if key not in sidecar]


def rule_sidecar_notes(written: Mapping[str, object], cls: Classification) -> list[str]:
    """What the sidecar keys of ``cls``'s rule change of what dcm2niix ``written``, and a
    PhaseEncodingDirection on another axis than dcm2niix found (a rule may be wrong).
    dcm2niix's values are not said: ``written`` is not scrubbed of identifiers yet.

    >>> cls = Classification("fmap", "epi", rule="pa", sidecar={"PhaseEncodingDirection": "i"})
    >>> written = {"PhaseEncodingDirection": "j", "PhaseEncodingAxis": "j"}
    >>> for note in rule_sidecar_notes(written, cls):
    ...     print(note)
    rule 'pa' replaces dcm2niix's PhaseEncodingDirection by "i"
    rule 'pa' sets PhaseEncodingDirection i, but dcm2niix found the phase encoded along j
    >>> rule_sidecar_notes({"PhaseEncodingAxis": "i"}, cls)
    []
    """
    notes = [
        f"rule {cls.rule!r} replaces dcm2niix's {key} by {json.dumps(value)}"
        for key, value in cls.sidecar.items()
        if key in written and written[key] != value
    ]
    direction, axis = cls.sidecar.get("PhaseEncodingDirection"), written.get("PhaseEncodingAxis")
    if isinstance(direction, str) and isinstance(axis, str) and direction.rstrip("-") != axis:
        notes.append(
            f"rule {cls.rule!r} sets PhaseEncodingDirection {direction}, but dcm2niix found "
            f"the phase encoded along {axis}"
        )
    return notes


def _missing_keys_note(sidecar: Path, missing: Sequence[str], suffix: str) -> str:
    them = "them" if len(missing) > 1 else "it"
    why = (
        " (Philips, for one, does not record the phase-encoding polarity)"
        if "PhaseEncodingDirection" in missing
        else ""
    )
    return (
        f"{sidecar.name} has no {' or '.join(missing)}: BIDS requires {them} of {suffix} "
        f"images, and the headers do not give {them}{why}; set {them} with a --rules file "
        "(set.sidecar), or the validator reports an error"
    )


def bids_dir(
    layout: DatasetLayout, subject: str, session: str | None, datatype: str, opts: RunOptions
) -> Path:
    base = layout.session_dir(subject, session)
    return base / datatype if opts.layout == "bids" else base


#: suffixes BIDS requires to be 4D images
FOUR_D_SUFFIXES = frozenset({"bold", "cbv", "phase", "asl"})


_NIFTI1_SIZE, _NIFTI2_SIZE = 348, 540  #: sizeof_hdr of NIfTI-1 and NIfTI-2 headers


def nifti_dims(head: bytes) -> tuple[int, ...] | None:
    """The dimensions in the first bytes of a NIfTI-1 or NIfTI-2 header (either byte
    order), pure; None when ``head`` is not the start of one.

    >>> nifti_dims(struct.pack("<i36x8h", 348, 3, 64, 64, 30, 1, 1, 1, 1))
    (64, 64, 30)
    >>> nifti_dims(struct.pack(">i12x8q", 540, 4, 64, 64, 30, 5, 1, 1, 1))
    (64, 64, 30, 5)
    >>> nifti_dims(b"not a NIfTI header") is None
    True
    """
    for order in "<>":
        if len(head) < 4:
            return None
        (size,) = struct.unpack_from(f"{order}i", head)
        if size == _NIFTI1_SIZE and len(head) >= 56:
            dims: tuple[int, ...] = struct.unpack_from(f"{order}8h", head, 40)
        elif size == _NIFTI2_SIZE and len(head) >= 80:
            dims = struct.unpack_from(f"{order}8q", head, 16)
        else:
            continue
        return dims[1 : dims[0] + 1] if 1 <= dims[0] <= 7 else None
    return None


def may_be_3d(image: Path) -> bool:
    """False when ``image`` (``.nii`` or ``.nii.gz``) has a header saying it is not 3D.

    Reads the header's first bytes only, so that 4D images (nearly all) do not need
    nibabel; anything unreadable is left to :func:`make_4d` to judge.
    """
    opener = gzip.open if image.name.endswith(".gz") else open
    try:
        with opener(image, "rb") as fh:
            head = fh.read(_NIFTI2_SIZE)
    except (OSError, EOFError, zlib.error):
        return True
    dims = nifti_dims(head)
    return dims is None or len(dims) == 3


def make_4d(image: Path) -> bool:
    """Rewrite a 3D NIfTI in place (a private work file) as 4D with one volume.

    The image is read into memory first (``mmap=False``): nibabel maps an uncompressed
    ``.nii``, and writing the file while reading its voxels from the map ended the
    process with SIGBUS.
    """
    from bidsport.niftiio import nib

    img = nib.load(image, mmap=False)
    assert isinstance(img, nib.Nifti1Image)
    if len(img.shape) != 3:
        return False
    header = img.header.copy()
    data = img.dataobj.get_unscaled() if hasattr(img.dataobj, "get_unscaled") else img.dataobj
    new = nib.Nifti1Image(data[..., None], img.affine, header)
    new.header.set_data_shape((*img.shape, 1))
    nib.save(new, image)
    return True


def export_series(
    planned: PlannedSeries,
    run: str,
    conversion: SeriesConversion | None,
    *,
    layout: DatasetLayout,
    subject: str,
    session: str | None,
    opts: RunOptions,
    sources: Sequence[Path],
    deidentify: Deidentify | None = None,
    identifiers: Identifiers | None = None,
    executor: Executor | None = None,
) -> tuple[list[ConvertedImage], list[Problem]]:
    """Rename one series' outputs into the dataset (atomically, one file at a time).

    A single-volume image that BIDS wants 4D is rewritten by :func:`make_4d`, in
    ``executor`` when one is given (nibabel is then imported by its worker process).
    """
    cls = planned.cls
    assert cls.datatype is not None and cls.suffix is not None
    entities = dict(cls.entities)
    if run:
        entities["run"] = run
    target_dir = bids_dir(layout, subject, session, cls.datatype, opts)
    session_dir = layout.session_dir(subject, session)
    acq_time = acq_datetime(planned.series.acquisition_date, planned.series.acquisition_time)
    if deidentify is not None:  # shifted like the dates of the anonymized DICOMs (BIDS)
        # (imported here: the anonymize package loads pydicom and dicognito)
        from bidsport.anonymize.keys import shift_iso_datetime

        acq_time = shift_iso_datetime(acq_time, deidentify.date_shift_days)
    rel_sources = [fileops.relative_target(p, layout.root) for p in sources]
    images: list[ConvertedImage] = []
    problems: list[Problem] = []
    if conversion is None:  # --output-format dcm: organized copies, no conversion
        if cls.sidecar:
            problems.append(
                Problem(
                    planned.series.series_id,
                    f"rule {cls.rule!r} sets sidecar keys ({', '.join(cls.sidecar)}), but "
                    "--output-format dcm writes no sidecar: not applied",
                    "convert",
                )
            )
        name = bids_basename(subject, session, entities, cls.suffix)
        folder = target_dir / name
        for src in sources:
            fileops.copy_file(src, folder / src.name)
        images.append(
            ConvertedImage(planned.series.series_id, os.path.relpath(folder, session_dir), acq_time)
        )
        return images, problems
    problems += [
        Problem(planned.series.series_id, f"dcm2niix: {warning}", "convert")
        for warning in conversion.warnings
    ]
    postfixes = [o.postfix for o in conversion.outputs]
    for output, mapped in zip(
        conversion.outputs, map_outputs(cls.suffix, cls.datatype, postfixes), strict=True
    ):
        if mapped.dropped:
            problems.append(
                Problem(
                    planned.series.series_id,
                    f"dcm2niix output '{output.postfix}' not exported: {mapped.dropped}",
                    "convert",
                )
            )
            continue
        ents = {**entities, **mapped.entities}
        if "acq" in mapped.entities and entities.get("acq"):
            ents["acq"] = entities["acq"] + mapped.entities["acq"]
        name = bids_basename(subject, session, ents, mapped.suffix)
        ext = ".nii.gz" if output.image.name.endswith(".nii.gz") else ".nii"
        image_dst = target_dir / f"{name}{ext}"
        sidecar_rel = None
        if output.sidecar is not None:
            data = load_sidecar(output.sidecar)
            problems += [
                Problem(planned.series.series_id, f"{name}.json: {note}", "convert")
                for note in rule_sidecar_notes(data, cls)
            ]
            final = finalize_sidecar(
                data,
                cls=cls,
                series=planned.series,
                sources=rel_sources,
                deidentify=deidentify,
                identifiers=identifiers,
            )
            data = final.data
            if final.scrubbed_keys:
                problems.append(
                    Problem(
                        planned.series.series_id,
                        f"{name}.json: the source's identifiers removed from "
                        f"{', '.join(final.scrubbed_keys)} (replaced by X)",
                        "convert",
                    )
                )
            sidecar_dst = target_dir / f"{name}.json"
            fileops.write_json(sidecar_dst, data)
            sidecar_rel = os.path.relpath(sidecar_dst, session_dir)
            missing = missing_sidecar_keys(mapped.suffix, data)
            if missing:
                problems.append(
                    Problem(
                        planned.series.series_id,
                        _missing_keys_note(sidecar_dst, missing, mapped.suffix),
                        "convert",
                    )
                )
        for side, ext_side in ((output.bval, ".bval"), (output.bvec, ".bvec")):
            if side is not None and cls.datatype == "dwi":
                fileops.move_into_place(side, target_dir / f"{name}{ext_side}")
        if (
            mapped.suffix in FOUR_D_SUFFIXES
            and may_be_3d(output.image)
            and in_worker(executor, make_4d, output.image)()
        ):
            problems.append(
                Problem(
                    planned.series.series_id,
                    f"a single volume: {image_dst.name} written "
                    "as 4D with one volume (BIDS requires 4D)",
                    "convert",
                )
            )
        fileops.move_into_place(output.image, image_dst)
        images.append(
            ConvertedImage(
                planned.series.series_id,
                os.path.relpath(image_dst, session_dir),
                acq_time,
                sidecar_rel,
            )
        )
    return images, problems


#: ``acq`` labels of fieldmaps that say which datatype they were acquired for
_ACQ_CORRECTS = types.MappingProxyType(
    {
        "dwi": "dwi",
        "dti": "dwi",
        "diff": "dwi",
        "dmri": "dwi",
        "diffusion": "dwi",
        "func": "func",
        "bold": "func",
        "fmri": "func",
        "asl": "perf",
        "perf": "perf",
    }
)
#: phase-encoding axis of a ``dir`` label: the images of a pepolar set share one
_DIR_AXES = types.MappingProxyType(
    {"AP": "AP", "PA": "AP", "LR": "LR", "RL": "LR", "SI": "SI", "IS": "SI"}
)


@dataclass(frozen=True)
class Acquisition:
    """A converted series, as the linking of fieldmaps to images sees it."""

    order: tuple[Any, ...]  #: sort key in acquisition order (:func:`index.series_order`)
    datatype: str  #: "fmap", or the datatype of an image fieldmaps correct
    #: of a fieldmap: what the fieldmaps of one set share (kind, acq, ce, axis...)
    group: tuple[str, ...] = ()
    #: of a fieldmap: the image it is (suffix and entities but the run)
    image: str = ""
    corrects: frozenset[str] | None = None  #: of a fieldmap: datatypes it may correct


def fieldmap_sets(
    acquisitions: Sequence[Acquisition],
) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Group fieldmap acquisitions into sets and pick the set that corrects each image.

    A set is the fieldmaps of one group acquired one after the other, with no corrected
    image between them: an AP/PA pair of ``epi`` images minutes apart is one set, and so
    are the magnitude and phase series of one field measurement. A fieldmap acquired
    again (a second AP image) starts a new set, which keeps the latest image of each of
    the others (AP, PA, AP again: the PA and the second AP). Each image is corrected by
    the latest set acquired before it or, when none precedes it, by the first one after
    it: among the sets meant for its datatype (``corrects`` names it) when there are any,
    else among those meant for any.

    Returns the sets (indices into ``acquisitions``; a set may share fieldmaps with the
    one before) and (image index, set index) pairs.

    >>> def at(n, datatype, image="", group=("epi",), corrects=None):
    ...     return Acquisition((n,), datatype, group, image, corrects)
    >>> fieldmap_sets([at(1, "fmap", "AP"), at(2, "fmap", "PA"), at(3, "func"),
    ...                at(4, "fmap", "AP"), at(5, "fmap", "PA"), at(6, "fmap", "AP"),
    ...                at(7, "func"), at(8, "dwi")])
    ([[0, 1], [3, 4], [4, 5]], [(2, 0), (6, 2), (7, 2)])
    >>> fieldmap_sets([at(1, "fmap", "AP"), at(2, "fmap", "PA", corrects=frozenset({"dwi"})),
    ...                at(3, "func"), at(4, "dwi")])
    ([[0], [1]], [(2, 0), (3, 1)])
    """
    order = sorted(range(len(acquisitions)), key=lambda i: acquisitions[i].order)
    sets: list[list[int]] = []
    images: list[tuple[int, int]] = []  # (image, number of sets acquired before it)
    growing = False  # the last set may take more fieldmaps
    for i in order:
        acq = acquisitions[i]
        if acq.datatype != "fmap":
            growing = False
            images.append((i, len(sets)))
            continue
        first = acquisitions[sets[-1][0]] if sets else None
        if not (growing and first and (acq.group, acq.corrects) == (first.group, first.corrects)):
            sets.append([i])
            growing = True
        elif any(acquisitions[j].image == acq.image for j in sets[-1]):
            sets.append([j for j in sets[-1] if acquisitions[j].image != acq.image] + [i])
        else:
            sets[-1].append(i)
    chosen = []
    for image, n_before in images:
        datatype = acquisitions[image].datatype
        named = [k for k, m in enumerate(sets) if datatype in (acquisitions[m[0]].corrects or ())]
        anyone = [k for k, m in enumerate(sets) if acquisitions[m[0]].corrects is None]
        for allowed in (named, anyone):  # sets meant for this datatype first
            before = [k for k in allowed if k < n_before]
            after = [k for k in allowed if k >= n_before]
            if before or after:
                chosen.append((image, before[-1] if before else after[0]))
                break
    return sets, chosen


def fieldmap_acquisition(p: PlannedSeries) -> Acquisition | None:
    """How :func:`fieldmap_sets` sees a converted series; None when it takes no part.

    Fieldmaps: ``epi`` images (grouped by ``acq``, ``ce`` and the phase-encoding axis of
    ``dir``), the images of a field measurement (:data:`FIELD_SUFFIXES`, by ``acq``) and
    ``m0scan`` images (by ``acq``), in ``fmap/`` or in ``perf/``: an M0 scan is linked to
    the ASL images it calibrates, wherever it is (BIDS requires its ``IntendedFor``), and
    is not itself an image that B0 fieldmaps correct. What a fieldmap may correct is what
    a rule or the classifier says (``corrects``), else what its ``acq`` label names
    (``acq-dwi``: DWI only, see :data:`_ACQ_CORRECTS`), else perf images for an
    ``m0scan``, else any. B1 maps correct no func/dwi/perf image and take no part.
    """
    from bidsport.index import series_order

    cls = p.cls
    if not _is_fieldmap(cls):
        if cls.datatype in CORRECTED_DATATYPES:
            return Acquisition(series_order(p.series), str(cls.datatype))
        return None
    entities = {k: v for k, v in cls.entities.items() if k != "run"}
    acq, ce = entities.get("acq", ""), entities.get("ce", "")
    corrects = None if cls.corrects is None else frozenset(cls.corrects)
    if corrects is None and acq.lower() in _ACQ_CORRECTS:
        corrects = frozenset({_ACQ_CORRECTS[acq.lower()]})
    image = "_".join([str(cls.suffix), *(f"{k}-{v}" for k, v in sorted(entities.items()))])
    if cls.suffix == "epi":
        axis = _DIR_AXES.get(entities.get("dir", "").upper(), "")
        group: tuple[str, ...] = ("epi", acq, ce, axis)
        if "dir" not in entities:  # which image of the pair it is, its name does not say
            image += f"_{p.series.series_id}"
    elif cls.suffix in FIELD_SUFFIXES:
        group = ("field", acq)
    elif cls.suffix == "m0scan":
        group = ("m0scan", acq)
        corrects = frozenset({"perf"}) if corrects is None else corrects
    else:
        return None
    return Acquisition(series_order(p.series), "fmap", group, image, corrects)


@dataclass(frozen=True)
class FieldmapSet:
    """Fieldmap series acquired together, and the series of the images they correct."""

    fieldmaps: tuple[str, ...]  #: series ids, in acquisition order
    images: tuple[str, ...]  #: series ids of the images it corrects (maybe none)
    corrects: frozenset[str] | None  #: the datatypes it may correct (None: any)
    study: str = ""  #: the StudyInstanceUID of its series ("" when they have none)


def plan_fieldmap_sets(series: Sequence[PlannedSeries]) -> list[FieldmapSet]:
    """The fieldmap sets of a session's series (pure: see :func:`fieldmap_sets`).

    Fieldmaps correct images of their own study only (StudyInstanceUID): a packet may
    hold the exams of two scanners, or of two people. B0 fieldmaps (``epi`` and field
    measurements) and ``m0scan`` images are grouped apart: an ASL image gets its M0 scan
    and a B0 set.
    """
    studies: dict[str, list[PlannedSeries]] = {}
    for p in series:
        studies.setdefault(p.series.header.study_uid or "", []).append(p)
    return [s for study, members in studies.items() for s in _plan_study(members, study)]


def _plan_study(series: Sequence[PlannedSeries], study: str) -> list[FieldmapSet]:
    acquisitions = {
        p.series.series_id: acq for p in series if (acq := fieldmap_acquisition(p)) is not None
    }

    def b0_part(acq: Acquisition) -> bool:  # B0 fieldmaps, and every image
        return acq.group[:1] != ("m0scan",)

    def m0_part(acq: Acquisition) -> bool:  # M0 scans, and ASL images
        return acq.group[:1] == ("m0scan",) or acq.datatype == "perf"

    result = []
    for part in (b0_part, m0_part):
        ids = [sid for sid, acq in acquisitions.items() if part(acq)]
        sets, chosen = fieldmap_sets([acquisitions[sid] for sid in ids])
        for k, members in enumerate(sets):
            result.append(
                FieldmapSet(
                    tuple(ids[i] for i in members),
                    tuple(ids[image] for image, set_index in chosen if set_index == k),
                    acquisitions[ids[members[0]]].corrects,
                    study,
                )
            )
    return result


@dataclass(frozen=True)
class FieldmapLinks:
    """What :func:`link_fieldmaps` found for a session."""

    #: fieldmap sidecar (relative path) → the images it corrects (BIDS URIs, sorted)
    intended_for: Mapping[str, Sequence[str]]
    #: one note per set of fieldmaps that corrects no image (none for a rule's ``[]``)
    notes: Sequence[Problem]


def link_fieldmaps(
    images: Sequence[tuple[PlannedSeries, ConvertedImage]], subject: str, session: str | None
) -> FieldmapLinks:
    """Which images each fieldmap (with a sidecar) of a session corrects (each NIfTI image
    of the series :func:`plan_fieldmap_sets` gives it)."""

    by_series: dict[str, list[ConvertedImage]] = {}
    planned: dict[str, PlannedSeries] = {}
    for p, img in images:
        by_series.setdefault(p.series.series_id, []).append(img)
        if img.sidecar if _is_fieldmap(p.cls) else _is_nifti(img):
            planned.setdefault(p.series.series_id, p)
    sets = plan_fieldmap_sets(list(planned.values()))
    prefix = f"bids::sub-{subject}/" + (f"ses-{session}/" if session else "")
    sidecars = {
        sid: [img.sidecar for img in by_series[sid] if img.sidecar]
        for fieldmap_set in sets
        for sid in fieldmap_set.fieldmaps
    }
    links: dict[str, set[str]] = {
        sidecar: set() for group in sidecars.values() for sidecar in group
    }
    for fieldmap_set in sets:
        uris = {
            prefix + img.relpath
            for sid in fieldmap_set.images
            for img in by_series[sid]
            if _is_nifti(img)
        }
        for sid in fieldmap_set.fieldmaps:
            for sidecar in sidecars[sid]:
                links[sidecar] |= uris
    converted: dict[str, set[str | None]] = {}  # by study
    for p in planned.values():
        kinds = converted.setdefault(p.series.header.study_uid or "", set())
        if not _is_fieldmap(p.cls):  # a perf M0 scan is no ASL image
            kinds.add(p.cls.datatype)
    notes: list[Problem] = []
    noted: set[str] = set()
    for fieldmap_set in sets:
        unlinked = [
            sidecar
            for sid in fieldmap_set.fieldmaps
            if sid not in noted
            for sidecar in sidecars[sid]
            if not links[sidecar]
        ]
        if unlinked and fieldmap_set.corrects != frozenset():
            noted.update(fieldmap_set.fieldmaps)
            notes.append(
                _unlinked_note(
                    fieldmap_set.fieldmaps[0],
                    unlinked,
                    fieldmap_set.corrects,
                    converted.get(fieldmap_set.study, set()),
                    of_its_study=len(converted) > 1,
                )
            )
    return FieldmapLinks({k: sorted(v) for k, v in links.items()}, notes)


def _is_fieldmap(cls: Classification) -> bool:
    """A series linked to the images it corrects: one in ``fmap/``, or an M0 scan."""
    return cls.datatype == "fmap" or (cls.datatype == "perf" and cls.suffix == "m0scan")


def _is_nifti(img: ConvertedImage) -> bool:
    return img.relpath.endswith(NIFTI_ENDINGS)


def _unlinked_note(
    series_id: str,
    sidecars: Sequence[str],
    corrects: frozenset[str] | None,
    converted: set[str | None],
    *,
    of_its_study: bool = False,
) -> Problem:
    """The note for fieldmaps (``sidecars``) of a set that corrects no image, and why
    (``converted``: the datatypes converted in its study; ``of_its_study``: the session
    holds several studies)."""
    meant = sorted(corrects) if corrects is not None else list(CORRECTED_DATATYPES)
    why = (
        f"each {'/'.join(meant)} image takes a nearer set of fieldmaps"
        if converted.intersection(meant)
        else f"no {'/'.join(meant)} image "
        + ("of its DICOM study " if of_its_study else "")
        + "was converted"
    )
    names = ", ".join(Path(sidecar).name for sidecar in sidecars)
    return Problem(
        series_id,
        f"{names}: corrects no image ({why}), so no IntendedFor; a --rules file's "
        "set.corrects says which images a fieldmap corrects",
        "convert",
    )


def complete_phasediff(
    images: Sequence[tuple[PlannedSeries, ConvertedImage]], session_dir: Path
) -> None:
    """Give phase-difference maps the EchoTime1/EchoTime2 BIDS requires.

    Scanners store the two echoes' magnitudes and the phase difference as separate series,
    and dcm2niix sees one series at a time: EchoTime1 comes from the shortest echo of the
    magnitude images acquired at the same time point, EchoTime2 from the phase image.
    """

    def read(img: ConvertedImage) -> dict[str, object]:
        assert img.sidecar is not None
        return dict(json.loads((session_dir / img.sidecar).read_text(encoding="utf-8")))

    def when(p: PlannedSeries) -> tuple[str, str]:
        return (p.series.acquisition_date or "", p.series.acquisition_time or "")

    fmaps = [(p, img) for p, img in images if p.cls.datatype == "fmap" and img.sidecar]
    for p, img in fmaps:
        if "_phasediff." not in img.relpath:
            continue
        data = read(img)
        if "EchoTime1" in data and "EchoTime2" in data:
            continue
        magnitudes = [
            read(mimg) for mp, mimg in fmaps if "_magnitude" in mimg.relpath and when(mp) == when(p)
        ] or [
            read(mimg)
            for mp, mimg in fmaps
            if "_magnitude" in mimg.relpath
            and abs((mp.series.header.series_number or 0) - (p.series.header.series_number or 0))
            == 1
        ]
        times = sorted(
            float(t) for m in magnitudes if isinstance(t := m.get("EchoTime"), (int, float))
        )
        echo2 = data.get("EchoTime")
        if not times or not isinstance(echo2, (int, float)) or times[0] >= echo2:
            log.warning(
                "%s: cannot tell EchoTime1/EchoTime2 of this phase difference map", img.relpath
            )
            continue
        data["EchoTime1"] = times[0]
        data["EchoTime2"] = float(echo2)
        assert img.sidecar is not None  # fmaps were selected with a sidecar
        fileops.write_json(session_dir / img.sidecar, data)


def write_scans(path: Path, images: Sequence[ConvertedImage]) -> None:
    rows = [
        {"filename": img.relpath, "acq_time": img.acq_time}
        for img in sorted(images, key=lambda i: i.relpath)
        if _is_nifti(img)
    ]
    if rows:
        fileops.write_tsv(path, rows, ["filename", "acq_time"])
