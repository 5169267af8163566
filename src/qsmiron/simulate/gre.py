"""Forward model of a multi-echo spoiled gradient-echo (GRE) acquisition.

From a susceptibility map (ppm) to the Lorentz-corrected field (ppm) by dipole convolution,
and from the field, proton density, R2* and echo times to complex multi-echo images with a
smooth receive-phase offset and Gaussian noise. Every random draw comes from a
:class:`numpy.random.Generator` the caller passes, so a seed reproduces the data exactly.

Conventions
-----------
- Susceptibility and field in ppm; ``chi`` is relative to the medium outside the object
  (air = 0 for a head in air), because the FFT grid is padded with zeros.
- The field is ``dB_z / B0`` after the Lorentz-sphere correction; a positive ``chi`` gives a
  positive field along B0 above and below the source.
- Phase ``= 2 pi * gamma * B0 * TE * field + phase0`` (radians), i.e. a positive frequency
  offset advances the phase; ``te`` in seconds, ``b0`` in tesla, ``r2star`` in 1/s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.fft

from qsmiron.constants import GAMMA_HZ_PER_T
from qsmiron.recon.fft import default_workers
from qsmiron.recon.kernels import KernelKind, dipole_kernel, padded_shape

__all__ = [
    "add_noise",
    "add_rician_noise",
    "default_workers",
    "forward_field",
    "gre_signal",
    "noise_sigma_for_snr",
    "smooth_phase_offset",
    "wrap_to_pi",
]

log = logging.getLogger(__name__)

PadSpec = float | Sequence[int] | None


def _generator(rng: np.random.Generator | int | None, what: str) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        raise ValueError(
            f"{what} needs a random generator: pass rng=np.random.default_rng(seed) "
            "(or an integer seed) so that the result is reproducible"
        )
    return np.random.default_rng(rng)


def wrap_to_pi(x: np.ndarray | float) -> np.ndarray:
    """Wrap angles (radians) into ``[-pi, pi)``.

    Parameters
    ----------
    x : array_like
        Angles in radians.

    Returns
    -------
    ndarray
        ``(x + pi) mod 2 pi - pi``, in the floating dtype of ``x`` (float64 for integers).

    Examples
    --------
    >>> float(wrap_to_pi(3 * np.pi / 2)), float(wrap_to_pi(-np.pi))
    (-1.5707963267948966, -3.141592653589793)
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    pi = x.dtype.type(np.pi)
    out = np.mod(x + pi, 2 * pi) - pi
    # float rounding can give exactly +pi from mod(.) == 2 pi - ulp; fold it back
    return np.where(out >= pi, out - 2 * pi, out)


def _resolve_pad(shape: tuple[int, ...], pad: PadSpec) -> tuple[int, ...]:
    if pad is None:
        return shape
    if isinstance(pad, (int, float, np.integer, np.floating)):
        factor = float(pad)
        if factor == 0.0 or factor == 1.0:
            return shape
        if factor < 1.0:
            raise ValueError(f"pad must be None, 0, 1 or a factor >= 1, found {pad}")
        return padded_shape(shape, factor=factor)
    grid = tuple(int(s) for s in pad)
    if len(grid) != len(shape) or any(g < s for g, s in zip(grid, shape, strict=True)):
        raise ValueError(f"pad as a grid shape must be >= the image shape {shape}, found {grid}")
    return grid


def forward_field(
    chi: np.ndarray,
    voxel_size: float | Sequence[float],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    pad: PadSpec = 2.0,
    workers: int | None = None,
    kernel: KernelKind = "discrete",
) -> np.ndarray:
    """Lorentz-corrected relative field (ppm) of a susceptibility map, by FFT dipole convolution.

    Computes ``field = IFFT(D(k) * FFT(chi))`` with the dipole kernel of
    :func:`qsmiron.recon.kernels.dipole_kernel`, on a zero-padded grid.

    The default kernel is the finite-difference (``"discrete"``) one: against the analytic
    field of a voxelised sphere it is as accurate as the continuous kernel for B0 along a voxel
    axis and 5-30 times more accurate away from the surface for oblique B0, where the
    continuous kernel rings (errors of ~3% of ``chi`` deep inside the sphere, see
    ``tests/simulate/test_gre.py``). Simulating with a kernel other than the one the inversions
    use (continuous) also avoids the "inverse crime" of testing a method on data made with its
    own forward operator.

    Why pad: multiplication in the discrete Fourier domain is a *circular* convolution, so
    without padding the field of every source also enters from the periodic copies of the
    image one field of view away (wrap-around), and the field inside the FOV is wrong by a
    dipole field of the opposite edge of the object. Padding each axis to at least twice its
    size (the default) makes the grid as large as the linear convolution of the original
    support, so that every image copy is at least one FOV away from every voxel of the
    original grid and what remains is the far-field tail of the dipole (decaying as 1/r^3).
    The padding is zeros, that is the susceptibility of the surrounding medium: pass ``chi``
    relative to the medium outside the object (for a head, relative to air, with air = 0).
    Less padding (``pad=1.5``) or none (``pad=None``) is faster when the object is small
    compared with the FOV or wrap-around does not matter.

    Parameters
    ----------
    chi : (X, Y, Z) array
        Susceptibility in ppm, relative to the medium outside the object.
    voxel_size : float or 3 floats
        Voxel size in mm along the voxel axes.
    b0_dir : 3 floats
        Unit vector of B0 in the voxel-axis frame (normalised here).
    pad : float, 3 ints or None
        A float ``>= 1``: minimum ratio of FFT grid size to image size per axis, rounded up to
        fast FFT sizes (default 2). ``None``, 0 or 1: no padding (circular convolution).
        Three ints: the exact FFT grid shape.
    workers : int, optional
        Threads for :mod:`scipy.fft`; default: all CPUs this process may use.
    kernel : {"discrete", "continuous"}
        Discretisation of the dipole kernel (see :func:`~qsmiron.recon.kernels.dipole_kernel`).

    Returns
    -------
    (X, Y, Z) float32 array
        Relative field ``dB_z / B0`` in ppm; its mean over the padded grid is zero (``D(0) = 0``).

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
    >>> chi = np.zeros((32, 32, 32), np.float32)
    >>> chi[12:20, 12:20, 12:20] = 0.1
    >>> field = forward_field(chi, voxel_size=1.0)
    >>> field.shape, field.dtype
    ((32, 32, 32), dtype('float32'))
    >>> bool(field[16, 16, 24] > 0 > field[24, 16, 16])   # along B0 positive, across negative
    True
    """
    chi = np.asarray(chi)
    if chi.ndim != 3:
        raise ValueError(f"chi must be a 3D array, found shape {chi.shape}")
    if not np.isfinite(chi).all():
        raise ValueError("chi contains NaN or infinite values; set them to 0 (air) first")
    shape = tuple(int(s) for s in chi.shape)
    grid = _resolve_pad(shape, pad)
    workers = default_workers() if workers is None else int(workers)
    log.debug("forward_field: image %s, FFT grid %s, %d workers", shape, grid, workers)

    buf = np.zeros(grid, dtype=np.float32)
    buf[: shape[0], : shape[1], : shape[2]] = chi
    spec = scipy.fft.rfftn(buf, workers=workers, overwrite_x=True)
    del buf
    spec *= dipole_kernel(grid, voxel_size, b0_dir, rfft=True, dtype=np.float32, kind=kernel)
    field = scipy.fft.irfftn(spec, s=grid, workers=workers, overwrite_x=True)
    del spec
    if grid != shape:
        field = np.ascontiguousarray(field[: shape[0], : shape[1], : shape[2]])
    return field.astype(np.float32, copy=False)


def gre_signal(
    field_ppm: np.ndarray,
    m0: np.ndarray | float,
    r2star: np.ndarray | float,
    te: Sequence[float] | np.ndarray,
    b0: float = 3.0,
    phase0: np.ndarray | float | None = None,
    noise_sigma: float = 0.0,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Complex multi-echo GRE images from field, proton density and R2*.

    For each echo time ``t``::

        S(t) = m0 * exp(-r2star * t) * exp(i * (2 pi * gamma * b0 * t * field * 1e-6 + phase0))
               + sigma * (n_re + i n_im),    n_re, n_im ~ N(0, 1) independent

    The phase is wrapped naturally by the complex exponential. Echoes are computed one at a
    time into a preallocated complex64 array, so the only other full-size arrays are a few
    float32 temporaries of one echo.

    Parameters
    ----------
    field_ppm : (X, Y, Z) array
        Relative field ``dB_z / B0`` in ppm (e.g. from :func:`forward_field`).
    m0 : array or float
        Signal at ``TE = 0`` (arbitrary units), broadcastable to ``field_ppm``.
    r2star : array or float
        Transverse relaxation rate R2* in 1/s, broadcastable to ``field_ppm``.
    te : 1D array of float
        Echo times in seconds.
    b0 : float
        Main field in tesla.
    phase0 : array or float, optional
        Phase at ``TE = 0`` in radians (receive/transmit phase, see
        :func:`smooth_phase_offset`), broadcastable to ``field_ppm``.
    noise_sigma : float
        Standard deviation of the Gaussian noise of each of the real and imaginary channels
        (same units as ``m0``); 0 for noise-free data.
    rng : numpy Generator or int, optional
        Source of the noise (required when ``noise_sigma > 0``); an int is used as a seed.

    Returns
    -------
    (X, Y, Z, E) complex64 array
        One complex image per echo.

    Examples
    --------
    >>> field = np.full((4, 4, 4), 0.05, np.float32)
    >>> s = gre_signal(field, m0=1.0, r2star=20.0, te=[0.005, 0.010], noise_sigma=0.01, rng=1)
    >>> s.shape, s.dtype
    ((4, 4, 4, 2), dtype('complex64'))
    """
    field = np.asarray(field_ppm, dtype=np.float32)
    if field.ndim != 3:
        raise ValueError(f"field_ppm must be a 3D array, found shape {field.shape}")
    te_arr = np.atleast_1d(np.asarray(te, dtype=np.float64))
    if te_arr.ndim != 1 or te_arr.size == 0:
        raise ValueError(f"te must be a non-empty 1D sequence of echo times (s), found {te!r}")
    if not np.all(np.isfinite(te_arr)) or np.any(te_arr < 0):
        raise ValueError(f"echo times must be finite and >= 0 s, found {te_arr.tolist()}")
    if np.any(te_arr > 1.0):
        raise ValueError(f"echo times are in seconds; found {te_arr.tolist()} (ms given?)")
    if not b0 > 0:
        raise ValueError(f"b0 must be positive (tesla), found {b0}")
    if not noise_sigma >= 0:
        raise ValueError(f"noise_sigma must be >= 0, found {noise_sigma}")
    gen = _generator(rng, "gre_signal with noise") if noise_sigma > 0 else None

    shape = field.shape
    m0_arr = np.broadcast_to(np.asarray(m0, dtype=np.float32), shape)
    r2_arr = np.broadcast_to(np.asarray(r2star, dtype=np.float32), shape)
    ph0 = None if phase0 is None else np.broadcast_to(np.asarray(phase0, np.float32), shape)
    rad_per_ppm_s = 2.0 * np.pi * GAMMA_HZ_PER_T * float(b0) * 1e-6  # rad / (ppm * s)

    out = np.empty(shape + (te_arr.size,), dtype=np.complex64)
    sigma = np.float32(noise_sigma)
    for e, t in enumerate(te_arr):
        phase = field * np.float32(rad_per_ppm_s * t)
        if ph0 is not None:
            phase += ph0
        mag = r2_arr * np.float32(-t)
        np.exp(mag, out=mag)
        mag *= m0_arr
        echo = out[..., e]
        part = np.cos(phase)
        part *= mag
        echo.real = part
        np.sin(phase, out=part)
        part *= mag
        echo.imag = part
        del phase, mag, part
        if gen is not None:
            echo.real += sigma * gen.standard_normal(shape, dtype=np.float32)
            echo.imag += sigma * gen.standard_normal(shape, dtype=np.float32)
    return out


def smooth_phase_offset(
    shape: Sequence[int],
    voxel_size: float | Sequence[float],
    rng: np.random.Generator | int,
    amplitude_rad: float = np.pi,
    correlation_mm: float = 50.0,
    n_waves: int = 24,
    poly_degree: int = 2,
    poly_weight: float = 0.5,
    constant: bool = True,
) -> np.ndarray:
    """A smooth random phase map like the combined receive phase of a multi-channel coil.

    The map is ``c + amplitude_rad * f(x)`` where ``f`` (max ``|f|`` = 1 over the grid, zero
    mean) is a weighted sum of

    - a random polynomial of degree ``<= poly_degree`` in the physical coordinates scaled to
      ``[-1, 1]`` (linear ramps from off-centre positioning and curvature), and
    - a stationary Gaussian random field with correlation length ``correlation_mm``, built
      from ``n_waves`` random Fourier features ``cos(2 pi k.x + phi)`` with
      ``k ~ N(0, (2 pi correlation_mm)^-2 I)`` (Rahimi & Recht 2007), whose covariance is
      ``exp(-|r|^2 / (2 correlation_mm^2))``;

    and ``c`` is a random constant in ``[-pi, pi)`` (0 if ``constant`` is False).

    Parameters
    ----------
    shape : 3 ints
        Grid size.
    voxel_size : float or 3 floats
        Voxel size in mm.
    rng : numpy Generator or int
        Source of randomness (an int is used as a seed).
    amplitude_rad : float
        Largest excursion of the map from ``c``, in radians.
    correlation_mm : float
        Correlation length of the random-field part, in mm.
    n_waves : int
        Number of random Fourier features.
    poly_degree : int
        Highest polynomial degree (0 for no polynomial part).
    poly_weight : float
        Share in ``[0, 1]`` of the polynomial part (after both parts are scaled to unit
        standard deviation).
    constant : bool
        Add a random constant phase.

    Returns
    -------
    (X, Y, Z) float32 array
        Phase in radians (not wrapped).

    References
    ----------
    .. [1] Rahimi A, Recht B. Random features for large-scale kernel machines.
       Advances in Neural Information Processing Systems 20 (2007).

    Examples
    --------
    >>> p = smooth_phase_offset((32, 32, 16), (1.0, 1.0, 2.0), rng=0, amplitude_rad=2.0)
    >>> p.dtype, round(float(np.abs(p - p.mean()).max()), 3) <= 2.0 + 1e-3
    (dtype('float32'), True)
    """
    gen = _generator(rng, "smooth_phase_offset")
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 dimensions, found {tuple(shape)}")
    if not 0.0 <= poly_weight <= 1.0:
        raise ValueError(f"poly_weight must be in [0, 1], found {poly_weight}")
    if correlation_mm <= 0:
        raise ValueError(f"correlation_mm must be positive, found {correlation_mm}")
    n = tuple(int(s) for s in shape)
    vsz = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    coords = [(np.arange(s) - (s - 1) / 2.0) * v for s, v in zip(n, vsz, strict=True)]
    axes_shape = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]

    def outer(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (a.reshape(axes_shape[0]) * b.reshape(axes_shape[1])) * c.reshape(axes_shape[2])

    def add(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (a.reshape(axes_shape[0]) + b.reshape(axes_shape[1])) + c.reshape(axes_shape[2])

    def standardise(a: np.ndarray) -> np.ndarray:
        a -= a.mean(dtype=np.float64)
        sd = float(a.std(dtype=np.float64))
        if sd > 0:
            a /= sd
        return a

    total = np.zeros(n, dtype=np.float32)
    if poly_degree > 0 and poly_weight > 0:
        scaled = [(c / max(np.abs(c).max(), 1e-12)).astype(np.float32) for c in coords]
        poly = np.zeros(n, dtype=np.float32)
        for i in range(poly_degree + 1):
            for j in range(poly_degree + 1 - i):
                for k in range(poly_degree + 1 - i - j):
                    if i + j + k == 0:
                        continue
                    coef = np.float32(gen.standard_normal() / (i + j + k))
                    poly += coef * outer(scaled[0] ** i, scaled[1] ** j, scaled[2] ** k)
        total += np.float32(poly_weight) * standardise(poly)
        del poly
    if n_waves > 0 and poly_weight < 1:
        sigma_k = 1.0 / (2.0 * np.pi * correlation_mm)
        waves = np.zeros(n, dtype=np.float32)
        k = gen.normal(0.0, sigma_k, size=(n_waves, 3))
        phi = gen.uniform(0.0, 2.0 * np.pi, size=n_waves)
        for m in range(n_waves):
            arg = add(
                (2 * np.pi * k[m, 0] * coords[0] + phi[m]).astype(np.float32),
                (2 * np.pi * k[m, 1] * coords[1]).astype(np.float32),
                (2 * np.pi * k[m, 2] * coords[2]).astype(np.float32),
            )
            np.cos(arg, out=arg)
            waves += arg
            del arg
        total += np.float32(1.0 - poly_weight) * standardise(waves)
        del waves
    total -= total.mean(dtype=np.float64)
    peak = float(np.abs(total).max())
    if peak > 0:
        total *= np.float32(amplitude_rad / peak)
    if constant:
        total += np.float32(gen.uniform(-np.pi, np.pi))
    return total


def noise_sigma_for_snr(magnitude_first_echo: np.ndarray, mask: np.ndarray, snr: float) -> float:
    """Noise standard deviation per channel that gives a target SNR at the first echo.

    Parameters
    ----------
    magnitude_first_echo : (X, Y, Z) array
        Noise-free magnitude of the first echo (e.g. ``m0 * exp(-r2star * te[0])``).
    mask : (X, Y, Z) bool array
        Region over which the mean signal is taken (the brain or head).
    snr : float
        Target ``mean(|S| in mask) / sigma``.

    Returns
    -------
    float
        ``sigma = mean(magnitude_first_echo[mask]) / snr``, to pass as ``noise_sigma`` to
        :func:`gre_signal` or ``sigma`` to :func:`add_noise`.

    Examples
    --------
    >>> noise_sigma_for_snr(np.full((2, 2, 2), 10.0), np.ones((2, 2, 2), bool), snr=50)
    0.2
    """
    mag = np.abs(np.asarray(magnitude_first_echo))
    m = np.asarray(mask, dtype=bool)
    if m.shape != mag.shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {mag.shape}")
    if not m.any():
        raise ValueError("mask is empty: cannot compute the mean signal")
    if not snr > 0:
        raise ValueError(f"snr must be positive, found {snr}")
    return float(mag[m].mean(dtype=np.float64) / snr)


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator | int) -> np.ndarray:
    """Magnitude image with Rician noise: ``|image + sigma (n_re + i n_im)|``.

    This is what a magnitude-reconstructed structural image (T1, FLAIR) looks like: the
    noise is Gaussian in each channel of the complex data, Rician after taking the
    magnitude (Rayleigh with mean ``sigma * sqrt(pi / 2)`` where the signal is zero).

    Parameters
    ----------
    image : array
        Noise-free real magnitude (or complex) image.
    sigma : float
        Standard deviation of each of the real and imaginary channels.
    rng : numpy Generator or int
        Source of the noise.

    Returns
    -------
    float32 array
        Noisy magnitude, same shape as ``image``.

    References
    ----------
    .. [1] Gudbjartsson H, Patz S. The Rician distribution of noisy MRI data.
       Magn Reson Med 1995;34:910-914.

    Examples
    --------
    >>> noisy = add_rician_noise(np.zeros((8, 8, 8), np.float32), 1.0, rng=0)
    >>> bool(noisy.min() >= 0)
    True
    """
    gen = _generator(rng, "add_rician_noise")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, found {sigma}")
    img = np.asarray(image)
    s = np.float32(sigma)
    re = img.real.astype(np.float32, copy=True)
    re += s * gen.standard_normal(img.shape, dtype=np.float32)
    im = s * gen.standard_normal(img.shape, dtype=np.float32)
    if np.iscomplexobj(img):
        im += img.imag.astype(np.float32)
    return np.hypot(re, im, out=re)


def add_noise(
    image: np.ndarray,
    sigma: float,
    rng: np.random.Generator | int,
    rician: bool = True,
) -> np.ndarray:
    """Add noise of standard deviation ``sigma`` per channel to an image.

    Parameters
    ----------
    image : array
        Noise-free image, real or complex.
    sigma : float
        Standard deviation of the Gaussian noise of each channel.
    rng : numpy Generator or int
        Source of the noise.
    rician : bool
        For a real ``image``: if True (default), return the magnitude of the image plus
        complex Gaussian noise (Rician, see :func:`add_rician_noise`); if False, add real
        Gaussian noise. A complex ``image`` always gets complex Gaussian noise and stays
        complex (complex64).

    Returns
    -------
    ndarray
        float32 (real input) or complex64 (complex input) noisy image.

    Examples
    --------
    >>> add_noise(np.ones((4, 4)), 0.1, rng=0, rician=False).dtype
    dtype('float32')
    """
    img = np.asarray(image)
    if np.iscomplexobj(img):
        gen = _generator(rng, "add_noise")
        out = img.astype(np.complex64, copy=True)
        s = np.float32(sigma)
        out.real += s * gen.standard_normal(img.shape, dtype=np.float32)
        out.imag += s * gen.standard_normal(img.shape, dtype=np.float32)
        return out
    if rician:
        return add_rician_noise(img, sigma, rng)
    gen = _generator(rng, "add_noise")
    out = img.astype(np.float32, copy=True)
    out += np.float32(sigma) * gen.standard_normal(img.shape, dtype=np.float32)
    return out
