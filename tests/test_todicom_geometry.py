"""Pure geometry of ``bidsport todicom``: NIfTI affines (RAS+) ↔ DICOM slice stacks (LPS+).

The central check: for any orthogonal grid (every axis permutation and flip, oblique
rotations, anisotropic voxels), the DICOM frames and their ImagePositionPatient /
ImageOrientationPatient / PixelSpacing put every voxel value at the same place in the
patient as the NIfTI affine does.
"""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest

from bidsport.todicom import geometry, pixels, reference, sidecar, writers
from bidsport.todicom.geometry import (
    DCM2NIIX_ORDER,
    VoxelOrder,
    affine_from_dicom,
    box_overlap,
    choose_voxel_order,
    from_frames,
    lps_to_ras,
    max_axis_cosine,
    order_matrix,
    patient_orientation,
    ras_to_lps,
    same_grid,
    stack_affine,
    stack_geometry,
    to_frames,
    world_corners,
)


@pytest.mark.parametrize("module", [geometry, pixels, reference, sidecar, writers])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)  # type: ignore[arg-type]
    assert result.attempted > 0
    assert result.failed == 0


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(perm: tuple[int, ...], signs: tuple[int, ...], rot: np.ndarray) -> np.ndarray:
    """A RAS affine: voxel axes permuted/flipped, rotated, anisotropic, off-centre."""
    spacing = np.array([0.9, 1.3, 2.7])
    base = np.zeros((3, 3))
    for voxel_axis, (world_axis, sign) in enumerate(zip(perm, signs, strict=True)):
        base[world_axis, voxel_axis] = sign * spacing[voxel_axis]
    a = np.eye(4)
    a[:3, :3] = rot @ base
    a[:3, 3] = [-71.25, 103.5, -12.125]
    return a


ROTATIONS = {
    "straight": rotation(0, 0, 0),
    "oblique": rotation(np.radians(17), np.radians(-9), np.radians(4)),
    "double-oblique-45": rotation(np.radians(45), np.radians(30), 0),
}
GRIDS = [
    (perm, signs, name)
    for perm in itertools.permutations(range(3))
    for signs in itertools.product((1, -1), repeat=3)
    for name in ROTATIONS
]


def dicom_world(geo: geometry.StackGeometry, frame: int, row: int, column: int) -> np.ndarray:
    """LPS position of a pixel by the DICOM formula (PS3.3 C.7.6.2.1.1)."""
    return (
        np.asarray(geo.positions[frame])
        + column * geo.pixel_spacing[1] * np.asarray(geo.row_direction)
        + row * geo.pixel_spacing[0] * np.asarray(geo.column_direction)
    )


@pytest.mark.parametrize(("perm", "signs", "rot"), GRIDS)
def test_every_voxel_lands_where_the_affine_puts_it(
    perm: tuple[int, ...], signs: tuple[int, ...], rot: str
) -> None:
    shape = (5, 4, 3)
    affine = make_affine(perm, signs, ROTATIONS[rot])
    volume = np.arange(np.prod(shape)).reshape(shape)
    rng = np.random.default_rng(0)
    target_rows = [None, rotation(*rng.uniform(-1, 1, 3))]
    for target in target_rows:
        if target is None:
            order = choose_voxel_order(affine)
        else:
            order = choose_voxel_order(affine, target[:, 0], target[:, 1])
        geo = stack_geometry(affine, shape, order)
        frames = to_frames(volume, order)
        assert frames.shape == (geo.n_frames, geo.rows, geo.columns)
        assert np.isclose(np.dot(geo.row_direction, geo.column_direction), 0, atol=1e-12)
        assert np.isclose(np.linalg.norm(geo.row_direction), 1)
        lps = ras_to_lps(affine)
        for f, r, c in itertools.product(range(geo.n_frames), range(geo.rows), range(geo.columns)):
            value = frames[f, r, c]
            voxel = np.argwhere(volume == value)[0]
            expected = lps[:3, :3] @ voxel + lps[:3, 3]
            assert np.allclose(dicom_world(geo, f, r, c), expected, atol=1e-6)
        assert np.array_equal(from_frames(frames, order), volume)


def test_dcm2niix_order_is_the_default_and_inverts_its_2d_layout() -> None:
    # dcm2niix writes an axial 2D series (rows → +x LPS, columns → +y LPS) as LAS storage.
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])
    assert choose_voxel_order(affine) == DCM2NIIX_ORDER
    geo = stack_geometry(affine, (4, 5, 3), DCM2NIIX_ORDER)
    assert geo.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert geo.pixel_spacing == (2.0, 2.0)
    assert geo.slice_spacing == 3.0


@pytest.mark.parametrize(
    ("row", "col", "expected_axes"),
    [
        ((1, 0, 0), (0, 1, 0), (0, 1, 2)),  # axial
        ((1, 0, 0), (0, 0, -1), (0, 2, 1)),  # coronal
        ((0, 1, 0), (0, 0, -1), (1, 2, 0)),  # sagittal
    ],
)
def test_order_follows_the_reference_orientation(row, col, expected_axes) -> None:  # type: ignore[no-untyped-def]
    ras = np.diag([1.0, 1.0, 1.0, 1.0])  # RAS storage of a cube
    order = choose_voxel_order(ras, row, col)
    assert order.axes == expected_axes
    geo = stack_geometry(ras, (3, 3, 3), order)
    assert np.allclose(geo.row_direction, row)
    assert np.allclose(geo.column_direction, col)


def test_stack_affine_and_affine_from_dicom_invert_stack_geometry() -> None:
    affine = make_affine((2, 0, 1), (1, -1, 1), ROTATIONS["oblique"])
    shape = (6, 7, 8)
    order = VoxelOrder((1, 0, 2), (True, False, True))
    geo = stack_geometry(affine, shape, order)
    expected = affine @ order_matrix(order, shape)
    assert np.allclose(stack_affine(geo), expected, atol=1e-9)
    again = affine_from_dicom(geo.orientation, geo.positions, geo.pixel_spacing)
    assert np.allclose(again, expected, atol=1e-9)


def test_ras_lps_is_an_involution() -> None:
    a = make_affine((0, 1, 2), (1, 1, 1), ROTATIONS["oblique"])
    assert np.allclose(lps_to_ras(ras_to_lps(a)), a)
    assert np.allclose(ras_to_lps(a)[:2], -a[:2])
    assert np.allclose(ras_to_lps(a)[2], a[2])


def test_shear_is_detected() -> None:
    assert max_axis_cosine(make_affine((0, 1, 2), (1, -1, 1), ROTATIONS["oblique"])) < 1e-12
    sheared = np.diag([1.0, 1.0, 1.0, 1.0])
    sheared[0, 2] = 0.2  # slices shifted sideways (gantry tilt)
    assert max_axis_cosine(sheared) == pytest.approx(0.2 / np.hypot(1, 0.2))


def test_overlap_and_corners() -> None:
    a = world_corners(np.eye(4), (10, 10, 10))
    assert a.min(axis=0).tolist() == [-0.5, -0.5, -0.5]
    assert a.max(axis=0).tolist() == [9.5, 9.5, 9.5]
    far = np.eye(4)
    far[:3, 3] = 500
    assert box_overlap(a, world_corners(far, (10, 10, 10))) == 0.0
    inner = np.diag([0.5, 0.5, 0.5, 1.0])
    assert box_overlap(a, world_corners(inner, (4, 4, 4))) == 1.0


def test_same_grid() -> None:
    affine = make_affine((0, 1, 2), (-1, 1, 1), ROTATIONS["straight"])
    geo = stack_geometry(affine, (4, 4, 4), DCM2NIIX_ORDER)
    assert same_grid(geo, geo)
    shifted = affine.copy()
    shifted[0, 3] += 0.5
    assert not same_grid(geo, stack_geometry(shifted, (4, 4, 4), DCM2NIIX_ORDER))


def test_patient_orientation_letters() -> None:
    assert patient_orientation((-1, 0, 0)) == "R"
    assert patient_orientation((0, -1, 0)) == "A"
    assert patient_orientation((0.8, 0.0, -0.6)) == "LF"
    assert patient_orientation((0.0, 0.001, 1.0)) == "H"


@pytest.mark.parametrize(("perm", "signs", "rot"), GRIDS)
def test_a_single_plane_is_one_frame_in_its_own_plane(
    perm: tuple[int, ...], signs: tuple[int, ...], rot: str
) -> None:
    """Whatever axis is one voxel thick: one frame, rows and columns along the two others,
    shown as scanners show that plane (axial: rows to the left; else columns down)."""
    affine = make_affine(perm, signs, ROTATIONS[rot])
    lps = ras_to_lps(affine)
    for thin in range(3):
        shape = tuple(1 if axis == thin else n for axis, n in enumerate((5, 4, 3)))
        assert geometry.single_plane_axis(shape) == thin
        order = geometry.single_plane_order(affine, shape)
        assert order is not None and order.axes[2] == thin
        geo = stack_geometry(affine, shape, order)
        assert (geo.n_frames, geo.rows * geo.columns) == (1, int(np.prod(shape)))
        row, col = geometry.plane_directions(lps[:3, thin])
        assert np.dot(geo.row_direction, row) > 0.5 and np.dot(geo.column_direction, col) > 0.5
        volume = np.arange(np.prod(shape)).reshape(shape)
        frames = to_frames(volume, order)
        for r, c in itertools.product(range(geo.rows), range(geo.columns)):
            voxel = np.argwhere(volume == frames[0, r, c])[0]
            expected = lps[:3, :3] @ voxel + lps[:3, 3]
            assert np.allclose(dicom_world(geo, 0, r, c), expected, atol=1e-6)
    assert geometry.single_plane_order(affine, (5, 4, 3)) is None
    assert geometry.single_plane_order(affine, (1, 1, 3)) is None
