"""BIDS names, JSON sidecars and label tables → DICOM attributes (pure, except the readers).

BIDS sidecars store times in seconds, DICOM in milliseconds; dcm2niix joins multi-valued
code strings with underscores (``"ScanningSequence": "GR_IR"``). :data:`FIELD_MAP` lists
every sidecar field that has a DICOM attribute, with its unit change.

>>> dicom_attributes({"RepetitionTime": 2.3, "EchoTime": 0.00298, "FlipAngle": 9,
...                   "ScanningSequence": "GR_IR", "TaskName": "rest"})
{'RepetitionTime': 2300.0, 'EchoTime': 2.98, 'FlipAngle': 9.0, 'ScanningSequence': ['GR', 'IR']}
>>> series_description("sub-01_ses-2_space-T1w_desc-brain_mask.nii.gz")
'space-T1w_desc-brain_mask'
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidsport.errors import ConversionError, UsageError

log = logging.getLogger(__name__)

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class FieldMapping:
    """One sidecar field and the DICOM attribute (pydicom keyword) it becomes."""

    bids: str
    keyword: str
    kind: str = "number"  #: "number", "int", "text" or "codes" (CS values: :func:`_codes`)
    scale: float = 1.0  #: DICOM value = BIDS value * scale (seconds → ms: 1000)


FIELD_MAP: tuple[FieldMapping, ...] = (
    FieldMapping("RepetitionTime", "RepetitionTime", scale=1000.0),
    FieldMapping("EchoTime", "EchoTime", scale=1000.0),
    FieldMapping("InversionTime", "InversionTime", scale=1000.0),
    FieldMapping("FlipAngle", "FlipAngle"),
    FieldMapping("MagneticFieldStrength", "MagneticFieldStrength"),
    FieldMapping("ImagingFrequency", "ImagingFrequency"),
    FieldMapping("PixelBandwidth", "PixelBandwidth"),
    FieldMapping("PercentPhaseFOV", "PercentPhaseFieldOfView"),
    FieldMapping("EchoTrainLength", "EchoTrainLength", kind="int"),
    FieldMapping("EchoNumber", "EchoNumbers", kind="int"),
    FieldMapping("ScanningSequence", "ScanningSequence", kind="codes"),
    FieldMapping("SequenceVariant", "SequenceVariant", kind="codes"),
    FieldMapping("ScanOptions", "ScanOptions", kind="codes"),
    FieldMapping("MRAcquisitionType", "MRAcquisitionType", kind="text"),
    FieldMapping("SequenceName", "SequenceName", kind="text"),
    FieldMapping("ProtocolName", "ProtocolName", kind="text"),
    FieldMapping("BodyPartExamined", "BodyPartExamined", kind="text"),
    FieldMapping("ReceiveCoilName", "ReceiveCoilName", kind="text"),
    FieldMapping("TransmitCoilName", "TransmitCoilName", kind="text"),
    FieldMapping("ImagedNucleus", "ImagedNucleus", kind="text"),
)

#: DICOM defined terms that may be written (others are dropped: dciodvfy would flag them).
_DEFINED_CODES: dict[str, frozenset[str]] = {
    "ScanningSequence": frozenset({"SE", "IR", "GR", "EP", "RM"}),
    "SequenceVariant": frozenset({"SK", "MTC", "SS", "TRSS", "SP", "MP", "OSP", "NONE"}),
    "MRAcquisitionType": frozenset({"2D", "3D"}),
}
_CS = re.compile(r"[A-Z0-9 _]{1,16}")

#: ImageType value 3 of the MR Image module for BIDS suffixes that name a DICOM defined term.
IMAGE_TYPE_BY_SUFFIX = {
    "T1map": "T1 MAP",
    "T2map": "T2 MAP",
    "PDmap": "DENSITY MAP",
    "phase": "PHASE MAP",
    "phasediff": "PHASE MAP",
    "fieldmap": "PHASE MAP",
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _codes(value: str, defined: Collection[str] | None) -> list[str]:
    """The CS values of a sidecar's multi-valued field: dcm2niix joins them with ``\\``
    (older versions with ``_``, which GE's own values hold: ``EDR_GEMS``). Without a
    ``\\``, the value is split at ``_`` only when every part is a ``defined`` term.

    >>> _codes("EDR_GEMS\\FILTERED_GEMS", None), _codes("EDR_GEMS", None)
    (['EDR_GEMS', 'FILTERED_GEMS'], ['EDR_GEMS'])
    >>> _codes("SK_SP", {"SK", "SP", "MP"}), _codes("PFP_FS", None)
    (['SK', 'SP'], ['PFP_FS'])
    """
    text = value.upper()
    if "\\" in text:
        return [c.strip() for c in text.split("\\") if c.strip()]
    parts = [c for c in text.split("_") if c]
    if defined is not None and parts and all(c in defined for c in parts):
        return parts
    return [text.strip()] if text.strip() else []


def dicom_attributes(sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """The DICOM attributes (keyword → value) that a BIDS sidecar's fields give.

    Fields of the wrong type, lists where one value is expected and values outside the
    DICOM defined terms are skipped (logged at debug level).
    """
    out: dict[str, Any] = {}
    for field in FIELD_MAP:
        if field.bids not in sidecar:
            continue
        value = sidecar[field.bids]
        converted: Any = None
        if field.kind in ("number", "int"):
            number = _number(value)
            if number is not None and number >= 0:
                scaled = round(number * field.scale, 6)
                converted = round(scaled) if field.kind == "int" else scaled
        elif field.kind == "codes" and isinstance(value, str):
            allowed = _DEFINED_CODES.get(field.keyword)
            codes = _codes(value, allowed)
            if (
                codes
                and all(_CS.fullmatch(c) for c in codes)
                and (allowed is None or all(c in allowed for c in codes))
            ):
                converted = codes
        elif field.kind == "text" and isinstance(value, str) and value.strip():
            text = value.strip()[:64]
            allowed = _DEFINED_CODES.get(field.keyword)
            if allowed is None or text in allowed:
                converted = text
            if field.keyword == "BodyPartExamined":
                code = text.upper()[:16]
                converted = code if _CS.fullmatch(code) else None
        if converted is None:
            log.debug("sidecar field %s=%r has no valid DICOM value: skipped", field.bids, value)
            continue
        out[field.keyword] = converted
    return out


# --------------------------------------------------------------------------- BIDS names

_ENTITY = re.compile(r"([a-zA-Z0-9]+)-([a-zA-Z0-9]+)")


def strip_extension(name: str) -> str:
    """``sub-01_T1w.nii.gz`` → ``sub-01_T1w`` (also ``.nii`` and ``.json``)."""
    for ext in (*NIFTI_EXTENSIONS, ".json"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


@dataclass(frozen=True)
class BidsName:
    """A BIDS file name split into its entities (in order) and suffix."""

    entities: tuple[tuple[str, str], ...]
    suffix: str | None

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.entities if k == key), None)


def parse_bids_name(name: str) -> BidsName:
    """Split a file name into BIDS entities and suffix; non-BIDS parts are dropped.

    >>> parse_bids_name("sub-01_ses-pre_label-lesion_mask.nii.gz")
    BidsName(entities=(('sub', '01'), ('ses', 'pre'), ('label', 'lesion')), suffix='mask')
    >>> parse_bids_name("lesion.nii").suffix
    'lesion'
    """
    parts = strip_extension(Path(name).name).split("_")
    entities = []
    suffix = None
    for n, part in enumerate(parts):
        match = _ENTITY.fullmatch(part)
        if match:
            entities.append((match.group(1), match.group(2)))
        elif n == len(parts) - 1 and part:
            suffix = part
    return BidsName(tuple(entities), suffix)


def series_description(name: str) -> str:
    """SeriesDescription for a BIDS image: its name without sub/ses and extension (≤ 64)."""
    bids = parse_bids_name(name)
    parts = [f"{k}-{v}" for k, v in bids.entities if k not in ("sub", "ses")]
    if bids.suffix:
        parts.append(bids.suffix)
    text = "_".join(parts) or strip_extension(Path(name).name)
    return text[:64]


# --------------------------------------------------------------------------- files


def sidecar_file(image_file: Path) -> Path:
    """The JSON sidecar path of a NIfTI (it may not exist)."""
    return image_file.with_name(strip_extension(image_file.name) + ".json")


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; a broken file is an error that names it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"cannot read JSON file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"JSON file {path} does not hold an object")
    return data


def read_sidecar(image_file: Path) -> dict[str, Any] | None:
    """The sidecar of ``image_file`` as a dict, or None when it has none."""
    path = sidecar_file(image_file)
    return read_json(path) if path.is_file() else None


# --------------------------------------------------------------------------- label tables


@dataclass(frozen=True)
class Label:
    """One entry of a segmentation lookup table."""

    value: int
    name: str
    color: tuple[int, int, int] | None = None  #: sRGB 0-255


def _color(text: Any) -> tuple[int, int, int] | None:
    if isinstance(text, str) and re.fullmatch(r"#?[0-9a-fA-F]{6}", text.strip()):
        h = text.strip().lstrip("#")
        return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
    return None


def _labels_from_mapping(data: Any, source: Path) -> dict[int, Label]:
    out: dict[int, Label] = {}
    items: list[tuple[Any, Any]]
    if isinstance(data, Mapping):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(d.get("index"), d) for d in data if isinstance(d, Mapping)]
    else:
        raise UsageError(f"label table {source}: expected an object or a list of objects")
    for key, entry in items:
        try:
            value = int(key)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"label table {source}: {key!r} is not an integer index") from exc
        if isinstance(entry, Mapping):
            name, color = entry.get("name"), _color(entry.get("color"))
        else:
            name, color = entry, None
        if not isinstance(name, str) or not name.strip():
            raise UsageError(f"label table {source}: index {value} has no name")
        out[value] = Label(value, name.strip(), color)
    return out


def read_label_table(path: Path) -> dict[int, Label]:
    """Read a lookup table: a BIDS ``dseg.tsv`` (``index``, ``name``[, ``color``]) or JSON.

    JSON may be ``{"1": "name"}``, ``{"1": {"name": ..., "color": "#rrggbb"}}`` or a list
    of ``{"index": 1, "name": ...}``; a sidecar holding such a table under ``"Labels"`` works.
    """
    if path.suffix.lower() == ".json":
        data = read_json(path)
        return _labels_from_mapping(data.get("Labels", data), path)
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read label table {path}: {exc}") from exc
    if not lines:
        raise UsageError(f"label table {path} is empty")
    header = [h.strip() for h in lines[0].split("\t")]
    if "index" not in header or "name" not in header:
        raise UsageError(
            f"label table {path} needs the columns 'index' and 'name' (found: {header})",
            "use a BIDS dseg.tsv: tab-separated, with a header line",
        )
    rows = [dict(zip(header, ln.split("\t"), strict=False)) for ln in lines[1:]]
    return _labels_from_mapping(
        [{"index": r.get("index"), "name": r.get("name"), "color": r.get("color")} for r in rows],
        path,
    )


def find_label_table(image_file: Path, stop_at: Path | None = None) -> Path | None:
    """A BIDS lookup table for a segmentation: ``<name>.tsv`` beside it, else an inherited one.

    Inherited tables drop the ``sub``/``ses`` entities (``desc-aseg_dseg.tsv``) and are
    looked for in each parent folder up to ``stop_at`` (the dataset root).
    """
    stem = strip_extension(image_file.name)
    own = image_file.with_name(stem + ".tsv")
    if own.is_file():
        return own
    bids = parse_bids_name(image_file.name)
    parts = [f"{k}-{v}" for k, v in bids.entities if k not in ("sub", "ses")]
    if bids.suffix:
        parts.append(bids.suffix)
    inherited = "_".join(parts) + ".tsv"
    folder = image_file.parent
    while True:
        candidate = folder / inherited
        if candidate.is_file():
            return candidate
        if stop_at is None or folder == stop_at or folder.parent == folder:
            return None
        folder = folder.parent
