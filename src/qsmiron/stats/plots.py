"""Figures of the statistics: quantile-normal grids, scatter plots with fits, group plots.

Every figure is drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot,
no display, no global state), saved as PNG without a timestamp or software tag (reruns give
the same bytes) and written atomically (temporary file in the same folder, then renamed).

References
----------
.. [1] Wilk MB, Gnanadesikan R. Probability plotting methods for the analysis of data.
   Biometrika 1968;55:1-17 (quantile-normal plots).
.. [2] Filliben JJ. The probability plot correlation coefficient test for normality.
   Technometrics 1975;17:111-117 (plotting positions used by scipy.stats.probplot).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats as st

from qsmiron.io.nifti import atomic_write_bytes
from qsmiron.stats.ladder import LadderResult, transformed
from qsmiron.stats.models import format_p_text

__all__ = ["group_plot", "ladder_grid", "save_png", "scatter_fit"]

_POINT = "#0072B2"
_FIT = "#D55E00"
_CHOSEN = "#009E73"


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Render ``fig`` to PNG and write it atomically; returns the path."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return atomic_write_bytes(path, buf.getvalue())


def ladder_grid(values: Sequence[float] | np.ndarray, result: LadderResult, path: str | Path,
                label: str | None = None) -> Path:
    """A 3 x 3 grid of quantile-normal plots, one per rung of the ladder of powers.

    Each panel plots the ordered standardised transformed values against the normal quantiles
    of their plotting positions, with the identity line; the panel title gives the rung and
    the D'Agostino-Pearson p-value. The ladder's choice is drawn in green, the spec's
    transform is marked "(spec)"; rungs that are not applicable are greyed out.

    Parameters
    ----------
    values : array-like
        The variable's values (missing values are dropped).
    result : LadderResult
        Its ladder (:func:`qsmiron.stats.ladder.ladder`).
    path : str or Path
        Output PNG.
    label : str, optional
        Variable name for the title.

    Returns
    -------
    Path
        The PNG written.
    """
    fig = Figure(figsize=(10.5, 10.0))
    axes = fig.subplots(3, 3)
    for ax, rung in zip(axes.ravel(), result.rungs, strict=True):
        marks = []
        if rung.name == result.chosen:
            marks.append("chosen")
        if rung.name == result.spec_transform:
            marks.append("spec")
        tag = f" ({', '.join(marks)})" if marks else ""
        y = transformed(values, rung.name) if rung.applicable else None
        if y is None:
            ax.text(0.5, 0.5, "not applicable\n" + rung.reason, ha="center", va="center",
                    transform=ax.transAxes, color="#808080", fontsize=9, wrap=True)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{rung.name}{tag}", color="#808080", fontsize=11)
            continue
        z = (y - y.mean()) / y.std(ddof=1)
        (osm, osr) = st.probplot(z, dist="norm", fit=False)
        colour = _CHOSEN if rung.name == result.chosen else _POINT
        ax.plot(osm, osr, "o", ms=3.5, color=colour, alpha=0.8)
        lim = float(max(np.abs(osm).max(), np.abs(osr).max())) * 1.05
        ax.plot([-lim, lim], [-lim, lim], "-", color="#606060", lw=1.0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_title(f"{rung.name}{tag}: {format_p_text(rung.p)}",
                     fontsize=11, color=colour if rung.name == result.chosen else "black",
                     fontweight="bold" if rung.name == result.chosen else "normal")
        ax.tick_params(labelsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("normal quantile", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("standardised value", fontsize=9)
    fig.suptitle(f"Ladder of powers: {label or result.variable} (n = {result.n}); "
                 "D'Agostino-Pearson K² normality test", fontsize=13)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.06, top=0.91, wspace=0.25, hspace=0.3)
    return save_png(fig, path)


def scatter_fit(x: np.ndarray, y: np.ndarray, fit_x: np.ndarray, fit_mean: np.ndarray,
                fit_lo: np.ndarray, fit_hi: np.ndarray, path: str | Path, xlabel: str,
                ylabel: str, title: str) -> Path:
    """Scatter plot with the OLS line and the confidence band of the mean.

    Parameters
    ----------
    x, y : numpy.ndarray
        Points.
    fit_x, fit_mean, fit_lo, fit_hi : numpy.ndarray
        Fitted line and its confidence band on a grid of ``x`` (from statsmodels'
        ``get_prediction``).
    path : str or Path
        Output PNG.
    xlabel, ylabel, title : str
        Texts.

    Returns
    -------
    Path
        The PNG written.
    """
    fig = Figure(figsize=(6.0, 4.8))
    ax = fig.subplots()
    ax.fill_between(fit_x, fit_lo, fit_hi, color=_FIT, alpha=0.2, lw=0, label="95% CI of mean")
    ax.plot(fit_x, fit_mean, "-", color=_FIT, lw=2.0, label="OLS fit")
    ax.plot(x, y, "o", ms=4.5, color=_POINT, alpha=0.75, mec="white", mew=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8, frameon=False)
    fig.tight_layout()
    return save_png(fig, path)


def group_plot(groups: Mapping[str, np.ndarray], means: Mapping[str, tuple[float, float, float]],
               path: str | Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Box and strip plot of an outcome by the levels of a categorical predictor.

    Parameters
    ----------
    groups : mapping
        Level -> outcome values.
    means : mapping
        Level -> (mean, CI low, CI high) of the group mean (drawn as a point with bars).
    path : str or Path
        Output PNG.
    xlabel, ylabel, title : str
        Texts.

    Returns
    -------
    Path
        The PNG written.
    """
    fig = Figure(figsize=(5.0, 4.8))
    ax = fig.subplots()
    names = list(groups)
    data = [np.asarray(groups[k], float) for k in names]
    ax.boxplot(data, positions=np.arange(len(names)), widths=0.5, showfliers=False,
               medianprops={"color": "#404040"})
    rng = np.random.default_rng(0)  # fixed jitter: same picture on every run
    for i, vals in enumerate(data):
        ax.plot(i + rng.uniform(-0.12, 0.12, vals.size), vals, "o", ms=4.0, color=_POINT,
                alpha=0.7, mec="white", mew=0.5)
        if names[i] in means:
            m, lo, hi = means[names[i]]
            ax.errorbar([i + 0.32], [m], yerr=[[m - lo], [hi - m]], fmt="D", color=_FIT,
                        ms=6, capsize=4)
    ax.set_xticks(np.arange(len(names)),
                  [f"{k}\n(n = {len(v)})" for k, v in zip(names, data, strict=True)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
