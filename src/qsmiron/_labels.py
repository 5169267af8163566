"""Statistics per labelled component (private).

SciPy's per-label statistics (``scipy.ndimage.maximum``, ``median``, ...) sort or scan every
voxel of the arrays they are given, labelled or not: on a 1 mm head with a few hundred lesion
candidates 1.3 s for a maximum and 2.8 s for a median. Given only the labelled voxels they
return the same values about 25 times sooner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["per_label"]


def per_label(
    stat: Callable[..., Any],
    values: np.ndarray,
    labels: np.ndarray,
    index: Sequence[int] | np.ndarray,
) -> np.ndarray:
    """``stat(values, labels, index=index)`` over the labelled voxels only.

    Parameters
    ----------
    stat : callable
        A per-label statistic of ``scipy.ndimage`` (``maximum``, ``minimum``, ``median``,
        ``mean``, ...).
    values : array
        The values, the shape of ``labels``.
    labels : int array
        Component labels, 0 for background (as from ``scipy.ndimage.label``).
    index : sequence of int
        The labels to measure (positive).

    Returns
    -------
    (len(index),) float64
        The statistic of each label in ``index``, exactly as ``stat`` gives it on the whole
        arrays.
    """
    index = np.asarray(index)
    if index.size == 0:
        return np.zeros(0)
    sel = labels > 0
    return np.asarray(stat(values[sel], labels[sel], index=index), dtype=np.float64).reshape(-1)
