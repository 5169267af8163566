"""Linear regressions of the study tables, unadjusted and adjusted, with statsmodels OLS.

Each row of a table is one ordinary least-squares model ``outcome ~ predictor [+ covariates]``
fitted by :class:`statsmodels.regression.linear_model.OLS` on an explicit design matrix:

* an ``Intercept`` column;
* numeric variables as they are, after the spec's transform (e.g. natural log of T2 lesion
  volume);
* categorical variables as 0/1 indicator columns, one per non-reference level, named like
  patsy/statsmodels name them: ``sex[F]`` (female vs male), ``therapy[yes]``,
  ``enhancing_lesions[yes]``. The reference level comes first in the spec's ``levels``.

Rows whose ``status`` is not ``ok`` (when the table has a ``status`` column) are left out of
everything; rows missing any of a model's variables are left out of that model only, so each
row reports its own n. The coefficient, its two-sided confidence interval (t distribution with
n - k degrees of freedom) and p-value are statsmodels' own.

Before fitting, each model is checked, and a failed check raises :class:`ModelError` (an
:class:`~qsmiron.errors.InputError`) that names the spec file or table, the model and what is
wrong: too few rows (n must be at least ``min_rows`` and at least the number of parameters plus
``min_residual_df``), a constant column in the analysed rows, collinearity (rank-deficient
design, or a condition number of the standardised design above ``max_condition``), values
outside a transform's domain. A variable with no values at all in the analysed rows (e.g.
cortical thickness when no segmentation gave it) is not an error: the row is reported as not
estimable with n = 0.

References
----------
.. [1] Chiang GC, Hu J, Morris E, et al. Quantitative susceptibility mapping of the thalamus:
   relationships with thalamic volume, total gray matter volume, and T2 lesion burden.
   AJNR Am J Neuroradiol 2018;39:467-472.
.. [2] Seabold S, Perktold J. Statsmodels: econometric and statistical modeling with Python.
   Proceedings of the 9th Python in Science Conference, 2010.
.. [3] Belsley DA, Kuh E, Welsch RE. Regression Diagnostics: Identifying Influential Data and
   Sources of Collinearity. Wiley, 1980 (condition numbers of scaled designs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm

from qsmiron.errors import InputError
from qsmiron.stats.spec import StudySpec, Subgroup, TableSpec, apply_transform

__all__ = [
    "ModelError",
    "ModelRow",
    "analysable_rows",
    "build_design",
    "describe_model",
    "fit_row",
    "fit_table",
    "format_estimate",
    "format_number",
    "format_p",
    "format_p_text",
    "is_categorical",
]

_MINUS = "\u2212"
_DASH = "\u2013"


class ModelError(InputError):
    """A model cannot be fitted on the data: too few rows, constant, collinear, out of domain.

    Attributes
    ----------
    kind : str
        ``"empty"`` (a variable has no values), ``"few_rows"``, ``"constant"``,
        ``"collinear"`` or ``"domain"``.
    n : int
        Rows the model would have used.
    """

    def __init__(self, message: str, path: str | Path | None = None, kind: str = "",
                 n: int = 0) -> None:
        self.kind = kind
        self.n = n
        super().__init__(message, path)


@dataclass
class ModelRow:
    """One fitted (or not estimable) regression: a line of a table.

    Attributes
    ----------
    table : str
        Table id.
    subgroup : str or None
        Subgroup label (``None``: all analysable rows).
    outcome, predictor : str
        Column names.
    transform : str
        Transform of the outcome.
    predictor_transform : str
        Transform of the predictor.
    term : str
        Name of the coefficient reported (``rel_chi_ppb``, ``sex[F]``, ...).
    adjusted : bool
        Whether the covariates are in the model.
    covariates : list of str
        Adjustment variables used (empty when unadjusted).
    n : int
        Rows used.
    coef, se, ci_low, ci_high, p : float
        Coefficient of ``term``, its standard error, confidence interval and two-sided p
        (NaN when not estimable).
    text : str
        Paper-style text, e.g. ``0.029 (0.006–0.052), P = .015``; ``not estimable`` otherwise.
    status : str
        ``ok`` or ``not estimable``.
    reason : str
        Why a row is not estimable (empty when ok).
    r2 : float
        R-squared of the model.
    condition : float
        Condition number of the standardised design (1 with a single variable).
    terms : list of str
        Design columns.
    reference : str or None
        Reference level of a categorical predictor (``term`` is the other level against it).
    """

    table: str
    subgroup: str | None
    outcome: str
    predictor: str
    transform: str
    predictor_transform: str
    term: str
    adjusted: bool
    covariates: list[str]
    n: int
    coef: float = math.nan
    se: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan
    text: str = "not estimable"
    status: str = "not estimable"
    reason: str = ""
    r2: float = math.nan
    condition: float = math.nan
    terms: list[str] = field(default_factory=list)
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN as ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------
def format_p(p: float) -> str:
    """A p-value in the AJNR style, without the leading zero.

    Three decimals below .1 (``.015``, ``.004``), two from .1 (``.63``), ``<.001`` and
    ``>.99`` at the ends.

    Parameters
    ----------
    p : float
        Two-sided p-value.

    Returns
    -------
    str

    Examples
    --------
    >>> format_p(0.0149), format_p(0.6312), format_p(0.0004)
    ('.015', '.63', '<.001')
    """
    if p is None or not math.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "<.001"
    if round(p, 3) < 0.1:
        txt = f"{p:.3f}"
    elif round(p, 2) > 0.99:
        return ">.99"
    else:
        txt = f"{p:.2f}"
    return txt[1:] if txt.startswith("0") else txt


def format_number(x: float, decimals: int) -> str:
    """``x`` with ``decimals`` decimals and a true minus sign (U+2212) when negative."""
    txt = f"{x:.{decimals}f}"
    if txt.startswith("-"):
        txt = _MINUS + txt[1:] if float(txt) != 0.0 else txt[1:]
    return txt


def _decimals(ci_low: float, ci_high: float) -> int:
    """Decimals that show the CI half-width to two significant figures (at least 2, at most 6)."""
    half = abs(ci_high - ci_low) / 2.0
    if not math.isfinite(half) or half <= 0:
        return 2
    return int(min(6, max(2, 1 - math.floor(math.log10(half)))))


def format_estimate(coef: float, ci_low: float, ci_high: float, p: float,
                    decimals: int | None = None) -> str:
    """Paper-style ``coef (low–high), P = .xxx``.

    Parameters
    ----------
    coef, ci_low, ci_high : float
        Estimate and confidence interval.
    p : float
        Two-sided p-value.
    decimals : int, optional
        Decimals of the numbers; default enough for two significant figures of the CI
        half-width, at least 2 (``0.029 (0.006–0.052)``, ``10.68 (2.31–19.05)``).

    Returns
    -------
    str

    Examples
    --------
    >>> format_estimate(0.0291, 0.0058, 0.0523, 0.0149)
    '0.029 (0.006–0.052), P = .015'
    """
    if not all(math.isfinite(v) for v in (coef, ci_low, ci_high)):
        return "not estimable"
    d = _decimals(ci_low, ci_high) if decimals is None else decimals
    return (f"{format_number(coef, d)} ({format_number(ci_low, d)}{_DASH}"
            f"{format_number(ci_high, d)}), {format_p_text(p)}")


def format_p_text(p: float) -> str:
    """``P = .015``, ``P < .001``, ``P > .99`` (see :func:`format_p`)."""
    ptxt = format_p(p)
    return f"P {ptxt[0]} {ptxt[1:]}" if ptxt[0] in "<>" else f"P = {ptxt}"


# --------------------------------------------------------------------------------------------
# rows and design
# --------------------------------------------------------------------------------------------
def analysable_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows a cohort run measured: ``status == "ok"`` when a ``status`` column exists.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-subject table (``measures.tsv``).

    Returns
    -------
    pandas.DataFrame
        The kept rows (all rows when there is no ``status`` column).
    """
    if "status" not in table.columns:
        return table
    st = table["status"].astype("string").str.strip().str.lower()
    return table[(st == "ok").fillna(False).to_numpy(bool)]


def _missing(series: pd.Series) -> pd.Series:
    miss = series.isna()
    if series.dtype == object or pd.api.types.is_string_dtype(series):
        miss |= series.astype("string").str.strip().isin(["", "n/a", "NA", "nan"]).fillna(True)
    return miss


def is_categorical(series: pd.Series, var: str, spec: StudySpec) -> bool:
    """Whether ``var`` is coded as indicators: named in the spec's levels, or not numeric."""
    if var in spec.levels:
        return True
    if pd.api.types.is_bool_dtype(series):
        return True
    if pd.api.types.is_numeric_dtype(series):
        return False
    vals = series[~_missing(series)]
    return bool(pd.to_numeric(vals, errors="coerce").isna().any())


def _category_values(s: pd.Series, levels: tuple[str, ...] | None) -> pd.Series:
    """Text values of a categorical column (0/1 and booleans read as no/yes for no/yes)."""
    if pd.api.types.is_bool_dtype(s):
        vals = s.map({True: "true", False: "false"})
    elif pd.api.types.is_numeric_dtype(s):
        vals = s.map(lambda x: f"{x:g}")
    else:
        vals = s.astype(str).str.strip()
    if levels == ("no", "yes") and set(vals.str.lower().unique()) <= {"0", "1", "true", "false"}:
        vals = vals.str.lower().map({"0": "no", "false": "no", "1": "yes", "true": "yes"})
    return vals


def describe_model(outcome: str, predictor: str, covariates: tuple[str, ...] | list[str],
                   spec: StudySpec) -> str:
    """``log(t2_lesion_volume_ml) ~ rel_chi_ppb + age + ...`` for messages."""

    def name(v: str) -> str:
        tr = spec.transform_of(v)
        return v if tr == "identity" else f"{tr}({v})"

    return f"{name(outcome)} ~ " + " + ".join(name(v) for v in (predictor, *covariates))


def _where(spec: StudySpec, source: str | Path | None) -> Path | None:
    if spec.source is not None:
        return spec.source
    return None if source is None else Path(source)


def build_design(
    table: pd.DataFrame,
    outcome: str,
    predictor: str,
    covariates: tuple[str, ...] | list[str],
    spec: StudySpec,
    source: str | Path | None = None,
    context: str = "",
) -> tuple[pd.Series, pd.DataFrame, str, str | None]:
    """Outcome vector and design matrix of one model, after every check.

    Parameters
    ----------
    table : pandas.DataFrame
        Analysable rows (see :func:`analysable_rows`).
    outcome, predictor : str
        Columns.
    covariates : sequence of str
        Adjustment columns.
    spec : StudySpec
        Transforms, levels and limits.
    source : str or Path, optional
        Table file, named in errors when the spec has no file.
    context : str
        Prefix of error messages (which table and subgroup).

    Returns
    -------
    y : pandas.Series
        Transformed outcome.
    X : pandas.DataFrame
        Design matrix: ``Intercept``, the predictor's term, the covariates' terms.
    term : str
        Column of ``X`` whose coefficient the row reports.
    reference : str or None
        Reference level of a categorical predictor (``None`` for a numeric one).

    Raises
    ------
    InputError
        Unknown column, categorical outcome, a value not among the spec's levels, a
        categorical predictor with more than two levels.
    ModelError
        Too few rows, constant column, collinearity, values outside a transform's domain,
        a variable with no values (``kind="empty"``).
    """
    where = _where(spec, source)
    model = describe_model(outcome, predictor, covariates, spec)
    pre = f"{context}{': ' if context else ''}model {model}: "
    variables = list(dict.fromkeys([outcome, predictor, *covariates]))
    missing_cols = [v for v in variables if v not in table.columns]
    if missing_cols:
        raise InputError(f"{pre}unknown column(s) {missing_cols}; the table has "
                         f"{list(table.columns)}", where)
    data = table[variables]
    if len(data) == 0:
        raise ModelError(f"{pre}no rows to analyse", where, kind="few_rows", n=0)
    for v in variables:
        if _missing(data[v]).all():
            raise ModelError(f"{pre}{v} has no values in the {len(data)} analysable rows",
                             where, kind="empty", n=0)
    keep = ~np.logical_or.reduce([_missing(data[v]).to_numpy() for v in variables])
    data = data[keep]
    n = len(data)
    if n < spec.min_rows:
        raise ModelError(f"{pre}only {n} rows with all of {variables}; at least "
                         f"{spec.min_rows} are needed (min_rows), and at least the number of "
                         f"parameters + {spec.min_residual_df} (min_residual_df)", where,
                         kind="few_rows", n=n)

    y_raw = data[outcome]
    if is_categorical(y_raw, outcome, spec):
        raise InputError(f"{pre}outcome {outcome} must be numeric, found values such as "
                         f"{list(y_raw.astype(str).unique()[:3])}", where)

    def numeric(v: str) -> np.ndarray:
        x = pd.to_numeric(data[v], errors="coerce").to_numpy(np.float64)
        try:
            return apply_transform(x, spec.transform_of(v), v)
        except InputError as exc:
            raise ModelError(pre + exc.message, where, kind="domain", n=n) from None

    def constant(v: str, shown: str) -> ModelError:
        return ModelError(f"{pre}column {v} is constant ({shown}) in the {n} analysed rows; "
                          "a constant cannot be estimated (leave it out of the spec or the "
                          "subgroup)", where, kind="constant", n=n)

    columns: dict[str, np.ndarray] = {"Intercept": np.ones(n)}
    term, reference = predictor, None
    for v in variables[1:]:
        s = data[v]
        if is_categorical(s, v, spec):
            levels = spec.levels.get(v)
            vals = _category_values(s, levels)
            levels = levels or tuple(sorted(vals.unique()))
            unknown = sorted(set(vals.unique()) - set(levels))
            if unknown:
                raise InputError(f"{pre}column {v} has value(s) {unknown} that are not among "
                                 f"its levels {list(levels)} (set [levels] in the spec)", where)
            present = [lev for lev in levels if (vals == lev).any()]
            if len(present) < 2:
                raise constant(v, f"all {present[0]!r}" if present else "empty")
            if v == predictor and len(present) > 2:
                raise InputError(f"{pre}predictor {v} has {len(present)} levels {present}; a "
                                 "table row reports one coefficient, so a categorical "
                                 "predictor must have two levels", where)
            for lev in present[1:]:
                columns[f"{v}[{lev}]"] = (vals == lev).to_numpy(np.float64)
            if v == predictor:
                term, reference = f"{v}[{present[1]}]", present[0]
        else:
            x = numeric(v)
            if np.ptp(x) == 0:
                raise constant(v, f"all {x[0]:g}")
            columns[v] = x
    y_arr = numeric(outcome)
    if np.ptp(y_arr) == 0:
        raise constant(outcome, f"all {y_arr[0]:g}")
    X = pd.DataFrame(columns, index=data.index)
    k = X.shape[1]
    need = max(spec.min_rows, k + spec.min_residual_df)
    if n < need:
        raise ModelError(f"{pre}only {n} rows with all of {variables} for {k} parameters; "
                         f"at least {need} are needed (min_rows {spec.min_rows}, parameters + "
                         f"min_residual_df {spec.min_residual_df})", where, kind="few_rows", n=n)
    _check_collinearity(X, spec, pre, where, n)
    return pd.Series(y_arr, index=data.index, name=outcome), X, term, reference


def _standardised_condition(X: pd.DataFrame) -> tuple[float, np.ndarray, list[str]]:
    Z = X.drop(columns="Intercept")
    names = list(Z.columns)
    if Z.shape[1] < 2:
        return 1.0, np.ones(Z.shape[1]), names
    corr = np.corrcoef(Z.to_numpy(), rowvar=False)
    w, v = np.linalg.eigh(corr)
    cond = math.inf if w[0] <= 1e-12 * w[-1] else float(np.sqrt(w[-1] / w[0]))
    return cond, v[:, 0], names


def _check_collinearity(X: pd.DataFrame, spec: StudySpec, pre: str, where: Path | None,
                        n: int) -> float:
    cond, vec, names = _standardised_condition(X)
    rank = np.linalg.matrix_rank(X.to_numpy())
    if rank < X.shape[1] or cond > spec.max_condition:
        involved = [nm for nm, w in zip(names, vec, strict=True) if abs(w) > 0.3] or names
        how = ("are linearly dependent (rank-deficient design)" if rank < X.shape[1] or
               not math.isfinite(cond) else
               f"are nearly collinear (condition number of the standardised design {cond:.3g} "
               f"> max_condition {spec.max_condition:g})")
        raise ModelError(f"{pre}columns {involved} {how}; leave one of them out of the "
                         "covariates", where, kind="collinear", n=n)
    return cond


def fit_row(
    table: pd.DataFrame,
    outcome: str,
    predictor: str,
    covariates: tuple[str, ...] | list[str],
    spec: StudySpec,
    source: str | Path | None = None,
    context: str = "",
    table_id: str = "",
    subgroup: str | None = None,
    strict: bool = True,
) -> tuple[ModelRow, Any]:
    """Fit one row of a table with statsmodels OLS.

    Parameters
    ----------
    table : pandas.DataFrame
        Analysable rows.
    outcome, predictor : str
        Columns.
    covariates : sequence of str
        Adjustment set (empty: unadjusted).
    spec : StudySpec
        Transforms, levels, limits, confidence level.
    source : str or Path, optional
        Table file (errors).
    context : str
        Prefix of error messages.
    table_id : str
        Table id recorded in the row.
    subgroup : str, optional
        Subgroup label recorded in the row.
    strict : bool
        Raise :class:`ModelError` for too few rows, constant or collinear columns and domain
        errors (default); with ``False`` such rows are returned as not estimable with the
        reason. A variable with no values at all never raises.

    Returns
    -------
    row : ModelRow
    results : statsmodels RegressionResults or None
        The fitted model (``None`` when not estimable).

    References
    ----------
    .. [1] Seabold S, Perktold J. Statsmodels: econometric and statistical modeling with
       Python. Proc. 9th Python in Science Conference, 2010.
    """
    row = ModelRow(
        table=table_id, subgroup=subgroup, outcome=outcome, predictor=predictor,
        transform=spec.transform_of(outcome), predictor_transform=spec.transform_of(predictor),
        term=predictor, adjusted=bool(covariates), covariates=list(covariates), n=0)
    try:
        y, X, term, reference = build_design(table, outcome, predictor, covariates, spec,
                                             source, context)
    except ModelError as exc:
        if strict and exc.kind != "empty":
            raise
        row.n = exc.n
        row.reason = exc.message.removeprefix(f"{context}: " if context else "")
        return row, None
    res = sm.OLS(y, X).fit()
    ci = res.conf_int(alpha=1.0 - spec.ci_level)
    row.term = term
    row.reference = reference
    row.terms = list(X.columns)
    row.n = int(res.nobs)
    row.coef = float(res.params[term])
    row.se = float(res.bse[term])
    row.ci_low, row.ci_high = (float(v) for v in ci.loc[term])
    row.p = float(res.pvalues[term])
    row.r2 = float(res.rsquared)
    row.condition = _standardised_condition(X)[0]
    row.text = format_estimate(row.coef, row.ci_low, row.ci_high, row.p)
    row.status = "ok"
    return row, res


def fit_table(
    table: pd.DataFrame,
    tspec: TableSpec,
    spec: StudySpec,
    subgroup: Subgroup | None = None,
    source: str | Path | None = None,
    strict: bool = True,
) -> list[ModelRow]:
    """Fit every row of a table, unadjusted then adjusted, for each outcome and predictor.

    Parameters
    ----------
    table : pandas.DataFrame
        Analysable rows (the whole cohort; the subgroup filter is applied here).
    tspec : TableSpec
        The table.
    spec : StudySpec
        The study spec.
    subgroup : Subgroup, optional
        Restrict to this subgroup.
    source : str or Path, optional
        Table file (errors).
    strict : bool
        See :func:`fit_row`.

    Returns
    -------
    list of ModelRow
        Two rows (unadjusted, adjusted) per outcome and predictor pair, in spec order; a pair
        whose outcome is its predictor is skipped. In a subgroup ``column == value`` the
        column is constant by definition and is left out of the adjustment set.
    """
    data = table if subgroup is None else table[subgroup.mask(table).to_numpy()]
    fixed = subgroup.column if subgroup is not None and subgroup.op == "==" else None
    label = None if subgroup is None else subgroup.label
    context = tspec.id + ("" if subgroup is None else f" ({subgroup.label})")
    rows: list[ModelRow] = []
    for outcome in tspec.outcomes:
        for predictor in tspec.predictors:
            if outcome == predictor:
                continue
            for adjusted in (False, True):
                covs = spec.covariates_for(outcome, predictor) if adjusted else ()
                covs = tuple(c for c in covs if c != fixed)
                ctx = f"{context}, {'adjusted' if adjusted else 'unadjusted'}"
                row, _ = fit_row(data, outcome, predictor, covs, spec, source, ctx,
                                 tspec.id, label, strict)
                row.adjusted = adjusted
                rows.append(row)
    return rows
