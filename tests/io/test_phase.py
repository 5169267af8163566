"""Phase scaling: detection of stored ranges and conversion to radians."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from qsmiron.errors import InputError
from qsmiron.io.phase import (
    KNOWN_INTEGER_RANGES,
    PhaseScaling,
    detect_phase_scaling,
    phase_to_radians,
    wrap_to_pi,
)

from .conftest import TE, shared_data_dir, wrapped_phase

PHI = wrapped_phase((16, 12, 6), TE, seed=3)  # radians in [-pi, pi), several wraps


def circ_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute difference of two angles on the circle, in radians."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return np.abs(np.mod(d + np.pi, 2 * np.pi) - np.pi)


def encode(phi: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Radians -> integers lo..hi, with lo meaning -pi (one turn = hi - lo + 1 steps)."""
    period = hi - lo + 1
    steps = np.round((phi + np.pi) / (2 * np.pi) * period).astype(np.int64) % period
    return steps + lo


def assert_in_range(rad: np.ndarray) -> None:
    assert rad.dtype == np.float32
    assert float(rad.min()) >= -np.pi
    assert float(rad.max()) < np.pi


def test_radians_are_kept():
    rad, scaling = phase_to_radians(PHI.astype(np.float32))
    assert scaling.kind == "radians"
    assert scaling.source == "auto"
    np.testing.assert_allclose(rad, PHI, atol=1e-6)
    assert_in_range(rad)


@pytest.mark.parametrize(("lo", "hi"), KNOWN_INTEGER_RANGES)
def test_integer_ranges_round_trip(lo, hi):
    period = hi - lo + 1
    dtype = np.uint16 if lo >= 0 else np.int16
    raw = encode(PHI, lo, hi).astype(dtype)
    rad, scaling = phase_to_radians(raw)
    assert scaling.kind == "integer_range"
    assert (scaling.lo, scaling.hi, scaling.period) == (lo, hi, period)
    assert_in_range(rad)
    # quantisation: one step is 2*pi/period, rounding errs by at most half a step
    assert circ_diff(rad, PHI).max() <= np.pi / period + 1e-5
    # the ends of the range mean -pi and one step below +pi
    ends, _ = phase_to_radians(np.array([lo, hi], dtype=dtype), scale=scaling)
    np.testing.assert_allclose(ends, [-np.pi, np.pi - 2 * np.pi / period], atol=1e-6)


def test_siemens_dcm2niix_range_is_the_4096_circle():
    # Siemens stores 0..4095 with slope 2, intercept -4096: even values -4096..4094
    raw = 2 * encode(PHI, 0, 4095) - 4096
    rad, scaling = phase_to_radians(raw.astype(np.float32))
    assert (scaling.lo, scaling.hi) == (-4096, 4095)
    assert circ_diff(rad, PHI).max() <= 2 * np.pi / 4096 / 2 + 1e-5
    # 4096 stored units (half the circle of 8192) are pi radians
    assert scaling.radians_per_unit == pytest.approx(np.pi / 4096)


def test_radians_0_to_2pi_keep_the_angle():
    raw = np.mod(PHI, 2 * np.pi)
    rad, scaling = phase_to_radians(raw)
    assert scaling.kind == "radians_0_2pi"
    assert circ_diff(rad, PHI).max() < 1e-5
    assert_in_range(rad)


def test_other_symmetric_range_scales_max_to_pi():
    m = 0.0036743774
    phi = PHI.copy()
    phi[0, 0, 0, 0], phi[1, 0, 0, 0] = -np.pi, np.pi * (1 - 1e-7)  # the extremes, as scanners
    raw = (phi / np.pi * m).astype(np.float32)
    rad, scaling = phase_to_radians(raw)
    assert scaling.kind == "symmetric_range"
    assert scaling.hi == pytest.approx(m, rel=1e-6)
    assert circ_diff(rad, phi).max() < 1e-5
    assert_in_range(rad)


def test_real_phase_file_of_romeo_test_data():
    data_dir = shared_data_dir()
    if data_dir is None:
        pytest.skip("shared test data not available")
    path = data_dir / "gre_small" / "Phase.nii"
    raw = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float64)
    rad, scaling = phase_to_radians(raw.astype(np.float32), path)
    assert rad.shape == (51, 51, 41, 3)
    assert_in_range(rad)
    assert scaling.kind == "symmetric_range"
    m = 0.0036743774  # +-m is +-pi in this file
    assert scaling.hi == pytest.approx(m, rel=1e-6)
    assert scaling.lo == pytest.approx(-m, rel=1e-6)
    # the largest stored value is +pi (wrapped, so it may read -pi), the smallest -pi
    flat_rad, flat_raw = rad.reshape(-1), raw.reshape(-1)
    assert circ_diff(flat_rad[np.argmax(flat_raw)], np.pi) < 1e-5
    assert circ_diff(flat_rad[np.argmin(flat_raw)], -np.pi) < 1e-5
    # linear inside the circle
    inner = np.abs(flat_raw) < 0.9 * m
    np.testing.assert_allclose(flat_rad[inner], flat_raw[inner] * np.pi / m, atol=2e-6)


def test_real_magnitude_file_is_refused_as_phase():
    data_dir = shared_data_dir()
    if data_dir is None:
        pytest.skip("shared test data not available")
    path = data_dir / "gre_small" / "Mag.nii"
    raw = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    with pytest.raises(InputError) as err:
        phase_to_radians(raw, path)
    msg = str(err.value)
    assert "Mag.nii" in msg
    assert "non-negative" in msg and "swapped" in msg
    assert "--phase-range" in msg and "--phase-unit rad" in msg


def test_magnitude_in_integer_range_is_refused():
    rng = np.random.default_rng(4)
    background = np.abs(rng.normal(0, 30, 6000))  # Rayleigh-like noise
    tissue = rng.uniform(800, 2500, 3000)
    bright = np.linspace(3000, 4095, 200)
    raw = np.round(np.concatenate([background, tissue, bright])).astype(np.uint16)
    with pytest.raises(InputError) as err:
        phase_to_radians(raw, "sub-01_echo-1_part-phase_MEGRE.nii.gz")
    msg = str(err.value)
    assert "sub-01_echo-1_part-phase_MEGRE.nii.gz" in msg
    assert "0..4095" in msg and "magnitude" in msg and "swapped" in msg


def test_phase_covering_a_small_part_of_the_circle_is_ambiguous():
    rng = np.random.default_rng(5)
    raw = np.concatenate([rng.normal(0.0, 0.2, 5000), [-np.pi, np.pi - 1e-3]])
    with pytest.raises(InputError, match="small part of the circle") as err:
        phase_to_radians(raw, "p.nii")
    assert "p.nii" in str(err.value)


def test_range_just_short_of_a_known_one_is_ambiguous():
    raw = PHI / np.pi * 3.0  # radians-like but never reaching +-pi
    with pytest.raises(InputError, match=r"just short of the range \+-3.14159"):
        phase_to_radians(raw, "p.nii")


def test_asymmetric_unknown_range_is_ambiguous():
    raw = (PHI + np.pi) / (2 * np.pi) * 4.0 - 1.0  # -1..3
    with pytest.raises(InputError, match="neither a known phase range nor symmetric"):
        phase_to_radians(raw, "p.nii")


def test_nonnegative_unknown_range_is_refused():
    raw = np.round((PHI + np.pi) / (2 * np.pi) * 1000)
    with pytest.raises(InputError, match="all non-negative and matching no known phase range"):
        phase_to_radians(raw, "p.nii")


def test_constant_and_nan_phase_are_refused():
    with pytest.raises(InputError, match="constant"):
        phase_to_radians(np.zeros((4, 4, 4)), "c.nii")
    bad = PHI.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        phase_to_radians(bad, "n.nii")


def test_user_range_integer_and_float():
    raw = encode(PHI, -4096, 4095)
    rad, scaling = phase_to_radians(raw, scale=(-4096, 4095))
    assert scaling.source == "user" and scaling.period == 8192
    assert circ_diff(rad, PHI).max() <= np.pi / 8192 + 1e-5
    # float range: one turn is hi - lo; the middle of the range is 0 rad
    rad, scaling = phase_to_radians(np.array([-0.5, -0.25, 0.0, 0.25]), scale=(-0.5, 0.5))
    np.testing.assert_allclose(rad, [-np.pi, -np.pi / 2, 0.0, np.pi / 2], atol=1e-6)


def test_user_scale_errors():
    raw = encode(PHI, 0, 4095)
    with pytest.raises(InputError, match="not radians"):
        phase_to_radians(raw, "x.nii", scale="rad")
    with pytest.raises(InputError, match="lo < hi"):
        phase_to_radians(raw, "x.nii", scale=(10, -10))
    with pytest.raises(InputError, match="outside the given range 0..1000"):
        phase_to_radians(raw, "x.nii", scale=(0, 1000))
    with pytest.raises(InputError, match="'auto', 'rad' or"):
        phase_to_radians(raw, "x.nii", scale="degrees")


def test_wrap_to_pi_is_half_open():
    x = np.array([-np.pi, np.pi, 3 * np.pi, -3 * np.pi, 0.5, 100.0, np.pi - 1e-9])
    w = wrap_to_pi(x)
    assert w.dtype == np.float32
    assert np.all(w >= -np.pi) and np.all(w < np.pi)
    assert circ_diff(w, x).max() < 1e-6
    assert w[4] == np.float32(0.5)


def test_scaling_is_json_ready_provenance():
    scaling = detect_phase_scaling(encode(PHI, -2048, 2047))
    record = json.loads(json.dumps(scaling.as_dict()))
    assert record["kind"] == "integer_range"
    assert record["lo"] == -2048 and record["hi"] == 2047
    assert record["radians_per_unit"] == pytest.approx(np.pi / 2048)
    assert "-2048..2047" in record["description"]
    assert isinstance(scaling, PhaseScaling)
