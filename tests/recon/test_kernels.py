"""Dipole kernel: values, symmetries and units checked against the analytic formula."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from qsmiron.recon.kernels import dipole_kernel, kspace_frequencies, padded_shape

KINDS = ("continuous", "discrete")
OBLIQUE = (0.3, -0.5, 0.8)


def _negate_k(full: np.ndarray) -> np.ndarray:
    """The full-spectrum array at -k: index m -> (-m) mod n on every axis."""
    return np.roll(np.flip(full), shift=1, axis=(0, 1, 2))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("b0_dir", [(0, 0, 1), (0.5, 0, np.sqrt(3) / 2), OBLIQUE])
@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (0.5, 0.5, 2.0)])
def test_range_origin_and_symmetry(kind, b0_dir, voxel_size):
    shape = (12, 9, 10)  # even and odd sizes: Nyquist planes and none
    d = dipole_kernel(shape, voxel_size, b0_dir, rfft=False, kind=kind)
    assert d.shape == shape and d.dtype == np.float32
    assert d[0, 0, 0] == 0.0
    eps = 1e-6
    assert d.min() >= -2 / 3 - eps and d.max() <= 1 / 3 + eps
    # D(k) = D(-k) on the grid, exactly (also at the Nyquist planes for oblique B0):
    # the field of a real susceptibility map is real.
    np.testing.assert_array_equal(d, _negate_k(d))
    # sign of b0_dir and its length do not matter
    d_neg = dipole_kernel(shape, voxel_size, -3.0 * np.asarray(b0_dir), rfft=False, kind=kind)
    np.testing.assert_allclose(d_neg, d, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nz", [10, 11])
def test_rfft_half_equals_full_spectrum(kind, nz):
    shape = (8, 6, nz)
    full = dipole_kernel(shape, (1.0, 0.8, 1.3), OBLIQUE, rfft=False, kind=kind)
    half = dipole_kernel(shape, (1.0, 0.8, 1.3), OBLIQUE, rfft=True, kind=kind)
    assert half.shape == (8, 6, nz // 2 + 1)
    np.testing.assert_allclose(half, full[..., : nz // 2 + 1], atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_real_input_gives_real_output(kind):
    """With the even kernel, the full complex inverse FFT has no imaginary part."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 12, 8))
    d = dipole_kernel(x.shape, (1.0, 1.0, 2.0), OBLIQUE, rfft=False, dtype=np.float64, kind=kind)
    y = scipy.fft.ifftn(d * scipy.fft.fftn(x))
    assert np.abs(y.imag).max() < 1e-12 * np.abs(y.real).max()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("axis", "perm"),
    [(0, (2, 1, 0)), (1, (0, 2, 1))],  # B0 along x, along y
)
def test_rotation_covariance(kind, axis, perm):
    """Kernel for B0 along axis i equals the z-kernel on the grid with axes i and z swapped."""
    shape = (10, 12, 14)
    vsz = (0.9, 1.1, 1.4)
    b = np.zeros(3)
    b[axis] = 1.0
    d = dipole_kernel(shape, vsz, b, rfft=False, kind=kind)
    swapped_shape = tuple(shape[p] for p in perm)
    swapped_vsz = tuple(vsz[p] for p in perm)
    d_z = dipole_kernel(swapped_shape, swapped_vsz, (0, 0, 1), rfft=False, kind=kind)
    np.testing.assert_allclose(np.transpose(d_z, perm), d, atol=1e-7)


def test_isotropic_rotation_covariance_oblique():
    """Permuting the axes of an isotropic grid permutes the components of b0_dir."""
    n = 12
    b = np.array(OBLIQUE)
    d = dipole_kernel((n, n, n), 1.0, b, rfft=False)
    perm = (1, 2, 0)
    d_p = dipole_kernel((n, n, n), 1.0, b[list(perm)], rfft=False)
    # equal up to float32 rounding of the sums taken in another order (a few ulp of 2/3)
    np.testing.assert_allclose(np.transpose(d, perm), d_p, atol=4 * np.finfo(np.float32).eps)


def test_continuous_values_in_physical_units():
    """D = 1/3 - (k.b)^2/|k|^2 with k_i = m_i / (n_i * voxel_size_i), checked by hand."""
    d = dipole_kernel((8, 8, 8), (1.0, 1.0, 2.0), (0, 0, 1), rfft=False)
    # k = (1/8, 0, 1/16) 1/mm: kz^2 / |k|^2 = (1/256) / (1/64 + 1/256) = 1/5
    assert d[1, 0, 1] == pytest.approx(1 / 3 - 1 / 5, abs=1e-7)
    assert d[0, 0, 1] == pytest.approx(-2 / 3, abs=1e-7)  # k parallel to B0
    assert d[3, 2, 0] == pytest.approx(1 / 3, abs=1e-7)  # k perpendicular to B0
    # k along the cube diagonal with B0 along it: (k.b)^2/|k|^2 = 1
    diag = dipole_kernel((8, 8, 8), 1.0, (1, 1, 1), rfft=False)
    assert diag[1, 1, 1] == pytest.approx(-2 / 3, abs=1e-7)
    # magic angle: k at 54.7 degrees to B0 (k = (1, 0, 1)/8 and B0 at 9.74 deg from z)
    theta = np.arccos(1 / np.sqrt(3)) - np.pi / 4
    magic = dipole_kernel((8, 8, 8), 1.0, (np.sin(-theta), 0, np.cos(theta)), rfft=False)
    assert magic[1, 0, 1] == pytest.approx(0.0, abs=1e-6)


def test_voxel_size_scale_invariance():
    a = dipole_kernel((10, 10, 6), (0.5, 0.5, 1.0), OBLIQUE)
    b = dipole_kernel((10, 10, 6), (1.0, 1.0, 2.0), OBLIQUE)
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_discrete_kernel_tends_to_continuous_at_low_frequency():
    """Finite differences are second-order accurate: at |k h| << 1 both kernels agree."""
    shape = (128, 128, 128)
    c = dipole_kernel(shape, 1.0, OBLIQUE, rfft=True, dtype=np.float64)
    d = dipole_kernel(shape, 1.0, OBLIQUE, rfft=True, dtype=np.float64, kind="discrete")
    low = np.zeros(c.shape, bool)
    low[:5, :5, :5] = True  # |k h| <= 2 pi * 4/128 = 0.2: relative O((k h)^2) = 0.04
    low[0, 0, 0] = False
    assert np.abs(c - d)[low].max() < 0.01
    # and they do differ near Nyquist
    assert np.abs(c - d).max() > 0.1


def test_kspace_frequencies():
    kx, ky, kz = kspace_frequencies((4, 5, 6), (1.0, 0.5, 2.0), rfft=True)
    assert kx.shape == (4, 1, 1) and ky.shape == (1, 5, 1) and kz.shape == (1, 1, 4)
    np.testing.assert_allclose(kx.ravel(), [0, 0.25, -0.5, -0.25])
    np.testing.assert_allclose(ky.ravel(), [0, 0.4, 0.8, -0.8, -0.4])
    np.testing.assert_allclose(kz.ravel(), [0, 1 / 12, 2 / 12, 3 / 12])


def test_padded_shape():
    shape = (193, 229, 193)
    p = padded_shape(shape)
    assert all(q >= 2 * s for q, s in zip(p, shape, strict=True))
    assert p[:2] == tuple(scipy.fft.next_fast_len(2 * s) for s in shape[:2])
    assert p[2] == scipy.fft.next_fast_len(2 * shape[2], real=True)
    assert padded_shape((64, 64, 32), factor=1.0) == (64, 64, 32)
    q = padded_shape((64, 64, 32), factor=1.0, min_pad=(10, 0, 20))
    assert q[0] >= 74 and q[1] == 64 and q[2] >= 52


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"b0_dir": (0, 0, 0)}, "non-zero"),
        ({"b0_dir": (0, 1)}, "3 components"),
        ({"voxel_size": (1, 1, 0)}, "positive"),
        ({"kind": "spatial"}, "kind"),
    ],
)
def test_kernel_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dipole_kernel((4, 4, 4), **kwargs)


def test_padded_shape_rejects_bad_input():
    with pytest.raises(ValueError, match=">= 1"):
        padded_shape((4, 4, 4), factor=0.5)
    with pytest.raises(ValueError, match="non-negative"):
        padded_shape((4, 4, 4), min_pad=-1)
