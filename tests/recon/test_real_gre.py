"""Unwrapping on real data: the ROMEO.jl 3-echo GRE brain crop in ../shared/data/gre_small.

Its echo times and field strength are not documented, so only properties that hold for any
correct spatial unwrapping are checked: the result is congruent with the input (differs by
whole turns) and, inside the tissue, neighbouring voxels differ by less than pi almost
everywhere, while the wrapped input does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qsmiron.io.bids import read_megre_nifti
from qsmiron.recon.unwrap import laplacian_unwrap, romeo_unwrap

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gre_small"


@pytest.fixture(scope="module")
def gre():
    return read_megre_nifti(DATA / "Mag.nii", DATA / "Phase.nii", te=[0.004, 0.008, 0.012])


def _jump_fraction(phase: np.ndarray, mask: np.ndarray) -> float:
    jumps, edges = 0, 0
    for ax in range(3):
        d = np.abs(np.diff(phase, axis=ax))
        both = np.logical_and(np.delete(mask, -1, axis=ax), np.delete(mask, 0, axis=ax))
        jumps += int((d[both] > np.pi).sum())
        edges += int(both.sum())
    return jumps / edges


@pytest.mark.parametrize("echo", [1, 2])
def test_romeo_on_real_gre(gre, echo):
    mag = gre.magnitude[..., echo]
    mask = mag > 0.15 * np.percentile(mag, 99)
    wrapped = gre.phase[..., echo]
    unwrapped = romeo_unwrap(wrapped, magnitude=mag, mask=mask)
    turns = (unwrapped - wrapped)[mask] / (2 * np.pi)
    assert np.allclose(turns, np.round(turns), atol=1e-3)  # congruent
    before = _jump_fraction(np.where(mask, wrapped, 0), mask)
    after = _jump_fraction(unwrapped, mask)
    assert before > 0.01  # echoes 2 and 3 wrap across 1.7-2.3% of neighbour pairs
    assert after < 0.02 * before  # unwrapped: at least 50x fewer jumps
    # the Laplacian unwrap agrees with ROMEO up to a smooth offset (same Laplacian)
    lap = laplacian_unwrap(wrapped, gre.voxel_size, mask=mask)
    diff = np.where(mask, lap - unwrapped, 0.0)
    interior = mask.copy()
    for ax in range(3):
        interior &= np.roll(mask, 1, ax) & np.roll(mask, -1, ax)
    second = sum(np.roll(diff, 1, ax) + np.roll(diff, -1, ax) - 2 * diff for ax in range(3))
    assert np.median(np.abs(second[interior])) < 0.05
