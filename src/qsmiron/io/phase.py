"""Phase images: detect how the scanner stored the phase and convert it to radians.

Scanners and converters store GRE phase in many ways: radians in ``[-pi, pi]`` or
``[0, 2*pi)``, integers in ``-4096..4095`` (Siemens after dcm2niix), ``-2048..2047``,
``0..4095``, ``-32768..32767`` or ``0..65535``, or floats over some other symmetric range (for
example ``+-0.003674`` meaning ``+-pi``). :func:`phase_to_radians` recognises these from the
values themselves, refuses to guess when the values are ambiguous, and records what it did in a
:class:`PhaseScaling` so that it can be written into provenance.

Every conversion is ``rad = wrap((value - offset) * 2*pi / period)`` where ``wrap`` maps onto
``[-pi, pi)``. For a stored range ``lo..hi`` mapped linearly onto ``-pi..pi`` the offset is the
middle of the circle, ``lo + period / 2``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qsmiron.errors import InputError

__all__ = [
    "KNOWN_INTEGER_RANGES",
    "PhaseScaling",
    "apply_phase_scaling",
    "detect_phase_scaling",
    "phase_to_radians",
    "wrap_to_pi",
]

logger = logging.getLogger(__name__)

TWO_PI = 2.0 * np.pi

#: Integer ranges that scanners and converters use for phase, each mapped onto ``[-pi, pi)``.
KNOWN_INTEGER_RANGES: tuple[tuple[int, int], ...] = (
    (-2048, 2047),
    (-4096, 4095),
    (-32768, 32767),
    (0, 4095),
    (0, 65535),
)

#: How to tell qsmiron the scaling when it cannot be detected.
HOW_TO_SET = (
    "set it explicitly with --phase-range LO HI (the stored values that mean -pi and +pi; "
    "phase_scale=(lo, hi) in Python) or --phase-unit rad (phase_scale='rad')"
)

# Largest float32 strictly below pi: float32(pi) itself is larger than pi.
_PI32_BELOW = float(np.nextafter(np.float32(np.pi), np.float32(0.0)))

# Detection thresholds (fractions of the candidate circle's period).
_END_TOL = 0.01  # the data must reach both ends of a candidate range within 1% of its period
_RAD_END_TOL = 0.02  # radians: within 2% of +-pi
_N_BINS = 32  # histogram bins over the candidate circle
_MIN_BIN_FRACTION = 0.05  # a bin is "occupied" with >= 5% of the uniform expectation
_MIN_OCCUPIED = 0.75  # phase must occupy >= 75% of the bins (span most of the circle)
_MAX_SAMPLE = 4_000_000  # values used for histograms (strided sample of large images)


@dataclass(frozen=True)
class PhaseScaling:
    """How stored phase values were converted to radians.

    The conversion is ``rad = wrap((value - offset) * 2*pi / period)`` onto ``[-pi, pi)``.

    Attributes
    ----------
    kind : str
        ``"radians"`` (``[-pi, pi]``), ``"radians_0_2pi"`` (``[0, 2*pi)``, angle kept),
        ``"integer_range"`` (a known scanner range), ``"symmetric_range"`` (``-M..M`` means
        ``-pi..pi``), ``"user_range"`` (a range given by the user) or ``"complex"`` (phase
        computed from real and imaginary images).
    lo, hi : float
        Stored values meaning ``-pi`` and (just below) ``+pi``.
    offset : float
        Stored value meaning 0 rad.
    period : float
        Stored-value span of one full turn (2*pi).
    source : str
        ``"auto"`` (detected from the values), ``"user"`` (argument) or ``"sidecar"``
        (``"Units": "rad"`` in the JSON sidecar).
    """

    kind: str
    lo: float
    hi: float
    offset: float
    period: float
    source: str = "auto"

    @property
    def radians_per_unit(self) -> float:
        """Scale factor from stored units to radians."""
        return TWO_PI / self.period

    def as_dict(self) -> dict[str, Any]:
        """The scaling as a JSON-ready dictionary (for provenance sidecars)."""
        d = asdict(self)
        d["radians_per_unit"] = self.radians_per_unit
        d["description"] = self.describe()
        return d

    def describe(self) -> str:
        """One-line human description, e.g. ``'integer range -4096..4095 -> [-pi, pi)'``."""
        if self.kind == "radians":
            what = "radians in [-pi, pi]"
        elif self.kind == "radians_0_2pi":
            what = "radians in [0, 2*pi), wrapped to [-pi, pi)"
        elif self.kind == "complex":
            what = "angle of real + i*imag"
        else:
            label = self.kind.replace("_", " ")
            what = f"{label} {self.lo:g}..{self.hi:g} -> [-pi, pi)"
        return f"{what} ({self.source})"


def wrap_to_pi(phase: np.ndarray) -> np.ndarray:
    """Wrap radians onto ``[-pi, pi)`` and return float32 strictly inside that interval.

    Parameters
    ----------
    phase : ndarray
        Phase in radians, any range.

    Returns
    -------
    ndarray of float32
        Wrapped phase. Values are clipped to the float32 numbers inside ``[-pi, pi)`` (the
        float32 nearest to pi is larger than pi), so ``out >= -np.pi`` and ``out < np.pi`` hold.
    """
    p = np.asarray(phase, dtype=np.float64)
    out = np.mod(p + np.pi, TWO_PI) - np.pi
    out = out.astype(np.float32)
    np.clip(out, -_PI32_BELOW, _PI32_BELOW, out=out)
    return out


def apply_phase_scaling(data: np.ndarray, scaling: PhaseScaling) -> np.ndarray:
    """Convert stored phase values to radians with a known :class:`PhaseScaling`.

    Parameters
    ----------
    data : ndarray
        Stored phase values.
    scaling : PhaseScaling
        The conversion to apply.

    Returns
    -------
    ndarray of float32
        Phase in radians in ``[-pi, pi)``, same shape as ``data``.
    """
    arr = np.asarray(data)
    out = np.empty(arr.shape, dtype=np.float32)
    factor = TWO_PI / scaling.period
    if arr.ndim >= 4:  # convert one volume at a time to bound the float64 temporaries
        for idx in np.ndindex(*arr.shape[3:]):
            sl = (slice(None),) * 3 + idx
            out[sl] = wrap_to_pi((arr[sl].astype(np.float64) - scaling.offset) * factor)
    else:
        out[...] = wrap_to_pi((arr.astype(np.float64) - scaling.offset) * factor)
    return out


def _sample(flat: np.ndarray) -> np.ndarray:
    step = max(1, flat.size // _MAX_SAMPLE)
    return flat[::step]


def _occupancy(sample: np.ndarray, lo: float, period: float) -> float:
    """Fraction of the circle [lo, lo + period) that holds a fair share of the values."""
    vals = sample[sample != 0] if np.count_nonzero(sample) >= 100 else sample
    if vals.size == 0:
        return 0.0
    pos = np.floor((vals.astype(np.float64) - lo) / period * _N_BINS).astype(np.int64)
    counts = np.bincount(np.clip(pos, 0, _N_BINS - 1), minlength=_N_BINS)
    threshold = _MIN_BIN_FRACTION * vals.size / _N_BINS
    return float(np.mean(counts >= max(threshold, 1.0)))


def _magnitude_like(sample: np.ndarray, lo: float, period: float) -> bool:
    """True when the values pile up at the bottom of a non-negative range and not at its top.

    Phase is a circle: the density just above -pi equals the density just below +pi. A
    magnitude image has most of its values (background, tissue) low and almost none at the top.
    """
    w = period / 16.0
    n_low = int(np.count_nonzero(sample < lo + w))
    n_high = int(np.count_nonzero(sample >= lo + period - w))
    return n_low > 3 * n_high + 0.01 * sample.size


def _ambiguous(path: Path | None, what: str) -> InputError:
    return InputError(f"cannot tell how the phase is scaled: {what}; {HOW_TO_SET}", path)


def _swapped_hint() -> str:
    return "it looks like a magnitude image (magnitude and phase may be swapped)"


def detect_phase_scaling(data: np.ndarray, path: str | Path | None = None) -> PhaseScaling:
    """Detect how phase values are stored, from the values alone.

    Recognised, in this order: radians in ``[-pi, pi]``; the integer ranges in
    :data:`KNOWN_INTEGER_RANGES`; radians in ``[0, 2*pi)``; any other symmetric range
    ``-M..M`` (``M`` meaning pi). A candidate is accepted only if the values fill it: they reach
    both of its ends (within 1-2% of a turn) and occupy at least 75% of 32 bins around the
    circle, as wrapped phase does.

    Parameters
    ----------
    data : ndarray
        Stored phase values (all echoes together, so that later echoes' wraps count).
    path : str or Path, optional
        File the values came from, named in errors.

    Returns
    -------
    PhaseScaling
        The detected scaling (``source="auto"``).

    Raises
    ------
    InputError
        The values are not finite, constant, non-negative but in no known range, look like a
        magnitude image, cover only a small part of every candidate circle, or sit between
        candidates. The message tells the user how to set the scaling explicitly.
    """
    p = None if path is None else Path(path)
    flat = np.asarray(data).reshape(-1)
    if flat.size == 0:
        raise InputError("phase image is empty", p)
    if not np.all(np.isfinite(flat)):
        raise InputError("phase image contains NaN or infinite values", p)
    vmin, vmax = float(flat.min()), float(flat.max())
    if vmin == vmax:
        raise InputError(f"phase image is constant (every value is {vmin:g})", p)
    sample = _sample(flat)
    found = f"values span {vmin:.6g}..{vmax:.6g}"

    def fills(lo: float, hi: float, period: float, end_tol: float) -> bool:
        tol = end_tol * period
        return vmin <= lo + tol and vmax >= hi - tol

    # 1. radians in [-pi, pi]
    rad_tol = 1e-3 * np.pi
    if vmin >= -np.pi - rad_tol and vmax <= np.pi + rad_tol:
        if fills(-np.pi, np.pi, TWO_PI, _RAD_END_TOL):
            if _occupancy(sample, -np.pi, TWO_PI) >= _MIN_OCCUPIED:
                return PhaseScaling("radians", -np.pi, np.pi, 0.0, TWO_PI)
            raise _ambiguous(
                p,
                f"{found}, like radians, but they cover only a small part of "
                "the circle, as unwrapped or masked phase would",
            )

    # 2. known integer ranges (hi is the last stored value, so one turn is hi - lo + 1)
    for lo, hi in KNOWN_INTEGER_RANGES:
        period = float(hi - lo + 1)
        if vmin >= lo - 0.5 and vmax <= hi + 0.5 and fills(lo, hi, period, _END_TOL):
            occ = _occupancy(sample, lo, period)
            if lo >= 0 and _magnitude_like(sample, lo, period):
                raise _ambiguous(
                    p, f"{found}, inside the phase range {lo}..{hi}, but {_swapped_hint()}"
                )
            if occ < _MIN_OCCUPIED:
                raise _ambiguous(
                    p,
                    f"{found}, the range {lo}..{hi}, but they occupy only {occ:.0%} of that circle",
                )
            return PhaseScaling("integer_range", float(lo), float(hi), lo + period / 2.0, period)

    # 3. radians in [0, 2*pi): the stored value is an angle; keep it and wrap.
    if (
        vmin >= -rad_tol
        and vmax <= TWO_PI + 2 * rad_tol
        and fills(0.0, TWO_PI, TWO_PI, _RAD_END_TOL)
    ):
        if _magnitude_like(sample, 0.0, TWO_PI):
            raise _ambiguous(p, f"{found}, like radians in [0, 2*pi), but {_swapped_hint()}")
        if _occupancy(sample, 0.0, TWO_PI) >= _MIN_OCCUPIED:
            return PhaseScaling("radians_0_2pi", 0.0, TWO_PI, 0.0, TWO_PI)
        raise _ambiguous(
            p, f"{found}, like radians in [0, 2*pi), but they cover only a small part of the circle"
        )

    if vmin >= 0:
        known = ", ".join(f"{a}..{b}" for a, b in KNOWN_INTEGER_RANGES)
        raise _ambiguous(
            p,
            f"{found}, all non-negative and matching no known phase range "
            f"(-pi..pi, 0..2*pi, {known}); if this is a magnitude image, "
            "magnitude and phase may be swapped",
        )

    # 4. any other symmetric range -M..M meaning -pi..pi
    m = max(-vmin, vmax)
    if abs(vmin + vmax) > 0.02 * m:
        raise _ambiguous(
            p, f"{found}, which is neither a known phase range nor symmetric about zero"
        )
    near = [r for r in (np.pi, 2048.0, 4096.0, 32768.0) if 0.8 * r <= m < (1 - _END_TOL) * r]
    if near:
        raise _ambiguous(
            p,
            f"{found}, just short of the range +-{near[0]:g}; this may be "
            f"that range not filled, or a range +-{m:.6g}",
        )
    occ = _occupancy(sample, -m, 2.0 * m)
    if occ < _MIN_OCCUPIED:
        raise _ambiguous(
            p,
            f"{found}, symmetric about zero, but they occupy only {occ:.0%} "
            "of the circle +-max, unlike wrapped phase",
        )
    return PhaseScaling("symmetric_range", -m, m, 0.0, 2.0 * m)


def _user_scaling(scale: Any, path: Path | None, data: np.ndarray) -> PhaseScaling:
    """Build the scaling the caller asked for ("rad" or a (lo, hi) pair) and check it fits."""
    flat = np.asarray(data).reshape(-1)
    if flat.size and not np.all(np.isfinite(flat)):
        raise InputError("phase image contains NaN or infinite values", path)
    vmin = float(flat.min()) if flat.size else 0.0
    vmax = float(flat.max()) if flat.size else 0.0
    if isinstance(scale, str):
        if scale.lower() not in ("rad", "rads", "radian", "radians"):
            raise InputError(f"unknown phase scale {scale!r}; use 'auto', 'rad' or (lo, hi)", path)
        tol = 1e-3 * np.pi
        if vmin < -np.pi - tol or vmax > TWO_PI + tol:
            raise InputError(
                f"phase values span {vmin:.6g}..{vmax:.6g}, which is not radians (expected "
                "within [-pi, pi] or [0, 2*pi)); give the stored range with --phase-range LO HI",
                path,
            )
        return PhaseScaling("radians", -np.pi, np.pi, 0.0, TWO_PI, source="user")
    try:
        lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise InputError(
            f"phase scale must be 'auto', 'rad' or a (lo, hi) pair, got {scale!r}", path
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise InputError(f"phase range must have lo < hi, got ({lo:g}, {hi:g})", path)
    integral = lo == round(lo) and hi == round(hi) and hi - lo >= 255
    integral = integral and bool(np.all(flat[:100_000] == np.round(flat[:100_000])))
    period = hi - lo + 1.0 if integral else hi - lo
    slack = 0.01 * period
    if vmin < lo - slack or vmax > hi + slack:
        raise InputError(
            f"phase values span {vmin:.6g}..{vmax:.6g}, outside the given range "
            f"{lo:g}..{hi:g}; check --phase-range",
            path,
        )
    return PhaseScaling("user_range", lo, hi, lo + period / 2.0, period, source="user")


def phase_to_radians(
    data: np.ndarray,
    path: str | Path | None = None,
    scale: str | tuple[float, float] | PhaseScaling = "auto",
) -> tuple[np.ndarray, PhaseScaling]:
    """Convert a phase image to radians in ``[-pi, pi)``, detecting the stored scaling.

    Parameters
    ----------
    data : ndarray
        Stored phase values, any shape (all echoes together for multi-echo data).
    path : str or Path, optional
        File the values came from, named in errors.
    scale : {"auto", "rad"} or (lo, hi) or PhaseScaling
        ``"auto"`` detects the scaling (see :func:`detect_phase_scaling`); ``"rad"`` says the
        values are radians (``[-pi, pi]`` or ``[0, 2*pi)``); ``(lo, hi)`` maps ``lo..hi``
        linearly onto ``-pi..pi``. For integer ranges ``hi`` is the last stored value, so
        ``(-4096, 4095)`` is one turn of 8192 steps; for float ranges one turn is ``hi - lo``.

    Returns
    -------
    phase : ndarray of float32
        Phase in radians, ``-pi <= phase < pi``.
    scaling : PhaseScaling
        What was detected or applied, for provenance.

    Raises
    ------
    InputError
        The scaling cannot be detected unambiguously, or the values do not fit the scaling given.

    Examples
    --------
    >>> import numpy as np
    >>> raw = np.array([-4096, -2048, 0, 2048, 4095])
    >>> rad, s = phase_to_radians(np.resize(raw, 4096), scale=(-4096, 4095))
    >>> float(rad[2])
    0.0
    """
    p = None if path is None else Path(path)
    if isinstance(scale, PhaseScaling):
        scaling = scale
    elif isinstance(scale, str) and scale.lower() == "auto":
        scaling = detect_phase_scaling(data, p)
    else:
        scaling = _user_scaling(scale, p, data)
    logger.info("phase scaling%s: %s", f" of {p}" if p else "", scaling.describe())
    return apply_phase_scaling(data, scaling), scaling
