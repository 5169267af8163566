"""Distance transforms in mm against analytic distances and SciPy's exact transform."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmiron._distance import depth_mm, within_mm


def test_depth_of_a_slab_is_the_distance_to_its_faces_in_mm():
    # a slab of 10 planes along the anisotropic axis: depth = distance to the nearest plane
    # outside it, (k + 1) voxels of 2.5 mm; the array's own edge is no boundary
    vs = (0.9, 1.2, 2.5)
    mask = np.zeros((4, 5, 20), bool)
    mask[:, :, 5:15] = True
    d = depth_mm(mask, vs)
    k = np.arange(20)
    expect = np.where((k >= 5) & (k < 15), np.minimum(k - 4, 15 - k) * 2.5, 0.0)
    np.testing.assert_allclose(d[2, 3], expect, rtol=1e-6)
    assert d.dtype == np.float32


@pytest.mark.parametrize("order", ["C", "F"])
def test_depth_equals_scipy_on_an_anisotropic_random_mask(order):
    rng = np.random.default_rng(3)
    mask = ndi.binary_opening(rng.random((30, 40, 25)) > 0.3)
    vs = (1.0, 0.7, 2.2)
    ref = ndi.distance_transform_edt(mask, sampling=vs)
    got = depth_mm(np.array(mask, order=order), vs)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)


def test_within_counts_the_voxels_of_an_ellipsoid():
    # voxels within 3 mm of one voxel on a 1 x 1 x 1.5 mm grid: the lattice points of the
    # ellipsoid i^2 + j^2 + (1.5 k)^2 <= 9, boundary points included (i = 3 and k = 2 lie on
    # it): 29 in the central plane, 21 in each neighbour (i^2 + j^2 <= 6.75), 1 at k = +-2
    vs = (1.0, 1.0, 1.5)
    seed = np.zeros((11, 11, 11), bool)
    seed[5, 5, 5] = True
    i, j, k = np.mgrid[-5:6, -5:6, -5:6]
    expect = i**2 + j**2 + (1.5 * k) ** 2 <= 9.0
    got = within_mm(seed, 3.0, vs)
    assert np.array_equal(got, expect)
    assert got.sum() == expect.sum() == 29 + 2 * 21 + 2


def test_empty_and_full_masks():
    vs = (1.0, 1.0, 1.0)
    empty = np.zeros((6, 6, 6), bool)
    assert not within_mm(empty, 5.0, vs).any()
    assert not depth_mm(empty, vs).any()
    assert np.isinf(depth_mm(~empty, vs)).all()  # no background anywhere: infinitely deep
