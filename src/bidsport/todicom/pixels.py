"""Voxel values → 16-bit DICOM pixels with RescaleSlope/RescaleIntercept (pure).

Integers that fit 16 bits are stored as they are (exact), with the NIfTI's own scaling
when it has one. Other data (floats, wide integers) are quantized to 65 536 levels over
their range: ``value = stored * slope + intercept``. The slope and intercept are decimal
strings of at most 16 characters (DICOM DS); the stored integers are computed with the
*written* slope and intercept, so the stated error is the real one.

>>> import numpy as np
>>> enc = encode_values(np.array([0.0, 0.5, 1.0, 2.0]))
>>> enc.exact, enc.rescaled
(False, True)
>>> bool(np.all(np.abs(enc.decoded() - [0.0, 0.5, 1.0, 2.0]) <= enc.max_error))
True
>>> encode_values(np.array([0, 7, 300])).exact
True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.valuerep import format_number_as_ds

log = logging.getLogger(__name__)

UINT16_MAX = 65535
INT16_MIN, INT16_MAX = -32768, 32767


def ds(value: float) -> str:
    """A number as a DICOM decimal string (≤ 16 characters, as precise as that allows).

    >>> ds(1 / 3), ds(2.0), ds(-1234.5678901234567)
    ('0.33333333333333', '2.0', '-1234.5678901235')
    """
    text = format_number_as_ds(float(value))
    return "0.0" if text in ("-0.0", "0") else text


@dataclass(frozen=True, eq=False)
class PixelEncoding:
    """Stored 16-bit pixels and how to decode them."""

    stored: npt.NDArray[Any]  #: uint16 or int16, the input's shape
    slope: str  #: RescaleSlope (DS text)
    intercept: str  #: RescaleIntercept (DS text)
    max_error: float  #: largest |decoded - original value|, 0.0 when exact
    exact: bool
    window: tuple[float, float]  #: WindowCenter, WindowWidth (in decoded units)
    note: str  #: one line for logs and DerivationDescription

    @property
    def signed(self) -> bool:
        return bool(self.stored.dtype == np.int16)

    @property
    def rescaled(self) -> bool:
        return float(self.slope) != 1.0 or float(self.intercept) != 0.0

    def decoded(self) -> npt.NDArray[np.float64]:
        return self.stored.astype(np.float64) * float(self.slope) + float(self.intercept)


def _window(values: npt.NDArray[Any]) -> tuple[float, float]:
    step = max(1, round((values.size / 200_000) ** (1 / max(values.ndim, 1))))
    sample = values[(slice(None, None, step),) * values.ndim].astype(np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    width = max(float(hi - lo), 1e-6)
    return (float(lo + hi) / 2.0, width)


def _int_dtype(lo: float, hi: float) -> type[np.integer[Any]] | None:
    if lo >= 0 and hi <= UINT16_MAX:
        return np.uint16
    if lo >= INT16_MIN and hi <= INT16_MAX:
        return np.int16
    return None


def encode_values(
    stored: npt.NDArray[Any], slope: float = 1.0, intercept: float = 0.0, name: str = "values"
) -> PixelEncoding:
    """Encode an array (values = ``stored * slope + intercept``, the NIfTI convention);
    ``name`` (the file's) is what a warning names."""
    scaled = slope != 1.0 or intercept != 0.0
    if stored.dtype.kind in "biu" and stored.size:
        lo, hi = int(stored.min()), int(stored.max())
        target = _int_dtype(lo, hi)
        if target is not None:
            out = stored.astype(target)
            s_text, b_text = ds(slope), ds(intercept)
            window = _window(stored.astype(np.float64) * slope + intercept)
            if not scaled:
                return PixelEncoding(out, "1.0", "0.0", 0.0, True, window, "integers, exact")
            # The NIfTI stores its slope as float32: the 16-digit text reads back the same.
            err = max(abs(lo), abs(hi)) * abs(float(s_text) - slope) + abs(
                float(b_text) - intercept
            )
            return PixelEncoding(
                out,
                s_text,
                b_text,
                err,
                True,
                window,
                f"integers with the NIfTI's scaling (slope {s_text}, intercept {b_text})",
            )
    values = stored.astype(np.float64)
    if scaled:
        values = values * slope + intercept
    finite = np.isfinite(values)
    if not finite.all():
        n_bad = int(values.size - finite.sum())
        log.warning(
            "%s: %d non-finite voxel values (NaN/inf) set to 0 (stored as the level nearest 0)",
            name,
            n_bad,
        )
        values = np.where(finite, values, 0.0)
    if values.size == 0:
        return PixelEncoding(stored.astype(np.uint16), "1.0", "0.0", 0.0, True, (0.0, 1.0), "")
    vmin, vmax = float(values.min()), float(values.max())
    window = _window(values)
    target = _int_dtype(vmin, vmax)
    if target is not None and np.array_equal(values, np.round(values)):
        return PixelEncoding(
            values.astype(target), "1.0", "0.0", 0.0, True, window, "integer values, exact"
        )
    b_text = ds(vmin)
    b = float(b_text)
    if vmax == vmin:
        out = np.zeros(values.shape, np.uint16)
        err = abs(b - vmin)
        return PixelEncoding(out, "1.0", b_text, err, err == 0.0, window, "constant image")
    s_text = ds((vmax - b) / UINT16_MAX)
    s = float(s_text)
    if s <= 0:  # range below DS resolution: cannot happen for finite doubles, but be safe
        s_text, s = ds(np.nextafter(0.0, 1.0)), float(np.nextafter(0.0, 1.0))
    q = np.clip(np.rint((values - b) / s), 0, UINT16_MAX).astype(np.uint16)
    err = float(np.max(np.abs(q.astype(np.float64) * s + b - values)))
    note = (
        f"quantized to 16 bits: RescaleSlope {s_text}, RescaleIntercept {b_text}, "
        f"max abs error {err:.3g}"
    )
    return PixelEncoding(q, s_text, b_text, err, False, window, note)


def label_values(
    stored: npt.NDArray[Any], slope: float = 1.0, intercept: float = 0.0, limit: int = 64
) -> tuple[int, ...] | None:
    """The distinct non-zero labels of an integer-valued, non-negative image, or None.

    None when values are not integers, are negative, or there are more than ``limit``
    distinct non-zero ones (then it is an image, not a label map).

    >>> label_values(np.array([0, 3, 3, 1]))
    (1, 3)
    >>> label_values(np.array([0.0, 0.5])) is None
    True
    """
    if stored.size == 0:
        return None
    if stored.dtype.kind in "biu" and slope == 1.0 and intercept == 0.0:
        ints = stored
    else:
        values = stored.astype(np.float64) * slope + intercept
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            return None
        ints = values.astype(np.int64)
    lo, hi = int(ints.min()), int(ints.max())
    if lo < 0:
        return None
    if hi < 1 << 20:
        counts = np.bincount(ints.reshape(-1).astype(np.int64), minlength=1)
        found = np.flatnonzero(counts[1:]) + 1
    else:
        found = np.unique(ints)
        found = found[found != 0]
    if found.size == 0 or found.size > limit:
        return None
    return tuple(int(v) for v in found)
