"""Synthetic inboxes for the benchmark: many sessions and series, realistic headers, fast.

One template file per series *type* is written with pydicom (through
:func:`bidsport.synthetic.series_datasets`, so dcm2niix converts it), with placeholder
values of fixed width in every element that changes from file to file (UIDs, instance
number, position, times, b-value...). Every file of the inbox is then that template with
those bytes patched and pixel data taken from a pool of slices, so 100,000 files take
seconds of CPU, not minutes.

Headers are made realistic in size and element count: a Siemens-like CSA block
(``(0029,1010)``/``(0029,1020)``, valid ``SV10`` headers followed by protocol-like text,
``private_kb`` kB in all) and a few dozen small private elements in a private group no
converter interprets. Series descriptions follow the ReproIn convention, so bidsport,
HeuDiConv (reproin heuristic) and Dcm2Bids (bench/dcm2bids_config.json) all convert them.

    python bench/synth.py OUT_DIR --files 10000 [--sessions 3] [--matrix 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from bidsport.synthetic import SeriesSpec, Study, Subject, series_datasets

#: packets are named <subject>_<session>; this --nameformat reads them
NAMEFORMAT = r"(?P<subject_id>[^_]+)_(?P<session_name>.+)"
LAYOUTS = ("series", "flat", "mixed")
SLICES = 36  #: slices of an EPI volume (one file per slice, as classic Siemens/GE/Philips)
MAX_VOLUMES = 60  #: volumes of the longest fMRI run (3,600 files, the size of a long run)
EPI_BANDWIDTH_PE = 27.778  #: Hz per pixel in the phase direction (as dcm_qa_nih's EPI)

# Placeholders: fixed-width values written into the template, found and patched later.
_UID_WIDTH = 32
_PH_UID = {kind: "2.25.9" + str(kind) * (_UID_WIDTH - 6) for kind in range(1, 5)}
_STUDY, _SERIES, _SOP, _FRAME = 1, 2, 3, 4
_PH_PATIENT_NAME = "ZZNAMEZZZZZZZZZZ"  # 16
_PH_PATIENT_ID = "ZZPIDZZZZZZZZZZZ"  # 16
_PH_TIME = "111111.111111"  # 13, padded to 14 by pydicom
_PH_SERIES_TIME = "121212.121212"
_PH_SERIES_NUMBER = "987651"  # 6
_PH_INSTANCE = "87654321"  # 8
_PH_TEMPORAL = "876541"  # 6
_PH_POSITION = ("-7771.111111", "-7772.111111", "-7773.111111")  # 12 each
_PH_LOCATION = "-7774.111111"
_PH_BVALUE = 12345.678
_PH_BVEC = (0.111111, 0.222222, 0.333333)
_PH_DIRECTIONALITY = "DIRECTIONAL"  # padded to 12

_CSA_TAG_NAMES = (
    "EchoLinePosition", "EchoColumnPosition", "EchoPartitionPosition", "UsedChannelMask",
    "Actual3DImaPartNumber", "FilterId", "ImaCoilString",
    "RFSWDDataType", "GSWDDataType", "NonPlanarImage", "MultistepIndex", "TimeAfterStart",
    "RealDwellTime", "SequenceMask", "CoilForGradient2", "FlowEncodingDirection",
)  # fmt: skip
# Names neither dcm2niix nor nibabel (HeuDiConv) interpret: their values change no output.
# (ImaRelTablePosition with one item crashes dcm2niix v1.0.20260724; a numeric ICE_Dims
# breaks nibabel's CSA reader.)


@dataclass(frozen=True)
class InboxInfo:
    """What :func:`write_inbox` wrote."""

    root: Path
    n_files: int
    n_bytes: int
    n_series: int
    sessions: tuple[tuple[str, str, int], ...]  #: (subject, session, n_files) per packet
    seconds: float

    def packet_dir(self, subject: str, session: str) -> Path:
        return self.root / f"{subject}_{session}"


# --------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class Protocol:
    """The shape of a session (see :func:`session_protocol`)."""

    slices: int = SLICES  #: slices of an EPI volume (one file per slice)
    anat_slices: int = 176  #: slices of a T1w/T2w volume
    dwi_volumes: int = 13  #: b0 + directions
    max_volumes: int = MAX_VOLUMES  #: volumes of the longest fMRI run
    localizers: bool = True  #: three one-plane localizers
    fieldmaps: bool = True  #: a pair of spin-echo EPI fieldmaps
    t2w: bool = True
    derived: bool = True  #: scanner-derived DWI maps (ADC, FA)
    sbref: bool = True  #: a single-band reference before each fMRI run


PROTOCOLS = {
    "standard": Protocol(),
    #: 3 series (T1w, DWI, one fMRI run) of 4-slice volumes: for tests
    "tiny": Protocol(4, 4, 3, 3, False, False, False, False, False),
}


def session_protocol(n_files: int, protocol: Protocol = Protocol()) -> list[SeriesSpec]:
    """The series of one session holding about ``n_files`` files.

    Localizers, T1w, spin-echo fieldmaps, DWI with two scanner-derived maps (ADC, FA)
    and T2w (those ``protocol`` has, as far as the budget goes), then resting-state fMRI
    runs of up to ``protocol.max_volumes`` volumes (each after its single-band reference)
    filling the rest. ``n_files`` is a target: the last run is cut to whole volumes.
    """
    p = protocol
    slices = p.slices
    epi = {"mr_acquisition_type": "2D", "scanning_sequence": ("EP",), "sequence_variant": ("SK",)}
    anat = {"orientation": "sagittal", "pixel_spacing": 1.0, "slice_thickness": 1.0}
    derived = ("DERIVED", "PRIMARY", "DIFFUSION")
    n_dwi = p.dwi_volumes
    budget: list[tuple[SeriesSpec, ...]] = []
    if p.localizers:
        budget.append(tuple(
            SeriesSpec("localizer", 0, n_slices=3, orientation=o, sequence_name="*fl2d1",
                       mr_acquisition_type="2D", repetition_time=8.6, echo_time=4.0,
                       flip_angle=20.0)
            for o in ("sagittal", "coronal", "axial")
        ))  # fmt: skip
    budget.append(
        (SeriesSpec("anat-T1w", 0, n_slices=p.anat_slices, scanning_sequence=("GR", "IR"),
                    sequence_variant=("SK", "SP", "MP"), sequence_name="*tfl3d1_16ns",
                    repetition_time=2300.0, echo_time=2.98, inversion_time=900.0,
                    flip_angle=9.0, **anat),)  # type: ignore[arg-type]
    )  # fmt: skip
    if p.fieldmaps:
        budget.append(tuple(
            SeriesSpec(f"fmap-epi_dir-{d}", 0, n_slices=slices, sequence_name="epse2d1_64",
                       repetition_time=8000.0, echo_time=66.0, flip_angle=90.0,
                       **epi)  # type: ignore[arg-type]
            for d in ("AP", "PA")
        ))  # fmt: skip
    dwi: tuple[SeriesSpec, ...] = (
        SeriesSpec("dwi_dir-AP", 0, n_slices=slices, n_volumes=n_dwi,
                   b_values=(0.0,) + (1000.0,) * (n_dwi - 1), sequence_name="*ep_b1000#1",
                   repetition_time=3000.0, echo_time=89.0, flip_angle=90.0,
                   **epi),  # type: ignore[arg-type]
    )  # fmt: skip
    if p.derived:
        dwi += tuple(
            SeriesSpec(f"dwi_dir-AP_{m}", 0, n_slices=slices, image_type=(*derived, m, "ND"),
                       protocol_name="dwi_dir-AP", sequence_name="*ep_b0_1000",
                       repetition_time=3000.0, echo_time=89.0, flip_angle=90.0,
                       **epi)  # type: ignore[arg-type]
            for m in ("ADC", "FA")
        )  # fmt: skip
    budget.append(dwi)
    if p.t2w:
        budget.append(
            (SeriesSpec("anat-T2w", 0, n_slices=p.anat_slices, scanning_sequence=("SE",),
                        sequence_variant=("SK", "SP", "OSP"), sequence_name="*spc_314ns",
                        repetition_time=3200.0, echo_time=410.0, flip_angle=120.0,
                        **anat),)  # type: ignore[arg-type]
        )  # fmt: skip
    series: list[SeriesSpec] = []
    left = n_files
    for group in budget:
        size = sum(s.n_slices * s.n_volumes for s in group)
        if size <= left:
            series += group
            left -= size
    run = 1
    reference = 1 if p.sbref else 0
    while left >= slices * (2 + reference):
        name = f"func-bold_task-rest_run-{run:02d}"
        volumes = min(p.max_volumes, left // slices - reference)
        bold = {"sequence_name": "epfid2d1_64", "repetition_time": 800.0, "echo_time": 30.0,
                "flip_angle": 52.0, "protocol_name": name, **epi}  # fmt: skip
        if p.sbref:
            series.append(SeriesSpec(f"{name}_SBRef", 0, n_slices=slices, **bold))  # type: ignore[arg-type]
        series.append(SeriesSpec(name, 0, n_slices=slices, n_volumes=volumes, **bold))  # type: ignore[arg-type]
        left -= slices * (volumes + reference)
        run += 1
    # series numbers and acquisition times: one series after the other
    start = 9 * 3600.0
    timed = []
    for number, spec in enumerate(series, start=1):
        timed.append(
            dataclasses.replace(spec, series_number=number, acquisition_time=_hhmmss(start))
        )
        start += spec.n_volumes * spec.repetition_time / 1000.0 + 30.0
    return timed


def _hhmmss(seconds: float) -> str:
    seconds %= 86400
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


# --------------------------------------------------------------------------- template


#: the shim settings of the protocol (dcm2niix writes them as ShimSetting, which HeuDiConv
#: uses to match fieldmaps to images); nothing else is in the ASCCONV block
_ASCCONV = b"""### ASCCONV BEGIN ###
sGRADSPEC.asGPAData[0].lOffsetX\t = \t-1234
sGRADSPEC.asGPAData[0].lOffsetY\t = \t-2345
sGRADSPEC.asGPAData[0].lOffsetZ\t = \t345
sGRADSPEC.alShimCurrent[0]\t = \t101
sGRADSPEC.alShimCurrent[1]\t = \t-202
sGRADSPEC.alShimCurrent[2]\t = \t303
sGRADSPEC.alShimCurrent[3]\t = \t-404
sGRADSPEC.alShimCurrent[4]\t = \t505
### ASCCONV END ###
"""


def _csa(
    n_bytes: int, seed: int, protocol: bool = False, tags: tuple[tuple[str, str, str], ...] = ()
) -> bytes:
    """A valid Siemens CSA2 header of ``n_bytes`` (more if its tags need more): ``tags``
    (name, VR, value), then tags dcm2niix ignores, then text (with the ``protocol`` shim
    settings, as in a series header)."""
    filler = tuple(
        (name, "DS", f"{(seed * 31 + i) % 1000}.0") for i, name in enumerate(_CSA_TAG_NAMES)
    )
    out = bytearray(b"SV10\x04\x03\x02\x01")
    out += struct.pack("<II", len(tags) + len(filler), 77)
    for name, vr, item in (*tags, *filler):
        value = item.encode() + b"\0"  # a C string, its NUL counted in its length
        out += name.encode().ljust(64, b"\0")
        # vm, vr, syngodt, nitems (6, as in Siemens files: one value, five empty), xx
        out += struct.pack("<i4siii", 1, vr.encode().ljust(4, b"\0"), 3, 6, 77)
        padded = value + b"\0" * (-len(value) % 4)
        out += struct.pack("<iiii", len(value), len(value), 77, len(value)) + padded
        out += struct.pack("<iiii", 0, 0, 205, 0) * 5  # as Siemens writes empty items
    tags_end = len(out)  # the text may be cut short, the tags never (dcm2niix would crash)
    if protocol:
        out += _ASCCONV
    text = b'sProtConsistencyInfo.tBaselineString\t = \t"N4_VE11C_LATEST_20160120"\n'
    while len(out) < n_bytes:
        out += text
    del out[max(n_bytes, tags_end) :]
    return bytes(out) + (b"\0" if len(out) % 2 else b"")


@dataclass
class _Template:
    data: bytes
    pixel_offset: int
    pixel_length: int
    offsets: dict[str, list[int]]


def _find_all(data: bytes, needle: bytes, end: int) -> list[int]:
    found = []
    pos = data.find(needle, 0, end)
    while pos >= 0:
        found.append(pos)
        pos = data.find(needle, pos + 1, end)
    return found


def _epi_tags(spec: SeriesSpec) -> tuple[tuple[str, str, str], ...]:
    """The CSA image header tags from which dcm2niix derives an EPI series'
    PhaseEncodingDirection and TotalReadoutTime (which BIDS requires of an ``epi``
    fieldmap), as in dcm_qa_nih's Siemens EPI: phase encoding posterior to anterior
    ("j", a ``dir-PA`` series: PhaseEncodingDirectionPositive 0) or anterior to posterior
    ("j-", every other EPI series: 1)."""
    if "EP" not in spec.scanning_sequence:
        return ()
    positive = "0" if "dir-PA" in spec.description else "1"
    return (("PhaseEncodingDirectionPositive", "IS", positive),
            ("BandwidthPerPixelPhaseEncode", "FD", f"{EPI_BANDWIDTH_PE:.3f}"))  # fmt: skip


def _template(spec: SeriesSpec, private_kb: int, n_private: int) -> _Template:
    """One file of the series with placeholders, and where each placeholder lies."""
    volumes = min(spec.n_volumes, 2)
    small = dataclasses.replace(
        spec,
        n_volumes=volumes,
        n_slices=1,
        b_values=tuple(spec.b_values[:volumes]) if spec.b_values else (),
    )
    ds: Dataset = series_datasets(small, Subject(), Study())[-1]
    ds.PatientName = _PH_PATIENT_NAME
    ds.PatientID = _PH_PATIENT_ID
    ds.StudyDescription = "Bench^Synthetic"  # ReproIn's locator (HeuDiConv requires one)
    ds.StudyInstanceUID = _PH_UID[_STUDY]
    ds.SeriesInstanceUID = _PH_UID[_SERIES]
    ds.SOPInstanceUID = _PH_UID[_SOP]
    ds.file_meta.MediaStorageSOPInstanceUID = UID(_PH_UID[_SOP])
    ds.FrameOfReferenceUID = _PH_UID[_FRAME]
    ds.AcquisitionTime = _PH_TIME
    ds.ContentTime = _PH_TIME
    ds.SeriesTime = _PH_SERIES_TIME
    ds.SeriesNumber = _PH_SERIES_NUMBER
    ds.InstanceNumber = _PH_INSTANCE
    ds.ImagePositionPatient = list(_PH_POSITION)
    ds.SliceLocation = _PH_LOCATION
    if "NumberOfTemporalPositions" in ds:
        del ds.NumberOfTemporalPositions
    if spec.n_volumes > 1:
        ds.TemporalPositionIdentifier = _PH_TEMPORAL
    if spec.b_values:
        ds.DiffusionBValue = _PH_BVALUE
        ds.DiffusionGradientOrientation = list(_PH_BVEC)
        ds.DiffusionDirectionality = _PH_DIRECTIONALITY
    m = spec.rows if spec.phase_encoding == "COL" else spec.columns
    ds.AcquisitionMatrix = [m, 0, 0, m] if spec.phase_encoding == "COL" else [0, m, m, 0]
    csa = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    image_bytes = max(64, private_kb * 1024 // 4)
    csa.add_new(0x10, "OB", _csa(image_bytes, 1, tags=_epi_tags(spec)))
    csa.add_new(0x20, "OB", _csa(max(1024, private_kb * 1024 - image_bytes), 2, protocol=True))
    other = ds.private_block(0x0067, "BIDSPORT BENCH", create=True)
    for i in range(n_private):
        other.add_new(0x10 + i, "LO", f"bench value {i:03d}")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    pixels = ds.PixelData
    pixel_offset = len(data) - len(pixels)
    assert data[pixel_offset:] == pixels
    text = {
        "patient_name": _PH_PATIENT_NAME, "patient_id": _PH_PATIENT_ID,
        "study_uid": _PH_UID[_STUDY], "series_uid": _PH_UID[_SERIES],
        "sop_uid": _PH_UID[_SOP], "frame_uid": _PH_UID[_FRAME], "time": _PH_TIME,
        "series_time": _PH_SERIES_TIME, "series_number": _PH_SERIES_NUMBER,
        "instance": _PH_INSTANCE, "position": "\\".join(_PH_POSITION), "location": _PH_LOCATION,
        "temporal": _PH_TEMPORAL, "directionality": _PH_DIRECTIONALITY + " ",
    }  # fmt: skip
    needles = {key: value.encode() for key, value in text.items()}
    needles["bvalue"] = struct.pack("<d", _PH_BVALUE)
    needles["bvec"] = struct.pack("<3d", *_PH_BVEC)
    offsets = {key: _find_all(data, needle, pixel_offset) for key, needle in needles.items()}
    expected = {"sop_uid": 2, "time": 2}
    for key, found in offsets.items():
        optional = key in ("temporal", "bvalue", "bvec", "directionality")
        if not found and optional:
            continue
        if len(found) != expected.get(key, 1):
            raise AssertionError(f"placeholder {key} found {len(found)} times in the template")
    return _Template(data, pixel_offset, len(pixels), offsets)


def _uid(kind: int, seed: int, session: int, series: int, instance: int) -> bytes:
    """A valid UID of exactly the placeholder width, unique per (kind, ids)."""
    body = f"1{seed % 10**8:08d}{session:06d}{series:04d}{instance:07d}{kind}"
    return f"2.25.{body}".encode()[:_UID_WIDTH].ljust(_UID_WIDTH, b"0")


def _pixel_pool(rows: int, columns: int, n: int = 64, seed: int = 0) -> list[bytes]:
    """Slices like MR data (smooth shapes, noise): compress about as much as real images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns]
    pool = []
    for i in range(n):
        r = np.hypot(yy - rows / 2, xx - columns / 2) / (0.45 * min(rows, columns))
        head = np.clip(1.0 - r, 0, None) ** 0.3 * (600 + 5 * i)
        noise = rng.normal(0, 20, size=(rows, columns))
        pool.append(np.clip(head + noise + 20, 0, 4095).astype("<u2").tobytes())
    return pool


# --------------------------------------------------------------------------- writing


def _files_of(
    spec: SeriesSpec,
) -> Iterator[tuple[int, int, int, float, tuple[float, float, float]]]:
    """(instance, volume, slice, seconds after the series start, position) of every file."""
    from bidsport.synthetic import ORIENTATIONS

    orient = ORIENTATIONS[spec.orientation]
    row_dir, col_dir = np.array(orient[:3]), np.array(orient[3:])
    normal = np.cross(row_dir, col_dir)
    origin = -0.5 * spec.pixel_spacing * (spec.columns * row_dir + spec.rows * col_dir)
    instance = 0
    for volume in range(spec.n_volumes):
        for z in range(spec.n_slices):
            instance += 1
            pos = origin + normal * (z * spec.slice_thickness)
            when = volume * spec.repetition_time / 1000.0
            yield instance, volume, z, when, (float(pos[0]), float(pos[1]), float(pos[2]))


def _seconds(hhmmss: str) -> float:
    return int(hhmmss[0:2]) * 3600 + int(hhmmss[2:4]) * 60 + float(hhmmss[4:])


def write_session(
    packet_dir: Path,
    specs: list[SeriesSpec],
    *,
    subject: str,
    session_index: int,
    seed: int,
    templates: dict[tuple[object, ...], _Template],
    pool: list[bytes],
    private_kb: int,
    n_private: int,
    flat: bool = False,
) -> tuple[int, int]:
    """Write one packet; (files, bytes).

    One folder per series (like most PACS exports), or with ``flat`` every file in the
    packet folder itself (like a scanner's USB export).
    """
    n_files = n_bytes = 0
    name = subject.encode().ljust(16)[:16]
    for spec in specs:
        key = (repr(dataclasses.replace(spec, acquisition_time="", series_number=0)), private_kb)
        template = templates.get(key)
        if template is None:
            template = templates[key] = _template(spec, private_kb, n_private)
        offs = template.offsets
        folder = packet_dir if flat else packet_dir / f"{spec.series_number:03d}_{spec.description}"
        folder.mkdir(parents=True, exist_ok=True)
        buf = bytearray(template.data)

        def put(key: str, value: bytes, buf: bytearray = buf, offs: dict = offs) -> None:
            for at in offs.get(key, ()):
                buf[at : at + len(value)] = value

        put("patient_name", name)
        put("patient_id", name)
        put("study_uid", _uid(_STUDY, seed, session_index, 0, 0))
        put("frame_uid", _uid(_FRAME, seed, session_index, 0, 0))
        put("series_uid", _uid(_SERIES, seed, session_index, spec.series_number, 0))
        put("series_number", f"{spec.series_number:<6d}".encode())
        put("series_time", spec.acquisition_time.encode()[:13])
        start = _seconds(spec.acquisition_time)
        n_pix = template.pixel_length
        p0 = template.pixel_offset
        for instance, volume, z, when, pos in _files_of(spec):
            put("sop_uid", _uid(_SOP, seed, session_index, spec.series_number, instance))
            put("instance", f"{instance:<8d}".encode())
            put("time", _hhmmss(start + when).encode()[:13])
            put("position", "\\".join(f"{v:12.6f}" for v in pos).encode())
            put("location", f"{pos[2]:12.6f}".encode())
            if spec.n_volumes > 1:
                put("temporal", f"{volume + 1:<6d}".encode())
            if spec.b_values:
                b = float(spec.b_values[volume])
                put("bvalue", struct.pack("<d", b))
                angle = 2 * math.pi * volume / len(spec.b_values)
                vec = (math.cos(angle), math.sin(angle), 0.0) if b > 0 else (0.0, 0.0, 0.0)
                put("bvec", struct.pack("<3d", *vec))
                put("directionality", b"DIRECTIONAL " if b > 0 else b"NONE        ")
            pixels = pool[(z * 7 + volume * 3 + spec.series_number) % len(pool)]
            buf[p0 : p0 + n_pix] = pixels[:n_pix].ljust(n_pix, b"\0")
            path = folder / f"IM{spec.series_number:03d}{instance:06d}.dcm"
            with open(path, "wb") as fh:
                fh.write(buf)
            n_files += 1
            n_bytes += len(buf)
    return n_files, n_bytes


def write_inbox(
    root: Path,
    n_files: int,
    *,
    n_sessions: int | None = None,
    session_files: int = 3000,
    sessions_per_subject: int = 2,
    matrix: int = 64,
    private_kb: int = 32,
    n_private: int = 40,
    protocol: Protocol = Protocol(),
    layout: str = "series",
    seed: int = 1,
) -> InboxInfo:
    """Write an inbox of about ``n_files`` files in ``root`` (one folder per session).

    Sessions: ``n_sessions``, or about one per ``session_files`` files; packets are named
    ``<subject>_<session>`` (subjects S0001..., sessions V1, V2...; read them with
    ``--nameformat`` :data:`NAMEFORMAT`). Every slice is ``matrix`` x ``matrix`` 16-bit.
    ``layout``: "series" (a folder per series), "flat" (all files of a packet in one
    folder) or "mixed" (sessions alternate, the first one by series).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    start = time.perf_counter()
    sessions = n_sessions or max(1, round(n_files / session_files))
    per_session = [
        n_files // sessions + (1 if i < n_files % sessions else 0) for i in range(sessions)
    ]
    templates: dict[tuple[object, ...], _Template] = {}
    pool = _pixel_pool(matrix, matrix, seed=seed)
    done: list[tuple[str, str, int]] = []
    total_files = total_bytes = n_series = 0
    for index, target in enumerate(per_session):
        subject = f"S{index // sessions_per_subject + 1:04d}"
        session = f"V{index % sessions_per_subject + 1}"
        specs = [
            dataclasses.replace(s, rows=matrix, columns=matrix)
            for s in session_protocol(target, protocol)
        ]
        files, size = write_session(
            root / f"{subject}_{session}", specs, subject=subject, session_index=index,
            seed=seed, templates=templates, pool=pool, private_kb=private_kb,
            n_private=n_private, flat=layout == "flat" or (layout == "mixed" and index % 2 == 1),
        )  # fmt: skip
        done.append((subject, session, files))
        total_files += files
        total_bytes += size
        n_series += len(specs)
    return InboxInfo(
        root, total_files, total_bytes, n_series, tuple(done), time.perf_counter() - start
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=None)
    parser.add_argument("--matrix", type=int, default=64)
    parser.add_argument("--private-kb", type=int, default=32)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="standard")
    parser.add_argument("--layout", choices=LAYOUTS, default="series")
    args = parser.parse_args(argv)
    info = write_inbox(
        args.out_dir, args.files, n_sessions=args.sessions, matrix=args.matrix,
        private_kb=args.private_kb, protocol=PROTOCOLS[args.protocol], layout=args.layout,
    )  # fmt: skip
    print(
        f"{info.n_files} files, {info.n_bytes / 1e6:.0f} MB, {info.n_series} series, "
        f"{len(info.sessions)} sessions in {info.seconds:.1f} s "
        f"({info.n_files / max(info.seconds, 1e-9):.0f} files/s) -> {info.root}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "LAYOUTS",
    "NAMEFORMAT",
    "PROTOCOLS",
    "InboxInfo",
    "Protocol",
    "session_protocol",
    "write_inbox",
]
