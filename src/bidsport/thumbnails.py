"""Thumbnails of NIfTI images for the group report: middle planes, windowed, as PNG.

A thumbnail shows the middle sagittal, coronal and axial slices of an image's first
volume, reoriented to RAS+, side by side at one scale, with the intensities between
robust percentiles mapped to black and white. Everything here is pure (arrays in, bytes
out) except :func:`read_first_volume` and :func:`thumbnail_png`, which read the image.

This module imports numpy and nibabel (~0.2 s, see :mod:`bidsport.niftiio`): it is
imported only when a thumbnail has to be made, by the worker processes of
:mod:`bidsport.reportworkers` (or by :func:`bidsport.reportworkers.make_thumbnail` in the
process that makes a few thumbnails itself).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.ma  # np.percentile loads it at its first call (~20 ms): here, at import

from bidsport import png
from bidsport.niftiio import nib

#: Largest side (pixels) of each of the three panels of a thumbnail.
THUMBNAIL_SIZE = 128
#: Pixels between the panels of a thumbnail, and their value (white: the page's colour).
PANEL_GAP = 2
GAP_VALUE = 255
#: Percentiles of the intensities mapped to black and white.
WINDOW_PERCENTILES = (0.5, 99.5)
#: The PNG filter type of every scanline.
PAETH = 4
#: What reading a broken NIfTI file raises.
UNREADABLE = (
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
    OSError,
    ValueError,
    EOFError,
    zlib.error,
)


# --------------------------------------------------------------------------- PNG


def _filter_rows(pixels: np.ndarray) -> np.ndarray:
    """The PNG scanlines of 8-bit grayscale ``pixels``: filter type byte + filtered row.

    Every row gets the Paeth filter (type 4). On the thumbnails of real and synthetic
    images, choosing each row's filter by the PNG specification's heuristic (section 12.8)
    gave the same sizes to within 0.1%, for 3x the time.
    """
    x = pixels.astype(np.int16)
    a = np.zeros_like(x)  # left
    a[:, 1:] = x[:, :-1]
    b = np.zeros_like(x)  # up
    b[1:] = x[:-1]
    c = np.zeros_like(x)  # up-left
    c[1:, 1:] = x[:-1, :-1]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    rows = np.empty((x.shape[0], x.shape[1] + 1), np.uint8)
    rows[:, 0] = PAETH
    rows[:, 1:] = (x - paeth) % 256
    return rows


def encode_png(pixels: np.ndarray, software: str | None = None) -> bytes:
    """A grayscale 8-bit PNG of a 2-D ``uint8`` array (first row at the top).

    ``software`` (Latin-1 text) is stored as the PNG's ``Software`` text.

    >>> encode_png(np.zeros((2, 3), np.uint8))[:8] == png.SIGNATURE
    True
    """
    if pixels.ndim != 2 or pixels.dtype != np.uint8 or 0 in pixels.shape:
        raise ValueError(f"need a non-empty 2-D uint8 array, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape
    return png.grayscale_png(width, height, _filter_rows(pixels).tobytes(), software)


# --------------------------------------------------------------------------- thumbnails


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the three array axes of a NIfTI affine (1 where unusable)."""
    sizes = [float(s) for s in np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))]
    x, y, z = (s if np.isfinite(s) and s > 0 else 1.0 for s in sizes)
    return x, y, z


def to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``volume`` with its axes reordered and flipped to the closest RAS+ orientation.

    Returns the array (a view) and its voxel sizes in the new axis order.
    """
    ornt = nib.orientations.io_orientation(np.asarray(affine, float))
    sizes_in = voxel_sizes(affine)
    sizes = [1.0, 1.0, 1.0]
    for axis_in, (axis_out, _flip) in enumerate(ornt):
        sizes[int(axis_out)] = sizes_in[axis_in]
    ras = nib.orientations.apply_orientation(volume, ornt)
    return ras, (sizes[0], sizes[1], sizes[2])


def middle_planes(
    volume: np.ndarray, sizes: tuple[float, float, float]
) -> list[tuple[np.ndarray, tuple[float, float]]]:
    """The middle sagittal, coronal and axial slices of a RAS+ volume, as displayed.

    Each plane comes with its (row, column) pixel sizes in mm. Superior is up in the
    sagittal and coronal planes, anterior up in the axial plane; anterior is right in the
    sagittal plane and the subject's right is right in the others (neurological).
    """
    nx, ny, nz = volume.shape
    sx, sy, sz = sizes
    sagittal = volume[nx // 2, :, :].T[::-1, :]  # rows: z (superior first), columns: y
    coronal = volume[:, ny // 2, :].T[::-1, :]  # rows: z, columns: x
    axial = volume[:, :, nz // 2].T[::-1, :]  # rows: y (anterior first), columns: x
    return [(sagittal, (sz, sy)), (coronal, (sz, sx)), (axial, (sy, sx))]


def window(values: Sequence[np.ndarray]) -> tuple[float, float]:
    """The intensities shown as black and white: robust percentiles of ``values``."""
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values])
    if finite.size == 0:
        return 0.0, 0.0
    low, high = (float(x) for x in np.percentile(finite, WINDOW_PERCENTILES))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    return low, high


def to_uint8(plane: np.ndarray, low: float, high: float) -> np.ndarray:
    """``plane`` scaled so that ``low`` is 0 and ``high`` 255 (NaN: 0)."""
    if high <= low:
        return np.where(np.isfinite(plane) & (plane > low), 255, 0).astype(np.uint8)
    scaled = (np.clip(plane, low, high) - low) * (255.0 / (high - low))
    return np.nan_to_num(np.rint(scaled), nan=0.0).astype(np.uint8)


def _resize_axis(array: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Resample one axis to ``size`` samples: block averages when shrinking, then linear."""
    moved = np.moveaxis(array, axis, 0)
    n = moved.shape[0]
    factor = n // size
    if factor >= 2:
        kept = n - n % factor
        moved = moved[:kept].reshape(kept // factor, factor, *moved.shape[1:]).mean(axis=1)
        n = moved.shape[0]
    if n != size:
        position = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        lower = np.floor(position).astype(int)
        upper = np.minimum(lower + 1, n - 1)
        weight = (position - lower).reshape(-1, *([1] * (moved.ndim - 1)))
        moved = moved[lower] * (1 - weight) + moved[upper] * weight
    return np.moveaxis(moved, 0, axis)


def resample(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``plane`` (2-D) resampled to ``shape`` (rows, columns).

    >>> resample(np.arange(16.0).reshape(4, 4), (2, 2)).tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    out = _resize_axis(np.asarray(plane, float), shape[0], 0)
    return _resize_axis(out, shape[1], 1)


def montage(
    volume: np.ndarray,
    sizes: tuple[float, float, float],
    box: int = THUMBNAIL_SIZE,
    gap: int = PANEL_GAP,
) -> np.ndarray:
    """Three middle planes of a RAS+ volume side by side, as one ``uint8`` picture.

    All planes share one scale (mm per pixel), chosen so that the largest side of the
    field of view is ``box`` pixels; planes are centred vertically on a black background.
    """
    planes = middle_planes(volume, sizes)
    extent = max(n * s for n, s in zip(volume.shape, sizes, strict=True))
    scale = box / extent if extent > 0 else 1.0
    low, high = window([np.asarray(p, float) for p, _ in planes])
    panels = []
    for plane, (row_mm, col_mm) in planes:
        shape = (
            max(1, min(box, round(plane.shape[0] * row_mm * scale))),
            max(1, min(box, round(plane.shape[1] * col_mm * scale))),
        )
        panels.append(to_uint8(resample(plane, shape), low, high))
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    picture = np.zeros((height, width), np.uint8)
    column = 0
    for i, panel in enumerate(panels):
        if i:
            picture[:, column - gap : column] = GAP_VALUE
        top = (height - panel.shape[0]) // 2
        picture[top : top + panel.shape[0], column : column + panel.shape[1]] = panel
        column += panel.shape[1] + gap
    return picture


def read_first_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 3-D volume of a NIfTI image (as numbers) and its affine.

    Only the first volume of a 4-D image is read. Complex data gives magnitudes, RGB data
    its mean. Raises nibabel's and numpy's errors (``ImageFileError``, ``OSError``,
    ``ValueError``, ``EOFError``) for unreadable files.
    """
    image = nib.load(path)
    if not isinstance(image, nib.spatialimages.SpatialImage):
        raise ValueError(f"{path} is not an image with a shape and an affine")
    shape = image.shape
    if len(shape) > 3:
        data = np.asanyarray(image.dataobj[(slice(None),) * 3 + (0,) * (len(shape) - 3)])
    else:
        data = np.asanyarray(image.dataobj)
    while data.ndim < 3:
        data = data[..., np.newaxis]
    if data.dtype.names:  # RGB(A) images
        data = np.mean([data[name].astype(float) for name in data.dtype.names], axis=0)
    elif np.iscomplexobj(data):
        data = np.abs(data)
    return np.asarray(data), np.asarray(image.affine)


def thumbnail_png(path: Path, box: int = THUMBNAIL_SIZE, software: str | None = None) -> bytes:
    """The thumbnail of a NIfTI image as PNG bytes (see :func:`montage`), with an optional
    ``Software`` text."""
    volume, affine = read_first_volume(path)
    ras, sizes = to_ras(volume, affine)
    return encode_png(montage(ras, sizes, box), software=software)
