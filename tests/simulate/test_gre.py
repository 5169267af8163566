"""GRE forward model against analytic truth.

The field of a uniformly magnetised sphere (susceptibility ``chi`` inside radius ``a``, 0
outside) after the Lorentz-sphere correction is, with ``theta`` the angle to B0,

    inside:  0
    outside: chi * a^3 / (3 r^3) * (3 cos^2(theta) - 1)

(e.g. Marques & Bowtell, Concepts Magn Reson B 2005;25B:65). The sphere is voxelised with
partial volume (each voxel holds the fraction of its volume inside the sphere, from 8^3
sub-samples), which is the voxel average of the continuous object the formula describes; its
centre is off the voxel grid so that no symmetry hides errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from qsmiron.constants import GAMMA_HZ_PER_T
from qsmiron.simulate.gre import (
    add_noise,
    add_rician_noise,
    forward_field,
    gre_signal,
    noise_sigma_for_snr,
    smooth_phase_offset,
    wrap_to_pi,
)

CHI = 0.5  # ppm
RADIUS_MM = 10.0


def sphere_partial_volume(
    shape: tuple[int, int, int],
    voxel_size: tuple[float, float, float],
    radius: float,
    centre_vox: np.ndarray,
    subsamples: int = 8,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Volume fraction of each voxel inside a sphere, and the voxel-centre coordinates (mm)."""
    vsz = np.asarray(voxel_size, float)
    axes = [(np.arange(n) - c) * v for n, v, c in zip(shape, vsz, centre_vox, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    half = vsz / 2
    near2 = sum(np.maximum(np.abs(g) - h, 0) ** 2 for g, h in zip(grids, half, strict=True))
    far2 = sum((np.abs(g) + h) ** 2 for g, h in zip(grids, half, strict=True))
    frac = (far2 <= radius**2).astype(np.float64)
    edge = np.nonzero((near2 < radius**2) & (far2 > radius**2))
    offsets = [((np.arange(subsamples) + 0.5) / subsamples - 0.5) * v for v in vsz]
    sub = np.stack(np.meshgrid(*offsets, indexing="ij"), -1).reshape(-1, 3)
    centres = np.stack([axes[i][edge[i]] for i in range(3)], -1)
    inside = ((centres[:, None, :] + sub[None]) ** 2).sum(-1) <= radius**2
    frac[edge] = inside.mean(axis=1)
    return frac, axes


def analytic_sphere_field(axes, b0_dir, chi=CHI, radius=RADIUS_MM):
    b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    x, y, z = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    rs = np.maximum(r, 1e-12)
    cos = (x * b[0] + y * b[1] + z * b[2]) / rs
    field = np.where(r > radius, chi * radius**3 / (3 * rs**3) * (3 * cos**2 - 1), 0.0)
    return field, r


def sphere_errors(shape, voxel_size, b0_dir, **kwargs):
    """(max |error| inside r < 0.7a, max |error| / max |field| and relative L2 for r > 1.5a)."""
    centre = np.array([31.3, 32.6, 31.8]) * np.array(shape) / 64.0
    frac, axes = sphere_partial_volume(shape, voxel_size, RADIUS_MM, centre)
    chi = (CHI * frac).astype(np.float32)
    field = forward_field(chi, voxel_size, b0_dir, **kwargs)
    assert field.dtype == np.float32 and field.shape == shape
    truth, r = analytic_sphere_field(axes, b0_dir)
    err = field - truth
    inside = r < 0.7 * RADIUS_MM
    outside = r > 1.5 * RADIUS_MM
    e_in = np.abs(err[inside]).max() / CHI
    e_out_max = np.abs(err[outside]).max() / np.abs(truth[outside]).max()
    e_out_l2 = np.linalg.norm(err[outside]) / np.linalg.norm(truth[outside])
    return e_in, e_out_max, e_out_l2


ISO = ((64, 64, 64), (1.0, 1.0, 1.0))
ANISO = ((64, 64, 32), (1.0, 1.0, 2.0))  # same 64 mm FOV, 2 mm along z like the study's GRE
B0_Z = (0.0, 0.0, 1.0)
B0_30 = (np.sin(np.pi / 6), 0.0, np.cos(np.pi / 6))  # 30 degrees off z in the x-z plane
B0_GENERAL = (0.3, -0.5, 0.8)

# Tolerances, as fractions: inside of chi; outside of the largest outside field (max) and
# relative L2. Measured with the default (discrete) kernel: isotropic 0.12-0.15% / 0.26-0.36% /
# 0.67-0.72%, anisotropic 0.34-0.35% / 1.1-1.45% / 0.76-1.17%. The 2 mm voxels put only 5
# voxels across the radius along z, hence the larger voxelisation error there. Most of the
# outside L2 error is the far-field tail of the periodic copies left by 2x padding (0.24% with
# 3x padding).
TOL_ISO = (0.0025, 0.006, 0.01)
TOL_ANISO = (0.006, 0.02, 0.015)


@pytest.mark.parametrize(
    ("grid", "b0_dir", "tol"),
    [
        (ISO, B0_Z, TOL_ISO),
        (ISO, B0_30, TOL_ISO),
        (ISO, B0_GENERAL, TOL_ISO),
        (ANISO, B0_Z, TOL_ANISO),
        (ANISO, B0_GENERAL, TOL_ANISO),
    ],
    ids=["iso-z", "iso-30deg", "iso-general", "aniso-z", "aniso-general"],
)
def test_sphere_field_matches_analytic(grid, b0_dir, tol):
    shape, vsz = grid
    e_in, e_out_max, e_out_l2 = sphere_errors(shape, vsz, b0_dir)
    assert e_in < tol[0], f"inside: max error {e_in:.4%} of chi"
    assert e_out_max < tol[1], f"outside: max error {e_out_max:.4%} of peak field"
    assert e_out_l2 < tol[2], f"outside: relative L2 error {e_out_l2:.4%}"


def test_sphere_continuous_kernel():
    """The continuous kernel is as good for B0 along an axis but rings for oblique B0.

    Measured: along z 0.17% / 0.25% / 0.7%; 30 degrees off z 2.5% of chi inside, against 0.12%
    for the discrete kernel. The bound of 4% documents this known limitation (it is why the
    forward model defaults to the discrete kernel); the test fails if it gets worse.
    """
    e = sphere_errors(*ISO, B0_Z, kernel="continuous")
    assert all(v < t for v, t in zip(e, TOL_ISO, strict=True)), e
    e_cont = sphere_errors(*ISO, B0_30, kernel="continuous")[0]
    e_disc = sphere_errors(*ISO, B0_30, kernel="discrete")[0]
    assert e_cont < 0.04
    assert e_disc < e_cont / 10


def test_padding_prevents_wrap_around():
    """Without padding the periodic copies of the sphere add their fields (measured 17% L2)."""
    _, max_pad, l2_pad = sphere_errors(*ISO, B0_30)
    _, max_none, l2_none = sphere_errors(*ISO, B0_30, pad=None)
    assert l2_none > 0.1 and l2_none > 10 * l2_pad
    assert max_none > 10 * max_pad
    # less padding is allowed and lies in between
    _, _, l2_15 = sphere_errors(*ISO, B0_30, pad=1.5)
    assert l2_pad < l2_15 < l2_none
    # an explicit grid shape is accepted
    _, _, l2_grid = sphere_errors(*ISO, B0_30, pad=(128, 128, 128))
    assert l2_grid == pytest.approx(l2_pad, rel=1e-3)


def test_forward_field_rejects_bad_input():
    with pytest.raises(ValueError, match="3D"):
        forward_field(np.zeros((4, 4)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        forward_field(np.full((4, 4, 4), np.nan), 1.0)
    with pytest.raises(ValueError, match="pad"):
        forward_field(np.zeros((4, 4, 4)), 1.0, pad=0.5)
    with pytest.raises(ValueError, match="pad"):
        forward_field(np.zeros((4, 4, 4)), 1.0, pad=(4, 4, 3))


# ---------------------------------------------------------------- signal model


def _signal_inputs(shape=(16, 18, 20), seed=0):
    rng = np.random.default_rng(seed)
    field = rng.uniform(-5.0, 5.0, shape).astype(np.float32)  # ppm, up to sinus-like offsets
    m0 = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    r2star = rng.uniform(5.0, 80.0, shape).astype(np.float32)  # 1/s
    phase0 = smooth_phase_offset(shape, (1.0, 1.0, 2.0), rng)
    te = np.array([0.0043, 0.0101, 0.0159, 0.0401])  # s
    return field, m0, r2star, phase0, te


def test_gre_phase_and_magnitude_noise_free():
    field, m0, r2star, phase0, te = _signal_inputs()
    b0 = 3.0
    s = gre_signal(field, m0, r2star, te, b0=b0, phase0=phase0)
    assert s.shape == field.shape + (te.size,) and s.dtype == np.complex64
    # reference in float64
    phi = (
        2 * np.pi * GAMMA_HZ_PER_T * b0 * te * 1e-6 * field.astype(np.float64)[..., None]
        + phase0.astype(np.float64)[..., None]
    )
    mag = m0.astype(np.float64)[..., None] * np.exp(-r2star.astype(np.float64)[..., None] * te)
    # float32 precision: the phase is formed in float32 (relative rounding of a few eps of
    # |phi|, up to 2 pi * 127.7 MHz * 40 ms * 5 ppm = 160 rad here) and cos/sin/angle add
    # a few eps of 1 rad.
    eps = np.finfo(np.float32).eps
    dphi = np.abs(wrap_to_pi(np.angle(s).astype(np.float64) - phi))
    assert np.all(dphi <= 4 * eps * (np.abs(phi) + 2 * np.pi))
    # magnitude: float32 exp, product and complex modulus, a few eps (measured 3 eps)
    np.testing.assert_allclose(np.abs(s), mag, rtol=8 * eps, atol=0)
    # the magnitude decays with R2*: ratio of echoes = exp(-R2* dTE)
    ratio = np.abs(s[..., 3]) / np.abs(s[..., 0])
    np.testing.assert_allclose(ratio, np.exp(-r2star * (te[3] - te[0])), rtol=1e-5)
    # te = 0 gives m0 * exp(i phase0); without phase0 the phase is the field phase alone
    s0 = gre_signal(field, m0, r2star, [0.0])[..., 0]
    np.testing.assert_allclose(s0, m0, rtol=1e-6)


def test_gre_noise_statistics_and_determinism():
    field, m0, r2star, phase0, te = _signal_inputs(shape=(32, 32, 32))
    te = te[:2]
    sigma = 0.05
    clean = gre_signal(field, m0, r2star, te, phase0=phase0)
    noisy = gre_signal(field, m0, r2star, te, phase0=phase0, noise_sigma=sigma, rng=42)
    again = gre_signal(
        field, m0, r2star, te, phase0=phase0, noise_sigma=sigma, rng=np.random.default_rng(42)
    )
    np.testing.assert_array_equal(noisy, again)
    other = gre_signal(field, m0, r2star, te, phase0=phase0, noise_sigma=sigma, rng=43)
    assert not np.array_equal(noisy, other)

    n = (noisy - clean).ravel().astype(np.complex128)
    count = n.size  # 65536 samples per channel
    # sample std of N(0, sigma): standard error sigma / sqrt(2 count) = 0.28%; allow 5 SE
    se_std = 1 / np.sqrt(2 * count)
    for channel in (n.real, n.imag):
        assert abs(channel.std() / sigma - 1) < 5 * se_std
        assert abs(channel.mean()) < 5 * sigma / np.sqrt(count)
    # real and imaginary channels independent: correlation within 5 / sqrt(count)
    assert abs(np.corrcoef(n.real, n.imag)[0, 1]) < 5 / np.sqrt(count)


def test_gre_rejects_bad_input():
    field = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="random generator"):
        gre_signal(field, 1.0, 20.0, [0.01], noise_sigma=0.1)
    with pytest.raises(ValueError, match="seconds"):
        gre_signal(field, 1.0, 20.0, [4.3, 10.1])
    with pytest.raises(ValueError, match="te"):
        gre_signal(field, 1.0, 20.0, [])
    with pytest.raises(ValueError, match="b0"):
        gre_signal(field, 1.0, 20.0, [0.01], b0=0)


def test_noise_sigma_for_snr_gives_the_snr():
    field, m0, r2star, phase0, te = _signal_inputs(shape=(32, 32, 32))
    mask = np.zeros(field.shape, bool)
    mask[4:28, 4:28, 4:28] = True
    mag1 = m0 * np.exp(-r2star * te[0])
    sigma = noise_sigma_for_snr(mag1, mask, snr=40.0)
    assert sigma == pytest.approx(mag1[mask].mean() / 40.0, rel=1e-6)
    s = gre_signal(field, m0, r2star, te[:1], phase0=phase0, noise_sigma=sigma, rng=0)
    noise = s[..., 0] - gre_signal(field, m0, r2star, te[:1], phase0=phase0)[..., 0]
    measured = mag1[mask].mean() / noise.real.std()
    assert measured == pytest.approx(40.0, rel=0.02)  # 5 SE of the std of 32768 samples
    with pytest.raises(ValueError, match="empty"):
        noise_sigma_for_snr(mag1, np.zeros_like(mask), 10)


def test_rician_noise_moments():
    """|A + sigma (n1 + i n2)|: E[M^2] = A^2 + 2 sigma^2; at A = 0, E[M] = sigma sqrt(pi / 2)."""
    shape = (64, 64, 32)
    sigma = 2.0
    img = np.zeros(shape, np.float32)
    img[:32] = 10.0
    noisy = add_rician_noise(img, sigma, np.random.default_rng(7))
    assert noisy.dtype == np.float32 and noisy.min() >= 0
    count = img[:32].size  # 65536 per half
    m2 = (noisy[:32].astype(np.float64) ** 2).mean()
    # var(M^2) = 4 A^2 sigma^2 + 4 sigma^4 -> SE of the mean
    se = np.sqrt(4 * 100 * sigma**2 + 4 * sigma**4) / np.sqrt(count)
    assert abs(m2 - (100 + 2 * sigma**2)) < 5 * se
    # Rayleigh: mean sigma sqrt(pi/2), variance (4 - pi)/2 sigma^2
    se0 = sigma * np.sqrt((4 - np.pi) / 2) / np.sqrt(count)
    assert abs(noisy[32:].mean() - sigma * np.sqrt(np.pi / 2)) < 5 * se0
    np.testing.assert_array_equal(noisy, add_noise(img, sigma, 7))
    gauss = add_noise(img, sigma, 7, rician=False)
    assert gauss.min() < 0  # real Gaussian noise, not a magnitude
    cplx = add_noise(img.astype(np.complex64), sigma, 7)
    assert cplx.dtype == np.complex64


def test_smooth_phase_offset():
    # a head-sized field of view (192 x 224 x 192 mm) on a coarse grid, to keep the test fast
    shape, vsz = (48, 56, 24), (4.0, 4.0, 8.0)
    amp, corr = 2.5, 50.0
    p = smooth_phase_offset(shape, vsz, np.random.default_rng(3), amplitude_rad=amp)
    q = smooth_phase_offset(shape, vsz, 3, amplitude_rad=amp)
    np.testing.assert_array_equal(p, q)
    assert p.dtype == np.float32 and p.shape == shape
    assert not np.array_equal(p, smooth_phase_offset(shape, vsz, 4, amplitude_rad=amp))
    # zero-mean part of peak 2.5 rad plus a constant: range at least 2.5 rad, at most 5
    span = float(p.max() - p.min())
    assert amp - 1e-4 <= span <= 2 * amp + 1e-4
    # smooth: a field of amplitude A and correlation length L has gradients of order A / L;
    # the steepest finite-difference step stays under 3 A / L (measured 0.03-0.07 rad/mm
    # for A = pi over 8 seeds)
    for axis in range(3):
        step = np.abs(np.diff(p, axis=axis)).max() / vsz[axis]
        assert step < 3 * amp / corr
    flat = smooth_phase_offset(shape, vsz, 3, amplitude_rad=amp, constant=False)
    assert abs(float(flat.mean())) < 1e-4
    assert float(np.abs(flat).max()) == pytest.approx(amp, rel=1e-5)


def test_wrap_to_pi():
    x = np.linspace(-20, 20, 1001)
    w = wrap_to_pi(x)
    assert w.min() >= -np.pi and w.max() < np.pi
    np.testing.assert_allclose(np.exp(1j * w), np.exp(1j * x), atol=1e-12)
    np.testing.assert_array_equal(wrap_to_pi(w), w)
    assert wrap_to_pi(np.float32(np.pi)).dtype == np.float32
    assert float(wrap_to_pi(np.pi)) == pytest.approx(-np.pi)
