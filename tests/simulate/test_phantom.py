"""The head phantom: anatomy present where it should be, and truth equal to what was asked."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmiron.simulate import tissues as T
from qsmiron.simulate.phantom import AnatomyParams, base_anatomy, make_phantom


@pytest.fixture(scope="module")
def base():
    return base_anatomy()


@pytest.fixture(scope="module")
def subject():
    params = AnatomyParams(
        thalamus_chi_ppm=(-0.020, -0.035),
        thalamus_volume_ml=13.0,
        gm_volume_ml=600.0,
        lesion_volume_ml=8.0,
        lesion_count=9,
        enhancing_count=2,
        rotation_deg=(5.0, 0.0, -3.0),
    )
    return params, make_phantom(params, voxel_size=1.0, seed=7)


def test_every_label_is_present(base):
    labels, _ = base
    counts = np.bincount(labels.ravel(), minlength=max(T.LABELS) + 1)
    missing = [T.LABELS[k] for k in T.LABELS if counts[k] == 0 and k not in T.LESIONS]
    assert missing == []


def test_anatomy_sizes_are_plausible(base):
    labels, _ = base  # 1 mm template grid: voxel counts are mm^3
    counts = np.bincount(labels.ravel(), minlength=max(T.LABELS) + 1)
    # red nucleus about 0.2 mL each (Keuken 2014), atrium a few mL, thalamus 8-11 mL per side
    assert 100 < counts[21] < 400 and 100 < counts[22] < 400
    assert 1000 < counts[9] < 5000 and 1000 < counts[10] < 5000
    assert 8000 < counts[13] < 11000
    # sinuses: tens of mL of air inside the head
    assert 20_000 < counts[3] < 200_000


def _distance_to(labels, target) -> np.ndarray:
    return ndi.distance_transform_edt(~np.isin(labels, target))


def test_deep_veins_run_beside_the_thalami(base):
    labels, _ = base
    d = _distance_to(labels, T.THALAMUS)
    icv = labels == 31
    bvr = labels == 32
    # internal cerebral veins (about 3 mm wide) run on the superomedial thalamic surface and
    # leave it posteriorly for the vein of Galen (Ono 1984): most of the vein within 4 mm
    assert np.percentile(d[icv], 25) <= 2.5 and np.median(d[icv]) <= 4.0
    # basal veins of Rosenthal pass under the pulvinar: part of each within 3 mm of it
    assert np.mean(d[bvr] <= 3.0) > 0.05
    # the atria lie posterior to the thalami, lateral to them
    for atrium, thal in ((9, 13), (10, 14)):
        ya = np.argwhere(labels == atrium)[:, 1].mean()
        yt = np.argwhere(labels == thal)[:, 1].mean()
        assert ya < yt - 10


def test_left_is_left(base):
    labels, aff = base
    for left, right in ((13, 14), (7, 8), (9, 10), (21, 22)):
        xl = (np.argwhere(labels == left)[:, 0].mean() * aff[0, 0]) + aff[0, 3]
        xr = (np.argwhere(labels == right)[:, 0].mean() * aff[0, 0]) + aff[0, 3]
        assert xl < 0 < xr  # RAS: left hemisphere at negative x


def test_truth_equals_requested(subject):
    params, ph = subject
    tr = ph.truth
    vox_ml = 0.001
    assert tr["thalamus_volume_ml"] == pytest.approx(13.0, abs=2 * vox_ml)
    assert tr["total_gm_volume_ml"] == pytest.approx(600.0, abs=2 * vox_ml)
    # texture has zero mean in every label: mean chi is exactly the value given
    assert tr["thalamus_left_chi_ppm"] == pytest.approx(-0.020, abs=1e-6)
    assert tr["thalamus_right_chi_ppm"] == pytest.approx(-0.035, abs=1e-6)
    assert tr["csf_ref_chi_ppm"] == pytest.approx(0.0, abs=1e-9)
    assert tr["rel_chi_ppb"] == pytest.approx(
        1000 * (tr["thalamus_chi_ppm"] - tr["csf_ref_chi_ppm"]), abs=1e-6
    )
    for name, value in tr["nuclei_chi_ppm"].items():
        tissue = next(t for t in T.TISSUES if t.name == name)
        assert value == pytest.approx(tissue.chi_ppm, abs=1e-6)
    # lesion load within 20% of the target (lesions are clipped to white matter)
    assert tr["t2_lesion_volume_ml"] == pytest.approx(8.0, rel=0.2)


def test_lesions_are_separate_periventricular_ovoids(subject):
    params, ph = subject
    inst = ph.lesions
    n = ph.truth["lesion_count"]
    assert n == params.lesion_count
    comps, ncomp = ndi.label(inst > 0)
    assert ncomp == n  # lesions never touch: each is one connected component
    assert set(np.unique(inst[inst > 0])) == set(range(1, n + 1))
    enh = np.unique(inst[ph.labels == 36])
    assert len(enh) == ph.truth["enhancing_lesion_count"] == 2
    assert np.all(np.isin(ph.labels[inst > 0], T.LESIONS))
    d = ndi.distance_transform_edt(~np.isin(ph.labels, T.LATERAL_VENTRICLES))
    centres = ndi.center_of_mass(inst > 0, inst, range(1, n + 1))
    dist = [d[tuple(np.round(c).astype(int))] for c in centres]
    assert np.median(dist) < 15.0  # periventricular


def test_contrast_follows_physics(subject):
    _, ph = subject
    lab = ph.labels

    def med(img, labels):
        return float(np.median(img[np.isin(lab, labels)]))

    # T1w: WM > GM > CSF; FLAIR: lesion > GM, CSF dark; post-Gd: enhancing lesions brighten
    assert med(ph.t1w, [6]) > med(ph.t1w, [5]) > med(ph.t1w, [7, 8])
    assert med(ph.flair, [35]) > 1.5 * med(ph.flair, [6])
    assert med(ph.flair, [7, 8]) < 0.2 * med(ph.flair, [6])
    assert med(ph.t1w_gd, [36]) > 1.3 * med(ph.t1w, [36])
    assert med(ph.t1w_gd, [35]) == pytest.approx(med(ph.t1w, [35]), rel=1e-6)
    # T1w at TE 3 ms: cortical bone (R2* 400 /s) keeps exp(-1.2) of its inversion-recovery
    # signal and lies below grey matter, as on a real MPRAGE, not at its level
    assert med(ph.t1w, [2]) < 0.5 * med(ph.t1w, [5])
    # GRE: no signal in air, high R2* in the globus pallidus
    assert med(ph.m0, [0, 3]) == 0.0
    assert med(ph.r2star, [19, 20]) > 1.5 * med(ph.r2star, [6])


def test_atrophy_widens_the_ventricles():
    small = make_phantom(AnatomyParams(thalamus_volume_ml=11.0), voxel_size=2.0, seed=3)
    large = make_phantom(AnatomyParams(thalamus_volume_ml=16.0), voxel_size=2.0, seed=3)
    assert small.truth["thalamus_volume_ml"] == pytest.approx(11.0, abs=0.01)
    assert large.truth["thalamus_volume_ml"] == pytest.approx(16.0, abs=0.01)
    gained = (small.truth["lateral_ventricle_volume_ml"]
              - large.truth["lateral_ventricle_volume_ml"])
    assert gained > 2.0  # ventricles grow with thalamic loss (coupling 2 mL per mL lost)


def test_subjects_differ_by_a_smooth_deformation():
    a = make_phantom(AnatomyParams(), voxel_size=2.0, seed=1)
    b = make_phantom(AnatomyParams(), voxel_size=2.0, seed=1)
    c = make_phantom(AnatomyParams(), voxel_size=2.0, seed=2)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.chi, b.chi)
    ta, tc = np.isin(a.labels, T.THALAMUS), np.isin(c.labels, T.THALAMUS)
    dice = 2 * (ta & tc).sum() / (ta.sum() + tc.sum())
    assert 0.6 < dice < 0.97  # same anatomy, not the same voxels


def test_partial_volume_at_2mm(subject):
    ph2 = make_phantom(AnatomyParams(), voxel_size=2.0, seed=5)
    assert ph2.labels.shape == (88, 104, 88)
    assert np.allclose(ph2.voxel_size, 2.0)
    # block averaging gives intermediate chi values at tissue borders
    csf_wm_border = np.isin(ph2.labels, [7, 8]) & (ph2.chi < -0.005)
    assert csf_wm_border.any()


def test_no_veins_option():
    ph = make_phantom(AnatomyParams(veins=False), voxel_size=2.0, seed=1)
    assert not np.isin(ph.labels, T.VEINS).any()
    assert ph.truth["vein_volume_ml"] == 0.0
