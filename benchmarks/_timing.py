"""Timing helpers shared by the benchmarks: baselines measured in the same run (an FFT pair,
one ANTs rigid registration of an image to itself)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft

from qsmiron.recon.fft import default_workers


def fft_pair_seconds(grid: tuple[int, ...], repeat: int = 3) -> float:
    """Best time of ``rfftn`` + ``irfftn`` of a float32 array of shape ``grid`` (warm start)."""
    x = np.random.default_rng(0).standard_normal(grid).astype(np.float32)
    w = default_workers()
    scipy.fft.irfftn(scipy.fft.rfftn(x, workers=w), s=grid, workers=w)
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        scipy.fft.irfftn(scipy.fft.rfftn(x, workers=w), s=grid, workers=w)
        best = min(best, time.perf_counter() - t0)
    return best


def rigid_self_registration_seconds(image_path: Path) -> float:
    """One ANTs rigid registration of an image to itself with ANTs' default schedule
    (``type_of_transform="Rigid"``), seconds: the unit the anatomy and demo benchmarks count
    in, since ANTs' registrations, N4 and Atropos are most of their time."""
    from qsmiron.anatomy import register as reg
    from qsmiron.io.nifti import load_nifti

    ants = reg._ants()
    data, aff, _ = load_nifti(image_path)
    img = reg.to_ants(data, aff)
    with tempfile.TemporaryDirectory() as work:  # its transform file, not left in /tmp
        t0 = time.perf_counter()
        ants.registration(fixed=img, moving=img, type_of_transform="Rigid",
                          outprefix=str(Path(work) / "baseline_"))
        return time.perf_counter() - t0
