"""The whole analysis of a study: tables, ladder, figures, power, cohort description.

:func:`run_stats` turns a per-subject table (``measures.tsv`` of a cohort run, or any table
with the same column names) and a :class:`~qsmiron.stats.spec.StudySpec` into::

    OUT/tables/table1.csv, table1.md, table2.csv, table2.md      the study's tables
    OUT/tables/table1_age-le-50.csv, ...                          each table in each subgroup
    OUT/figures/ladder_<var>.png                                  quantile-normal grid per outcome
    OUT/figures/scatter_<outcome>_vs_<predictor>.png              numeric predictors: OLS fit
    OUT/figures/group_<outcome>_by_<predictor>.png                categorical predictors
    OUT/stats.json                                                everything, machine-readable

``stats.json`` is the contract with the HTML report (see ``docs/stats.md``); paths in it are
relative to OUT. Every file is written atomically.

References
----------
.. [1] Chiang GC, Hu J, Morris E, et al. Quantitative susceptibility mapping of the thalamus:
   relationships with thalamic volume, total gray matter volume, and T2 lesion burden.
   AJNR Am J Neuroradiol 2018;39:467-472.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from qsmiron import __version__
from qsmiron.errors import InputError
from qsmiron.io.nifti import atomic_write_bytes, write_json
from qsmiron.stats.ladder import TEST_NAME, LadderResult, ladder
from qsmiron.stats.models import (
    ModelRow,
    analysable_rows,
    fit_row,
    fit_table,
    format_number,
    format_p,
    is_categorical,
)
from qsmiron.stats.plots import group_plot, ladder_grid, scatter_fit
from qsmiron.stats.power import n_for_power, power
from qsmiron.stats.spec import REFERENCE_SPEC, StudySpec, Subgroup, TableSpec

__all__ = [
    "StatsResults",
    "TableResult",
    "cohort_paragraph",
    "cohort_summary",
    "predictor_label",
    "read_measures",
    "run_stats",
    "table_markdown",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

_MINUS = "\u2212"


@dataclass
class TableResult:
    """One table (possibly in a subgroup) and where it was written.

    Attributes
    ----------
    spec : TableSpec
        The table's definition.
    subgroup : Subgroup or None
        The subgroup (``None``: all analysable rows).
    rows : list of ModelRow
        Unadjusted and adjusted rows.
    csv, markdown : str
        Paths of the CSV and Markdown files, relative to the output folder.
    """

    spec: TableSpec
    subgroup: Subgroup | None
    rows: list[ModelRow]
    csv: str = ""
    markdown: str = ""

    @property
    def key(self) -> str:
        """File stem: ``table1`` or ``table1_age-le-50``."""
        return self.spec.id if self.subgroup is None else f"{self.spec.id}_{self.subgroup.slug}"

    @property
    def title(self) -> str:
        """Caption, with the subgroup."""
        sub = "" if self.subgroup is None else f" (subgroup: {self.subgroup.label})"
        return f"{self.spec.title}{sub}"

    def to_dict(self) -> dict[str, Any]:
        """The ``stats.json`` entry."""
        return {"id": self.spec.id, "key": self.key, "title": self.title,
                "subgroup": None if self.subgroup is None else self.subgroup.label,
                "csv": self.csv, "markdown": self.markdown,
                "rows": [r.to_dict() for r in self.rows]}


@dataclass
class StatsResults:
    """What :func:`run_stats` computed and wrote.

    Attributes
    ----------
    out_dir : Path
        Output folder.
    json_path : Path
        ``stats.json``.
    summary : dict
        The content of ``stats.json``.
    tables : list of TableResult
        Every table, main ones first, then per subgroup.
    ladders : list of LadderResult
        The ladder of each variable.
    """

    out_dir: Path
    json_path: Path
    summary: dict[str, Any]
    tables: list[TableResult] = field(default_factory=list)
    ladders: list[LadderResult] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """Notes of the analysis (as in ``stats.json``)."""
        return list(self.summary["notes"])

    def main_tables(self) -> list[TableResult]:
        """The tables on all analysable rows (no subgroup)."""
        return [t for t in self.tables if t.subgroup is None]


# --------------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------------
def read_measures(path: str | Path) -> pd.DataFrame:
    """Read a per-subject table: TSV (``measures.tsv``, BIDS ``n/a`` for missing) or CSV.

    Parameters
    ----------
    path : str or Path
        ``.tsv`` (tab-separated) or ``.csv`` file with a header row.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    InputError
        Missing, unreadable or empty file.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("measures table not found", p)
    sep = "," if p.suffix.lower() == ".csv" else "\t"
    try:
        df = pd.read_csv(p, sep=sep, na_values=["n/a", "N/A", "NA", ""], keep_default_na=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"cannot read the table ({exc})", p) from None
    if df.empty:
        raise InputError("the table has no rows", p)
    if len(df.columns) == 1 and sep == "\t" and "," in str(df.columns[0]):
        raise InputError("the table has one column; is it comma-separated? name it .csv", p)
    return df


def _check_columns(table: pd.DataFrame, spec: StudySpec, where: Path | None) -> None:
    cols = set(table.columns)
    unknown = [v for v in spec.variables() if v not in cols]
    unknown += [f"{v} (in [transforms])" for v in spec.transforms if v not in cols]
    if unknown:
        raise InputError(f"unknown column(s) {unknown} named by the spec; the table has "
                         f"{sorted(cols)}", where)


# --------------------------------------------------------------------------------------------
# cohort description
# --------------------------------------------------------------------------------------------
def _num(table: pd.DataFrame, col: str) -> pd.Series:
    if col not in table.columns:
        return pd.Series([], dtype=float)
    return pd.to_numeric(table[col], errors="coerce").dropna()


def _mean(s: pd.Series) -> float | None:
    return float(s.mean()) if len(s) else None


def _sd(s: pd.Series) -> float | None:
    return float(s.std(ddof=1)) if len(s) > 1 else None


def _count(table: pd.DataFrame, col: str, yes: set[str]) -> int | None:
    if col not in table.columns:
        return None
    vals = table[col].dropna()
    if pd.api.types.is_bool_dtype(vals):
        return int(vals.sum())
    return int(vals.astype(str).str.strip().str.lower().isin(yes).sum())


def cohort_summary(table: pd.DataFrame, n_rows: int | None = None) -> dict[str, Any]:
    """Descriptive statistics of the analysed cohort (the paper's Results paragraph).

    Parameters
    ----------
    table : pandas.DataFrame
        Analysable rows, with the reference study's column names (missing columns give
        ``None``).
    n_rows : int, optional
        Rows before leaving out failed subjects (recorded as ``n_rows``).

    Returns
    -------
    dict
        ``n``, ``age_mean``, ``age_sd``, ``age_min``, ``age_max``, ``n_female``,
        ``n_therapy``, ``n_enhancing``, ``duration_mean/sd``, ``edss_mean/sd``,
        ``lesion_volume_ml_mean/sd/min/max``, ``thalamus_volume_ml_mean/sd``,
        ``total_gm_volume_ml_mean/sd``, ``cortical_thickness_mm_mean/sd``,
        ``rel_chi_ppb_mean/sd/min/max``, ``n_rows``; SDs with n - 1.
    """
    c: dict[str, Any] = {"n": int(len(table))}
    age = _num(table, "age")
    c.update(age_mean=_mean(age), age_sd=_sd(age),
             age_min=float(age.min()) if len(age) else None,
             age_max=float(age.max()) if len(age) else None)
    c["n_female"] = _count(table, "sex", {"f", "female", "w", "woman"})
    c["n_therapy"] = _count(table, "therapy", {"yes", "true", "1", "1.0"})
    c["n_enhancing"] = _count(table, "enhancing_lesions", {"yes", "true", "1", "1.0"})
    dur, edss = _num(table, "disease_duration"), _num(table, "edss")
    c.update(duration_mean=_mean(dur), duration_sd=_sd(dur), edss_mean=_mean(edss),
             edss_sd=_sd(edss))
    les = _num(table, "t2_lesion_volume_ml")
    c.update(lesion_volume_ml_mean=_mean(les), lesion_volume_ml_sd=_sd(les),
             lesion_volume_ml_min=float(les.min()) if len(les) else None,
             lesion_volume_ml_max=float(les.max()) if len(les) else None)
    for col in ("thalamus_volume_ml", "total_gm_volume_ml", "cortical_thickness_mm"):
        s = _num(table, col)
        c[f"{col}_mean"], c[f"{col}_sd"] = _mean(s), _sd(s)
    chi = _num(table, "rel_chi_ppb")
    c.update(rel_chi_ppb_mean=_mean(chi), rel_chi_ppb_sd=_sd(chi),
             rel_chi_ppb_min=float(chi.min()) if len(chi) else None,
             rel_chi_ppb_max=float(chi.max()) if len(chi) else None)
    c["n_rows"] = int(len(table) if n_rows is None else n_rows)
    return c


_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _words(n: int) -> str:
    """English words of 0 <= n < 10000 (``95`` -> ``ninety-five``); digits beyond."""
    if n < 0 or n >= 10000:
        return f"{n:,}"
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return f"{_ONES[n // 100]} hundred" + ("" if rest == 0 else f" and {_words(rest)}")
    rest = n % 1000
    sep = " and " if 0 < rest < 100 else " "
    return f"{_ONES[n // 1000]} thousand" + ("" if rest == 0 else sep + _words(rest))


def _f(x: float, d: int) -> str:
    return format_number(x, d)


def _pm(c: dict[str, Any], key: str, d: int) -> str | None:
    m, s = c.get(f"{key}_mean"), c.get(f"{key}_sd")
    if m is None:
        return None
    return f"{_f(m, d)} \u00b1 {_f(s, d)}" if s is not None else _f(m, d)


def _range(lo: float | None, hi: float | None, d: int) -> str | None:
    if lo is None or hi is None:
        return None
    sep = " to " if lo < 0 or hi < 0 else "\u2013"
    return f"{_f(lo, d)}{sep}{_f(hi, d)}"


def _pct(k: int, n: int) -> str:
    return f"{k} ({100.0 * k / n:.0f}%)" if n else str(k)


def cohort_paragraph(cohort: dict[str, Any]) -> str:
    """A Results-style paragraph describing the cohort, numbers filled from the data.

    Parameters
    ----------
    cohort : dict
        :func:`cohort_summary` output (the ``cohort`` entry of ``stats.json``); ``None``
        values leave their sentence part out.

    Returns
    -------
    str
        E.g. "Ninety-five patients were analysed: mean age 42 ± 10 years (range 25–71),
        63 (66%) women. ..."

    Examples
    --------
    >>> cohort_paragraph({"n": 2, "age_mean": 40.0, "age_sd": 1.4, "age_min": 39.0,
    ...                   "age_max": 41.0, "n_female": 1})
    'Two patients were analysed: mean age 40 ± 1 years (range 39–41), 1 (50%) women.'
    """
    n = int(cohort.get("n") or 0)
    words = _words(n)
    first = f"{words[0].upper()}{words[1:]} patient{'s' if n != 1 else ''} were analysed"
    if n == 1:
        first = first.replace(" were ", " was ")
    n_rows = cohort.get("n_rows")
    if n_rows is not None and n_rows > n:
        first += f" ({n_rows - n} of {n_rows} left out because their processing failed)"
    parts = []
    age = _pm(cohort, "age", 0)
    if age is not None:
        rng = _range(cohort.get("age_min"), cohort.get("age_max"), 0)
        parts.append(f"mean age {age} years" + (f" (range {rng})" if rng else ""))
    if cohort.get("n_female") is not None:
        parts.append(f"{_pct(cohort['n_female'], n)} women")
    sentences = [first + (": " + ", ".join(parts) if parts else "") + "."]
    dur, edss = _pm(cohort, "duration", 1), _pm(cohort, "edss", 1)
    clin = []
    if dur is not None:
        clin.append(f"mean disease duration was {dur} years")
    if edss is not None:
        clin.append(f"mean EDSS {edss}")
    if clin:
        s = " and ".join(clin)
        sentences.append(s[0].upper() + s[1:] + ".")
    status = []
    if cohort.get("n_therapy") is not None:
        status.append(f"{_pct(cohort['n_therapy'], n)} were on disease-modifying therapy")
    if cohort.get("n_enhancing") is not None:
        status.append(f"{_pct(cohort['n_enhancing'], n)} had gadolinium-enhancing lesions")
    if status:
        sentences.append("Of these, " + " and ".join(status) + ".")
    les = _pm(cohort, "lesion_volume_ml", 1)
    if les is not None:
        rng = _range(cohort.get("lesion_volume_ml_min"), cohort.get("lesion_volume_ml_max"), 1)
        sentences.append(f"Mean T2 lesion volume was {les} mL"
                         + (f" (range {rng})" if rng else "") + ".")
    struct = []
    for key, what, unit, d in (("thalamus_volume_ml", "mean thalamic volume", "mL", 1),
                               ("total_gm_volume_ml", "total grey-matter volume", "mL", 0),
                               ("cortical_thickness_mm", "mean cortical thickness", "mm", 2)):
        v = _pm(cohort, key, d)
        if v is not None:
            struct.append(f"{what}{' was' if not struct else ''} {v} {unit}")
    if struct:
        s = (", ".join(struct[:-1]) + " and " + struct[-1]) if len(struct) > 1 else struct[0]
        sentences.append(s[0].upper() + s[1:] + ".")
    chi = _pm(cohort, "rel_chi_ppb", 1)
    if chi is not None:
        rng = _range(cohort.get("rel_chi_ppb_min"), cohort.get("rel_chi_ppb_max"), 1)
        sentences.append("Relative thalamic susceptibility (thalamus minus CSF reference) was "
                         f"{chi} ppb" + (f" (range {rng})" if rng else "") + ".")
    return " ".join(sentences)


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def predictor_label(row: ModelRow, spec: StudySpec) -> str:
    """Display name of a row's predictor, with the contrast of a categorical one."""
    base = spec.label(row.predictor)
    if row.reference is not None:
        level = row.term[len(row.predictor) + 1:-1]
        return f"{base} ({level} vs {row.reference})"
    levels = spec.levels.get(row.predictor)
    if levels is not None and len(levels) == 2:
        return f"{base} ({levels[1]} vs {levels[0]})"
    return base


def _plain(spec: StudySpec, var: str) -> str:
    """Lower-case label without units: ``Disease duration (years)`` -> ``disease duration``."""
    lab = re.sub(r"\s*\([^)]*\)\s*$", "", spec.labels.get(var, var))
    return lab[:1].lower() + lab[1:] if lab[1:2].islower() or len(lab) < 2 else lab


def _and_list(items: list[str]) -> str:
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _pairs(rows: list[ModelRow]) -> list[tuple[ModelRow, ModelRow]]:
    un = [r for r in rows if not r.adjusted]
    ad = [r for r in rows if r.adjusted]
    return list(zip(un, ad, strict=True))


def _cells(r: ModelRow) -> tuple[str, str]:
    if r.status != "ok":
        return "not estimable", ""
    txt = r.text.rsplit(", P ", 1)[0]
    return txt, format_p(r.p)


def table_markdown(result: TableResult, spec: StudySpec) -> str:
    """The table as Markdown, the paper's layout: unadjusted and adjusted side by side.

    Parameters
    ----------
    result : TableResult
        The fitted table.
    spec : StudySpec
        Labels and covariates.

    Returns
    -------
    str
        Markdown text (caption, table, footnotes).
    """
    t = result.spec
    one_pred = len(t.predictors) == 1
    one_out = len(t.outcomes) == 1
    show_out = not one_out or (one_out and one_pred)
    show_pred = not one_pred
    head = []
    if show_out:
        head.append("Outcome")
    if show_pred:
        head.append("Predictor")
    head += ["n", "Unadjusted coefficient (95% CI)", "P", "Adjusted coefficient (95% CI)", "P"]
    m = re.fullmatch(r"table(\d+)", t.id)
    name = f"Table {m.group(1)}" if m else t.id
    lines = [f"### {name}: {result.title}", ""]
    if one_pred:
        lines.append(f"Predictor: {spec.label(t.predictors[0])}.")
    if one_out:
        lines.append(f"Outcome: {spec.label(t.outcomes[0])}.")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    foot = []
    for un, ad in _pairs(result.rows):
        cells = []
        if show_out:
            cells.append(spec.label(un.outcome))
        if show_pred:
            cells.append(predictor_label(ad if ad.reference else un, spec))
        cells.append(str(un.n) if un.n == ad.n else f"{un.n} / {ad.n}")
        cells += [*_cells(un), *_cells(ad)]
        lines.append("| " + " | ".join(cells) + " |")
        for r in (un, ad):
            if r.status != "ok" and r.reason:
                what = "adjusted" if r.adjusted else "unadjusted"
                foot.append(f"{spec.label(r.outcome)} ~ {spec.label(r.predictor)}, {what}: "
                            f"not estimable ({r.reason}).")
    covs = _and_list([_plain(spec, c) for c in spec.covariates]) or "nothing"
    lines += ["", f"Coefficients: change in the outcome per unit of the predictor (categorical "
              f"predictors: second level vs reference), OLS, {spec.ci_level:.0%} confidence "
              f"intervals, two-sided P. Adjusted for {covs} (a covariate is not adjusted for "
              "itself). n: rows used (unadjusted / adjusted when they differ)."]
    if result.subgroup is not None:
        lines.append(f"Subgroup: {result.subgroup.label}.")
    lines += [f"- {f}" for f in dict.fromkeys(foot)]
    return "\n".join(lines).rstrip() + "\n"


def _csv_frame(rows: list[ModelRow]) -> pd.DataFrame:
    cols = ["table", "subgroup", "outcome", "predictor", "term", "transform",
            "predictor_transform", "adjusted", "covariates", "n", "coef", "se", "ci_low",
            "ci_high", "p", "text", "status", "reason", "r2"]
    recs = []
    for r in rows:
        d = r.to_dict()
        d["covariates"] = ";".join(r.covariates)
        recs.append({c: d[c] for c in cols})
    return pd.DataFrame(recs, columns=cols)


def _write_table(result: TableResult, spec: StudySpec, out_dir: Path) -> None:
    result.csv = f"tables/{result.key}.csv"
    result.markdown = f"tables/{result.key}.md"
    text = _csv_frame(result.rows).to_csv(index=False, lineterminator="\n")
    atomic_write_bytes(out_dir / result.csv, text.encode("utf-8"))
    atomic_write_bytes(out_dir / result.markdown, table_markdown(result, spec).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# figures of rows
# --------------------------------------------------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _row_figure(table: pd.DataFrame, row: ModelRow, spec: StudySpec, out_dir: Path,
                source: str | Path | None) -> dict[str, Any] | None:
    fitted, res = fit_row(table, row.outcome, row.predictor, (), spec, source, strict=False)
    if res is None:
        return None
    y = np.asarray(res.model.endog)
    X = res.model.data.orig_exog
    ylabel = spec.label(row.outcome)
    ptxt = fitted.text
    if fitted.reference is None:
        x = X[row.predictor].to_numpy()
        grid = np.linspace(x.min(), x.max(), 100)
        pred = res.get_prediction(pd.DataFrame({"Intercept": 1.0, row.predictor: grid}))
        frame = pred.summary_frame(alpha=1.0 - spec.ci_level)
        name = f"figures/scatter_{_slug(row.outcome)}_vs_{_slug(row.predictor)}.png"
        scatter_fit(x, y, grid, frame["mean"].to_numpy(), frame["mean_ci_lower"].to_numpy(),
                    frame["mean_ci_upper"].to_numpy(), out_dir / name,
                    spec.label(row.predictor), ylabel,
                    f"unadjusted OLS, n = {fitted.n}: {ptxt}")
        kind = "scatter"
    else:
        ind = X[fitted.term].to_numpy() > 0.5
        groups = {fitted.reference: y[~ind], fitted.term[len(row.predictor) + 1:-1]: y[ind]}
        means = {}
        for k, v in groups.items():
            if v.size > 1:
                half = st.t.ppf(0.5 + spec.ci_level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(
                    v.size)
                means[k] = (float(v.mean()), float(v.mean() - half), float(v.mean() + half))
        name = f"figures/group_{_slug(row.outcome)}_by_{_slug(row.predictor)}.png"
        group_plot(groups, means, out_dir / name, spec.label(row.predictor), ylabel,
                   f"difference (unadjusted), n = {fitted.n}: {ptxt}")
        kind = "group"
    return {"outcome": row.outcome, "predictor": row.predictor, "figure": name, "kind": kind}


# --------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def run_stats(
    table: pd.DataFrame,
    spec: StudySpec | None,
    out_dir: str | Path,
    progress: Progress | None = None,
    *,
    source: str | Path | None = None,
    strict: bool = True,
    figures: bool = True,
) -> StatsResults:
    """Run a study's analysis and write its tables, figures and ``stats.json``.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per subject (``measures.tsv``); rows whose ``status`` is not ``ok`` are left
        out when the column exists.
    spec : StudySpec or None
        What to analyse; ``None`` is the reference study (:data:`REFERENCE_SPEC`).
    out_dir : str or Path
        Output folder (``tables/``, ``figures/`` and ``stats.json`` inside; created).
    progress : callable, optional
        Called as ``progress(done, total, what)`` after each step.
    source : str or Path, optional
        Path of the table, recorded in ``stats.json`` and named in errors when the spec has no
        file of its own.
    strict : bool
        Raise on a model with too few rows, a constant or collinear column or values outside a
        transform's domain (default). With ``False`` those rows are reported as not estimable
        with the reason (useful for a small demo cohort). A variable with no values at all
        (e.g. cortical thickness not measured) is never an error.
    figures : bool
        Draw the figures (default); without, their entries in ``stats.json`` are ``null``
        (ladder) or absent (scatter).

    Returns
    -------
    StatsResults

    Raises
    ------
    InputError
        Unknown columns, no analysable rows, and (strict) any model that cannot be fitted;
        messages name the spec file (or the table) and the model.

    References
    ----------
    .. [1] Chiang GC, et al. AJNR Am J Neuroradiol 2018;39:467-472.
    """
    spec = REFERENCE_SPEC if spec is None else spec
    out = Path(out_dir)
    where = spec.source if spec.source is not None else (None if source is None else
                                                         Path(source))
    _check_columns(table, spec, where)
    n_rows = int(len(table))
    data = analysable_rows(table)
    n_ok = int(len(data))
    if n_ok == 0:
        raise InputError(f"none of the {n_rows} rows has status 'ok'; nothing to analyse",
                         source)
    for v in spec.ladder_variables:
        if is_categorical(data[v], v, spec):
            raise InputError(f"ladder variable {v} is categorical; the ladder of powers needs "
                             "a numeric variable", where)
    groups: list[Subgroup | None] = [None, *spec.subgroups]
    main_pairs = [(t, o, p) for t in spec.tables for o in t.outcomes for p in t.predictors
                  if o != p]
    total = len(spec.tables) * len(groups) + len(spec.ladder_variables) + len(main_pairs) + 1
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    notes = ["Relative susceptibility is thalamus minus CSF reference, in ppb.",
             "OLS regressions (statsmodels); binary categoricals coded 0/1 with the level "
             f"named (e.g. sex[F] vs M); {spec.ci_level:.0%} confidence intervals from the t "
             "distribution; two-sided P.",
             "Rows missing any of a model's variables are left out of that model only (n per "
             "row)."]
    if n_ok < n_rows:
        notes.append(f"{n_rows - n_ok} of {n_rows} rows left out because their status is not "
                     "'ok'.")

    results: list[TableResult] = []
    for g in groups:
        for t in spec.tables:
            label = t.id if g is None else f"{t.id} ({g.label})"
            if g is not None:
                n_g = int(g.mask(data).sum())
                if n_g == 0 and strict:
                    raise InputError(f"subgroup {g.label!r} has no rows among the {n_ok} "
                                     "analysable rows", where)
            rows = fit_table(data, t, spec, g, source, strict)
            res = TableResult(t, g, rows)
            _write_table(res, spec, out)
            results.append(res)
            for r in rows:
                if r.status != "ok":
                    notes.append(f"{label}: {r.outcome} ~ {r.predictor} "
                                 f"({'adjusted' if r.adjusted else 'unadjusted'}) not "
                                 f"estimable, n = {r.n}: {r.reason}")
                elif r.condition > 10.0:
                    notes.append(f"{label}: {r.outcome} ~ {r.predictor} (adjusted) has a "
                                 f"collinear design (condition number {r.condition:.1f}); "
                                 "interpret with care")
            step(f"table {label}")

    ladders: list[LadderResult] = []
    ladder_json = []
    for v in spec.ladder_variables:
        vals = pd.to_numeric(data[v], errors="coerce").to_numpy(np.float64)
        lad = ladder(vals, v, spec.transform_of(v))
        fig = None
        if lad.chosen is not None:
            if figures:
                fig = f"figures/ladder_{_slug(v)}.png"
                ladder_grid(vals, lad, out / fig, spec.labels.get(v, v))
            best = lad.rung(lad.chosen)
            verdict = "agrees" if lad.agrees else "differs; the regressions keep the spec's"
            notes.append(f"Ladder of powers, {v}: largest normality P for {lad.chosen} "
                         f"(P = {format_p(best.p)}); the spec uses {lad.spec_transform} "
                         f"({verdict}).")
        else:
            notes.append(f"Ladder of powers, {v}: no rung testable ({lad.n} values).")
        ladders.append(lad)
        ladder_json.append(lad.to_dict(fig))
        step(f"ladder {v}")

    scatter = []
    for t, o, p in main_pairs:
        row = next(r for r in results if r.spec is t and r.subgroup is None).rows
        un = next(r for r in row if r.outcome == o and r.predictor == p and not r.adjusted)
        if un.status == "ok" and figures:
            entry = _row_figure(data, un, spec, out, source)
            if entry is not None:
                scatter.append(entry)
        step(f"figure {o} ~ {p}")

    pw: dict[str, Any] = {"r": spec.power_r, "alpha": spec.power_alpha, "n": n_ok,
                          "power": power(spec.power_r, n_ok, spec.power_alpha) if n_ok > 3
                          else None,
                          "n_for_80": n_for_power(spec.power_r, 0.80, spec.power_alpha),
                          "target_power": spec.power_target,
                          "n_for_target": n_for_power(spec.power_r, spec.power_target,
                                                      spec.power_alpha),
                          "method": "Fisher z, two-sided"}
    if pw["power"] is not None:
        notes.append(f"Power: with n = {n_ok}, a correlation of r = {spec.power_r:g} is detected "
                     f"at two-sided alpha {spec.power_alpha:g} with {100 * pw['power']:.1f}% "
                     f"power (Fisher z); {pw['n_for_target']} subjects give "
                     f"{100 * spec.power_target:.0f}%.")
    notes.append(f"Normality test of the ladder: {TEST_NAME} (scipy.stats.normaltest); Stata's "
                 "sktest adds Royston's adjustment, so its P can differ slightly.")

    cohort = cohort_summary(data, n_rows)
    summary = {
        "qsmiron_version": __version__,
        "spec": spec.to_dict(),
        "source": None if source is None else str(source),
        "n_rows": n_rows,
        "n_ok": n_ok,
        "cohort": cohort,
        "cohort_paragraph": cohort_paragraph(cohort),
        "tables": [r.to_dict() for r in results],
        "ladder": ladder_json,
        "scatter": scatter,
        "power": pw,
        "notes": list(dict.fromkeys(notes)),
    }
    json_path = write_json(out / "stats.json", _clean(summary))
    step("stats.json")
    log.info("statistics of %d/%d rows written to %s", n_ok, n_rows, out)
    return StatsResults(out, json_path, summary, results, ladders)
