"""Synthetic cohorts: the reference study's distributions and effects, BIDS output, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qsmiron.errors import InputError
from qsmiron.io.bids import read_bids_anat, read_megre_bids
from qsmiron.io.nifti import load_nifti, read_json
from qsmiron.simulate.cohort import Effects, cohort_table, draw_subject, simulate_cohort
from qsmiron.simulate.scan import Protocol


@pytest.fixture(scope="module")
def big_table() -> pd.DataFrame:
    return cohort_table(3000, seed=11)


def _ols(y: np.ndarray, *xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and standard errors of y ~ 1 + xs (textbook OLS)."""
    x = np.column_stack([np.ones_like(y), *xs])
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    s2 = resid @ resid / (len(y) - x.shape[1])
    se = np.sqrt(np.diag(s2 * np.linalg.inv(x.T @ x)))
    return beta, se


def test_marginals_match_the_reference_cohort(big_table):
    df = big_table
    n = len(df)
    # Chiang et al. 2018: age 42 +/- 10 (25-71), 2/3 female, 57/95 on therapy, 9/95 enhancing,
    # relative chi -29.0 +/- 11.7 ppb, lesion volume 11.0 +/- 15.8 mL, thalamus 14.0 +/- 2.1 mL,
    # GM 607 +/- 67 mL, thickness 2.40 +/- 0.16 mm. Tolerances: 4 standard errors, plus the
    # small shift that truncating age to 25-71 causes.
    assert df["age"].between(25, 71).all()
    assert df["age"].mean() == pytest.approx(42.0, abs=4 * 10 / np.sqrt(n) + 0.3)
    for col, p in (("sex", 2 / 3), ("therapy", 57 / 95), ("enhancing_lesions", 9 / 95)):
        level = {"sex": "F", "therapy": "yes", "enhancing_lesions": "yes"}[col]
        frac = (df[col] == level).mean()
        assert frac == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / n))
    chi = df["rel_chi_ppb"]
    assert chi.mean() == pytest.approx(-29.0, abs=4 * 11.7 / np.sqrt(n))
    assert chi.std() == pytest.approx(11.7, rel=4 / np.sqrt(2 * n))
    lv = df["t2_lesion_volume_ml"]
    assert lv.median() == pytest.approx(11.0 / np.sqrt(1 + (15.8 / 11.0) ** 2), rel=0.1)
    assert np.log(lv).std() == pytest.approx(np.sqrt(np.log(1 + (15.8 / 11) ** 2)), rel=0.06)
    assert df["thalamus_volume_ml"].mean() == pytest.approx(14.0, abs=4 * 2.1 / np.sqrt(n))
    assert df["total_gm_volume_ml"].mean() == pytest.approx(607, abs=4 * 67 / np.sqrt(n))
    assert df["cortical_thickness_mm"].mean() == pytest.approx(2.40, abs=4 * 0.16 / np.sqrt(n))
    assert (df["disease_duration"] >= 0).all() and (df["disease_duration"] < df["age"]).all()
    assert df["edss"].between(0, 9.5).all() and (df["edss"] * 2 % 1 == 0).all()


def test_effects_are_recovered(big_table):
    df = big_table
    enh = (df["enhancing_lesions"] == "yes").to_numpy(float)
    chi = df["rel_chi_ppb"].to_numpy()
    beta, se = _ols(chi, enh)
    assert abs(beta[1] - 10.68) < 4 * se[1]  # Table 2: enhancing lesions, adjusted
    beta, se = _ols(np.log(df["t2_lesion_volume_ml"].to_numpy()), chi)
    assert abs(beta[1] - 0.029) < 4 * se[1]  # Table 1: log lesion volume on chi, adjusted
    beta, se = _ols(df["thalamus_volume_ml"].to_numpy(), chi)
    assert abs(beta[1]) < 4 * se[1]  # no association by default
    # enhancing subjects have enhancing lesions, the others none
    assert ((df["enhancing_lesion_count"] > 0) == (enh > 0)).all()
    assert (df["lesion_count"] >= df["enhancing_lesion_count"]).all()


def test_user_effects_change_the_truth():
    strong = Effects(gm_ml_per_chi_ppb=-3.0)
    df = cohort_table(2000, seed=3, effects=strong)
    beta, se = _ols(df["total_gm_volume_ml"].to_numpy(), df["rel_chi_ppb"].to_numpy())
    assert abs(beta[1] + 3.0) < 4 * se[1]
    with pytest.raises(InputError, match="unknown effect"):
        Effects.from_mapping({"gm_per_chi": 1.0})


def test_subjects_are_stable_when_the_cohort_grows():
    assert draw_subject(4, seed=9)["participant_id"] == "sub-005"
    small = cohort_table(5, seed=9)
    large = cohort_table(12, seed=9)
    pd.testing.assert_frame_equal(small, large.iloc[:5])


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    simulate_cohort(out, 2, seed=5, voxel_size=4.0, protocol=Protocol(te=(0.004, 0.009, 0.014)))
    return out


def test_cohort_is_bids_with_truth(cohort_dir):
    bids = cohort_dir / "bids"
    assert (bids / "dataset_description.json").exists()
    parts = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert list(parts["participant_id"]) == ["sub-001", "sub-002"]
    assert {"age", "sex", "disease_duration", "therapy", "edss"} <= set(parts.columns)
    gre = read_megre_bids(bids, "001")
    assert gre.n_echoes == 3
    np.testing.assert_allclose(gre.te, [0.004, 0.009, 0.014])
    assert gre.b0 == 3.0
    np.testing.assert_allclose(gre.voxel_size, 4.0)
    np.testing.assert_allclose(gre.b0_dir, [0, 0, 1], atol=1e-12)
    for suffix, ents in (("T1w", None), ("FLAIR", None), ("T1w", {"ce": "gadolinium"})):
        data, aff, _ = read_bids_anat(bids, "001", suffix, entities=ents)
        assert data.shape == gre.magnitude.shape[:3]
        np.testing.assert_allclose(aff, gre.affine)
    truth = read_json(cohort_dir / "truth" / "sub-001" / "sub-001_truth.json")
    table = pd.read_csv(cohort_dir / "truth" / "truth.tsv", sep="\t")
    assert table.loc[0, "rel_chi_ppb"] == pytest.approx(truth["rel_chi_ppb"], rel=1e-5)
    assert truth["sign_convention"].startswith("rel_chi_ppb = mean(thalamus) - mean(CSF")
    # requested targets are realised on the phantom
    assert truth["thalamus_volume_ml"] == pytest.approx(truth["targets"]["thalamus_volume_ml"],
                                                        abs=0.01)
    assert truth["total_gm_volume_ml"] == pytest.approx(truth["targets"]["total_gm_volume_ml"],
                                                        abs=0.01)


def test_phase_is_the_true_field(cohort_dir):
    """Noise-free check: the phase difference between echoes equals gamma B0 dTE field."""
    bids = cohort_dir / "bids"
    gre = read_megre_bids(bids, "001")
    tdir = cohort_dir / "truth" / "sub-001"
    field, _, _ = load_nifti(tdir / "sub-001_desc-total_fieldmap.nii.gz")
    labels, _, _ = load_nifti(tdir / "sub-001_dseg.nii.gz")
    brain = (labels == 6) & (gre.magnitude[..., 0] > 0)  # white matter: high SNR
    s = gre.complex()
    dphi = np.angle(s[..., 1] * np.conj(s[..., 0]))[brain]
    expected = 2 * np.pi * 42.577478518e6 * 3.0 * (gre.te[1] - gre.te[0]) * field[brain] * 1e-6
    err = np.angle(np.exp(1j * (dphi - expected)))
    # noise SD of a phase difference at SNR ~100 is about sqrt(2)/100 rad
    assert np.median(np.abs(err)) < 0.05


def test_same_seed_same_bytes(cohort_dir, tmp_path):
    simulate_cohort(tmp_path, 2, seed=5, voxel_size=4.0,
                    protocol=Protocol(te=(0.004, 0.009, 0.014)))
    assert _digest(tmp_path) == _digest(cohort_dir)


def test_parallel_workers_write_the_same_bytes(cohort_dir, tmp_path):
    """Subjects simulated in two processes, each with its own share of the cores: the same
    files as one after the other in this process (progress reported for every subject)."""
    seen = []
    simulate_cohort(tmp_path, 2, seed=5, voxel_size=4.0,
                    protocol=Protocol(te=(0.004, 0.009, 0.014)), workers=2,
                    progress=lambda done, total, sub: seen.append((done, total, sub)))
    assert _digest(tmp_path) == _digest(cohort_dir)
    assert [d for d, _, _ in seen] == [1, 2] and {s for _, _, s in seen} == {"sub-001",
                                                                            "sub-002"}


@pytest.mark.parametrize("kwargs", [{"snr": -1.0}, {"snr": 0.0}, {"structural_snr": 0.0},
                                    {"te": ()}, {"te": (0.01, 0.005)}, {"te": (-0.001, 0.004)},
                                    {"b0": 0.0}, {"bias_amplitude": -0.1}])
def test_impossible_protocol_is_refused_up_front(kwargs):
    with pytest.raises(InputError, match="must"):
        Protocol(**kwargs)


def test_refuses_to_overwrite(cohort_dir):
    with pytest.raises(InputError, match="not empty"):
        simulate_cohort(cohort_dir, 1, seed=5, voxel_size=4.0)


def test_oblique_anisotropic_acquisition(tmp_path):
    """An oblique slab of 2x2x4 mm voxels: B0 off the voxel axes, phase still the true field."""
    simulate_cohort(tmp_path, 1, seed=8, voxel_size=(2.0, 2.0, 4.0),
                    protocol=Protocol(te=(0.004, 0.009)), slab_rotation_deg=(20.0, 0.0, 0.0))
    gre = read_megre_bids(tmp_path / "bids", "001")
    np.testing.assert_allclose(gre.voxel_size, [2.0, 2.0, 4.0], atol=1e-6)
    a = np.deg2rad(20.0)
    np.testing.assert_allclose(gre.b0_dir, [0.0, np.sin(a), np.cos(a)], atol=1e-6)
    tdir = tmp_path / "truth" / "sub-001"
    field, _, _ = load_nifti(tdir / "sub-001_desc-total_fieldmap.nii.gz")
    labels, _, _ = load_nifti(tdir / "sub-001_dseg.nii.gz")
    wm = labels == 6
    s = gre.complex()
    dphi = np.angle(s[..., 1] * np.conj(s[..., 0]))[wm]
    expected = 2 * np.pi * 42.577478518e6 * 3.0 * 0.005 * field[wm] * 1e-6
    assert np.median(np.abs(np.angle(np.exp(1j * (dphi - expected))))) < 0.05
    assert (tdir / "sub-001_dseg.tsv").read_text().startswith("index\tname")
