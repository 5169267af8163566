"""The study spec: which regressions to run, on which rows, with which transforms.

A :class:`StudySpec` says everything :func:`qsmiron.stats.tables.run_stats` needs to regenerate a
study's tables from a per-subject table (``measures.tsv``). Its defaults are the reference study
(Chiang et al., AJNR 2018;39:467):

* **Table 1**: thalamic volume, total grey-matter volume, mean cortical thickness and T2 lesion
  volume (natural log) as outcomes, relative thalamic susceptibility (``rel_chi_ppb``, thalamus
  minus CSF, ppb) as predictor;
* **Table 2**: relative thalamic susceptibility as outcome, each of enhancing lesions (yes vs
  no), age, sex (F vs M), therapy (yes vs no) and disease duration as predictor;
* each row unadjusted and adjusted for age, sex, disease duration and therapy (a covariate is
  never adjusted for itself, nor for the outcome);
* sensitivity analysis in the subgroup ``age <= 50``;
* power for r = 0.28 at two-sided alpha 0.05.

A spec can be written as TOML (see ``docs/study.toml`` and ``docs/stats.md``) and read with
:func:`load_spec`. Subgroups are filters of the form ``column operator value`` (operators
``<``, ``<=``, ``>``, ``>=``, ``==``, ``!=``); nothing in a spec is evaluated as code.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qsmiron.errors import InputError
from qsmiron.io.nifti import read_toml

__all__ = [
    "DEFAULT_LABELS",
    "DEFAULT_LEVELS",
    "REFERENCE_SPEC",
    "TRANSFORMS",
    "StudySpec",
    "Subgroup",
    "TableSpec",
    "apply_transform",
    "load_spec",
    "parse_subgroup",
    "spec_from_mapping",
]


def _cube(x: np.ndarray) -> np.ndarray:
    return x**3


#: Transforms by name: ``(function, domain)`` where the domain is ``"all"``, ``"nonneg"``
#: (x >= 0) or ``"positive"`` (x > 0). The nine rungs of Tukey's ladder of powers are
#: ``cubic, square, identity, sqrt, log, 1/sqrt, inverse, 1/square, 1/cubic`` (``log`` is the
#: natural log, as in the reference study); ``log10`` and ``log1p`` are offered for specs.
TRANSFORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "cubic": (_cube, "all"),
    "square": (np.square, "all"),
    "identity": (lambda x: x, "all"),
    "sqrt": (np.sqrt, "nonneg"),
    "log": (np.log, "positive"),
    "1/sqrt": (lambda x: 1.0 / np.sqrt(x), "positive"),
    "inverse": (lambda x: 1.0 / x, "positive"),
    "1/square": (lambda x: 1.0 / x**2, "positive"),
    "1/cubic": (lambda x: 1.0 / x**3, "positive"),
    "log10": (np.log10, "positive"),
    "log1p": (np.log1p, "nonneg"),
}

#: Levels of the binary categorical variables, reference level first: the coefficient is for
#: the second level against the first (``sex[F]`` is female vs male).
DEFAULT_LEVELS: dict[str, tuple[str, ...]] = {
    "sex": ("M", "F"),
    "therapy": ("no", "yes"),
    "enhancing_lesions": ("no", "yes"),
}

#: Display names of the reference study's variables (tables, figures, report).
DEFAULT_LABELS: dict[str, str] = {
    "rel_chi_ppb": "Relative thalamic susceptibility (ppb)",
    "thalamus_volume_ml": "Thalamic volume (mL)",
    "total_gm_volume_ml": "Total GM volume (mL)",
    "cortical_thickness_mm": "Cortical thickness (mm)",
    "t2_lesion_volume_ml": "T2 lesion volume (mL)",
    "enhancing_lesions": "Enhancing lesions",
    "age": "Age (years)",
    "sex": "Sex",
    "therapy": "Therapy",
    "disease_duration": "Disease duration (years)",
    "edss": "EDSS",
}

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, ">": operator.gt,
}
_OP_SLUG = {"<=": "le", ">=": "ge", "==": "eq", "!=": "ne", "<": "lt", ">": "gt"}
_SUBGROUP_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*"
                          r"('[^']*'|\"[^\"]*\"|[A-Za-z0-9_.+-]+)\s*$")


@dataclass(frozen=True)
class Subgroup:
    """A row filter ``column operator value`` for a sensitivity analysis.

    Attributes
    ----------
    column : str
        Column of the table.
    op : str
        One of ``<``, ``<=``, ``>``, ``>=``, ``==``, ``!=``.
    value : float or str
        Compared value; numbers compare numerically, strings as text.
    label : str, optional
        Display name; default ``"column op value"``.

    Examples
    --------
    >>> g = parse_subgroup("age <= 50")
    >>> g.label, g.slug
    ('age <= 50', 'age-le-50')
    """

    column: str
    op: str
    value: float | str
    label: str = ""

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise InputError(f"subgroup operator must be one of {sorted(_OPS)}, found {self.op!r}")
        if not self.label:
            object.__setattr__(self, "label", f"{self.column} {self.op} {_fmt_value(self.value)}")

    @property
    def slug(self) -> str:
        """File-name part, e.g. ``age-le-50``."""
        val = re.sub(r"[^A-Za-z0-9.]+", "_", _fmt_value(self.value)).strip("_")
        return f"{self.column}-{_OP_SLUG[self.op]}-{val}"

    def mask(self, table: pd.DataFrame) -> pd.Series:
        """Boolean mask of the rows in the subgroup (rows with a missing value are out)."""
        col = table[self.column]
        if isinstance(self.value, str):
            keep = _OPS[self.op](col.astype("string").str.strip(), self.value)
        else:
            num = pd.to_numeric(col, errors="coerce")
            keep = _OPS[self.op](num, float(self.value))
        return pd.Series(keep, index=table.index).fillna(False).astype(bool)


def _fmt_value(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:g}"


def parse_subgroup(text: str | Mapping[str, Any], source: str | Path | None = None) -> Subgroup:
    """A :class:`Subgroup` from ``"age <= 50"`` or ``{column, op, value[, label]}``.

    Parameters
    ----------
    text : str or mapping
        The filter. A string is ``column operator value``; the value is a number when it reads
        as one, otherwise text (quotes around it are removed).
    source : str or Path, optional
        Spec file, named in errors.

    Returns
    -------
    Subgroup
    """
    if isinstance(text, Mapping):
        unknown = sorted(set(text) - {"column", "op", "value", "label"})
        missing = sorted({"column", "op", "value"} - set(text))
        if unknown or missing:
            raise InputError(f"a subgroup table needs keys column, op, value (and optionally "
                             f"label); unknown {unknown}, missing {missing}", source)
        value = text["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InputError(f"subgroup value must be a number or a string, found {value!r}",
                             source)
        try:
            return Subgroup(str(text["column"]), str(text["op"]),
                            value if isinstance(value, str) else float(value),
                            str(text.get("label", "")))
        except InputError as exc:
            raise InputError(exc.message, source) from None
    m = _SUBGROUP_RE.match(str(text))
    if m is None:
        raise InputError(f"subgroup {text!r} is not of the form 'column operator value' "
                         f"(operators {', '.join(_OPS)}), e.g. 'age <= 50'", source)
    col, op, raw = m.groups()
    value: float | str
    try:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError
    except ValueError:
        value = raw.strip("'\"")
    return Subgroup(col, op, value)


@dataclass(frozen=True)
class TableSpec:
    """One table of the study: every outcome against every predictor.

    Attributes
    ----------
    id : str
        File-name stem (``table1`` gives ``tables/table1.csv`` and ``table1.md``).
    title : str
        Caption.
    outcomes : tuple of str
        Outcome columns (one regression per outcome and predictor).
    predictors : tuple of str
        Predictor columns.
    """

    id: str
    title: str
    outcomes: tuple[str, ...]
    predictors: tuple[str, ...]


_TABLE1 = TableSpec(
    id="table1",
    title="Associations of relative thalamic susceptibility with structural measures",
    outcomes=("thalamus_volume_ml", "total_gm_volume_ml", "cortical_thickness_mm",
              "t2_lesion_volume_ml"),
    predictors=("rel_chi_ppb",),
)
_TABLE2 = TableSpec(
    id="table2",
    title="Associations of baseline characteristics with relative thalamic susceptibility",
    outcomes=("rel_chi_ppb",),
    predictors=("enhancing_lesions", "age", "sex", "therapy", "disease_duration"),
)


@dataclass(frozen=True)
class StudySpec:
    """What to analyse: tables, adjustment, transforms, subgroups, power, limits.

    Attributes
    ----------
    name : str
        Name of the study (reports).
    tables : tuple of TableSpec
        The tables; default Tables 1 and 2 of the reference study.
    covariates : tuple of str
        Adjustment set of the adjusted models (a covariate is left out of the set when it is
        the row's predictor or outcome).
    transforms : dict
        Transform by variable (names in :data:`TRANSFORMS`), applied wherever the variable
        enters a model; unnamed variables are used as they are (``identity``).
    levels : dict
        Levels of categorical variables, reference first (coefficients are for each other
        level against the reference); columns of text not listed use their sorted values.
    labels : dict
        Display names of variables.
    subgroups : tuple of Subgroup
        Sensitivity analyses: every table is repeated in each subgroup.
    ladder : tuple of str, optional
        Variables for Tukey's ladder of powers; default (``None``) every outcome.
    power_r, power_alpha, power_target : float
        Smallest correlation of interest, two-sided alpha and target power of the power
        statement.
    ci_level : float
        Confidence level of the intervals.
    min_rows : int
        Fewest rows any model may use.
    min_residual_df : int
        Fewest rows beyond the number of parameters (n - parameters >= this).
    max_condition : float
        Largest condition number of the standardised design (predictor and covariates centred
        and scaled; sqrt of the ratio of the extreme eigenvalues of their correlation matrix)
        before a model is refused as collinear. 30 is a pair of variables correlated at
        r = 0.998.
    source : Path, optional
        The spec file it was read from (named in errors).
    """

    name: str = "Chiang et al., AJNR 2018;39:467 (reference study)"
    tables: tuple[TableSpec, ...] = (_TABLE1, _TABLE2)
    covariates: tuple[str, ...] = ("age", "sex", "disease_duration", "therapy")
    transforms: dict[str, str] = field(default_factory=lambda: {"t2_lesion_volume_ml": "log"})
    levels: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_LEVELS))
    labels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    subgroups: tuple[Subgroup, ...] = (Subgroup("age", "<=", 50.0),)
    ladder: tuple[str, ...] | None = None
    power_r: float = 0.28
    power_alpha: float = 0.05
    power_target: float = 0.80
    ci_level: float = 0.95
    min_rows: int = 10
    min_residual_df: int = 5
    max_condition: float = 30.0
    source: Path | None = None

    def __post_init__(self) -> None:
        src = self.source
        if not self.tables:
            raise InputError("a spec needs at least one table", src)
        ids = [t.id for t in self.tables]
        if len(set(ids)) != len(ids):
            raise InputError(f"table ids must be unique, found {ids}", src)
        for t in self.tables:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", t.id):
                raise InputError(f"table id {t.id!r} must be a plain file-name stem "
                                 "(letters, digits, _ . -)", src)
            if not t.outcomes or not t.predictors:
                raise InputError(f"table {t.id!r} needs at least one outcome and one predictor",
                                 src)
        for var, name in self.transforms.items():
            if name not in TRANSFORMS:
                raise InputError(f"unknown transform {name!r} for {var!r}; known: "
                                 f"{', '.join(TRANSFORMS)}", src)
        for var, lev in self.levels.items():
            if len(lev) < 2 or len(set(lev)) != len(lev):
                raise InputError(f"levels of {var!r} must be at least two distinct values "
                                 f"(reference first), found {list(lev)}", src)
        if not 0.0 < self.ci_level < 1.0:
            raise InputError(f"ci_level must be in (0, 1), found {self.ci_level}", src)
        if not 0.0 < abs(self.power_r) < 1.0:
            raise InputError(f"power r must be in (-1, 1) and not 0, found {self.power_r}", src)
        if not 0.0 < self.power_alpha < 1.0 or not 0.0 < self.power_target < 1.0:
            raise InputError("power alpha and target must be in (0, 1), found "
                             f"{self.power_alpha} and {self.power_target}", src)
        if self.min_rows < 3 or self.min_residual_df < 1:
            raise InputError(f"min_rows must be >= 3 and min_residual_df >= 1, found "
                             f"{self.min_rows} and {self.min_residual_df}", src)
        if not self.max_condition > 1.0:
            raise InputError(f"max_condition must be > 1, found {self.max_condition}", src)

    # ----------------------------------------------------------------------------------------
    @property
    def outcomes(self) -> tuple[str, ...]:
        """Every outcome of every table, in order, once."""
        return tuple(dict.fromkeys(o for t in self.tables for o in t.outcomes))

    @property
    def ladder_variables(self) -> tuple[str, ...]:
        """Variables for the ladder of powers (default: the outcomes)."""
        return self.outcomes if self.ladder is None else self.ladder

    def variables(self) -> tuple[str, ...]:
        """Every column the spec uses (outcomes, predictors, covariates, subgroups, ladder)."""
        names: list[str] = []
        for t in self.tables:
            names += [*t.outcomes, *t.predictors]
        names += [*self.covariates, *(g.column for g in self.subgroups), *self.ladder_variables]
        return tuple(dict.fromkeys(names))

    def transform_of(self, var: str) -> str:
        """The transform applied to ``var`` (``identity`` when none is named)."""
        return self.transforms.get(var, "identity")

    def label(self, var: str) -> str:
        """Display name of ``var`` (with its transform, e.g. ``log T2 lesion volume (mL)``)."""
        base = self.labels.get(var, var)
        tr = self.transform_of(var)
        return base if tr == "identity" else f"{tr} {base}"

    def covariates_for(self, outcome: str, predictor: str) -> tuple[str, ...]:
        """Adjustment set of one row: the covariates other than its predictor and outcome."""
        return tuple(c for c in self.covariates if c not in (predictor, outcome))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (as in ``stats.json``)."""
        d = asdict(self)
        d["source"] = None if self.source is None else str(self.source)
        d["subgroups"] = [{"column": g.column, "op": g.op, "value": g.value, "label": g.label}
                          for g in self.subgroups]
        d["tables"] = [{"id": t.id, "title": t.title, "outcomes": list(t.outcomes),
                        "predictors": list(t.predictors)} for t in self.tables]
        d["levels"] = {k: list(v) for k, v in self.levels.items()}
        d["ladder"] = list(self.ladder_variables)
        return d


#: The reference study's spec (the default everywhere).
REFERENCE_SPEC = StudySpec()


def apply_transform(values: Any, name: str, variable: str = "",
                    source: str | Path | None = None) -> np.ndarray:
    """Apply a named transform, refusing values outside its domain.

    Parameters
    ----------
    values : array-like
        Finite values (NaNs pass through).
    name : str
        A key of :data:`TRANSFORMS`.
    variable : str
        Variable name, for the error message.
    source : str or Path, optional
        File named in errors.

    Returns
    -------
    numpy.ndarray
        Transformed values (float64).

    Raises
    ------
    InputError
        Unknown transform, or values outside its domain (e.g. ``log`` of zero).
    """
    if name not in TRANSFORMS:
        raise InputError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}", source)
    fn, domain = TRANSFORMS[name]
    x = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x)
    bad = None
    if domain == "positive":
        bad = ok & (x <= 0)
    elif domain == "nonneg":
        bad = ok & (x < 0)
    if bad is not None and bad.any():
        what = "positive" if domain == "positive" else "non-negative"
        raise InputError(
            f"transform {name!r} of {variable or 'a variable'} needs {what} values; "
            f"{int(bad.sum())} value(s) are not (smallest {np.min(x[bad]):g}); choose another "
            "transform (e.g. log1p for zeros) or fix the data", source)
    with np.errstate(all="ignore"):
        return np.asarray(fn(x), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# TOML
# --------------------------------------------------------------------------------------------
_TOP_KEYS = {"name", "tables", "covariates", "transforms", "levels", "labels", "subgroups",
             "ladder", "power", "ci_level", "min_rows", "min_residual_df", "max_condition"}


def _str_list(value: Any, key: str, source: Path | None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{key} must be a list of column names, found {value!r}", source)
    return tuple(value)


def _str_map(value: Any, key: str, source: Path | None) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise InputError(f"[{key}] must map column names to strings, found {value!r}", source)
    return {str(k): v for k, v in value.items()}


def _number(value: Any, key: str, source: Path | None, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{key} must be a number, found {value!r}", source)
    if kind is int and int(value) != value:
        raise InputError(f"{key} must be an integer, found {value!r}", source)
    return kind(value)


def spec_from_mapping(data: Mapping[str, Any], source: str | Path | None = None) -> StudySpec:
    """Build a :class:`StudySpec` from a mapping (a parsed TOML document).

    Keys not given keep the reference study's values; ``tables``, ``covariates``,
    ``transforms`` and ``subgroups`` replace the defaults when given, ``levels`` and
    ``labels`` are merged into them. Unknown keys are errors.

    Parameters
    ----------
    data : mapping
        The spec (see ``docs/stats.md``).
    source : str or Path, optional
        Spec file, named in errors and recorded in the spec.

    Returns
    -------
    StudySpec
    """
    src = None if source is None else Path(source)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise InputError(f"unknown spec key(s) {unknown}; known: {sorted(_TOP_KEYS)}", src)
    kw: dict[str, Any] = {"source": src}
    if "name" in data:
        kw["name"] = str(data["name"])
    if "tables" in data:
        tables = data["tables"]
        if not isinstance(tables, Sequence) or not all(isinstance(t, Mapping) for t in tables):
            raise InputError("tables must be an array of tables ([[tables]] blocks)", src)
        out = []
        for i, t in enumerate(tables):
            bad = sorted(set(t) - {"id", "title", "outcomes", "predictors"})
            if bad or "outcomes" not in t or "predictors" not in t:
                raise InputError(f"table {i + 1} needs outcomes and predictors (and optionally "
                                 f"id, title); unknown keys {bad}", src)
            tid = str(t.get("id", f"table{i + 1}"))
            out.append(TableSpec(tid, str(t.get("title", tid)),
                                 _str_list(t["outcomes"], f"tables[{i}].outcomes", src),
                                 _str_list(t["predictors"], f"tables[{i}].predictors", src)))
        kw["tables"] = tuple(out)
    if "covariates" in data:
        kw["covariates"] = _str_list(data["covariates"], "covariates", src)
    if "transforms" in data:
        kw["transforms"] = _str_map(data["transforms"], "transforms", src)
    if "labels" in data:
        kw["labels"] = {**DEFAULT_LABELS, **_str_map(data["labels"], "labels", src)}
    if "levels" in data:
        lev = data["levels"]
        if not isinstance(lev, Mapping):
            raise InputError("[levels] must map column names to lists of levels", src)
        merged = dict(DEFAULT_LEVELS)
        for k, v in lev.items():
            if not isinstance(v, Sequence) or isinstance(v, str):
                raise InputError(f"levels.{k} must be a list (reference first), found {v!r}",
                                 src)
            merged[str(k)] = tuple(str(x) for x in v)
        kw["levels"] = merged
    if "subgroups" in data:
        groups = data["subgroups"]
        if isinstance(groups, (str, Mapping)):
            groups = [groups]
        kw["subgroups"] = tuple(parse_subgroup(g, src) for g in groups)
    if "ladder" in data:
        kw["ladder"] = _str_list(data["ladder"], "ladder", src)
    if "power" in data:
        pw = data["power"]
        if not isinstance(pw, Mapping) or set(pw) - {"r", "alpha", "power"}:
            raise InputError("[power] takes r, alpha and power", src)
        if "r" in pw:
            kw["power_r"] = _number(pw["r"], "power.r", src)
        if "alpha" in pw:
            kw["power_alpha"] = _number(pw["alpha"], "power.alpha", src)
        if "power" in pw:
            kw["power_target"] = _number(pw["power"], "power.power", src)
    for key in ("ci_level", "max_condition"):
        if key in data:
            kw[key] = _number(data[key], key, src)
    for key in ("min_rows", "min_residual_df"):
        if key in data:
            kw[key] = _number(data[key], key, src, int)
    try:
        return StudySpec(**kw)
    except InputError as exc:
        raise InputError(exc.message, src) from None


def load_spec(path: str | Path | None = None) -> StudySpec:
    """Read a study spec from a TOML file (``None``: the reference study).

    Parameters
    ----------
    path : str or Path, optional
        TOML file; see ``docs/study.toml`` for the reference study written out.

    Returns
    -------
    StudySpec

    Raises
    ------
    InputError
        Missing or unreadable file, invalid TOML, unknown keys, bad values; the message names
        the file.

    Examples
    --------
    >>> load_spec().tables[0].outcomes[-1]
    't2_lesion_volume_ml'
    """
    if path is None:
        return REFERENCE_SPEC
    p = Path(path)
    data = read_toml(p, "spec file")
    return spec_from_mapping(data, p)
