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


def smooth_ratio(num: np.ndarray, den: np.ndarray, sigma_mm: float, vs: np.ndarray) -> np.ndarray:
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

    Returns
    -------
    (X, Y, Z) float32
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

    n_small = block_sum(num.astype(np.float64))
    d_small = block_sum(den.astype(np.float64))
    sig = sigma_mm / (vs * f)
    n_small = ndi.gaussian_filter(n_small, sig, mode="constant")
    d_small = ndi.gaussian_filter(d_small, sig, mode="constant")
    ratio = np.where(d_small > 1e-6 * d_small.max(), n_small / np.maximum(d_small, 1e-12), 0.0)
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
