"""Euclidean distance transforms of masks in mm (private).

The anatomy and masking stages measure many distances on whole 1 mm heads: depth inside the
brain, "within 2 mm of the cortex", a rim grown around lesion cores. SciPy's
``distance_transform_edt`` computes a full feature transform for each (2.3 s for the brain of
a 1 mm head, 182 x 218 x 182 voxels); the ``edt`` package (Seung lab; Felzenszwalb-Huttenlocher
separable parabolas, anisotropic, multi-threaded) gives the same exact distances, to float32
rounding, in 0.35 s on one core and 0.25 s on two.
Where the nearest voxel's *index* is needed, SciPy's feature transform stays in use.
"""

from __future__ import annotations

from collections.abc import Sequence

import edt as _edt
import numpy as np

from qsmiron.recon.fft import default_workers

__all__ = ["depth_mm", "within_mm"]


def depth_mm(mask: np.ndarray, sampling: Sequence[float] | np.ndarray) -> np.ndarray:
    """Distance (mm) of every ``True`` voxel to the nearest ``False`` voxel; 0 outside.

    The same as ``scipy.ndimage.distance_transform_edt(mask, sampling=sampling)`` to float32
    rounding (the array's edge is not a boundary), except that a mask with no ``False`` voxel
    at all is infinitely deep (``inf``) instead of SciPy's undefined values.

    Parameters
    ----------
    mask : (X, Y, Z) array
        Mask (anything non-zero is inside).
    sampling : sequence of 3 floats
        Voxel size along each axis, mm.

    Returns
    -------
    (X, Y, Z) float32
    """
    m = np.asarray(mask).astype(bool, copy=False)
    vs = tuple(float(v) for v in np.broadcast_to(np.asarray(sampling, float), (m.ndim,)))
    return _edt.edt(m, anisotropy=vs, black_border=False, parallel=default_workers())


def within_mm(mask: np.ndarray, distance_mm: float,
              sampling: Sequence[float] | np.ndarray) -> np.ndarray:
    """Voxels within ``distance_mm`` of ``mask`` (the mask itself included).

    A relative tolerance of 1e-5 absorbs float32 rounding, so that a distance equal to a
    multiple of the voxel size (2 mm on a 1 mm grid) is within it.

    Parameters
    ----------
    mask : (X, Y, Z) bool array
        Seed voxels.
    distance_mm : float
        Reach, mm.
    sampling : sequence of 3 floats
        Voxel size, mm.

    Returns
    -------
    (X, Y, Z) bool
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if not m.any():
        return np.zeros(m.shape, bool)
    return depth_mm(~m, sampling) <= distance_mm * (1.0 + 1e-5)
