"""Study specs: the reference study by default, TOML files, and clear errors for bad specs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qsmiron.errors import InputError
from qsmiron.simulate.cohort import cohort_table
from qsmiron.stats.models import ModelError, fit_row
from qsmiron.stats.spec import REFERENCE_SPEC, load_spec, parse_subgroup
from qsmiron.stats.tables import run_stats

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return cohort_table(60, seed=5)


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_docs_spec_is_the_default():
    spec = load_spec(DOCS / "study.toml")
    assert spec.source == DOCS / "study.toml"
    assert dataclasses.replace(spec, source=None) == REFERENCE_SPEC
    assert load_spec(None) is REFERENCE_SPEC


def test_reference_spec_contents():
    t1, t2 = REFERENCE_SPEC.tables
    assert t1.outcomes == ("thalamus_volume_ml", "total_gm_volume_ml", "cortical_thickness_mm",
                           "t2_lesion_volume_ml")
    assert t1.predictors == ("rel_chi_ppb",)
    assert t2.outcomes == ("rel_chi_ppb",)
    assert t2.predictors == ("enhancing_lesions", "age", "sex", "therapy", "disease_duration")
    assert REFERENCE_SPEC.transform_of("t2_lesion_volume_ml") == "log"
    assert REFERENCE_SPEC.covariates_for("rel_chi_ppb", "therapy") == (
        "age", "sex", "disease_duration")
    assert [g.label for g in REFERENCE_SPEC.subgroups] == ["age <= 50"]


def test_subgroup_parsing_is_not_eval():
    g = parse_subgroup("age <= 50")
    assert (g.column, g.op, g.value, g.slug) == ("age", "<=", 50.0, "age-le-50")
    df = pd.DataFrame({"age": [30, 50, 51, np.nan], "sex": ["F", "M", "F", "F"]})
    assert g.mask(df).tolist() == [True, True, False, False]
    assert parse_subgroup("sex == 'F'").mask(df).tolist() == [True, False, True, True]
    assert parse_subgroup({"column": "age", "op": ">", "value": 40}).label == "age > 40"
    for bad in ("__import__('os').system('true')", "age ~ 50", "age <="):
        with pytest.raises(InputError, match="column operator value"):
            parse_subgroup(bad)


def test_custom_spec_file(tmp_path, cohort):
    path = _spec(tmp_path, """
covariates = ["age", "sex"]
subgroups = [{column = "sex", op = "==", value = "F"}]
[transforms]
t2_lesion_volume_ml = "sqrt"
[[tables]]
id = "lesions"
outcomes = ["t2_lesion_volume_ml"]
predictors = ["rel_chi_ppb", "edss"]
""")
    spec = load_spec(path)
    assert spec.tables[0].id == "lesions" and spec.covariates == ("age", "sex")
    res = run_stats(cohort, spec, tmp_path / "out", figures=False)
    assert (tmp_path / "out" / "tables" / "lesions_sex-eq-F.csv").is_file()
    row = res.tables[0].rows[1]
    assert row.transform == "sqrt" and row.covariates == ["age", "sex"]
    women = res.tables[1].rows
    assert women[0].n == int((cohort["sex"] == "F").sum())
    assert women[1].covariates == ["age"]  # sex is fixed by the subgroup


@pytest.mark.parametrize(("text", "match"), [
    ("tables = 3", "array of tables"),
    ("covarites = ['age']", "unknown spec key"),
    ("[transforms]\nt2_lesion_volume_ml = 'logarithm'", "unknown transform 'logarithm'"),
    ("subgroups = ['age =< 50']", "column operator value"),
    ("[levels]\nsex = ['F']", "at least two distinct"),
    ("ci_level = 95", "ci_level must be in"),
    ("min_rows = 'ten'", "min_rows must be a number"),
    ("covariates = [", "not valid TOML"),
])
def test_bad_spec_files_name_the_file(tmp_path, text, match):
    path = _spec(tmp_path, text)
    with pytest.raises(InputError, match=match) as exc:
        load_spec(path)
    assert exc.value.path == path and "study.toml" in str(exc.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(InputError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")


def test_unknown_column(tmp_path, cohort):
    path = _spec(tmp_path, "covariates = ['age', 'gender']")
    with pytest.raises(InputError, match=r"unknown column\(s\) \['gender'\]") as exc:
        run_stats(cohort, load_spec(path), tmp_path / "out", figures=False)
    assert exc.value.path == path
    path = _spec(tmp_path, "[transforms]\nlesion_volume = 'log'")
    with pytest.raises(InputError, match=r"lesion_volume \(in \[transforms\]\)"):
        run_stats(cohort, load_spec(path), tmp_path / "out", figures=False)


def test_unknown_column_without_spec_file_names_the_table(tmp_path, cohort):
    with pytest.raises(InputError, match="rel_chi_ppb") as exc:
        run_stats(cohort.drop(columns="rel_chi_ppb"), None, tmp_path / "o", source="m.tsv",
                  figures=False)
    assert exc.value.path == Path("m.tsv")


def test_too_few_rows(tmp_path, cohort):
    oldest = float(np.sort(cohort["age"])[-6])  # the six oldest: fewer than min_rows (10)
    path = _spec(tmp_path, f"subgroups = ['age >= {oldest}']")
    with pytest.raises(ModelError, match="only 6 rows") as exc:
        run_stats(cohort, load_spec(path), tmp_path / "out", figures=False)
    assert exc.value.kind == "few_rows" and exc.value.path == path
    assert f"age >= {oldest:g}" in str(exc.value) and "parameters" in str(exc.value)
    # adjusted rows need parameters + min_residual_df rows: 9 rows for 5 parameters is too few
    few = cohort.iloc[:9]
    spec = dataclasses.replace(REFERENCE_SPEC, min_rows=5)
    fit_row(few, "rel_chi_ppb", "age", (), spec)
    with pytest.raises(ModelError, match="only 9 rows .* for 5 parameters; at least 10"):
        fit_row(few, "rel_chi_ppb", "age", ("sex", "disease_duration", "therapy"), spec)


def test_constant_column(tmp_path, cohort):
    df = cohort.copy()
    df["therapy"] = "yes"
    with pytest.raises(ModelError, match="column therapy is constant") as exc:
        run_stats(df, load_spec(DOCS / "study.toml"), tmp_path / "out", figures=False)
    assert exc.value.kind == "constant" and exc.value.path == DOCS / "study.toml"


def test_constant_within_subgroup(cohort):
    young = cohort[cohort["age"] <= 50].copy()
    young["enhancing_lesions"] = "no"
    with pytest.raises(ModelError, match=re.escape("enhancing_lesions is constant (all 'no')")):
        fit_row(young, "rel_chi_ppb", "enhancing_lesions", (), REFERENCE_SPEC)


def test_collinear_covariates(tmp_path, cohort):
    df = cohort.copy()
    df["age_at_onset"] = df["age"] - df["disease_duration"]
    path = _spec(tmp_path, "covariates = ['age', 'disease_duration', 'age_at_onset']")
    with pytest.raises(ModelError, match="linearly dependent") as exc:
        run_stats(df, load_spec(path), tmp_path / "out", figures=False)
    assert exc.value.kind == "collinear"
    assert all(v in str(exc.value) for v in ("age", "disease_duration", "age_at_onset"))
    # nearly collinear: a copy of age with 0.1-year noise
    rng = np.random.default_rng(0)
    df["age_reported"] = df["age"] + rng.normal(0, 0.1, len(df))
    path = _spec(tmp_path, "covariates = ['age', 'age_reported']")
    with pytest.raises(ModelError, match="nearly collinear .*condition number"):
        run_stats(df, load_spec(path), tmp_path / "out", figures=False)


def test_log_of_non_positive(tmp_path, cohort):
    df = cohort.copy()
    df.loc[4, "t2_lesion_volume_ml"] = 0.0
    with pytest.raises(ModelError, match="'log' of t2_lesion_volume_ml needs positive"):
        run_stats(df, None, tmp_path / "out", figures=False)


def test_values_outside_levels(tmp_path, cohort):
    df = cohort.copy()
    df.loc[0, "sex"] = "female"
    with pytest.raises(InputError, match=r"sex has value\(s\) \['female'\]"):
        run_stats(df, None, tmp_path / "out", figures=False)


def test_no_complete_rows(cohort):
    df = cohort.copy()
    df.loc[df.index[::2], "rel_chi_ppb"] = np.nan
    df.loc[df.index[1::2], "t2_lesion_volume_ml"] = np.nan
    with pytest.raises(ModelError, match="only 0 rows") as exc:
        fit_row(df, "t2_lesion_volume_ml", "rel_chi_ppb", (), REFERENCE_SPEC)
    assert exc.value.kind == "few_rows"
