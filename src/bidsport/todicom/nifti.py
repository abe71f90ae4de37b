"""Read the NIfTI to export (header, sidecar, values), with clear errors for broken files."""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.filebasedimages import ImageFileError

from bidsport.errors import ConversionError
from bidsport.todicom.geometry import (
    ORTHOGONALITY_TOLERANCE,
    FloatArray,
    axis_lengths,
    max_axis_cosine,
)
from bidsport.todicom.sidecar import BidsName, parse_bids_name, read_sidecar, sidecar_file

log = logging.getLogger(__name__)

#: What a truncated or corrupt file raises inside nibabel (and gzip/zlib below it).
_READ_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile)

_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


@dataclass(frozen=True, eq=False)
class NiftiInput:
    """A NIfTI image to export and what came with it."""

    path: Path
    affine: FloatArray  #: RAS+ mm (sform, else qform), spatial units converted to mm
    shape: tuple[int, int, int, int]  #: x, y, z, volumes (1 for a 3D image)
    dtype: np.dtype[Any]  #: on-disk data type
    sform_code: int
    qform_code: int
    sidecar: dict[str, Any] | None
    sidecar_path: Path | None
    image: nib.Nifti1Image | nib.Nifti2Image

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def bids(self) -> BidsName:
        return parse_bids_name(self.path.name)

    @property
    def n_volumes(self) -> int:
        return self.shape[3]

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self.shape[:3]

    @property
    def has_orientation(self) -> bool:
        """False for a NIfTI whose sform and qform codes are both 0 (no world space)."""
        return self.sform_code > 0 or self.qform_code > 0

    @property
    def in_template_space(self) -> bool:
        """True when the affine in use is labelled Talairach (3) or MNI-152 (4)."""
        code = self.sform_code if self.sform_code > 0 else self.qform_code
        return code in (3, 4)


def _shape4(shape: tuple[int, ...], path: Path) -> tuple[int, int, int, int]:
    dims = list(shape)
    while len(dims) > 4 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 4:
        raise ConversionError(
            f"{path} has {len(dims)} dimensions {tuple(shape)}: only 3D and 4D images can be "
            "written as a DICOM series"
        )
    dims += [1] * (4 - len(dims))
    if min(dims) < 1:
        raise ConversionError(f"{path} has an empty dimension: shape {tuple(shape)}")
    if sum(n > 1 for n in dims[:3]) < 2:
        # Rows or Columns would be 1: valid DICOM, but dcm2niix reads no such image back.
        raise ConversionError(
            f"{path} has shape {tuple(shape)}: fewer than two spatial axes longer than one "
            "voxel, so it is not an image plane (a DICOM image needs at least 2 rows and 2 "
            "columns to be read back)",
            "write images of at least 2 x 2 voxels in some plane",
        )
    return (dims[0], dims[1], dims[2], dims[3])


def read_nifti(path: Path) -> NiftiInput:
    """Read a NIfTI header and its sidecar (values are read later by :func:`read_values`)."""
    if not path.is_file():
        raise ConversionError(f"NIfTI file not found: {path}")
    try:
        image = nib.load(path)
    except _READ_ERRORS as exc:
        raise ConversionError(
            f"cannot read {path} as NIfTI: {exc}", "check that the file is a complete .nii/.nii.gz"
        ) from exc
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ConversionError(f"{path} is not a NIfTI-1/NIfTI-2 image ({type(image).__name__})")
    header = image.header
    dtype = header.get_data_dtype()
    if dtype.kind not in "biuf" or dtype.names is not None:
        raise ConversionError(
            f"{path} holds {dtype} data: only real scalar images (integers or floats) can be "
            "written as DICOM"
        )
    shape = _shape4(tuple(int(n) for n in image.shape), path)
    affine = np.asarray(image.affine, dtype=np.float64)
    unit = header.get_xyzt_units()[0]
    if _UNIT_TO_MM.get(unit, 1.0) != 1.0:
        affine = affine.copy()
        affine[:3, :] *= _UNIT_TO_MM[unit]
        log.info("%s: spatial unit %s converted to mm", path.name, unit)
    if not np.all(np.isfinite(affine)) or np.any(axis_lengths(affine) <= 0):
        raise ConversionError(f"{path} has an invalid affine (zero or non-finite voxel size)")
    cosine = max_axis_cosine(affine)
    if cosine > ORTHOGONALITY_TOLERANCE:
        raise ConversionError(
            f"{path} has a sheared voxel grid (axes {np.degrees(np.arcsin(min(cosine, 1.0))):.3g}° "
            "from orthogonal): DICOM frames need orthogonal axes",
            "resample the image onto an orthogonal grid first",
        )
    sform_code = int(header["sform_code"])
    qform_code = int(header["qform_code"])
    side_path = sidecar_file(path)
    sidecar = read_sidecar(path)
    return NiftiInput(
        path=path,
        affine=affine,
        shape=shape,
        dtype=dtype,
        sform_code=sform_code,
        qform_code=qform_code,
        sidecar=sidecar,
        sidecar_path=side_path if sidecar is not None else None,
        image=image,
    )


@dataclass(frozen=True, eq=False)
class NiftiValues:
    """The stored array of a NIfTI and its scaling: value = stored * slope + intercept."""

    stored: npt.NDArray[Any]  #: shape (x, y, z, volumes)
    slope: float
    intercept: float

    @property
    def scaled(self) -> bool:
        return self.slope != 1.0 or self.intercept != 0.0

    def values(self) -> npt.NDArray[np.float64]:
        """The real-world values (float64)."""
        out = self.stored.astype(np.float64)
        if self.scaled:
            out *= self.slope
            out += self.intercept
        return out


def read_values(nifti: NiftiInput) -> NiftiValues:
    """Read the voxel values (as stored on disk, with the header's scaling)."""
    proxy = nifti.image.dataobj
    try:
        stored = np.asanyarray(proxy.get_unscaled())  # type: ignore[attr-defined]
    except _READ_ERRORS as exc:
        raise ConversionError(
            f"cannot read the voxel data of {nifti.path}: {exc}",
            "the file is probably truncated or corrupt",
        ) from exc
    slope = getattr(proxy, "slope", 1.0)
    intercept = getattr(proxy, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    intercept = 0.0 if intercept is None or not np.isfinite(intercept) else float(intercept)
    return NiftiValues(np.asarray(stored).reshape(nifti.shape), slope, intercept)
