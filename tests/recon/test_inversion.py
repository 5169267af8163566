"""Dipole inversion (TKD, closed-form L2, MEDI + MEDI+0) against phantom and analytic truth.

Truth used here:

* The 2 mm head phantom of ``conftest.py``: ``scan.field_local`` is the field of the true
  susceptibility inside the brain (relative to CSF), so inverting it must give back
  ``phantom.chi`` up to regularisation bias. Gaussian noise of the level a 6-echo fit at
  SNR 100 gives (Cramer-Rao bound of the weighted linear fit of phase against TE) is added;
  the same map is the noise map passed to MEDI.
* A uniformly magnetised sphere: its field computed with the *discrete* dipole kernel (not the
  continuous kernel the inversions use, to avoid the "inverse crime"), inverted, must give the
  sphere's susceptibility back within a few %, for anisotropic voxels and oblique B0 too.

ROI values are relative to the CSF reference of the study (ventricular atria), as in
Chiang et al. 2018; errors are printed in ppb (run pytest with ``-s`` to see the tables).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.ndimage as ndi

from qsmiron.constants import GAMMA_HZ_PER_T
from qsmiron.errors import InputError
from qsmiron.recon.inversion import medi, tikhonov_l2, tkd, tkd_correction_factor
from qsmiron.simulate import tissues as T
from qsmiron.simulate.gre import forward_field

from .conftest import DEEP_GM

#: Nuclei of the regression-slope criterion: the four deep grey ROIs plus the small iron-rich
#: midbrain and cerebellar nuclei.
SLOPE_ROIS = dict(DEEP_GM, red_nucleus=(21, 22), substantia_nigra=(23, 24), dentate=(25, 26))


def field_noise_ppm(magnitude: np.ndarray, te: np.ndarray, sigma: float, b0: float) -> np.ndarray:
    """SD (ppm) of the field from a weighted linear fit of phase against TE.

    Phase noise of echo ``k`` is ``sigma / m_k``; the weighted least-squares slope has
    variance ``1 / sum_k (m_k / sigma)^2 (te_k - te_w)^2``; divided by ``2 pi gamma B0``.
    """
    m2 = magnitude.astype(np.float64) ** 2
    te_w = (m2 * te).sum(-1) / np.maximum(m2.sum(-1), 1e-30)
    spread = np.sqrt((m2 * (te - te_w[..., None]) ** 2).sum(-1))
    omega = 2 * np.pi * GAMMA_HZ_PER_T * b0 * 1e-6  # rad/s per ppm
    with np.errstate(divide="ignore"):
        return (sigma / (omega * spread)).astype(np.float32)


@pytest.fixture(scope="module")
def case(subject2mm):
    """Noisy true local field, eroded mask, noise map, MEDI+0 CSF mask, magnitude."""
    sub = subject2mm
    mask = ndi.binary_erosion(sub.brain, iterations=1)
    te = np.asarray(sub.protocol.te)
    noise = field_noise_ppm(sub.scan.magnitude, te, sub.scan.noise_sigma, sub.protocol.b0)
    rng = np.random.default_rng(2024)
    field = sub.scan.field_local + np.where(mask, noise, 0) * rng.standard_normal(mask.shape)
    # MEDI+0's CSF: ventricle voxels with R2* < 5 1/s (Liu et al. 2018), which leaves out
    # ventricle voxels partial-volumed with veins, choroid plexus and white matter
    csf = sub.roi(*T.VENTRICLES) & mask & (sub.phantom.r2star < 5.0)
    # MEDI's magnitude for the edge prior: root-sum-of-squares over the echoes, whose R2*
    # weighting outlines the iron-rich nuclei better than the first echo
    rss = np.sqrt(np.sum(sub.scan.magnitude.astype(np.float64) ** 2, axis=-1))
    return {
        "sub": sub,
        "mask": mask,
        "field": field.astype(np.float32),
        "noise": noise,
        "csf": csf,
        "magnitude": rss.astype(np.float32),
        "first_echo": sub.scan.magnitude[..., 0],
    }


@pytest.fixture(scope="module")
def medi_result(case):
    return medi(case["field"], case["mask"], case["sub"].voxel_size,
                magnitude=case["magnitude"], noise=case["noise"], csf_mask=case["csf"])


def roi_table(chi: np.ndarray, case: dict, rois: dict) -> dict[str, tuple[float, float]]:
    """``{name: (estimate, truth)}`` in ppb, each relative to the atria, over the same voxels."""
    sub, mask = case["sub"], case["mask"]
    ref = sub.roi(*T.ATRIA) & mask
    out = {}
    for name, labels in rois.items():
        r = sub.roi(*labels) & mask
        est = chi[r].mean(dtype=np.float64) - chi[ref].mean(dtype=np.float64)
        true = (sub.phantom.chi[r].mean(dtype=np.float64)
                - sub.phantom.chi[ref].mean(dtype=np.float64))
        out[name] = (1000.0 * est, 1000.0 * true)
    return out


def nrmse(chi: np.ndarray, case: dict) -> float:
    """NRMSE inside the (eroded) brain mask, after removing each map's mean there."""
    mask = case["mask"]
    truth = case["sub"].phantom.chi[mask].astype(np.float64)
    est = chi[mask].astype(np.float64)
    truth -= truth.mean()
    est -= est.mean()
    return float(np.linalg.norm(est - truth) / np.linalg.norm(truth))


def report(name: str, chi: np.ndarray, case: dict) -> tuple[dict, float, float]:
    table = roi_table(chi, case, SLOPE_ROIS)
    est = np.array([v[0] for v in table.values()])
    true = np.array([v[1] for v in table.values()])
    slope = float(np.polyfit(true, est, 1)[0])
    err = nrmse(chi, case)
    print(f"\n{name}: NRMSE in brain {err:.3f}, ROI slope {slope:.3f}")
    for roi, (e, t) in table.items():
        print(f"  {roi:18s} est {e:7.1f} ppb  truth {t:7.1f} ppb  error {e - t:+6.1f} ppb")
    return table, slope, err


# --- MEDI on the head phantom -------------------------------------------------------------

def test_medi_deep_grey_within_5ppb(case, medi_result):
    res = medi_result
    table, slope, err = report("MEDI+0", res.chi, case)
    print(f"  iterations {res.iterations}, FFTs {res.n_fft}, grid {res.fft_shape}, "
          f"weighted misfit {res.residual:.3f}")
    for roi in DEEP_GM:
        est, true = table[roi]
        assert abs(est - true) < 5.0, f"{roi}: {est:.1f} ppb vs truth {true:.1f} ppb"
    assert 0.9 <= slope <= 1.1  # 0.96 measured: TV shrinks the small nuclei (RN, SN)
    # 0.33 measured (dominated by boundary voxels partial-volumed with skull and air, whose
    # sources lie outside the eroded mask); TKD gives 0.93 and L2 0.67 on the same data
    assert err < 0.4


def test_medi_diagnostics_and_reference(case, medi_result):
    res = medi_result
    assert res.chi.dtype == np.float32 and res.chi.shape == case["field"].shape
    assert np.all(res.chi[~case["mask"]] == 0)
    # MEDI+0 zero reference: mean over the CSF mask is 0
    assert abs(float(res.chi[case["csf"]].mean(dtype=np.float64))) < 1e-6
    assert res.converged and res.iterations < 300
    assert res.n_fft == 4 * res.iterations  # two FFT pairs per ADMM iteration
    assert res.edge_prior == "magnitude" and res.weights == "noise"
    assert res.csf_voxels == int(case["csf"].sum())
    assert 0 < res.residual < 0.2


def test_medi_csf_term_makes_csf_uniform(case, medi_result):
    """MEDI+0 flattens the CSF; without it the result is referenced to the mask mean."""
    plain = medi(case["field"], case["mask"], case["sub"].voxel_size,
                 magnitude=case["magnitude"], noise=case["noise"])
    assert plain.csf_voxels == 0 and plain.lam_csf == 0
    assert abs(float(plain.chi[case["mask"]].mean(dtype=np.float64))) < 1e-6
    csf = case["csf"]
    sd_plain = 1000 * float(plain.chi[csf].std())
    sd_plus0 = 1000 * float(medi_result.chi[csf].std())
    _, slope, _ = report("MEDI without the CSF term (atria reference)", plain.chi, case)
    print(f"  SD over the CSF mask: MEDI {sd_plain:.1f} ppb, MEDI+0 {sd_plus0:.1f} ppb "
          f"(truth {1000 * float(case['sub'].phantom.chi[csf].std()):.1f} ppb)")
    assert sd_plus0 < 0.8 * sd_plain
    assert 0.85 <= slope <= 1.1


def test_medi_first_echo_magnitude(case):
    """With the first echo as magnitude the prior misses part of the nuclei's edges.

    The iron-rich nuclei then read a little lower (globus pallidus -3.5 ppb against -1.5 with
    the root-sum-of-squares magnitude). The rest of the shortfall is mostly the mismatch between
    the simulator's discrete dipole kernel on the 2 mm grid and the inversion's continuous one,
    which the test must not hide by committing the inverse crime (docs/recon.md, "Kernel").
    """
    res = medi(case["field"], case["mask"], case["sub"].voxel_size,
               magnitude=case["first_echo"], noise=case["noise"], csf_mask=case["csf"])
    table, slope, _ = report("MEDI+0, first-echo magnitude", res.chi, case)
    for roi in DEEP_GM:
        est, true = table[roi]
        assert abs(est - true) < 6.0, f"{roi}: {est:.1f} ppb vs truth {true:.1f} ppb"
    assert 0.9 <= slope <= 1.1


def test_medi_without_magnitude_is_tv_and_warns(case, caplog):
    with caplog.at_level(logging.WARNING, logger="qsmiron.recon.inversion.medi"):
        res = medi(case["field"], case["mask"], case["sub"].voxel_size, max_iter=20)
    assert res.edge_prior == "none" and res.weights == "uniform"
    assert any("plain total variation" in r.getMessage() for r in caplog.records)
    assert np.isfinite(res.chi).all()


# --- TKD and L2 on the head phantom: known to underestimate ------------------------------

def test_tkd_phantom(case):
    chi = tkd(case["field"], case["mask"], case["sub"].voxel_size)
    table, slope, err = report("TKD (threshold 0.19, corrected)", chi, case)
    # with the correction factor the ROI means are unbiased on average (slope 1.00 measured)
    # but noisy and streaky: ROI errors up to 11 ppb (dentate) and NRMSE 0.93, three times
    # MEDI's. The correction is one global factor, so it cannot undo streaks through a ROI.
    assert 0.85 <= slope <= 1.15
    assert max(abs(e - t) for e, t in table.values()) < 15.0
    assert err < 1.1
    raw = tkd(case["field"], case["mask"], case["sub"].voxel_size, correct=False)
    np.testing.assert_allclose(raw * tkd_correction_factor(0.19), chi, atol=1e-6)


def test_l2_phantom(case):
    chi = tikhonov_l2(case["field"], case["mask"], case["sub"].voxel_size)
    table, slope, err = report("L2 (L-curve)", chi, case)
    # the L-curve corner over-regularises for ROI quantification: contrast shrinks by about
    # 40% (slope 0.60 measured, globus pallidus -38 ppb), the price of a smooth map in one
    # FFT pair; an L2 penalty on the gradient shrinks small, high-contrast nuclei most
    assert 0.4 <= slope <= 0.9
    assert err < 0.8
    est, true = table["globus_pallidus"]
    assert est < true  # underestimates the most iron-rich ROI


# --- analytic sphere ------------------------------------------------------------------------

def _sphere(voxel_size, b0_dir, shape, radius_mm=8.0, chi0=0.1):
    vsz = np.asarray(voxel_size, float)
    axes = [(np.arange(n) - (n - 1) / 2) * h for n, h in zip(shape, vsz, strict=True)]
    r = np.sqrt(sum(a**2 for a in np.meshgrid(*axes, indexing="ij")))
    chi = np.where(r <= radius_mm, chi0, 0.0).astype(np.float32)
    field = forward_field(chi, vsz, b0_dir, kernel="discrete")
    mask = r <= 3 * radius_mm
    inner = r <= radius_mm - 2 * vsz.max()
    shell = (r >= radius_mm + 3 * vsz.max()) & (r <= 2.5 * radius_mm)
    magnitude = np.where(r <= radius_mm, 0.8, 1.0).astype(np.float32)
    return field, mask, inner, shell, magnitude


OBLIQUE = tuple(np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8]))
GEOMETRIES = [
    ((1.0, 1.0, 1.0), (0.0, 0.0, 1.0), (64, 64, 64)),
    ((1.0, 1.0, 2.0), (0.0, 0.0, 1.0), (64, 64, 32)),
    ((1.0, 1.0, 1.0), OBLIQUE, (64, 64, 64)),
    ((1.0, 1.0, 2.0), OBLIQUE, (64, 64, 32)),
]


@pytest.mark.parametrize(("voxel_size", "b0_dir", "shape"), GEOMETRIES)
def test_sphere(voxel_size, b0_dir, shape):
    """Sphere of 0.1 ppm, radius 8 mm: interior minus surrounding shell, relative to 0.1."""
    field, mask, inner, shell, magnitude = _sphere(voxel_size, b0_dir, shape)

    def contrast(chi):
        return float(chi[inner].mean() - chi[shell].mean()) / 0.1

    m = contrast(medi(field, mask, voxel_size, b0_dir, magnitude=magnitude).chi)
    t = contrast(tkd(field, mask, voxel_size, b0_dir))
    lo = contrast(tikhonov_l2(field, mask, voxel_size, b0_dir, lam=0.01))
    print(f"\nsphere {voxel_size} B0 {np.round(b0_dir, 2)}: MEDI {m:.3f}, TKD {t:.3f}, "
          f"L2(0.01) {lo:.3f}")
    assert abs(m - 1) < 0.03      # measured 0.98-1.00
    assert abs(t - 1) < 0.05      # corrected TKD, measured 0.97-1.02
    assert 0.85 < lo < 1.0        # L2 shrinks contrast, measured 0.90-0.94


def test_lcurve_picks_an_interior_corner(case):
    from qsmiron.recon.inversion._ops import FFT, fft_grid, laplacian_symbol
    from qsmiron.recon.inversion.l2 import LCURVE_LAMBDAS, l_curve
    from qsmiron.recon.kernels import dipole_kernel

    vsz = case["sub"].voxel_size
    grid = fft_grid(case["mask"], 1.5)
    spec = FFT(grid.shape).forward(grid.embed(case["field"]))
    d = dipole_kernel(grid.shape, vsz)
    curve = l_curve(np.abs(spec) ** 2, d * d, laplacian_symbol(grid.shape, 1 / vsz**2),
                    shape=grid.shape)
    assert LCURVE_LAMBDAS[1] < curve.best < LCURVE_LAMBDAS[-2]
    assert np.all(np.diff(curve.residual) > 0) and np.all(np.diff(curve.regulariser) < 0)


# --- bad inputs -----------------------------------------------------------------------------

def _small():
    rng = np.random.default_rng(0)
    field = (0.01 * rng.standard_normal((16, 16, 16))).astype(np.float32)
    mask = np.zeros(field.shape, bool)
    mask[3:13, 3:13, 3:13] = True
    return field, mask


@pytest.mark.parametrize("method", [tkd, tikhonov_l2, medi])
def test_bad_inputs(method):
    field, mask = _small()
    with pytest.raises(InputError, match="empty"):
        method(field, np.zeros_like(mask), 1.0)
    with pytest.raises(InputError, match="shape"):
        method(field, mask[:-1], 1.0)
    bad = field.copy()
    bad[8, 8, 8] = np.nan
    with pytest.raises(InputError, match="NaN"):
        method(bad, mask, 1.0)
    with pytest.raises(InputError, match="ppm"):
        method(field * 127.7 * 10, mask, 1.0)  # Hz of a field 10 times too large
    with pytest.raises(InputError, match="3D"):
        method(field[..., None], mask[..., None], 1.0)
    with pytest.raises(InputError, match="b0_dir"):
        method(field, mask, 1.0, (0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="voxel_size"):
        method(field, mask, (1.0, -1.0, 1.0))


def test_nan_outside_mask_is_ignored():
    field, mask = _small()
    field[0, 0, 0] = np.nan
    for chi in (tkd(field, mask, 1.0), tikhonov_l2(field, mask, 1.0, lam=0.05),
                medi(field, mask, 1.0, max_iter=10).chi):
        assert np.isfinite(chi).all() and chi[0, 0, 0] == 0


def test_field_in_hz_at_3t_is_refused(case):
    with pytest.raises(InputError, match="Hz"):
        tkd(case["field"] * 127.7, case["mask"], case["sub"].voxel_size)


def test_bad_parameters():
    field, mask = _small()
    with pytest.raises(InputError, match="threshold"):
        tkd(field, mask, 1.0, threshold=0.8)
    with pytest.raises(InputError, match="lam"):
        tikhonov_l2(field, mask, 1.0, lam=-1.0)
    with pytest.raises(InputError, match="lam"):
        medi(field, mask, 1.0, lam=0.0)
    with pytest.raises(InputError, match="magnitude"):
        medi(field, mask, 1.0, magnitude=np.ones((4, 4, 4)))
    with pytest.raises(InputError, match="noise"):
        medi(field, mask, 1.0, noise=np.full(field.shape, np.nan))
    with pytest.raises(InputError, match="csf_mask"):
        medi(field, mask, 1.0, csf_mask=mask[:-1])
    with pytest.raises(InputError, match="edge_fraction"):
        medi(field, mask, 1.0, edge_fraction=1.5)
