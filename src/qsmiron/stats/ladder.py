"""Tukey's ladder of powers with a skewness-kurtosis normality test per rung.

For each outcome the nine rungs ``cubic, square, identity, sqrt, log, 1/sqrt, inverse,
1/square, 1/cubic`` (powers 3, 2, 1, 1/2, 0 = natural log, -1/2, -1, -2, -3) are applied and
each transformed sample is tested for normality with the D'Agostino-Pearson omnibus K² test
(:func:`scipy.stats.normaltest`): the squared normal scores of the sample skewness (D'Agostino
1970) and kurtosis (Anscombe & Glynn 1983) are summed and compared with a chi-squared
distribution with two degrees of freedom. This is the test Stata's ``ladder`` reports through
``sktest`` (which adds Royston's 1991 small-sample adjustment to the same two components, so
Stata's chi2 and p can differ slightly from these). The rung with the largest p is the one the
ladder chooses; the spec's transform is what the regressions use, and the result says whether
the two agree.

Rungs undefined for the data (``sqrt`` of negative values, ``log`` and negative powers of
non-positive values) are reported as not applicable, as is every rung when fewer than 8 values
are present (the skewness test needs 8).

Reported per rung: sample skewness (g1), sample kurtosis (Pearson's b2, 3 for a normal
distribution), K² (``chi2``) and its p-value, and the p-values of the skewness and kurtosis
components.

References
----------
.. [1] Tukey JW. Exploratory Data Analysis. Addison-Wesley, 1977 (ladder of powers).
.. [2] D'Agostino RB, Pearson ES. Tests for departure from normality. Empirical results for
   the distributions of b2 and sqrt(b1). Biometrika 1973;60:613-622.
.. [3] D'Agostino RB, Belanger A, D'Agostino RB Jr. A suggestion for using powerful and
   informative tests of normality. Am Stat 1990;44:316-321.
.. [4] Royston P. Comment on sg3.4 and an improved D'Agostino test. Stata Tech Bull
   1991;3:23-24.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats as st

from qsmiron.stats.spec import TRANSFORMS, apply_transform

__all__ = ["LADDER", "TEST_NAME", "LadderResult", "Rung", "ladder"]

#: The rungs, from the highest power to the lowest.
LADDER: tuple[str, ...] = ("cubic", "square", "identity", "sqrt", "log", "1/sqrt", "inverse",
                           "1/square", "1/cubic")

#: Name of the normality test, as recorded in ``stats.json``.
TEST_NAME = "D'Agostino-Pearson K2 (skewness-kurtosis)"

_MIN_N = 8


@dataclass
class Rung:
    """One rung of the ladder.

    Attributes
    ----------
    name : str
        Transform name (a key of :data:`qsmiron.stats.spec.TRANSFORMS`).
    applicable : bool
        Whether the transform is defined for every value and testable.
    skewness : float
        Sample skewness g1 of the transformed values.
    kurtosis : float
        Sample kurtosis b2 (Pearson's; 3 for a normal distribution).
    chi2 : float
        D'Agostino-Pearson K² statistic (2 degrees of freedom).
    p : float
        p-value of K².
    p_skewness, p_kurtosis : float
        p-values of the skewness and kurtosis tests.
    reason : str
        Why the rung is not applicable.
    """

    name: str
    applicable: bool
    skewness: float = math.nan
    kurtosis: float = math.nan
    chi2: float = math.nan
    p: float = math.nan
    p_skewness: float = math.nan
    p_kurtosis: float = math.nan
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN as ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


@dataclass
class LadderResult:
    """The ladder of one variable.

    Attributes
    ----------
    variable : str
        Column name.
    n : int
        Values tested (non-missing).
    spec_transform : str
        Transform the spec uses for the regressions.
    chosen : str or None
        Rung with the largest p (``None`` when no rung is applicable).
    rungs : list of Rung
        All nine rungs, in :data:`LADDER` order.
    """

    variable: str
    n: int
    spec_transform: str
    chosen: str | None
    rungs: list[Rung] = field(default_factory=list)

    @property
    def agrees(self) -> bool | None:
        """Whether the ladder's choice is the spec's transform (``None``: nothing to choose)."""
        return None if self.chosen is None else self.chosen == self.spec_transform

    def rung(self, name: str) -> Rung:
        """The rung called ``name``."""
        return next(r for r in self.rungs if r.name == name)

    def to_dict(self, figure: str | None = None) -> dict[str, Any]:
        """The ``stats.json`` entry."""
        return {"variable": self.variable, "n": self.n, "spec_transform": self.spec_transform,
                "chosen": self.chosen, "agrees": self.agrees, "test": TEST_NAME,
                "figure": figure, "transforms": [r.to_dict() for r in self.rungs]}


def _rung(x: np.ndarray, name: str) -> tuple[Rung, np.ndarray | None]:
    if x.size < _MIN_N:
        return Rung(name, False, reason=f"needs at least {_MIN_N} values, found {x.size}"), None
    domain = TRANSFORMS[name][1]
    if domain == "positive" and np.any(x <= 0):
        return Rung(name, False, reason="undefined for non-positive values"), None
    if domain == "nonneg" and np.any(x < 0):
        return Rung(name, False, reason="undefined for negative values"), None
    y = apply_transform(x, name)
    if not np.all(np.isfinite(y)) or np.ptp(y) == 0:
        return Rung(name, False, reason="not finite or constant after the transform"), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kurtosistest warns for n < 20; the p-value stands
        k2, p = st.normaltest(y)
        _, ps = st.skewtest(y)
        _, pk = st.kurtosistest(y)
    return Rung(name, True, skewness=float(st.skew(y)),
                kurtosis=float(st.kurtosis(y, fisher=False)), chi2=float(k2), p=float(p),
                p_skewness=float(ps), p_kurtosis=float(pk)), y


def ladder(values: Any, variable: str = "", spec_transform: str = "identity") -> LadderResult:
    """Tukey's ladder of powers of one variable, each rung tested for normality.

    Parameters
    ----------
    values : array-like
        The variable's values (missing values are dropped).
    variable : str
        Its name.
    spec_transform : str
        The transform the spec uses for it (recorded, and compared with the choice).

    Returns
    -------
    LadderResult
        The nine rungs with skewness, kurtosis, K² and p; ``chosen`` is the applicable rung
        with the largest p.

    References
    ----------
    .. [1] Tukey JW. Exploratory Data Analysis. Addison-Wesley, 1977.
    .. [2] D'Agostino RB, Pearson ES. Biometrika 1973;60:613-622.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ladder(rng.lognormal(2.0, 1.0, 200), "volume").chosen
    'log'
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    rungs = [_rung(x, name)[0] for name in LADDER]
    ok = [r for r in rungs if r.applicable]
    chosen = max(ok, key=lambda r: r.p).name if ok else None
    return LadderResult(variable, int(x.size), spec_transform, chosen, rungs)


def transformed(values: Any, name: str) -> np.ndarray | None:
    """The finite values after rung ``name`` (``None`` when not applicable)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    return _rung(x[np.isfinite(x)], name)[1]
