"""Dipole kernel and FFT grid helpers shared by the forward model and the QSM inversions.

The field perturbation that a susceptibility distribution ``chi`` produces along the main
field, relative to B0 and after the Lorentz-sphere correction, is the convolution of ``chi``
with the unit dipole field. In k-space this convolution is a multiplication by

    D(k) = 1/3 - (k . b)^2 / |k|^2,

where ``b`` is the unit vector of B0 (Salomir et al. 2003; Marques & Bowtell 2005). The
functions here sample ``D`` on the discrete Fourier grid of an image with physical
(``1/mm``) frequencies, so anisotropic voxels and oblique B0 directions are handled exactly,
either as the analytic kernel (``kind="continuous"``) or as its finite-difference counterpart
(``kind="discrete"``, Milovic et al. 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.fft

__all__ = ["KernelKind", "dipole_kernel", "kspace_frequencies", "padded_shape"]


def _as_triplet(value: float | Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(3, float(arr))
    if arr.shape != (3,):
        raise ValueError(f"{name} must be a scalar or have 3 elements, found shape {arr.shape}")
    return arr


def _unit_vector(b0_dir: Sequence[float]) -> np.ndarray:
    b = np.asarray(b0_dir, dtype=np.float64)
    if b.shape != (3,):
        raise ValueError(f"b0_dir must have 3 components, found shape {b.shape}")
    norm = float(np.linalg.norm(b))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"b0_dir must be a finite non-zero vector, found {tuple(b)}")
    return b / norm


def kspace_frequencies(
    shape: Sequence[int],
    voxel_size: float | Sequence[float] = 1.0,
    rfft: bool = False,
    dtype: type | np.dtype = np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles/mm) of a 3D FFT grid, shaped for broadcasting.

    Parameters
    ----------
    shape : 3 ints
        Grid size in voxels.
    voxel_size : float or 3 floats
        Voxel size in mm along each axis.
    rfft : bool
        If True, the last axis holds the non-negative half of the spectrum that
        :func:`scipy.fft.rfftn` returns (``shape[2] // 2 + 1`` frequencies).
    dtype : numpy dtype
        Floating dtype of the returned arrays.

    Returns
    -------
    kx, ky, kz : ndarray
        Arrays of shape ``(nx, 1, 1)``, ``(1, ny, 1)`` and ``(1, 1, nz')`` in 1/mm, in FFT
        order (zero frequency first), with ``k_i = m / (n_i * voxel_size_i)``.

    Examples
    --------
    >>> kx, ky, kz = kspace_frequencies((4, 4, 4), (1.0, 1.0, 2.0), rfft=True)
    >>> kz.ravel().tolist()
    [0.0, 0.125, 0.25]
    """
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 dimensions, found {tuple(shape)}")
    vsz = _as_triplet(voxel_size, "voxel_size")
    if np.any(vsz <= 0) or not np.all(np.isfinite(vsz)):
        raise ValueError(f"voxel_size must be positive and finite, found {tuple(vsz)}")
    n = [int(s) for s in shape]
    freqs = [np.fft.fftfreq(n[0], d=vsz[0]), np.fft.fftfreq(n[1], d=vsz[1])]
    freqs.append(np.fft.rfftfreq(n[2], d=vsz[2]) if rfft else np.fft.fftfreq(n[2], d=vsz[2]))
    kx = freqs[0].astype(dtype).reshape(-1, 1, 1)
    ky = freqs[1].astype(dtype).reshape(1, -1, 1)
    kz = freqs[2].astype(dtype).reshape(1, 1, -1)
    return kx, ky, kz


KernelKind = Literal["continuous", "discrete"]


def _axis_terms(
    shape: Sequence[int],
    voxel_size: float | Sequence[float],
    rfft: bool,
    kind: str,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per-axis 1D factors ``p_i, q_i, l_i`` with
    ``(k.b)^2 / |k|^2 = ((sum_i b_i p_i)^2 + sum_i b_i^2 q_i) / sum_i l_i``.
    """
    n = [int(s) for s in shape]
    vsz = _as_triplet(voxel_size, "voxel_size")
    ks = kspace_frequencies(n, vsz, rfft=rfft, dtype=np.float64)
    p, q, lsq = [], [], []
    for axis, k in enumerate(ks):
        if kind == "continuous":
            # A Nyquist sample of an even-sized axis stands for +k_nyq and -k_nyq at once;
            # averaging (k.b)^2 over both signs drops the cross terms of that component,
            # E[(u + s w)^2] = u^2 + w^2, which keeps D(k) = D(-k) on the grid for oblique B0.
            nyq = np.zeros(k.shape, dtype=bool)
            if n[axis] % 2 == 0:
                nyq.flat[-1 if (rfft and axis == 2) else n[axis] // 2] = True
            p.append(np.where(nyq, 0.0, k))
            q.append(np.where(nyq, k * k, 0.0))
            lsq.append(k * k)
        elif kind == "discrete":
            # theta = 2 pi m / n; second derivatives by the 3-point stencil,
            # 4 sin^2(theta/2) / h^2, mixed ones by central differences, sin(theta) / h.
            # (sum b_i sin(theta_i)/h_i)^2 + sum b_i^2 [4 sin^2(theta_i/2) - sin^2(theta_i)]/h_i^2
            # reproduces exactly sum_ij b_i b_j d_ij, with d_ii the 3-point stencil.
            theta = 2.0 * np.pi * k * vsz[axis]
            half = np.sin(theta / 2.0)
            p.append(np.sin(theta) / vsz[axis])
            q.append(4.0 * half**4 / vsz[axis] ** 2)
            lsq.append(4.0 * half**2 / vsz[axis] ** 2)
        else:
            raise ValueError(f"kind must be 'continuous' or 'discrete', found {kind!r}")
    return p, q, lsq


def dipole_kernel(
    shape: Sequence[int],
    voxel_size: float | Sequence[float] = 1.0,
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    rfft: bool = True,
    dtype: type | np.dtype = np.float32,
    kind: KernelKind = "continuous",
) -> np.ndarray:
    """Unit dipole kernel ``D(k) = 1/3 - (k.b)^2/|k|^2`` sampled on an FFT grid.

    Multiplying the spectrum of a susceptibility map (ppm) by this kernel gives the spectrum
    of the Lorentz-corrected relative field ``dB_z / B0`` (ppm). The frequencies are physical
    (``k_i = m / (n_i * voxel_size_i)``), so the kernel is correct for anisotropic voxels and
    for any B0 direction given in the voxel-axis frame.

    At ``k = 0`` the ratio ``(k.b)^2/|k|^2`` is undefined; this function sets ``D(0) = 0``.
    The mean of a computed field over the (padded) grid is therefore zero. This is the usual
    convention: a uniform susceptibility shift of an infinite medium produces no measurable
    field after the Lorentz correction, and the constant is lost in any measured field
    anyway (background removal and referencing discard it).

    Two discretisations are offered:

    ``"continuous"`` (default)
        The analytic ``D(k)`` sampled at the grid frequencies [1]_ [2]_, the kernel most QSM
        methods use. On the Nyquist plane of an even-sized axis, where one sample stands for
        ``+k_nyq`` and ``-k_nyq``, the value is the average over both signs, so that the kernel
        stays even on the grid for oblique B0 (where ``(k.b)^2`` is not even in each
        component). Its periodic extension jumps across the edges of k-space when B0 is
        oblique, which rings in image space: next to a sharp edge the field is off by a few
        percent of the susceptibility step several voxels away.
    ``"discrete"``
        ``1/3 - (b.grad)^2 / laplacian`` with the derivatives replaced by finite differences
        (3-point second differences on the diagonal, products of central differences for the
        mixed terms), in the spirit of the discrete dipole kernel of Milovic et al. [3]_. It
        agrees with the continuous kernel at low frequencies, is smooth across the k-space
        edges and, for a voxelised sphere, gives 5-30 times smaller errors away from the
        surface when B0 is oblique (slightly larger ones within a voxel of the surface).

    Both kinds are real and even (``D(k) = D(-k)`` on the grid), so they map real images to
    real images, and take values in ``[-2/3, 1/3]``.

    Parameters
    ----------
    shape : 3 ints
        Size of the FFT grid in voxels (the padded size, if padding is used).
    voxel_size : float or 3 floats
        Voxel size in mm along the three voxel axes. Only ratios matter.
    b0_dir : 3 floats
        Direction of B0 in the voxel-axis frame (see :func:`qsmiron.io.nifti.b0_direction`);
        normalised here. The sign does not matter.
    rfft : bool
        If True (default), return the half spectrum matching :func:`scipy.fft.rfftn`, of shape
        ``(nx, ny, nz // 2 + 1)``; otherwise the full spectrum ``(nx, ny, nz)`` in FFT order.
    dtype : numpy dtype
        Floating dtype of the result (float32 by default).
    kind : {"continuous", "discrete"}
        Discretisation, see above.

    Returns
    -------
    ndarray
        Kernel values in ``[-2/3, 1/3]``, in FFT order (zero frequency at index 0).

    References
    ----------
    .. [1] Salomir R, de Senneville BD, Moonen CTW. A fast calculation method for magnetic
       field inhomogeneity due to an arbitrary distribution of bulk susceptibility.
       Concepts Magn Reson B 2003;19B:26-34.
    .. [2] Marques JP, Bowtell R. Application of a Fourier-based method for rapid calculation
       of field inhomogeneity due to spatial variation of magnetic susceptibility.
       Concepts Magn Reson B 2005;25B:65-78.
    .. [3] Milovic C, Acosta-Cabronero J, Pinto JM, Mattern H, Andia M, Uribe S, Tejos C.
       A new discrete dipole kernel for quantitative susceptibility mapping.
       Magn Reson Imaging 2018;51:7-13.

    Examples
    --------
    >>> D = dipole_kernel((64, 64, 32), voxel_size=(1.0, 1.0, 2.0))
    >>> D.shape, D.dtype, float(D[0, 0, 0])
    ((64, 64, 17), dtype('float32'), 0.0)
    >>> round(float(D[0, 0, 1]), 4), round(float(D[1, 0, 0]), 4)   # k along B0, across B0
    (-0.6667, 0.3333)
    """
    b = _unit_vector(b0_dir)
    p, q, lsq = _axis_terms(shape, voxel_size, rfft, kind)
    shapes = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
    p = [(bi * pi).astype(dtype).reshape(sh) for bi, pi, sh in zip(b, p, shapes, strict=True)]
    q = [(bi * bi * qi).astype(dtype).reshape(sh) for bi, qi, sh in zip(b, q, shapes, strict=True)]
    lsq = [li.astype(dtype).reshape(sh) for li, sh in zip(lsq, shapes, strict=True)]
    # Two full-size temporaries, (k.b)^2 and |k|^2, each built by broadcasting 1D axes.
    kb = (p[0] + p[1]) + p[2]
    np.square(kb, out=kb)
    kb += (q[0] + q[1]) + q[2]
    k2 = (lsq[0] + lsq[1]) + lsq[2]
    k2[0, 0, 0] = 1.0  # the numerator is 0 there too; D(0) is set below
    np.divide(kb, k2, out=kb)
    del k2
    np.subtract(np.asarray(1.0 / 3.0, dtype=dtype), kb, out=kb)
    kb[0, 0, 0] = 0.0
    return kb


def padded_shape(
    shape: Sequence[int],
    factor: float = 2.0,
    min_pad: int | Sequence[int] = 0,
) -> tuple[int, ...]:
    """Fast FFT sizes at least ``factor`` times ``shape`` and ``min_pad`` voxels larger.

    Parameters
    ----------
    shape : ints
        Original grid size.
    factor : float
        Minimum ratio of padded to original size per axis (``>= 1``). ``2`` leaves room for
        the linear (non-circular) convolution of anything supported in the original grid.
    min_pad : int or ints
        Minimum number of zero voxels added per axis.

    Returns
    -------
    tuple of int
        For each axis ``scipy.fft.next_fast_len(max(ceil(factor * n), n + min_pad))``, with
        ``real=True`` on the last axis, the one :func:`scipy.fft.rfftn` transforms as real.

    Examples
    --------
    >>> padded_shape((193, 229, 193))
    (392, 462, 400)
    >>> padded_shape((64, 64, 32), factor=1.0, min_pad=10)
    (75, 75, 45)
    """
    if factor < 1 or not np.isfinite(factor):
        raise ValueError(f"padding factor must be a finite number >= 1, found {factor}")
    n = [int(s) for s in shape]
    pads = np.broadcast_to(np.asarray(min_pad, dtype=int), (len(n),))
    if np.any(pads < 0):
        raise ValueError(f"min_pad must be non-negative, found {tuple(pads)}")
    out = []
    for axis, (s, p) in enumerate(zip(n, pads, strict=True)):
        target = max(int(np.ceil(factor * s - 1e-9)), s + int(p))
        # rfftn does a real transform along the last axis only; the others are complex.
        out.append(int(scipy.fft.next_fast_len(target, real=axis == len(n) - 1)))
    return tuple(out)
