"""DICOM -> BIDS through the real dcm2niix, on synthetic Siemens-like series with known truth."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from qsmiron.errors import InputError
from qsmiron.io.bids import read_bids_anat, read_megre_bids
from qsmiron.io.dicom import DCM2NIIX_ENV, classify_series, dicom_to_bids, find_dcm2niix

from .dicom_factory import (
    GreSpec,
    true_magnitude,
    true_phase,
    voxel_world_lps,
    write_megre_dicom,
    write_single_series,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """One DICOM study (3-echo GRE mag + phase, T1w, post-Gd T1w, FLAIR, localizer) in BIDS."""
    base = tmp_path_factory.mktemp("dicom")
    dicom = base / "dicom"
    spec = write_megre_dicom(dicom)
    write_single_series(dicom, "t1_mprage_sag", 2)
    write_single_series(dicom, "t1_mprage_sag_post_gd", 9)
    write_single_series(dicom, "t2_space_dark-fluid_FLAIR", 3, scanning_sequence="SE\\IR")
    write_single_series(dicom, "localizer", 1, scanning_sequence="GR")
    bids = base / "bids"
    files = dicom_to_bids(dicom, bids, "sub-01", session="pre")
    return spec, bids, files


def test_dicom_to_bids_names(converted):
    _, bids, files = converted
    anat = bids / "sub-01" / "ses-pre" / "anat"
    megre = [
        f"sub-01_ses-pre_echo-{e}_part-{p}_MEGRE.nii.gz"
        for e in (1, 2, 3)
        for p in ("mag", "phase")
    ]
    others = [
        "sub-01_ses-pre_FLAIR.nii.gz",
        "sub-01_ses-pre_T1w.nii.gz",
        "sub-01_ses-pre_ce-gadolinium_T1w.nii.gz",
    ]
    assert sorted(p.name for p in files) == sorted(megre + others)
    assert all(p.parent == anat and p.exists() for p in files)
    assert all(p.with_name(p.name.replace(".nii.gz", ".json")).exists() for p in files)
    # the unidentified localizer is kept aside, not lost
    kept = list((bids / "sourcedata" / "dcm2niix" / "sub-01" / "ses-pre").glob("*.nii.gz"))
    assert [p.name for p in kept] == ["1_localizer.nii.gz"]
    assert (bids / "dataset_description.json").exists()
    assert not list(bids.glob(".dcm2niix-*"))  # temporary folder removed
    # each anatomical image holds its own series (pixel values encode the series number)
    for name, number in (("T1w", 2), ("FLAIR", 3)):
        data, _, _ = read_bids_anat(bids, "01", name, session="pre")
        assert data.min() == 100 * number
    data, _, _ = read_bids_anat(bids, "01", "T1w", session="pre", entities={"ce": "gadolinium"})
    assert data.min() == 900


def test_dicom_megre_round_trip(converted):
    spec, bids, _ = converted
    gre = read_megre_bids(bids, "01", session="pre")
    assert gre.n_echoes == 3
    np.testing.assert_allclose(gre.te, np.asarray(spec.te_ms) / 1000, atol=1e-9)
    assert gre.b0 == 3.0
    assert gre.shape == (spec.columns, spec.rows, spec.slices)
    np.testing.assert_allclose(gre.voxel_size, [1.0, 1.5, 2.0], atol=1e-5)
    np.testing.assert_allclose(gre.b0_dir, [0, 0, 1], atol=1e-6)
    scaling = gre.metadata["PhaseScaling"]
    assert scaling["kind"] == "integer_range" and (scaling["lo"], scaling["hi"]) == (-4096, 4095)
    assert gre.metadata["EchoTime"] == pytest.approx(0.004)
    # compare with the truth at each voxel's world position (whatever flips dcm2niix made)
    lps = voxel_world_lps(gre.affine, gre.shape)
    for e, te_ms in enumerate(spec.te_ms):
        expected = true_phase(lps, te_ms / 1000, spec)
        d = np.abs(np.mod(gre.phase[..., e] - expected + np.pi, 2 * np.pi) - np.pi)
        assert d.max() <= np.pi / 4096 + 1e-5  # half a step of the 4096-level encoding
        np.testing.assert_array_equal(gre.magnitude[..., e], true_magnitude(lps, te_ms / 1000))
    assert gre.phase.min() >= -np.pi and gre.phase.max() < np.pi


def test_no_dicom_in_folder(tmp_path):
    folder = tmp_path / "notdicom"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM images found") as err:
        dicom_to_bids(folder, tmp_path / "bids", "01")
    assert err.value.path == folder
    assert not list((tmp_path / "bids").glob(".dcm2niix-*"))


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="DICOM folder is empty"):
        dicom_to_bids(tmp_path / "empty", tmp_path / "bids", "01")
    with pytest.raises(InputError, match="DICOM folder not found"):
        dicom_to_bids(tmp_path / "missing", tmp_path / "bids", "01")


def test_dcm2niix_failure_reports_stderr(tmp_path, monkeypatch):
    fake = tmp_path / "fake-dcm2niix"
    fake.write_text("#!/bin/sh\necho 'Error: simulated converter crash' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    dicom = tmp_path / "dicom"
    write_megre_dicom(dicom, GreSpec(te_ms=(4.0, 8.0), slices=2))
    monkeypatch.setenv(DCM2NIIX_ENV, str(fake))
    with pytest.raises(InputError) as err:
        dicom_to_bids(dicom, tmp_path / "bids", "01")
    msg = str(err.value)
    assert "exit code 3" in msg and "simulated converter crash" in msg
    assert not list((tmp_path / "bids").glob(".dcm2niix-*"))


def test_find_dcm2niix_is_executable():
    exe = find_dcm2niix()
    assert exe.is_file() and os.access(exe, os.X_OK)


def test_dicom_sidecars_keep_echo_time_in_seconds(converted):
    _, bids, _ = converted
    side = bids / "sub-01" / "ses-pre" / "anat" / "sub-01_ses-pre_echo-2_part-phase_MEGRE.json"
    meta = json.loads(side.read_text())
    assert meta["EchoTime"] == pytest.approx(0.009)
    assert "P" in meta["ImageType"]


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("t1_mprage_sag_p2_iso", ("T1w", {})),
        ("T1 MPRAGE +C", ("T1w", {"ce": "gadolinium"})),
        ("t1_mprage_post_gd", ("T1w", {"ce": "gadolinium"})),
        ("t2_space_dark-fluid_sag", ("FLAIR", {})),
        ("3D FLAIR", ("FLAIR", {})),
        ("t2_tse_tra", ("T2w", {})),
        ("localizer", None),
        ("gre_me_qsm", None),
    ],
)
def test_classify_series(description, expected):
    assert classify_series(description) == expected
