"""Multi-echo GRE: field, initial phase and noise by a nonlinear complex fit; R2*; magnitude.

Signal model of a spoiled GRE echo at time ``t_j`` (no fat, one frequency per voxel)::

    S_j = m_j * exp(i * (phase0 + 2 pi * field_hz * t_j))

with ``m_j`` the measured magnitude of echo ``j``, ``phase0`` the phase at ``TE = 0`` (transmit
and receive phase, radians) and ``field_hz`` the local frequency offset in Hz. The field in ppm
is ``field_hz / (GAMMA_HZ_PER_T * b0) * 1e6`` (:func:`hz_to_ppm`).

Units used throughout: ``te`` in seconds, ``b0`` in tesla, frequencies in Hz, phases in
radians, susceptibility-scale fields in ppm. Conversions are named once here: :func:`hz_to_ppm`,
:func:`ppm_to_hz`, :func:`rad_to_ppm`, :func:`ppm_to_rad` and the dispatcher
:func:`field_to_ppm`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from qsmiron import _checks
from qsmiron.constants import GAMMA_HZ_PER_T
from qsmiron.errors import InputError

__all__ = [
    "MultiEchoFit",
    "combine_magnitude",
    "field_to_ppm",
    "fit_complex",
    "hz_to_ppm",
    "ppm_to_hz",
    "ppm_to_rad",
    "r2star_map",
    "rad_to_ppm",
]

log = logging.getLogger(__name__)

#: Largest R2* (1/s) :func:`r2star_map` returns; anything above is not measurable with echo
#: spacings of a few ms (the signal is gone after the first echo).
R2STAR_MAX: float = 500.0

FieldUnit = Literal["ppm", "hz", "rad", "rad_s"]


# --------------------------------------------------------------------------------------------
# unit conversions
# --------------------------------------------------------------------------------------------


def _b0_tesla(b0: float) -> float:
    b = float(b0)
    if not np.isfinite(b) or b <= 0:
        raise InputError(f"b0 must be a positive field strength in tesla, found {b0!r}")
    if b > 30.0:
        raise InputError(f"b0 is in tesla; found {b0!r} (a frequency in MHz given?)")
    return b


def _hz_per_ppm(b0: float) -> float:
    return GAMMA_HZ_PER_T * _b0_tesla(b0) * 1e-6


def hz_to_ppm(field_hz: np.ndarray | float, b0: float) -> np.ndarray:
    """Frequency offset (Hz) to relative field (ppm): ``f / (gamma/2pi * B0) * 1e6``.

    Parameters
    ----------
    field_hz : array or float
        Frequency offset, Hz.
    b0 : float
        Main field, tesla.

    Returns
    -------
    float32 array
        Field in ppm.

    Examples
    --------
    >>> round(float(hz_to_ppm(127.73, b0=3.0)), 4)
    1.0
    """
    return (np.asarray(field_hz, dtype=np.float64) / _hz_per_ppm(b0)).astype(np.float32)


def ppm_to_hz(field_ppm: np.ndarray | float, b0: float) -> np.ndarray:
    """Relative field (ppm) to frequency offset (Hz); the inverse of :func:`hz_to_ppm`.

    Parameters
    ----------
    field_ppm : array or float
        Field, ppm.
    b0 : float
        Main field, tesla.

    Returns
    -------
    float32 array
        Frequency offset, Hz.

    Examples
    --------
    >>> round(float(ppm_to_hz(1.0, b0=3.0)), 2)
    127.73
    """
    return (np.asarray(field_ppm, dtype=np.float64) * _hz_per_ppm(b0)).astype(np.float32)


def rad_to_ppm(phase_rad: np.ndarray | float, te: float, b0: float) -> np.ndarray:
    """Phase accumulated at echo time ``te`` (rad) to field (ppm): ``phase / (2 pi te) -> ppm``.

    Parameters
    ----------
    phase_rad : array or float
        Unwrapped phase (or phase difference) accumulated over ``te``, radians.
    te : float
        The time over which the phase accumulated, seconds (an echo time, or the echo
        spacing for an echo-difference phase).
    b0 : float
        Main field, tesla.

    Returns
    -------
    float32 array
        Field in ppm.

    Examples
    --------
    >>> round(float(rad_to_ppm(2 * np.pi * 127.73 * 0.01, te=0.01, b0=3.0)), 4)
    1.0
    """
    t = float(_checks.echo_times([te])[0])
    hz = np.asarray(phase_rad, dtype=np.float64) / (2.0 * np.pi * t)
    return hz_to_ppm(hz, b0)


def ppm_to_rad(field_ppm: np.ndarray | float, te: float, b0: float) -> np.ndarray:
    """Field (ppm) to the phase it accumulates at echo time ``te`` (rad, not wrapped).

    Parameters
    ----------
    field_ppm : array or float
        Field, ppm.
    te : float
        Echo time, seconds.
    b0 : float
        Main field, tesla.

    Returns
    -------
    float32 array
        Phase in radians.

    Examples
    --------
    >>> round(float(ppm_to_rad(1.0, te=0.01, b0=3.0)), 3)
    8.026
    """
    t = float(_checks.echo_times([te])[0])
    hz = np.asarray(field_ppm, dtype=np.float64) * _hz_per_ppm(b0)
    return (2.0 * np.pi * t * hz).astype(np.float32)


def field_to_ppm(
    field: np.ndarray | float,
    b0: float,
    unit: FieldUnit = "hz",
    te: float | None = None,
) -> np.ndarray:
    """Any field map to ppm, by the unit its name or header gives.

    Parameters
    ----------
    field : array or float
        The field map.
    b0 : float
        Main field, tesla.
    unit : {"hz", "rad_s", "rad", "ppm"}
        ``"hz"``: frequency offset in Hz; ``"rad_s"``: angular frequency in rad/s;
        ``"rad"``: (unwrapped) phase accumulated over ``te``; ``"ppm"``: returned as float32.
    te : float, optional
        Seconds; required for ``unit="rad"``.

    Returns
    -------
    float32 array
        Field in ppm.

    Examples
    --------
    >>> round(float(field_to_ppm(2 * np.pi * 127.73, b0=3.0, unit="rad_s")), 4)
    1.0
    """
    if unit == "ppm":
        return np.asarray(field, dtype=np.float32)
    if unit == "hz":
        return hz_to_ppm(field, b0)
    if unit == "rad_s":
        return hz_to_ppm(np.asarray(field, dtype=np.float64) / (2.0 * np.pi), b0)
    if unit == "rad":
        if te is None:
            raise InputError("a field in radians needs the echo time over which the phase "
                             "accumulated: pass te (seconds)")
        return rad_to_ppm(field, te, b0)
    raise InputError(f"unknown field unit {unit!r}; use one of 'ppm', 'hz', 'rad_s', 'rad'")


# --------------------------------------------------------------------------------------------
# magnitude: combination and R2*
# --------------------------------------------------------------------------------------------


def combine_magnitude(
    magnitude: np.ndarray,
    te: Sequence[float] | None = None,
    method: Literal["rss", "mean", "first"] = "rss",
) -> np.ndarray:
    """One magnitude image from a multi-echo stack (for masks and MEDI's edge prior).

    The root sum of squares ``sqrt(sum_j m_j^2)`` is the default: for echoes with the same
    noise it equals the matched-filter combination ``sum_j w_j m_j`` with weights ``w_j``
    proportional to the signal of each echo, so it has the highest SNR of any echo
    combination, and it keeps the T1 and proton-density contrast of the early echoes that
    tissue edges are visible in.

    Parameters
    ----------
    magnitude : (X, Y, Z) or (X, Y, Z, E) array
        Magnitude of each echo.
    te : sequence of float, optional
        Echo times (s); only checked against the number of echoes when given.
    method : {"rss", "mean", "first"}
        Root sum of squares, plain mean over echoes, or the first echo.

    Returns
    -------
    (X, Y, Z) float32 array

    Examples
    --------
    >>> mag = np.stack([np.full((2, 2, 2), 3.0), np.full((2, 2, 2), 4.0)], axis=-1)
    >>> float(combine_magnitude(mag)[0, 0, 0])
    5.0
    """
    mag = _checks.echo_stack(magnitude, "magnitude")
    if te is not None:
        _checks.echo_times(te, mag.shape[3])
    if method == "rss":
        out = np.sqrt(np.einsum("xyze,xyze->xyz", mag, mag, dtype=np.float64))
    elif method == "mean":
        out = mag.mean(axis=3, dtype=np.float64)
    elif method == "first":
        out = mag[..., 0]
    else:
        raise InputError(f"unknown magnitude combination {method!r}; use 'rss', 'mean' or "
                         "'first'")
    return np.ascontiguousarray(out, dtype=np.float32)


def r2star_map(
    magnitude: np.ndarray,
    te: Sequence[float],
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Apparent transverse relaxation rate R2* (1/s) by a weighted log-linear fit.

    Fits ``log m_j = log m0 - R2* t_j`` by least squares with weights ``m_j^2``: the variance
    of ``log m_j`` is ``sigma^2 / m_j^2`` for Gaussian noise of SD ``sigma`` per channel, so
    these weights make the fit the maximum-likelihood one at moderate SNR and keep late,
    noise-floor echoes from biasing R2* downwards. Works for any (uneven) echo spacing.

    Parameters
    ----------
    magnitude : (X, Y, Z, E) array
        Magnitude of each echo, ``E >= 2``.
    te : sequence of float
        Echo times, seconds, strictly increasing.
    mask : (X, Y, Z) bool array, optional
        Voxels to fit; R2* is 0 elsewhere.

    Returns
    -------
    (X, Y, Z) float32 array
        R2* in 1/s, clipped to ``[0, 500]`` (see :data:`R2STAR_MAX`).

    References
    ----------
    .. [1] Bevington PR, Robinson DK. Data Reduction and Error Analysis for the Physical
       Sciences, 3rd ed. McGraw-Hill 2003, ch. 6 (weighted fit of a linearised exponential).
    .. [2] Pei M, Nguyen TD, Thimmappa ND, et al. Algorithm for fast monoexponential fitting
       based on Auto-Regression on Linear Operations (ARLO) of data. Magn Reson Med
       2015;73:843-850 (comparison of log-linear and nonlinear R2* estimators).

    Examples
    --------
    >>> te = np.array([0.005, 0.010, 0.020])
    >>> mag = np.exp(-25.0 * te) * np.ones((2, 2, 2, 1))
    >>> round(float(r2star_map(mag, te)[0, 0, 0]), 3)
    25.0
    """
    mag = _checks.echo_stack(magnitude, "magnitude")
    t = _checks.echo_times(te, mag.shape[3])
    if t.size < 2:
        raise InputError("R2* needs at least 2 echoes; found 1")
    m = _checks.mask3d(mask, mag.shape[:3])
    vals = mag[m].astype(np.float64)  # (V, E)
    floor = max(float(vals.max()), 1e-30) * 1e-9
    y = np.log(np.maximum(vals, floor))
    w = vals * vals
    sw = w.sum(1)
    swt = w @ t
    swtt = w @ (t * t)
    swy = (w * y).sum(1)
    swty = (w * y) @ t
    det = sw * swtt - swt * swt
    ok = det > 1e-30 * np.maximum(sw, 1e-300) ** 2
    slope = np.zeros_like(sw)
    slope[ok] = (sw[ok] * swty[ok] - swt[ok] * swy[ok]) / det[ok]
    out = np.zeros(mag.shape[:3], dtype=np.float32)
    out[m] = np.clip(-slope, 0.0, R2STAR_MAX)
    return out


# --------------------------------------------------------------------------------------------
# complex fit
# --------------------------------------------------------------------------------------------


@dataclass
class MultiEchoFit:
    """Result of :func:`fit_complex`; every map is (X, Y, Z) float32 and 0 outside the mask.

    Attributes
    ----------
    field_hz : ndarray
        Frequency offset, Hz (``hz_to_ppm(field_hz, b0)`` gives ppm). For echoes spaced
        evenly by ``dte`` it is only defined modulo ``1 / dte`` and is returned in
        ``[-1/(2 dte), 1/(2 dte))``: unwrap ``2 pi * field_hz * dte`` spatially (see
        :attr:`alias_period_hz`).
    phase0 : ndarray
        Phase at ``TE = 0``, radians, in ``[-pi, pi)`` (unless the input phase was unwrapped).
    noise_hz : ndarray
        Standard deviation of ``field_hz`` from the fit's curvature (the Cramer-Rao bound at
        the estimated noise level), Hz; ``inf`` where a voxel has no signal. The data weights
        of a dipole inversion are ``1 / noise``.
    residual : ndarray
        Magnitude-weighted RMS phase misfit of the model, radians (``sqrt(sum m_j^2
        sin^2 r_j / sum m_j^2)``, ``r_j`` the phase residual of echo ``j``); large values flag
        voxels the single-frequency model does not describe (flow, fat, intravoxel
        dephasing, phase errors).
    iterations : int
        Gauss-Newton iterations run (the largest over voxels).
    noise_sigma : float
        Noise SD per real channel of the complex data that ``noise_hz`` assumes (the median
        over the mask where it is estimated locally).
    alias_period_hz : float or None
        ``1 / dte`` for evenly spaced echoes (the period in which ``field_hz`` is defined),
        ``1 / (t2 - t1)`` for uneven spacing (the range the initial estimate resolves), or
        ``None`` for one echo.
    te : ndarray
        The echo times, seconds.
    """

    field_hz: np.ndarray
    phase0: np.ndarray
    noise_hz: np.ndarray
    residual: np.ndarray
    iterations: int
    noise_sigma: float
    alias_period_hz: float | None
    te: np.ndarray


def _wrap(x: np.ndarray) -> np.ndarray:
    """Wrap radians into ``[-pi, pi)``, same dtype."""
    pi = x.dtype.type(np.pi) if isinstance(x, np.ndarray) else np.pi
    return np.mod(x + pi, 2 * pi) - pi


def _background_sigma(mag_first: np.ndarray, mask: np.ndarray) -> float | None:
    """Noise SD per channel from the Rayleigh-distributed background, or None if none.

    Background: voxels outside ``mask`` below 10% of the robust intensity range (the
    threshold of Smith 2002's BET). For a Rayleigh variable ``m`` with parameter ``sigma``,
    ``m^2`` is exponential with median ``2 ln 2 sigma^2``.
    """
    p2, p98 = np.percentile(mag_first, [2, 98])
    thr = p2 + 0.1 * (p98 - p2)
    bg = mag_first[(~mask) & (mag_first < thr)]
    bg = bg[bg > 0]
    if bg.size < 1000:
        return None
    sigma = float(np.sqrt(np.median(bg.astype(np.float64) ** 2) / (2.0 * np.log(2.0))))
    return sigma if sigma > 0 else None


def _smooth_in_mask(values: np.ndarray, mask: np.ndarray, sigma_vox: np.ndarray) -> np.ndarray:
    """Normalised Gaussian convolution of ``values`` (given on ``mask``) within the mask."""
    num = np.zeros(mask.shape, np.float32)
    num[mask] = values
    den = mask.astype(np.float32)
    num = ndi.gaussian_filter(num, sigma_vox, mode="constant", truncate=3.0)
    den = ndi.gaussian_filter(den, sigma_vox, mode="constant", truncate=3.0)
    return num[mask] / np.maximum(den[mask], 1e-6)


def _initial_estimate(
    th: np.ndarray,
    w: np.ndarray,
    tau: np.ndarray,
    inv: tuple[np.ndarray, np.ndarray, np.ndarray],
    phase_unwrapped: bool,
    slope_shift: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Temporal unwrapping by prediction from the previous echoes, then weighted linear fit.

    Returns ``(a, b)`` with the model phase ``a + b * tau`` (``tau`` = time / last TE).
    """
    if phase_unwrapped:
        th_u = th
    else:
        n_echo = tau.size
        th_u = np.empty_like(th)
        th_u[:, 0] = th[:, 0]
        slope = _wrap(th[:, 1] - th[:, 0]) / (tau[1] - tau[0]) + slope_shift
        for j in range(1, n_echo):
            pred = th_u[:, j - 1] + slope * (tau[j] - tau[j - 1])
            th_u[:, j] = th[:, j] + 2.0 * np.pi * np.round((pred - th[:, j]) / (2.0 * np.pi))
            slope = (th_u[:, j] - th_u[:, 0]) / (tau[j] - tau[0])
    wy = (w * th_u).sum(1)
    wty = (w * th_u) @ tau
    inv00, inv01, inv11 = inv
    return inv00 * wy + inv01 * wty, inv01 * wy + inv11 * wty


def _gauss_newton(
    th: np.ndarray,
    w: np.ndarray,
    tau: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    inv: tuple[np.ndarray, np.ndarray, np.ndarray],
    det: np.ndarray,
    sw: np.ndarray,
    good: np.ndarray,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Safeguarded Newton / Gauss-Newton iterations of the complex fit on the voxels ``good``."""
    a = a.copy()
    b = b.copy()
    inv00, inv01, inv11 = inv
    active = np.nonzero(good)[0]
    tau_max = float(np.abs(tau).max())
    iterations = 0
    for _ in range(max_iter):
        if active.size == 0:
            break
        iterations += 1
        r = th[active] - (a[active, None] + b[active, None] * tau[None, :])
        wa = w[active]
        s = wa * np.sin(r)
        g0 = s.sum(1)
        g1 = s @ tau
        # Newton step where the exact Hessian (weights m^2 cos r) is safely positive
        # definite, Gauss-Newton step (weights m^2) elsewhere
        c = wa * np.cos(r)
        h00 = c.sum(1)
        h01 = c @ tau
        h11 = c @ (tau * tau)
        det_n = h00 * h11 - h01 * h01
        newton = (h00 > 0.5 * sw[active]) & (det_n > 0.25 * det[active])
        det_n = np.where(newton, det_n, 1.0)
        da = np.where(newton, (h11 * g0 - h01 * g1) / det_n,
                      inv00[active] * g0 + inv01[active] * g1)
        db = np.where(newton, (h00 * g1 - h01 * g0) / det_n,
                      inv01[active] * g0 + inv11[active] * g1)
        a[active] += da
        b[active] += db
        change = np.abs(da) + np.abs(db) * tau_max
        active = active[change > tol]
    if active.size:
        log.debug("fit_complex: %d voxels not converged after %d iterations",
                  active.size, max_iter)
    return a, b, iterations


def fit_complex(
    magnitude: np.ndarray,
    phase: np.ndarray,
    te: Sequence[float],
    mask: np.ndarray | None = None,
    *,
    max_iter: int = 20,
    tol: float = 1e-4,
    noise_sigma: float | None = None,
    noise_smoothing_mm: float = 5.0,
    voxel_size: float | Sequence[float] = 1.0,
    phase_unwrapped: bool = False,
) -> MultiEchoFit:
    """Field, initial phase and field noise from multi-echo complex GRE by a nonlinear fit.

    Each voxel's complex echoes are fitted with ``S_j = m_j exp(i (phase0 + 2 pi f t_j))``,
    the measured magnitudes ``m_j`` taken as the model's (Liu et al. 2013; Kressler et al.
    2010), by minimising ``sum_j |S_j - m_j exp(i psi_j)|^2 = sum_j 2 m_j^2 (1 - cos r_j)``
    over ``(phase0, f)``, with ``r_j`` the phase residual. This is the maximum-likelihood
    estimate for Gaussian noise in the complex data; it weights every echo by its squared
    magnitude and, unlike a fit to unwrapped phases, needs no unwrapping in time.

    Solver, vectorised over voxels:

    1. Initial estimate: the phase of each echo is unwrapped in time by predicting it from
       the echoes before it (first difference ``wrap(theta_2 - theta_1) / (t_2 - t_1)``, then
       extrapolation with the running slope), and a weighted linear fit of the unwrapped
       phase over TE gives ``(phase0, f)``. ``phase0`` is fitted, not assumed from echo 1,
       so the first echo need not be at ``TE = dTE`` and the spacing may be uneven.
    2. Gauss-Newton: the Jacobian of the complex residual gives the constant normal matrix
       ``H = sum_j m_j^2 [[1, t_j], [t_j, t_j^2]]`` and the update
       ``H^-1 sum_j m_j^2 sin(r_j) [1, t_j]``, iterated until the phase change is below
       ``tol`` at every echo (usually 2-4 iterations).
    3. Noise: ``Var(f) = sigma^2 [H^-1]_ff / (2 pi)^2`` (Cramer-Rao bound; the MEDI
       ``N_std``), with ``sigma^2`` the noise variance per channel, estimated from the
       tangential residuals ``sum_j m_j^2 sin^2 r_j / (E - 2)`` (a chi-square with ``E - 2``
       degrees of freedom) averaged over a Gaussian neighbourhood of ``noise_smoothing_mm``
       within the mask, or, with 1-2 echoes (no residual), from the Rayleigh background
       outside the mask.

    Aliasing: for echoes spaced evenly by ``dte`` the data cannot tell ``f`` from
    ``f + k / dte``; ``field_hz`` is returned in ``[-1/(2 dte), 1/(2 dte))`` (``phase0``
    adjusted to match), i.e. ``2 pi field_hz dte`` is a wrapped phase that
    :func:`qsmiron.recon.unwrap.romeo_unwrap` or :func:`~qsmiron.recon.unwrap.laplacian_unwrap`
    can unwrap spatially; after unwrapping by ``2 pi k``, ``phase0`` shifts by
    ``-2 pi k t_1 / dte``. With uneven spacing the initial estimate resolves
    ``|f| < 1 / (2 (t_2 - t_1))`` and the fit refines it, so the result is not periodic.
    Alternatively, unwrap each echo first (``romeo_unwrap`` on the 4D phase) and pass
    ``phase_unwrapped=True``: the fit then starts from those phases and no aliasing occurs.

    One echo: ``f = theta_1 / (2 pi t_1)`` with ``phase0 = 0`` assumed (so the field contains
    the transceiver phase offset, which background-field removal largely takes out), and the
    noise is ``sigma / (2 pi t_1 m_1)``. Two echoes: the fit is exact (zero residual).

    Parameters
    ----------
    magnitude, phase : (X, Y, Z, E) arrays
        Magnitude (any scale) and phase (radians, wrapped or not) of each echo; a 3D array is
        one echo. 1 to any number of echoes.
    te : sequence of float
        Echo times, seconds, strictly increasing, one per echo.
    mask : (X, Y, Z) bool array, optional
        Voxels to fit (default: all); maps are 0 outside.
    max_iter : int
        Most Gauss-Newton iterations.
    tol : float
        Convergence threshold on the largest phase change at any echo, radians.
    noise_sigma : float, optional
        Noise SD per real channel of the complex data, if known (e.g. from a noise scan);
        estimated otherwise (see above).
    noise_smoothing_mm : float
        Gaussian SD (mm) of the neighbourhood the residual noise variance is averaged over;
        0 for a per-voxel estimate (noisy: a chi-square with ``E - 2`` degrees of freedom).
    voxel_size : float or 3 floats
        Voxel size in mm (only used for ``noise_smoothing_mm``).
    phase_unwrapped : bool
        True if ``phase`` is already unwrapped in space and time (e.g. per-echo ROMEO): the
        initial estimate is then a weighted linear fit of it as given, and ``phase0`` is not
        wrapped.

    Returns
    -------
    MultiEchoFit
        ``field_hz``, ``phase0`` (rad), ``noise_hz``, ``residual`` (rad), ``iterations`` and
        the noise level used.

    References
    ----------
    .. [1] Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear formulation of
       the magnetic field to source relationship for robust quantitative susceptibility
       mapping. Magn Reson Med 2013;69:467-476.
    .. [2] Kressler B, de Rochefort L, Liu T, Spincemaille P, Jiang Q, Wang Y. Nonlinear
       regularization for per voxel estimation of magnetic susceptibility distributions from
       MRI field maps. IEEE Trans Med Imaging 2010;29:273-281.
    .. [3] de Rochefort L, Liu T, Kressler B, et al. Quantitative susceptibility map
       reconstruction from MR phase data using Bayesian regularization: validation and
       application to brain imaging. Magn Reson Med 2010;63:194-206 (noise of the field).

    Examples
    --------
    >>> te = np.array([0.004, 0.009, 0.015])
    >>> f, p0 = 30.0, 0.5
    >>> s = np.exp(1j * (p0 + 2 * np.pi * f * te)) * np.ones((3, 3, 3, 1))
    >>> fit = fit_complex(np.abs(s), np.angle(s), te, noise_sigma=0.01)
    >>> round(float(fit.field_hz[1, 1, 1]), 3), round(float(fit.phase0[1, 1, 1]), 3)
    (30.0, 0.5)
    """
    mag = _checks.echo_stack(magnitude, "magnitude")
    pha = _checks.echo_stack(phase, "phase")
    if mag.shape != pha.shape:
        raise InputError(f"magnitude shape {mag.shape} differs from phase shape {pha.shape}")
    t = _checks.echo_times(te, mag.shape[3])
    if np.any(mag < 0):
        raise InputError("magnitude has negative values: pass |S|, not the real part")
    m = _checks.mask3d(mask, mag.shape[:3])
    if max_iter < 0 or not tol > 0:
        raise InputError(f"max_iter must be >= 0 and tol > 0, found {max_iter}, {tol}")
    if noise_sigma is not None and not (np.isfinite(noise_sigma) and noise_sigma > 0):
        raise InputError(f"noise_sigma must be positive, found {noise_sigma}")
    n_echo = t.size
    shape = mag.shape[:3]

    M = mag[m]  # (V, E) float32
    theta = pha[m]
    w = (M.astype(np.float64) ** 2)  # weights m_j^2
    sw = w.sum(1)
    has_signal = sw > 0

    sigma_bg = None
    if noise_sigma is None and n_echo <= 2:
        sigma_bg = _background_sigma(mag[..., 0], m)
        if sigma_bg is None:
            warnings.warn(
                "fit_complex: with 1-2 echoes the noise level comes from the image background, "
                "but there is none outside the mask; noise_hz is relative (sigma = 1). Pass "
                "noise_sigma for absolute values.",
                stacklevel=2,
            )

    iterations = 0
    if n_echo == 1:
        t1 = float(t[0])
        f = theta[:, 0].astype(np.float64) / (2.0 * np.pi * t1)
        if not phase_unwrapped:
            f = _wrap(2.0 * np.pi * t1 * f) / (2.0 * np.pi * t1)
        p0 = np.zeros_like(f)
        resid = np.zeros_like(f)
        sigma = noise_sigma or sigma_bg or 1.0
        with np.errstate(divide="ignore"):
            noise = np.where(has_signal, sigma / (2.0 * np.pi * t1 * np.sqrt(sw)), np.inf)
        sigma_used = float(sigma)
        alias = None
    else:
        # time in units of the last echo for a well-conditioned 2x2 system
        tref = float(t[-1])
        tau = t / tref
        th = theta.astype(np.float64)
        spacing = np.diff(t)
        even = bool(np.allclose(spacing, spacing[0], rtol=1e-3, atol=1e-7))
        swt = w @ tau
        swtt = w @ (tau * tau)
        det = sw * swtt - swt * swt
        good = has_signal & (det > 1e-12 * np.maximum(sw, 1e-300) ** 2)
        safe = np.where(good, det, 1.0)
        inv = (np.where(good, swtt / safe, 0.0), np.where(good, -swt / safe, 0.0),
               np.where(good, sw / safe, 0.0))
        # 1.-2. initial estimate and Gauss-Newton; for uneven spacing the echo-to-echo
        # estimate may alias by 1/(t2 - t1): also start from the neighbouring aliases and
        # keep the solution with the lowest cost
        shifts = (0,) if (even or phase_unwrapped) else (0, -1, 1)
        best = None
        for k in shifts:
            a, b = _initial_estimate(th, w, tau, inv, phase_unwrapped,
                                     2.0 * np.pi * k / (tau[1] - tau[0]))
            a, b, n_it = _gauss_newton(th, w, tau, a, b, inv, det, sw, good, max_iter, tol)
            iterations = max(iterations, n_it)
            cost = (w * (1.0 - np.cos(th - (a[:, None] + b[:, None] * tau[None, :])))).sum(1)
            if best is None:
                best = (a, b, cost)
            else:
                better = cost < best[2] * (1.0 - 1e-9)
                best = (np.where(better, a, best[0]), np.where(better, b, best[1]),
                        np.where(better, cost, best[2]))
        a, b = best[0], best[1]
        inv00, inv01, inv11 = inv
        r = th - (a[:, None] + b[:, None] * tau[None, :])
        tang = w * np.sin(r) ** 2  # squared tangential residuals m_j^2 sin^2 r_j
        with np.errstate(invalid="ignore", divide="ignore"):
            resid = np.where(has_signal, np.sqrt(tang.sum(1) / np.where(has_signal, sw, 1.0)),
                             0.0)
        # 3. noise level
        if noise_sigma is not None:
            sigma2 = np.full(sw.shape, float(noise_sigma) ** 2)
        elif n_echo > 2:
            s2 = (tang.sum(1) / (n_echo - 2)).astype(np.float32)
            if noise_smoothing_mm > 0:
                vsz = _checks.voxel_size_mm(voxel_size)
                sigma2 = _smooth_in_mask(s2, m, noise_smoothing_mm / vsz).astype(np.float64)
            else:
                sigma2 = s2.astype(np.float64)
        else:
            sigma2 = np.full(sw.shape, (sigma_bg or 1.0) ** 2)
        sigma_used = float(np.sqrt(np.median(sigma2)))
        with np.errstate(invalid="ignore"):
            noise = np.where(good, np.sqrt(sigma2 * np.maximum(inv11, 0.0)), np.inf)
        noise = noise / (2.0 * np.pi * tref)
        f = b / (2.0 * np.pi * tref)
        p0 = a
        alias = float(1.0 / spacing[0])
        if not phase_unwrapped:
            if even:
                # shift f into the principal interval; phase0 compensates exactly
                dte = float(spacing[0])
                k = np.floor(f * dte + 0.5)
                f = f - k / dte
                p0 = p0 + 2.0 * np.pi * k * t[0] / dte
            p0 = _wrap(p0)
        f = np.where(good, f, 0.0)
        p0 = np.where(good, p0, 0.0)

    def to_map(v: np.ndarray) -> np.ndarray:
        out = np.zeros(shape, np.float32)
        out[m] = v
        return out

    log.debug("fit_complex: %d voxels, %d echoes, %d iterations, sigma %.3g",
              int(m.sum()), n_echo, iterations, sigma_used)
    return MultiEchoFit(
        field_hz=to_map(f),
        phase0=to_map(p0),
        noise_hz=to_map(noise),
        residual=to_map(resid),
        iterations=iterations,
        noise_sigma=sigma_used,
        alias_period_hz=alias,
        te=t,
    )
