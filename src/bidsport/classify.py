"""Classification: every series → BIDS datatype, suffix, entities and a provenance, with reasons.

Pure decisions on :class:`~bidsport.records.Series` records (no I/O). For each series, in
this order:

1. user rules (:mod:`bidsport.rules`): the first that matches decides or refines;
2. a ReproIn series description (``func-bold_task-rest``, ``fmap-epi_dir-AP``, ...) names
   datatype, suffix and entities (``run`` and ``ses`` are ignored: bidsport numbers runs
   and sessions come from the import);
3. the provenance, from ImageType and descriptions: localizer, synthetic MRI, SWI
   processing, DTI maps, projections, subtractions, other derived images, or raw (the
   scanner reconstructions BIDS keeps as raw data, e.g. Siemens MP2RAGE: its inversions
   ``inv-1``/``inv-2_MP2RAGE``, its UNI image ``UNIT1`` and its T1 map ``T1map``);
4. datatype and suffix from the sequence parameters (ScanningSequence, SequenceVariant,
   SequenceName, TR/TE/TI, b-values, echoes, volumes) and description words, across
   Siemens, GE, Philips, Canon/Toshiba and UIH conventions.

Every decision appends a short reason to ``Classification.evidence``; uncertain ones set
``review``. Localizers and derived series are excluded (but still described), DTI maps
even when derived series are kept (no raw BIDS name suits them); a series nothing
recognises is excluded as "unrecognized" with a summary of its key headers — never
silently dropped. :func:`classify_all` adds session-level passes: ``part-mag`` on the
magnitude partner of a phase series, ``rec`` labels on reconstructions of one
acquisition (Siemens NORM, ND/DIS2D), and ``acq`` labels where one session holds several
protocols that would otherwise share a name.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from bidsport.naming import ENTITY_ORDER, sanitize_label
from bidsport.records import LINKED_FMAP_SUFFIXES, PROVENANCES, Classification, Series
from bidsport.rules import SUFFIXES, Rule, rule_evidence, rule_matches

log = logging.getLogger(__name__)

__all__ = [
    "DERIVED_PROVENANCES",
    "allowed_entities",
    "classify_all",
    "classify_series",
    "parse_reproin",
]

#: Provenances excluded unless the user keeps derived data.
DERIVED_PROVENANCES = tuple(p for p in PROVENANCES if p not in ("raw", "localizer"))

# --------------------------------------------------------------------------- tables (data)

#: Which entities a name may carry, by (datatype, suffix group) — BIDS 1.10 raw rules.
_ANAT_NONPARAMETRIC = frozenset(
    (
        "T1w",
        "T2w",
        "PDw",
        "T2starw",
        "FLAIR",
        "inplaneT1",
        "inplaneT2",
        "PDT2",
        "angio",
        "MEGRE",
        "MESE",
    )
)
_ALLOWED: Mapping[str, frozenset[str]] = {
    "anat": frozenset(("task", "acq", "ce", "rec", "run", "echo", "part", "chunk")),
    "anat-map": frozenset(("task", "acq", "ce", "rec", "run")),
    "dwi": frozenset(("acq", "rec", "dir", "run", "part", "chunk")),
    "func": frozenset(("task", "acq", "ce", "rec", "dir", "run", "echo", "part", "chunk")),
    "fmap": frozenset(("acq", "run", "chunk")),
    "fmap-epi": frozenset(("acq", "ce", "dir", "rec", "run", "part", "chunk")),
    "perf": frozenset(("acq", "rec", "dir", "run")),
}
#: Extra entities of the anatomical file collections.
_COLLECTION_ENTITIES: Mapping[str, frozenset[str]] = {
    "VFA": frozenset(("flip", "part")),
    "IRT1": frozenset(("inv", "part")),
    "MP2RAGE": frozenset(("inv", "echo", "flip", "part")),
    "MPM": frozenset(("flip", "mt", "echo", "part")),
    "MTS": frozenset(("flip", "mt", "part")),
    "MTR": frozenset(("mt", "part")),
}


def allowed_entities(datatype: str, suffix: str) -> frozenset[str]:
    """The entities BIDS allows in a raw ``datatype``/``suffix`` name (besides sub/ses).

    >>> sorted(allowed_entities("fmap", "phasediff"))
    ['acq', 'chunk', 'run']
    """
    if datatype == "anat":
        if suffix in _ANAT_NONPARAMETRIC:
            return _ALLOWED["anat"]
        return _ALLOWED["anat-map"] | _COLLECTION_ENTITIES.get(suffix, frozenset())
    if datatype == "fmap":
        return _ALLOWED["fmap-epi"] if suffix in ("epi", "m0scan") else _ALLOWED["fmap"]
    return _ALLOWED.get(datatype, frozenset(ENTITY_ORDER))


# ImageType values (upper case) that decide a provenance, checked in this order.
_IMAGE_TYPE_PROVENANCE: tuple[tuple[str, frozenset[str]], ...] = (
    ("synthetic", frozenset(("SYNTHETIC", "SYMRI", "MAGIC", "SYNTHETICMR"))),
    ("swi", frozenset(("SWI", "MNIP", "MINIP", "MIN IP", "SWIP"))),
    (
        "dti_map",
        frozenset(
            (
                "ADC",
                "FA",
                "TRACEW",
                "TRACE",
                "EADC",
                "TENSOR",
                "COLFA",
                "TENSOR_B0",
                "EXP",
                "ISOTROPIC",
                "FA_MAP",
                "TRACE_W",
            )
        ),
    ),
    (
        "projection",
        frozenset(
            (
                "MIP",
                "PROJECTION IMAGE",
                "PROJECTION",
                "MIP_SAG",
                "MIP_COR",
                "MIP_TRA",
                "MAXIMUM INTENSITY PROJECTION",
            )
        ),
    ),
    ("subtraction", frozenset(("SUB", "SUBTRACT", "SUBTRACTION"))),
    (
        "derived",
        frozenset(
            ("MPR", "MOCO", "SCREEN SAVE", "CSA REPORT", "REFORMATTED", "CSAPARALLEL", "CPR", "VRT")
        ),
    ),
)
#: ImageType values that make any other series derived (checked after the descriptions).
_DERIVED_TYPES = frozenset(("DERIVED", "SECONDARY"))

# Description words (normalised text, see _norm) that decide a provenance. The entries
# marked True count only when ImageType is not ORIGINAL (a raw series may say "tensor").
_TEXT_PROVENANCE: tuple[tuple[str, re.Pattern[str], bool], ...] = (
    (
        "synthetic",
        re.compile(r"\b(symri|synthetic\w*|magic|mdme|syntac|qalas|synt[12]\w*)\b"),
        False,
    ),
    ("swi", re.compile(r"\b(swip|swan)\b"), False),
    ("swi", re.compile(r"\b(swi|mnip|min ?ip)\b"), True),
    (
        "dti_map",
        re.compile(
            r"\b(adc|fa|tracew|trace|eadc|colfa|color ?fa|exp|isotropic|tensor|dwi ?iso)\s*$"
        ),
        True,
    ),
    ("projection", re.compile(r"\b(mip|mips|mip (sag|cor|tra)|minip|mnip|projection)\b"), True),
    ("subtraction", re.compile(r"\b(sub|subtraction|subtract)\b"), True),
    (
        "derived",
        re.compile(
            r"\b(moco|mpr|mprs|reformat\w*|phoenixzipreport|screen ?save|"
            r"report|evidence ?document|dose ?report)\b"
        ),
        True,
    ),
)

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

_LOCALIZER = re.compile(
    r"\b(\w*locali[sz]ers?|\w*scout\w*|\w*survey\w*|3 ?plane|three ?plane|tri ?pilot|"
    r"aahead ?scout|aascout|loc|3pl ?loc|plane ?loc|autoalign|smart ?brain)\b"
)
_CALIBRATION = re.compile(
    r"\b(asset ?cal\w*|calibration|coil ?survey|sense ?ref\w*|ref ?scan|refscan|pure ?cal\w*|"
    r"prescan|b1 ?cal\w*)\b"
)

_DWI_WORDS = re.compile(
    r"\b(dwi|dti|dmri|diff|diffusion|tensor|hardi|dsi|noddi|msdwi|"
    r"mddw|dt|dtw|\d+ ?dirs?|dir ?\d+|b\d{3,4})\b"
)
_DWI_SEQ = re.compile(r"(ep_b\d|ep2d_diff|epi_dti|ep_dwi|epse.*diff|resolve|dwi|dti|diff)")
_ASL_WORDS = re.compile(
    r"\b(asl|pcasl|pasl|casl|p?casl\w*|tgse ?p?casl|ep2d ?p?asl|"
    r"perfusion ?asl|3d ?asl|arterial ?spin\w*)\b"
)
_ASL_SEQ = re.compile(r"(tgse_?p?casl|ep2d_?p?asl|p?casl|pasl|\basl)")
_M0_WORDS = re.compile(r"\b(m0|m0scan|m0 ?scan|m0 ?ref\w*|calib ?m0)\b")
_SBREF = re.compile(r"\b(sbref|sb ?ref|single ?band ?ref\w*)\b")
_BOLD_WORDS = re.compile(
    r"\b(bold|fmri|t?fmri|rs ?fmri|rfmri|tfmri|rest\d*|resting\w*|func|"
    r"task|rsbold|epi ?bold|ep2d ?bold)\b"
)
_EPI_FMAP_WORDS = re.compile(
    r"\b(topup|se ?epi|sefm|spin ?echo ?field ?map\w*|spinecho\w*|"
    r"field ?map\w*|fmap|pepolar|blip\w*|pe|reverse ?pe|rpe|b0)\b"
)
_GRE_FMAP_WORDS = re.compile(
    r"\b(field ?map\w*|fmap|field ?mapping|gre ?field\w*|b0 ?map\w*|"
    r"b0|b0 ?ns|fieldmapping|fm)\b"
)
_FMAP_SEQ = re.compile(r"^\*?(fm\d|fm3d|fm2d|b0map|fieldmap|ffe_?b0)")
_FIELDMAP_HZ_TYPES = frozenset(("FIELD_MAP", "FIELDMAP", "B0MAP", "B0 MAP", "FIELDMAPHZ", "B0_MAP"))
_EPI_SEQ = re.compile(
    r"^\*?(ep|epfid|epse|epi|ep2d|ep3d|feepi|seepi|fe_epi|se_epi|epirt|"
    r"epi2|mbepi|ep_)"
)
_EPI_WORDS = re.compile(r"\b(epi|ep2d|ep3d|epfid|epse|bold|fmri|mbepi|feepi|seepi)\b")

# anatomical contrasts from description words, most specific first
_ANAT_WORDS: tuple[tuple[str, re.Pattern[str], bool], ...] = (
    (
        "angio",
        re.compile(
            r"\b(tof|tof3d|angio\w*|mra|pc ?mra|ce ?mra|time ?of ?flight|"
            r"inflow|fl3d ?tof)\b"
        ),
        True,
    ),
    (
        "MEGRE",
        re.compile(
            r"\b(megre|me ?gre|gre ?me|mgre|multi ?echo\w*|me ?t2\*|qsm|"
            r"\d+ ?echoes)\b"
        ),
        True,
    ),
    ("FLAIR", re.compile(r"\b(flair\w*|dark ?fluid|tirm|t2 ?dark ?fluid)\b|\bspc ?ir\b"), True),
    ("PDw", re.compile(r"\b(pdw?|pd ?w|pd ?tse|pd ?fse|pd ?space|proton ?density|pdw?3d)\b"), True),
    (
        "T2starw",
        re.compile(
            r"\b(t2\*|t2\*w|t2 ?star\w*|t2s|hemo\w*|haemo\w*|swi|medic|"
            r"merge|t2 ?ffe|t2 ?fl2d|t2 ?gre|fl2d ?t2\*?)\b|t2\*"
        ),
        True,
    ),
    (
        "T2w",
        re.compile(r"\b(t2w?|t2 ?w|t2 ?tse|t2 ?fse|t2 ?space|t2 ?spc|t2w ?3d|t2w3d|t2 ?ciss)\b"),
        True,
    ),
    (
        "T1w",
        re.compile(
            r"\b(t1w?|t1 ?w|t1w3d|3d ?t1w?|t1 ?mprage|mp ?rage|mprage|memprage|"
            r"bravo|3dbravo|fspgr|spgr|efgre3d|tfl|tfl3d|t1 ?tfe|t1tfe|t1 ?ffe|"
            r"mpr ?age|t1 ?se|t1 ?tse|t1 ?flair|stealth|irfspgr)\b"
        ),
        True,
    ),
    # sequence-family words: weak, the sequence parameters overrule them
    ("T1w", re.compile(r"\b(tfe|vibe)\b"), False),
    (
        "T2w",
        re.compile(r"\b(tse|fse|frfse|space|spc|cube|haste|blade|propeller|ciss)\b"),
        False,
    ),
    ("T2starw", re.compile(r"\bgre\b"), False),
)
#: Word-named suffixes that sequence parameters cannot contradict (e.g. TOF is a T1 GRE).
_PARAM_BLIND = frozenset(("angio", "MEGRE"))

# Siemens MP2RAGE: one acquisition, several series named <protocol>_INV1, _INV2 (the two
# inversions, ImageType ORIGINAL), _UNI_Images / _UNI-DEN (the uniform image, ImageType
# DERIVED\PRIMARY\M\ND\UNI) and _T1_Images (ImageType DERIVED\PRIMARY\T1 MAP\ND).
_MP2RAGE_WORD = re.compile(r"\b(mp2rage\w*|\w*mp2rage)\b")
_MP2RAGE_SEQ = re.compile(r"^\*?tfl3d")
_MP2RAGE_SUFFIXES = frozenset(("MP2RAGE", "UNIT1", "T1map"))
_MP2RAGE_PART = re.compile(
    r"(?i)(?:^|[^A-Za-z0-9])(INV[-_ ]?(?P<inv>[12])|(?P<den>UNI[-_ ]?DEN)|"
    r"(?P<uni>UNI)(?:[-_ ]?Images)?|(?P<t1>T1[-_ ]?(?:Images|map)))(?![A-Za-z0-9])"
)

_SYNTHETIC_SUFFIX: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("T1map", re.compile(r"\bt1 ?map\b|\bqt1\b")),
    ("T2map", re.compile(r"\bt2 ?map\b|\bqt2\b")),
    ("PDmap", re.compile(r"\bpd ?map\b|\bqpd\b")),
    ("R1map", re.compile(r"\br1 ?map\b|\br1\b")),
    ("R2map", re.compile(r"\br2 ?map\b|\br2\b")),
    ("FLAIR", re.compile(r"\bflair\w*")),
    ("PDw", re.compile(r"\bpdw?\b")),
    ("T2w", re.compile(r"\bt2w?\b")),
    ("T1w", re.compile(r"\bt1w?\b")),
)

_DIR_PATTERNS = (
    re.compile(r"(?i)dir[-_]?(AP|PA|LR|RL|SI|IS)(?![A-Za-z0-9])"),
    re.compile(r"(?i)(?:^|[^A-Za-z0-9])pe[=_\-\s]?(AP|PA|LR|RL|SI|IS)(?![A-Za-z0-9])"),
    re.compile(r"(?i)(?:^|[^A-Za-z0-9])(AP|PA|LR|RL)(?![A-Za-z0-9])"),
    re.compile(r"(?:^|[^A-Za-z0-9])(SI|IS)(?![A-Za-z0-9])"),
)

_TASK_EXPLICIT = re.compile(r"(?i)(?:^|[^A-Za-z0-9])task[-_]?([A-Za-z0-9]+)")
_TASK_REST = re.compile(r"\b(rest\d*|resting\w*|rs|rsfmri|rfmri|rsbold|rs ?fmri)\b")
_TASK_AFTER = re.compile(r"(?i)(?:^|[^A-Za-z0-9])(?:t?fmri|bold|func)[_-]([A-Za-z][A-Za-z0-9]*)")
_TASK_STOP = re.compile(
    r"(?i)^(ap|pa|lr|rl|si|is|sbref|sb|mb\d*|hb\d*|sms\d*|ipat\d*|p\d|grappa\d*|run\d*|r\d+|"
    r"moco|epi|ep2d|bold|fmri|mosaic|nd|pace|te\d*|tr\d*|v\d+|ax|axial|sag|cor|tra|asc|desc|"
    r"int|seq|iso|mm|fs|se|ge|gre|me|multiecho|multi|part\d*|pe|dir\w*|acq\w*|task|mag|pha|"
    r"phase|magnitude|\d+sl|\d.*)$"
)
_ACQ_EXPLICIT = re.compile(r"(?i)(?:^|[^A-Za-z0-9])acq-([A-Za-z0-9]+)")

# ReproIn: [PREFIX:]<seqtype[-label]>[_ses-..][_task-..][_acq-..][_run-..][_dir-..][...][__x]
_REPROIN = re.compile(
    r"^(?P<seqtype>anat|func|dwi|fmap|perf)(?:-(?P<label>[A-Za-z0-9]+))?(?P<rest>(?:_.*)?)$"
)
_REPROIN_ENTITIES = frozenset((*ENTITY_ORDER, "ses"))


# --------------------------------------------------------------------------- facts


def _norm(text: str) -> str:
    """Lower case, separators → spaces (``*`` kept for "t2*"): what word patterns see."""
    return re.sub(r"[^a-z0-9*]+", " ", text.lower()).strip()


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


@dataclass(frozen=True)
class _Facts:
    """What the rules look at, normalised once per series."""

    desc: str  #: SeriesDescription as written
    prot: str  #: ProtocolName as written
    text: str  #: normalised description + protocol
    desc_text: str  #: normalised description only
    image_type: frozenset[str]  #: every ImageType value of the series, upper case
    original: bool  #: ImageType says ORIGINAL
    ss: frozenset[str]  #: ScanningSequence
    sv: frozenset[str]  #: SequenceVariant
    so: frozenset[str]  #: ScanOptions
    seq: str  #: SequenceName, lower case
    tr: float | None
    te: float | None
    ti: float | None
    b_max: float
    n_vol: int
    n_echo: int  #: distinct echoes (numbers or times)
    multi_echo: bool  #: several echoes, or one echo (not the first) of a split series
    phase: bool  #: a phase image
    fieldmap_hz: bool  #: a field map in Hz (GE/Philips B0 map)

    @property
    def epi(self) -> str | None:
        """Why this is EPI (None: it is not), from the headers or description words.

        Philips classic DICOM says ScanningSequence GR/SE for its EPI, so words count,
        unless a sequence name or an inversion/preparation says it is something else.
        """
        if "EP" in self.ss:
            return "ScanningSequence EP"
        if "EPI" in self.image_type or "EPI_GEMS" in self.so:
            return "ImageType/ScanOptions EPI"
        if _EPI_SEQ.match(self.seq):
            return f"SequenceName {self.seq}"
        word = _EPI_WORDS.search(self.text)
        if word and not (self.seq or self.ir or "MP" in self.sv):
            return f"description word {word.group(0)!r}"
        return None

    @property
    def is_epi(self) -> bool:
        return self.epi is not None

    @property
    def ir(self) -> bool:
        return (
            "IR" in self.ss
            or "IR_GEMS" in self.so
            or (self.ti is not None and self.ti > 50)
            or bool(self.image_type & {"IR", "M_IR"})
            or bool(re.match(r"^\*?(tir|tfl|mprage|ir)", self.seq))
        )

    @property
    def gr(self) -> bool:
        return (
            "GR" in self.ss
            or bool(
                re.match(
                    r"^\*?(fl|fl3d|gre|fgre|spgr|fspgr|efgre|tfl|t1tfe|ffe|swi|medic)", self.seq
                )
            )
            or bool(self.image_type & {"FFE", "M_FFE"})
        )

    @property
    def se(self) -> bool:
        return (
            "SE" in self.ss
            or bool(re.match(r"^\*?(tse|se|spc|tir|fse|frfse|cube|h2d|blade|space)", self.seq))
            or bool(self.image_type & {"SE", "M_SE"})
        )

    def params(self) -> str:
        """``ScanningSequence GR\\IR, TI 900 ms, TE 2.98 ms`` (the values that are known)."""
        parts = []
        if self.ss:
            parts.append("ScanningSequence " + "\\".join(sorted(self.ss)))
        if self.ti is not None and self.ti > 0:
            parts.append(f"TI {_fmt(self.ti)} ms")
        if self.te is not None:
            parts.append(f"TE {_fmt(self.te)} ms")
        if self.tr is not None:
            parts.append(f"TR {_fmt(self.tr)} ms")
        if self.n_echo >= 2:
            parts.append(f"{self.n_echo} echoes")
        return ", ".join(parts) or "no sequence parameters"


def _facts(series: Series) -> _Facts:
    h = series.header
    desc, prot = h.series_description or "", h.protocol_name or ""
    image_type = {v.upper() for v in h.image_type}
    for values in series.image_types:
        image_type |= {v.upper() for v in values}
    b_values = tuple(series.b_values) or ((h.b_value,) if h.b_value is not None else ())
    n_echo = max(len(series.echo_numbers), len(series.echo_times))
    component = (h.complex_image_component or "").upper()
    phase = (
        bool(image_type & {"P", "PHASE", "PHASE MAP"})
        or any(v.startswith("P_") for v in image_type)
        or component == "PHASE"
    )
    fieldmap_hz = bool(image_type & _FIELDMAP_HZ_TYPES)
    return _Facts(
        desc=desc,
        prot=prot,
        text=_norm(f"{desc} {prot}"),
        desc_text=_norm(desc),
        image_type=frozenset(image_type),
        original="ORIGINAL" in image_type,
        ss=frozenset(v.upper() for v in h.scanning_sequence),
        sv=frozenset(v.upper() for v in h.sequence_variant),
        so=frozenset(v.upper() for v in h.scan_options),
        seq=(h.sequence_name or "").strip().lower(),
        tr=h.repetition_time,
        te=h.echo_time if h.echo_time else (min(series.echo_times) if series.echo_times else None),
        ti=h.inversion_time,
        b_max=max(b_values) if b_values else 0.0,
        n_vol=series.n_volumes,
        n_echo=n_echo,
        multi_echo=n_echo >= 2 or max(series.echo_numbers or (h.echo_number or 1,)) > 1,
        phase=phase,
        fieldmap_hz=fieldmap_hz,
    )


def _summary(series: Series, f: _Facts) -> str:
    """Key headers of an unrecognized series, for the series table."""
    h = series.header
    image_type = "\\".join(h.image_type) or "-"
    scanning = "\\".join(h.scanning_sequence) or "-"
    return (
        f"SeriesDescription={f.desc or '-'!r} SequenceName={h.sequence_name or '-'} "
        f"ImageType={image_type} ScanningSequence={scanning} "
        f"TR={_fmt(f.tr)} TE={_fmt(f.te)} TI={_fmt(f.ti)} volumes={f.n_vol}"
    )


# --------------------------------------------------------------------------- draft


def _linked(datatype: str | None, suffix: str | None) -> bool:
    """Linked to the images it corrects (IntendedFor): a B0 fieldmap or an M0 scan."""
    return (datatype == "fmap" and suffix in LINKED_FMAP_SUFFIXES) or (
        datatype == "perf" and suffix == "m0scan"
    )


@dataclass
class _Draft:
    """A classification being built (mutable; frozen into a Classification at the end)."""

    datatype: str | None = None
    suffix: str | None = None
    entities: dict[str, str] = field(default_factory=dict)
    provenance: str = "raw"
    evidence: list[str] = field(default_factory=list)
    review: bool = False
    excluded: str | None = None
    corrects: tuple[str, ...] | None = None  #: of a fieldmap: datatypes it may correct

    def note(self, text: str) -> None:
        if text not in self.evidence:
            self.evidence.append(text)

    def name(self, datatype: str | None, suffix: str | None, reason: str) -> None:
        self.datatype, self.suffix = datatype, suffix
        self.note(reason)

    def freeze(self, rule: str | None = None) -> Classification:
        entities = {k: v for k, v in self.entities.items() if v}
        if self.datatype and self.suffix:
            allowed = allowed_entities(self.datatype, self.suffix)
            for key in sorted(set(entities) - allowed):
                self.note(f"{key}-{entities.pop(key)} dropped: not allowed for {self.suffix}")
        ordered = {key: entities[key] for key in ENTITY_ORDER if key in entities}
        return Classification(
            datatype=self.datatype,
            suffix=self.suffix,
            entities=ordered,
            provenance=self.provenance,
            evidence=tuple(self.evidence),
            excluded=self.excluded,
            review=self.review,
            rule=rule,
            corrects=self.corrects if _linked(self.datatype, self.suffix) else None,
        )


# --------------------------------------------------------------------------- ReproIn


@dataclass(frozen=True)
class ReproIn:
    """A series description that follows the ReproIn convention."""

    source: str  #: the text it was read from
    datatype: str
    label: str | None  #: the ``-label`` as written
    suffix: str | None  #: the BIDS suffix the label names (None: infer it)
    entities: Mapping[str, str]  #: BIDS entities given (``run``/``ses`` left out)
    ignored: tuple[str, ...]  #: ``run-..``/``ses-..`` parts (bidsport sets those itself)
    flags: tuple[str, ...]  #: other parts, e.g. Siemens' ``SBRef``

    @property
    def localizer(self) -> bool:
        return self.datatype == "anat" and (self.label or "").lower() in (
            "scout",
            "localizer",
            "localiser",
            "survey",
        )


def parse_reproin(text: str | None) -> ReproIn | None:
    """Read a ReproIn name: ``[PREFIX:]<seqtype[-label]>[_key-value...][__custom]``.

    A bare ``seqtype`` with neither a label nor an entity is not taken as ReproIn.

    >>> r = parse_reproin("func-bold_task-rest_run-01_SBRef")
    >>> (r.datatype, r.suffix, dict(r.entities), r.ignored, r.flags)
    ('func', 'bold', {'task': 'rest'}, ('run-01',), ('SBRef',))
    >>> parse_reproin("dwi_ap_64dir") is None
    True
    """
    if not text:
        return None
    source = text.strip()
    body = re.sub(r"^(?:[A-Z0-9]+:\s*|WIP\s+)", "", source).split("__", 1)[0]
    match = _REPROIN.match(body)
    if match is None:
        return None
    datatype, label = match.group("seqtype"), match.group("label")
    entities: dict[str, str] = {}
    ignored: list[str] = []
    flags: list[str] = []
    for part in (p for p in match.group("rest").split("_") if p):
        key, sep, value = part.partition("-")
        if sep and key in _REPROIN_ENTITIES and re.fullmatch(r"[A-Za-z0-9]+", value):
            if key in ("run", "ses"):
                ignored.append(part)
            else:
                entities[key] = value
        else:
            flags.append(part)
    if label is None and not entities and not ignored:
        return None
    suffix = None
    if label is not None:
        canonical = {s.lower(): s for s in SUFFIXES[datatype]}
        suffix = canonical.get(label.lower())
    return ReproIn(source, datatype, label, suffix, entities, tuple(ignored), tuple(flags))


# --------------------------------------------------------------------------- helpers


def _kept(provenance: str, keep_derived: bool | Collection[str]) -> bool:
    if isinstance(keep_derived, bool):
        return keep_derived and provenance in DERIVED_PROVENANCES
    return provenance in keep_derived


#: Derived provenances that have no place in a raw BIDS dataset, even with --keep-derived.
_NO_RAW_NAME = {
    "dti_map": (
        "a map the scanner computed from the diffusion images (ADC, FA, trace...), which "
        "has no place in a raw BIDS dataset, even with --keep-derived (named as a dwi "
        "image, it would take the DWI's bval/bvec)"
    ),
}


def _derived_exclusion(provenance: str, keep_derived: bool | Collection[str]) -> str | None:
    """Why a series of a derived ``provenance`` is not converted (None: it is)."""
    if provenance in _NO_RAW_NAME:
        return f"derived: {provenance}, {_NO_RAW_NAME[provenance]}"
    if not _kept(provenance, keep_derived):
        return f"derived: {provenance} (use --keep-derived to keep)"
    return None


def _find_dir(f: _Facts) -> tuple[str, str] | None:
    """A phase-encoding direction stated in the description or protocol: (label, text)."""
    for text, field_name in ((f.desc, "SeriesDescription"), (f.prot, "ProtocolName")):
        for pattern in _DIR_PATTERNS:
            found = {m.group(1).upper() for m in pattern.finditer(text)}
            if len(found) == 1:
                label = found.pop()
                return label, f"{field_name} {text!r}: dir {label}"
            if len(found) > 1:
                return None  # e.g. "AP_PA": ambiguous
    return None


def _set_dir(d: _Draft, f: _Facts, series: Series, *, required: bool = False) -> None:
    if d.entities.get("dir"):
        return
    found = _find_dir(f)
    if found:
        d.entities["dir"] = found[0]
        d.note(found[1])
        return
    if required:
        pe = series.header.in_plane_phase_encoding
        axis = f"InPlanePhaseEncodingDirection {pe}: axis known, " if pe else ""
        d.note(
            f"{axis}its polarity is not read from the headers (only a direction in the "
            "description or protocol, e.g. 'AP', sets dir; a --rules file can): dir not set"
        )
        d.review = True


def _find_task(f: _Facts) -> tuple[str, str] | None:
    """A task label from the description or protocol: (label, reason)."""
    for text, field_name in ((f.desc, "SeriesDescription"), (f.prot, "ProtocolName")):
        m = _TASK_EXPLICIT.search(text)
        if m and sanitize_label(m.group(1)):
            return sanitize_label(m.group(1)), f"{field_name} {text!r}: task {m.group(1)}"
        m = _TASK_REST.search(_norm(text))
        if m:
            return "rest", f"{field_name} {text!r}: resting state → task rest"
        for m in _TASK_AFTER.finditer(text):
            label = sanitize_label(m.group(1))
            if label and not _TASK_STOP.match(label):
                return label, f"{field_name} {text!r}: task {label}"
    return None


def _set_task(d: _Draft, f: _Facts) -> None:
    if d.entities.get("task"):
        return
    found = _find_task(f)
    if found:
        d.entities["task"] = found[0]
        d.note(found[1])
    else:
        d.entities["task"] = "unknown"
        d.note("no task in SeriesDescription/ProtocolName: task-unknown")
        d.review = True


def _set_echo(d: _Draft, series: Series) -> None:
    """``echo`` for one echo of a split multi-echo series (the converter numbers the rest)."""
    if d.entities.get("echo"):
        return
    numbers = series.echo_numbers
    if len(numbers) == 1 and numbers[0] > 1:
        d.entities["echo"] = str(numbers[0])
        d.note(f"EchoNumbers {numbers[0]} only: echo-{numbers[0]} of a split multi-echo series")


def _set_part(d: _Draft, f: _Facts) -> None:
    if f.phase and not d.entities.get("part"):
        d.entities["part"] = "phase"
        d.note("ImageType/ComplexImageComponent says phase: part-phase")


# --------------------------------------------------------------------------- provenance


_REC_LABELS = {
    "TRACE_W": "TRACEW",
    "FA_MAP": "FA",
    "TENSOR_B0": "TENSOR",
    "COLFA": "ColFA",
    "EADC": "eADC",
    "MNIP": "minIP",
    "MINIP": "minIP",
    "MIN IP": "minIP",
    "PROJECTION IMAGE": "MIP",
    "MAXIMUM INTENSITY PROJECTION": "MIP",
    "MIP_SAG": "MIP",
    "MIP_COR": "MIP",
    "MIP_TRA": "MIP",
    "SWIP": "SWI",
    "MOCO": "moco",
}


def _rec_label(provenance: str, hit: str) -> str:
    """The ``rec`` label of a derived series from the ImageType value or word that said so."""
    if provenance in ("synthetic", "subtraction"):
        return "synthetic" if provenance == "synthetic" else "sub"
    word = hit.upper()
    if provenance == "derived" and word not in ("MPR", "MOCO"):
        return "derived"
    return sanitize_label(_REC_LABELS.get(word, word)) or provenance


def _provenance(
    series: Series, f: _Facts, *, reconstruction: str | None = None
) -> tuple[str, str | None, str | None]:
    """(provenance, reason, rec label) from ImageType, SOP class and descriptions.

    ``reconstruction``: why the series is the scanner's own reconstruction that BIDS keeps
    as raw data (an MP2RAGE UNI image or T1 map), which ImageType DERIVED alone does not
    make derived.
    """
    for provenance, values in _IMAGE_TYPE_PROVENANCE:
        hits = sorted(f.image_type & values)
        if hits:
            label = _rec_label(provenance, hits[0])
            return provenance, f"ImageType contains {hits[0]} → {provenance}", label
    derived_image = bool(f.image_type) and not f.original
    for provenance, pattern, needs_derived in _TEXT_PROVENANCE:
        if needs_derived and not derived_image:
            continue
        text = f.text if provenance == "synthetic" else f.desc_text
        m = pattern.search(text)
        if m and m.group(0) == "swan" and f.n_echo >= 2:
            continue  # GE SWAN with its echoes: raw multi-echo GRE
        if m:
            word = m.group(1) if m.groups() and m.group(1) else m.group(0)
            return (
                provenance,
                f"SeriesDescription word {word.strip()!r} → {provenance}",
                _rec_label(provenance, word.strip()),
            )
    hits = sorted(f.image_type & _DERIVED_TYPES)
    if hits and reconstruction and "SECONDARY" not in hits:
        return "raw", f"ImageType contains DERIVED, but {reconstruction}: raw", None
    if hits and not f.fieldmap_hz:
        return "derived", f"ImageType contains {hits[0]} → derived", _rec_label("derived", hits[0])
    if (series.header.sop_class_uid or "").startswith(_SECONDARY_CAPTURE):
        return "derived", "SOPClassUID is Secondary Capture → derived", "derived"
    return "raw", None, None


def _localizer(f: _Facts) -> str | None:
    if f.is_epi and f.n_vol >= 10:
        return None  # a functional localizer task (e.g. "tfMRI_faceLocalizer") is BOLD
    m = _LOCALIZER.search(f.text)
    if m:
        return f"description word {m.group(0)!r} → localizer"
    m = _CALIBRATION.search(f.text)
    if m:
        return f"description word {m.group(0)!r} → calibration scan (localizer)"
    return None


# --------------------------------------------------------------------------- contrasts


def _anat_params(f: _Facts) -> tuple[str, bool] | None:
    """The anatomical suffix the sequence parameters point to, and whether that is firm."""
    te, tr, ti = f.te, f.tr, f.ti
    if f.ir:
        if ti is not None and ti >= 1400 and te is not None and te >= 60:
            return "FLAIR", True
        if te is not None and te < 15 and (ti is None or ti < 1400):
            return "T1w", True
        if f.se and ti is not None and 300 <= ti < 1400 and te is not None and te < 40:
            return "T1w", True
        return None
    if "MP" in f.sv and f.gr and te is not None and te < 15:
        return "T1w", True
    if f.gr and not f.se:
        if f.multi_echo:
            return "MEGRE", True
        if te is not None and te >= 15:
            return "T2starw", False
        if te is not None and (tr is None or tr < 1000):
            return "T1w", False  # a short-TE spoiled GRE; TOF and others look the same
        return None
    if f.se and te is not None and tr is not None:
        if te >= 60 and tr >= 1500:
            return "T2w", True
        if te < 30 and tr >= 1500:
            return "PDw", True
        if te < 30 and tr < 1000:
            return "T1w", True
    return None


def _anat_words(f: _Facts) -> tuple[str, str, bool] | None:
    """(suffix, reason, strong) from the first matching description word."""
    for suffix, pattern, strong in _ANAT_WORDS:
        m = pattern.search(f.text)
        if m:
            if suffix == "FLAIR" and re.search(r"\bt1", f.text):
                return "T1w", f"description words {m.group(0)!r} and t1 → T1w (T1-FLAIR)", True
            return suffix, f"description word {m.group(0).strip()!r} → {suffix}", strong
    return None


@dataclass(frozen=True)
class _Mp2rage:
    """What a series of a Siemens MP2RAGE acquisition is."""

    suffix: str | None  #: MP2RAGE (an inversion), UNIT1, T1map; None: the headers do not say
    entities: Mapping[str, str]
    reason: str
    reconstruction: str | None = None  #: of UNIT1/T1map: why it is raw data, not derived


def _mp2rage(f: _Facts) -> _Mp2rage | None:
    """The image of an MP2RAGE acquisition a series is, from the description word
    ``mp2rage``, the ``tfl3d`` sequence with an ``_INV1``/``_INV2``/``_UNI``/``_T1_Images``
    description, or ImageType UNI (which Siemens writes on MP2RAGE uniform images only)."""
    word = _MP2RAGE_WORD.search(f.text)
    seq = _MP2RAGE_SEQ.match(f.seq)
    part = _MP2RAGE_PART.search(f.desc)
    uni_type = "UNI" in f.image_type
    t1_type = bool(f.image_type & {"T1 MAP", "T1MAP", "T1_MAP"})
    if not (word or uni_type or (seq and part)):
        return None
    clues = [
        f"description word {word.group(0)!r}" if word else "",
        f"SequenceName {f.seq}" if seq else "",
        f"SeriesDescription {f.desc!r} ({part.group(1)})" if part else "",
        "ImageType UNI" if uni_type else "",
        "ImageType T1 MAP" if t1_type else "",
    ]
    what = f"MP2RAGE ({', '.join(c for c in clues if c)})"
    raw = "the scanner's own reconstruction, which BIDS keeps as raw data"
    if part is not None and part.group("inv"):
        n = part.group("inv")
        ti = f" (TI {_fmt(f.ti)} ms)" if f.ti else ""
        return _Mp2rage("MP2RAGE", {"inv": n}, f"{what}: inversion {n}{ti} → inv-{n} MP2RAGE")
    if part is not None and part.group("den"):
        return _Mp2rage(
            "UNIT1",
            {"rec": "denoised"},
            f"{what}: denoised uniform image (UNI-DEN) → UNIT1 rec-denoised",
            f"a denoised MP2RAGE uniform image is {raw} (UNIT1)",
        )
    if uni_type or (part is not None and part.group("uni")):
        return _Mp2rage(
            "UNIT1",
            {},
            f"{what}: uniform image (UNI) → UNIT1",
            f"an MP2RAGE uniform image is {raw} (UNIT1)",
        )
    if t1_type or (part is not None and part.group("t1")):
        return _Mp2rage(
            "T1map",
            {},
            f"{what}: T1 map → T1map",
            f"an MP2RAGE T1 map is {raw} (T1map)",
        )
    return _Mp2rage(
        None,
        {},
        f"{what}, but the description names none of its images (INV1, INV2, UNI, T1 map)",
    )


def _apply_mp2rage(d: _Draft, mp2: _Mp2rage, f: _Facts, series: Series) -> None:
    d.note(mp2.reason)
    if mp2.suffix is None:
        d.review = True
        return
    d.datatype, d.suffix = "anat", mp2.suffix
    d.entities.update(mp2.entities)
    _set_part(d, f)
    _set_echo(d, series)


def _decide_anat(d: _Draft, f: _Facts, series: Series) -> None:
    swi_raw = (
        re.search(r"\bswi\b", f.text)
        or re.match(r"^\*?swi", f.seq)
        or re.match(r"^(mag|pha)_images$", f.desc.lower())
    )
    if swi_raw and f.n_echo < 2:
        d.name(
            "anat",
            "T2starw",
            f"susceptibility-weighted raw images ({f.desc or f.seq}) → T2starw acq-swi",
        )
        d.entities.setdefault("acq", "swi")
        d.entities["part"] = "phase" if f.phase else "mag"
        return
    words = _anat_words(f)
    guess = _anat_params(f)
    param, firm = guess if guess else (None, False)
    suffix = None
    if words and param and words[0] != param:
        if (words[0], param) == ("T2starw", "MEGRE"):
            suffix = "MEGRE"
            d.note(f"{words[1]}; several echoes → MEGRE")
        elif not words[2]:
            suffix = param
            d.note(f"{f.params()} → {param} (over the {words[1]})")
        else:
            suffix = words[0]
            d.note(words[1])
            if words[0] not in _PARAM_BLIND:
                d.note(f"but {f.params()} suggests {param}")
                d.review = d.review or firm
    elif words:
        suffix = words[0]
        d.note(words[1])
        if param:
            d.note(f"{f.params()} → {param}")
    elif param:
        suffix = param
        d.note(f"{f.params()} → {param}")
    if suffix is None:
        return
    if suffix == "MEGRE" and f.n_echo < 2 and not d.entities.get("echo"):
        _set_echo(d, series)
        if not d.entities.get("echo"):
            suffix = "T2starw"
            d.note("a single echo: T2starw rather than MEGRE")
    d.datatype, d.suffix = "anat", suffix
    _set_part(d, f)
    if suffix != "MEGRE" or f.n_echo < 2:
        _set_echo(d, series)


def _decide_epi(d: _Draft, f: _Facts, series: Series) -> None:
    """BOLD, single-band reference or EPI field map."""
    epi = f"EPI ({f.epi}), {f.n_vol} volume(s)"
    sbref = _SBREF.search(f.text)
    fmap_word = _EPI_FMAP_WORDS.search(f.text)
    bold_word = _BOLD_WORDS.search(f.text)
    found_dir = _find_dir(f)
    if sbref:
        d.name("func", "sbref", f"{epi}, description word {sbref.group(0)!r} → sbref")
    elif fmap_word and f.n_vol <= 3:
        d.name("fmap", "epi", f"{epi}, description word {fmap_word.group(0)!r} → EPI field map")
    elif bold_word:
        d.name("func", "bold", f"{epi}, description word {bold_word.group(0)!r} → bold")
        if f.n_vol <= 2:
            d.note(f"only {f.n_vol} volume(s) for a BOLD run")
            d.review = True
    elif f.n_vol <= 3 and found_dir:
        d.name("fmap", "epi", f"{epi} with a stated phase-encoding direction → EPI field map")
    elif f.n_vol >= 10:
        d.name("func", "bold", f"{epi} → bold")
    else:
        d.name(
            "func",
            "bold",
            f"{epi}, no BOLD or field-map words → bold (could be a reference or a field map)",
        )
        d.review = True
    if d.datatype == "func":
        _set_task(d, f)
        _set_dir(d, f, series)
        _set_echo(d, series)
    else:
        _set_dir(d, f, series, required=True)
    _set_part(d, f)


def _decide(d: _Draft, f: _Facts, series: Series) -> None:
    """Datatype, suffix and entities from sequence parameters and description words."""
    asl = _ASL_WORDS.search(f.text) or _ASL_SEQ.search(f.seq) or ("ASL" in f.image_type)
    if asl:
        what = asl.group(0) if isinstance(asl, re.Match) else "ASL"
        if _M0_WORDS.search(f.text):
            d.name("perf", "m0scan", f"ASL ({what!r}) with M0 in the description → m0scan")
        else:
            d.name("perf", "asl", f"ASL ({what!r}) → perf asl")
        _set_dir(d, f, series)
        return
    reasons = []
    if f.b_max > 0:
        reasons.append(f"b-values up to {_fmt(f.b_max)} s/mm²")
    if _DWI_SEQ.search(f.seq):
        reasons.append(f"SequenceName {f.seq}")
    if "DIFFUSION" in f.image_type:
        reasons.append("ImageType contains DIFFUSION")
    words = _DWI_WORDS.search(f.text)
    if words:
        reasons.append(f"description word {words.group(0)!r}")
    if reasons:
        only_b0 = bool(series.b_values) and f.b_max == 0
        if _SBREF.search(f.text):
            d.name("dwi", "sbref", "diffusion (" + "; ".join(reasons) + "), SBRef → sbref")
        elif only_b0 and f.n_vol <= 3 and _find_dir(f):
            d.name(
                "fmap",
                "epi",
                f"diffusion sequence with only b=0 ({f.n_vol} volume(s)) and "
                "a stated direction → EPI field map of the DWI (corrects dwi images)",
            )
            d.corrects = ("dwi",)
        else:
            d.name("dwi", "dwi", "diffusion: " + "; ".join(reasons))
        _set_dir(d, f, series, required=d.suffix == "epi")
        _set_part(d, f)
        return
    if f.fieldmap_hz:
        d.name(
            "fmap",
            "fieldmap",
            "ImageType (or its frames' FrameType) says field map (Hz): fieldmap (+ magnitude)",
        )
        return
    fm_word = _GRE_FMAP_WORDS.search(f.text)
    why = (
        f"SequenceName {f.seq}"
        if _FMAP_SEQ.match(f.seq)
        else (f"description word {fm_word.group(0)!r}" if fm_word else None)
    )
    if why and not f.is_epi:
        component = (series.header.complex_image_component or "").upper()
        if component in ("MIXED", "REAL") and not f.phase:
            d.name(
                "fmap",
                "fieldmap",
                f"{why}: B0 map with {component} frames → fieldmap (+ magnitude)",
            )
        elif f.phase:
            d.name("fmap", "phasediff", f"{why}: GRE field map, phase image → phasediff")
        else:
            echoes = f", {f.n_echo} echoes" if f.n_echo >= 2 else ""
            d.name("fmap", "magnitude", f"{why}: GRE field map, magnitude{echoes} → magnitude")
        return
    if f.is_epi:
        _decide_epi(d, f, series)
        return
    _decide_anat(d, f, series)


def _derived_name(d: _Draft, f: _Facts, provenance: str, rec: str | None) -> None:
    """Best-effort BIDS name of a derived series (used when the user keeps it)."""
    if provenance == "dti_map":
        d.datatype, d.suffix = "dwi", "dwi"
        d.entities.pop("part", None)
    elif provenance == "swi":
        d.datatype, d.suffix = "anat", "T2starw"
        d.entities.pop("part", None)
        d.entities.pop("acq", None)
    elif provenance == "synthetic":
        for suffix, pattern in _SYNTHETIC_SUFFIX:
            if pattern.search(f.text):
                d.datatype, d.suffix = "anat", suffix
                d.note(f"synthetic {suffix} (description)")
                break
    if rec and d.datatype:
        d.entities.setdefault("rec", rec)


# --------------------------------------------------------------------------- automatic


def _apply_reproin(d: _Draft, r: ReproIn, f: _Facts, series: Series) -> None:
    d.datatype = r.datatype
    where = "SeriesDescription" if r.source == f.desc.strip() else "ProtocolName"
    d.note(f"{where} matches ReproIn {r.source!r}")
    if r.ignored:
        d.note(f"ReproIn {', '.join(r.ignored)} ignored (bidsport numbers runs and sessions)")
    d.entities.update(r.entities)
    suffix = r.suffix
    if r.label and suffix is None:
        d.note(f"ReproIn label {r.label!r} is not a suffix of datatype {r.datatype}: inferred")
    sbref = any(_SBREF.search(_norm(flag)) for flag in r.flags)
    if sbref and r.datatype in ("func", "dwi"):
        suffix = "sbref"
        d.note("SBRef → sbref")
    if suffix is None:
        if r.datatype == "func":
            suffix = "bold"
        elif r.datatype == "dwi":
            suffix = "dwi"
        elif r.datatype == "perf":
            suffix = "m0scan" if _M0_WORDS.search(f.text) else "asl"
        elif r.datatype == "fmap":
            if f.fieldmap_hz:
                suffix = "fieldmap"
            elif f.is_epi:
                suffix = "epi"
            else:
                suffix = "phasediff" if f.phase else "magnitude"
            d.note(f"field map kind from the headers: {suffix}")
        else:
            probe = _Draft()
            _decide_anat(probe, f, series)
            suffix = probe.suffix if probe.datatype == "anat" else None
            for text in probe.evidence:
                d.note(text)
            d.review = d.review or probe.review
    d.suffix = suffix
    if suffix is None:
        return
    if r.datatype == "func":
        _set_task(d, f)
    if r.datatype in ("func", "dwi", "perf") or suffix == "epi":
        _set_dir(d, f, series, required=suffix == "epi")
    if r.datatype != "fmap":
        _set_part(d, f)
    if suffix != "MEGRE" or f.n_echo < 2:
        _set_echo(d, series)


def _automatic(series: Series, f: _Facts, keep_derived: bool | Collection[str]) -> _Draft:
    d = _Draft()
    reproin = parse_reproin(f.desc) or parse_reproin(f.prot)
    localizer = (
        f"ReproIn {reproin.source!r} → localizer"
        if reproin is not None and reproin.localizer
        else (_localizer(f) if reproin is None else None)
    )
    if localizer:
        d.provenance, d.excluded = "localizer", "localizer"
        d.note(localizer)
        return d
    mp2 = _mp2rage(f) if reproin is None else None
    provenance, why, rec = _provenance(
        series, f, reconstruction=mp2.reconstruction if mp2 is not None else None
    )
    if why:
        d.provenance = provenance
        d.note(why)
    if reproin is not None:
        _apply_reproin(d, reproin, f, series)
    else:
        if mp2 is not None and provenance == "raw":
            _apply_mp2rage(d, mp2, f, series)
        else:
            _decide(d, f, series)
        acq = _ACQ_EXPLICIT.search(f.desc) or _ACQ_EXPLICIT.search(f.prot)
        if acq and d.datatype and not d.entities.get("acq"):
            d.entities["acq"] = acq.group(1)
            d.note(f"description says acq-{acq.group(1)}")
    if provenance != "raw":
        _derived_name(d, f, provenance, rec)
        d.excluded = _derived_exclusion(provenance, keep_derived)
        if d.excluded is None and (d.datatype is None or d.suffix is None):
            d.excluded = f"derived: {provenance}, no BIDS name for it"
            d.review = True
    if d.datatype is None or d.suffix is None:
        d.datatype = d.suffix = None
        if d.excluded is None:
            d.note(f"no datatype/suffix from the description or {f.params()}")
            d.excluded = f"unrecognized: {_summary(series, f)}"
            d.review = True
    elif d.datatype == "func" and d.suffix in ("bold", "sbref", "cbv"):
        _set_task(d, f)
    return d


def _apply_rule(
    rule: Rule, series: Series, f: _Facts, keep_derived: bool | Collection[str]
) -> Classification:
    auto = _automatic(series, f, keep_derived)
    why = rule_evidence(rule, series)
    if rule.exclude is not None:
        d = replace(
            auto,
            excluded=f"rule {rule.name!r}: {rule.exclude}",
            review=False,
            evidence=[why, *auto.evidence],
            entities=dict(auto.entities),
        )
        d.provenance = rule.provenance or auto.provenance
        return d.freeze(rule.name)
    if rule.datatype is not None:
        d = _Draft(
            datatype=rule.datatype,
            suffix=rule.suffix,
            provenance=rule.provenance or auto.provenance,
            evidence=[why],
        )
        if (auto.datatype, auto.suffix) != (rule.datatype, rule.suffix):
            d.note(f"overrides the automatic {auto.datatype or '-'}/{auto.suffix or '-'}")
        keep = set(auto.entities) if auto.datatype == rule.datatype else {"dir", "echo", "part"}
        kept = {k: v for k, v in auto.entities.items() if k in keep and k not in rule.entities}
        if kept:
            shown = ", ".join(f"{k}-{v}" for k, v in kept.items())
            d.note(f"keeps {shown} of the automatic name ({'; '.join(auto.evidence)})")
        d.entities.update(kept)
        _set_rule_entities(d, rule, auto.entities)
        if d.datatype == "func" and d.suffix in ("bold", "sbref", "cbv"):
            if d.entities.get("task") == "unknown" and "task" not in rule.entities:
                del d.entities["task"]
            _set_task(d, f)
        if rule.review is not None:
            d.review = rule.review
        return _with_sidecar(d, rule)
    d = replace(auto, evidence=[why, *auto.evidence], entities=dict(auto.entities))
    _set_rule_entities(d, rule, auto.entities)
    if rule.provenance is not None and rule.provenance != auto.provenance:
        d.provenance = rule.provenance
        by_provenance = auto.excluded is None or auto.excluded.startswith(("derived:", "localizer"))
        if by_provenance:
            if rule.provenance == "localizer":
                d.excluded = "localizer"
            elif rule.provenance in DERIVED_PROVENANCES and _derived_exclusion(
                rule.provenance, keep_derived
            ):
                d.excluded = _derived_exclusion(rule.provenance, keep_derived)
            elif d.datatype is None or d.suffix is None:
                d.excluded = f"unrecognized: {_summary(series, f)}"
            else:
                d.excluded = None
    if rule.review is not None:
        d.review = rule.review
    return _with_sidecar(d, rule)


def _set_rule_entities(d: _Draft, rule: Rule, automatic: Mapping[str, str]) -> None:
    """The entities ``rule`` sets, said in the evidence (with what they replace)."""
    if not rule.entities:
        return
    shown = []
    for key, value in rule.entities.items():
        was = automatic.get(key)
        shown.append(f"{key}-{value}" + (f" (not {key}-{was})" if was and was != value else ""))
    d.entities.update(rule.entities)
    d.note(f"rule {rule.name!r} sets {', '.join(shown)}")


def _with_sidecar(d: _Draft, rule: Rule) -> Classification:
    """``d`` frozen, with the sidecar keys and the datatypes to correct that ``rule`` sets
    (said in the evidence)."""
    if rule.corrects is not None:
        if _linked(d.datatype, d.suffix):
            d.corrects = rule.corrects
            d.note(
                f"rule {rule.name!r}: corrects only {', '.join(rule.corrects)} images"
                if rule.corrects
                else f"rule {rule.name!r}: corrects no image"
            )
        else:
            d.note(f"rule {rule.name!r} sets corrects, ignored: not a B0 fieldmap or M0 scan")
    if rule.sidecar:
        shown = ", ".join(f"{key} = {json.dumps(value)}" for key, value in rule.sidecar.items())
        d.note(f"rule {rule.name!r} sets in the sidecar: {shown}")
    return replace(d.freeze(rule.name), sidecar=dict(rule.sidecar))


# --------------------------------------------------------------------------- public


def classify_series(
    series: Series,
    rules: Sequence[Rule] = (),
    *,
    keep_derived: bool | Collection[str] = False,
) -> Classification:
    """The BIDS name, provenance and reasons for one series (pure).

    ``keep_derived``: True keeps every derived provenance (synthetic, swi, projection,
    subtraction, derived); a collection keeps those named. Kept derived series carry a
    ``rec`` entity; others are excluded but still named as well as possible. DTI maps
    (dti_map) are never kept: as ``dwi`` images they would take the DWI's bval/bvec.
    """
    f = _facts(series)
    for rule in rules:
        if rule_matches(rule, series):
            result = _apply_rule(rule, series, f, keep_derived)
            break
    else:
        result = _automatic(series, f, keep_derived).freeze()
    log.debug(
        "series %s: %s/%s %s (%s)%s",
        series.series_id,
        result.datatype,
        result.suffix,
        dict(result.entities),
        result.provenance,
        f" excluded: {result.excluded}" if result.excluded else "",
    )
    return result


def _plane(orientation: Sequence[float]) -> str | None:
    """sagittal/coronal/axial: the axis closest to the normal of ImageOrientationPatient."""
    if len(orientation) != 6:
        return None
    r, c = orientation[:3], orientation[3:]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    axis = max(range(3), key=lambda i: abs(normal[i]))
    return ("sagittal", "coronal", "axial")[axis]


def _three_plane_uids(series_list: Sequence[Series]) -> set[str]:
    planes: dict[str, set[str]] = defaultdict(set)
    for s in series_list:
        plane = _plane(s.header.image_orientation)
        if s.header.series_uid and plane:
            planes[s.header.series_uid].add(plane)
    return {uid for uid, found in planes.items() if len(found) == 3}


def _pair_key(series: Series, cls: Classification) -> tuple[object, ...]:
    entities = tuple((k, v) for k, v in cls.entities.items() if k != "part")
    h = series.header
    return (
        h.protocol_name or h.series_description,
        (h.acquisition_time or "")[:6],
        cls.datatype,
        cls.suffix,
        entities,
    )


def classify_all(
    series_list: Iterable[Series],
    rules: Sequence[Rule] = (),
    *,
    keep_derived: bool | Collection[str] = False,
) -> list[Classification]:
    """Classify every series of one session, then make the names work together.

    * the pieces of one SeriesInstanceUID that hold sagittal, coronal and axial images
      (split by geometry when grouped) are a localizer;
    * the magnitude partner of a ``part-phase`` series (same protocol, acquisition time,
      datatype, suffix and entities) gets ``part-mag``;
    * reconstructions of one acquisition (same protocol, acquisition date and time, name)
      that differ in Siemens' ImageType NORM (prescan normalize) or ND/DIS2D/DIS3D
      (distortion correction) get a ``rec`` label (``rec-norm``, ``rec-nd``...) rather than
      run numbers, which would present them as several acquisitions;
    * when kept series of different protocols would share a name (run numbering would
      mix them), each gets ``acq-<its SeriesDescription>`` unless it has an ``acq``.
    """
    pairs = [(s, classify_series(s, rules, keep_derived=keep_derived)) for s in series_list]
    three_planes = _three_plane_uids([s for s, _ in pairs])
    for i, (s, c) in enumerate(pairs):
        if s.header.series_uid in three_planes and c.rule is None and c.excluded != "localizer":
            why = "its SeriesInstanceUID holds sagittal, coronal and axial images → localizer"
            pairs[i] = (s, Classification(None, None, {}, "localizer", (why,), "localizer"))
    results = [c for _, c in pairs]
    # part-mag for the magnitude partner of a phase series
    phase_keys = {
        _pair_key(s, c)
        for s, c in pairs
        if c.excluded is None and c.entities.get("part") == "phase"
    }
    for i, (s, c) in enumerate(pairs):
        if (
            c.excluded is None
            and "part" not in c.entities
            and _pair_key(s, c) in phase_keys
            and "part" in allowed_entities(c.datatype or "", c.suffix or "")
        ):
            results[i] = _with(
                c, {"part": "mag"}, "a phase series of the same protocol exists: part-mag"
            )
    _label_reconstructions([s for s, _ in pairs], results)
    # acq where different protocols would share a name (ReproIn names and rules are kept)
    groups: dict[tuple[object, ...], list[int]] = defaultdict(list)
    for i, c in enumerate(results):
        h = pairs[i][0].header
        named = (
            c.rule is not None
            or parse_reproin(h.series_description)
            or parse_reproin(h.protocol_name)
        )
        if c.excluded is None and c.datatype and c.suffix and not named:
            groups[(c.datatype, c.suffix, tuple(sorted(c.entities.items())))].append(i)
    labels = {i: _protocol_label(pairs[i][0], results[i]) for m in groups.values() for i in m}
    given: dict[tuple[object, ...], str] = {}  # (datatype, suffix, label) → acq given
    for members in groups.values():
        if len({labels[i].lower() for i in members}) < 2:
            continue
        for i in members:
            c = results[i]
            if (
                labels[i]
                and "acq" not in c.entities
                and "acq" in allowed_entities(c.datatype or "", c.suffix or "")
            ):
                results[i] = _with(
                    c,
                    {"acq": labels[i]},
                    f"several protocols share this name: acq-{labels[i]} from SeriesDescription",
                )
                given[(c.datatype, c.suffix, labels[i].lower())] = labels[i]
    # the other fieldmaps of a protocol that got an acq label get it too (an AP/PA pair
    # whose PA image shares its name with another protocol's is one pair, by acq)
    for members in groups.values():
        for i in members:
            c = results[i]
            acq = given.get((c.datatype, c.suffix, labels[i].lower()))
            if c.datatype == "fmap" and acq and "acq" not in c.entities:
                results[i] = _with(
                    c, {"acq": acq}, f"acq-{acq}: the label another fieldmap of its protocol got"
                )
    return results


#: ImageType values (Siemens) of a reconstruction: distortion correction off (ND) or on
_DISTORTION = ("ND", "DIS2D", "DIS3D")


def _recon_flags(series: Series) -> tuple[bool, str | None]:
    """(prescan-normalized: ImageType NORM, the distortion-correction value) of a series."""
    values = {v.upper() for v in series.header.image_type}
    for image_type in series.image_types:
        values |= {v.upper() for v in image_type}
    return "NORM" in values, next((v for v in _DISTORTION if v in values), None)


def _label_reconstructions(series_list: Sequence[Series], results: list[Classification]) -> None:
    """``rec`` labels for the reconstructions of one acquisition that would share a name.

    Siemens saves the images of one acquisition with and without prescan normalization
    (ImageType NORM) or distortion correction (ND: none, DIS2D/DIS3D); each such series has
    the protocol and acquisition time of the others. Only the ImageType values that differ
    make the label: ``rec-norm`` for the normalized one (the other keeps its name), or
    ``rec-nd``/``rec-dis2d``..., or both (``rec-dis2dnorm``). ``results`` is updated.
    """
    groups: dict[tuple[object, ...], list[int]] = defaultdict(list)
    for i, (s, c) in enumerate(zip(series_list, results, strict=True)):
        when = s.acquisition_time or s.header.acquisition_time or ""
        if c.excluded is not None or not (c.datatype and c.suffix) or not when[:6]:
            continue
        if "rec" in c.entities or "rec" not in allowed_entities(c.datatype, c.suffix):
            continue
        h = s.header
        key = (
            h.protocol_name or h.series_description,
            s.acquisition_date or h.acquisition_date,
            when[:6],
            c.datatype,
            c.suffix,
            tuple(sorted(c.entities.items())),
        )
        groups[key].append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        flags = {i: _recon_flags(series_list[i]) for i in members}
        by_norm = len({norm for norm, _ in flags.values()}) > 1
        by_distortion = len({dist for _, dist in flags.values()}) > 1
        if not (by_norm or by_distortion):
            continue  # the same reconstruction twice: left to run numbering
        labels = {
            i: ((dist or "").lower() if by_distortion else "")
            + ("norm" if by_norm and norm else "")
            for i, (norm, dist) in flags.items()
        }
        if len(set(labels.values())) < len(members):
            continue  # the ImageType does not tell them apart
        differ = " and ".join(
            what
            for what, used in (
                ("NORM (prescan normalize)", by_norm),
                ("ND/DIS2D/DIS3D (distortion correction)", by_distortion),
            )
            if used
        )
        numbers = ", ".join(str(series_list[i].header.series_number or "?") for i in members)
        for i in members:
            norm, dist = flags[i]
            mine = ", ".join(
                ([("with" if norm else "without") + " NORM"] if by_norm else [])
                + ([dist or "no ND/DIS value"] if by_distortion else [])
            )
            why = (
                f"series {numbers}: one acquisition (same protocol and acquisition time) "
                f"reconstructed {len(members)} times, ImageType differs in {differ}; "
                f"this one ({mine}) "
            )
            if labels[i]:
                results[i] = _with(results[i], {"rec": labels[i]}, why + f"→ rec-{labels[i]}")
            else:
                results[i] = _with(results[i], {}, why + "keeps its name without rec")


def _protocol_label(series: Series, cls: Classification | None = None) -> str:
    """An ``acq`` label from the SeriesDescription (or ProtocolName), without "WIP" and
    without the direction that the ``dir`` entity of ``cls`` gives; of an MP2RAGE image,
    from the ProtocolName that its series share (or the description without _INV1...)."""
    h = series.header
    text = re.sub(r"^WIP\s+", "", h.series_description or h.protocol_name or "")
    if cls is not None and cls.suffix in _MP2RAGE_SUFFIXES:  # one label for INV1, UNI...
        stripped = re.sub(r"^WIP\s+", "", h.protocol_name or "") or _MP2RAGE_PART.sub("", text)
        if sanitize_label(stripped):
            text = stripped
    direction = cls.entities.get("dir") if cls is not None else None
    if direction:
        stripped = re.sub(
            rf"(?<![A-Za-z0-9]){re.escape(direction)}(?![A-Za-z0-9])", "", text, flags=re.I
        )
        if sanitize_label(stripped):
            text = stripped
    return sanitize_label(text)


def _with(cls: Classification, entities: Mapping[str, str], why: str) -> Classification:
    merged = {**cls.entities, **entities}
    ordered = {k: merged[k] for k in ENTITY_ORDER if k in merged}
    return replace(cls, entities=ordered, evidence=(*cls.evidence, why))
