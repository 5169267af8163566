"""FFT conventions shared by every k-space operation (scipy.fft with worker threads)."""

from __future__ import annotations

import os

__all__ = ["default_workers", "limit_threads"]


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


def limit_threads(threads: int | None) -> None:
    """Cap this process's threads: FFT workers, ITK (ANTs) and BLAS/OpenMP pools.

    Used by the worker processes of a cohort run and of a parallel cohort simulation, so that
    ``workers x threads`` does not oversubscribe the cores. ``None`` or 0 leaves them as they
    are. ITK's count is only set where the environment does not set one already.
    """
    if not threads:
        return
    os.environ["QSMIRON_FFT_WORKERS"] = str(threads)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - declared dependency
        pass
