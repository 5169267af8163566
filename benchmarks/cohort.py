"""Benchmark of cohort runs: subjects per hour with 1 and 2 Dask workers, and peak memory.

Targets (issue "Cohort runs"): subjects per hour with 1 and 2 workers on this machine and the
scaling ratio; one 1 mm subject with 6 echoes under 4 GB of memory.

A 2 mm cohort is simulated (not timed) and run twice through
:func:`qsmiron.cohort.runner.run_cohort` on a local Dask cluster, into fresh derivatives: once
with one worker (which gets every core as threads), once with two (one core each). The
one-worker run is the baseline measured in the same run; the ratio is the two-worker
throughput over it (2.0 would be perfect scaling). With ``--memory`` one 1 mm subject
(176x208x176, 6 echoes) runs the whole chain in a child process whose peak resident memory
is read back from the kernel (``getrusage(RUSAGE_CHILDREN)``).

Run::

    python benchmarks/cohort.py [--subjects 4] [--seed 3] [--memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qsmiron.cohort.runner import run_cohort
from qsmiron.simulate.cohort import simulate_cohort

_CHILD = """
import sys
from qsmiron.cohort.runner import Unit, process_unit
from qsmiron.measure.subject import SubjectParams
r = process_unit(sys.argv[1], sys.argv[2], Unit("001"), SubjectParams(), int(sys.argv[3]))
print(r["status"], r.get("seconds"), r.get("error"))
"""


def _throughput(bids: Path, out: Path, workers: int) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    res = run_cohort(bids, out, workers=workers)
    dt = time.perf_counter() - t0
    if res.n_failed:
        raise SystemExit(f"{res.n_failed} subjects failed: {[r.get('error') for r in res.records]}")
    return dt, res.records


def _memory(root: Path, threads: int) -> None:
    t0 = time.perf_counter()
    bids = simulate_cohort(root / "mem", 1, seed=11, voxel_size=1.0)
    print(f"1 mm subject simulated in {time.perf_counter() - t0:.0f} s (not timed below)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, str(bids), str(root / "mem" / "deriv"),
                          str(threads)], capture_output=True, text=True, check=True)
    dt = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:
        print("  (peak of this child not above an earlier child's: the figure is a bound)")
    echoes = len(list((bids / "sub-001" / "anat").glob("*part-mag_MEGRE.nii.gz")))
    print(f"one 1 mm subject, {echoes} echoes, recon + anatomy + measures ({threads} threads): "
          f"{dt:.0f} s, peak memory {peak_kb / 1024**2:.2f} GB (target < 4 GB)  "
          f"[{out.stdout.strip()}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="also measure a 1 mm subject")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qsmiron-bench-cohort-") as tmp:
        root = Path(tmp)
        if args.memory:
            _memory(root, 2)
        t0 = time.perf_counter()
        bids = simulate_cohort(root / "c", args.subjects, seed=args.seed, voxel_size=2.0)
        print(f"{args.subjects} subjects simulated at 2 mm in {time.perf_counter() - t0:.0f} s "
              f"(not timed below)")
        t1, rec1 = _throughput(bids, root / "d1", 1)
        t2, rec2 = _throughput(bids, root / "d2", 2)
        n = args.subjects
        per_hour_1, per_hour_2 = 3600 * n / t1, 3600 * n / t2
        print(f"1 worker  (2 threads): {t1:6.0f} s, {per_hour_1:6.1f} subjects/hour  [baseline]")
        print(f"2 workers (1 thread):  {t2:6.0f} s, {per_hour_2:6.1f} subjects/hour  "
              f"ratio {per_hour_2 / per_hour_1:.2f}x")
        for name, recs in (("1 worker", rec1), ("2 workers", rec2)):
            stages = {k: sum(r["stage_seconds"][k] for r in recs) / n
                      for k in recs[0]["stage_seconds"]}
            print(f"  per subject, {name}: " + ", ".join(f"{k} {v:.1f} s"
                                                         for k, v in stages.items()))
        # a rerun with nothing changed skips every subject
        t0 = time.perf_counter()
        again = run_cohort(bids, root / "d2", workers=2)
        print(f"rerun, nothing changed: {again.n_skipped}/{n} up to date in "
              f"{time.perf_counter() - t0:.1f} s")
        print(json.dumps({"subjects": n, "seconds_1_worker": round(t1, 1),
                          "seconds_2_workers": round(t2, 1),
                          "ratio": round(per_hour_2 / per_hour_1, 3)}))


if __name__ == "__main__":
    main()
