"""Classification: synthetic header tables per vendor, real vendor headers, and a BIDS check.

The table cases build FileHeader/Series records directly, with header values as the
scanners write them. The real-data tests read every series of ../shared/data/*/In and
check the datatype/suffix that the Ref/ names and the dataset READMEs call for. The last
test writes a tiny dataset of every name the classifier emitted and runs the BIDS
validator on it.
"""

from __future__ import annotations

import collections
import json
import shutil
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bidsport.classify import (
    allowed_entities,
    classify_all,
    classify_series,
    parse_reproin,
)
from bidsport.naming import bids_basename, map_outputs
from bidsport.records import DATATYPES, PROVENANCES, Classification, FileHeader, Series
from bidsport.runner import run_command

MR = "1.2.840.10008.5.1.4.1.1.4"
ORIG = ("ORIGINAL", "PRIMARY", "M", "ND")


def hdr(
    desc: str | None,
    *,
    prot: str | None = None,
    manufacturer: str = "SIEMENS",
    image_type: Sequence[str] = ORIG,
    ss: Sequence[str] = (),
    sv: Sequence[str] = (),
    so: Sequence[str] = (),
    seq: str | None = None,
    tr: float | None = None,
    te: float | None = None,
    ti: float | None = None,
    flip: float | None = None,
    mracq: str = "2D",
    pe: str | None = "COL",
    cic: str | None = None,
    sop: str = MR,
    echo: int | None = 1,
    b: float | None = None,
    time: str = "101010.000000",
) -> FileHeader:
    return FileHeader(
        path=Path("in/0001.dcm"),
        size=1000,
        mtime_ns=0,
        sop_class_uid=sop,
        modality="MR",
        manufacturer=manufacturer,
        series_description=desc,
        protocol_name=prot if prot is not None else desc,
        sequence_name=seq,
        image_type=tuple(image_type),
        scanning_sequence=tuple(ss),
        sequence_variant=tuple(sv),
        scan_options=tuple(so),
        mr_acquisition_type=mracq,
        repetition_time=tr,
        echo_time=te,
        inversion_time=ti,
        flip_angle=flip,
        b_value=b,
        in_plane_phase_encoding=pe,
        image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        echo_number=echo,
        complex_image_component=cic,
        acquisition_time=time,
        has_pixel_data=True,
    )


def ser(
    h: FileHeader,
    *,
    vols: int = 1,
    b_values: Sequence[float] = (),
    echoes: Sequence[int] = (1,),
    tes: Sequence[float] | None = None,
    image_types: Sequence[Sequence[str]] | None = None,
    series_id: str | None = None,
    n_files: int = 4,
) -> Series:
    return Series(
        series_id=series_id or f"1.2.3.{abs(hash((h.series_description, h.image_type))) % 10**6}",
        header=h,
        files=tuple(Path(f"in/{i:04d}.dcm") for i in range(n_files)),
        n_volumes=vols,
        b_values=tuple(b_values),
        echo_numbers=tuple(echoes),
        echo_times=tuple(tes) if tes is not None else ((h.echo_time,) if h.echo_time else ()),
        image_types=tuple(tuple(t) for t in (image_types or [h.image_type])),
        acquisition_time=h.acquisition_time,
    )


@dataclass(frozen=True)
class Case:
    id: str
    series: Series
    datatype: str | None
    suffix: str | None
    entities: dict[str, str] = field(default_factory=dict)
    provenance: str = "raw"
    excluded: str | None = None  #: expected prefix of Classification.excluded
    review: bool = False
    evidence: str | None = None  #: a substring one evidence line must contain


DERIVED = "derived: "

# --------------------------------------------------------------------------- Siemens
SIEMENS = [
    Case(
        "si-localizer",
        ser(
            hdr("localizer", seq="*fl2d1", ss=("GR",), sv=("SP",), tr=8.6, te=4.0, flip=20),
            n_files=3,
        ),
        None,
        None,
        provenance="localizer",
        excluded="localizer",
        evidence="localizer",
    ),
    Case(
        "si-aahead-scout-mpr",
        ser(
            hdr(
                "AAHead_Scout_64ch-head-coil_MPR_sag",
                image_type=("DERIVED", "PRIMARY", "MPR", "ND"),
                seq="*fl3d1_ns",
                ss=("GR",),
            )
        ),
        None,
        None,
        provenance="localizer",
        excluded="localizer",
    ),
    Case(
        "si-mprage",
        ser(
            hdr(
                "t1_mprage_sag_p2_iso",
                seq="*tfl3d1_16ns",
                ss=("GR", "IR"),
                sv=("SK", "SP", "MP"),
                tr=2300,
                te=2.98,
                ti=900,
                flip=9,
                mracq="3D",
                image_type=(*ORIG, "NORM"),
            )
        ),
        "anat",
        "T1w",
        evidence="TI 900 ms",
    ),
    Case(
        "si-mprage-mpr",
        ser(
            hdr(
                "t1_mprage_sag_p2_iso_MPR_Tra",
                image_type=("DERIVED", "SECONDARY", "MPR", "ND", "NORM"),
                seq="*tfl3d1_16ns",
                ss=("GR", "IR"),
                tr=2300,
                te=2.98,
                ti=900,
            )
        ),
        "anat",
        "T1w",
        {"rec": "MPR"},
        provenance="derived",
        excluded=DERIVED,
    ),
    Case(
        "si-t2-space",
        ser(
            hdr(
                "t2_spc_sag_p2_iso",
                seq="*spc_314ns",
                ss=("SE",),
                sv=("SK", "SP", "OSP"),
                tr=3200,
                te=410,
                flip=120,
                mracq="3D",
            )
        ),
        "anat",
        "T2w",
    ),
    Case(
        "si-flair",
        ser(
            hdr(
                "t2_tirm_tra_dark-fluid",
                seq="*tir2d1_21",
                ss=("SE", "IR"),
                sv=("SK", "SP", "MP"),
                tr=9000,
                te=81,
                ti=2500,
                flip=150,
            )
        ),
        "anat",
        "FLAIR",
    ),
    Case(
        "si-flair-params-only",
        ser(
            hdr(
                "protocol_7",
                seq="*tir2d1_21",
                ss=("SE", "IR"),
                sv=("SK", "SP", "MP"),
                tr=9000,
                te=81,
                ti=2500,
            )
        ),
        "anat",
        "FLAIR",
        evidence="TI 2500 ms",
    ),
    Case(
        "si-pd",
        ser(hdr("pd_tse_tra", seq="*tse2d1_5", ss=("SE",), sv=("SK", "SP"), tr=3000, te=12)),
        "anat",
        "PDw",
    ),
    Case(
        "si-pd-params-only",
        ser(hdr("protocol_8", seq="*tse2d1_5", ss=("SE",), tr=3000, te=12)),
        "anat",
        "PDw",
    ),
    Case(
        "si-t2star",
        ser(hdr("t2star_gre_tra", seq="*fl2d1", ss=("GR",), sv=("SP",), tr=600, te=20, flip=20)),
        "anat",
        "T2starw",
    ),
    Case(
        "si-megre",
        ser(
            hdr(
                "gre_me_6echoes",
                seq="*fl3d6r",
                ss=("GR",),
                sv=("SP",),
                tr=40,
                te=4.0,
                flip=15,
                mracq="3D",
            ),
            echoes=(1, 2, 3, 4, 5, 6),
            tes=(4, 8, 12, 16, 20, 24),
        ),
        "anat",
        "MEGRE",
        evidence="6 echoes",
    ),
    Case(
        "si-megre-split-echo",
        ser(hdr("gre_me_6echoes", seq="*fl3d6r", ss=("GR",), tr=40, te=12.0, echo=3), echoes=(3,)),
        "anat",
        "MEGRE",
        {"echo": "3"},
    ),
    Case(
        "si-tof",
        ser(
            hdr(
                "tof_fl3d_tra_p2_multi-slab",
                seq="*fl3d1r_t70",
                ss=("GR",),
                tr=21,
                te=3.4,
                flip=18,
                mracq="3D",
            )
        ),
        "anat",
        "angio",
    ),
    Case(
        "si-tof-mip",
        ser(
            hdr(
                "tof_fl3d_tra_p2_multi-slab_MIP_SAG",
                image_type=("DERIVED", "PRIMARY", "MIP_SAG", "ND"),
                seq="*fl3d1r_t70",
                ss=("GR",),
                tr=21,
                te=3.4,
            )
        ),
        "anat",
        "angio",
        {"rec": "MIP"},
        provenance="projection",
        excluded=DERIVED,
    ),
    Case(
        "si-swi-mag",
        ser(
            hdr(
                "Mag_Images",
                prot="swi_tra_1.5mm",
                seq="*swi3d1r",
                ss=("GR",),
                tr=27,
                te=20,
                mracq="3D",
                image_type=(*ORIG, "NORM"),
            )
        ),
        "anat",
        "T2starw",
        {"acq": "swi", "part": "mag"},
    ),
    Case(
        "si-swi-pha",
        ser(
            hdr(
                "Pha_Images",
                prot="swi_tra_1.5mm",
                seq="*swi3d1r",
                ss=("GR",),
                tr=27,
                te=20,
                mracq="3D",
                image_type=("ORIGINAL", "PRIMARY", "P", "ND"),
            )
        ),
        "anat",
        "T2starw",
        {"acq": "swi", "part": "phase"},
    ),
    Case(
        "si-swi-minip",
        ser(
            hdr(
                "mIP_Images(SW)",
                prot="swi_tra_1.5mm",
                seq="*swi3d1r",
                ss=("GR",),
                te=20,
                image_type=("DERIVED", "PRIMARY", "MNIP", "ND", "NORM"),
            )
        ),
        "anat",
        "T2starw",
        {"rec": "minIP"},
        provenance="swi",
        excluded=DERIVED,
        evidence="ImageType contains MNIP",
    ),
    Case(
        "si-swi-processed",
        ser(
            hdr(
                "SWI_Images",
                prot="swi_tra_1.5mm",
                seq="*swi3d1r",
                ss=("GR",),
                te=20,
                image_type=("DERIVED", "PRIMARY", "SWI", "ND", "NORM"),
            )
        ),
        "anat",
        "T2starw",
        {"rec": "SWI"},
        provenance="swi",
        excluded=DERIVED,
    ),
    Case(
        "si-rest-sbref",
        ser(
            hdr(
                "rfMRI_REST_AP_SBRef",
                prot="rfMRI_REST_AP",
                seq="epfid2d1_64",
                ss=("EP",),
                sv=("SK",),
                tr=800,
                te=37,
                flip=52,
                image_type=(*ORIG, "MOSAIC"),
            )
        ),
        "func",
        "sbref",
        {"task": "rest", "dir": "AP"},
    ),
    Case(
        "si-rest-bold",
        ser(
            hdr(
                "rfMRI_REST_AP",
                seq="epfid2d1_64",
                ss=("EP",),
                sv=("SK",),
                tr=800,
                te=37,
                flip=52,
                image_type=(*ORIG, "MOSAIC"),
            ),
            vols=420,
        ),
        "func",
        "bold",
        {"task": "rest", "dir": "AP"},
    ),
    Case(
        "si-wm-bold",
        ser(
            hdr(
                "tfMRI_WM_PA",
                seq="epfid2d1_64",
                ss=("EP",),
                tr=720,
                te=33,
                image_type=(*ORIG, "MOSAIC"),
            ),
            vols=405,
        ),
        "func",
        "bold",
        {"task": "WM", "dir": "PA"},
    ),
    Case(
        "si-task-named-fa",
        ser(
            hdr(
                "fMRI_FA",
                seq="epfid2d1_64",
                ss=("EP",),
                tr=2000,
                te=30,
                image_type=(*ORIG, "MOSAIC"),
            ),
            vols=200,
        ),
        "func",
        "bold",
        {"task": "FA"},
    ),
    Case(
        "si-bold-no-words",
        ser(
            hdr(
                "ep2d_64_3mm",
                seq="epfid2d1_64",
                ss=("EP",),
                tr=2000,
                te=30,
                image_type=(*ORIG, "MOSAIC"),
            ),
            vols=150,
        ),
        "func",
        "bold",
        {"task": "unknown"},
        review=True,
    ),
    Case(
        "si-bold-moco",
        ser(
            hdr(
                "ep2d_bold_moco",
                seq="epfid2d1_64",
                ss=("EP",),
                tr=2000,
                te=30,
                image_type=("DERIVED", "PRIMARY", "M", "ND", "MOSAIC", "MOCO"),
            ),
            vols=150,
        ),
        "func",
        "bold",
        {"task": "unknown", "rec": "moco"},
        provenance="derived",
        excluded=DERIVED,
        review=True,
    ),
    Case(
        "si-multiecho-bold-echo2",
        ser(
            hdr("cmrr_mbep2d_ME_rest", seq="epfid2d1_64", ss=("EP",), tr=1500, te=30.0, echo=2),
            vols=300,
            echoes=(2,),
        ),
        "func",
        "bold",
        {"task": "rest", "echo": "2"},
    ),
    Case(
        "si-bold-phase",
        ser(
            hdr(
                "rfMRI_REST_AP",
                seq="epfid2d1_64",
                ss=("EP",),
                tr=800,
                te=37,
                image_type=("ORIGINAL", "PRIMARY", "P", "ND", "MOSAIC"),
            ),
            vols=420,
        ),
        "func",
        "bold",
        {"task": "rest", "dir": "AP", "part": "phase"},
    ),
    Case(
        "si-se-fieldmap-ap",
        ser(
            hdr(
                "SpinEchoFieldMap_AP",
                seq="epse2d1_90",
                ss=("EP",),
                sv=("SK",),
                tr=8000,
                te=66,
                flip=90,
                image_type=(*ORIG, "MOSAIC"),
            ),
            vols=3,
        ),
        "fmap",
        "epi",
        {"dir": "AP"},
    ),
    Case(
        "si-se-fieldmap-nodir",
        ser(
            hdr(
                "SpinEchoFieldMap",
                seq="epse2d1_90",
                ss=("EP",),
                tr=8000,
                te=66,
                image_type=(*ORIG, "MOSAIC"),
            ),
            vols=3,
        ),
        "fmap",
        "epi",
        {},
        review=True,
        evidence="polarity",
    ),
    Case(
        "si-dwi",
        ser(
            hdr(
                "dMRI_dir98_AP",
                seq="*ep_b1000#1",
                ss=("EP",),
                sv=("SK", "SP"),
                tr=3230,
                te=89,
                image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND", "MOSAIC"),
            ),
            vols=99,
            b_values=(0, 1000, 2000),
        ),
        "dwi",
        "dwi",
        {"dir": "AP"},
        evidence="b-values up to 2000",
    ),
    Case(
        "si-dwi-sbref",
        ser(
            hdr(
                "dMRI_dir98_AP_SBRef",
                prot="dMRI_dir98_AP",
                seq="*ep_b0",
                ss=("EP",),
                tr=3230,
                te=89,
            ),
            b_values=(0,),
        ),
        "dwi",
        "sbref",
        {"dir": "AP"},
    ),
    Case(
        "si-dwi-b0-reverse",
        ser(hdr("dwi_b0_PA", seq="*ep_b0", ss=("EP",), tr=3230, te=89), vols=2, b_values=(0,)),
        "fmap",
        "epi",
        {"dir": "PA"},
    ),
    Case(
        "si-adc",
        ser(
            hdr(
                "dMRI_dir98_AP_ADC",
                seq="*ep_b0_2000",
                ss=("EP",),
                image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"),
            )
        ),
        "dwi",
        "dwi",
        {"dir": "AP", "rec": "ADC"},
        provenance="dti_map",
        excluded=DERIVED,
        evidence="ImageType contains ADC",
    ),
    Case(
        "si-tracew",
        ser(
            hdr(
                "ep2d_diff_3scan_trace_p2_TRACEW",
                seq="*ep_b1000t",
                ss=("EP",),
                image_type=("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW", "ND"),
            )
        ),
        "dwi",
        "dwi",
        {"rec": "TRACEW"},
        provenance="dti_map",
        excluded=DERIVED,
    ),
    Case(
        "si-fa",
        ser(
            hdr(
                "dMRI_dir98_AP_FA",
                seq="*ep_b0_2000",
                ss=("EP",),
                image_type=("DERIVED", "PRIMARY", "DIFFUSION", "FA", "ND"),
            )
        ),
        "dwi",
        "dwi",
        {"dir": "AP", "rec": "FA"},
        provenance="dti_map",
        excluded=DERIVED,
    ),
    Case(
        "si-colfa",
        ser(
            hdr(
                "dMRI_dir98_AP_ColFA",
                seq="*ep_b0_2000",
                ss=("EP",),
                image_type=("DERIVED", "PRIMARY", "DIFFUSION", "FA", "ND", "COLFA"),
            )
        ),
        "dwi",
        "dwi",
        {"dir": "AP", "rec": "ColFA"},
        provenance="dti_map",
        excluded=DERIVED,
    ),
    Case(
        "si-gre-fmap-mag",
        ser(
            hdr(
                "gre_field_mapping", seq="*fm2d2r", ss=("GR",), sv=("SP",), tr=500, te=4.92, flip=60
            ),
            echoes=(1, 2),
            tes=(4.92, 7.38),
        ),
        "fmap",
        "magnitude",
        evidence="*fm2d2r",
    ),
    Case(
        "si-gre-fmap-phase",
        ser(
            hdr(
                "gre_field_mapping",
                seq="*fm2d2r",
                ss=("GR",),
                tr=500,
                te=7.38,
                echo=2,
                image_type=("ORIGINAL", "PRIMARY", "P", "ND"),
            ),
            echoes=(2,),
        ),
        "fmap",
        "phasediff",
    ),
    Case(
        "si-pcasl",
        ser(
            hdr(
                "tgse_pcasl_PLD1800",
                seq="tgse_mv3d1_2000",
                ss=("GR", "SE"),
                tr=4600,
                te=14,
                mracq="3D",
                image_type=("ORIGINAL", "PRIMARY", "ASL", "NONE"),
            ),
            vols=12,
        ),
        "perf",
        "asl",
    ),
    Case(
        "si-pasl",
        ser(
            hdr(
                "ep2d_pasl",
                seq="epfid2d1_64",
                ss=("EP",),
                tr=2500,
                te=13,
                image_type=("ORIGINAL", "PRIMARY", "ASL", "NONE", "MOSAIC"),
            ),
            vols=91,
        ),
        "perf",
        "asl",
    ),
    Case(
        "si-asl-m0",
        ser(hdr("tgse_pcasl_M0_PA", seq="tgse_mv3d1_2000", ss=("GR", "SE"), tr=8000, te=14)),
        "perf",
        "m0scan",
        {"dir": "PA"},
    ),
    Case(
        "si-asl-cbf",
        ser(
            hdr(
                "tgse_pcasl_PLD1800_relCBF",
                seq="tgse_mv3d1_2000",
                image_type=("DERIVED", "PRIMARY", "ASL", "RELCBF"),
            )
        ),
        "perf",
        "asl",
        {"rec": "derived"},
        provenance="derived",
        excluded=DERIVED,
    ),
    Case(
        "si-phoenix-report",
        ser(
            hdr(
                "PhoenixZIPReport",
                image_type=("ORIGINAL", "PRIMARY", "OTHER"),
                sop="1.2.840.10008.5.1.4.1.1.7",
                pe=None,
            )
        ),
        None,
        None,
        provenance="derived",
        excluded=DERIVED,
    ),
    Case(
        "si-subtraction",
        ser(
            hdr(
                "t1_vibe_fs_tra_SUB",
                seq="*fl3d1",
                ss=("GR",),
                tr=4.2,
                te=1.9,
                image_type=("DERIVED", "PRIMARY", "SUBTRACTION", "ND"),
            )
        ),
        "anat",
        "T1w",
        {"rec": "sub"},
        provenance="subtraction",
        excluded=DERIVED,
    ),
]

SIEMENS += [
    Case(
        "si-t1-named-for-fmri",
        ser(
            hdr(
                "t1_mprage_for_fMRI_reg",
                seq="*tfl3d1_16ns",
                ss=("GR", "IR"),
                tr=2300,
                te=2.98,
                ti=900,
            )
        ),
        "anat",
        "T1w",
    ),
    Case(
        "si-acq-in-description",
        ser(hdr("T2_acq-highres_tse", seq="*tse2d1_15", ss=("SE",), tr=5000, te=90)),
        "anat",
        "T2w",
        {"acq": "highres"},
        evidence="acq-highres",
    ),
]

SIEMENS += [
    Case(
        "si-functional-localizer-task",
        ser(hdr("tfMRI_faceLocalizer_AP", seq="epfid2d1_64", ss=("EP",), tr=800, te=37), vols=240),
        "func",
        "bold",
        {"task": "faceLocalizer", "dir": "AP"},
    ),
    Case(
        "si-aaheadscout-one-word",
        ser(hdr("AAHeadScout32", seq="*fl3d1_ns", ss=("GR",), tr=3.2, te=1.4)),
        None,
        None,
        provenance="localizer",
        excluded="localizer",
    ),
]

SIEMENS += [
    Case(
        "si-t1-tse",
        ser(hdr("t1_tse_tra", seq="*tse2d1_3", ss=("SE",), tr=600, te=9.5)),
        "anat",
        "T1w",
    ),
    Case(
        "si-gre-3d-short-te",
        ser(hdr("gre_3d_sag", seq="*fl3d1", ss=("GR",), tr=9, te=3.2, flip=12)),
        "anat",
        "T1w",
        evidence="over the description word 'gre'",
    ),
]

# Siemens MP2RAGE: the series of one acquisition, named <protocol>_INV1, _INV2, _UNI_Images,
# _UNI-DEN, _T1_Images, with the ImageType values the scanner writes on each.
MP2RAGE = {
    "seq": "*tfl3d1_16",
    "ss": ("GR", "IR"),
    "sv": ("SK", "SP", "MP"),
    "tr": 5000,
    "te": 2.9,
    "mracq": "3D",
}
NORM = (*ORIG, "NORM")
UNI = ("DERIVED", "PRIMARY", "M", "ND", "UNI")
SIEMENS += [
    Case(
        "si-mp2rage-inv1",
        ser(hdr("t1_mp2rage_sag_p3_iso_INV1", ti=700, image_type=NORM, **MP2RAGE)),
        "anat",
        "MP2RAGE",
        {"inv": "1"},
        evidence="inversion 1 (TI 700 ms) → inv-1 MP2RAGE",
    ),
    Case(
        "si-mp2rage-inv2",
        ser(hdr("t1_mp2rage_sag_p3_iso_INV2", ti=2500, image_type=NORM, **MP2RAGE)),
        "anat",
        "MP2RAGE",
        {"inv": "2"},
        evidence="description word 'mp2rage'",
    ),
    Case(
        "si-mp2rage-inv1-phase",
        ser(
            hdr(
                "t1_mp2rage_sag_p3_iso_PHS_INV1",
                ti=700,
                image_type=("ORIGINAL", "PRIMARY", "P", "ND", "PHASE"),
                **MP2RAGE,
            )
        ),
        "anat",
        "MP2RAGE",
        {"inv": "1", "part": "phase"},
    ),
    Case(
        "si-mp2rage-uni",
        ser(hdr("t1_mp2rage_sag_p3_iso_UNI_Images", image_type=UNI, **MP2RAGE)),
        "anat",
        "UNIT1",
        evidence="ImageType contains DERIVED, but an MP2RAGE uniform image is the scanner's",
    ),
    Case(
        "si-mp2rage-uni-den",
        ser(hdr("t1_mp2rage_sag_p3_iso_UNI-DEN", image_type=UNI, **MP2RAGE)),
        "anat",
        "UNIT1",
        {"rec": "denoised"},
        evidence="denoised uniform image (UNI-DEN)",
    ),
    Case(
        "si-mp2rage-t1map",
        ser(
            hdr(
                "t1_mp2rage_sag_p3_iso_T1_Images",
                image_type=("DERIVED", "PRIMARY", "T1 MAP", "ND"),
                **MP2RAGE,
            )
        ),
        "anat",
        "T1map",
        evidence="T1 map → T1map",
    ),
    Case(  # no "mp2rage" in the protocol name: the tfl3d sequence and the _INV2 part tell
        "si-mp2rage-unnamed-inv2",
        ser(hdr("t1_2inv_sag_INV2", ti=2500, image_type=NORM, **MP2RAGE)),
        "anat",
        "MP2RAGE",
        {"inv": "2"},
        evidence="SequenceName *tfl3d1_16",
    ),
    Case(  # a reformat of the UNI image stays derived
        "si-mp2rage-uni-mpr",
        ser(
            hdr(
                "t1_mp2rage_sag_p3_iso_UNI_Images_MPR_Tra",
                image_type=("DERIVED", "SECONDARY", "MPR", "ND", "UNI"),
                **MP2RAGE,
            )
        ),
        "anat",
        "T1w",
        {"rec": "MPR"},
        provenance="derived",
        excluded=DERIVED,
    ),
    Case(  # which image it is, nothing says: not taken for a T1w
        "si-mp2rage-which",
        ser(hdr("mp2rage_sag", ti=700, image_type=NORM, **MP2RAGE)),
        None,
        None,
        excluded="unrecognized: ",
        review=True,
        evidence="names none of its images (INV1, INV2, UNI, T1 map)",
    ),
]

# --------------------------------------------------------------------------- GE
GE_TYPE = ("ORIGINAL", "PRIMARY", "OTHER")
GE = [
    Case(
        "ge-3plane",
        ser(
            hdr(
                "3Plane Loc SSFSE",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("SE",),
                so=("FAST_GEMS",),
                tr=1300,
                te=80,
            )
        ),
        None,
        None,
        provenance="localizer",
        excluded="localizer",
    ),
    Case(
        "ge-asset-cal",
        ser(
            hdr(
                "ASSET calibration",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("GR",),
                tr=150,
                te=1.4,
            )
        ),
        None,
        None,
        provenance="localizer",
        excluded="localizer",
        evidence="calibration",
    ),
    Case(
        "ge-bravo",
        ser(
            hdr(
                "Sag 3D BRAVO",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                seq="efgre3d",
                ss=("GR",),
                sv=("SS", "SK"),
                so=("FAST_GEMS", "EDR_GEMS", "IR_GEMS"),
                tr=8.2,
                te=3.2,
                ti=450,
                mracq="3D",
            )
        ),
        "anat",
        "T1w",
    ),
    Case(
        "ge-mprage",
        ser(
            hdr(
                "3D Ax T1 MP-RAGE_R22",
                prot="Brain Advanced Sequences",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("RM", "IR"),
                sv=("NONE",),
                so=("EDR_GEMS", "IR_GEMS"),
                tr=2217.66,
                te=3.172,
                ti=1000,
                mracq="3D",
            )
        ),
        "anat",
        "T1w",
    ),
    Case(
        "ge-t2-frfse",
        ser(
            hdr(
                "Ax T2 FRFSE",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("SE",),
                sv=("SK", "OSP"),
                so=("FAST_GEMS",),
                tr=4000,
                te=102,
            )
        ),
        "anat",
        "T2w",
    ),
    Case(
        "ge-cube-t1",
        ser(
            hdr(
                "Sag CUBE T1",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("SE",),
                tr=550,
                te=14,
                mracq="3D",
            )
        ),
        "anat",
        "T1w",
    ),
    Case(
        "ge-cube-t2",
        ser(
            hdr(
                "Sag CUBE T2",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("SE",),
                tr=2500,
                te=90,
                mracq="3D",
            )
        ),
        "anat",
        "T2w",
    ),
    Case(
        "ge-flair",
        ser(
            hdr(
                "Ax T2 FLAIR",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("SE", "IR"),
                so=("FAST_GEMS", "IR_GEMS"),
                tr=9000,
                te=120,
                ti=2250,
            )
        ),
        "anat",
        "FLAIR",
    ),
    Case(
        "ge-t1-flair",
        ser(
            hdr(
                "Sag T1 FLAIR",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("SE", "IR"),
                tr=2000,
                te=10,
                ti=750,
            )
        ),
        "anat",
        "T1w",
    ),
    Case(
        "ge-fmri-rest",
        ser(
            hdr(
                "Resting State fMRI",
                manufacturer="GE MEDICAL SYSTEMS",
                seq="epiRT",
                image_type=("ORIGINAL", "PRIMARY", "EPI", "NONE"),
                ss=("EP", "GR"),
                sv=("SS",),
                so=("EPI_GEMS",),
                tr=2000,
                te=30,
            ),
            vols=240,
        ),
        "func",
        "bold",
        {"task": "rest"},
    ),
    Case(
        "ge-dti",
        ser(
            hdr(
                "Ax DTI 30dir",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("EP", "SE"),
                so=("EPI_GEMS",),
                seq="epi2",
                tr=8000,
                te=85,
            ),
            vols=35,
            b_values=(0, 1000),
        ),
        "dwi",
        "dwi",
    ),
    Case(
        "ge-b0map",
        ser(
            hdr(
                "B0map",
                manufacturer="GE MEDICAL SYSTEMS",
                seq="b0map",
                image_type=("ORIGINAL", "PRIMARY", "B0MAP"),
                ss=("GR",),
                tr=8,
                te=1.5,
            )
        ),
        "fmap",
        "fieldmap",
    ),
    Case(
        "ge-swan",
        ser(
            hdr(
                "Ax SWAN",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("GR",),
                tr=40,
                te=25,
                mracq="3D",
            )
        ),
        "anat",
        "T2starw",
        {"rec": "SWAN"},
        provenance="swi",
        excluded=DERIVED,
    ),
    Case(
        "ge-swan-echoes",
        ser(
            hdr(
                "Ax SWAN",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("GR",),
                tr=40,
                te=5,
                mracq="3D",
            ),
            echoes=(1, 2, 3, 4),
            tes=(5, 12, 19, 26),
        ),
        "anat",
        "MEGRE",
    ),
    Case(
        "ge-magic-t2",
        ser(
            hdr(
                "MAGiC T2 FLAIR",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=("DERIVED", "PRIMARY", "SYNTHETIC", "FLAIR"),
            )
        ),
        "anat",
        "FLAIR",
        {"rec": "synthetic"},
        provenance="synthetic",
        excluded=DERIVED,
    ),
    Case(
        "ge-3d-asl",
        ser(
            hdr(
                "3D ASL (non-contrast)",
                manufacturer="GE MEDICAL SYSTEMS",
                image_type=GE_TYPE,
                ss=("RM",),
                tr=4800,
                te=10.5,
                mracq="3D",
            ),
            vols=2,
        ),
        "perf",
        "asl",
    ),
]

# --------------------------------------------------------------------------- Philips
PH = "Philips Medical Systems"
PHILIPS = [
    Case(
        "ph-survey",
        ser(
            hdr(
                "Survey",
                prot="WIP Survey",
                manufacturer=PH,
                image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
                ss=("GR",),
                tr=11,
                te=4.6,
            )
        ),
        None,
        None,
        provenance="localizer",
        excluded="localizer",
    ),
    Case(
        "ph-t1w3d",
        ser(
            hdr(
                "WIP T1W3D",
                prot="WIP T1W3D",
                manufacturer=PH,
                image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
                ss=("GR",),
                sv=("MP",),
                so=("SP",),
                tr=8.0,
                te=4.6,
                mracq="3D",
            )
        ),
        "anat",
        "T1w",
    ),
    Case(
        "ph-t1-params-only",
        ser(
            hdr(
                "sT1W_3D_TFE_ANAT",
                manufacturer=PH,
                image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
                ss=("GR",),
                sv=("MP",),
                tr=8.1,
                te=3.7,
                mracq="3D",
            )
        ),
        "anat",
        "T1w",
    ),
    Case(
        "ph-t1w3d-phase",
        ser(
            hdr(
                "WIP T1W3D",
                manufacturer=PH,
                image_type=("ORIGINAL", "PRIMARY", "P_FFE", "P", "FFE"),
                ss=("GR",),
                sv=("MP",),
                tr=8.0,
                te=4.6,
                mracq="3D",
            )
        ),
        "anat",
        "T1w",
        {"part": "phase"},
    ),
    Case(
        "ph-t2-tse",
        ser(
            hdr(
                "T2W_TSE",
                manufacturer=PH,
                image_type=("ORIGINAL", "PRIMARY", "M_SE", "M", "SE"),
                ss=("SE",),
                sv=("SK",),
                tr=3000,
                te=80,
            )
        ),
        "anat",
        "T2w",
    ),
    Case(
        "ph-flair",
        ser(
            hdr(
                "T2W_FLAIR",
                manufacturer=PH,
                image_type=("ORIGINAL", "PRIMARY", "M_IR", "M", "IR"),
                ss=("SE", "IR"),
                tr=11000,
                te=125,
                ti=2800,
            )
        ),
        "anat",
        "FLAIR",
    ),
    Case(
        "ph-t2star",
        ser(
            hdr(
                "T2*W_FFE",
                manufacturer=PH,
                image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
                ss=("GR",),
                tr=650,
                te=16,
            )
        ),
        "anat",
        "T2starw",
    ),
    Case(
        "ph-dti",
        ser(
            hdr(
                "DTI_high_32dir",
                prot="WIP DTI_high_32dir SENSE",
                manufacturer=PH,
                image_type=("ORIGINAL", "PRIMARY", "M_SE", "M", "SE"),
                ss=("SE",),
                sv=("SK",),
                tr=8800,
                te=58,
            ),
            vols=33,
            b_values=(0, 1000),
        ),
        "dwi",
        "dwi",
    ),
    Case(
        "ph-dti-isotropic",
        ser(
            hdr(
                "DTI_high_32dir",
                manufacturer=PH,
                image_type=("DERIVED", "PRIMARY", "ISOTROPIC", "M", "SE"),
                ss=("SE",),
                tr=8800,
                te=58,
            ),
            b_values=(1000,),
        ),
        "dwi",
        "dwi",
        {"rec": "ISOTROPIC"},
        provenance="dti_map",
        excluded=DERIVED,
    ),
    Case(
        "ph-fmri-nback",
        ser(
            hdr(
                "fMRI_nback",
                prot="WIP fMRI_nback",
                manufacturer=PH,
                image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
                ss=("GR",),
                sv=("SK",),
                so=("FS",),
                tr=2000,
                te=30,
            ),
            vols=150,
        ),
        "func",
        "bold",
        {"task": "nback"},
    ),
    Case(
        "ph-swip",
        ser(
            hdr(
                "SWIp",
                manufacturer=PH,
                image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
                ss=("GR",),
                tr=31,
                te=7.2,
                mracq="3D",
            )
        ),
        "anat",
        "T2starw",
        {"rec": "SWI"},
        provenance="swi",
        excluded=DERIVED,
    ),
    Case(
        "ph-b0-mixed",
        ser(
            hdr(
                "B0 NS",
                prot="WIP B0 NS",
                manufacturer=PH,
                image_type=("ORIGINAL", "PRIMARY", "T1", "MIXED"),
                ss=("GR",),
                cic="MIXED",
                mracq="3D",
            )
        ),
        "fmap",
        "fieldmap",
        evidence="MIXED",
    ),
    Case(
        "ph-resting-enhanced",
        ser(
            hdr(
                "resting_state",
                prot="WIP resting_state",
                manufacturer=PH,
                seq="FEEPI",
                image_type=("ORIGINAL", "PRIMARY", "PROTON", "DENSITY", "NONE"),
                ss=("EP", "GR"),
                tr=1500,
                te=8.2,
            ),
            vols=200,
        ),
        "func",
        "bold",
        {"task": "rest"},
    ),
]

# --------------------------------------------------------------------------- UIH, Canon
OTHERS = [
    Case(
        "uih-dti-pa",
        ser(
            hdr(
                "dti_tra_dir16_PA",
                manufacturer="UIH",
                seq="epi_dti",
                image_type=("ORIGINAL", "PRIMARY", "M", "VFRAME"),
                ss=("EP",),
                sv=("NONE",),
                so=("FS",),
                tr=5865,
                te=70.7,
            ),
            vols=17,
        ),
        "dwi",
        "dwi",
        {"dir": "PA"},
    ),
    Case(
        "uih-t1",
        ser(
            hdr(
                "t1_gre_fsp_3d_sag",
                manufacturer="UIH",
                seq="gre_fsp",
                image_type=("ORIGINAL", "PRIMARY", "M"),
                ss=("GR",),
                tr=7.2,
                te=3.1,
                ti=900,
                mracq="3D",
            )
        ),
        "anat",
        "T1w",
    ),
    Case(
        "canon-dti",
        ser(
            hdr(
                "DTI_PA-ortho",
                manufacturer="Canon",
                seq="DTI_PA-ortho",
                image_type=("ORIGINAL", "PRIMARY", "GDC", "NONE"),
                tr=10000,
                te=79,
            ),
            vols=33,
        ),
        "dwi",
        "dwi",
        {"dir": "PA"},
    ),
    Case(
        "canon-t2",
        ser(
            hdr(
                "T2W_FSE_tra",
                manufacturer="TOSHIBA",
                image_type=("ORIGINAL", "PRIMARY"),
                ss=("SE",),
                tr=4500,
                te=100,
            )
        ),
        "anat",
        "T2w",
    ),
    Case(
        "unknown",
        ser(hdr("research_seq_x", ss=("RM",), seq="", image_type=("ORIGINAL", "PRIMARY")), vols=1),
        None,
        None,
        excluded="unrecognized: SeriesDescription='research_seq_x'",
        review=True,
    ),
]

# --------------------------------------------------------------------------- ReproIn
REPROIN = [
    Case(
        "ri-t1",
        ser(
            hdr(
                "anat-T1w_acq-mprage", seq="*tfl3d1_16ns", ss=("GR", "IR"), tr=2300, te=2.98, ti=900
            )
        ),
        "anat",
        "T1w",
        {"acq": "mprage"},
        evidence="ReproIn 'anat-T1w_acq-mprage'",
    ),
    Case(
        "ri-bold",
        ser(
            hdr("func-bold_task-rest_run-01", seq="epfid2d1_64", ss=("EP",), tr=800, te=37),
            vols=300,
        ),
        "func",
        "bold",
        {"task": "rest"},
        evidence="run-01 ignored",
    ),
    Case(
        "ri-bold-sbref",
        ser(
            hdr(
                "func-bold_task-rest_run-01_SBRef",
                prot="func-bold_task-rest_run-01",
                seq="epfid2d1_64",
                ss=("EP",),
                tr=800,
                te=37,
            )
        ),
        "func",
        "sbref",
        {"task": "rest"},
    ),
    Case(
        "ri-fmap-epi",
        ser(hdr("fmap-epi_dir-AP", seq="epse2d1_90", ss=("EP",), tr=8000, te=66), vols=3),
        "fmap",
        "epi",
        {"dir": "AP"},
    ),
    Case(
        "ri-dwi",
        ser(hdr("dwi_dir-AP", seq="*ep_b1000#1", ss=("EP",)), vols=99, b_values=(0, 1000)),
        "dwi",
        "dwi",
        {"dir": "AP"},
    ),
    Case(
        "ri-dwi-adc",
        ser(
            hdr(
                "dwi_dir-AP_ADC",
                prot="dwi_dir-AP",
                seq="*ep_b0_1000",
                ss=("EP",),
                image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"),
            )
        ),
        "dwi",
        "dwi",
        {"dir": "AP", "rec": "ADC"},
        provenance="dti_map",
        excluded=DERIVED,
    ),
    Case(
        "ri-scout",
        ser(hdr("anat-scout", seq="*fl2d1", ss=("GR",))),
        None,
        None,
        provenance="localizer",
        excluded="localizer",
    ),
    Case(
        "ri-fmap-phase",
        ser(
            hdr(
                "fmap_acq-3mm",
                seq="*fm2d2r",
                ss=("GR",),
                te=7.38,
                echo=2,
                image_type=("ORIGINAL", "PRIMARY", "P", "ND"),
            ),
            echoes=(2,),
        ),
        "fmap",
        "phasediff",
        {"acq": "3mm"},
    ),
    Case(
        "ri-anat-infer",
        ser(hdr("anat_acq-highres", seq="*spc_314ns", ss=("SE",), tr=3200, te=410)),
        "anat",
        "T2w",
        {"acq": "highres"},
    ),
    Case(
        "ri-func-nolabel",
        ser(hdr("func_task-nback", seq="epfid2d1_64", ss=("EP",)), vols=200),
        "func",
        "bold",
        {"task": "nback"},
    ),
    Case(
        "ri-func-notask",
        ser(hdr("func-bold_acq-mb8", seq="epfid2d1_64", ss=("EP",)), vols=200),
        "func",
        "bold",
        {"task": "unknown", "acq": "mb8"},
        review=True,
    ),
    Case(
        "ri-perf",
        ser(hdr("perf-asl_acq-pcasl", seq="tgse_mv3d1_2000"), vols=12),
        "perf",
        "asl",
        {"acq": "pcasl"},
    ),
    Case(
        "ri-philips-wip",
        ser(hdr("WIP func-bold_task-faces", manufacturer=PH, ss=("GR",)), vols=200),
        "func",
        "bold",
        {"task": "faces"},
    ),
]

CASES = SIEMENS + GE + PHILIPS + OTHERS + REPROIN


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_table(case: Case) -> None:
    cls = classify_series(case.series)
    got = (cls.datatype, cls.suffix, dict(cls.entities), cls.provenance)
    assert got == (case.datatype, case.suffix, case.entities, case.provenance), cls.evidence
    if case.excluded is None:
        assert cls.excluded is None, cls.evidence
    else:
        assert cls.excluded is not None and cls.excluded.startswith(case.excluded), cls
    assert cls.review is case.review, cls.evidence
    assert cls.evidence, "every decision carries its reasons"
    if case.evidence:
        assert any(case.evidence in line for line in cls.evidence), cls.evidence
    assert cls.rule is None
    assert cls.provenance in PROVENANCES
    assert cls.datatype is None or cls.datatype in DATATYPES


def test_every_datatype_suffix_and_provenance_is_covered() -> None:
    results = [classify_series(c.series) for c in CASES]
    assert {r.provenance for r in results} == set(PROVENANCES)
    assert {r.datatype for r in results} == {*DATATYPES, None}
    wanted = {
        "T1w",
        "T2w",
        "FLAIR",
        "PDw",
        "T2starw",
        "MEGRE",
        "angio",
        "bold",
        "sbref",
        "dwi",
        "epi",
        "magnitude",
        "phasediff",
        "fieldmap",
        "asl",
        "m0scan",
    }
    assert wanted <= {r.suffix for r in results}


def test_evidence_names_tags_and_values() -> None:
    mprage = next(c for c in CASES if c.id == "si-mprage")
    evidence = classify_series(mprage.series).evidence
    assert any(
        "ScanningSequence GR\\IR" in e and "TI 900 ms" in e and "T1w" in e for e in evidence
    ), evidence
    adc = next(c for c in CASES if c.id == "si-adc")
    assert "ImageType contains ADC → dti_map" in classify_series(adc.series).evidence


def test_derived_kept_with_keep_derived() -> None:
    mip = next(c for c in CASES if c.id == "si-tof-mip").series
    mpr = next(c for c in CASES if c.id == "si-mprage-mpr").series
    report = next(c for c in CASES if c.id == "si-phoenix-report").series
    kept = classify_series(mip, keep_derived=True)
    assert kept.excluded is None and kept.entities == {"rec": "MIP"}
    assert classify_series(mip, keep_derived={"projection"}).excluded is None
    assert classify_series(mpr, keep_derived={"projection"}).excluded.startswith("derived: derived")
    assert classify_series(mpr, keep_derived=True).excluded is None
    nameless = classify_series(report, keep_derived=True)
    assert nameless.excluded is not None and nameless.review


def test_dti_maps_are_never_converted_not_even_kept() -> None:
    """An ADC/FA/trace map has no raw BIDS name: as a dwi image it would take the bval/bvec
    of the DWI (the validator's VOLUME_COUNT_MISMATCH), so --keep-derived does not keep it,
    and the reason says so (not "use --keep-derived")."""
    for case in (c for c in CASES if c.provenance == "dti_map"):
        for keep in (False, True, {"dti_map"}):
            cls = classify_series(case.series, keep_derived=keep)
            assert cls.excluded is not None, (case.id, keep)
            assert cls.excluded.startswith("derived: dti_map, a map the scanner computed")
            assert "even with --keep-derived" in cls.excluded and "bval/bvec" in cls.excluded
            assert "use --keep-derived" not in cls.excluded and not cls.review, case.id


def test_raw_series_never_get_rec_and_localizers_are_never_kept() -> None:
    for case in CASES:
        cls = classify_series(case.series, keep_derived=True)
        if cls.provenance == "raw":  # but a scanner reconstruction that says which one
            assert "rec" not in cls.entities or any("rec-" in e for e in cls.evidence), case.id
        if cls.provenance == "localizer":
            assert cls.excluded == "localizer", case.id


def test_entities_are_allowed_and_in_bids_order() -> None:
    from bidsport.naming import ENTITY_ORDER

    for case in CASES:
        cls = classify_series(case.series, keep_derived=True)
        keys = list(cls.entities)
        assert keys == [k for k in ENTITY_ORDER if k in cls.entities], case.id
        if cls.datatype and cls.suffix:
            assert set(keys) <= allowed_entities(cls.datatype, cls.suffix), case.id
        for value in cls.entities.values():
            assert value.isalnum(), (case.id, value)


def test_session_pass_adds_part_mag_and_acq() -> None:
    mag = ser(
        hdr(
            "WIP T1W3D",
            manufacturer=PH,
            image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
            ss=("GR",),
            sv=("MP",),
            tr=8.0,
            te=4.6,
        ),
        series_id="a",
    )
    pha = ser(
        hdr(
            "WIP T1W3D",
            manufacturer=PH,
            image_type=("ORIGINAL", "PRIMARY", "P_FFE", "P", "FFE"),
            ss=("GR",),
            sv=("MP",),
            tr=8.0,
            te=4.6,
        ),
        series_id="b",
    )
    other = ser(
        hdr(
            "t1_mprage_sag",
            seq="*tfl3d1_16ns",
            ss=("GR", "IR"),
            tr=2300,
            te=2.98,
            ti=900,
            time="111111.000000",
        ),
        series_id="c",
    )
    again = ser(
        hdr(
            "t1_mprage_sag",
            seq="*tfl3d1_16ns",
            ss=("GR", "IR"),
            tr=2300,
            te=2.98,
            ti=900,
            time="121212.000000",
        ),
        series_id="d",
    )
    highres = ser(
        hdr("t1_mprage_highres", seq="*tfl3d1_16ns", ss=("GR", "IR"), tr=2500, te=3.1, ti=1000),
        series_id="e",
    )
    results = classify_all([mag, pha, other, again, highres])
    assert [dict(r.entities) for r in results] == [
        {"part": "mag"},
        {"part": "phase"},
        {"acq": "t1mpragesag"},
        {"acq": "t1mpragesag"},
        {"acq": "t1mpragehighres"},
    ]
    assert "part-mag" in results[0].evidence[-1]
    assert "acq-t1mpragehighres" in results[4].evidence[-1]
    # the same protocol repeated gets no acq (run numbering tells the repeats apart)
    assert [dict(r.entities) for r in classify_all([other, again])] == [{}, {}]
    # a phase series without its magnitude partner leaves other series alone
    assert [dict(r.entities) for r in classify_all([pha, other])] == [{"part": "phase"}, {}]


def test_three_orthogonal_planes_of_one_series_are_a_localizer() -> None:
    from dataclasses import replace

    planes = {
        "sag": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        "cor": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
        "tra": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    }
    pieces = []
    for i, orientation in enumerate(planes.values(), start=1):
        h = hdr("t1_fl2d", seq="*fl2d1", ss=("GR",), tr=8.6, te=4.0, flip=20)
        h = replace(h, series_uid="1.2.3.9", image_orientation=orientation)
        pieces.append(ser(h, series_id=f"1.2.3.9-geom{i}", n_files=1))
    alone = classify_series(pieces[0])
    assert (alone.datatype, alone.suffix) == ("anat", "T1w")  # one piece cannot tell
    results = classify_all(pieces)
    assert all(r.excluded == "localizer" and r.provenance == "localizer" for r in results)
    assert "sagittal, coronal and axial" in results[0].evidence[0]
    # two planes only (e.g. a sagittal and an axial stack): left alone
    assert classify_all(pieces[:2])[0].suffix == "T1w"


def test_typical_synthetic_session(tmp_path: Path) -> None:
    """DICOM files written by bidsport.synthetic, read back, grouped and classified."""
    from bidsport.synthetic import typical_session, write_series

    files: list[Path] = []
    for spec in typical_session():
        files += write_series(spec, tmp_path / "dicom")
    series = _read_series(files)
    got = {
        (s.header.series_number, s.header.series_description): (
            c.datatype,
            c.suffix,
            dict(c.entities),
            c.provenance,
            c.excluded is None,
        )
        for s, c in zip(series, classify_all(series), strict=True)
    }
    assert got == {
        (1, "localizer"): (None, None, {}, "localizer", False),
        (2, "t1_mprage_sag"): ("anat", "T1w", {}, "raw", True),
        (3, "t2_spc_sag"): ("anat", "T2w", {}, "raw", True),
        (4, "t2_flair_tra"): ("anat", "FLAIR", {}, "raw", True),
        (5, "rfMRI_REST_AP_SBRef"): ("func", "sbref", {"task": "rest", "dir": "AP"}, "raw", True),
        (6, "rfMRI_REST_AP"): ("func", "bold", {"task": "rest", "dir": "AP"}, "raw", True),
        (7, "dMRI_dir6_AP"): ("dwi", "dwi", {"dir": "AP"}, "raw", True),
        (8, "gre_field_mapping"): ("fmap", "magnitude", {}, "raw", True),
        (9, "gre_field_mapping"): ("fmap", "phasediff", {}, "raw", True),
        (10, "dMRI_dir6_AP_ADC"): ("dwi", "dwi", {"dir": "AP", "rec": "ADC"}, "dti_map", False),
    }


def test_reproin_parser() -> None:
    r = parse_reproin("func-bold_ses-pre_task-rest_acq-mb8_run-02_dir-AP__custom stuff")
    assert r is not None
    assert (r.datatype, r.suffix, dict(r.entities)) == (
        "func",
        "bold",
        {"task": "rest", "acq": "mb8", "dir": "AP"},
    )
    assert r.ignored == ("ses-pre", "run-02")
    assert parse_reproin("PREFIX: anat-T1w").suffix == "T1w"  # type: ignore[union-attr]
    assert parse_reproin("anat-scout").localizer  # type: ignore[union-attr]
    assert parse_reproin("anat-notasuffix_acq-x").suffix is None  # type: ignore[union-attr]
    for text in ("t1_mprage_sag", "dwi", "functional_scan", "", None):
        assert parse_reproin(text) is None, text


# --------------------------------------------------------------------------- real headers

_REAL_TAGS: list[Any] = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "Manufacturer",
    "SeriesNumber",
    "InstanceNumber",
    "AcquisitionNumber",
    "EchoNumbers",
    "TemporalPositionIdentifier",
    "SeriesDescription",
    "ProtocolName",
    "SequenceName",
    "PulseSequenceName",
    "ImageType",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "DiffusionBValue",
    "InPlanePhaseEncodingDirection",
    "NumberOfFrames",
    "AcquisitionTime",
    "ComplexImageComponent",
    "ImagePositionPatient",
    "EchoPulseSequence",
    "EchoPlanarPulseSequence",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    (0x0019, 0x0010),
    (0x0019, 0x100C),
    (0x2001, 0x0010),
    (0x2001, 0x1003),
    (0x0043, 0x0010),
    (0x0043, 0x1039),
]


def _num(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _strs(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split("\\") if isinstance(value, str) else list(value)
    return tuple(str(v).strip() for v in items if str(v).strip())


def _functional(ds: Any, keyword: str) -> Any:
    """A value from the first item of an enhanced file's shared/per-frame groups."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for element in (ds.get(groups) or [None])[0] or ():
            if element.VR == "SQ" and element.value and keyword in element.value[0]:
                return element.value[0].get(keyword)
    return None


def _b_value(ds: Any) -> float | None:
    for tag in ("DiffusionBValue", (0x0019, 0x100C), (0x2001, 0x1003)):
        value = ds.get(tag)
        value = getattr(value, "value", value)
        if isinstance(value, bytes):
            value = value.decode(errors="ignore").strip("\0 ")
        if _num(value) is not None:
            return _num(value)
    ge = ds.get((0x0043, 0x1039))
    if ge is not None and _num(ge.value[0]) is not None:
        return float(ge.value[0]) % 1e9  # GE stores 1e9 + b on some releases
    return None


def _local_header(path: Path) -> tuple[FileHeader, list[tuple[str, ...]], int, set[Any]]:
    """Stand-in for bidsport.header.read_header: a FileHeader plus frame details."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_REAL_TAGS)

    def get(keyword: str) -> Any:
        value = ds.get(keyword)
        return value if value not in (None, "") else _functional(ds, keyword)

    scanning = _strs(ds.get("ScanningSequence"))
    if not scanning and ds.get("EchoPulseSequence"):  # enhanced MR
        scanning = {"GRADIENT": ("GR",), "SPIN": ("SE",), "BOTH": ("SE", "GR")}.get(
            ds.EchoPulseSequence, ()
        )
        if ds.get("EchoPlanarPulseSequence") == "YES":
            scanning = ("EP", *scanning)
        if _functional(ds, "InversionRecovery") == "YES":
            scanning = (*scanning, "IR")
    frame_types: list[tuple[str, ...]] = []
    positions: set[Any] = set()
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    for frame in frames or ():
        ftype = frame.get("MRImageFrameTypeSequence")
        kind = tuple(str(v).upper() for v in ftype[0].FrameType) if ftype else ()
        frame_types.append(kind)
        plane = frame.get("PlanePositionSequence")
        positions.add((kind, tuple(plane[0].ImagePositionPatient) if plane else None))
    if not frames:
        positions.add(tuple(ds.get("ImagePositionPatient") or ()))
    header = FileHeader(
        path=path,
        size=path.stat().st_size,
        mtime_ns=path.stat().st_mtime_ns,
        sop_class_uid=str(ds.get("SOPClassUID") or "") or None,
        series_uid=str(ds.get("SeriesInstanceUID") or "") or None,
        manufacturer=ds.get("Manufacturer"),
        series_number=int(ds.SeriesNumber) if ds.get("SeriesNumber") is not None else None,
        instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") is not None else None,
        echo_number=int(ds.EchoNumbers) if ds.get("EchoNumbers") not in (None, "") else None,
        series_description=(ds.get("SeriesDescription") or "").strip() or None,
        protocol_name=(ds.get("ProtocolName") or "").strip() or None,
        sequence_name=(ds.get("SequenceName") or ds.get("PulseSequenceName") or "").strip() or None,
        image_type=tuple(v.upper() for v in _strs(ds.get("ImageType"))),
        scanning_sequence=scanning,
        sequence_variant=_strs(ds.get("SequenceVariant")),
        scan_options=_strs(ds.get("ScanOptions")),
        mr_acquisition_type=ds.get("MRAcquisitionType"),
        repetition_time=_num(get("RepetitionTime")),
        echo_time=_num(ds.get("EchoTime")) or _num(_functional(ds, "EffectiveEchoTime")),
        inversion_time=_num(ds.get("InversionTime")),
        flip_angle=_num(get("FlipAngle")),
        b_value=_b_value(ds),
        in_plane_phase_encoding=get("InPlanePhaseEncodingDirection") or None,
        number_of_frames=int(ds.NumberOfFrames) if ds.get("NumberOfFrames") else None,
        acquisition_time=ds.get("AcquisitionTime"),
        has_pixel_data=True,
        complex_image_component=ds.get("ComplexImageComponent"),
    )
    return header, frame_types, len(frames) if frames else 1, positions


def _local_series(files: Sequence[Path]) -> list[Series]:
    """Stand-in for bidsport.index.group_series: one Series per (UID, series number)."""
    groups = collections.defaultdict(list)
    for path in files:
        item = _local_header(path)
        groups[(item[0].series_uid, item[0].series_number)].append(item)
    result = []
    for (uid, number), items in groups.items():
        items.sort(key=lambda x: (x[0].instance_number or 0, str(x[0].path)))
        first = items[0][0]
        images = sum(n for _, _, n, _ in items)
        positions = set().union(*(p for *_, p in items))
        volumes = len(items) if "MOSAIC" in first.image_type else images // max(1, len(positions))
        types = {h.image_type for h, *_ in items} | {t for _, ft, *_ in items for t in ft if t}
        result.append(
            Series(
                series_id=f"{uid}.{number}",
                header=first,
                files=tuple(h.path for h, *_ in items),
                n_volumes=max(1, volumes),
                b_values=tuple(sorted({h.b_value for h, *_ in items if h.b_value is not None})),
                echo_numbers=tuple(
                    sorted({h.echo_number for h, *_ in items if h.echo_number is not None})
                ),
                echo_times=tuple(
                    sorted({h.echo_time for h, *_ in items if h.echo_time is not None})
                ),
                image_types=tuple(sorted(types)),
            )
        )
    return result


def _read_series(files: Sequence[Path]) -> list[Series]:
    """Series of some files: bidsport's own header/index modules when they exist."""
    try:
        from bidsport.header import read_header  # type: ignore[attr-defined]
        from bidsport.index import group_series  # type: ignore[attr-defined]
    except (ImportError, SyntaxError) as exc:  # not written yet, or being written
        warnings.warn(f"bidsport.header/index unusable ({exc}): local reader used", stacklevel=2)
        return _local_series(files)
    return list(group_series([read_header(p) for p in files]))


#: folder under <dataset>/In → the (datatype, suffix) its series may get, and entities
REAL_EXPECTED: dict[str, tuple[set[tuple[str, str]], dict[str, str]]] = {
    "dcm_qa_enh/In/Philips": ({("fmap", "fieldmap"), ("fmap", "magnitude")}, {}),
    "dcm_qa_enh/In/Siemens/XA10": ({("func", "bold")}, {"task": "rest"}),
    "dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2": ({("dwi", "dwi")}, {}),
    "dcm_qa_ge/In/04_Ax_DWI_TENSOR_R2MB2": ({("dwi", "dwi")}, {}),
    "dcm_qa_ge/In/05_3D_Ax_T1_MP_RAGE_R22": ({("anat", "T1w")}, {}),
    "dcm_qa_ge/In/SliceTiming/14_Ax_fMRI_HB3_48sl_int_asc": ({("func", "bold")}, {}),
    "dcm_qa_nih/In/20180918GE/mr_0004": ({("func", "bold")}, {}),
    "dcm_qa_nih/In/20180918GE/mr_0005": ({("func", "bold")}, {}),
    "dcm_qa_nih/In/20180918GE/mr_0006": ({("func", "bold")}, {}),
    "dcm_qa_nih/In/20180918GE/mr_0007": ({("func", "bold")}, {}),
    # short (2-volume) gradient-echo EPI runs with opposite phase encoding: field maps
    "dcm_qa_nih/In/20180918Si/mr_0003": ({("fmap", "epi")}, {"dir": "AP"}),
    "dcm_qa_nih/In/20180918Si/mr_0004": ({("fmap", "epi")}, {"dir": "PA"}),
    "dcm_qa_nih/In/20180918Si/mr_0005": ({("fmap", "epi")}, {"dir": "RL"}),
    "dcm_qa_nih/In/20180918Si/mr_0006": ({("fmap", "epi")}, {"dir": "LR"}),
    "dcm_qa_philips/In/Magdeburg_2014/fmri": ({("func", "bold")}, {}),
    "dcm_qa_philips/In/Vanderbilt_2018/601_WIP_dti_ax": ({("dwi", "dwi")}, {}),
    "dcm_qa_ts/In": ({("func", "bold")}, {}),
    "dcm_qa_uih/In/DTI_134434/dti_tra_dir16_AP_SaveBySlc__140028": (
        {("dwi", "dwi")},
        {"dir": "AP"},
    ),
    "dcm_qa_uih/In/DTI_134434/dti_tra_dir16_PA_SaveBySlc__135612": (
        {("dwi", "dwi")},
        {"dir": "PA"},
    ),
}


@pytest.fixture(scope="module")
def real_classified(shared_data: Path) -> dict[str, list[tuple[Series, Classification]]]:
    folders = collections.defaultdict(list)
    for path in sorted(shared_data.glob("*/In/**/*")):
        if path.is_file() and path.suffix.lower() not in (".txt", ".md"):
            folders[path.parent.relative_to(shared_data).as_posix()].append(path)
    result = {}
    for folder, files in folders.items():
        series = _read_series(files)
        result[folder] = list(zip(series, classify_all(series), strict=True))
    return result


def test_real_folders_are_all_expected(real_classified: dict[str, Any]) -> None:
    assert set(real_classified) == set(REAL_EXPECTED)


@pytest.mark.parametrize("folder", sorted(REAL_EXPECTED))
def test_real_headers(real_classified: dict[str, Any], folder: str) -> None:
    names, entities = REAL_EXPECTED[folder]
    assert real_classified[folder], folder
    for series, cls in real_classified[folder]:
        context = (series.header.series_description, cls)
        assert cls.excluded is None, context
        assert cls.provenance == "raw", context
        assert (cls.datatype, cls.suffix) in names, context
        assert {k: cls.entities.get(k) for k in entities} == entities, context


def test_real_fieldmap_and_bold_details(real_classified: dict[str, Any]) -> None:
    [(_, b0)] = real_classified["dcm_qa_enh/In/Philips"]
    assert b0.suffix == "fieldmap"
    for _, cls in real_classified["dcm_qa_nih/In/20180918GE/mr_0004"]:
        assert cls.entities == {"task": "unknown"} and cls.review


# --------------------------------------------------------------------------- BIDS validator


def _validator() -> str | None:
    found = shutil.which("bids-validator-deno")
    local = Path(sys.executable).parent / "bids-validator-deno"
    return found or (str(local) if local.is_file() else None)


def _emitted() -> list[tuple[str, str, dict[str, str], int]]:
    """(datatype, suffix, entities, n_volumes) of every name the classifier can write."""
    out = []
    results = [(c.series, classify_series(c.series, keep_derived=True)) for c in CASES]
    session = classify_all([c.series for c in CASES], keep_derived=True)
    results += list(zip([c.series for c in CASES], session, strict=True))
    for series, cls in results:
        if cls.excluded is not None or cls.datatype is None or cls.suffix is None:
            continue
        n_echo = max(len(series.echo_numbers), len(series.echo_times))
        if cls.suffix == "phasediff" or cls.entities.get("part") == "phase":
            postfixes = ["_ph"]
        elif cls.suffix == "fieldmap":
            postfixes = ["_e1", "_e2_fieldmaphz"]
        elif n_echo >= 2 and cls.suffix in ("magnitude", "MEGRE", "bold"):
            postfixes = [f"_e{i + 1}" for i in range(n_echo)]
        else:
            postfixes = [""]
        for output in map_outputs(cls.suffix, cls.datatype, postfixes):
            out.append(
                (cls.datatype, output.suffix, {**cls.entities, **output.entities}, series.n_volumes)
            )
    return out


def _sidecar(datatype: str, suffix: str, entities: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"RepetitionTime": 2.0, "EchoTime": 0.03}
    if datatype in ("func", "dwi") or suffix == "epi":
        meta.update(PhaseEncodingDirection="j-", TotalReadoutTime=0.05)
    if datatype == "func":
        meta["TaskName"] = entities["task"]
    if suffix == "epi":
        meta["IntendedFor"] = []
    if suffix == "phasediff":
        meta.update(EchoTime1=0.00492, EchoTime2=0.00738)
    if suffix == "fieldmap":
        meta["Units"] = "Hz"
    if entities.get("part") == "phase":
        meta["Units"] = "rad"
    if suffix == "MP2RAGE":  # keys the headers do not give (a rules file sets them)
        meta.update(
            InversionTime=0.7 if entities["inv"] == "1" else 2.5,
            FlipAngle=4,
            RepetitionTimeExcitation=0.0072,
            RepetitionTimePreparation=5.0,
            NumberShots=176,
            MagneticFieldStrength=3,
        )
    if datatype == "perf":
        meta.update(
            MagneticFieldStrength=3,
            MRAcquisitionType="3D",
            FlipAngle=90,
            RepetitionTimePreparation=4.0,
        )
        if suffix == "asl":
            meta.update(
                ArterialSpinLabelingType="PCASL",
                PostLabelingDelay=1.8,
                BackgroundSuppression=False,
                M0Type="Separate",
                TotalAcquiredPairs=1,
                LabelingDuration=1.8,
                PCASLType="balanced",
            )
    return meta


def test_every_emitted_name_passes_the_bids_validator(tmp_path: Path) -> None:
    validator = _validator()
    if validator is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    import nibabel as nib
    import numpy as np

    root = tmp_path / "ds"
    (root / "sub-01").mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "classify names", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    (root / "README").write_text("Every file name bidsport's classifier can emit.\n")
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    seen: collections.Counter[str] = collections.Counter()
    names = []
    asl_files = []
    for datatype, suffix, entities, _volumes in _emitted():
        base = bids_basename("01", None, entities, suffix)
        seen[f"{datatype}/{base}"] += 1
        if seen[f"{datatype}/{base}"] > 1:
            continue
        four_d = suffix in ("bold", "dwi", "asl")
        shape = (4, 4, 4, 3) if four_d else (4, 4, 4)
        image = nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4))
        image.header.set_xyzt_units("mm", "sec")
        if four_d:
            image.header["pixdim"][4] = 2.0
        folder = root / "sub-01" / datatype
        folder.mkdir(exist_ok=True)
        nib.save(image, str(folder / f"{base}.nii.gz"))
        meta = _sidecar(datatype, suffix, entities)
        if suffix == "dwi":
            (folder / f"{base}.bval").write_text("0 1000 1000\n")
            (folder / f"{base}.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")
        if suffix == "asl":
            (folder / f"{base[: -len('asl')]}aslcontext.tsv").write_text(
                "volume_type\ncontrol\nlabel\nm0scan\n"
            )
            asl_files.append(f"perf/{base}.nii.gz")
        (folder / f"{base}.json").write_text(json.dumps(meta))
        names.append(f"{datatype}/{base}")
    for path in (root / "sub-01" / "perf").glob("*_m0scan.json"):
        meta = json.loads(path.read_text())
        meta["IntendedFor"] = asl_files[:1]
        path.write_text(json.dumps(meta))
    assert len(names) >= 40, names

    result = run_command([validator, "--format", "json", str(root)], timeout=300)
    report = json.loads(result.stdout)
    errors = [
        (issue["code"], issue.get("location"), issue.get("subCode"))
        for issue in report["issues"]["issues"]
        if issue["severity"] == "error"
    ]
    assert errors == [], "\n".join(map(str, errors)) + "\nnames:\n" + "\n".join(sorted(names))


def test_a_dwi_b0_made_a_fieldmap_corrects_the_dwi() -> None:
    """The classifier's own b=0 fieldmap of a diffusion protocol is kept for the DWI."""
    b0 = ser(hdr("dwi_b0_PA", seq="*ep_b0", ss=("EP",), tr=3230, te=89), vols=2, b_values=(0,))
    cls = classify_series(b0)
    assert (cls.datatype, cls.suffix, cls.corrects) == ("fmap", "epi", ("dwi",))
    assert any("(corrects dwi images)" in e for e in cls.evidence)
    assert classify_series(ser(hdr("fmap_PA", seq="epse2d1_86", ss=("EP",)))).corrects is None


def test_the_acq_of_a_fieldmap_pair_is_one_label_without_the_direction() -> None:
    """HCP style: the PA image of a spin-echo pair shares its name (fmap/dir-PA_epi) with
    the DWI's b0: both get acq labels from their descriptions, without the direction dir
    gives, and the AP image of the pair gets its PA image's label."""
    epi = {"seq": "epse2d1_86", "ss": ("EP",), "tr": 8000, "te": 66}
    ap = ser(hdr("SpinEchoFieldMap_AP", time="100000.000000", **epi), series_id="ap")
    pa = ser(hdr("SpinEchoFieldMap_PA", time="100100.000000", **epi), series_id="pa")
    b0 = ser(
        hdr("dMRI_b0_PA", seq="*ep_b0", ss=("EP",), tr=3230, te=89, time="103000.000000"),
        vols=1,
        b_values=(0,),
        series_id="b0",
    )
    results = classify_all([ap, pa, b0])
    assert [(r.suffix, dict(r.entities)) for r in results] == [
        ("epi", {"acq": "SpinEchoFieldMap", "dir": "AP"}),
        ("epi", {"acq": "SpinEchoFieldMap", "dir": "PA"}),
        ("epi", {"acq": "dMRIb0", "dir": "PA"}),
    ]
    assert results[0].evidence[-1] == (
        "acq-SpinEchoFieldMap: the label another fieldmap of its protocol got"
    )


# --------------------------------------------------------------------------- MP2RAGE, NORM


def test_mp2rage_series_of_two_protocols_keep_one_acq_label_each() -> None:
    """The acq label of a session's second MP2RAGE protocol is its protocol's, without the
    _INV1/_UNI_Images part, so its images stay one collection; the magnitude of an
    inversion with a phase image gets part-mag."""
    series = []
    for k, (protocol, time) in enumerate((("mp2rage_1mm", "100000"), ("mp2rage_07mm", "110000"))):
        for part, image_type, ti in (
            ("INV1", NORM, 700),
            ("PHS_INV1", ("ORIGINAL", "PRIMARY", "P", "ND", "PHASE"), 700),
            ("INV2", NORM, 2500),
            ("UNI_Images", UNI, None),
        ):
            h = hdr(
                f"{protocol}_{part}",
                prot=protocol,
                image_type=image_type,
                ti=ti,
                time=f"{time}.000000",
                **MP2RAGE,
            )
            series.append(ser(h, series_id=f"{k}-{part}"))
    results = classify_all(series)
    names = [(r.suffix, dict(r.entities)) for r in results]
    assert names[:4] == [
        ("MP2RAGE", {"acq": "mp2rage1mm", "inv": "1", "part": "mag"}),
        ("MP2RAGE", {"acq": "mp2rage1mm", "inv": "1", "part": "phase"}),
        ("MP2RAGE", {"acq": "mp2rage1mm", "inv": "2"}),
        ("UNIT1", {"acq": "mp2rage1mm"}),
    ]
    assert {r.entities["acq"] for r in results[4:]} == {"mp2rage07mm"}
    assert all(r.excluded is None and r.provenance == "raw" for r in results)


def test_reconstructions_of_one_acquisition_get_rec_labels_not_runs() -> None:
    """Siemens saves one acquisition with and without NORM (prescan normalize), or without
    (ND) and with (DIS2D) distortion correction: same protocol, same acquisition time.
    They are not two runs: the ImageType values that differ give a rec label."""
    t1 = {"seq": "*tfl3d1_16ns", "ss": ("GR", "IR"), "tr": 2300, "te": 2.98, "ti": 900}

    def mprage(image_type: tuple[str, ...], time: str = "101010.000000", n: int = 2) -> Series:
        h = hdr("t1_mprage_sag", image_type=image_type, time=time, **t1)
        return ser(h, series_id=f"{n}-{'-'.join(image_type)}-{time}")

    plain, normalized = classify_all([mprage(ORIG), mprage(NORM, n=3)])
    assert (dict(plain.entities), dict(normalized.entities)) == ({}, {"rec": "norm"})
    assert "without NORM) keeps its name without rec" in plain.evidence[-1]
    assert "ImageType differs in NORM (prescan normalize)" in normalized.evidence[-1]
    assert normalized.evidence[-1].endswith("(with NORM) → rec-norm")
    dis2d = ("ORIGINAL", "PRIMARY", "M", "DIS2D", "NORM")
    nd, corrected = classify_all([mprage(NORM), mprage(dis2d, n=3)])
    assert (dict(nd.entities), dict(corrected.entities)) == ({"rec": "nd"}, {"rec": "dis2d"})
    assert "ND/DIS2D/DIS3D (distortion correction)" in nd.evidence[-1]
    # the same reconstruction twice, or two acquisitions: left to run numbering
    assert [dict(r.entities) for r in classify_all([mprage(NORM), mprage(NORM, n=3)])] == [{}, {}]
    later = mprage(NORM, time="111111.000000", n=3)
    assert [dict(r.entities) for r in classify_all([mprage(ORIG), later])] == [{}, {}]


def test_mp2rage_norm_and_dti_maps_end_to_end(tmp_path: Path) -> None:
    """dcm2niix conversions of synthetic Siemens series, with --keep-derived: the MP2RAGE
    inversions become inv-1/inv-2 MP2RAGE and its UNI image UNIT1 (not rec-derived_T1w);
    a NORM reconstruction is rec-norm beside its plain twin (not run-1/run-2); the ADC map
    is not written as a DWI (it would take the DWI's bval/bvec)."""
    from bidsport.cli.run import main
    from bidsport.fileops import read_tsv
    from bidsport.layout import DatasetLayout
    from bidsport.synthetic import SeriesSpec, Study, Subject, write_series

    mp2rage = {
        "scanning_sequence": ("GR", "IR"),
        "sequence_variant": ("SK", "SP", "MP"),
        "sequence_name": "*tfl3d1_16",
        "repetition_time": 5000.0,
        "echo_time": 2.9,
        "acquisition_time": "090000.000000",
    }
    t1 = {**mp2rage, "sequence_name": "*tfl3d1_16ns", "repetition_time": 2300.0}
    t1 |= {"inversion_time": 900.0, "acquisition_time": "091000.000000"}
    dwi = {
        "scanning_sequence": ("EP",),
        "sequence_variant": ("SK", "SP"),
        "mr_acquisition_type": "2D",
        "repetition_time": 3000.0,
        "echo_time": 89.0,
        "acquisition_time": "092000.000000",
    }
    specs = [
        SeriesSpec("mp2rage_INV1", 1, **mp2rage, inversion_time=700.0, image_type=NORM),
        SeriesSpec("mp2rage_INV2", 2, **mp2rage, inversion_time=2500.0, image_type=NORM),
        SeriesSpec("mp2rage_UNI_Images", 3, **mp2rage, image_type=UNI),
        SeriesSpec("t1_mprage_sag", 4, **t1),
        SeriesSpec("t1_mprage_sag", 5, **t1, image_type=NORM),
        SeriesSpec(
            "dMRI_dir6_AP",
            6,
            n_volumes=4,
            b_values=(0, 1000, 1000, 1000),
            sequence_name="*ep_b1000#1",
            **dwi,
        ),
        SeriesSpec(
            "dMRI_dir6_AP_ADC",
            7,
            image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"),
            sequence_name="*ep_b0_1000",
            **dwi,
        ),
    ]
    for spec in specs:
        write_series(spec, tmp_path / "inbox" / "P" / f"S{spec.series_number}", Subject(), Study())
    out = tmp_path / "bids"
    assert main([str(tmp_path / "inbox"), str(out), "participant", "-q", "--keep-derived"]) == 0
    images = sorted(str(p.relative_to(out / "sub-P")) for p in (out / "sub-P").rglob("*.nii.gz"))
    assert images == [
        "anat/sub-P_T1w.nii.gz",
        "anat/sub-P_UNIT1.nii.gz",
        "anat/sub-P_inv-1_MP2RAGE.nii.gz",
        "anat/sub-P_inv-2_MP2RAGE.nii.gz",
        "anat/sub-P_rec-norm_T1w.nii.gz",
        "dwi/sub-P_dir-AP_dwi.nii.gz",
    ]
    table = {r["series_number"]: r for r in read_tsv(DatasetLayout(out).series_table("P", None))}
    assert "MP2RAGE uniform image" in table["3"]["evidence"]
    assert table["3"]["provenance"] == "raw"
    assert "with NORM) → rec-norm" in table["5"]["evidence"]
    assert table["7"]["provenance"] == "dti_map"
    assert "no place in a raw BIDS dataset" in table["7"]["excluded"]
