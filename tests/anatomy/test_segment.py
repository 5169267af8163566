"""Tests of qsmiron.anatomy.segment: the MS-specific clean-up (atlas labels + tissue classes),
the grey-matter volume and the cortex measured for thickness.

Truth by construction: synthetic label/intensity layouts whose subject anatomy differs from
the propagated template's in a known way, and spherical shells of analytic volume.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmiron.anatomy.segment import (
    VENTRICLES,
    T1Segmentation,
    _assemble,
    _atropos,
    cortical_ribbon,
    structure_volumes,
)
from qsmiron.anatomy.thickness import cortical_thickness


def test_wide_third_ventricle_is_not_thalamus() -> None:
    """An atrophied subject's third ventricle reaches 8 mm beyond the template's on each side.

    The template (propagated labels) has two 18 mm thalami around a 4 mm third ventricle; the
    subject's ventricle is 20 mm wide (T1w at the CSF level), its thalami 10 mm. The
    ventricle's partial-volume voxels keep the template's grey-matter prior, so the tissue
    classes call them grey matter; their T1w, nearer the CSF level than the thalamus's, and
    their connection to the ventricle make them ventricle. A rule limited to 5 mm from the
    template's ventricle left 3 mm of CSF on each side labelled thalamus (+30% volume).
    """
    shape = (60, 60, 40)
    vs = np.ones(3)
    x = np.arange(shape[0])[:, None, None]
    box = np.zeros(shape, bool)
    box[:, 20:40, 10:30] = True
    aseg = np.zeros(shape, np.int16)  # white matter elsewhere (unlabelled)
    aseg[box & (x >= 10) & (x < 28)] = 10
    aseg[box & (x >= 32) & (x < 50)] = 49
    aseg[box & (x >= 28) & (x < 32)] = 14
    true_vent = box & (x >= 20) & (x < 40)
    true_thal = box & ~true_vent & (x >= 10) & (x < 50)

    t1w = np.full(shape, 0.5, np.float32)  # white matter
    t1w[true_thal] = 0.3
    t1w[true_vent] = 0.05
    t1w += np.random.default_rng(1).normal(0.0, 0.01, shape).astype(np.float32)
    gm = np.isin(aseg, (10, 49)).astype(np.float32)  # the template's prior wins the EM
    csf = (aseg == 14).astype(np.float32)
    probs = {"csf": csf, "gm": gm, "wm": 1.0 - gm - csf}
    hemi = np.where(x < 30, 1.0, 2.0) * np.ones(shape, np.float32)

    lab = _assemble(aseg, hemi, np.ones(shape, bool), probs, vs, t1w)
    assert np.isin(lab[true_vent], VENTRICLES).all()
    assert np.count_nonzero(lab == 10) == np.count_nonzero(true_thal & (x < 30))
    assert np.count_nonzero(lab == 49) == np.count_nonzero(true_thal & (x >= 30))


def _shell_fractions(
    shape: tuple[int, int, int],
    centres_radii: list[tuple[tuple[float, float, float], list[float]]],
    step: int = 3,
    voxel_mm: float = 1.0,
) -> np.ndarray:
    """Volume fractions of nested spherical shells, by ``step``-fold supersampling.

    ``centres_radii``: [(centre in voxels, [r0, r1, ...] in mm)] -> one fraction map per shell
    k (between r_k-1 and r_k; k = 0 is the innermost ball), summed over the centres; isotropic
    voxels of ``voxel_mm``.
    """
    n_shells = len(centres_radii[0][1])
    out = np.zeros((n_shells, *shape), np.float32)
    fine = [(np.arange(n * step) + 0.5) / step - 0.5 for n in shape]
    for centre, radii in centres_radii:
        g = np.meshgrid(*((f - c) * voxel_mm for f, c in zip(fine, centre, strict=True)),
                        indexing="ij", sparse=True)
        r = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2)
        lo = 0.0
        for k, hi in enumerate(radii):
            inside = ((r >= lo) & (r < hi)).astype(np.float32)
            out[k] += inside.reshape(shape[0], step, shape[1], step, shape[2], step).mean(
                axis=(1, 3, 5))
            lo = hi
    return out


def test_grey_matter_cut_off_from_white_matter_is_not_counted() -> None:
    """Total grey matter by partial volumes, without the dura and skull beyond the CSF.

    Truth by construction (1 mm voxels, fractions by 3-fold supersampling): a cerebrum (white
    matter of radius 18 mm in a 3 mm cortex) and a detached cerebellum (white matter 5 mm,
    cortex 2 mm: 2% of the white matter, across 6 mm of CSF) in CSF, inside a brain mask whose
    outer 2 voxels are at the grey-matter level (dura and skull in partial volume with CSF, as
    at the brain mask's edge where an atrophied brain has shrunk from its skull). Grey matter
    is the two cortices, 15.3 mL (analytic); counting the outer layer would add 44.8 mL.
    """
    shape = (80, 64, 64)
    big = _shell_fractions(shape, [((30.0, 32.0, 32.0), [18.0, 21.0])])
    small = _shell_fractions(shape, [((64.0, 32.0, 32.0), [5.0, 7.0])])
    wm, gm = big[0] + small[0], big[1] + small[1]
    brain = np.zeros(shape, bool)
    brain[3:77, 3:61, 3:61] = True
    outer = brain & ~ndi.binary_erosion(brain, iterations=2)
    wm[~brain | outer] = 0.0
    gm[~brain | outer] = 0.0
    csf = np.where(brain & ~outer, 1.0 - wm - gm, 0.0)
    t1w = 0.05 * csf + 0.3 * (gm + outer) + 0.5 * wm
    probs = {"csf": csf, "gm": gm + outer, "wm": wm}
    seg = T1Segmentation(t1w=t1w.astype(np.float32), affine=np.eye(4), brain_mask=brain,
                         labels=np.zeros(shape, np.int16),
                         probs={k: v.astype(np.float32) for k, v in probs.items()})
    true_gm = 4.0 / 3.0 * np.pi * ((21.0**3 - 18.0**3) + (7.0**3 - 5.0**3)) / 1000.0
    assert np.count_nonzero(outer) / 1000.0 == pytest.approx(44.8, abs=0.1)
    vol = structure_volumes(seg)["total_gm_volume_ml"]
    assert vol == pytest.approx(true_gm, rel=0.02), (vol, true_gm)


def test_total_grey_matter_is_freesurfers_totalgray() -> None:
    """Total grey matter counts what FreeSurfer's TotalGray counts.

    Truth by construction (1 mm voxels, pure tissues): white matter holding three 10 mm cubes,
    a cortex-labelled one at the grey-matter level on T1w, a thalamus between grey and white
    matter (a subcortical nucleus counts whole) and a brainstem-labelled one at the grey-matter
    level (not in TotalGray, whose subcortical grey has no brainstem), beside CSF. TotalGray is
    the cortex and the thalamus: 2.0 mL.
    """
    shape = (40, 40, 40)
    brain = np.zeros(shape, bool)
    brain[2:38, 2:38, 2:38] = True
    t1w = np.where(brain, 0.5, 0.0)
    lab = np.where(brain, 2, 0).astype(np.int16)
    csf = np.zeros(shape, bool)
    csf[2:38, 2:38, 30:38] = True
    t1w[csf], lab[csf] = 0.05, 24
    cubes = {3: (slice(5, 15), 0.3), 10: (slice(15, 25), 0.4), 16: (slice(25, 35), 0.3)}
    for number, (sl, level) in cubes.items():
        t1w[sl, 10:20, 10:20], lab[sl, 10:20, 10:20] = level, number
    gm = np.isin(lab, (3, 16))
    probs = {"csf": csf.astype(np.float32), "gm": gm.astype(np.float32),
             "wm": (brain & ~csf & ~gm).astype(np.float32)}
    seg = T1Segmentation(t1w=t1w.astype(np.float32), affine=np.eye(4), brain_mask=brain,
                         labels=lab, probs=probs)
    assert structure_volumes(seg)["total_gm_volume_ml"] == pytest.approx(2.0, abs=1e-6)


def test_cortex_for_thickness_is_the_grey_matter_majority_not_the_labels() -> None:
    """The cortex measured for thickness follows the subject's partial volumes.

    Truth by construction (2 mm voxels, fractions by 4-fold supersampling): white matter of
    radius 30 mm in a 4 mm cortex, CSF to 44 mm. The labels carry a template's cortex, 10 mm
    thick (28-38 mm), as tissue posteriors pulled by a template prior would. The cortex must be
    the voxels at least half grey matter (the majority rule by which a label is drawn from
    fractions), and its thickness that of those voxels, not the labels' (10 mm).
    """
    vs, n = 2.0, 48
    wm, gm = _shell_fractions((n, n, n), [(((n - 1) / 2,) * 3, [30.0, 34.0])], step=4,
                              voxel_mm=vs)
    c = (np.arange(n) - (n - 1) / 2) * vs
    rc = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    brain = rc <= 44.0
    csf = np.where(brain, 1.0 - wm - gm, 0.0).astype(np.float32)
    lab = np.where(brain, 24, 0).astype(np.int16)
    lab[rc < 38.0] = 3
    lab[rc < 28.0] = 2
    seg = T1Segmentation(t1w=(0.05 * csf + 0.3 * gm + 0.5 * wm).astype(np.float32),
                         affine=np.diag([vs, vs, vs, 1.0]), brain_mask=brain, labels=lab,
                         probs={"csf": csf, "gm": gm, "wm": wm})
    cortex, inner = cortical_ribbon(seg)
    majority = gm >= 0.5
    assert np.array_equal(cortex, majority)
    measured = cortical_thickness(cortex, inner, (vs,) * 3).surface_mean_mm
    truth = cortical_thickness(majority, wm >= 0.5, (vs,) * 3).surface_mean_mm
    assert measured == pytest.approx(truth, rel=0.01)
    assert measured == pytest.approx(4.0, rel=0.1)  # the Laplace method at 2 mm on 2 voxels


def test_tissue_classes_leave_no_files_in_the_temp_folder(tmp_path, monkeypatch) -> None:
    """Atropos on a three-tissue block: classes right, and nothing left in the temp folder.

    antspyx's wrapper writes priors and posteriors to the system temp folder and never removes
    them (three images per subject of a cohort run). Truth by construction: CSF, GM and WM
    slabs of known intensity with priors that are the slabs blurred by 2 voxels.
    """
    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    shape = (24, 24, 24)
    x = np.arange(shape[0])[:, None, None] * np.ones(shape)
    truth = [x < 8, (x >= 8) & (x < 16), x >= 16]  # CSF, GM, WM
    t1w = np.select(truth, [0.1, 0.5, 0.8]).astype(np.float32)
    t1w += np.random.default_rng(2).normal(0.0, 0.03, shape).astype(np.float32)
    priors = [ndi.gaussian_filter(t.astype(np.float32), 2.0) for t in truth]
    post = _atropos(t1w, np.diag([2.0, 2.0, 2.0, 1.0]), np.ones(shape, bool), priors, 0.25)
    winner = np.argmax(np.stack([post["csf"], post["gm"], post["wm"]]), axis=0)
    assert (winner == np.select(truth, [0, 1, 2])).mean() >= 0.99
    assert list(system_tmp.iterdir()) == []
