"""Per-component statistics over the labelled voxels: SciPy's own values, exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmiron._labels import per_label


@pytest.mark.parametrize("stat", [ndi.maximum, ndi.minimum, ndi.median, ndi.mean])
def test_per_label_equals_scipy_on_the_whole_arrays(stat) -> None:
    rng = np.random.default_rng(3)
    mask = ndi.binary_dilation(rng.random((40, 30, 20)) > 0.99)
    labels, n = ndi.label(mask)
    values = rng.normal(size=mask.shape).astype(np.float32)
    assert n > 20
    every = np.arange(1, n + 1)
    np.testing.assert_array_equal(per_label(stat, values, labels, every),
                                  np.asarray(stat(values, labels, index=every), np.float64))
    some = every[::3]
    np.testing.assert_array_equal(per_label(stat, values, labels, some),
                                  np.asarray(stat(values, labels, index=some), np.float64))


def test_per_label_of_no_label() -> None:
    labels = np.zeros((4, 4, 4), np.int32)
    assert per_label(ndi.maximum, np.ones((4, 4, 4)), labels, []).shape == (0,)
