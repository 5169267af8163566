"""Tukey's ladder of powers: the rung that normalises data of a known distribution wins."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from qsmiron.stats.ladder import LADDER, TEST_NAME, ladder
from qsmiron.stats.plots import ladder_grid


def test_lognormal_chooses_log():
    x = np.random.default_rng(1).lognormal(mean=2.0, sigma=0.9, size=200)
    res = ladder(x, "lesion_ml", spec_transform="log")
    assert res.chosen == "log" and res.agrees
    assert res.rung("identity").p < 1e-6  # strongly right-skewed before the transform
    assert [r.name for r in res.rungs] == list(LADDER)
    assert "D'Agostino-Pearson" in TEST_NAME


def test_normal_chooses_identity():
    x = np.random.default_rng(2).normal(0.0, 1.0, 300)  # negative values: 6 rungs undefined
    res = ladder(x, "z")
    assert res.chosen == "identity" and res.agrees
    assert [r.name for r in res.rungs if r.applicable] == ["cubic", "square", "identity"]
    assert res.rung("log").reason == "undefined for non-positive values"
    assert res.rung("sqrt").reason == "undefined for negative values"


def test_reciprocal_normal_chooses_inverse():
    x = 1.0 / np.random.default_rng(3).normal(10.0, 2.0, 400)  # 1/x is normal
    res = ladder(x, "rate", spec_transform="identity")
    assert res.chosen == "inverse" and res.agrees is False


def test_statistics_are_scipy_normaltest():
    x = np.random.default_rng(4).gamma(4.0, 2.0, 120)
    for name, f in (("sqrt", np.sqrt), ("identity", lambda v: v), ("1/square", lambda v: v**-2)):
        r = ladder(x).rung(name)
        k2, p = st.normaltest(f(x))
        assert (r.chi2, r.p) == pytest.approx((k2, p), rel=1e-12)
        assert r.skewness == pytest.approx(st.skew(f(x)))
        assert r.kurtosis == pytest.approx(st.kurtosis(f(x), fisher=False))


def test_too_few_values_and_missing():
    res = ladder([1.0, 2.0, 3.0, np.nan, 5.0, 6.0, 7.0, 9.0])
    assert res.n == 7 and res.chosen is None and res.agrees is None
    assert not any(r.applicable for r in res.rungs)
    d = res.to_dict("figures/x.png")
    assert d["transforms"][0]["p"] is None and d["test"] == TEST_NAME


def test_ladder_grid_png(tmp_path):
    x = np.random.default_rng(5).lognormal(1.0, 0.7, 60)
    res = ladder(x, "v", "log")
    path = ladder_grid(x, res, tmp_path / "ladder_v.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ladder_grid(x, res, tmp_path / "again.png").read_bytes() == path.read_bytes()
