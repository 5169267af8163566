"""Power of a correlation study by Fisher's z: the reference study's published figures."""

from __future__ import annotations

import math

import pytest
from scipy.stats import norm

from qsmiron.errors import InputError
from qsmiron.stats.power import n_for_power, power


def test_reference_study_power_and_n():
    # study.md: Fisher z gives 78.8% at n = 95 and n = 98 for exactly 80% (r = 0.28, alpha .05)
    assert round(100 * power(0.28, 95, 0.05), 1) == 78.8
    assert n_for_power(0.28, 0.80, 0.05) == 98
    assert power(0.28, 97, 0.05) < 0.80 <= power(0.28, 98, 0.05)


def test_formula_two_sided_with_opposite_tail():
    r, n, alpha = 0.28, 95, 0.05
    delta = math.atanh(r) * math.sqrt(n - 3)
    c = norm.ppf(1 - alpha / 2)
    assert power(r, n, alpha) == pytest.approx(norm.cdf(delta - c) + norm.cdf(-delta - c),
                                               rel=1e-12)
    # the opposite tail is tiny here and does not change the published 78.8%
    assert norm.cdf(-delta - c) < 1e-5
    assert round(100 * norm.cdf(delta - c), 1) == 78.8


def test_symmetry_and_limits():
    assert power(-0.28, 95) == pytest.approx(power(0.28, 95))
    assert power(0.01, 4) == pytest.approx(0.05, abs=0.001)  # no effect: power -> alpha
    assert power(0.9, 50) > 0.999
    # a larger cohort never has less power; the n found is the smallest that reaches it
    ns = [n_for_power(0.28, p) for p in (0.5, 0.8, 0.9, 0.95)]
    assert ns == sorted(ns)
    # closed form ((z_a + z_b) / atanh r)^2 + 3, rounded up: 29.04 -> 30 for r = 0.5
    assert n_for_power(0.5, 0.8) == 30


@pytest.mark.parametrize("kwargs", [{"r": 0.0, "n": 95}, {"r": 1.0, "n": 95},
                                    {"r": 0.3, "n": 3}, {"r": 0.3, "n": 95, "alpha": 1.5}])
def test_bad_arguments(kwargs):
    with pytest.raises(InputError):
        power(**kwargs)
    with pytest.raises(InputError):
        n_for_power(0.28, power=1.0)
