"""qsmiron.stats: the study's statistics, from a per-subject table to tables and figures.

* :mod:`~qsmiron.stats.spec`: the study spec (reference study by default, TOML files);
* :mod:`~qsmiron.stats.models`: OLS rows, unadjusted and adjusted (statsmodels);
* :mod:`~qsmiron.stats.ladder`: Tukey's ladder of powers with a normality test per rung;
* :mod:`~qsmiron.stats.power`: power of a correlation test by Fisher's z;
* :mod:`~qsmiron.stats.plots`: quantile-normal grids, scatter plots with fits, group plots;
* :mod:`~qsmiron.stats.tables`: :func:`run_stats`, the whole analysis and ``stats.json``.
"""

from qsmiron.stats.ladder import LADDER, TEST_NAME, LadderResult, ladder
from qsmiron.stats.models import ModelError, ModelRow, fit_row, fit_table, format_estimate, format_p
from qsmiron.stats.power import n_for_power, power
from qsmiron.stats.spec import REFERENCE_SPEC, StudySpec, Subgroup, TableSpec, load_spec
from qsmiron.stats.tables import (
    StatsResults,
    cohort_paragraph,
    cohort_summary,
    read_measures,
    run_stats,
)

__all__ = [
    "LADDER",
    "REFERENCE_SPEC",
    "TEST_NAME",
    "LadderResult",
    "ModelError",
    "ModelRow",
    "StatsResults",
    "StudySpec",
    "Subgroup",
    "TableSpec",
    "cohort_paragraph",
    "cohort_summary",
    "fit_row",
    "fit_table",
    "format_estimate",
    "format_p",
    "ladder",
    "load_spec",
    "n_for_power",
    "power",
    "read_measures",
    "run_stats",
]
