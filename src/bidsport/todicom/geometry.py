"""Pure geometry: NIfTI voxel grids (RAS+ affines) ↔ DICOM slice stacks (LPS+).

A NIfTI affine maps voxel indices ``(i, j, k)`` to RAS+ millimetres; DICOM positions are
LPS+: the change of coordinates is ``diag(-1, -1, 1)``, whatever the storage order of the
voxels. A DICOM slice stack needs three of the NIfTI voxel axes: one along which the
*columns* of a frame run (``ImageOrientationPatient[:3]``, the row direction), one along
which the *rows* run (``ImageOrientationPatient[3:]``) and one that steps from frame to
frame. :class:`VoxelOrder` says which NIfTI axis plays each part and whether it is walked
backwards; any choice is lossless (a permutation and flips of the array).

:func:`choose_voxel_order` picks the order whose axes are closest to a target orientation
(the reference series', so the new series is displayed like its source). Without a target it
inverts what dcm2niix does for 2D acquisitions (columns → ``i``, rows → reversed ``j``,
frames → ``k``), so a dcm2niix NIfTI goes back to the slices it came from.

Nothing here reads or writes files.

>>> from typing import Any

import numpy as np
>>> affine = np.diag([-2.0, 2.0, 3.0, 1.0])           # LAS storage, as dcm2niix writes axials
>>> order = choose_voxel_order(affine)
>>> geo = stack_geometry(affine, (4, 5, 3), order)
>>> geo.orientation                                   # rows run to patient left, columns back
(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
>>> geo.positions[0], geo.positions[2]
((0.0, -8.0, 0.0), (0.0, -8.0, 6.0))
>>> bool(np.allclose(stack_affine(geo), affine @ order_matrix(order, (4, 5, 3))))
True
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: RAS+ ↔ LPS+ (its own inverse).
RAS_TO_LPS: FloatArray = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Largest |cosine| between two voxel axes accepted as orthogonal. dcm2niix stores affines
#: as float32, so real axes are orthogonal to ~1e-7; 1e-4 keeps the position error of a
#: 256 mm field of view below 0.03 mm.
ORTHOGONALITY_TOLERANCE = 1e-4


Vec3 = tuple[float, float, float]


def vec3(values: Sequence[float] | npt.NDArray[Any], digits: int | None = None) -> Vec3:
    """Three floats (rounded to ``digits`` decimals when given, without ``-0.0``)."""
    v = [float(x) for x in values]
    if digits is not None:
        v = [round(x, digits) + 0.0 for x in v]
    return (v[0], v[1], v[2])


def ras_to_lps(affine: npt.ArrayLike) -> FloatArray:
    """The same affine with world coordinates in LPS+ (DICOM) instead of RAS+ (NIfTI).

    >>> ras_to_lps(np.diag([2.0, 2.0, 2.0, 1.0]))[:3, :3].diagonal().tolist()
    [-2.0, -2.0, 2.0]
    """
    return RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)


def lps_to_ras(affine: npt.ArrayLike) -> FloatArray:
    """Inverse of :func:`ras_to_lps` (the same matrix product)."""
    return RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)


@dataclass(frozen=True)
class VoxelOrder:
    """Which NIfTI voxel axis becomes the DICOM columns, rows and frames.

    ``axes[0]`` is the axis along a row (its index is the column number), ``axes[1]`` the
    axis along a column (its index is the row number), ``axes[2]`` the frame axis;
    ``flips[n]`` is True when that axis is walked from its last index to its first.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]


#: dcm2niix writes 2D acquisitions with columns along i, rows along reversed j, slices along k.
DCM2NIIX_ORDER = VoxelOrder((0, 1, 2), (False, True, False))


@dataclass(frozen=True)
class StackGeometry:
    """A DICOM slice stack: the geometry of every frame of one volume, in LPS+ mm.

    ``pixel_spacing`` is in DICOM order: (distance between rows, distance between columns).
    """

    rows: int
    columns: int
    row_direction: tuple[float, float, float]  #: ImageOrientationPatient[:3]
    column_direction: tuple[float, float, float]  #: ImageOrientationPatient[3:]
    pixel_spacing: tuple[float, float]
    slice_spacing: float  #: distance between frame centres along the frame axis
    positions: tuple[tuple[float, float, float], ...]  #: ImagePositionPatient of each frame

    @property
    def orientation(self) -> tuple[float, ...]:
        """ImageOrientationPatient (6 direction cosines)."""
        return self.row_direction + self.column_direction

    @property
    def normal(self) -> Vec3:
        """Unit normal of the frames: row direction * column direction."""
        return vec3(np.cross(self.row_direction, self.column_direction))

    @property
    def n_frames(self) -> int:
        return len(self.positions)


def axis_lengths(affine: npt.ArrayLike) -> FloatArray:
    """Voxel size along each voxel axis (norms of the affine's first three columns)."""
    a = np.asarray(affine, dtype=np.float64)
    return np.asarray(np.linalg.norm(a[:3, :3], axis=0), dtype=np.float64)


def max_axis_cosine(affine: npt.ArrayLike) -> float:
    """Largest |cosine| between two voxel axes: 0 for an orthogonal grid, >0 for a sheared one.

    >>> max_axis_cosine(np.diag([1.0, 2.0, 3.0, 1.0]))
    0.0
    >>> round(max_axis_cosine([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), 3)
    0.707
    """
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    lengths = np.linalg.norm(a, axis=0)
    if np.any(lengths == 0):
        return 1.0
    u = a / lengths
    cos = u.T @ u
    return float(np.max(np.abs(cos - np.diag(np.diag(cos)))))


def _directions(affine_lps: FloatArray) -> FloatArray:
    a = affine_lps[:3, :3]
    return np.asarray(a / np.linalg.norm(a, axis=0), dtype=np.float64)


def choose_voxel_order(
    affine: npt.ArrayLike,
    target_row: Sequence[float] | None = None,
    target_column: Sequence[float] | None = None,
    target_slice: Sequence[float] | None = None,
    *,
    frame_axis: int | None = None,
) -> VoxelOrder:
    """The voxel order whose DICOM axes are closest to a target orientation (LPS unit vectors).

    ``affine`` is RAS+. Without a target, :data:`DCM2NIIX_ORDER`. With one, every
    permutation and flip is scored by the sum of cosines between the resulting row, column
    and frame directions and the targets (``target_slice`` defaults to their cross product);
    the best wins, ties going to the first permutation in ``itertools`` order. ``frame_axis``
    (with a target) keeps only the orders whose frames step along that voxel axis.

    >>> axial_ras = np.diag([1.0, 1.0, 1.0, 1.0])     # RAS storage of an axial volume
    >>> choose_voxel_order(axial_ras, (1, 0, 0), (0, 1, 0))
    VoxelOrder(axes=(0, 1, 2), flips=(True, True, False))
    >>> sagittal = choose_voxel_order(axial_ras, (0, 1, 0), (0, 0, -1))
    >>> sagittal.axes, sagittal.flips
    ((1, 2, 0), (True, True, False))
    """
    if target_row is None or target_column is None:
        return DCM2NIIX_ORDER
    row = np.asarray(target_row, dtype=np.float64)
    col = np.asarray(target_column, dtype=np.float64)
    slc = np.cross(row, col) if target_slice is None else np.asarray(target_slice, np.float64)
    targets = (row, col, slc)
    dirs = _directions(ras_to_lps(affine))
    best: tuple[float, VoxelOrder] | None = None
    for axes in itertools.permutations(range(3)):
        if frame_axis is not None and axes[2] != frame_axis:
            continue
        score = 0.0
        flips = []
        for axis, target in zip(axes, targets, strict=True):
            cos = float(np.dot(dirs[:, axis], target))
            flips.append(cos < 0)
            score += abs(cos)
        if best is None or score > best[0] + 1e-9:
            order = VoxelOrder((axes[0], axes[1], axes[2]), (flips[0], flips[1], flips[2]))
            best = (score, order)
    assert best is not None
    return best[1]


def single_plane_axis(shape: Sequence[int]) -> int | None:
    """The voxel axis of length 1 of a single-plane image (the two others longer), else None.

    >>> single_plane_axis((6, 16, 1)), single_plane_axis((1, 16, 16)), single_plane_axis((4, 5, 6))
    (2, 0, None)
    """
    spatial = [int(n) for n in shape[:3]]
    thin = [axis for axis, n in enumerate(spatial) if n == 1]
    return thin[0] if len(thin) == 1 else None


#: Row and column directions (LPS) in which scanners show axial, coronal and sagittal images,
#: by the LPS axis (0 = x, 1 = y, 2 = z) nearest to the plane's normal.
STANDARD_PLANES: dict[int, tuple[Vec3, Vec3]] = {
    2: ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # axial: rows to the left, columns to the back
    1: ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # coronal: rows to the left, columns down
    0: ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # sagittal: rows to the back, columns down
}


def plane_directions(normal: Sequence[float] | npt.NDArray[Any]) -> tuple[Vec3, Vec3]:
    """Row and column directions (LPS) for a plane of this normal, as scanners show it.

    >>> plane_directions((0.1, 0.05, -0.99))
    ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    """
    return STANDARD_PLANES[int(np.argmax(np.abs(np.asarray(normal, dtype=np.float64))))]


def single_plane_order(affine: npt.ArrayLike, shape: Sequence[int]) -> VoxelOrder | None:
    """For a single-plane image (see :func:`single_plane_axis`): the order that writes it as
    one frame in its own plane, rows and columns as scanners show that plane. Else None.

    >>> order = single_plane_order(np.diag([-2.0, 2.0, 3.0, 1.0]), (6, 1, 16))  # coronal
    >>> order.axes[2], stack_geometry(np.diag([-2.0, 2.0, 3.0, 1.0]), (6, 1, 16), order).rows
    (1, 16)
    """
    thin = single_plane_axis(shape)
    if thin is None:
        return None
    normal = ras_to_lps(affine)[:3, thin]
    row, column = plane_directions(normal)
    return choose_voxel_order(affine, row, column, frame_axis=thin)


def order_matrix(order: VoxelOrder, shape: Sequence[int]) -> FloatArray:
    """The 4*4 matrix taking (column, row, frame) indices to the NIfTI voxel indices.

    ``affine @ order_matrix(order, shape)`` is the affine of the DICOM stack, indexed
    ``(column, row, frame)``.
    """
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for dicom_axis, (axis, flip) in enumerate(zip(order.axes, order.flips, strict=True)):
        if flip:
            m[axis, dicom_axis] = -1.0
            m[axis, 3] = float(shape[axis] - 1)
        else:
            m[axis, dicom_axis] = 1.0
    return m


def _orthonormal_pair(u: FloatArray, v: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The orthonormal pair nearest to (u, v), moving both symmetrically."""
    m = np.stack([u, v], axis=1)
    w, _, vt = np.linalg.svd(m, full_matrices=False)
    q = w @ vt
    return q[:, 0], q[:, 1]


def _clean(value: float, digits: int = 12) -> float:
    """Round off float noise (so 0.9999999999999998 is written as 1.0)."""
    return float(round(value, digits)) + 0.0


def stack_geometry(affine: npt.ArrayLike, shape: Sequence[int], order: VoxelOrder) -> StackGeometry:
    """The DICOM stack of a NIfTI grid (RAS+ ``affine``, spatial ``shape``) in ``order``.

    The grid must be orthogonal (see :func:`max_axis_cosine`); the row and column
    directions are made exactly orthonormal, which moves them by less than the tolerance.
    """
    shape3 = tuple(int(n) for n in shape[:3])
    stack = ras_to_lps(affine) @ order_matrix(order, shape3)
    lengths = np.linalg.norm(stack[:3, :3], axis=0)
    row_dir, col_dir = _orthonormal_pair(stack[:3, 0] / lengths[0], stack[:3, 1] / lengths[1])
    n_frames = shape3[order.axes[2]]
    positions = tuple(
        vec3(stack[:3, :3] @ np.array([0.0, 0.0, f]) + stack[:3, 3], 9) for f in range(n_frames)
    )
    return StackGeometry(
        rows=shape3[order.axes[1]],
        columns=shape3[order.axes[0]],
        row_direction=vec3(row_dir, 12),
        column_direction=vec3(col_dir, 12),
        pixel_spacing=(_clean(float(lengths[1]), 9), _clean(float(lengths[0]), 9)),
        slice_spacing=_clean(float(lengths[2]), 9),
        positions=positions,
    )


def to_frames(volume: npt.NDArray[np.generic], order: VoxelOrder) -> npt.NDArray[np.generic]:
    """Rearrange a NIfTI array (x, y, z[, t]) as DICOM frames (z', rows, columns[, t]).

    >>> vol = np.arange(24).reshape(2, 3, 4)
    >>> frames = to_frames(vol, DCM2NIIX_ORDER)
    >>> frames.shape
    (4, 3, 2)
    >>> int(frames[0, 0, 0]) == int(vol[0, 2, 0])     # row 0 is the last j
    True
    """
    extra = tuple(range(3, volume.ndim))
    out = np.transpose(volume, (order.axes[2], order.axes[1], order.axes[0], *extra))
    flips = [d for d, f in zip((2, 1, 0), order.flips, strict=True) if f]
    return np.flip(out, axis=tuple(flips)) if flips else out


def from_frames(frames: npt.NDArray[np.generic], order: VoxelOrder) -> npt.NDArray[np.generic]:
    """Inverse of :func:`to_frames`."""
    flips = [d for d, f in zip((2, 1, 0), order.flips, strict=True) if f]
    out = np.flip(frames, axis=tuple(flips)) if flips else frames
    perm = (order.axes[2], order.axes[1], order.axes[0])
    inverse = tuple(int(np.argsort(perm)[n]) for n in range(3))
    extra = tuple(range(3, frames.ndim))
    return np.transpose(out, (*inverse, *extra))


def stack_affine(geometry: StackGeometry) -> FloatArray:
    """RAS+ affine of a stack indexed (column, row, frame) — for comparisons and bounding boxes.

    Uses the first and last positions for the frame step, as dcm2niix does.
    """
    row = np.asarray(geometry.row_direction) * geometry.pixel_spacing[1]
    col = np.asarray(geometry.column_direction) * geometry.pixel_spacing[0]
    first = np.asarray(geometry.positions[0])
    if geometry.n_frames > 1:
        step = (np.asarray(geometry.positions[-1]) - first) / (geometry.n_frames - 1)
    else:
        step = np.asarray(geometry.normal) * geometry.slice_spacing
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row, col, step, first
    return lps_to_ras(lps)


def affine_from_dicom(
    orientation: Sequence[float],
    positions: Sequence[Sequence[float]],
    pixel_spacing: Sequence[float],
    slice_thickness: float | None = None,
) -> FloatArray:
    """RAS+ affine of DICOM frames indexed (column, row, frame), frames in the given order.

    >>> a = affine_from_dicom((1, 0, 0, 0, 1, 0), [(-10, -20, 5), (-10, -20, 8)], (2, 1))
    >>> a[:3].tolist()
    [[-1.0, 0.0, 0.0, 10.0], [0.0, -2.0, 0.0, 20.0], [0.0, 0.0, 3.0, 5.0]]
    """
    geo = StackGeometry(
        rows=0,
        columns=0,
        row_direction=vec3(orientation[:3]),
        column_direction=vec3(orientation[3:6]),
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
        slice_spacing=float(slice_thickness or 1.0),
        positions=tuple(vec3(p) for p in positions),
    )
    return stack_affine(geo)


def patient_orientation(direction: Sequence[float], threshold: float = 0.01) -> str:
    """DICOM PatientOrientation letters of an LPS direction, most dominant first.

    >>> patient_orientation((1, 0, 0)), patient_orientation((0, 0.6, -0.8))
    ('L', 'FP')
    """
    letters = (("R", "L"), ("A", "P"), ("F", "H"))
    parts = sorted(
        ((abs(c), letters[axis][c > 0]) for axis, c in enumerate(direction) if abs(c) >= threshold),
        reverse=True,
    )
    return "".join(letter for _, letter in parts[:3])


def world_corners(affine: npt.ArrayLike, shape: Sequence[int]) -> FloatArray:
    """The 8 corners (voxel edges, not centres) of a grid, in the affine's world space (8*3)."""
    a = np.asarray(affine, dtype=np.float64)
    lo = [-0.5, -0.5, -0.5]
    hi = [float(n) - 0.5 for n in shape[:3]]
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    return np.asarray(corners @ a[:3, :3].T + a[:3, 3], dtype=np.float64)


def box_overlap(corners_a: npt.ArrayLike, corners_b: npt.ArrayLike) -> float:
    """Overlap of two point clouds' axis-aligned boxes, as a fraction of the smaller box.

    1.0 when one box lies inside the other, 0.0 when they are disjoint.

    >>> a = world_corners(np.eye(4), (10, 10, 10))
    >>> b = world_corners(np.eye(4) + np.array([[0, 0, 0, 5]] * 3 + [[0, 0, 0, 0]]), (10, 10, 10))
    >>> box_overlap(a, b)
    0.125
    """
    a, b = np.asarray(corners_a, np.float64), np.asarray(corners_b, np.float64)
    lo = np.maximum(a.min(axis=0), b.min(axis=0))
    hi = np.minimum(a.max(axis=0), b.max(axis=0))
    inter = float(np.prod(np.clip(hi - lo, 0.0, None)))
    vol_a = float(np.prod(a.max(axis=0) - a.min(axis=0)))
    vol_b = float(np.prod(b.max(axis=0) - b.min(axis=0)))
    smaller = min(vol_a, vol_b)
    return inter / smaller if smaller > 0 else 0.0


def same_grid(a: StackGeometry, b: StackGeometry, tolerance_mm: float = 1e-3) -> bool:
    """True when two stacks have the same frames (orientation, spacing, positions, size)."""
    if (a.rows, a.columns, a.n_frames) != (b.rows, b.columns, b.n_frames):
        return False
    if not np.allclose(a.orientation, b.orientation, atol=1e-4):
        return False
    if not np.allclose(a.pixel_spacing, b.pixel_spacing, atol=tolerance_mm):
        return False
    return bool(np.allclose(a.positions, b.positions, atol=tolerance_mm))
