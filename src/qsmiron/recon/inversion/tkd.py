"""Thresholded k-space division (TKD)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from qsmiron.errors import InputError
from qsmiron.recon.inversion._ops import FFT, check_field_and_mask, fft_grid
from qsmiron.recon.kernels import KernelKind, dipole_kernel

__all__ = ["tkd", "tkd_correction_factor"]

log = logging.getLogger(__name__)


def tkd_correction_factor(threshold: float) -> float:
    """Factor that undoes TKD's mean underestimation for an isotropic spectrum.

    Truncating ``1/D`` to ``sign(D)/threshold`` multiplies each Fourier component of ``chi``
    by ``|D|/threshold < 1`` near the magic cone. Averaged over all directions of ``k``
    (``u = cos`` of the angle to B0, uniform in ``[0, 1]``) the reconstruction is scaled by
    ``s = int_0^1 min(1, |1/3 - u^2| / threshold) du``; the factor is ``1/s`` (Schweser et
    al. 2013). It is 1.20 at ``threshold = 0.19``.

    Parameters
    ----------
    threshold : float
        TKD threshold in ``(0, 2/3]``.

    Returns
    -------
    float

    Examples
    --------
    >>> round(tkd_correction_factor(0.19), 3)
    1.202
    """
    u = np.linspace(0.0, 1.0, 100_001)
    ratio = np.minimum(1.0, np.abs(1.0 / 3.0 - u * u) / float(threshold))
    mean = float(np.sum((ratio[1:] + ratio[:-1]) * 0.5) * (u[1] - u[0]))
    return 1.0 / mean


def tkd(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: float | Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    threshold: float = 0.19,
    correct: bool = True,
    pad: float | Sequence[int] = 1.5,
    kernel: KernelKind = "continuous",
    workers: int | None = None,
) -> np.ndarray:
    """Susceptibility by thresholded k-space division.

    ``chi = IFFT(FFT(f) / D_t)`` with ``D_t = D`` where ``|D| >= threshold`` and
    ``D_t = sign(D) * threshold`` near the magic cone, where division would amplify noise
    without bound [1]_ [2]_. The truncation shrinks susceptibility contrast; with ``correct``
    the result is multiplied by :func:`tkd_correction_factor` (1.20 at the default threshold)
    [3]_, which removes most of the underestimation of ROI means, not the streaks.

    The field is zero-filled outside the mask and the mask's bounding box is zero-padded to
    ``pad`` times its size. One FFT pair.

    Parameters
    ----------
    local_field : (X, Y, Z) array
        Local (tissue) field in ppm, after background removal. Values outside the mask are
        ignored.
    mask : (X, Y, Z) bool array
        Where the field is valid.
    voxel_size : float or 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in the voxel frame (normalised here).
    threshold : float
        Truncation level of ``|D|`` in ``(0, 2/3)``. Default 0.19, a common choice that trades
        streaking (lower) against underestimation (higher).
    correct : bool
        Apply the correction factor for the underestimation (default True).
    pad : float or 3 ints
        Zero padding of the mask's bounding box: a size factor, or voxels per axis.
    kernel : {"continuous", "discrete"}
        Dipole kernel (:func:`qsmiron.recon.kernels.dipole_kernel`); continuous by default.
    workers : int, optional
        FFT threads; default all CPUs this process may use.

    Returns
    -------
    (X, Y, Z) float32 array
        Susceptibility in ppm inside the mask, 0 outside. The constant offset of ``chi`` is
        not determined by the field (``D(0) = 0``): the result has zero mean over the mask;
        subtract a reference region's mean (e.g. CSF) for relative susceptibility.

    Raises
    ------
    InputError
        Bad field, mask, voxel size, B0 direction or threshold.

    References
    ----------
    .. [1] Shmueli K, de Zwart JA, van Gelderen P, Li TQ, Dodd SJ, Duyn JH. Magnetic
       susceptibility mapping of brain tissue in vivo using MRI phase data. Magn Reson Med
       2009;62:1510-1522.
    .. [2] Wharton S, Schaefer A, Bowtell R. Susceptibility mapping in the human brain using
       threshold-based k-space division. Magn Reson Med 2010;63:1292-1304.
    .. [3] Schweser F, Deistung A, Sommer K, Reichenbach JR. Toward online reconstruction of
       quantitative susceptibility maps: superfast dipole inversion. Magn Reson Med
       2013;69:1582-1594.

    Examples
    --------
    >>> from qsmiron.simulate.gre import forward_field
    >>> chi = np.zeros((48, 48, 48), np.float32)
    >>> chi[20:28, 20:28, 20:28] = 0.1
    >>> field = forward_field(chi, 1.0)
    >>> mask = np.ones(chi.shape, bool)
    >>> est = tkd(field, mask, 1.0)
    >>> est.shape, est.dtype
    ((48, 48, 48), dtype('float32'))
    """
    field, m, vsz, b0 = check_field_and_mask(local_field, mask, voxel_size, b0_dir)
    if not (0.0 < float(threshold) < 2.0 / 3.0):
        raise InputError(f"threshold must be in (0, 2/3), found {threshold!r}")
    grid = fft_grid(m, pad)
    fft = FFT(grid.shape, workers)
    if kernel not in ("continuous", "discrete"):
        raise InputError(f"kernel must be 'continuous' or 'discrete', found {kernel!r}")
    d = dipole_kernel(grid.shape, vsz, b0, rfft=True, kind=kernel)
    t = np.float32(threshold)
    inv = np.where(np.abs(d) >= t, d, np.sign(d) * t)
    np.divide(1.0, inv, out=inv, where=inv != 0)
    if correct:
        inv *= np.float32(tkd_correction_factor(threshold))
    spec = fft.forward(grid.embed(field))
    spec *= inv
    chi = grid.extract(fft.inverse(spec), field.shape)
    chi[m] -= chi[m].mean(dtype=np.float64)
    chi[~m] = 0.0
    log.debug("tkd: threshold %.3g, grid %s, %d FFTs", threshold, grid.shape, fft.count)
    return chi
