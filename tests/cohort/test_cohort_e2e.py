"""``qsmiron run`` end to end on a simulated 2 mm cohort, through real Dask schedulers.

Three subjects of the simulator's cohort (seed 7) with known truth; sub-003's second phase
echo is truncated, as a copy interrupted mid-transfer would be; sub-002 has no post-gadolinium
T1w (many protocols have none): it is measured, with its enhancing count left empty. The run
goes through a ``dask scheduler`` and a ``dask worker`` started as separate processes, as on a
cluster.
A second run on a local cluster is killed mid-subject and resumed.

Every worker runs single-threaded in both runs (ITK's multi-threaded sums depend on how the
threads share the work, so only one thread makes a subject's result independent of the run it
was part of), and the kill test compares its table with the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from qsmiron.cli import main
from qsmiron.simulate.cohort import simulate_cohort

THREADS = "1"


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohort")
    simulate_cohort(root, 3, seed=7)
    phase = root / "bids" / "sub-003" / "anat" / "sub-003_echo-2_part-phase_MEGRE.nii.gz"
    data = phase.read_bytes()
    phase.write_bytes(data[: len(data) // 3])
    for ext in (".nii.gz", ".json"):
        (root / "bids" / "sub-002" / "anat" / f"sub-002_ce-gadolinium_T1w{ext}").unlink()
    return {"root": root, "bids": root / "bids", "truth": root / "truth" / "truth.tsv"}


@pytest.fixture(scope="module")
def scheduler(cohort):
    """A dask scheduler and one 2-process worker, each a separate OS process."""
    work = cohort["root"] / "dask"
    work.mkdir()
    sfile = work / "scheduler.json"
    env = {**os.environ, "QSMIRON_FFT_WORKERS": THREADS,
           "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": THREADS, "OMP_NUM_THREADS": THREADS}
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    sched = subprocess.Popen([*dask, "--scheduler-file", str(sfile), "--port", "0",
                              "--no-dashboard"], env=env, cwd=work,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        if sfile.exists() and sfile.stat().st_size:
            break
        time.sleep(0.5)
    address = json.loads(sfile.read_text())["address"]
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                               "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                               "--memory-limit", "6GB"], env=env, cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield address
    for p in (worker, sched):
        p.terminate()
    for p in (worker, sched):
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture(scope="module")
def run(cohort, scheduler) -> dict:
    deriv = cohort["root"] / "deriv"
    rc = main(["run", str(cohort["bids"]), "--out", str(deriv), "--scheduler", scheduler])
    return {"rc": rc, "deriv": deriv, "table": _read(deriv / "qsmiron" / "measures.tsv")}


def test_every_good_subject_measured_within_bounds(cohort, run) -> None:
    truth = _read(cohort["truth"]).set_index("participant_id")
    table = run["table"].set_index("participant_id")
    for sub in ("sub-001", "sub-002"):
        row, true = table.loc[sub], truth.loc[sub]
        assert row["status"] == "ok"
        assert abs(row["rel_chi_ppb"] - true["rel_chi_ppb"]) <= 5.0
        assert abs(row["thalamus_volume_ml"] / true["thalamus_volume_ml"] - 1) <= 0.10
        assert abs(row["t2_lesion_volume_ml"] / true["t2_lesion_volume_ml"] - 1) <= 0.20
        assert row["age"] == true["age"] and row["sex"] == true["sex"]  # participants.tsv
    assert table.loc["sub-001", "enhancing_lesion_count"] == truth.loc[
        "sub-001", "enhancing_lesion_count"]
    # no post-gadolinium T1w: measured all the same, the enhancing count empty and flagged
    assert pd.isna(table.loc["sub-002", "enhancing_lesion_count"])
    assert pd.isna(table.loc["sub-002", "enhancing_lesions"])
    assert "no_gadolinium_t1w" in table.loc["sub-002", "qc_flags"]


def test_corrupt_phase_fails_alone_with_a_clear_message(run) -> None:
    assert run["rc"] == 1  # the exit status is the number of failed subjects
    bad = run["table"].set_index("participant_id").loc["sub-003"]
    assert bad["status"] == "failed" and bad["stage"] == "read"
    assert "sub-003_echo-2_part-phase_MEGRE.nii.gz" in bad["error"]
    assert "corrupt" in bad["error"]
    log = run["deriv"] / "qsmiron" / "logs" / "sub-003.log"
    assert "failed in stage read" in log.read_text()


def test_derivatives_and_data_dictionary(run) -> None:
    root = run["deriv"] / "qsmiron"
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "qsmiron"
    dictionary = json.loads((root / "measures.json").read_text())
    assert set(dictionary) == set(run["table"].columns)
    assert dictionary["rel_chi_ppb"]["Units"] == "ppb"
    record = json.loads((root / "sub-001" / "sub-001_measures.json").read_text())
    assert record["status"] == "ok" and len(record["input_hash"]) == 64
    assert (root / "sub-001" / "figures" / "sub-001_desc-anatomy_qc.png").exists()
    assert not (root / ".staging").exists() or not any((root / ".staging").iterdir())


def test_killed_run_resumes_without_redoing_finished_subjects(cohort, run, tmp_path) -> None:
    deriv = tmp_path / "deriv"
    root = deriv / "qsmiron"
    cmd = [sys.executable, "-m", "qsmiron.cli", "run", str(cohort["bids"]), "--out", str(deriv),
           "--participant-label", "001", "002", "--workers", "1", "--threads-per-worker", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = root / "sub-001" / "sub-001_measures.json"
    mid = root / ".staging" / "sub-002" / "qsmiron" / "sub-002" / "anat" / "sub-002_Chimap.nii.gz"
    t0 = time.monotonic()
    while not (first.exists() and mid.exists()):  # sub-001 done, sub-002 past its recon
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() - t0 < 900
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (root / "sub-002").exists()  # nothing of the killed subject was trusted
    stamp, content = first.stat().st_mtime_ns, first.read_bytes()
    assert main(["run", str(cohort["bids"]), "--out", str(deriv), "--participant-label",
                 "001", "002", "--workers", "1", "--threads-per-worker", "1"]) == 0
    assert first.stat().st_mtime_ns == stamp and first.read_bytes() == content
    redone = json.loads((root / "sub-002" / "sub-002_measures.json").read_text())
    assert redone["status"] == "ok"
    resumed = _read(root / "measures.tsv").reset_index(drop=True)
    ref = run["table"].iloc[:2].reset_index(drop=True)
    assert list(resumed.columns) == list(ref.columns)
    # identical inputs, parameters and one thread: ids, status, counts, flags and resume keys
    # are equal, the measures equal to float32 round-off (the chain is bit-identical within
    # one process; between processes float32 reductions vary with memory alignment, measured
    # at most 2e-5 relative, e.g. 634.4581 vs 634.4717 mL of grey matter)
    measures = [c for c in ref.columns if ref[c].dtype.kind == "f" and c != "seconds"]
    exact = [c for c in ref.columns if c not in measures and c != "seconds"]
    pd.testing.assert_frame_equal(resumed[exact], ref[exact], check_dtype=False)
    pd.testing.assert_frame_equal(resumed[measures], ref[measures], rtol=1e-4, atol=1e-6,
                                  check_dtype=False)
    shutil.rmtree(deriv)
