"""Timing helpers shared by the benchmarks: the FFT-pair baseline measured in the same run."""

from __future__ import annotations

import time

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
