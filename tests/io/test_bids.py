"""BIDS writers and readers: round trips against the arrays written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsmiron.errors import InputError
from qsmiron.io.bids import (
    MultiEchoGRE,
    bids_name,
    list_subjects,
    parse_bids_name,
    read_bids_anat,
    read_megre_bids,
    read_megre_nifti,
    write_bids_anat,
    write_dataset_description,
    write_megre_bids,
)
from qsmiron.io.nifti import save_nifti

from .conftest import B0, SHAPE, TE, magnitude, oblique_affine, rotation_x, wrapped_phase


def test_megre_round_trip(gre_bids):
    gre = read_megre_bids(gre_bids.root, "01")
    assert isinstance(gre, MultiEchoGRE)
    assert gre.n_echoes == 3 and gre.shape == SHAPE
    assert gre.magnitude.dtype == np.float32 and gre.phase.dtype == np.float32
    np.testing.assert_array_equal(gre.magnitude, gre_bids.magnitude)
    np.testing.assert_allclose(gre.phase, gre_bids.phase, atol=1e-6)
    np.testing.assert_array_equal(gre.te, TE)
    assert gre.te.dtype == np.float64
    assert gre.b0 == B0
    np.testing.assert_allclose(gre.affine, gre_bids.affine, atol=1e-6)
    np.testing.assert_allclose(gre.voxel_size, [1.0, 1.2, 2.0], atol=1e-6)
    # B0 (world z) in the voxel frame of a slab rotated 20 degrees about x is R^T z
    expected = rotation_x(20.0).T @ np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(gre.b0_dir, expected, atol=1e-6)
    assert abs(gre.b0_dir[1]) == pytest.approx(np.sin(np.deg2rad(20)))  # not axis-aligned
    # provenance: phase scaling came from the sidecar's Units
    assert gre.metadata["PhaseScaling"]["kind"] == "radians"
    assert gre.metadata["PhaseScaling"]["source"] == "sidecar"
    assert gre.metadata["RepetitionTime"] == 0.03 and gre.metadata["EchoTime"] == TE[0]
    assert [p.name for p in gre.sources] == [f.name for f in gre_bids.files[0::2]] + [
        f.name for f in gre_bids.files[1::2]
    ]
    z = gre.complex()
    assert z.dtype == np.complex64
    np.testing.assert_allclose(
        z, gre_bids.magnitude * np.exp(1j * gre_bids.phase), rtol=1e-5, atol=1e-3
    )


def test_megre_writer_names_and_sidecars(gre_bids):
    names = [p.name for p in gre_bids.files]
    assert names == [
        f"sub-01_echo-{e}_part-{p}_MEGRE.nii.gz" for e in (1, 2, 3) for p in ("mag", "phase")
    ]
    side = json.loads(
        gre_bids.file(2, "phase").with_name("sub-01_echo-2_part-phase_MEGRE.json").read_text()
    )
    assert side["EchoTime"] == 0.009
    assert side["MagneticFieldStrength"] == 3.0
    assert side["Units"] == "rad"
    assert side["FlipAngle"] == 15 and side["EchoNumber"] == 2
    desc = json.loads((gre_bids.root / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and "BIDSVersion" in desc
    # no stray temporary files
    assert not list(gre_bids.root.rglob("*.part"))


def test_megre_with_session_acq_and_prefixed_labels(tmp_path):
    mag, pha = magnitude(SHAPE, TE[:2]), wrapped_phase(SHAPE, TE[:2])
    files = write_megre_bids(
        tmp_path, "sub-02", mag, pha, TE[:2], np.eye(4), session="ses-b", acq="qsm"
    )
    assert files[0] == (
        tmp_path / "sub-02" / "ses-b" / "anat" / "sub-02_ses-b_acq-qsm_echo-1_part-mag_MEGRE.nii.gz"
    )
    gre = read_megre_bids(tmp_path, "sub-02", session="ses-b")  # single acq: found by itself
    assert gre.n_echoes == 2
    np.testing.assert_allclose(gre.b0_dir, [0, 0, 1])
    gre = read_megre_bids(tmp_path, "02", session="b", acq="qsm")
    np.testing.assert_allclose(gre.phase, pha, atol=1e-6)


def test_integer_phase_in_bids_is_detected(tmp_path):
    """Phase kept in scanner units (no Units in sidecar) is scaled automatically."""
    pha = wrapped_phase(SHAPE, TE, seed=7)
    mag = magnitude(SHAPE, TE)
    raw = (np.round((pha + np.pi) / (2 * np.pi) * 8192).astype(int) % 8192) - 4096
    for e, t in enumerate(TE, start=1):
        side = {"EchoTime": t, "MagneticFieldStrength": 7}
        write_bids_anat(
            tmp_path,
            "01",
            "MEGRE",
            mag[..., e - 1],
            np.eye(4),
            entities={"echo": e, "part": "mag"},
            sidecar=side,
        )
        save_nifti(
            tmp_path / "sub-01" / "anat" / f"sub-01_echo-{e}_part-phase_MEGRE.nii.gz",
            raw[..., e - 1].astype(np.int16),
            np.eye(4),
            sidecar={"EchoTime": t},
        )
    gre = read_megre_bids(tmp_path, "01")
    assert gre.b0 == 7.0
    assert gre.metadata["PhaseScaling"]["lo"] == -4096
    d = np.abs(np.mod(gre.phase - pha + np.pi, 2 * np.pi) - np.pi)
    assert d.max() <= np.pi / 8192 + 1e-5


def test_sidecar_inheritance_from_dataset_root(tmp_path):
    mag, pha = magnitude(SHAPE, TE), wrapped_phase(SHAPE, TE)
    write_megre_bids(
        tmp_path, "01", mag, pha, TE, np.eye(4), b0=None, sidecar={"RepetitionTime": 0.03}
    )
    (tmp_path / "MEGRE.json").write_text(
        json.dumps({"MagneticFieldStrength": 7.0, "RepetitionTime": 9.9, "InstitutionName": "X"})
    )
    gre = read_megre_bids(tmp_path, "01")
    assert gre.b0 == 7.0  # inherited from the root
    assert gre.metadata["RepetitionTime"] == 0.03  # the image's own sidecar wins
    assert gre.metadata["InstitutionName"] == "X"


def test_real_imag_round_trip(tmp_path):
    mag, pha = magnitude(SHAPE, TE), wrapped_phase(SHAPE, TE).astype(np.float32)
    z = mag * np.exp(1j * pha)
    aff = oblique_affine(10.0)
    for e, t in enumerate(TE, start=1):
        side = {"EchoTime": t, "MagneticFieldStrength": 3}
        for part, vol in (("real", z.real), ("imag", z.imag)):
            write_bids_anat(
                tmp_path,
                "01",
                "MEGRE",
                vol[..., e - 1].astype(np.float32),
                aff,
                entities={"echo": e, "part": part},
                sidecar=side,
            )
    gre = read_megre_bids(tmp_path, "01")
    np.testing.assert_allclose(gre.magnitude, mag, rtol=1e-5)
    d = np.abs(np.mod(gre.phase - pha + np.pi, 2 * np.pi) - np.pi)
    assert d.max() < 1e-5
    assert gre.metadata["PhaseScaling"]["kind"] == "complex"
    assert gre.phase.max() < np.pi and gre.phase.min() >= -np.pi


def test_read_megre_nifti_4d_and_3d_lists(tmp_path):
    mag, pha = magnitude(SHAPE, TE), wrapped_phase(SHAPE, TE)
    raw = np.round((pha + np.pi) / (2 * np.pi) * 4096).astype(int) % 4096  # 0..4095
    aff = oblique_affine()
    save_nifti(tmp_path / "mag.nii.gz", mag, aff, sidecar={"MagneticFieldStrength": 1.5})
    save_nifti(tmp_path / "phase.nii.gz", raw.astype(np.uint16), aff)
    gre = read_megre_nifti(tmp_path / "mag.nii.gz", tmp_path / "phase.nii.gz", TE)
    assert gre.b0 == 1.5  # from the magnitude's sidecar
    assert gre.metadata["PhaseScaling"]["lo"] == 0 and gre.metadata["PhaseScaling"]["hi"] == 4095
    # 0..4095 is mapped linearly onto -pi..pi: stored 2048 is 0 rad
    expected = (raw - 2048) * (2 * np.pi / 4096)
    d = np.abs(np.mod(gre.phase - expected + np.pi, 2 * np.pi) - np.pi)
    assert d.max() < 1e-5
    mags, phases = [], []
    for e in range(3):
        mags.append(save_nifti(tmp_path / f"m{e}.nii", mag[..., e], aff))
        phases.append(save_nifti(tmp_path / f"p{e}.nii", pha[..., e].astype(np.float32), aff))
    gre2 = read_megre_nifti(mags, phases, TE, b0=3.0, phase_scale="rad")
    np.testing.assert_array_equal(gre2.magnitude, mag)
    np.testing.assert_allclose(gre2.phase, pha, atol=1e-6)
    assert gre2.b0 == 3.0 and gre2.metadata["PhaseScaling"]["source"] == "user"


def test_anat_writer_names_and_reader_choice(tmp_path):
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    t1 = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    p1 = write_bids_anat(tmp_path, "01", "T1w", t1, aff, sidecar={"RepetitionTime": 2.3})
    p2 = write_bids_anat(tmp_path, "01", "T1w", t1 + 1000, aff, entities={"ce": "gadolinium"})
    p3 = write_bids_anat(tmp_path, "01", "FLAIR", t1 * 2, aff, session=None)
    assert p1.name == "sub-01_T1w.nii.gz"
    assert p2.name == "sub-01_ce-gadolinium_T1w.nii.gz"
    assert p3.name == "sub-01_FLAIR.nii.gz"
    assert p1.with_name("sub-01_T1w.json").exists()
    data, affine, path = read_bids_anat(tmp_path, "01", "T1w")
    assert path == p1
    np.testing.assert_array_equal(data, t1)
    data, _, path = read_bids_anat(tmp_path, "sub-01", "T1w", entities={"ce": "gadolinium"})
    assert path == p2 and data[0, 0, 0] == 1000
    with pytest.raises(InputError) as err:
        read_bids_anat(tmp_path, "01", "T2w")
    msg = str(err.value)
    assert "no T2w image for sub-01" in msg and "sub-01_FLAIR.nii.gz" in msg


def test_anat_reader_accepts_single_run_only(tmp_path):
    vol = np.ones((2, 2, 2), np.float32)
    write_bids_anat(tmp_path, "01", "FLAIR", vol, np.eye(4), entities={"run": 1})
    _, _, path = read_bids_anat(tmp_path, "01", "FLAIR")
    assert path.name == "sub-01_run-1_FLAIR.nii.gz"
    write_bids_anat(tmp_path, "01", "FLAIR", vol, np.eye(4), entities={"run": 2})
    with pytest.raises(InputError, match="several files match FLAIR"):
        read_bids_anat(tmp_path, "01", "FLAIR")
    # a post-contrast image is never taken for a plain T1w
    write_bids_anat(tmp_path, "01", "T1w", vol, np.eye(4), entities={"ce": "gadolinium"})
    with pytest.raises(InputError, match="no T1w image"):
        read_bids_anat(tmp_path, "01", "T1w")


def test_bids_name_entity_order_and_parse():
    name = bids_name("01", "T1w", "02", {"run": 2, "ce": "gadolinium", "acq": "mprage"})
    assert name == "sub-01_ses-02_acq-mprage_ce-gadolinium_run-2_T1w.nii.gz"
    assert bids_name("sub-3", "MEGRE", None, {"part": "phase", "echo": 4}, ".json") == (
        "sub-3_echo-4_part-phase_MEGRE.json"
    )
    ents, suffix, ext = parse_bids_name("sub-01_ses-02_echo-3_part-mag_MEGRE.nii.gz")
    assert ents == {"sub": "01", "ses": "02", "echo": "3", "part": "mag"}
    assert (suffix, ext) == ("MEGRE", ".nii.gz")
    assert parse_bids_name("notbids.nii") is None or parse_bids_name("notbids.nii")[0] == {}
    with pytest.raises(InputError, match="unknown BIDS entity 'colour'"):
        bids_name("01", "T1w", entities={"colour": "red"})
    with pytest.raises(InputError, match="invalid subject label"):
        bids_name("01_x", "T1w")


def test_dataset_description_and_list_subjects(tmp_path):
    p = write_dataset_description(tmp_path / "deriv", "qsm", dataset_type="derivative")
    desc = json.loads(p.read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "qsmiron"
    with pytest.raises(InputError, match="'raw' or 'derivative'"):
        write_dataset_description(tmp_path, "x", dataset_type="processed")
    vol = np.ones((2, 2, 2), np.float32)
    write_bids_anat(tmp_path, "01", "T1w", vol, np.eye(4))
    write_bids_anat(tmp_path, "02", "T1w", vol, np.eye(4), session="b")
    write_bids_anat(tmp_path, "02", "T1w", vol, np.eye(4), session="a")
    assert list_subjects(tmp_path) == [("01", None), ("02", "a"), ("02", "b")]
    # a subject with one session is found without naming it; with two it must be named
    _, _, path = read_bids_anat(tmp_path, "01", "T1w")
    assert path.parent.parent.name == "sub-01"
    with pytest.raises(InputError, match=r"several sessions \(a, b\)"):
        read_bids_anat(tmp_path, "02", "T1w")


def test_multiechogre_validates_itself():
    mag = np.ones((2, 2, 2, 2), np.float32)
    with pytest.raises(InputError, match="strictly increasing"):
        MultiEchoGRE(mag, mag, [0.01, 0.005], 3.0, np.eye(4))
    with pytest.raises(InputError, match="same shape"):
        MultiEchoGRE(mag, mag[..., :1], [0.01, 0.02], 3.0, np.eye(4))
    gre = MultiEchoGRE(mag[..., 0], mag[..., 0], 0.01, None, np.eye(4))
    assert gre.n_echoes == 1 and gre.b0 is None


def test_writer_takes_field_from_sidecar_without_warning(tmp_path, caplog):
    mag, pha = magnitude(SHAPE, TE[:2]), wrapped_phase(SHAPE, TE[:2])
    with caplog.at_level("WARNING"):
        write_megre_bids(
            tmp_path,
            "01",
            mag,
            pha,
            TE[:2],
            np.eye(4),
            b0=None,
            sidecar={"MagneticFieldStrength": 1.5, "Manufacturer": "sim"},
        )
    assert not caplog.records
    gre = read_megre_bids(tmp_path, "01")
    assert gre.b0 == 1.5 and gre.metadata["Manufacturer"] == "sim"
    with caplog.at_level("WARNING"):
        write_megre_bids(
            tmp_path,
            "01",
            mag,
            pha,
            TE[:2],
            np.eye(4),
            b0=3.0,
            sidecar={"MagneticFieldStrength": 1.5},
            run=1,
        )
    assert "MagneticFieldStrength=1.5 ignored" in caplog.text
    gre = read_megre_bids(tmp_path, "01", run="01")  # run-1 and run-01 are one index
    assert gre.b0 == 3.0
