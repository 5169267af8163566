"""Smoothing helpers shared by the lesion and enhancing-lesion stages (private)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["robust_sd", "smooth_ratio"]

#: MAD -> SD of a Gaussian.
MAD_TO_SD = 1.4826


def robust_sd(values: np.ndarray) -> float:
    """``1.4826 * median(|x - median(x)|)``: the SD of Gaussian data, blind to outliers."""
    v = np.asarray(values, np.float64)
    return MAD_TO_SD * float(np.median(np.abs(v - np.median(v))))


def smooth_ratio(num: np.ndarray, den: np.ndarray, sigma_mm: float, vs: np.ndarray,
                 order: int = 0) -> np.ndarray:
    """Normalised convolution ``G * num / G * den`` on a grid block-summed to about 4 mm.

    A smooth field (a receive bias) estimated from the voxels where ``den`` (a weight) is
    non-zero; blocks without support take the nearest supported value. The Gaussian of
    ``sigma_mm`` is many times the 4 mm block, so the block sums lose nothing and make the
    filter 30-60 times cheaper at 1 mm.

    Parameters
    ----------
    num, den : (X, Y, Z) arrays
        Weighted values (image x weight) and weights.
    sigma_mm : float
        Gaussian sigma, mm.
    vs : (3,) array
        Voxel size, mm.
    order : {0, 1}
        0: the Gaussian-weighted local mean. 1: the local *linear* fit (normalised
        convolution of first order, Knutsson & Westin 1993): the same as 0 where the support
        surrounds a voxel, but without the lag of a local mean where it does not (the edge of
        the brain, where a steep field would otherwise be flattened towards the interior).

    Returns
    -------
    (X, Y, Z) float32

    References
    ----------
    .. [1] Knutsson H, Westin C-F. Normalized and differential convolution. Proc IEEE CVPR
       1993:515-523.
    """
    f = np.maximum(np.round(4.0 / vs).astype(int), 1)
    shape = num.shape
    pad = [(0, (-n) % k) for n, k in zip(shape, f, strict=True)]

    def block_sum(a: np.ndarray) -> np.ndarray:
        a = np.pad(a, pad)
        s = a.shape
        return a.reshape(s[0] // f[0], f[0], s[1] // f[1], f[1], s[2] // f[2], f[2]).sum(
            axis=(1, 3, 5)
        )

    n_raw = block_sum(num.astype(np.float64))
    d_raw = block_sum(den.astype(np.float64))
    sig = sigma_mm / (vs * f)
    n_small = ndi.gaussian_filter(n_raw, sig, mode="constant")
    d_small = ndi.gaussian_filter(d_raw, sig, mode="constant")
    ratio = np.where(d_small > 1e-6 * d_small.max(), n_small / np.maximum(d_small, 1e-12), 0.0)
    if order == 1:
        ratio = _first_order(n_raw, d_raw, sig, ratio)
    # fill blocks without support with the nearest supported value
    if np.any(d_small <= 1e-6 * d_small.max()):
        idx = ndi.distance_transform_edt(
            d_small <= 1e-6 * d_small.max(), return_distances=False, return_indices=True
        )
        ratio = ratio[tuple(idx)]
    zoom = [
        n_full / n_sm
        for n_full, n_sm in zip(np.array(shape) + [p[1] for p in pad], ratio.shape, strict=True)
    ]
    full = ndi.zoom(ratio, zoom, order=1, mode="nearest", grid_mode=True)
    return full[: shape[0], : shape[1], : shape[2]].astype(np.float32)


def _first_order(n_raw: np.ndarray, d_raw: np.ndarray, sig: np.ndarray,
                 zeroth: np.ndarray) -> np.ndarray:
    """Local linear fit ``a + b . (x - x0)`` of ``n/d`` with weights ``d`` and a Gaussian window.

    Returns ``a`` at every grid point; where the weighted design is ill-conditioned (support
    on one side only in some direction, or none) the zeroth-order value is kept.
    """
    shape = d_raw.shape
    # coordinates in units of the Gaussian sigma, centred (well-conditioned sums)
    axes = [(np.arange(n) - (n - 1) / 2.0) / s for n, s in zip(shape, sig, strict=True)]
    x = np.meshgrid(*axes, indexing="ij")

    def g(a: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(a, sig, mode="constant")

    s0 = g(d_raw)
    s1 = [g(d_raw * xi) for xi in x]
    s2 = {(i, j): g(d_raw * x[i] * x[j]) for i in range(3) for j in range(i, 3)}
    t0 = g(n_raw)
    t1 = [g(n_raw * xi) for xi in x]
    # moments about x0: sum w (x - x0) = s1 - x0 s0, sum w (x-x0)_i (x-x0)_j = ...
    m = np.empty(shape + (4, 4))
    r = np.empty(shape + (4,))
    m[..., 0, 0] = s0
    r[..., 0] = t0
    for i in range(3):
        c1 = s1[i] - x[i] * s0
        m[..., 0, i + 1] = m[..., i + 1, 0] = c1
        r[..., i + 1] = t1[i] - x[i] * t0
        for j in range(i, 3):
            c2 = s2[(i, j)] - x[i] * s1[j] - x[j] * s1[i] + x[i] * x[j] * s0
            m[..., i + 1, j + 1] = m[..., j + 1, i + 1] = c2
    ok = s0 > 1e-6 * s0.max()
    out = zeroth.copy()
    if not ok.any():
        return out
    mm, rr = m[ok], r[ok]
    # scale-free conditioning test: the smallest eigenvalue of the normalised second moments
    cov = mm[:, 1:, 1:] / mm[:, :1, :1] - np.einsum("ni,nj->nij", mm[:, 0, 1:] / mm[:, 0, :1],
                                                      mm[:, 0, 1:] / mm[:, 0, :1])
    good = np.linalg.eigvalsh(cov)[:, 0] > 0.05  # spread of at least ~0.2 sigma each way
    sol = np.linalg.solve(mm[good] + 1e-12 * np.eye(4), rr[good][..., None])[..., 0, 0]
    vals = out[ok]
    vals[good] = sol
    out[ok] = vals
    return out
