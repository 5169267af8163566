"""Benchmark of ``qsmiron demo``, the README's main command, on this machine.

Target (issue "The study's statistics and report"): the demo simulates a small 2 mm cohort,
runs it, computes the statistics and writes the report in under 5 minutes on 2 cores. The
demo runs as a user runs it (default cohort of 8, one worker per core) into a temporary
folder; its stages are timed from its own records. The baseline measured in the same run is
one ANTs rigid registration of the first subject's 2 mm T1w to itself (the best of three), as
ANTs' registrations, N4 and Atropos are most of a subject's time: the ratio is the demo's
cost in such registrations, comparable between machines.

Run::

    python benchmarks/demo.py [--subjects 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _timing import rigid_self_registration_seconds
from qsmiron.cli import main as cli

TARGET_S = 300.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=8)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        t0 = time.perf_counter()
        rc = cli(["demo", "--out", str(out), "--subjects", str(args.subjects)])
        total = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"qsmiron demo failed (exit status {rc})")
        stages: dict[str, list[float]] = {}
        for rec in sorted((out / "derivatives" / "qsmiron").glob("sub-*/sub-*_measures.json")):
            for name, sec in json.loads(rec.read_text()).get("stage_seconds", {}).items():
                stages.setdefault(name, []).append(float(sec))
        t1w = out / "bids" / "sub-001" / "anat" / "sub-001_T1w.nii.gz"
        base = min(rigid_self_registration_seconds(t1w) for _ in range(3))

    print(f"qsmiron demo, {args.subjects} subjects at 2 mm: {total:.0f} s "
          f"(target < {TARGET_S:.0f} s: {'PASS' if total < TARGET_S else 'FAIL'})")
    for name, secs in stages.items():
        print(f"  per subject, {name:<10s} median {statistics.median(secs):5.1f} s "
              f"(range {min(secs):.1f}-{max(secs):.1f})")
    print(f"baseline: one ANTs rigid registration of a 2 mm T1w to itself {base:.2f} s; "
          f"demo = {total / base:.0f} x baseline")


if __name__ == "__main__":
    main()
