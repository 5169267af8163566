"""CSF reference and thalamus ROIs on synthetic geometry with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from qsmiron.anatomy.rois import (
    atrium_search_regions,
    csf_reference_roi,
    roi_qc,
    thalamus_roi,
)
from qsmiron.errors import InputError


def _ball(shape, centre, radius, vs=(1.0, 1.0, 1.0)):
    g = np.indices(shape).astype(float)
    return sum(((g[k] - centre[k]) * vs[k]) ** 2 for k in range(3)) <= radius**2


@pytest.fixture()
def scene():
    """Two thalami, a lateral ventricle behind each, a choroid-plexus knot in each atrium."""
    shape = (60, 60, 30)
    labels = np.zeros(shape, np.int16)
    labels[_ball(shape, (22, 34, 15), 7)] = 10  # left thalamus (x < 30 is left here)
    labels[_ball(shape, (38, 34, 15), 7)] = 49
    for x, code in ((16, 4), (44, 43)):
        vent = np.zeros(shape, bool)
        vent[x - 4:x + 4, 12:40, 9:21] = True  # body and atrium, posterior part y < 27
        labels[vent & (labels == 0)] = code
    r2s = np.full(shape, 20.0, np.float32)
    r2s[np.isin(labels, (4, 43))] = 3.0
    plexus = _ball(shape, (16, 20, 15), 2.5) | _ball(shape, (44, 20, 15), 2.5)
    r2s[plexus] = 30.0
    mask = np.ones(shape, bool)
    return labels, r2s, mask, plexus


def test_atrium_regions_lie_behind_the_thalamus(scene) -> None:
    labels, *_ = scene
    left, right = atrium_search_regions(labels, np.eye(4))
    # posterior pole of the thalamus at y = 27: the ventricle slab 2-14 mm behind it is
    # y = 13..25, centred at y = 19; the region is the ventricle within 12 mm of that centre
    g = np.indices(labels.shape)
    for region, code in ((left, 4), (right, 43)):
        vent = labels == code
        slab = vent & (g[1] >= 13) & (g[1] <= 25)
        centre = [g[k][slab].mean() for k in range(3)]
        expected = vent & (sum((g[k] - centre[k]) ** 2 for k in range(3)) <= 144)
        np.testing.assert_array_equal(region, expected)
        assert abs(centre[1] - 19.0) < 1e-9


def test_csf_reference_inside_csf_away_from_plexus(scene) -> None:
    labels, r2s, mask, plexus = scene
    sl, sr = atrium_search_regions(labels, np.eye(4))
    ref = csf_reference_roi(labels == 4, labels == 43, r2s, mask, 1.0, np.eye(4),
                            search_left=sl, search_right=sr, radius_mm=3.0)
    assert ref.mask.any()
    assert np.all(np.isin(labels[ref.mask], (4, 43)))  # CSF only
    assert not (ref.mask & plexus).any()
    # at least one voxel (1 mm) of CSF between the ROI and any non-CSF voxel
    from scipy import ndimage as ndi

    csf = np.isin(labels, (4, 43)) & (r2s < 10)
    assert ndi.distance_transform_edt(csf)[ref.mask].min() > 1.0
    # a ball of radius 3 mm holds at most 123 voxels at 1 mm
    for side in ("left", "right"):
        assert 0 < ref.sides[side]["n_voxels"] <= 123
    assert ref.sides["left"]["centre_world_mm"][0] < 30 < ref.sides["right"]["centre_world_mm"][0]
    assert ref.r2star_threshold == pytest.approx(10.0)  # half the median R2* (20 1/s)
    # the only flags: the toy thalami (1.4 mL) are smaller than any adult's
    assert roi_qc(thalamus_roi(labels == 10, labels == 49, None, mask, 1.0), ref.mask, r2s,
                  mask, 1.0) == ["thalamus_left_small", "thalamus_right_small"]


def test_whole_ventricle_reference_is_larger(scene) -> None:
    labels, r2s, mask, _ = scene
    ref = csf_reference_roi(labels == 4, labels == 43, r2s, mask, 1.0, np.eye(4),
                            method="ventricles")
    atr = csf_reference_roi(labels == 4, labels == 43, r2s, mask, 1.0, np.eye(4),
                            search_left=atrium_search_regions(labels, np.eye(4))[0],
                            search_right=atrium_search_regions(labels, np.eye(4))[1])
    assert ref.volume_mm3 > 3 * atr.volume_mm3
    assert np.all(np.isin(labels[ref.mask], (4, 43)))


def test_missing_ventricle_is_flagged_not_silent(scene) -> None:
    labels, r2s, mask, _ = scene
    sl, sr = atrium_search_regions(labels, np.eye(4))
    ref = csf_reference_roi(labels == 4, np.zeros_like(mask), r2s, mask, 1.0, np.eye(4),
                            search_left=sl, search_right=sr)
    assert "csf_ref_right_missing" in ref.flags
    assert ref.sides["right"]["n_voxels"] == 0 and ref.sides["left"]["n_voxels"] > 0


def test_qc_flags_for_a_bad_user_reference(scene) -> None:
    labels, r2s, mask, _ = scene
    thal = thalamus_roi(labels == 10, labels == 49, None, mask, 1.0)
    in_tissue = _ball(labels.shape, (30, 50, 15), 2)  # tissue: R2* 20 1/s
    flags = roi_qc(thal, in_tissue, r2s, mask, 1.0)
    assert "csf_ref_high_r2star" in flags
    tiny = np.zeros_like(mask)
    tiny[16, 20, 12] = True
    assert "csf_ref_small" in roi_qc(thal, tiny, r2s, mask, 1.0)
    # thalamus of 1.4 mL per side (balls of radius 7 voxels at 1 mm) is implausibly small
    assert {"thalamus_left_small", "thalamus_right_small"} <= set(flags)


def test_thalamus_vein_and_csf_rims_excluded() -> None:
    shape = (40, 40, 40)
    thal = _ball(shape, (20, 20, 20), 10)
    veins = np.zeros(shape, bool)
    veins[20, 20, :] = True  # a vein through the middle
    csf = np.zeros(shape, bool)
    csf[:, :, :12] = True  # CSF below z = 12
    mask = np.ones(shape, bool)
    g = np.indices(shape)
    roi = thalamus_roi(thal, np.zeros(shape, bool), veins, mask, 1.0, csf=csf)
    # vein and its one-voxel (26-neighbour) rim: the 3x3 column around x = y = 20
    vein_rim = thal & (np.abs(g[0] - 20) <= 1) & (np.abs(g[1] - 20) <= 1)
    csf_rim = thal & ~vein_rim & (g[2] <= 12)
    np.testing.assert_array_equal(thal & ~roi.left, vein_rim | csf_rim)
    assert roi.vein_fraction_excluded == pytest.approx(vein_rim.sum() / thal.sum())
    assert roi.csf_rim_fraction == pytest.approx(csf_rim.sum() / thal.sum())
    # rim 0 and a 1 mm margin: the vein and its 4 in-plane face neighbours (distance 1 mm)
    roi0 = thalamus_roi(thal, np.zeros(shape, bool), veins, mask, 1.0, 1.0, rim_voxels=0)
    expected = thal & ((g[0] - 20) ** 2 + (g[1] - 20) ** 2 <= 1)
    np.testing.assert_array_equal(thal & ~roi0.left, expected)
    assert roi0.outside_qsm_fraction == 0.0


def test_thalamus_leaving_the_qsm_region_is_measured_and_flagged(scene) -> None:
    """A QSM slab that ends inside the thalami (thin-slab GRE, or a mask eroded at the edge of
    the field of view): the fraction left out is the count of label voxels beyond the valid
    region, and more than 5% of it is flagged."""
    labels, r2s, mask, _ = scene
    thal_l, thal_r = labels == 10, labels == 49
    z = np.indices(labels.shape)[2]
    z_cut = int(np.median(z[thal_l | thal_r]))
    slab = mask & (z < z_cut)
    roi = thalamus_roi(thal_l, thal_r, None, slab, 1.0)
    beyond = (thal_l | thal_r) & ~slab
    assert 0.3 < beyond.sum() / (thal_l | thal_r).sum() < 0.7  # the cut is through the thalami
    assert roi.outside_qsm_fraction == pytest.approx(beyond.sum() / (thal_l | thal_r).sum())
    assert not ((roi.left | roi.right) & ~slab).any()
    assert "thalamus_outside_qsm" in roi_qc(roi, np.zeros_like(mask), r2s, slab, 1.0)
    whole = thalamus_roi(thal_l, thal_r, None, mask, 1.0)
    assert whole.outside_qsm_fraction == 0.0
    assert "thalamus_outside_qsm" not in roi_qc(whole, np.zeros_like(mask), r2s, mask, 1.0)


def test_bad_inputs() -> None:
    a = np.zeros((10, 10, 10), bool)
    with pytest.raises(InputError, match="QSM grid"):
        csf_reference_roi(a, a[:-1], np.zeros(a.shape), a, 1.0, np.eye(4), method="ventricles")
    with pytest.raises(InputError, match="empty"):
        csf_reference_roi(a, a, np.zeros(a.shape), a, 1.0, np.eye(4), method="ventricles")
    with pytest.raises(InputError, match="search regions"):
        csf_reference_roi(a, a, np.zeros(a.shape), ~a, 1.0, np.eye(4))
    with pytest.raises(InputError, match="method"):
        csf_reference_roi(a, a, np.zeros(a.shape), ~a, 1.0, np.eye(4), method="wm")


def test_thalamus_size_flags_judge_the_structure_not_what_is_left() -> None:
    """An atrophied thalamus of 4.6 mL a side (within 3-12 mL) with a vein through it: the
    exclusions remove half of it at 2 mm, which ``vein_fraction_high`` reports; the size
    flags judge the structure (before the exclusions) and stay silent. A 1.7 mL side is
    flagged small."""
    shape = (40, 30, 30)
    mask = np.ones(shape, bool)
    left = np.zeros(shape, bool)
    right = np.zeros(shape, bool)
    left[4:12, 8:16, 8:17] = True  # 8 x 8 x 9 voxels of 8 mm3: 4.61 mL
    right[24:32, 8:16, 8:17] = True
    veins = np.zeros(shape, bool)
    veins[:, 11:13, :] = True  # a vein across both, 2 voxels thick; its 1-voxel rim goes too
    roi = thalamus_roi(left, right, veins, mask, 2.0)
    # rows 10-13 of 8-15 go (vein 11-12 and its rim): half of each side, 2.3 mL left
    assert roi.left.sum() * 8e-3 < 3.0 and roi.vein_fraction_excluded == pytest.approx(0.5)
    ref = np.zeros(shape, bool)
    ref[18:21, 20:23, 10:13] = True  # 216 mm3 of CSF with a low R2*
    r2s = np.where(ref, 2.0, 20.0).astype(np.float32)
    assert roi_qc(roi, ref, r2s, mask, 2.0) == ["vein_fraction_high"]
    small = np.zeros(shape, bool)
    small[24:30, 8:14, 8:14] = True  # 6 x 6 x 6 voxels: 1.73 mL
    assert roi_qc(thalamus_roi(left, small, None, mask, 2.0), ref, r2s, mask, 2.0) == [
        "thalamus_right_small"]
