"""Shared machinery of the dipole inversions: input checks, FFT grid, operators, weights.

Everything here works on the *FFT grid*: the bounding box of the mask, zero-padded to fast FFT
sizes (:func:`fft_grid`). Cropping to the mask first keeps the transforms small (a 1 mm brain
fills about half of a typical field of view); the padding keeps the periodic copies of the
susceptibility distribution apart.

Finite differences are periodic forward differences in *voxel units* (no division by the voxel
size); the methods put the voxel size into the weights of each axis instead, so that
regularisation is measured per mm. Their k-space symbols are ``exp(2 pi i m/n) - 1`` with
``|.|^2 = 4 sin^2(pi m/n)``, which makes ``grad^T grad`` diagonal in k-space.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.linalg import blas

from qsmiron.errors import InputError
from qsmiron.recon.fft import default_workers
from qsmiron.recon.kernels import padded_shape

log = logging.getLogger(__name__)

#: A local field in ppm stays within about +-0.1 ppm in 99% of the brain (0.3 ppm next to
#: veins and bleeds); a 99th percentile of |field| above this many ppm means the field is in
#: other units (Hz: x 128 at 3 T; radians of phase) or still holds the background field, and
#: inverting it would return nonsense.
MAX_P99_ABS_PPM: float = 1.0

#: A 99th percentile above this many ppm is unusual for a local field: a warning is logged.
WARN_P99_ABS_PPM: float = 0.3


def check_field_and_mask(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: float | Sequence[float],
    b0_dir: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate the common inputs of every inversion.

    Returns
    -------
    field : (X, Y, Z) float32
        The field, with zeros outside the mask (non-finite values outside the mask are
        allowed and replaced by 0).
    mask : (X, Y, Z) bool
    voxel_size : (3,) float64, mm
    b0_dir : (3,) float64, unit vector

    Raises
    ------
    InputError
        Wrong dimensions, shape mismatch, empty mask, non-finite values inside the mask, bad
        voxel size or B0 direction, or a field that is clearly not a local field in ppm.
    """
    field = np.asarray(local_field)
    m = np.asarray(mask)
    if field.ndim != 3:
        raise InputError(f"the local field must be a 3D image, found shape {field.shape}")
    if m.shape != field.shape:
        raise InputError(
            f"the mask must have the field's shape {field.shape}, found {m.shape}"
        )
    if not (np.issubdtype(field.dtype, np.floating) or np.issubdtype(field.dtype, np.integer)):
        raise InputError(f"the local field must be real-valued, found dtype {field.dtype}")
    m = m.astype(bool, copy=False) if m.dtype == bool else m != 0
    n = int(np.count_nonzero(m))
    if n == 0:
        raise InputError("the mask is empty: no voxel to invert")
    inside = field[m]
    if not np.all(np.isfinite(inside)):
        bad = int(np.count_nonzero(~np.isfinite(inside)))
        raise InputError(
            f"the local field has {bad} NaN or infinite values inside the mask; "
            "fix the field or remove those voxels from the mask"
        )
    vsz = np.asarray(voxel_size, dtype=np.float64)
    if vsz.ndim == 0:
        vsz = np.full(3, float(vsz))
    if vsz.shape != (3,) or not np.all(np.isfinite(vsz)) or np.any(vsz <= 0):
        raise InputError(f"voxel_size must be 3 positive sizes in mm, found {voxel_size!r}")
    b = np.asarray(b0_dir, dtype=np.float64)
    norm = float(np.linalg.norm(b)) if b.shape == (3,) else 0.0
    if b.shape != (3,) or not np.isfinite(norm) or norm == 0.0:
        raise InputError(f"b0_dir must be a non-zero 3-vector, found {b0_dir!r}")
    p99 = float(np.percentile(np.abs(inside), 99))
    if p99 > MAX_P99_ABS_PPM:
        raise InputError(
            f"the local field does not look like a local field in ppm: 1% of the mask has "
            f"|field| above {p99:.3g}, where a local field in ppm stays within about 0.1. "
            "Convert it to ppm first (from Hz: divide by the scanner frequency in MHz, 127.7 "
            "at 3 T; from radians: divide by 2*pi*TE*frequency in MHz; on the command line, "
            "--field-unit hz|rad with --te and --b0), and remove the background field before "
            "the inversion"
        )
    if p99 > WARN_P99_ABS_PPM:
        log.warning(
            "the local field's 99th percentile of |value| in the mask is %.3g ppm, unusually "
            "large for a local field (about 0.1 ppm); check its units and the background "
            "removal", p99,
        )
    out = np.where(m, field, 0).astype(np.float32)
    return out, m, vsz, b / norm


def check_image(image: np.ndarray | None, shape: tuple[int, ...], mask: np.ndarray,
                name: str) -> np.ndarray | None:
    """Check an optional image of the field's shape; non-finite values inside the mask fail."""
    if image is None:
        return None
    img = np.asarray(image)
    if img.shape != shape:
        raise InputError(f"{name} must have the field's shape {shape}, found {img.shape}")
    if np.iscomplexobj(img):
        raise InputError(f"{name} must be real-valued, found dtype {img.dtype}")
    img = img.astype(np.float32, copy=False)
    if not np.all(np.isfinite(img[mask])):
        raise InputError(f"{name} has NaN or infinite values inside the mask")
    return img


@dataclass(frozen=True)
class Grid:
    """Where the image sits in the FFT grid.

    Attributes
    ----------
    box : tuple of slice
        The mask's bounding box in the image.
    shape : tuple of int
        FFT grid shape; the box occupies ``[:box_shape]`` of it.
    box_shape : tuple of int
    """

    box: tuple[slice, slice, slice]
    shape: tuple[int, int, int]

    @property
    def box_shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.box)  # type: ignore[return-value]

    @property
    def inner(self) -> tuple[slice, slice, slice]:
        """The box's place in the grid."""
        return tuple(slice(0, n) for n in self.box_shape)  # type: ignore[return-value]

    def embed(self, image: np.ndarray, dtype=np.float32) -> np.ndarray:
        """The image's box, zero-padded to the grid."""
        out = np.zeros(self.shape, dtype=dtype)
        out[self.inner] = image[self.box]
        return out

    def extract(self, grid_image: np.ndarray, full_shape: tuple[int, ...]) -> np.ndarray:
        """A grid image put back into an image of ``full_shape`` (zeros outside the box)."""
        out = np.zeros(full_shape, dtype=np.float32)
        out[self.box] = grid_image[self.inner]
        return out


def fft_grid(mask: np.ndarray, pad: float | Sequence[int]) -> Grid:
    """FFT grid of a mask: its bounding box zero-padded.

    Parameters
    ----------
    mask : (X, Y, Z) bool
        The region whose bounding box is transformed.
    pad : float or 3 ints
        A float ``>= 1``: the grid is at least ``pad`` times the bounding box along each axis
        (rounded up to fast FFT sizes). Three ints: zero voxels added on each axis (at least).
    """
    idx = [np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != ax)))
           for ax in range(3)]
    box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    bshape = [s.stop - s.start for s in box]
    if np.ndim(pad) == 0:
        factor = float(pad)  # type: ignore[arg-type]
        if not np.isfinite(factor) or factor < 1:
            raise InputError(f"pad must be a factor >= 1 or 3 voxel counts, found {pad!r}")
        shape = padded_shape(bshape, factor=factor)
    else:
        p = np.asarray(pad, dtype=int)
        if p.shape != (3,) or np.any(p < 0):
            raise InputError(f"pad must be a factor >= 1 or 3 voxel counts, found {pad!r}")
        shape = padded_shape(bshape, factor=1.0, min_pad=p)
    return Grid(box=box, shape=tuple(int(s) for s in shape))  # type: ignore[arg-type]


class FFT:
    """Real FFTs on one grid with a count of the transforms done.

    ``count`` is the number of single transforms (a forward or an inverse each counts 1); a
    forward plus an inverse is one *FFT pair*.
    """

    def __init__(self, shape: tuple[int, ...], workers: int | None = None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.workers = default_workers() if workers is None else int(workers)
        self.count = 0

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.count += 1
        return scipy.fft.rfftn(x, workers=self.workers)

    def inverse(self, k: np.ndarray, overwrite: bool = False) -> np.ndarray:
        """Inverse transform (``overwrite=True`` may destroy ``k``; it is slower for c2r)."""
        self.count += 1
        out = scipy.fft.irfftn(k, s=self.shape, workers=self.workers, overwrite_x=overwrite)
        return out.astype(np.float32, copy=False)


def _axis_freq_sin2(n: int, half: bool) -> np.ndarray:
    m = np.arange(n // 2 + 1) if half else np.fft.fftfreq(n) * n
    return (4.0 * np.sin(np.pi * m / n) ** 2).astype(np.float64)


def laplacian_symbol(shape: Sequence[int], weights: Sequence[float] = (1.0, 1.0, 1.0),
                     dtype=np.float32) -> np.ndarray:
    """``sum_i weights[i] |G_i(k)|^2`` on the rfft half spectrum.

    With ``weights = 1/voxel_size**2`` it is the symbol of ``grad^T grad`` with physical
    (per mm) forward differences; with ones, of the voxel-unit differences.
    """
    shp = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
    terms = [
        (w * _axis_freq_sin2(int(n), half=(ax == 2))).astype(dtype).reshape(shp[ax])
        for ax, (n, w) in enumerate(zip(shape, weights, strict=True))
    ]
    return (terms[0] + terms[1]) + terms[2]


def axpy(a: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y += a * x`` in one pass, in place.

    Uses BLAS ``?axpy`` (multi-threaded, no temporary) when both arrays are C-contiguous
    float32 or complex64 of the same shape, NumPy otherwise.
    """
    if (x.shape == y.shape and x.dtype == y.dtype and x.flags.c_contiguous
            and y.flags.c_contiguous and y.size > 0):
        fn = {np.dtype(np.float32): blas.saxpy, np.dtype(np.complex64): blas.caxpy}.get(y.dtype)
        if fn is not None:
            yf = y.reshape(-1)
            out = fn(x.reshape(-1), yf, a=a)
            if np.shares_memory(out, yf):
                return y
            yf[...] = out  # pragma: no cover - BLAS returned a copy
            return y
    if a == 1:
        y += x
    elif a == -1:
        y -= x
    else:
        y += np.asarray(a, dtype=y.dtype) * x
    return y


def sq_norm(x: np.ndarray) -> float:
    """``||x||^2`` of an array, as a Python float (one pass, BLAS dot product)."""
    xf = x.reshape(-1)
    return float(np.vdot(xf, xf))


def _last_axis_rows(x: np.ndarray) -> np.ndarray | None:
    """``x`` as (rows, n) when it is C-contiguous (a cheap view), else None."""
    return x.reshape(-1, x.shape[-1]) if x.flags.c_contiguous else None


def forward_diff(x: np.ndarray, axis: int, out: np.ndarray) -> np.ndarray:
    """Periodic forward difference ``out[j] = x[j+1] - x[j]`` along ``axis`` (voxel units)."""
    if axis == x.ndim - 1:
        xr, orow = _last_axis_rows(x), _last_axis_rows(out)
        if xr is not None and orow is not None:
            # one contiguous pass over the flattened array, then the wrapped last column
            xf, of = x.reshape(-1), out.reshape(-1)
            np.subtract(xf[1:], xf[:-1], out=of[:-1])
            np.subtract(xr[:, 0], xr[:, -1], out=orow[:, -1])
            return out
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    lo[axis], hi[axis] = slice(0, -1), slice(1, None)
    np.subtract(x[tuple(hi)], x[tuple(lo)], out=out[tuple(lo)])
    last = [slice(None)] * 3
    first = [slice(None)] * 3
    last[axis], first[axis] = slice(-1, None), slice(0, 1)
    np.subtract(x[tuple(first)], x[tuple(last)], out=out[tuple(last)])
    return out


def add_adjoint_diff(w: np.ndarray, axis: int, out: np.ndarray, first: bool) -> np.ndarray:
    """``out (+)= diff^T w`` with ``(diff^T w)[j] = w[j-1] - w[j]`` (periodic).

    With ``first`` the result is written, otherwise accumulated.
    """
    if axis == w.ndim - 1:
        wr, orow = _last_axis_rows(w), _last_axis_rows(out)
        if wr is not None and orow is not None:
            wf, of = w.reshape(-1), out.reshape(-1)
            if first:
                np.subtract(wf[:-1], wf[1:], out=of[1:])
                np.subtract(wr[:, -1], wr[:, 0], out=orow[:, 0])
            else:
                # the flat shift gives each row's first element the previous row's last one
                axpy(1.0, wf[:-1], of[1:])
                axpy(-1.0, wf, of)
                orow[1:, 0] += wr[1:, -1] - wr[:-1, -1]
                orow[0, 0] += wr[0, -1]
            return out
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    lo[axis], hi[axis] = slice(0, -1), slice(1, None)
    head = [slice(None)] * 3
    tail = [slice(None)] * 3
    head[axis], tail[axis] = slice(0, 1), slice(-1, None)
    lo, hi, head, tail = tuple(lo), tuple(hi), tuple(head), tuple(tail)
    if first:
        np.subtract(w[lo], w[hi], out=out[hi])
        np.subtract(w[tail], w[head], out=out[head])
    else:
        if axis == 0:
            axpy(1.0, w[lo], out[hi])
        else:
            out[hi] += w[lo]
        out[head] += w[tail]
        axpy(-1.0, w, out)
    return out


def edge_weights(
    magnitude: np.ndarray,
    mask: np.ndarray,
    voxel_size: np.ndarray,
    edge_fraction: float,
) -> list[np.ndarray]:
    """Morphology prior of MEDI: which gradient components are *not* penalised.

    The magnitude gradient is taken per axis (forward differences divided by the voxel size,
    so in intensity per mm); among the gradient components whose two voxels are both in the
    mask, the ``edge_fraction`` with the largest absolute values are edges. Components that
    leave the mask are never edges.

    Returns
    -------
    list of 3 (X, Y, Z) bool arrays
        True where the component is penalised (not an edge).
    """
    mag = magnitude.astype(np.float32, copy=False)
    comps = []
    values = []
    buf = np.empty(mag.shape, np.float32)
    mbuf = np.empty(mag.shape, bool)
    for ax in range(3):
        g = np.abs(forward_diff(mag, ax, buf)) / np.float32(voxel_size[ax])
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        np.logical_and(mask[tuple(lo)], mask[tuple(hi)], out=mbuf[tuple(lo)])
        last = [slice(None)] * 3
        last[ax] = slice(-1, None)
        mbuf[tuple(last)] = False
        comps.append((g, mbuf.copy()))
        values.append(g[mbuf])
    allv = np.concatenate(values)
    if allv.size == 0 or edge_fraction <= 0:
        return [np.ones(mag.shape, bool) for _ in range(3)]
    thr = np.quantile(allv, 1.0 - min(edge_fraction, 1.0))
    return [~(inside & (g > thr)) for g, inside in comps]


def data_weights(
    noise: np.ndarray | None,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
) -> tuple[np.ndarray, str]:
    """Data weights ``W`` (mean 1 in the mask, 0 outside) and where they came from.

    ``W = 1/noise`` when a noise map (standard deviation of the field, any units) is given;
    otherwise ``W`` proportional to the magnitude (the field noise of a multi-echo fit is
    inversely proportional to the signal); otherwise uniform. Weights above 10 times their
    median are clipped (a noise map near 0 in a few voxels must not rescale all others).
    """
    if noise is not None:
        nz = noise[mask]
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(np.isfinite(nz) & (nz > 0), 1.0 / nz, 0.0)
        bad = int(np.count_nonzero(w == 0))
        if bad == w.size:
            raise InputError("the noise map has no positive finite value inside the mask")
        if bad > 0.01 * w.size:
            log.warning("the noise map is zero, negative or not finite in %d voxels of the "
                        "mask; they get no data weight", bad)
        source = "noise"
    elif magnitude is not None:
        w = np.clip(magnitude[mask].astype(np.float64), 0, None)
        if not np.any(w > 0):
            raise InputError("the magnitude is zero everywhere inside the mask")
        source = "magnitude"
    else:
        w = np.ones(int(np.count_nonzero(mask)))
        source = "uniform"
    med = float(np.median(w[w > 0]))
    np.clip(w, 0, 10.0 * med, out=w)
    w /= w.mean()
    out = np.zeros(mask.shape, np.float32)
    out[mask] = w
    return out, source
