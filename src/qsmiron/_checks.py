"""Input checks shared by the library functions (private).

Every check raises :class:`qsmiron.errors.InputError` with a message that says what was
expected, what was found and, where there is one, what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qsmiron.errors import InputError

__all__: list[str] = []


def voxel_size_mm(voxel_size: float | Sequence[float]) -> np.ndarray:
    """Voxel size as 3 positive finite floats (mm)."""
    arr = np.asarray(voxel_size, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(3, float(arr))
    if arr.shape != (3,):
        raise InputError(f"voxel_size must be one number or 3 numbers (mm), found {arr.tolist()}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"voxel_size must be positive and finite (mm), found {arr.tolist()}")
    if np.any(arr > 20.0):
        raise InputError(f"voxel_size is in mm; found {arr.tolist()} (metres or a wrong header?)")
    return arr


def echo_times(te: float | Sequence[float], n_echoes: int | None = None) -> np.ndarray:
    """Echo times as a strictly increasing 1D float64 array in seconds."""
    arr = np.atleast_1d(np.asarray(te, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"te must be a non-empty list of echo times in seconds, found {te!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"echo times must be positive and finite (s), found {arr.tolist()}")
    if np.any(arr > 1.0):
        raise InputError(
            f"echo times are in seconds; found {arr.tolist()} (milliseconds given? divide by 1000)"
        )
    if arr.size > 1 and np.any(np.diff(arr) <= 0):
        raise InputError(
            f"echo times must be strictly increasing, found {arr.tolist()}; "
            "sort the echoes (and their images) by TE"
        )
    if n_echoes is not None and arr.size != n_echoes:
        raise InputError(
            f"{arr.size} echo times given for {n_echoes} echoes in the image: "
            "te needs one value per echo (last image axis)"
        )
    return arr


def echo_stack(image: np.ndarray, name: str) -> np.ndarray:
    """A (X, Y, Z, E) float32 array (a 3D image is one echo); rejects NaN, inf and no echoes."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise InputError(f"{name} must be a 3D image or a 4D (X, Y, Z, echo) stack, "
                         f"found shape {arr.shape}")
    if arr.shape[3] == 0:
        raise InputError(f"{name} has zero echoes (shape {arr.shape}): nothing to fit")
    if np.iscomplexobj(arr):
        raise InputError(f"{name} must be real; pass magnitude and phase separately")
    return _finite_float32(arr, name)


def _finite_float32(arr: np.ndarray, name: str) -> np.ndarray:
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"{name} contains {n_bad} NaN or infinite values; replace them "
                         "(e.g. with 0 and exclude those voxels from the mask)")
    return arr


def image3d(image: np.ndarray, name: str) -> np.ndarray:
    """A finite 3D float32 array."""
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise InputError(f"{name} must be a 3D image, found shape {arr.shape}")
    return _finite_float32(arr, name)


def mask3d(mask: np.ndarray | None, shape: tuple[int, ...], allow_none: bool = True
           ) -> np.ndarray:
    """A non-empty boolean mask of the given spatial shape (all True when None)."""
    if mask is None:
        if not allow_none:
            raise InputError("a mask is required")
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise InputError(f"mask shape {m.shape} differs from the image shape {tuple(shape)}")
    if m.dtype != bool:
        if not np.isfinite(m).all():
            raise InputError("mask contains NaN or infinite values")
        m = m > 0.5 if np.issubdtype(m.dtype, np.floating) else m != 0
    if not m.any():
        raise InputError("mask is empty: no voxel to process (check the mask file or the "
                         "brain-mask threshold)")
    return m


def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``'s voxels, grown by ``margin`` voxels.

    Parameters
    ----------
    mask : ndarray of bool
        Non-empty mask.
    margin : int or sequence of int
        Voxels added on each side (per axis if a sequence), clipped to the array.

    Returns
    -------
    tuple of slice
    """
    m = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    axes = range(mask.ndim)
    out = []
    for i in axes:
        hit = np.nonzero(mask.any(axis=tuple(j for j in axes if j != i)))[0]
        out.append(slice(max(int(hit.min()) - int(m[i]), 0),
                         min(int(hit.max()) + int(m[i]) + 1, mask.shape[i])))
    return tuple(out)


def box_affine(affine: np.ndarray, box: Sequence[slice]) -> np.ndarray:
    """Voxel-to-world transform of the sub-grid ``array[box]`` of a grid with ``affine``.

    >>> box_affine(np.diag([2.0, 2.0, 2.0, 1.0]), (slice(1, 4), slice(0, 2), slice(3, 5)))[:3, 3]
    array([2., 0., 6.])
    """
    a = np.asarray(affine, dtype=float).copy()
    a[:3, 3] = a[:3, :3] @ np.array([b.start or 0 for b in box], dtype=float) + a[:3, 3]
    return a
