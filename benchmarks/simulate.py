"""Benchmark of the simulator: one 1 mm subject, and the 2 mm demo cohort.

Targets (issue "Foundation"): a 1 mm phantom subject in under 30 s and the 10-subject 2 mm
demo cohort in under 2 minutes on 2 cores. Times are also printed as ratios against a baseline
measured in the same run: one FFT pair (``rfftn`` + ``irfftn``) of the 1 mm subject's padded
grid, the unit of work of everything QSM does.

Run::

    python benchmarks/simulate.py [--subjects 10] [--skip-cohort]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from _timing import fft_pair_seconds
from qsmiron.recon.kernels import padded_shape
from qsmiron.simulate.cohort import simulate_cohort
from qsmiron.simulate.phantom import AnatomyParams, base_anatomy, make_phantom
from qsmiron.simulate.scan import simulate_scan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--skip-cohort", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    base_anatomy()
    t_base = time.perf_counter() - t0
    print(f"base anatomy (once per process):     {t_base:6.1f} s")

    params = AnatomyParams(thalamus_volume_ml=14.0, gm_volume_ml=607.0, lesion_volume_ml=11.0,
                           lesion_count=8, enhancing_count=1)
    t0 = time.perf_counter()
    ph = make_phantom(params, voxel_size=1.0, seed=1)
    t_ph = time.perf_counter() - t0
    t0 = time.perf_counter()
    simulate_scan(ph, seed=1)
    t_scan = time.perf_counter() - t0
    fft = fft_pair_seconds(padded_shape(ph.labels.shape, factor=2.0))
    total = t_ph + t_scan
    print(f"1 mm grid {ph.labels.shape}, FFT pair of its padded grid (baseline): {fft:.2f} s")
    print(f"1 mm phantom:                        {t_ph:6.1f} s  = {t_ph / fft:5.1f} FFT pairs")
    print(f"1 mm scan (2 fields, 6 echoes, T1w/FLAIR/Gd): {t_scan:6.1f} s  = "
          f"{t_scan / fft:5.1f} FFT pairs")
    print(f"1 mm subject total:                  {total:6.1f} s  (target < 30 s: "
          f"{'PASS' if total < 30 else 'FAIL'})")

    if not args.skip_cohort:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            simulate_cohort(tmp, args.subjects, seed=2018, voxel_size=2.0)
            t_c = time.perf_counter() - t0
        print(f"2 mm cohort of {args.subjects} subjects written: {t_c:6.1f} s = "
              f"{t_c / args.subjects:.1f} s/subject = {t_c / fft:5.0f} FFT pairs "
              f"(target < 120 s for 10: {'PASS' if t_c < 120 or args.subjects != 10 else 'FAIL'})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak memory (max RSS):               {peak:6.2f} GB")


if __name__ == "__main__":
    main()
