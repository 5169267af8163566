"""Background field removal: PDF, LBV and V-SHARP.

The total field measured inside the brain is the sum of a *local* field, produced by the
susceptibility of the brain itself, and a *background* field, produced by everything outside
it (air in the sinuses and ear canals, bone, the head's surface, shim residuals). Inside the
brain the background field is harmonic (its Laplacian is zero, because its sources are
outside); the three methods here use that fact in different ways:

:func:`pdf`
    Projection onto dipole fields (Liu et al. 2011): fits the field inside the mask with the
    fields of dipole sources placed *outside* the mask (weighted least squares, conjugate
    gradients) and subtracts the fit. No erosion.
:func:`lbv`
    Laplacian boundary value (Zhou et al. 2014): the background is the harmonic function
    inside the mask that equals the total field on the mask boundary; solved by multigrid-
    preconditioned conjugate gradients. The boundary layer (and ``peel`` more) is dropped.
:func:`vsharp`
    Variable-radius SHARP (Schweser et al. 2011; Li et al. 2011; Wu et al. 2012): spherical-
    mean-value (SMV) high-pass filtering with the largest sphere that fits in the mask at
    each voxel, then a truncated deconvolution. The mask is eroded by the smallest radius.

Every function takes the field in ppm (any unit works: the methods are linear, the local
field comes back in the unit of the input), a boolean mask of the same shape, the voxel size
in mm (anisotropic allowed) and returns ``(local_field, mask)`` where ``mask`` is the region
on which the local field is valid; the local field is zero outside it. Computations are in
float32 with :mod:`scipy.fft` (``workers`` threads). Each function accepts an ``info`` dict
that it fills with its iteration and FFT counts, so benchmarks can report them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage as ndi
import scipy.sparse
import scipy.sparse.linalg

from qsmiron.errors import InputError
from qsmiron.recon.fft import default_workers
from qsmiron.recon.kernels import KernelKind, dipole_kernel, padded_shape

__all__ = ["lbv", "pdf", "smv_kernel", "vsharp"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# input checks shared by the three methods
# --------------------------------------------------------------------------------------


def _voxel_size(voxel_size: float | Sequence[float]) -> np.ndarray:
    vs = np.asarray(voxel_size, dtype=np.float64)
    if vs.ndim == 0:
        vs = np.full(3, float(vs))
    if vs.shape != (3,) or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise InputError(
            f"voxel_size must be 3 positive voxel sizes in mm, found {np.asarray(voxel_size)!r}"
        )
    return vs


def _b0_dir(b0_dir: Sequence[float]) -> np.ndarray:
    b = np.asarray(b0_dir, dtype=np.float64)
    if b.shape != (3,) or not np.all(np.isfinite(b)) or not np.any(b != 0):
        raise InputError(
            "b0_dir must be a finite non-zero 3-vector in the voxel frame, e.g. (0, 0, 1); "
            f"found {b0_dir!r}"
        )
    return b / np.linalg.norm(b)


def _check_field_mask(field: np.ndarray, mask: np.ndarray, method: str) -> tuple[np.ndarray, ...]:
    """Validate ``field`` and ``mask``; return float32 field (zero outside mask) and bool mask."""
    field = np.asarray(field)
    mask = np.asarray(mask)
    if field.ndim != 3:
        raise InputError(f"{method}: field must be a 3D array, found shape {field.shape}")
    if mask.shape != field.shape:
        raise InputError(
            f"{method}: mask shape {mask.shape} does not match field shape {field.shape}; "
            "resample the mask onto the field's grid"
        )
    if not (np.issubdtype(field.dtype, np.floating) or np.issubdtype(field.dtype, np.integer)):
        raise InputError(f"{method}: field must be real-valued, found dtype {field.dtype}")
    mask = mask.astype(bool, copy=False)
    n = int(np.count_nonzero(mask))
    if n == 0:
        raise InputError(f"{method}: mask is empty (no voxel is True); check the brain mask")
    inside = field[mask]
    bad = int(np.count_nonzero(~np.isfinite(inside)))
    if bad:
        raise InputError(
            f"{method}: field has {bad} NaN or infinite values inside the mask; "
            "fix the field estimate or remove those voxels from the mask"
        )
    zeros = int(np.count_nonzero(inside == 0))
    if zeros > max(10, 0.05 * n):
        raise InputError(
            f"{method}: {zeros} of {n} mask voxels ({100.0 * zeros / n:.0f}%) have a field of "
            "exactly 0: the mask extends outside the field's support (mask from another image, "
            "or a field masked with a smaller mask)"
        )
    out = np.zeros(field.shape, dtype=np.float32)
    out[mask] = inside
    return out, mask


def _fft_grid(shape: Sequence[int], min_pad: Sequence[int]) -> tuple[int, ...]:
    """:func:`~qsmiron.recon.kernels.padded_shape` with even sizes (odd ones are slower)."""
    grid = []
    for n in padded_shape(shape, factor=1.0, min_pad=min_pad):
        while n % 2:
            n = int(scipy.fft.next_fast_len(n + 1))
        grid.append(n)
    return tuple(grid)


def _workers(workers: int | None) -> int:
    return default_workers() if workers is None else max(1, int(workers))


def _set_info(info: dict[str, Any] | None, **values: Any) -> None:
    if info is not None:
        info.update(values)


# --------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------


def pdf(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: float | Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    noise: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    tol: float = 2e-3,
    max_iter: int = 50,
    pad: int | Sequence[int] = 16,
    kernel: KernelKind = "continuous",
    workers: int | None = None,
    info: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Projection onto dipole fields (PDF): remove the field of sources outside the mask.

    The background field is modelled as the field of a susceptibility distribution ``x``
    that lives only *outside* the mask ``M`` (anywhere in the zero-padded FFT grid, so also
    beyond the field of view). ``x`` is the weighted least-squares fit to the total field
    ``f`` inside the mask,

        min_x || W M (f - D (1 - M) x) ||^2,

    with ``D`` the dipole convolution, solved by conjugate gradients on the normal equations
    (each iteration costs two FFT pairs). Because fields of sources outside the mask are
    (nearly) orthogonal to those of sources inside it, the fit captures the background and
    leaves the local field, ``f - M D (1 - M) x`` [1]_. The mask is not eroded.

    Parameters
    ----------
    field : (X, Y, Z) array
        Total field (ppm; the method is linear, so any unit passes through), unwrapped.
    mask : (X, Y, Z) bool array
        Region of interest (brain mask). The field must be finite and measured inside it.
    voxel_size : float or 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        Direction of B0 in the voxel frame (normalised here).
    noise : (X, Y, Z) array, optional
        Noise standard deviation of the field (e.g. from the multi-echo fit); the data weights
        are ``W = 1/noise`` inside the mask (normalised to mean 1). Must be positive and
        finite inside the mask.
    weights : (X, Y, Z) array, optional
        Data weights ``W`` given directly (e.g. the magnitude); used instead of ``noise``.
        Without either, all mask voxels weigh the same.
    tol : float
        Stop when the residual of the normal equations, relative to their right-hand side,
        falls below ``tol``. CG on this problem semi-converges: the error of the local field
        falls fast, flattens, then slowly rises as the fit starts to absorb local field. The
        default 2e-3 was chosen by a convergence study on the simulated head phantom at 1 and
        2 mm (``docs/recon.md``): it stops at 25-40 iterations, where the error in the mask
        2 voxels in from its edge is within 3% of its minimum (about the ~30 iterations
        PDF is commonly run with in MEDI).
    max_iter : int
        Maximum number of conjugate-gradient iterations (default 50, a cap on the cost:
        4 FFTs per iteration).
    pad : int or 3 ints
        Margin in voxels. The computation runs on the mask's bounding box enlarged by at
        least ``2 * pad`` voxels along each axis (rounded up to fast FFT sizes; the FFT is
        circular, so that is ``pad`` on each side); background sources may sit anywhere
        outside the mask in that grid, including beyond the field of view. The cost thus
        depends on the brain's size, not the field of view. On the phantom the NRMSE of the
        local field moves by < 0.01 between pad 8, 16 (default) and 24, or the whole field of
        view (``docs/recon.md``).
    kernel : {"continuous", "discrete"}
        Dipole kernel discretisation (:func:`qsmiron.recon.kernels.dipole_kernel`).
    workers : int, optional
        FFT threads; default :func:`qsmiron.recon.fft.default_workers`.
    info : dict, optional
        If given, filled with ``iterations``, ``n_fft`` (number of real 3D FFTs, forward and
        inverse counted separately), ``relative_residual`` and ``fft_shape``.

    Returns
    -------
    local_field : (X, Y, Z) float32 array
        Local field, in the unit of ``field``, zero outside the mask.
    mask : (X, Y, Z) bool array
        The mask on which ``local_field`` is valid (the input mask: PDF does not erode).

    Raises
    ------
    InputError
        If the mask is empty, does not match the field's shape, lies outside the field's
        support, or the field or weights are not finite inside it.

    References
    ----------
    .. [1] Liu T, Khalidov I, de Rochefort L, Spincemaille P, Liu J, Tsiouris AJ, Wang Y.
       A novel background field removal method for MRI using projection onto dipole fields
       (PDF). NMR Biomed 2011;24:1129-1136.

    Examples
    --------
    >>> from qsmiron.simulate.gre import forward_field
    >>> chi = np.zeros((48, 48, 48), np.float32)
    >>> chi[4:10, 20:28, 20:28] = 9.4                 # "air" outside the region of interest
    >>> mask = np.zeros(chi.shape, bool)
    >>> mask[16:40, 12:36, 12:36] = True
    >>> total = forward_field(chi, 1.0)
    >>> local, m = pdf(total, mask, 1.0)
    >>> bool(np.abs(local[m]).max() < 0.05 * np.abs(total[m]).max())
    True
    """
    f, m = _check_field_mask(field, mask, "pdf")
    vs = _voxel_size(voxel_size)
    b = _b0_dir(b0_dir)
    if tol <= 0 or max_iter < 1:
        raise InputError(f"pdf: tol must be > 0 and max_iter >= 1, found {tol}, {max_iter}")
    w = _pdf_weights(m, noise, weights)
    nw = _workers(workers)
    pads = np.broadcast_to(np.asarray(pad, dtype=int), (3,))
    if np.any(pads < 0):
        raise InputError(f"pdf: pad must be non-negative voxel counts, found {pad!r}")
    # FFT grid: the mask's bounding box plus at least 2 * pad voxels along each axis
    idx = np.nonzero(m)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    shape = tuple(s_.stop - s_.start for s_ in box)
    grid = _fft_grid(shape, 2 * pads)
    inner = tuple(slice(0, s_) for s_ in shape)
    d = dipole_kernel(grid, vs, b, rfft=True, dtype=np.float32, kind=kernel)

    w2 = np.zeros(grid, np.float32)  # M W^2 on the padded grid
    w2[inner] = w[box] ** 2
    outside = np.ones(grid, np.float32)  # 1 - M: where background sources may be
    outside[inner] = ~m[box]
    nfft = 0

    def dconv(x: np.ndarray) -> np.ndarray:
        nonlocal nfft
        s = scipy.fft.rfftn(x, workers=nw)
        s *= d
        nfft += 2
        return scipy.fft.irfftn(s, s=grid, workers=nw, overwrite_x=True)

    def normal(x: np.ndarray) -> np.ndarray:
        y = dconv(x)
        y *= w2
        y = dconv(y)
        y *= outside
        return y

    fp = np.zeros(grid, np.float32)
    fp[inner] = f[box]
    fp *= w2
    rhs = dconv(fp)
    rhs *= outside
    del fp
    x, it, rel = _cg(normal, rhs, tol, max_iter)
    bg = dconv(x)
    local = np.zeros(f.shape, np.float32)
    local[box] = np.where(m[box], f[box] - bg[inner], np.float32(0))
    log.debug("pdf: grid %s, %d CG iterations, relative residual %.2e, %d FFTs",
              grid, it, rel, nfft)
    _set_info(info, iterations=it, n_fft=nfft, relative_residual=rel, fft_shape=grid)
    return local, m.copy()


def _pdf_weights(
    m: np.ndarray, noise: np.ndarray | None, weights: np.ndarray | None
) -> np.ndarray:
    """Data weights inside the mask, normalised to mean 1 there."""
    if noise is not None and weights is not None:
        raise InputError("pdf: give either noise or weights, not both")
    if noise is None and weights is None:
        return m.astype(np.float32)
    name = "noise" if noise is not None else "weights"
    arr = np.asarray(noise if noise is not None else weights, dtype=np.float64)
    if arr.shape != m.shape:
        raise InputError(f"pdf: {name} shape {arr.shape} does not match field shape {m.shape}")
    vals = arr[m]
    nonpositive = np.any(vals <= 0) if noise is not None else np.any(vals < 0)
    if not np.all(np.isfinite(vals)) or nonpositive:
        raise InputError(
            f"pdf: {name} must be finite and {'positive' if noise is not None else 'non-negative'}"
            " inside the mask"
        )
    if noise is not None:
        vals = 1.0 / vals
    mean = float(vals.mean())
    if mean <= 0:
        raise InputError(f"pdf: {name} is zero everywhere inside the mask")
    out = np.zeros(m.shape, np.float32)
    out[m] = vals / mean
    return out


def _cg(apply_a, b: np.ndarray, tol: float, max_iter: int, precond=None):
    """Conjugate gradients for an SPD operator on float32 arrays (float64 scalars).

    Returns ``(x, iterations, relative_residual)``; stops when ``||r|| <= tol ||b||``.
    """
    x = np.zeros_like(b)
    bnorm = float(np.sqrt(np.vdot(b, b)))
    if bnorm == 0.0:
        return x, 0, 0.0
    r = b.copy()
    z = r if precond is None else precond(r)
    p = z.copy()
    rz = float(np.vdot(r, z))
    rel = 1.0
    it = 0
    while it < max_iter:
        ap = apply_a(p)
        pap = float(np.vdot(p, ap))
        if pap <= 0:
            break
        alpha = rz / pap
        x += np.float32(alpha) * p
        r -= np.float32(alpha) * ap
        it += 1
        rel = float(np.sqrt(np.vdot(r, r))) / bnorm
        if rel <= tol:
            break
        z = r if precond is None else precond(r)
        rz_new = float(np.vdot(r, z))
        p *= np.float32(rz_new / rz)
        p += z
        rz = rz_new
    return x, it, rel


# --------------------------------------------------------------------------------------
# LBV
# --------------------------------------------------------------------------------------

_SIX = ndi.generate_binary_structure(3, 1)


def lbv(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: float | Sequence[float],
    tol: float = 1e-3,
    max_iter: int = 100,
    peel: int = 1,
    info: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Laplacian boundary value (LBV) background removal.

    Inside the mask the background field ``b`` has no sources, so it solves Laplace's
    equation; LBV takes the total field on the mask boundary as Dirichlet data [1]_:

        laplacian(b) = 0 in the mask interior,    b = f on its boundary,

    and returns ``f - b``. Equivalently the local field ``u = f - b`` solves the Poisson
    problem ``laplacian(u) = laplacian(f)`` with ``u = 0`` on the boundary, which is what is
    solved here: the 7-point Laplacian (with the anisotropic spacings) on the interior voxels
    (mask voxels whose 6 neighbours are all in the mask; the others form the boundary),
    by conjugate gradients preconditioned with a geometric multigrid V-cycle (full weighting,
    trilinear interpolation, damped Jacobi smoothing, semi-coarsening of the finer axes for
    anisotropic voxels, direct solve on the coarsest grid). Iterations do not grow with the
    resolution or the voxel anisotropy: a 1 mm brain takes about a second.

    The boundary values contain the local field of the boundary itself (the method assumes
    it is zero), so the field is least reliable next to the boundary; as in the paper, the
    boundary layer and ``peel`` further layers are removed from the returned mask.

    Parameters
    ----------
    field : (X, Y, Z) array
        Total field (ppm; the method is linear, any unit passes through), unwrapped.
    mask : (X, Y, Z) bool array
        Region of interest (brain mask).
    voxel_size : float or 3 floats
        Voxel size in mm.
    tol : float
        Stop when the residual, relative to the right-hand side (the Laplacian of the field),
        falls below ``tol``. The default 1e-3 leaves a solver error far below the method's
        own error: on the phantom the local field differs from a 1e-7 solve by < 1% of its
        norm (``docs/recon.md``); it takes 3-6 iterations.
    max_iter : int
        Maximum number of preconditioned CG iterations.
    peel : int
        Layers removed from the mask after the boundary layer (default 1, so the returned mask
        is the input eroded by 2 voxels in the 6-neighbourhood sense).
    info : dict, optional
        If given, filled with ``iterations``, ``relative_residual``, ``levels`` (multigrid
        grid shapes) and ``n_fft`` (0).

    Returns
    -------
    local_field : (X, Y, Z) float32 array
        Local field, zero outside the returned mask.
    mask : (X, Y, Z) bool array
        The eroded mask on which ``local_field`` is valid.

    Raises
    ------
    InputError
        For an empty mask, a mask not matching the field, a mask outside the field's support,
        non-finite field values in the mask, or a mask too thin to have an interior.

    References
    ----------
    .. [1] Zhou D, Liu T, Spincemaille P, Wang Y. Background field removal by solving the
       Laplacian boundary value problem. NMR Biomed 2014;27:312-319.

    Examples
    --------
    >>> x, y, z = np.mgrid[:40, :40, :40].astype(np.float32)
    >>> background = 0.01 * (x * x - y * y) + 0.05 * z      # harmonic
    >>> mask = (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 < 15**2
    >>> local, m = lbv(background, mask, 1.0)
    >>> bool(np.abs(local[m]).max() < 1e-3)
    True
    """
    f, m = _check_field_mask(field, mask, "lbv")
    vs = _voxel_size(voxel_size)
    if tol <= 0 or max_iter < 1 or peel < 0:
        raise InputError(
            f"lbv: need tol > 0, max_iter >= 1 and peel >= 0, found {tol}, {max_iter}, {peel}"
        )
    interior = ndi.binary_erosion(m, _SIX)
    if not interior.any():
        raise InputError("lbv: the mask has no interior voxel (it is at most 2 voxels thick)")
    # crop to the bounding box of the mask, plus a margin of one zero voxel
    idx = np.nonzero(m)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    fb = np.zeros([s.stop - s.start + 2 for s in box], np.float32)
    fb[1:-1, 1:-1, 1:-1] = f[box]
    omega = np.zeros(fb.shape, bool)
    omega[1:-1, 1:-1, 1:-1] = interior[box]

    w = (1.0 / vs**2).astype(np.float32)
    om = omega.astype(np.float32)
    rhs = _laplacian(fb, w)
    rhs *= om  # -laplacian(f) on the interior: uses the boundary values of f
    levels = _mg_levels(om, vs)
    u, it, rel = _cg(
        lambda v: _laplacian(v, w, om),
        rhs,
        tol,
        max_iter,
        precond=lambda r: _vcycle(levels, 0, r),
    )
    out_mask = ndi.binary_erosion(interior, _SIX, iterations=peel) if peel else interior
    local = np.zeros(f.shape, np.float32)
    local[box] = u[1:-1, 1:-1, 1:-1]
    local *= out_mask
    log.debug("lbv: %d unknowns, levels %s, %d PCG iterations, relative residual %.2e",
              int(omega.sum()), [lv.shape for lv in levels], it, rel)
    _set_info(info, iterations=it, relative_residual=rel, n_fft=0,
              levels=[lv.shape for lv in levels])
    if not out_mask.any():
        raise InputError(f"lbv: nothing is left of the mask after peeling {peel} layers")
    return local, out_mask


def _laplacian(u: np.ndarray, w: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
    """Negative 7-point Laplacian with axis weights ``w = 1/h^2`` (zero boundary values).

    ``(A u)_i = sum_d w_d (2 u_i - u_{i+e_d} - u_{i-e_d})``, multiplied by ``m`` if given.
    """
    out = u * np.float32(2.0 * float(w.sum()))
    for axis in range(3):
        wu = u * w[axis] if w[axis] != 1 else u
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        out[tuple(hi)] -= wu[tuple(lo)]
        out[tuple(lo)] -= wu[tuple(hi)]
    if m is not None:
        out *= m
    return out


class _Level:
    """One multigrid level: interior mask (float32 0/1), axis weights, coarsened axes."""

    def __init__(self, m: np.ndarray, h: np.ndarray) -> None:
        self.m = m
        self.h = h
        self.w = (1.0 / h**2).astype(np.float32)
        self.diag = np.float32(2.0 * float(self.w.sum()))
        self.shape = m.shape
        self.axes: tuple[int, ...] = ()
        self.solve = None  # direct solver on the coarsest level


def _restrict(r: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Full weighting (transpose of :func:`_prolong` / 2 per axis), cell-centred."""
    for axis in axes:
        n = r.shape[axis]
        if n % 2:
            padw = [(0, 0)] * 3
            padw[axis] = (0, 1)
            r = np.pad(r, padw)
        r = np.moveaxis(r, axis, 0)
        even, odd = r[0::2], r[1::2]
        c = (even + odd) * np.float32(0.375)
        c[1:] += np.float32(0.125) * odd[:-1]
        c[:-1] += np.float32(0.125) * even[1:]
        r = np.moveaxis(c, 0, axis)
    return np.ascontiguousarray(r)


def _prolong(c: np.ndarray, axes: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Cell-centred linear interpolation along ``axes`` (weights 3/4, 1/4), cropped to ``shape``."""
    for axis in axes:
        c = np.moveaxis(c, axis, 0)
        f = np.empty((2 * c.shape[0],) + c.shape[1:], np.float32)
        f[0::2] = np.float32(0.75) * c
        f[1::2] = f[0::2]
        f[2::2] += np.float32(0.25) * c[:-1]
        f[1:-1:2] += np.float32(0.25) * c[1:]
        f = f[: shape[axis]]
        c = np.moveaxis(f, 0, axis)
    return np.ascontiguousarray(c)


def _mg_levels(m: np.ndarray, h: np.ndarray, max_coarse: int = 4000) -> list[_Level]:
    levels = [_Level(m, h.astype(np.float64))]
    while True:
        lv = levels[-1]
        n_unknown = int(np.count_nonzero(lv.m))
        axes = tuple(
            a for a in range(3) if lv.h[a] < 1.999 * lv.h.min() * (1 + 1e-9) and lv.shape[a] >= 6
        )
        if n_unknown <= max_coarse or not axes:
            break
        mc = _restrict(lv.m, axes)
        mc = (mc >= 0.5).astype(np.float32)
        if not mc.any():
            break
        lv.axes = axes
        hc = lv.h.copy()
        hc[list(axes)] *= 2
        levels.append(_Level(mc, hc))
    levels[-1].solve = _direct_solver(levels[-1])
    return levels


def _direct_solver(lv: _Level):
    """Sparse LU of the masked 7-point Laplacian of the coarsest level."""
    m = lv.m > 0
    n = int(m.sum())
    index = np.full(m.shape, -1, dtype=np.int64)
    index[m] = np.arange(n)
    rows = [np.arange(n)]
    cols = [np.arange(n)]
    vals = [np.full(n, float(lv.diag))]
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis] = slice(None, -1)
        b[axis] = slice(1, None)
        ia, ib = index[tuple(a)], index[tuple(b)]
        both = (ia >= 0) & (ib >= 0)
        i, j = ia[both], ib[both]
        rows += [i, j]
        cols += [j, i]
        vals += [np.full(i.size, -float(lv.w[axis]))] * 2
    mat = scipy.sparse.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    lu = scipy.sparse.linalg.splu(mat)

    def solve(r: np.ndarray) -> np.ndarray:
        out = np.zeros(m.shape, np.float32)
        out[m] = lu.solve(r[m].astype(np.float64))
        return out

    return solve


def _vcycle(levels: list[_Level], k: int, r: np.ndarray, nu: int = 2) -> np.ndarray:
    """One symmetric V-cycle for ``A u = r`` on level ``k`` (damped Jacobi, ``nu`` sweeps)."""
    lv = levels[k]
    if lv.solve is not None:
        return lv.solve(r)
    omega = np.float32(6.0 / 7.0) / lv.diag
    u = r * omega  # first sweep from u = 0
    for _ in range(nu - 1):
        u += omega * (r - _laplacian(u, lv.w, lv.m))
    res = r - _laplacian(u, lv.w, lv.m)
    nxt = levels[k + 1]
    rc = _restrict(res, lv.axes)
    rc *= nxt.m
    ec = _vcycle(levels, k + 1, rc, nu)
    e = _prolong(ec, lv.axes, lv.shape)
    e *= lv.m
    u += e
    for _ in range(nu):
        u += omega * (r - _laplacian(u, lv.w, lv.m))
    return u


# --------------------------------------------------------------------------------------
# V-SHARP
# --------------------------------------------------------------------------------------


def _sphere(voxel_size: np.ndarray, radius_mm: float) -> np.ndarray:
    """Voxelised ball (voxel centres within ``radius_mm``), centred, odd-sized bool array."""
    half = np.floor(radius_mm / voxel_size + 1e-6).astype(int)
    ax = [np.arange(-n, n + 1) * v for n, v in zip(half, voxel_size, strict=True)]
    x, y, z = np.meshgrid(*ax, indexing="ij", sparse=True)
    return x * x + y * y + z * z <= radius_mm**2 * (1 + 1e-9)


def smv_kernel(
    shape: Sequence[int],
    voxel_size: float | Sequence[float],
    radius_mm: float,
    rfft: bool = True,
    workers: int | None = None,
) -> np.ndarray:
    """Spherical mean value (SMV) kernel in k-space: the FFT of a normalised voxelised ball.

    Multiplying an image's spectrum by this kernel averages the image over a ball of radius
    ``radius_mm`` around each voxel (circularly on a grid of ``shape``). The ball holds the
    voxels whose centres are within ``radius_mm`` of the centre (an ellipsoid in voxels for
    anisotropic voxels); its weights sum to 1, so the kernel is 1 at ``k = 0``. It is real and
    even, with values in ``[-1, 1]``.

    Parameters
    ----------
    shape : 3 ints
        FFT grid size (pad the image by at least the radius to avoid wrap-around).
    voxel_size : float or 3 floats
        Voxel size in mm.
    radius_mm : float
        Radius of the ball in mm; at least the smallest voxel size.
    rfft : bool
        Half spectrum as from :func:`scipy.fft.rfftn` (default) or the full one.
    workers : int, optional
        FFT threads.

    Returns
    -------
    float32 array
        Kernel of shape ``(X, Y, Z // 2 + 1)`` (``rfft``) or ``shape``, in FFT order.

    References
    ----------
    .. [1] Schweser F, Deistung A, Lehr BW, Reichenbach JR. Quantitative imaging of intrinsic
       magnetic tissue properties using MRI signal phase: an approach to in vivo brain iron
       metabolism? NeuroImage 2011;54:2789-2807.

    Examples
    --------
    >>> s = smv_kernel((32, 32, 32), 1.0, 3.0)
    >>> s.shape, round(float(s[0, 0, 0]), 6)
    ((32, 32, 17), 1.0)
    """
    vs = _voxel_size(voxel_size)
    shape = tuple(int(s) for s in shape)
    if not np.isfinite(radius_mm) or radius_mm < vs.min():
        raise InputError(
            f"SMV radius must be at least the smallest voxel size {vs.min():g} mm, "
            f"found {radius_mm!r}"
        )
    ball = _sphere(vs, float(radius_mm))
    if any(b > s for b, s in zip(ball.shape, shape, strict=True)):
        raise InputError(f"SMV ball of radius {radius_mm} mm does not fit in a grid of {shape}")
    k = np.zeros(shape, np.float32)
    half = [b // 2 for b in ball.shape]
    idx = np.nonzero(ball)
    k[tuple((i - h) % s for i, h, s in zip(idx, half, shape, strict=True))] = 1.0 / len(idx[0])
    nw = _workers(workers)
    spec = scipy.fft.rfftn(k, workers=nw) if rfft else scipy.fft.fftn(k, workers=nw)
    return np.ascontiguousarray(spec.real, dtype=np.float32)


def _default_radii(vs: np.ndarray) -> tuple[float, ...]:
    smallest = float(vs.max())
    radii = np.arange(12.0, smallest - 1e-6, -1.0)
    if radii.size == 0 or radii[-1] > smallest + 1e-6:
        radii = np.append(radii, smallest)
    return tuple(float(r) for r in radii)


def vsharp(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: float | Sequence[float],
    radii_mm: Sequence[float] | None = None,
    threshold: float = 0.05,
    workers: int | None = None,
    info: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """V-SHARP: SMV high-pass filtering with variable radius, then truncated deconvolution.

    A harmonic function equals its spherical mean, so ``f - S_r * f`` (``S_r`` the
    normalised ball of radius ``r``) removes the background field at every voxel whose ball
    lies inside the mask, and equals ``(delta - S_r) * local`` there [1]_. V-SHARP [2]_ [3]_
    uses, at each voxel, the largest radius of ``radii_mm`` whose ball fits in the mask
    (large balls inside the brain, small ones near its edge, so that little is eroded),
    then undoes the high-pass filter by dividing the spectrum by ``1 - S_R`` of the largest
    radius ``R``, with the frequencies where ``|1 - S_R| <= threshold`` set to zero (truncated
    SVD; the lowest frequencies of the local field are lost, which is harmless after
    referencing). Voxels near the edge, filtered with a smaller ball, are deconvolved with
    the large one: that approximation is V-SHARP's main error source.

    The returned mask is the input mask eroded by the smallest radius (the voxels whose
    smallest ball fits in the mask).

    Parameters
    ----------
    field : (X, Y, Z) array
        Total field (ppm; the method is linear, any unit passes through), unwrapped.
    mask : (X, Y, Z) bool array
        Region of interest (brain mask).
    voxel_size : float or 3 floats
        Voxel size in mm.
    radii_mm : sequence of float, optional
        Ball radii in mm (any order; used from large to small). Default: 12 mm down to the
        largest voxel size in 1 mm steps (12, 11, ..., 1 at 1 mm; Wu et al. used radii up to
        about 12 mm; the smallest ball must reach the neighbours along every axis).
    threshold : float
        Truncation level of the deconvolution (default 0.05, Wu et al. 2012 [3]_): frequencies
        at which the high-pass kernel ``1 - S_R`` is below it are discarded instead of being
        amplified by more than ``1/threshold = 20``.
    workers : int, optional
        FFT threads.
    info : dict, optional
        If given, filled with ``n_fft`` (real 3D FFTs, forward and inverse counted separately),
        ``radii_mm`` (those used) and ``fft_shape``.

    Returns
    -------
    local_field : (X, Y, Z) float32 array
        Local field, zero outside the returned mask.
    mask : (X, Y, Z) bool array
        Input mask eroded by the smallest radius.

    Raises
    ------
    InputError
        For bad masks or fields (see :func:`pdf`), radii smaller than a voxel, a threshold
        outside ``(0, 1)``, or a mask in which not even the smallest ball fits.

    References
    ----------
    .. [1] Schweser F, Deistung A, Lehr BW, Reichenbach JR. Quantitative imaging of intrinsic
       magnetic tissue properties using MRI signal phase: an approach to in vivo brain iron
       metabolism? NeuroImage 2011;54:2789-2807.
    .. [2] Li W, Wu B, Liu C. Quantitative susceptibility mapping of human brain reflects
       spatial variation in tissue composition. NeuroImage 2011;55:1645-1656.
    .. [3] Wu B, Li W, Guidon A, Liu C. Whole brain susceptibility mapping using compressed
       sensing. Magn Reson Med 2012;67:137-147.

    Examples
    --------
    >>> x, y, z = np.mgrid[:40, :40, :40].astype(np.float32)
    >>> background = 0.01 * (x * x - y * y) + 0.05 * z      # harmonic
    >>> mask = (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 < 15**2
    >>> local, m = vsharp(background, mask, 1.0, radii_mm=(6, 4, 2))
    >>> bool(np.abs(local[m]).max() < 0.05)
    True
    """
    f, m = _check_field_mask(field, mask, "vsharp")
    vs = _voxel_size(voxel_size)
    if not 0 < threshold < 1:
        raise InputError(f"vsharp: threshold must be in (0, 1), found {threshold}")
    radii = _default_radii(vs) if radii_mm is None else tuple(float(r) for r in radii_mm)
    if not radii or any(not np.isfinite(r) or r < vs.max() - 1e-6 for r in radii):
        raise InputError(
            f"vsharp: radii must be at least the largest voxel size {vs.max():g} mm, "
            f"found {radii_mm!r}"
        )
    # drop radii giving the same voxelised ball, then go from large to small
    balls: dict[int, float] = {}
    for r in sorted(set(radii), reverse=True):
        balls.setdefault(int(_sphere(vs, r).sum()), r)
    radii = tuple(sorted(balls.values(), reverse=True))
    nw = _workers(workers)
    # work on the mask's bounding box; a gap of R + 1 voxels keeps the SMV filters exact
    idx = np.nonzero(m)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    fb, mb = f[box], m[box]
    margin = [int(np.ceil(radii[0] / v)) + 1 for v in vs]
    grid = _fft_grid(fb.shape, margin)
    inner = tuple(slice(0, s_) for s_ in fb.shape)
    nfft = 0

    def rfft(x: np.ndarray) -> np.ndarray:
        nonlocal nfft
        nfft += 1
        buf = np.zeros(grid, np.float32)
        buf[inner] = x
        return scipy.fft.rfftn(buf, workers=nw, overwrite_x=True)

    def irfft(s_: np.ndarray) -> np.ndarray:
        nonlocal nfft
        nfft += 1
        return scipy.fft.irfftn(s_, s=grid, workers=nw, overwrite_x=True)[inner]

    f_spec = rfft(fb)
    m_spec = rfft(mb.astype(np.float32))
    highpass = np.zeros(fb.shape, np.float32)
    covered = np.zeros(fb.shape, bool)
    s_large = None
    for r in radii:
        s_r = smv_kernel(grid, vs, r, workers=nw)
        nfft += 1
        if s_large is None:
            s_large = s_r
        n_ball = int(_sphere(vs, r).sum())
        # voxels whose ball fits in the mask (mean of the mask over the ball is 1)
        fits = irfft(m_spec * s_r) > 1.0 - 0.5 / n_ball
        fits &= mb
        new = fits & ~covered
        if not new.any():
            continue
        mean = irfft(f_spec * s_r)
        highpass[new] = fb[new] - mean[new]
        covered |= new
    if not covered.any():
        raise InputError(
            f"vsharp: no voxel of the mask has a ball of radius {radii[-1]} mm inside it; "
            "the mask is too small or too thin"
        )
    del f_spec, m_spec
    inv = 1.0 - s_large
    keep = inv > threshold
    np.divide(1.0, inv, out=inv, where=keep)
    inv[~keep] = 0.0
    out_mask = np.zeros(f.shape, bool)
    out_mask[box] = covered
    local = np.zeros(f.shape, np.float32)
    local[box] = np.where(covered, irfft(rfft(highpass) * inv), np.float32(0))
    log.debug("vsharp: radii %s mm, grid %s, %d FFTs", radii, grid, nfft)
    _set_info(info, n_fft=nfft, radii_mm=radii, fft_shape=grid)
    return local, out_mask
