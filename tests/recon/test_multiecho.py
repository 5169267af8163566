"""Multi-echo field fit, R2*, magnitude combination and unit conversions, against the truth.

The phantom's GRE (``subject2mm``) is simulated at SNR 100 from a known total field, phase
offset and R2*, so the fit's error must be of the size of its own noise estimate (the
Cramer-Rao bound), and the noise estimate must match the error actually made.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmiron.constants import GAMMA_HZ_PER_T
from qsmiron.errors import InputError
from qsmiron.recon.multiecho import (
    combine_magnitude,
    field_to_ppm,
    fit_complex,
    hz_to_ppm,
    ppm_to_hz,
    ppm_to_rad,
    r2star_map,
    rad_to_ppm,
)
from qsmiron.simulate.gre import gre_signal


def _robust_sd(x: np.ndarray) -> float:
    """Standard deviation from the median absolute deviation (Gaussian-consistent)."""
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def _simulate(subject, te, seed):
    """Complex GRE of the subject's truth at other echo times, same noise level."""
    s = gre_signal(subject.scan.field_total, subject.phantom.m0, subject.phantom.r2star, te,
                   b0=subject.protocol.b0, phase0=subject.scan.phase0,
                   noise_sigma=subject.scan.noise_sigma, rng=seed)
    return np.abs(s), np.angle(s)


# ------------------------------------------------------------------------------ conversions


def test_unit_conversions_are_consistent():
    b0 = 3.0
    hz_per_ppm = GAMMA_HZ_PER_T * b0 * 1e-6
    f = np.array([-2.0, 0.0, 0.5, 3.0], np.float32)
    np.testing.assert_allclose(ppm_to_hz(f, b0), f * hz_per_ppm, rtol=1e-6)
    np.testing.assert_allclose(hz_to_ppm(ppm_to_hz(f, b0), b0), f, rtol=1e-6, atol=1e-7)
    te = 0.02
    phase = ppm_to_rad(f, te, b0)
    np.testing.assert_allclose(phase, 2 * np.pi * te * f * hz_per_ppm, rtol=1e-6)
    np.testing.assert_allclose(rad_to_ppm(phase, te, b0), f, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(field_to_ppm(phase, b0, unit="rad", te=te), f, atol=1e-6)
    np.testing.assert_allclose(field_to_ppm(2 * np.pi * f * hz_per_ppm, b0, unit="rad_s"), f,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(field_to_ppm(f, b0, unit="ppm"), f)
    assert hz_to_ppm(f, b0).dtype == np.float32


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: hz_to_ppm(1.0, b0=0.0), "tesla"),
        (lambda: hz_to_ppm(1.0, b0=127.7), "tesla"),
        (lambda: field_to_ppm(1.0, 3.0, unit="rad"), "echo time"),
        (lambda: field_to_ppm(1.0, 3.0, unit="gauss"), "unknown field unit"),
        (lambda: rad_to_ppm(1.0, te=20.0, b0=3.0), "seconds"),
    ],
)
def test_conversion_errors(call, match):
    with pytest.raises(InputError, match=match):
        call()


# ------------------------------------------------------------------------------ analytic


def test_fit_noise_matches_monte_carlo():
    """The noise estimate is the Cramer-Rao bound: equal to the SD of the field over noise
    realisations (20000 voxels with the same signal), within 5% (sampling error of an SD from
    20000 draws is 0.5%; the rest is the linearisation at SNR 50 per echo)."""
    rng = np.random.default_rng(0)
    te = np.array([0.004, 0.0095, 0.016, 0.0235])  # uneven, first TE != spacing
    f_hz, p0, sigma = 37.0, -2.5, 0.02
    m = np.exp(-25.0 * te)
    clean = m * np.exp(1j * (p0 + 2 * np.pi * f_hz * te))
    noise = sigma * (rng.standard_normal((20000, 4)) + 1j * rng.standard_normal((20000, 4)))
    s = (clean[None, :] + noise).reshape(20, 1000, 1, 4)
    fit = fit_complex(np.abs(s), np.angle(s), te, noise_sigma=sigma)
    f = fit.field_hz.ravel()
    assert abs(np.mean(f) - f_hz) < 4 * np.std(f) / np.sqrt(f.size)  # unbiased
    ratio = np.std(f) / np.median(fit.noise_hz)
    assert 0.95 < ratio < 1.05, ratio
    # without the true sigma: estimated from the residuals (chi-square with 2 dof per voxel,
    # averaged over a neighbourhood), within 5%
    fit2 = fit_complex(np.abs(s), np.angle(s), te, voxel_size=1.0)
    assert abs(fit2.noise_sigma / sigma - 1) < 0.05
    wrapped_p0 = np.angle(np.exp(1j * (fit.phase0 - p0)))
    assert np.median(np.abs(wrapped_p0)) < 0.05


def test_fit_exact_data():
    te = np.array([0.003, 0.007, 0.013, 0.020])
    f_hz = np.linspace(-60, 60, 5)[:, None, None] * np.ones((5, 2, 2))
    p0 = 2.9
    s = np.exp(1j * (p0 + 2 * np.pi * f_hz[..., None] * te))
    fit = fit_complex(np.abs(s), np.angle(s), te, noise_sigma=1e-3)
    np.testing.assert_allclose(fit.field_hz, f_hz, atol=1e-3)
    np.testing.assert_allclose(fit.phase0, p0, atol=1e-4)
    assert fit.field_hz.dtype == np.float32 and fit.iterations <= 3
    assert np.all(fit.residual < 1e-5)


# ------------------------------------------------------------------------------ phantom


def test_fit_phantom_six_echoes(subject2mm):
    """Study protocol (6 echoes, TE1 4.3 ms, dTE 6.5 ms, SNR 100): field within the noise.

    The echoes are evenly spaced, so the fitted field is defined modulo 1/dTE (1.2 ppm at
    3 T); near the sinuses the true field exceeds that range and is returned aliased by an
    exact multiple of it (undone by spatial unwrapping, tests/recon/test_unwrap.py).
    """
    sub = subject2mm
    te = np.asarray(sub.protocol.te)
    brain = sub.brain
    fit = fit_complex(sub.scan.magnitude, sub.scan.phase, te, brain, voxel_size=sub.voxel_size)
    b0 = sub.protocol.b0
    period_ppm = float(hz_to_ppm(fit.alias_period_hz, b0))
    assert fit.alias_period_hz == pytest.approx(1.0 / 0.0065)
    err = (hz_to_ppm(fit.field_hz, b0) - sub.scan.field_total)[brain]
    k = np.round(err / period_ppm)
    err = err - k * period_ppm
    noise = hz_to_ppm(fit.noise_hz, b0)[brain]
    # noise level: the CRB median is ~6e-4 ppm; a Gaussian's median |error| is 0.67 SD
    assert np.median(noise) < 1e-3
    assert np.median(np.abs(err)) < 0.67 * np.median(noise) * 1.2
    # the noise map predicts the error voxel by voxel: robust SD of err / noise is 1 +- 0.5
    z = _robust_sd(err / noise)
    assert 1 / 1.5 < z < 1.5, z
    # and the pooled error SD matches the median predicted noise within a factor 1.5
    assert 1 / 1.5 < _robust_sd(err) / np.median(noise) < 1.5
    # the noise level per channel is recovered from the residuals
    assert fit.noise_sigma == pytest.approx(sub.scan.noise_sigma, rel=0.05)
    # phase0, with the alias's compensating shift 2 pi k t1 / dTE, is the true phase offset
    dp = fit.phase0[brain] - sub.scan.phase0[brain] + 2 * np.pi * k * te[0] / (te[1] - te[0])
    assert np.median(np.abs(np.angle(np.exp(1j * dp)))) < 0.02
    # outside the mask everything is 0
    assert not fit.field_hz[~brain].any() and not fit.noise_hz[~brain].any()


def test_fit_phantom_uneven_spacing(subject2mm):
    """TE = 3, 7, 13, 20 ms: uneven spacing, first TE != spacing. No periodic aliasing, so
    the fitted field is the true field itself wherever the echoes resolve it."""
    sub = subject2mm
    te = np.array([0.003, 0.007, 0.013, 0.020])
    mag, pha = _simulate(sub, te, seed=11)
    brain = sub.brain
    fit = fit_complex(mag, pha, te, brain, voxel_size=sub.voxel_size)
    b0 = sub.protocol.b0
    err = (hz_to_ppm(fit.field_hz, b0) - sub.scan.field_total)[brain]
    noise = hz_to_ppm(fit.noise_hz, b0)[brain]
    within = np.abs(err) < 6 * noise
    # the initial estimate resolves |f| < 125 Hz (1 ppm), the fit's alias search 3 times
    # that; the few voxels beyond (next to the sinuses) are 0.2% of the brain
    assert within.mean() > 0.995, within.mean()
    assert np.median(np.abs(err)) < 0.67 * np.median(noise) * 1.2
    assert 1 / 1.5 < _robust_sd(err[within] / noise[within]) < 1.5


def test_fit_phantom_two_echoes(subject2mm):
    """Two echoes: exact fit (no residual), noise from the Rayleigh background."""
    sub = subject2mm
    te = np.asarray(sub.protocol.te[:2])
    brain = sub.brain
    fit = fit_complex(sub.scan.magnitude[..., :2], sub.scan.phase[..., :2], te, brain)
    assert np.all(fit.residual[brain] < 1e-3)
    # background estimate of sigma: Rayleigh statistics of the air around the head
    assert fit.noise_sigma == pytest.approx(sub.scan.noise_sigma, rel=0.1)
    b0 = sub.protocol.b0
    period = float(hz_to_ppm(fit.alias_period_hz, b0))
    err = (hz_to_ppm(fit.field_hz, b0) - sub.scan.field_total)[brain]
    err = err - np.round(err / period) * period
    noise = hz_to_ppm(fit.noise_hz, b0)[brain]
    assert 1 / 1.5 < _robust_sd(err) / np.median(noise) < 1.5


def test_fit_phantom_one_echo(subject2mm):
    """One echo: field = wrapped phase / (2 pi TE), phase0 assumed 0 (documented)."""
    sub = subject2mm
    te = np.asarray(sub.protocol.te[:1])
    brain = sub.brain
    fit = fit_complex(sub.scan.magnitude[..., :1], sub.scan.phase[..., :1], te, brain)
    assert fit.alias_period_hz is None and fit.iterations == 0
    assert not fit.phase0.any()
    true_phase = (sub.scan.phase0 + 2 * np.pi * te[0] * ppm_to_hz(sub.scan.field_total,
                                                                   sub.protocol.b0))[brain]
    d = np.angle(np.exp(1j * (2 * np.pi * te[0] * fit.field_hz[brain] - true_phase)))
    noise_rad = 2 * np.pi * te[0] * fit.noise_hz[brain]
    assert 1 / 1.5 < _robust_sd(d) / np.median(noise_rad) < 1.5
    assert np.all(np.abs(2 * np.pi * te[0] * fit.field_hz) <= np.pi + 1e-4)


def test_r2star_phantom(subject2mm):
    """R2* within 5% of the truth in white matter and the deep grey nuclei (SNR 100, six
    echoes: the noise of R2* is ~0.3 1/s; ROIs eroded by one voxel against partial volume)."""
    sub = subject2mm
    te = np.asarray(sub.protocol.te)
    r2 = r2star_map(sub.scan.magnitude, te, sub.brain)
    assert r2.dtype == np.float32 and r2.min() >= 0 and r2.max() <= 500
    rois = {"white matter": (6,), "thalamus": (13, 14), "caudate": (15, 16),
            "putamen": (17, 18), "globus pallidus": (19, 20)}
    for name, labels in rois.items():
        roi = ndi.binary_erosion(sub.roi(*labels))
        est = float(np.median(r2[roi]))
        true = float(np.median(sub.phantom.r2star[roi]))
        assert est == pytest.approx(true, rel=0.05), (name, est, true)


def test_combine_magnitude():
    mag = np.stack([np.full((2, 2, 2), 3.0), np.full((2, 2, 2), 4.0)], axis=-1)
    assert combine_magnitude(mag)[0, 0, 0] == pytest.approx(5.0)
    assert combine_magnitude(mag, method="mean")[0, 0, 0] == pytest.approx(3.5)
    assert combine_magnitude(mag, method="first")[0, 0, 0] == pytest.approx(3.0)
    assert combine_magnitude(mag).dtype == np.float32
    with pytest.raises(InputError, match="unknown magnitude combination"):
        combine_magnitude(mag, method="max")


# ------------------------------------------------------------------------------ bad input


def _good():
    te = np.array([0.004, 0.008, 0.012])
    mag = np.ones((4, 4, 4, 3), np.float32)
    pha = np.zeros((4, 4, 4, 3), np.float32)
    return mag, pha, te


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m, p, t, k: (m[..., :0], p[..., :0], t, k), "zero echoes"),
        (lambda m, p, t, k: (m, p[..., :2], t, k), "differs from phase shape"),
        (lambda m, p, t, k: (m, p, t[:2], k), "3 echoes"),
        (lambda m, p, t, k: (m, p, t[::-1], k), "strictly increasing"),
        (lambda m, p, t, k: (m, p, t * 1000, k), "milliseconds"),
        (lambda m, p, t, k: (np.where(m > 0, np.nan, m), p, t, k), "NaN"),
        (lambda m, p, t, k: (-m, p, t, k), "negative"),
        (lambda m, p, t, k: (m, p, t, np.zeros((4, 4, 4), bool)), "mask is empty"),
        (lambda m, p, t, k: (m, p, t, np.ones((4, 4, 5), bool)), "mask shape"),
    ],
)
def test_fit_bad_input(mutate, match):
    mag, pha, te = _good()
    m, p, t, k = mutate(mag, pha, te, None)
    with pytest.raises(InputError, match=match):
        fit_complex(m, p, t, k, noise_sigma=0.1)


def test_r2star_needs_two_echoes():
    mag, _, _ = _good()
    with pytest.raises(InputError, match="at least 2 echoes"):
        r2star_map(mag[..., :1], [0.004])
