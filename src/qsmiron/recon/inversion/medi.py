"""Morphology-enabled dipole inversion (MEDI) with the MEDI+0 CSF term, solved by ADMM."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

try:  # optional: keeps BLAS (used for axpy) from spinning threads against the FFT workers
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

from qsmiron.errors import InputError
from qsmiron.recon.inversion._ops import (
    FFT,
    add_adjoint_diff,
    axpy,
    check_field_and_mask,
    check_image,
    data_weights,
    edge_weights,
    fft_grid,
    forward_diff,
    laplacian_symbol,
    sq_norm,
)
from qsmiron.recon.kernels import KernelKind, dipole_kernel

__all__ = ["MediResult", "medi"]

log = logging.getLogger(__name__)


@dataclass
class MediResult:
    """Susceptibility map from :func:`medi` and how it was obtained.

    Attributes
    ----------
    chi : (X, Y, Z) float32
        Susceptibility in ppm inside the mask, 0 outside. With a CSF mask its mean over the
        CSF (inside the mask) is 0; otherwise its mean over the mask is 0.
    lam : float
        TV weight used.
    lam_csf : float
        MEDI+0 weight used (0 without a CSF mask).
    iterations : int
        ADMM iterations done.
    converged : bool
        Whether the relative change of ``chi`` fell below ``tol`` before ``max_iter``.
    n_fft : int
        Number of FFTs (forward and inverse each count 1; a pair is 2).
    fft_shape : tuple of int
        FFT grid shape.
    residual : float
        Relative weighted data misfit ``||W (D chi - f)|| / ||W f||`` in the mask.
    edge_prior : str
        ``"magnitude"`` or ``"none"`` (plain TV).
    weights : str
        Source of the data weights: ``"noise"``, ``"magnitude"`` or ``"uniform"``.
    csf_voxels : int
        Number of CSF voxels of the MEDI+0 term and the zero reference.
    """

    chi: np.ndarray
    lam: float
    lam_csf: float
    iterations: int
    converged: bool
    n_fft: int
    fft_shape: tuple[int, ...]
    residual: float
    edge_prior: str
    weights: str
    csf_voxels: int


def medi(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: float | Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    magnitude: np.ndarray | None = None,
    noise: np.ndarray | None = None,
    lam: float = 1e-4,
    csf_mask: np.ndarray | None = None,
    lam_csf: float = 0.1,
    edge_fraction: float = 0.3,
    max_iter: int = 300,
    tol: float = 5e-3,
    pad: float | Sequence[int] = (8, 8, 8),
    kernel: KernelKind = "continuous",
    workers: int | None = None,
    mu_tv: float | None = None,
    mu_data: float | None = None,
    mu_csf: float | None = None,
) -> MediResult:
    """Susceptibility by morphology-enabled dipole inversion (MEDI), optionally with MEDI+0.

    Minimises [1]_ [2]_ [3]_

        1/2 ||W (D chi - f)||^2 + lam ||M_G grad chi||_1
            + lam_csf/2 ||M_csf (chi - mean_csf(chi))||^2

    over ``chi`` on the FFT grid (the mask's bounding box plus ``pad``; like MEDI, ``chi`` is
    free outside the mask, where only the TV term acts, so that sources just outside the
    mask and residual background can be absorbed there rather than inside):

    * ``W``: data weights, ``1/noise`` normalised to mean 1 in the mask (0 outside), so that
      noisy voxels count less; proportional to the magnitude without a noise map (the field
      noise of a multi-echo fit is inversely proportional to the signal); uniform without
      either.
    * ``grad``: forward differences per mm along each voxel axis; ``||.||_1`` sums the
      absolute values of the three components (anisotropic TV, as in MEDI).
    * ``M_G``: the morphology prior. Gradient components where the magnitude has an edge (the
      ``edge_fraction`` largest magnitude-gradient components inside the mask) are not
      penalised, so that susceptibility may jump where anatomy does and is smooth elsewhere.
      Without a magnitude image ``M_G = 1``: plain total variation, with a logged warning.
    * MEDI+0 [3]_: with ``csf_mask`` (ventricular CSF, e.g. voxels of low R2* connected to
      the lateral ventricles), the last term keeps susceptibility uniform over the CSF, which
      suppresses the streaks that make CSF values unreliable, and the result is referenced so
      that its mean over the CSF mask (inside ``mask``) is 0: a CSF zero reference.
      Without it the result has zero mean over the mask (the field does not determine the
      constant).

    The data term is linear in ``chi``: the field is already in ppm, and the nonlinear complex
    data term of Liu et al. 2013 needs the phase and the echo times; it matters only where the
    phase noise approaches 1 rad, where ``W`` is small anyway.

    Solver: ADMM with the splitting of FANSI [4]_: ``z = grad chi`` (soft thresholding),
    ``v = D chi`` (pointwise weighted least squares) and, for MEDI+0, ``q = chi`` (closed-form
    shrinkage of the CSF values towards their mean). The ``chi`` update is diagonal in k-space.
    Each iteration costs two FFT pairs plus about 25 in-place pointwise passes over the grid.
    It stops when the relative change of ``chi`` between iterations (checked every 5) drops
    below ``tol``.

    Parameters
    ----------
    local_field : (X, Y, Z) array
        Local (tissue) field in ppm, after background removal.
    mask : (X, Y, Z) bool array
        Where the field is valid (brain).
    voxel_size : float or 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in the voxel frame (normalised here).
    magnitude : (X, Y, Z) array, optional
        Magnitude image of the edge prior; best the root-sum-of-squares of the echo
        magnitudes, as MEDI uses (R2* weighting outlines the iron-rich nuclei; the first echo
        alone gives weaker edges there). Without it the prior falls back to plain TV.
    noise : (X, Y, Z) array, optional
        Standard deviation of the field (any units: only relative values matter), e.g. from
        the multi-echo fit. Defines the data weights.
    lam : float
        Weight of the TV term in ppm mm (data term in ppm^2 with weights of mean 1, TV term in
        ppm/mm). Default ``1e-4``: MEDI's ``lambda = 1000`` [2]_, whose data term is in
        radians of phase per echo spacing, converted to ppm at 3 T for an echo spacing of
        5-6.5 ms (``1 / (2 * 1000 * 2 pi * 127.7 MHz * dTE)`` = 0.96e-4 to 1.25e-4). Deep grey
        ROI means change by less than 1 ppb between ``3e-5`` and ``3e-4`` on the phantom (see
        docs/recon.md); larger values give smoother maps.
    csf_mask : (X, Y, Z) bool array, optional
        CSF voxels for MEDI+0 and the zero reference (only those inside ``mask`` count).
    lam_csf : float
        Weight of the MEDI+0 term relative to the data term (both in ppm^2 per voxel, so
        dimensionless). Default 0.1, MEDI+0's ratio of CSF weight to data weight (100 to
        1000) [3]_.
    edge_fraction : float
        Fraction of the magnitude-gradient components inside the mask treated as edges.
        Default 0.3, the top 30% of [1]_ [2]_.
    max_iter : int
        Maximum number of ADMM iterations (default 300; about 60-90 are used).
    tol : float
        Stop when ``||chi_k - chi_(k-1)|| / ||chi_k|| < tol`` (default 5e-3: ROI means are then
        within about 1 ppb of the fully converged solution).
    pad : float or 3 ints
        Zero padding of the mask's bounding box for the FFTs: voxels per axis (default 8) or
        a size factor. ``chi`` is free in the padding, so a small margin suffices.
    kernel : {"continuous", "discrete"}
        Dipole kernel (:func:`qsmiron.recon.kernels.dipole_kernel`). The continuous kernel
        (default) is the exact kernel of band-limited (Fourier-encoded) data.
    workers : int, optional
        FFT threads; default all CPUs this process may use.
    mu_tv, mu_data, mu_csf : float, optional
        ADMM penalty parameters; they change the speed of convergence, not the solution.
        Defaults: ``mu_tv = 100 lam / mean(voxel_size)`` (FANSI's ratio; the shrinkage step is
        then 0.01 ppm per voxel difference), ``mu_data = 6 mu_tv``, ``mu_csf = 0.4 mu_tv``:
        the fastest of a grid over two decades of ``mu_tv`` and ``mu_data`` on the 2 mm
        phantom, checked at 1 mm and for ``lam`` from 3e-5 to 3e-4 (docs/recon.md).

    Returns
    -------
    MediResult
        ``chi`` in ppm and diagnostics (iterations, FFT count, misfit, weights used).

    Raises
    ------
    InputError
        Bad field, mask, voxel size, B0 direction, magnitude, noise map or parameters.

    References
    ----------
    .. [1] de Rochefort L, Liu T, Kressler B, Liu J, Spincemaille P, Lebon V, Wu J, Wang Y.
       Quantitative susceptibility map reconstruction from MR phase data using Bayesian
       regularization: validation and application to brain imaging. Magn Reson Med
       2010;63:194-206.
    .. [2] Liu J, Liu T, de Rochefort L, Ledoux J, Khalidov I, Chen W, Tsiouris AJ, Wisnieff C,
       Spincemaille P, Prince MR, Wang Y. Morphology enabled dipole inversion for quantitative
       susceptibility mapping using structural consistency between the magnitude image and
       the susceptibility map. NeuroImage 2012;59:2560-2568.
    .. [3] Liu Z, Spincemaille P, Yao Y, Zhang Y, Wang Y. MEDI+0: Morphology enabled dipole
       inversion with automatic uniform cerebrospinal fluid zero reference for quantitative
       susceptibility mapping. Magn Reson Med 2018;79:2795-2803.
    .. [4] Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear
       susceptibility inversion with variational regularization. Magn Reson Med
       2018;80:814-821.

    Examples
    --------
    >>> from qsmiron.simulate.gre import forward_field
    >>> chi = np.zeros((48, 48, 48), np.float32)
    >>> chi[20:28, 20:28, 20:28] = 0.1
    >>> field = forward_field(chi, 1.0)
    >>> res = medi(field, np.ones(chi.shape, bool), 1.0, magnitude=1.0 + chi)
    >>> res.chi.shape, res.n_fft == 4 * res.iterations
    ((48, 48, 48), True)
    """
    field, m, vsz, b0 = check_field_and_mask(local_field, mask, voxel_size, b0_dir)
    mag = check_image(magnitude, field.shape, m, "magnitude")
    nse = check_image(noise, field.shape, m, "noise")
    for name, value in (("lam", lam), ("mu_tv", mu_tv), ("mu_data", mu_data),
                        ("mu_csf", mu_csf)):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise InputError(f"{name} must be a positive number, found {value!r}")
    if not (np.isfinite(lam_csf) and lam_csf >= 0):
        raise InputError(f"lam_csf must be a non-negative number, found {lam_csf!r}")
    if not (0.0 <= edge_fraction < 1.0):
        raise InputError(f"edge_fraction must be in [0, 1), found {edge_fraction!r}")
    if int(max_iter) < 1 or not (tol >= 0):
        raise InputError(f"max_iter must be >= 1 and tol >= 0, found {max_iter!r}, {tol!r}")
    if kernel not in ("continuous", "discrete"):
        raise InputError(f"kernel must be 'continuous' or 'discrete', found {kernel!r}")

    csf = None
    if csf_mask is not None:
        cm = np.asarray(csf_mask)
        if cm.shape != field.shape:
            raise InputError(f"csf_mask must have the field's shape {field.shape}, "
                             f"found {cm.shape}")
        csf = (cm != 0) & m
        if not csf.any():
            log.warning("the CSF mask has no voxel inside the mask: MEDI+0 term and CSF "
                        "reference disabled")
            csf = None
    use_csf = csf is not None and lam_csf > 0

    grid = fft_grid(m, pad)
    fft = FFT(grid.shape, workers)
    w, weight_source = data_weights(nse, mag, m)
    if mag is None:
        log.warning("MEDI without a magnitude image: no edge prior, plain total variation")
        penalised = None
    else:
        penalised = edge_weights(grid.embed(mag), grid.embed(m, bool), vsz, edge_fraction)

    mu1 = float(mu_tv) if mu_tv is not None else 100.0 * float(lam) / float(np.mean(vsz))
    mu2 = float(mu_data) if mu_data is not None else 6.0 * mu1
    mu3 = (float(mu_csf) if mu_csf is not None else 0.4 * mu1) if use_csf else 0.0
    solver = _Admm(
        grid=grid,
        fft=fft,
        field=field,
        weights=w,
        voxel_size=vsz,
        b0_dir=b0,
        kernel=kernel,
        penalised=penalised,
        lam=float(lam),
        csf=csf if use_csf else None,
        lam_csf=float(lam_csf),
        mu=(mu1, mu2, mu3),
    )
    del penalised

    converged = False
    it = 0
    change = np.inf
    check_every = 5
    limits = threadpool_limits(1, user_api="blas") if threadpool_limits else nullcontext()
    with limits:
        for it in range(1, int(max_iter) + 1):  # noqa: B007 - `it` is reported
            check = it % check_every == 0 or it == int(max_iter)
            change = solver.step(measure_change=check)
            if check and change <= tol:
                converged = True
                break
    chi, dchi = solver.chi, solver.dchi
    del solver
    log.debug("medi: %d iterations, %s, grid %s, %d FFTs", it,
              "converged" if converged else "not converged", grid.shape, fft.count)
    if not converged:
        log.warning("medi: no convergence in %d iterations (relative change %.2g > tol %.2g)",
                    it, change, tol)

    out = grid.extract(chi, field.shape)
    dfit = grid.extract(dchi, field.shape)
    del chi, dchi
    wm = w[m]
    resid = float(np.linalg.norm(wm * (dfit[m] - field[m])) /
                  max(float(np.linalg.norm(wm * field[m])), 1e-30))
    ref = csf if csf is not None else m
    out[m] -= out[ref].mean(dtype=np.float64)
    out[~m] = 0.0
    return MediResult(
        chi=out,
        lam=float(lam),
        lam_csf=float(lam_csf) if use_csf else 0.0,
        iterations=it,
        converged=converged,
        n_fft=fft.count,
        fft_shape=grid.shape,
        residual=resid,
        edge_prior="none" if mag is None else "magnitude",
        weights=weight_source,
        csf_voxels=0 if csf is None else int(np.count_nonzero(csf)),
    )


class _Admm:
    """ADMM iterations of :func:`medi` on the FFT grid (state and one step).

    Splitting (scaled form, penalties ``mu = (mu1, mu2, mu3)``; all divided by ``mu1``):

    * ``z_i = diff_i chi`` (voxel-unit forward differences): soft thresholding at
      ``lam / (h_i mu1)`` where penalised. With ``t = diff chi + s`` the new scaled dual is
      ``s = clip(t, +-threshold)`` (0 at edges) and ``z - s = t - 2 s``.
    * ``v = D chi``: ``v = (W^2 f + mu2 (D chi + s2)) / (W^2 + mu2)``, pointwise; outside the
      mask ``W = 0`` and ``v = D chi``.
    * ``q = chi`` (MEDI+0 only): on CSF voxels the values of ``chi + s3`` are shrunk towards
      their mean by ``mu3 / (lam_csf + mu3)``; elsewhere ``q = chi`` (so ``s3 = 0``).
    * ``chi``: ``(sum_i |G_i|^2 + r2 D^2 + r3) chi_k = FFT(sum_i diff_i^T (z_i - s_i) +
      r3 (q - s3)) + r2 D FFT(v - s2)``, with ``r2 = mu2/mu1``, ``r3 = mu3/mu1``.

    The memory-bound pointwise work is written as few full passes as possible (in place,
    BLAS ``axpy`` for ``y += a x``).
    """

    def __init__(self, grid, fft, field, weights, voxel_size, b0_dir, kernel, penalised, lam,
                 csf, lam_csf, mu):
        mu1, mu2, mu3 = mu
        shape = grid.shape
        self.grid = grid
        self.fft = fft
        self.r3 = np.float32(mu3 / mu1)
        r2 = np.float32(mu2 / mu1)
        self.levels = [np.float32(lam / (h * mu1)) for h in voxel_size]
        self.pen = penalised

        d = dipole_kernel(shape, voxel_size, b0_dir, rfft=True, kind=kernel)
        invden = laplacian_symbol(shape)
        invden += r2 * d * d
        if self.r3 > 0:
            invden += self.r3
        else:
            invden[0, 0, 0] = np.inf  # k = 0 is undetermined: keep the grid mean at 0
        np.reciprocal(invden, out=invden)
        self.d = d
        self.d_r2 = r2 * d
        self.invden = invden

        # data update on the planes 0..n_box-1 of the grid (contiguous): with a = D chi + s2,
        # s2 <- kappa a - beta and (v - s2) = gamma a + 2 beta, from v = alpha a + beta
        nb = grid.box_shape[0]
        rows = (slice(0, nb),)
        w2 = np.zeros((nb,) + shape[1:], np.float32)
        fb = np.zeros_like(w2)
        w2[grid.inner] = weights[grid.box] ** 2
        fb[grid.inner] = field[grid.box]
        m2 = np.float32(mu2)
        alpha = m2 / (w2 + m2)
        self.rows = rows
        self.beta = w2 * fb / (w2 + m2)
        self.kappa = 1 - alpha
        self.gamma = 2 * alpha - 1
        del w2, fb, alpha

        self.csf_idx = None
        if csf is not None:
            self.csf_idx = np.flatnonzero(grid.embed(csf, bool))
            self.s3 = np.zeros(self.csf_idx.size, np.float32)
            self.q = np.zeros(self.csf_idx.size, np.float32)
            self.shrink = np.float32(mu3 / (lam_csf + mu3))

        self.chi = np.zeros(shape, np.float32)
        self.dchi = np.zeros(shape, np.float32)
        self.s = [np.zeros(shape, np.float32) for _ in range(3)]
        self.s2 = np.zeros(self.beta.shape, np.float32)
        self.rhs = np.empty(shape, np.float32)
        self.t = np.empty(shape, np.float32)

    def _tv(self) -> None:
        """Shrinkage of the three gradient components and ``rhs = sum diff^T (z - s)``."""
        t, rhs = self.t, self.rhs
        for ax in range(3):
            s = self.s[ax]
            c = self.levels[ax]
            forward_diff(self.chi, ax, t)
            axpy(1.0, s, t)
            np.clip(t, -c, c, out=s)
            if self.pen is not None:
                s *= self.pen[ax]  # 0 at edges (np.clip with where= is 10x slower)
            axpy(-2.0, s, t)
            add_adjoint_diff(t, ax, rhs, first=ax == 0)

    def _data(self) -> None:
        """Weighted data split; leaves ``v - s2`` in ``dchi``."""
        a = self.dchi[self.rows]
        s2 = self.s2
        axpy(1.0, s2, a)
        np.multiply(a, self.kappa, out=s2)
        axpy(-1.0, self.beta, s2)
        a *= self.gamma
        axpy(2.0, self.beta, a)

    def step(self, measure_change: bool) -> float:
        """One ADMM iteration; the relative change of chi when ``measure_change``."""
        self._tv()
        if self.csf_idx is not None:
            axpy(float(self.r3), self.chi, self.rhs)
            flat = self.rhs.reshape(-1)
            flat[self.csf_idx] += self.r3 * (self.q - self.s3 - self.chi.reshape(-1)[self.csf_idx])
        self._data()
        fft = self.fft
        spec = fft.forward(self.rhs)
        spec_b = fft.forward(self.dchi)
        spec_b *= self.d_r2
        axpy(1.0, spec_b, spec)
        spec *= self.invden
        np.multiply(spec, self.d, out=spec_b)
        chi_old = self.chi
        self.chi = fft.inverse(spec)
        del spec
        self.dchi = fft.inverse(spec_b)
        del spec_b
        if self.csf_idx is not None:
            a3 = self.chi.reshape(-1)[self.csf_idx] + self.s3
            mean3 = np.float32(a3.mean(dtype=np.float64))
            np.subtract(a3, mean3, out=self.q)
            self.q *= self.shrink
            self.q += mean3
            np.subtract(a3, self.q, out=self.s3)
        if not measure_change:
            return np.inf
        size = sq_norm(self.chi)
        diff = axpy(-1.0, self.chi, chi_old)
        return float(np.sqrt(sq_norm(diff) / size)) if size > 0 else 0.0
