"""Bad input gives an InputError that names the file and says what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsmiron.errors import InputError
from qsmiron.io.bids import read_megre_bids, read_megre_nifti, write_megre_bids
from qsmiron.io.nifti import load_nifti, save_nifti

from .conftest import SHAPE, TE, magnitude, wrapped_phase


def sidecar_of(image):
    return image.with_name(image.name.replace(".nii.gz", ".json"))


def edit_sidecar(image, **changes):
    path = sidecar_of(image)
    content = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            content.pop(key, None)
        else:
            content[key] = value
    path.write_text(json.dumps(content))
    return path


def read_error(root, **kwargs) -> InputError:
    with pytest.raises(InputError) as err:
        read_megre_bids(root, "01", **kwargs)
    return err.value


def test_missing_middle_echo(gre_bids):
    for part in ("mag", "phase"):
        gre_bids.file(2, part).unlink()
    err = read_error(gre_bids.root)
    msg = str(err)
    assert "echo-2 missing" in msg and "found echo-1, echo-3" in msg
    assert err.path == gre_bids.root / "sub-01" / "anat"


def test_magnitude_without_phase(gre_bids):
    gre_bids.file(2, "phase").unlink()
    err = read_error(gre_bids.root)
    assert err.path == gre_bids.file(2, "mag")
    assert "sub-01_echo-2_part-mag_MEGRE.nii.gz" in str(err)
    assert "no matching part-phase file" in str(err)
    assert "sub-01_echo-2_part-phase_MEGRE.nii.gz" in str(err)  # the expected name


def test_phase_without_magnitude(gre_bids):
    gre_bids.file(3, "mag").unlink()
    err = read_error(gre_bids.root)
    assert err.path == gre_bids.file(3, "phase")
    assert "echo-3 has part-phase but no matching part-mag file" in str(err)


def test_mismatched_shape(gre_bids):
    save_nifti(gre_bids.file(2, "phase"), np.zeros((12, 10, 7), np.float32), gre_bids.affine)
    err = read_error(gre_bids.root)
    assert err.path == gre_bids.file(2, "phase")
    assert "shape (12, 10, 7) differs from (12, 10, 8)" in str(err)
    assert "sub-01_echo-1_part-mag_MEGRE.nii.gz" in str(err)


def test_mismatched_affine(gre_bids):
    shifted = gre_bids.affine.copy()
    shifted[0, 3] += 2.0
    save_nifti(gre_bids.file(3, "mag"), gre_bids.magnitude[..., 2], shifted)
    err = read_error(gre_bids.root)
    assert err.path == gre_bids.file(3, "mag")
    assert "affine differs" in str(err) and "2 mm" in str(err)


def test_non_increasing_echo_times(gre_bids):
    side = edit_sidecar(gre_bids.file(2, "mag"), EchoTime=0.003)
    edit_sidecar(gre_bids.file(2, "phase"), EchoTime=0.003)
    err = read_error(gre_bids.root)
    assert err.path == side
    assert "EchoTime 0.003 s of echo-2 is not larger than 0.004 s of echo-1" in str(err)


def test_sidecar_without_echo_time(gre_bids):
    side = edit_sidecar(gre_bids.file(1, "mag"), EchoTime=None)
    err = read_error(gre_bids.root)
    assert err.path == side
    assert "sidecar has no EchoTime" in str(err) and "seconds" in str(err)


def test_no_sidecar_at_all(gre_bids):
    sidecar_of(gre_bids.file(1, "mag")).unlink()
    err = read_error(gre_bids.root)
    assert "no JSON sidecar with EchoTime for sub-01_echo-1_part-mag_MEGRE.nii.gz" in str(err)


def test_echo_time_in_milliseconds(gre_bids):
    side = edit_sidecar(gre_bids.file(1, "mag"), EchoTime=4.3)
    err = read_error(gre_bids.root)
    assert err.path == side
    msg = str(err)
    assert "look like milliseconds" in msg and "in seconds" in msg and "0.0043" in msg


def test_phase_and_magnitude_echo_times_disagree(gre_bids):
    side = edit_sidecar(gre_bids.file(3, "phase"), EchoTime=0.015)
    err = read_error(gre_bids.root)
    assert err.path == side and "EchoTime 0.015 differs from 0.014" in str(err)


def test_nan_voxels(gre_bids):
    vol = gre_bids.magnitude[..., 0].copy()
    vol[3, 4, 5] = np.nan
    save_nifti(gre_bids.file(1, "mag"), vol, gre_bids.affine)
    err = read_error(gre_bids.root)
    assert err.path == gre_bids.file(1, "mag") and "1 voxels are NaN" in str(err)


def test_truncated_file(gre_bids):
    path = gre_bids.file(2, "phase")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    err = read_error(gre_bids.root)
    assert err.path == path
    assert "truncated or corrupt" in str(err)
    path.write_bytes(raw[:40])  # not even a whole header
    err = read_error(gre_bids.root)
    assert err.path == path and "not a readable NIfTI image" in str(err)


def test_swapped_magnitude_and_phase(gre_bids):
    for e in (1, 2, 3):
        save_nifti(gre_bids.file(e, "mag"), gre_bids.phase[..., e - 1], gre_bids.affine)
        save_nifti(
            gre_bids.file(e, "phase"),
            gre_bids.magnitude[..., e - 1],
            gre_bids.affine,
            sidecar={"EchoTime": TE[e - 1]},
        )  # no Units: scanner-like
    err = read_error(gre_bids.root)
    assert err.path == gre_bids.file(1, "mag")
    msg = str(err)
    assert "negative values" in msg and "looks like a phase image" in msg and "swapped" in msg


def test_magnitude_stored_as_phase(gre_bids):
    for e in (1, 2, 3):
        mag_as_int = np.round(gre_bids.magnitude[..., e - 1]).astype(np.int16)
        save_nifti(
            gre_bids.file(e, "phase"), mag_as_int, gre_bids.affine, sidecar={"EchoTime": TE[e - 1]}
        )
    err = read_error(gre_bids.root)
    assert err.path == gre_bids.file(1, "phase")
    assert "magnitude and phase may be swapped" in str(err) and "--phase-range" in str(err)


def test_dataset_and_subject_not_found(gre_bids, tmp_path):
    with pytest.raises(InputError, match="BIDS dataset folder not found") as err:
        read_megre_bids(tmp_path / "nowhere", "01")
    assert err.value.path == tmp_path / "nowhere"
    with pytest.raises(InputError, match="subject sub-99 not found; subjects in the dataset: 01"):
        read_megre_bids(gre_bids.root, "99")
    with pytest.raises(InputError, match="session ses-x not found"):
        read_megre_bids(gre_bids.root, "01", session="x")


def test_no_megre_files(gre_bids):
    for p in gre_bids.files:
        p.unlink()
    err = read_error(gre_bids.root)
    assert "no multi-echo GRE images" in str(err) and err.path.name == "anat"


def test_several_acquisitions_need_a_choice(gre_bids):
    write_megre_bids(
        gre_bids.root, "01", gre_bids.magnitude, gre_bids.phase, TE, gre_bids.affine, acq="fast"
    )
    err = read_error(gre_bids.root)
    assert "differ in 'acq' ((no acq), acq-fast); say which one" in str(err)
    gre = read_megre_bids(gre_bids.root, "01", acq="fast")
    assert gre.sources[0].name == "sub-01_acq-fast_echo-1_part-mag_MEGRE.nii.gz"
    gre = read_megre_bids(gre_bids.root, "01", acq="")
    assert gre.sources[0].name == "sub-01_echo-1_part-mag_MEGRE.nii.gz"


def test_read_megre_nifti_errors(tmp_path):
    mag, pha = magnitude(SHAPE, TE), wrapped_phase(SHAPE, TE).astype(np.float32)
    m = save_nifti(tmp_path / "mag.nii.gz", mag, np.eye(4))
    p = save_nifti(tmp_path / "phase.nii.gz", pha, np.eye(4))
    with pytest.raises(InputError, match="look like milliseconds") as err:
        read_megre_nifti(m, p, [4.0, 9.0, 14.0])
    assert err.value.path == m
    with pytest.raises(InputError, match="2 echo times given for 3 echoes"):
        read_megre_nifti(m, p, [0.004, 0.009])
    with pytest.raises(InputError, match="strictly increasing"):
        read_megre_nifti(m, p, [0.004, 0.014, 0.009])
    with pytest.raises(InputError, match="looks like a phase image") as err:
        read_megre_nifti(p, m, TE)
    assert err.value.path == p
    p2 = save_nifti(tmp_path / "phase2.nii.gz", pha[..., :2], np.eye(4))
    with pytest.raises(InputError, match="3 magnitude echoes but 2 phase echoes"):
        read_megre_nifti(m, p2, TE)
    with pytest.raises(InputError, match="image file not found"):
        read_megre_nifti(tmp_path / "missing.nii", p, TE)


def test_writer_refuses_milliseconds_and_writes_nothing(tmp_path):
    mag, pha = magnitude(SHAPE, TE), wrapped_phase(SHAPE, TE)
    with pytest.raises(InputError, match="look like milliseconds"):
        write_megre_bids(tmp_path / "b", "01", mag, pha, [4.0, 9.0, 14.0], np.eye(4))
    assert not (tmp_path / "b").exists()
    with pytest.raises(InputError, match="same shape"):
        write_megre_bids(tmp_path / "b", "01", mag, pha[..., :2], TE, np.eye(4))


def test_load_nifti_names_missing_file(tmp_path):
    with pytest.raises(InputError) as err:
        load_nifti(tmp_path / "x.nii.gz")
    assert err.value.path == tmp_path / "x.nii.gz" and "not found" in str(err.value)


def test_echoes_stored_in_different_ways(gre_bids):
    z = gre_bids.magnitude[..., 1] * np.exp(1j * gre_bids.phase[..., 1])
    for part in ("mag", "phase"):
        gre_bids.file(2, part).unlink()
    for part, vol in (("real", z.real), ("imag", z.imag)):
        name = f"sub-01_echo-2_part-{part}_MEGRE.nii.gz"
        save_nifti(
            gre_bids.root / "sub-01" / "anat" / name,
            vol,
            gre_bids.affine,
            sidecar={"EchoTime": TE[1]},
        )
    err = read_error(gre_bids.root)
    assert "echo-2 has part-imag, part-real but the other echoes have part-mag/part-phase" in (
        str(err)
    )


def test_echo_time_error_names_the_sidecar_it_came_from(gre_bids):
    for e in (1, 2, 3):
        edit_sidecar(gre_bids.file(e, "mag"), EchoTime=None)
        edit_sidecar(gre_bids.file(e, "phase"), EchoTime=None)
    root_side = gre_bids.root / "echo-2_MEGRE.json"
    root_side.write_text(json.dumps({"EchoTime": 9.0}))  # ms by mistake, inherited by echo-2
    (gre_bids.root / "echo-1_MEGRE.json").write_text(json.dumps({"EchoTime": 0.004}))
    (gre_bids.root / "echo-3_MEGRE.json").write_text(json.dumps({"EchoTime": 0.014}))
    err = read_error(gre_bids.root)
    assert err.path == root_side and "look like milliseconds" in str(err)
