"""FFT conventions shared by every k-space operation (scipy.fft with worker threads)."""

from __future__ import annotations

import os

__all__ = ["default_workers"]


def default_workers() -> int:
    """Number of CPUs this process may use (the default ``workers`` of the FFTs, and the
    threads of the distance transforms in :mod:`qsmiron._distance`).

    Honours CPU affinity (e.g. a Dask worker or a SLURM job pinned to some cores), and the
    ``QSMIRON_FFT_WORKERS`` environment variable when set.
    """
    env = os.environ.get("QSMIRON_FFT_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1
