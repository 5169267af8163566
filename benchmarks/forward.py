"""Benchmark of the forward field model on a 1 mm head grid.

Times one FFT pair (``rfftn`` + ``irfftn``) of the padded grid, the dipole kernel, and
:func:`qsmiron.simulate.gre.forward_field` (which does exactly one FFT pair plus the kernel
and the padding copies), and prints the ratio forward_field / FFT pair and peak memory.

Run::

    python benchmarks/forward.py [--shape 193 229 193] [--workers N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc

import numpy as np
import scipy.fft

from qsmiron.constants import CHI_AIR_REL_WATER_PPM
from qsmiron.recon.fft import default_workers
from qsmiron.recon.kernels import dipole_kernel, padded_shape
from qsmiron.simulate.gre import forward_field


def head_like_chi(shape: tuple[int, int, int], voxel_size: float = 1.0) -> np.ndarray:
    """An ellipsoidal 'head' (chi relative to air: tissue -9.4 ppm) with a few iron blobs."""
    axes = [(np.arange(n) - (n - 1) / 2) * voxel_size for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    inside = (x / 75.0) ** 2 + (y / 95.0) ** 2 + (z / 85.0) ** 2 <= 1.0
    chi = np.where(inside, np.float32(-CHI_AIR_REL_WATER_PPM), np.float32(0.0))
    for cx, cy, cz in [(-12, 0, 5), (12, 0, 5), (0, 20, -10)]:
        blob = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= 8.0**2
        chi[blob] += np.float32(0.1)
    return chi.astype(np.float32)


def _best_time(fn, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _time_fft_pair(chi: np.ndarray, grid: tuple[int, ...], workers: int, repeat: int) -> float:
    """Best time of rfftn + irfftn of ``chi`` zero-padded to ``grid`` (after a warm-up)."""
    buf = np.zeros(grid, np.float32)
    buf[: chi.shape[0], : chi.shape[1], : chi.shape[2]] = chi

    def fft_pair() -> None:
        spec = scipy.fft.rfftn(buf, workers=workers)
        scipy.fft.irfftn(spec, s=grid, workers=workers, overwrite_x=True)

    fft_pair()  # warm-up: plans, page faults
    return _best_time(fft_pair, repeat)


def _peak_mib(fn) -> float:
    """Peak of memory traced by tracemalloc (numpy arrays) during one call, in MiB."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(193, 229, 193))
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--pad", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kernel", choices=("discrete", "continuous"), default="discrete")
    args = parser.parse_args(argv)

    shape = tuple(args.shape)
    workers = default_workers() if args.workers is None else args.workers
    grid = padded_shape(shape, factor=args.pad)
    vsz = (args.voxel_size,) * 3
    b0 = (0.0, 0.0, 1.0)
    chi = head_like_chi(shape, args.voxel_size)
    print(
        f"image {shape} at {args.voxel_size} mm, padded FFT grid {grid} "
        f"({np.prod(grid) / 1e6:.1f} M voxels), {workers} workers, kernel {args.kernel}"
    )

    def kernel() -> None:
        dipole_kernel(grid, vsz, b0, rfft=True, kind=args.kernel)

    def forward() -> None:
        forward_field(chi, vsz, b0, pad=args.pad, workers=workers, kernel=args.kernel)

    t_fft = _time_fft_pair(chi, grid, workers, args.repeat)
    t_kernel = _best_time(kernel, args.repeat)
    t_fwd = _best_time(forward, args.repeat)
    peak_fwd = _peak_mib(forward)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    field = forward_field(chi, vsz, b0, pad=args.pad, workers=workers, kernel=args.kernel)
    print(f"FFT pair (rfftn + irfftn)     : {t_fft:7.3f} s")
    print(f"dipole kernel ({args.kernel:>10})  : {t_kernel:7.3f} s")
    print(
        f"forward_field                 : {t_fwd:7.3f} s  "
        f"= {t_fwd / t_fft:.2f} x FFT pair (1 FFT pair inside)"
    )
    print(
        f"peak numpy memory, forward    : {peak_fwd:7.0f} MiB "
        f"(float32 padded grid = {np.prod(grid) * 4 / 2**20:.0f} MiB)"
    )
    print(f"peak RSS of this process      : {maxrss:7.0f} MiB")
    print(
        f"field range in head           : {field[chi != 0].min():.2f} .. "
        f"{field[chi != 0].max():.2f} ppm"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
