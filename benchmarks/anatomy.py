"""Benchmark of the built-in anatomy stage on a 1 mm simulated subject (2 cores).

Target (issue "Anatomy in QSM space"): built-in anatomy for one 1 mm subject under 2 minutes
on 2 cores. The subject is simulated and reconstructed first (not timed); then
:func:`qsmiron.anatomy.pipeline.run_anatomy` runs with its defaults (T1w segmentation, FLAIR
lesions, enhancing lesions, volumes and thickness, QSM-space ROIs, veins, CSF reference).
The baseline measured in the same run is one ANTs rigid registration of the 1 mm T1w to
itself with ANTs' default schedule (``type_of_transform="Rigid"``), so the ratio says how
many such registrations the whole stage costs on this machine.

Run::

    python benchmarks/anatomy.py [--voxel-size 1.0] [--seed 11]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from _timing import rigid_self_registration_seconds
from qsmiron.anatomy.pipeline import load_anatomy_inputs, run_anatomy
from qsmiron.cli import main as cli
from qsmiron.simulate.cohort import simulate_cohort


def _accuracy(res, truth_dir: Path) -> None:
    """Thalamus Dice and volumes against the simulator's truth (same grid as the T1w)."""
    import json

    import numpy as np

    from qsmiron.io.nifti import load_nifti

    truth = json.loads((truth_dir / "sub-001_truth.json").read_text())
    labels = load_nifti(truth_dir / "sub-001_dseg.nii.gz", dtype=None)[0]
    seg = res.segmentation.labels
    for code, true_code, side in ((10, 13, "left"), (49, 14, "right")):
        a, b = seg == code, labels == true_code
        d = 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        print(f"  thalamus {side}: Dice {d:.3f}, {res.measures[f'thalamus_{side}_volume_ml']:.2f}"
              f" mL (truth {truth[f'thalamus_{side}_volume_ml']:.2f})")
    csf_labels = set(int(v) for v in np.unique(labels[res.csf_ref]))
    print(f"  CSF reference: {int(res.csf_ref.sum())} voxels, true labels {sorted(csf_labels)} "
          f"(CSF: {csf_labels <= {4, 7, 8, 9, 10, 11, 12}})")
    m = res.measures
    print(f"  rel chi {m['rel_chi_ppb']:+.1f} ppb (truth {truth['rel_chi_ppb']:+.1f}); grey "
          f"matter {m['total_gm_volume_ml']:.0f} mL (truth {truth['total_gm_volume_ml']:.0f}); "
          f"lesions {m['t2_lesion_volume_ml']:.1f} mL (truth {truth['t2_lesion_volume_ml']:.1f}); "
          f"enhancing {m['enhancing_lesion_count']} (truth {truth['enhancing_lesion_count']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxel-size", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        simulate_cohort(out, 1, seed=args.seed, voxel_size=args.voxel_size)
        assert cli(["recon", str(out / "bids"), "--subject", "001", "--out",
                    str(out / "deriv")]) == 0
        print(f"set-up (simulation and QSM, not timed): {time.perf_counter() - t0:.0f} s")
        inputs = load_anatomy_inputs(out / "bids", out / "deriv", "001")
        print(f"T1w grid {inputs.t1w.shape} at {args.voxel_size:g} mm")
        t0 = time.perf_counter()
        res = run_anatomy(inputs, out / "work")
        total = time.perf_counter() - t0
        base = rigid_self_registration_seconds(inputs.t1w.path)
        _accuracy(res, out / "truth" / "sub-001")
    for name, sec in res.seconds.items():
        print(f"  {name:<20s} {sec:6.1f} s")
    seg = res.info.get("segmentation", {}).get("seconds", {})
    if seg:
        print("  segmentation: " + ", ".join(f"{k} {v:.1f} s" for k, v in seg.items()))
    print(f"  total                {total:6.1f} s   (target < 120 s: "
          f"{'PASS' if total < 120 else 'FAIL'})")
    print(f"baseline: one ANTs rigid registration of the T1w to itself {base:.1f} s; "
          f"anatomy stage = {total / base:.1f} x baseline")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak memory (max RSS, incl. simulation and QSM): {peak:.2f} GB")


if __name__ == "__main__":
    main()
