"""Regression rows equal statsmodels OLS on the same rows; formatting follows the paper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from qsmiron.simulate.cohort import cohort_table
from qsmiron.stats.models import (
    analysable_rows,
    fit_row,
    fit_table,
    format_estimate,
    format_p,
)
from qsmiron.stats.spec import REFERENCE_SPEC as SPEC


@pytest.fixture(scope="module")
def measures() -> pd.DataFrame:
    """A 95-subject table with three failed subjects and a few missing values."""
    df = cohort_table(95, seed=11)
    df["status"] = "ok"
    df.loc[[3, 40, 77], "status"] = "failed"
    df.loc[[3, 40, 77], ["rel_chi_ppb", "t2_lesion_volume_ml"]] = np.nan
    df.loc[[5, 6], "t2_lesion_volume_ml"] = np.nan
    df.loc[[10], "age"] = np.nan
    df.loc[[12], "therapy"] = np.nan
    return df


def _term(var: str) -> str:
    levels = SPEC.levels.get(var)
    if levels is None:
        return f"np.log({var})" if SPEC.transform_of(var) == "log" else var
    return f"C({var}, Treatment({levels[0]!r}))"


def _statsmodels(df: pd.DataFrame, outcome: str, predictor: str, covs: list[str]):
    """The same model fitted independently with statsmodels' formula API (patsy coding)."""
    formula = f"{_term(outcome)} ~ " + " + ".join(_term(v) for v in [predictor, *covs])
    res = smf.ols(formula, data=df).fit()  # patsy drops rows with missing values itself
    levels = SPEC.levels.get(predictor)
    name = _term(predictor) + (f"[T.{levels[1]}]" if levels else "")
    return res, name


def test_rows_equal_statsmodels(measures):
    ok = measures[measures["status"] == "ok"]
    assert len(analysable_rows(measures)) == 92
    n_rows = 0
    for tspec in SPEC.tables:
        for row in fit_table(analysable_rows(measures), tspec, SPEC):
            res, name = _statsmodels(ok, row.outcome, row.predictor, row.covariates)
            ci = res.conf_int(alpha=0.05).loc[name]
            assert row.status == "ok"
            assert row.n == int(res.nobs)
            assert row.coef == pytest.approx(res.params[name], rel=1e-9, abs=1e-12)
            assert row.se == pytest.approx(res.bse[name], rel=1e-9)
            assert row.ci_low == pytest.approx(ci.iloc[0], rel=1e-9, abs=1e-12)
            assert row.ci_high == pytest.approx(ci.iloc[1], rel=1e-9, abs=1e-12)
            assert row.p == pytest.approx(res.pvalues[name], rel=1e-8)
            n_rows += 1
    assert n_rows == 2 * (4 + 5)


def test_rows_dropped_per_model(measures):
    ok = analysable_rows(measures)
    lesion, _ = fit_row(ok, "t2_lesion_volume_ml", "rel_chi_ppb", (), SPEC)
    lesion_adj, _ = fit_row(ok, "t2_lesion_volume_ml", "rel_chi_ppb", SPEC.covariates, SPEC)
    thal, _ = fit_row(ok, "thalamus_volume_ml", "rel_chi_ppb", (), SPEC)
    assert thal.n == 92
    assert lesion.n == 90  # two missing lesion volumes
    assert lesion_adj.n == 88  # and one missing age, one missing therapy


def test_adjustment_sets_and_terms(measures):
    rows = fit_table(analysable_rows(measures), SPEC.tables[1], SPEC)
    by = {(r.predictor, r.adjusted): r for r in rows}
    assert by["age", True].covariates == ["sex", "disease_duration", "therapy"]
    assert by["sex", True].covariates == ["age", "disease_duration", "therapy"]
    assert by["age", False].covariates == []
    assert by["sex", False].term == "sex[F]" and by["sex", False].reference == "M"
    assert by["therapy", True].term == "therapy[yes]"
    assert by["enhancing_lesions", True].term == "enhancing_lesions[yes]"
    assert by["enhancing_lesions", True].terms == [
        "Intercept", "enhancing_lesions[yes]", "age", "sex[F]", "disease_duration",
        "therapy[yes]"]


def test_zero_one_coding_reads_as_no_yes(measures):
    ok = analysable_rows(measures).copy()
    ref, _ = fit_row(ok, "rel_chi_ppb", "enhancing_lesions", (), SPEC)
    ok["enhancing_lesions"] = (ok["enhancing_lesions"] == "yes").astype(int)
    alt, _ = fit_row(ok, "rel_chi_ppb", "enhancing_lesions", (), SPEC)
    assert alt.term == "enhancing_lesions[yes]" and alt.coef == pytest.approx(ref.coef)


@pytest.mark.parametrize(("p", "text"), [
    (0.0149, ".015"), (0.037, ".037"), (0.04, ".040"), (0.004, ".004"), (0.0004, "<.001"),
    (0.63, ".63"), (0.16, ".16"), (0.951, ".95"), (0.0996, ".10"), (0.999, ">.99"),
    (float("nan"), "n/a")])
def test_format_p(p, text):
    assert format_p(p) == text


def test_format_estimate_like_the_paper():
    assert format_estimate(0.029, 0.006, 0.052, 0.015) == "0.029 (0.006\u20130.052), P = .015"
    assert format_estimate(10.68, 2.31, 19.05, 0.013) == "10.68 (2.31\u201319.05), P = .013"
    assert format_estimate(-0.011, -0.032, 0.010, 0.3) == (
        "\u22120.011 (\u22120.032\u20130.010), P = .30")
    assert format_estimate(1.0, 0.5, 1.5, 0.0001).endswith("P < .001")
    assert format_estimate(float("nan"), 0, 1, 0.5) == "not estimable"
