"""The cohort runner's bookkeeping: resume keys, staging, skip, stale, failure, the table.

These tests run :func:`qsmiron.cohort.runner.process_unit` in this process with the heavy
per-subject chain replaced by a recorder, so every rule of the module docstring is checked in
milliseconds; ``test_cohort_e2e.py`` runs the real chain on Dask.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from qsmiron.cohort import runner
from qsmiron.cohort.provenance import input_key, subject_inputs
from qsmiron.cohort.runner import Unit, build_table, load_config, process_unit, select_units
from qsmiron.errors import InputError
from qsmiron.io.bids import derivatives_dir
from qsmiron.measure.subject import MEASURES, SubjectParams, subject_record


def _dataset(root: Path, subjects=("001", "002")) -> Path:
    bids = root / "bids"
    for s in subjects:
        anat = bids / f"sub-{s}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-{s}_echo-1_part-phase_MEGRE.nii.gz").write_bytes(f"phase {s}".encode())
        (anat / f"sub-{s}_T1w.nii.gz").write_bytes(f"t1 {s}".encode())
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects],
                  "age": [40.5 + i for i in range(len(subjects))],
                  "sex": ["F", "M"][: len(subjects)]}).to_csv(
        bids / "participants.tsv", sep="\t", index=False)
    (bids / "participants.json").write_text(json.dumps({"age": {"Units": "year"}}))
    return bids


class Recorder:
    """Stands in for measure_subject: writes one output file and counts its calls."""

    def __init__(self, fail: set[str] = frozenset(), interrupt: set[str] = frozenset()):
        self.calls: list[str] = []
        self.fail, self.interrupt = fail, interrupt

    def __call__(self, bids_dir, deriv_dir, subject, session, params, progress=None):
        self.calls.append(subject if session is None else f"{subject}/{session}")
        progress("read")
        out = derivatives_dir(deriv_dir, subject, session) / "anat"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"sub-{subject}_Chimap.nii.gz").write_bytes(b"chi")
        progress("recon")
        if subject in self.interrupt:
            raise KeyboardInterrupt  # the process dies here (not an error of the subject)
        if subject in self.fail:
            raise InputError("image data truncated or corrupt", f"sub-{subject}_phase.nii.gz")
        return subject_record(subject, session, {"rel_chi_ppb": -20.0 - int(subject),
                                                 "enhancing_lesion_count": 1})


@pytest.fixture
def ds(tmp_path, monkeypatch):
    bids = _dataset(tmp_path)
    rec = Recorder()
    monkeypatch.setattr(runner, "measure_subject", rec)
    return bids, tmp_path / "deriv", rec


def _run(bids, deriv, subject, params=None):
    return process_unit(str(bids), str(deriv), Unit(subject), params or SubjectParams())


def test_finished_subject_is_skipped_and_a_changed_one_redone(ds) -> None:
    bids, deriv, rec = ds
    first = _run(bids, deriv, "001")
    assert first["status"] == "ok" and not first["skipped"]
    record = deriv / "qsmiron" / "sub-001" / "sub-001_measures.json"
    stamp = record.stat().st_mtime_ns
    again = _run(bids, deriv, "001")
    assert again["skipped"] and rec.calls == ["001"]
    assert record.stat().st_mtime_ns == stamp
    # touching a file (same content) keeps the key; changing a byte makes the subject stale
    t1 = bids / "sub-001" / "anat" / "sub-001_T1w.nii.gz"
    os.utime(t1, ns=(1, 1))
    assert _run(bids, deriv, "001")["skipped"]
    t1.write_bytes(b"t1 001 edited")
    assert not _run(bids, deriv, "001")["skipped"]
    assert rec.calls == ["001", "001"]
    # new parameters are stale too
    from qsmiron.recon.pipeline import ReconParams

    assert not _run(bids, deriv, "001", SubjectParams(recon=ReconParams(method="tkd")))["skipped"]
    assert rec.calls == ["001", "001", "001"]


def test_failure_is_recorded_and_retried(tmp_path, monkeypatch) -> None:
    bids = _dataset(tmp_path)
    deriv = tmp_path / "deriv"
    monkeypatch.setattr(runner, "measure_subject", Recorder(fail={"002"}))
    bad = _run(bids, deriv, "002")
    assert bad["status"] == "failed" and bad["stage"] == "recon"
    assert "sub-002_phase.nii.gz" in bad["error"] and "corrupt" in bad["error"]
    log = (deriv / "qsmiron" / "logs" / "sub-002.log").read_text()
    assert "failed in stage recon" in log
    rec = Recorder()
    monkeypatch.setattr(runner, "measure_subject", rec)
    assert _run(bids, deriv, "002")["status"] == "ok" and rec.calls == ["002"]


def test_a_killed_run_leaves_nothing_a_rerun_trusts(ds) -> None:
    bids, deriv, rec = ds
    _run(bids, deriv, "001")
    good = (deriv / "qsmiron" / "sub-001" / "sub-001_measures.json").read_bytes()
    # make sub-001 stale, then die in the middle of it
    (bids / "sub-001" / "anat" / "sub-001_T1w.nii.gz").write_bytes(b"changed")
    rec.interrupt = {"001"}
    with pytest.raises(KeyboardInterrupt):
        _run(bids, deriv, "001")
    root = deriv / "qsmiron"
    # the finished folder is untouched (old record, stale key), the half-work is only staged
    assert (root / "sub-001" / "sub-001_measures.json").read_bytes() == good
    assert (root / ".staging" / "sub-001" / "qsmiron" / "sub-001" / "anat").is_dir()
    rec.interrupt = set()
    out = _run(bids, deriv, "001")
    assert not out["skipped"] and out["status"] == "ok"
    assert not (root / ".staging" / "sub-001").exists()
    assert len(rec.calls) == 3


def test_table_merges_participants_and_describes_every_column(ds) -> None:
    bids, deriv, _ = ds
    _run(bids, deriv, "001")
    _run(bids, deriv, "002")
    table, dictionary = build_table(bids, deriv)
    assert list(table["participant_id"]) == ["sub-001", "sub-002"]
    assert list(table.columns[:5]) == ["participant_id", "session_id", "status", "age", "sex"]
    assert table["rel_chi_ppb"].tolist() == [-21.0, -22.0]
    assert table["enhancing_lesions"].tolist() == ["yes", "yes"]
    assert set(dictionary) == set(table.columns)
    assert dictionary["age"] == {"Units": "year"}
    for col in ("rel_chi_ppb", "thalamus_volume_ml", "t2_lesion_volume_ml"):
        assert dictionary[col]["Units"] == MEASURES[col]["Units"]


def test_input_key_rules(tmp_path) -> None:
    bids = _dataset(tmp_path)
    files = subject_inputs(bids, "001", None)
    assert [str(f) for f in files] == ["dataset_description.json",
                                       "sub-001/anat/sub-001_T1w.nii.gz",
                                       "sub-001/anat/sub-001_echo-1_part-phase_MEGRE.nii.gz"]
    k1, manifest = input_key(files, bids, {"a": 1})
    assert input_key(files, bids, {"a": 1}, known=manifest)[0] == k1
    assert input_key(files, bids, {"a": 2})[0] != k1
    # participants.tsv is not an input of one subject's run
    (bids / "participants.tsv").write_text("participant_id\nsub-001\n")
    assert input_key(subject_inputs(bids, "001", None), bids, {"a": 1})[0] == k1


def test_selection_and_config_errors(tmp_path) -> None:
    bids = _dataset(tmp_path)
    assert select_units(bids, ["sub-002"]) == [Unit("002")]
    with pytest.raises(InputError, match="sub-009 not in the dataset"):
        select_units(bids, ["009"])
    cfg = tmp_path / "study.toml"
    cfg.write_text('[recon]\nmethod = "tkd"\n[anatomy]\ncsf_radius_mm = 5\n'
                   '[run]\nworkers = 3\n[stats]\nanything = 1\n')
    params, run = load_config(cfg)
    assert params.recon.method == "tkd" and params.anatomy.csf_radius_mm == 5.0
    assert run == {"workers": 3}
    cfg.write_text("[recon]\nmethd = 'tkd'\n")
    with pytest.raises(InputError, match=r"unknown key\(s\) \['methd'\] in \[recon\]"):
        load_config(cfg)
    cfg.write_text("[anatomy]\ncsf_radius_mm = 'four'\n")
    with pytest.raises(InputError, match="csf_radius_mm must be float"):
        load_config(cfg)
    cfg.write_text("[run]\nthreads_per_worker = 1\nscheduler = 'tcp://head:8786'\n")
    assert load_config(cfg)[1] == {"threads_per_worker": 1, "scheduler": "tcp://head:8786"}
    for kw in ({"workers": 0}, {"threads_per_worker": 0}):  # refused before anything is written
        with pytest.raises(InputError, match="must be at least 1, found 0"):
            runner.run_cohort(bids, tmp_path / "out", **kw)
        assert not (tmp_path / "out").exists()
    cfg.write_text("[run]\nworkers = 0\n")
    with pytest.raises(InputError, match="workers must be a positive integer, found 0"):
        load_config(cfg)


def test_sessions_are_units(tmp_path, monkeypatch) -> None:
    bids = tmp_path / "bids"
    for ses in ("01", "02"):
        anat = bids / "sub-001" / f"ses-{ses}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-001_ses-{ses}_T1w.nii.gz").write_bytes(f"t1 {ses}".encode())
    rec = Recorder()
    monkeypatch.setattr(runner, "measure_subject", rec)
    units = select_units(bids)
    assert units == [Unit("001", "01"), Unit("001", "02")]
    deriv = tmp_path / "deriv"
    for u in units:
        assert process_unit(str(bids), str(deriv), u, SubjectParams())["status"] == "ok"
    assert (deriv / "qsmiron" / "sub-001" / "ses-02" / "sub-001_ses-02_measures.json").exists()
    # a session's key covers its own files only: editing ses-02 leaves ses-01 up to date
    (bids / "sub-001" / "ses-02" / "anat" / "sub-001_ses-02_T1w.nii.gz").write_bytes(b"new")
    assert process_unit(str(bids), str(deriv), units[0], SubjectParams())["skipped"]
    assert not process_unit(str(bids), str(deriv), units[1], SubjectParams())["skipped"]
    table, _ = build_table(bids, deriv)
    assert table["session_id"].tolist() == ["ses-01", "ses-02"]
    assert rec.calls == ["001/01", "001/02", "001/02"]
