"""The anatomy stage end to end on a simulated subject with known truth, and its failure modes.

The subject (cohort seed 7, sub-001, 2 mm) has a random head pose, scale and smooth
deformation (the atlas is never tested on itself), an atrophied thalamus (12.7 mL), nine
periventricular lesions (7.7 mL) of which two enhance, veins around the thalami and a
choroid-plexus glomus in each atrium. ``qsmiron recon`` and ``qsmiron anatomy`` run on it as a
user would, and the outputs are judged against the simulator's truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmiron.anatomy.pipeline import AnatomyInputs, Image, run_anatomy
from qsmiron.cli import main
from qsmiron.errors import InputError
from qsmiron.io.nifti import load_nifti
from qsmiron.simulate import tissues as T

SUB = "001"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


@pytest.fixture(scope="module")
def study(seed7_subject) -> dict[str, Path]:
    return seed7_subject


def _truth(study) -> dict:
    return json.loads((study["truth"] / f"sub-{SUB}_truth.json").read_text())


def _measures(study) -> dict:
    return json.loads((study["anat"] / f"sub-{SUB}_desc-anatomy_measures.json").read_text())


def _img(path: Path) -> np.ndarray:
    return load_nifti(path, dtype=None)[0]


def test_outputs_are_bids_derivatives(study) -> None:
    anat = study["anat"]
    for name in ("space-qsm_dseg.nii.gz", "space-qsm_dseg.tsv", "space-qsm_desc-veins_mask.nii.gz",
                 "space-qsm_desc-csfref_mask.nii.gz", "space-FLAIR_desc-lesions_mask.nii.gz",
                 "space-T1w_dseg.nii.gz", "space-T1w_label-GM_probseg.nii.gz",
                 "space-T1w_desc-enhancing_mask.nii.gz",
                 "from-T1w_to-qsm_mode-image_xfm.mat",
                 "from-MNI152NLin2009cSym_to-T1w_mode-image_desc-warp_xfm.nii.gz",
                 "desc-anatomy_measures.json"):
        assert (anat / f"sub-{SUB}_{name}").is_file(), name
    for fig in ("anatomy", "lesions"):  # the panel, and every lesion on the FLAIR
        png = anat.parent / "figures" / f"sub-{SUB}_desc-{fig}_qc.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
    table = (anat / f"sub-{SUB}_space-qsm_dseg.tsv").read_text().splitlines()
    assert table[0] == "index\tname\tabbreviation"
    names = {row.split("\t")[0]: row.split("\t")[1] for row in table[1:]}
    assert names["10"] == "Left-Thalamus" and names["49"] == "Right-Thalamus"
    assert names["9001"] == "CSF-reference-left" and names["9002"] == "CSF-reference-right"
    m = _measures(study)
    assert m["sign_convention"].startswith("rel_chi_ppb = mean(thalamus) - mean(CSF")
    assert m["Sources"]["segmentation"] == "builtin"
    # one row per lesion (as counted), each with a location from the propagated atlas, and
    # the MAGNIMS location counts made from them
    import pandas as pd

    les = pd.read_csv(anat / f"sub-{SUB}_space-FLAIR_lesions.tsv", sep="\t")
    assert len(les) == m["lesion_count"] > 0 and (les["location"] != "n/a").all()
    assert les["volume_ml"].sum() == pytest.approx(m["t2_lesion_mask_volume_ml"])
    for where in ("periventricular", "juxtacortical", "infratentorial"):
        assert m[f"lesion_count_{where}"] == int((les["location"] == where).sum())
    assert json.loads((anat / f"sub-{SUB}_space-FLAIR_lesions.json").read_text())[
        "location"]["Levels"]["periventricular"]


def test_thalamus_dice_and_volume(study) -> None:
    """Issue criterion: thalamus Dice >= 0.85 and volume within 10% of the truth.

    Judged on the segmentation (T1w grid, which the simulator shares with the truth); the
    QSM-space label map holds the measured ROI, which leaves out vein and CSF rims.
    """
    truth = _truth(study)
    labels = _img(study["truth"] / f"sub-{SUB}_dseg.nii.gz")
    seg = _img(study["anat"] / f"sub-{SUB}_space-T1w_dseg.nii.gz")
    m = _measures(study)
    for code, true_code, side in ((10, 13, "left"), (49, 14, "right")):
        d = dice(seg == code, labels == true_code)
        assert d >= 0.85, (side, d)
        vol, true_vol = m[f"thalamus_{side}_volume_ml"], truth[f"thalamus_{side}_volume_ml"]
        assert abs(vol - true_vol) <= 0.10 * true_vol, (side, vol, true_vol)
    assert abs(m["thalamus_volume_ml"] - truth["thalamus_volume_ml"]) <= 0.1 * truth[
        "thalamus_volume_ml"]


def test_csf_reference_inside_true_csf(study) -> None:
    """Issue criterion: the CSF ROI lies entirely inside true CSF, in both atria."""
    labels = _img(study["truth"] / f"sub-{SUB}_dseg.nii.gz")
    ref = _img(study["anat"] / f"sub-{SUB}_space-qsm_desc-csfref_mask.nii.gz") > 0
    assert ref.sum() >= 20
    assert set(np.unique(labels[ref])) <= set(T.CSF_LABELS)
    # one ROI per side, mostly in the atria (labels 9/10) next to the thalami
    seg = _img(study["anat"] / f"sub-{SUB}_space-qsm_dseg.nii.gz")
    for code, atrium in ((9001, 9), (9002, 10)):
        side = seg == code
        assert side.any()
        assert np.mean(labels[side] == atrium) >= 0.5


def test_thalamic_susceptibility_with_veins_excluded(study) -> None:
    """Issue criterion: thalamic susceptibility, veins excluded, within 5 ppb of the truth.

    Judged on the true susceptibility map (so the ROIs alone are tested) and on the
    reconstructed QSM (the measure the study reports).
    """
    truth = _truth(study)
    assert truth["vein_volume_ml"] > 1.0  # veins are present
    chi = _img(study["truth"] / f"sub-{SUB}_Chimap.nii.gz")
    seg = _img(study["anat"] / f"sub-{SUB}_space-qsm_dseg.nii.gz")
    ref = np.isin(seg, (9001, 9002))
    thal = np.isin(seg, (10, 49))
    rel_true_map = 1000.0 * (chi[thal].mean() - chi[ref].mean())
    assert abs(rel_true_map - truth["rel_chi_ppb"]) <= 5.0, (rel_true_map, truth["rel_chi_ppb"])
    m = _measures(study)
    assert abs(m["rel_chi_ppb"] - truth["rel_chi_ppb"]) <= 5.0, (m["rel_chi_ppb"],
                                                                 truth["rel_chi_ppb"])
    assert m["rel_chi_ppb"] == pytest.approx(m["thalamus_chi_ppb"] - m["csf_ref_chi_ppb"])
    # the simulated GRE images the whole head: no thalamus voxel lies beyond the QSM region,
    # and the coverage flag stays down
    assert m["thalamus_outside_qsm_fraction"] == 0.0
    assert "thalamus_outside_qsm" not in m["qc_flags"].split(";")


def test_enhancing_lesions_counted_exactly(study) -> None:
    assert _measures(study)["enhancing_lesion_count"] == _truth(study)["enhancing_lesion_count"]


def test_volumes_and_lesions_close_to_truth(study) -> None:
    truth = _truth(study)
    m = _measures(study)
    assert abs(m["total_gm_volume_ml"] - truth["total_gm_volume_ml"]) <= 0.1 * truth[
        "total_gm_volume_ml"]
    # lesions: voxel overlap with the true lesions as the phantom lesion test asks (Dice >=
    # 0.7); the volume is reported, not bounded: at 2 mm the one-voxel partial-volume rim of
    # each lesion (a fifth of lesion is already several noise SDs on this FLAIR) adds about
    # half to the volume of these small lesions, where at 1 mm it is within 10%
    # (tests/anatomy/test_lesions.py)
    true_les = _img(study["truth"] / f"sub-{SUB}_desc-lesions_mask.nii.gz") > 0
    found = _img(study["anat"] / f"sub-{SUB}_space-FLAIR_desc-lesions_mask.nii.gz") > 0
    d = dice(found, true_les)
    print(f"lesions: Dice {d:.3f}, volume {m['t2_lesion_volume_ml']:.2f} mL vs "
          f"{truth['t2_lesion_volume_ml']:.2f} mL")
    assert d >= 0.7
    # cortical thickness against the thickness of the phantom's own cortex label (the
    # simulator measures it with the Laplace method validated on analytic shells): the voxels
    # at least half grey matter at 2 mm, within 8% (they read -4.6 to -2.4% on the eight demo
    # heads through `qsmiron run`, -3.1% here; the tissue-class labels read -10.6 to +9.2%
    # there, -6.2% here)
    print(f"cortical thickness {m['cortical_thickness_mm']:.2f} mm vs "
          f"{truth['cortical_thickness_mm']:.2f} mm")
    assert abs(m["cortical_thickness_mm"] / truth["cortical_thickness_mm"] - 1) <= 0.08


# ------------------------------------------------------------------------------------------
# user ROIs, FreeSurfer, failure modes (fast: no template registration)


def _qsm_inputs(study, **kw) -> AnatomyInputs:
    anat = study["anat"]

    def im(name: str) -> Image:
        d, a, _ = load_nifti(anat / f"sub-{SUB}_{name}.nii.gz")
        return Image(d, a, anat / f"sub-{SUB}_{name}.nii.gz")

    return AnatomyInputs(chi=im("Chimap"), magnitude=im("desc-echocombined_magnitude"),
                         r2star=im("R2starmap"), qsm_mask=im("desc-qsm_mask"), **kw)


def _fs_subject(study, tmp_path) -> Path:
    """A FreeSurfer-style subject made from the true labels (aseg numbering, aseg.stats)."""
    labels, aff, _ = load_nifti(study["truth"] / f"sub-{SUB}_dseg.nii.gz", dtype=None)
    to_aseg = {13: 10, 14: 49, 7: 4, 9: 4, 8: 43, 10: 43, 11: 14, 15: 11, 16: 50, 17: 12,
               18: 51, 19: 13, 20: 52, 5: 3, 6: 2, 4: 24}
    aseg = np.where(labels >= 4, 2, 0).astype(np.int32)  # the rest of the brain: white matter
    for k, v in to_aseg.items():
        aseg[labels == k] = v
    aseg[np.isin(labels, T.LESIONS)] = 77  # FreeSurfer: WM-hypointensities
    subj = tmp_path / "fs" / "sub-001"
    (subj / "mri").mkdir(parents=True)
    (subj / "stats").mkdir()
    nib.save(nib.MGHImage(aseg, aff), subj / "mri" / "aseg.mgz")
    return subj


def test_user_masks_override_and_are_recorded(study, tmp_path) -> None:
    """True thalamus and a true atrium mask given by the user: measures equal a direct count."""
    from qsmiron.anatomy.freesurfer import read_freesurfer_subject

    labels, aff, _ = load_nifti(study["truth"] / f"sub-{SUB}_dseg.nii.gz", dtype=None)
    thal = np.where(labels == 13, 10, np.where(labels == 14, 49, 0)).astype(np.int16)
    atria = np.isin(labels, T.ATRIA)
    fs = read_freesurfer_subject(_fs_subject(study, tmp_path))
    inp = _qsm_inputs(study, freesurfer=fs,
                      thalamus_mask=Image(thal, aff, tmp_path / "thal.nii.gz"),
                      csf_ref_mask=Image(atria, aff, tmp_path / "csf.nii.gz"),
                      vein_mask=Image(np.isin(labels, T.VEINS), aff, tmp_path / "veins.nii.gz"))
    res = run_anatomy(inp, tmp_path / "work")
    assert res.sources["thalamus"].startswith("user:") and "thal.nii.gz" in res.sources[
        "thalamus"]
    assert res.sources["csf_ref"].startswith("user:")
    assert res.sources["segmentation"].startswith("freesurfer:")
    chi, qmask = inp.chi.data, inp.qsm_mask.data > 0
    thal_used = res.thalamus.both
    assert np.isin(labels[thal_used], (13, 14)).all()
    expected = 1000.0 * (chi[thal_used].mean() - chi[atria].mean())
    assert res.measures["rel_chi_ppb"] == pytest.approx(expected, abs=1e-3)
    # FreeSurfer volumes from the label map (no aseg.stats): voxel counts of the true labels
    vox = float(np.prod(inp.chi.voxel_size)) / 1000.0
    assert res.measures["thalamus_left_volume_ml"] == pytest.approx((labels == 13).sum() * vox)
    assert "no_flair" in res.flags
    assert qmask.any()


def test_missing_measures_are_written_as_null(study, tmp_path) -> None:
    """No FLAIR, no post-gadolinium T1w: the lesion and enhancing measures are missing (NaN),
    and the derivatives are still written, with JSON nulls (JSON has no NaN)."""
    from qsmiron.anatomy.freesurfer import read_freesurfer_subject
    from qsmiron.anatomy.pipeline import load_anatomy_inputs, write_anatomy_derivatives

    inp = load_anatomy_inputs(study["bids"], study["deriv"], SUB)
    inp.freesurfer = read_freesurfer_subject(_fs_subject(study, tmp_path))
    inp.flair = inp.t1w_gd = None
    labels, aff, _ = load_nifti(study["truth"] / f"sub-{SUB}_dseg.nii.gz", dtype=None)
    inp.thalamus_mask = Image(np.isin(labels, (13, 14)).astype(np.uint8), aff,
                              tmp_path / "thal_both.nii.gz")
    res = run_anatomy(inp, tmp_path / "work")
    assert np.isnan(res.measures["lesion_count"]) and np.isnan(
        res.measures["enhancing_lesion_count"])
    out = write_anatomy_derivatives(res, inp, tmp_path / "deriv", SUB)
    m = json.loads(out["measures"].read_text())
    assert m["lesion_count"] is None and m["t2_lesion_volume_ml"] is None
    assert m["enhancing_lesion_count"] is None
    assert {"no_flair", "no_gadolinium_t1w"} <= set(m["QCFlags"])
    # a thalamus mask without sides is split by the segmentation's thalami (FreeSurfer's
    # here, the true labels): each side is the true side, measured and flagged
    assert "thalamus_mask_not_lateralised" in res.flags
    assert res.thalamus.left.any() and res.thalamus.right.any()
    assert np.all(labels[res.thalamus.left] == 13) and np.all(labels[res.thalamus.right] == 14)
    # and each side keeps (nearly) all of its own thalamus: the split follows the true sides
    for side, ids in ((res.thalamus.left, 13), (res.thalamus.right, 14)):
        assert side.sum() >= 0.9 * (res.thalamus.both & (labels == ids)).sum()
    assert np.isfinite(m["rel_chi_left_ppb"]) and np.isfinite(m["rel_chi_right_ppb"])
    assert m["thalamus_mask"]["dice_vs_segmentation"] > 0.95
    assert "thalamus_mask_disagrees_with_segmentation" not in res.flags
    # with the post-contrast T1w but no FLAIR: enhancing lesions are counted per T2 lesion,
    # so without T2 lesions there is no count (not "0, no enhancing lesion")
    inp.t1w_gd = load_anatomy_inputs(study["bids"], study["deriv"], SUB).t1w_gd
    assert inp.t1w_gd is not None and _truth(study)["enhancing_lesion_count"] > 0
    res = run_anatomy(inp, tmp_path / "work")
    assert np.isnan(res.measures["enhancing_lesion_count"])
    assert "enhancing_without_t2_lesions" in res.flags


def test_wrong_user_thalamus_is_flagged(study, tmp_path) -> None:
    """A user's thalamus 20 mm anterior of the true one, or with its sides swapped, is
    measured as given but flagged against the segmentation: never a silent wrong ROI. A label
    map without the thalamus labels is refused."""
    from qsmiron.anatomy.freesurfer import read_freesurfer_subject
    from qsmiron.anatomy.pipeline import load_anatomy_inputs

    labels, aff, _ = load_nifti(study["truth"] / f"sub-{SUB}_dseg.nii.gz", dtype=None)
    thal = np.where(labels == 13, 10, np.where(labels == 14, 49, 0)).astype(np.int16)
    fs = read_freesurfer_subject(_fs_subject(study, tmp_path))
    inp = load_anatomy_inputs(study["bids"], study["deriv"], SUB)
    inp.freesurfer = fs
    inp.flair = inp.t1w_gd = None
    inp.csf_ref_mask = Image(np.isin(labels, T.ATRIA), aff, tmp_path / "csf.nii.gz")
    forward = aff.copy()
    forward[:3, 3] += aff[:3, :3] @ np.linalg.solve(aff[:3, :3], [0.0, 20.0, 0.0])
    swapped = np.where(thal == 10, 49, np.where(thal == 49, 10, 0)).astype(np.int16)
    for mask, flag in ((Image(thal, forward, tmp_path / "forward.nii.gz"),
                        "thalamus_mask_disagrees_with_segmentation"),
                       (Image(swapped, aff, tmp_path / "swapped.nii.gz"),
                        "thalamus_mask_sides_swapped")):
        inp.thalamus_mask = mask
        res = run_anatomy(inp, tmp_path / "work")
        assert flag in res.flags, (mask.path, res.flags)
        assert res.sources["thalamus"] == f"user:{mask.path}"
    # the true thalamus: no flag
    inp.thalamus_mask = Image(thal, aff, tmp_path / "true.nii.gz")
    res = run_anatomy(inp, tmp_path / "work")
    assert not {"thalamus_mask_disagrees_with_segmentation",
                "thalamus_mask_sides_swapped"} & set(res.flags)
    inp.thalamus_mask = Image(labels, aff, tmp_path / "phantom_dseg.nii.gz")  # no 10/49...
    inp.thalamus_mask.data[np.isin(labels, (10, 49))] = 0  # ...at all
    with pytest.raises(InputError, match="10 \\(left\\) and 49") as exc:
        run_anatomy(inp, tmp_path / "work")
    assert exc.value.path == tmp_path / "phantom_dseg.nii.gz"


def test_empty_lesion_and_vein_masks_mean_none(study, tmp_path) -> None:
    """An all-zero lesion mask is a rater's "no lesion" (count 0, volume 0, flagged), an
    all-zero vein mask "exclude no vein"; a CSF reference outside the valid QSM region gives
    no number (chi is not measured there) instead of averaging its zeros."""
    from qsmiron.anatomy.freesurfer import read_freesurfer_subject
    from qsmiron.anatomy.pipeline import load_anatomy_inputs

    labels, aff, _ = load_nifti(study["truth"] / f"sub-{SUB}_dseg.nii.gz", dtype=None)
    inp = load_anatomy_inputs(study["bids"], study["deriv"], SUB)
    inp.freesurfer = read_freesurfer_subject(_fs_subject(study, tmp_path))
    inp.t1w_gd = None
    assert inp.flair is not None
    inp.lesion_mask = Image(np.zeros(inp.flair.shape, np.uint8), inp.flair.affine,
                            tmp_path / "no_lesions.nii.gz")
    inp.vein_mask = Image(np.zeros(labels.shape, np.uint8), aff, tmp_path / "no_veins.nii.gz")
    qmask = inp.qsm_mask.data > 0
    outside = np.zeros(labels.shape, bool)
    outside[np.argwhere(~qmask)[0][0], :, :] = True  # a plane through the background
    outside &= ~qmask
    inp.csf_ref_mask = Image(outside.astype(np.uint8), aff, tmp_path / "csf_outside.nii.gz")
    res = run_anatomy(inp, tmp_path / "work")
    m = res.measures
    assert m["lesion_count"] == 0 and m["t2_lesion_volume_ml"] == 0.0
    assert m["lesion_count_periventricular"] == 0
    assert {"lesion_mask_empty", "vein_mask_empty", "csf_ref_outside_qsm"} <= set(res.flags)
    assert m["vein_fraction_excluded"] == 0.0
    assert np.isnan(m["csf_ref_chi_ppb"]) and np.isnan(m["rel_chi_ppb"])
    assert np.isfinite(m["thalamus_chi_ppb"])


def test_rerun_leaves_no_stale_outputs(study, tmp_path) -> None:
    """Rerunning the anatomy into a folder that holds an earlier run's FLAIR outputs, now
    without a FLAIR: those files go, the reconstruction's files stay, and the measures JSON
    is the new run's."""
    import shutil

    from qsmiron.anatomy.freesurfer import read_freesurfer_subject
    from qsmiron.anatomy.pipeline import load_anatomy_inputs, write_anatomy_derivatives

    anat = tmp_path / "deriv" / "qsmiron" / f"sub-{SUB}" / "anat"
    anat.mkdir(parents=True)
    figs = anat.parent / "figures"
    figs.mkdir()
    earlier = [f"sub-{SUB}_space-FLAIR_desc-lesions_mask.nii.gz",
               f"sub-{SUB}_space-FLAIR_desc-lesions_mask.json",
               f"sub-{SUB}_space-FLAIR_lesions.tsv",
               f"sub-{SUB}_from-FLAIR_to-T1w_mode-image_xfm.mat",
               f"sub-{SUB}_desc-anatomy_measures.json", f"sub-{SUB}_Chimap.nii.gz"]
    for name in earlier:
        shutil.copyfile(study["anat"] / name, anat / name)
    shutil.copyfile(study["anat"].parent / "figures" / f"sub-{SUB}_desc-lesions_qc.png",
                    figs / f"sub-{SUB}_desc-lesions_qc.png")
    inp = load_anatomy_inputs(study["bids"], study["deriv"], SUB)
    inp.freesurfer = read_freesurfer_subject(_fs_subject(study, tmp_path))
    inp.flair = inp.t1w_gd = None
    out = write_anatomy_derivatives(run_anatomy(inp, tmp_path / "work"), inp,
                                    tmp_path / "deriv", SUB)
    left = sorted(p.name for p in anat.iterdir()) + sorted(p.name for p in figs.iterdir())
    assert not [n for n in left if "FLAIR" in n or "lesions" in n], left
    assert (anat / f"sub-{SUB}_Chimap.nii.gz").is_file()  # the reconstruction's, untouched
    # what is there is this run's (images with their JSON sidecars) and the Chimap
    written = {p.name.split(".")[0] for p in out.values()}
    assert {n.split(".")[0] for n in left} == written | {f"sub-{SUB}_Chimap"}
    assert "no_flair" in json.loads(out["measures"].read_text())["QCFlags"]


def test_missing_t1w_is_a_clear_error(study, tmp_path) -> None:
    import shutil

    from qsmiron.anatomy.pipeline import load_anatomy_inputs

    with pytest.raises(InputError, match="no T1w image"):
        run_anatomy(_qsm_inputs(study), tmp_path / "unused")
    # read from a BIDS folder: the error names the folder searched
    anat = tmp_path / "bids" / f"sub-{SUB}" / "anat"
    anat.mkdir(parents=True)
    shutil.copyfile(study["bids"] / f"sub-{SUB}" / "anat" / f"sub-{SUB}_FLAIR.nii.gz",
                    anat / f"sub-{SUB}_FLAIR.nii.gz")
    inp = load_anatomy_inputs(tmp_path / "bids", study["deriv"], SUB)
    with pytest.raises(InputError, match=f"no T1w image in {anat}") as exc:
        run_anatomy(inp, tmp_path / "work")
    assert exc.value.path == anat


def test_empty_user_mask_is_a_clear_error(study, tmp_path) -> None:
    from qsmiron.anatomy.freesurfer import read_freesurfer_subject

    chi = load_nifti(study["anat"] / f"sub-{SUB}_Chimap.nii.gz")
    empty = Image(np.zeros(chi[0].shape, np.uint8), chi[1], tmp_path / "empty_thalamus.nii.gz")
    inp = _qsm_inputs(study, freesurfer=read_freesurfer_subject(_fs_subject(study, tmp_path)),
                      thalamus_mask=empty, csf_ref_mask=empty)
    with pytest.raises(InputError, match="empty") as exc:
        run_anatomy(inp, tmp_path / "work")
    assert "empty_thalamus.nii.gz" in str(exc.value)


def test_label_map_given_as_a_mask_is_a_clear_error(study, tmp_path) -> None:
    """A label map (here the simulator's) given as the CSF reference: an error naming the file,
    not the whole labelled volume silently taken as the ROI."""
    from qsmiron.anatomy.freesurfer import read_freesurfer_subject

    labels, aff, _ = load_nifti(study["truth"] / f"sub-{SUB}_dseg.nii.gz", dtype=None)
    thal = np.where(labels == 13, 10, np.where(labels == 14, 49, 0)).astype(np.int16)
    inp = _qsm_inputs(study, freesurfer=read_freesurfer_subject(_fs_subject(study, tmp_path)),
                      thalamus_mask=Image(thal, aff, tmp_path / "thal.nii.gz"),
                      csf_ref_mask=Image(labels, aff, tmp_path / "seg_as_csf.nii.gz"))
    with pytest.raises(InputError, match="not a mask") as exc:
        run_anatomy(inp, tmp_path / "work")
    assert exc.value.path is not None and "seg_as_csf.nii.gz" in str(exc.value.path)


def test_bad_user_masks_fail_before_the_segmentation(study, tmp_path) -> None:
    """With the built-in segmentation (minutes on a 1 mm head), a bad user mask is refused
    before it starts: nothing is written to its working folder."""
    from qsmiron.anatomy.pipeline import load_anatomy_inputs

    labels, aff, _ = load_nifti(study["truth"] / f"sub-{SUB}_dseg.nii.gz", dtype=None)
    far = aff.copy()
    far[:3, 3] += 400.0  # 40 cm away: set in its file, but nowhere on the QSM
    for field, value in (("csf_ref_mask", Image(labels, aff, tmp_path / "dseg.nii.gz")),
                         ("lesion_mask", Image(labels, aff, tmp_path / "dseg.nii.gz")),
                         ("vein_mask", Image(np.isin(labels, T.VEINS), far,
                                             tmp_path / "veins_elsewhere.nii.gz"))):
        inp = load_anatomy_inputs(study["bids"], study["deriv"], SUB)
        setattr(inp, field, value)
        with pytest.raises(InputError) as exc:
            run_anatomy(inp, tmp_path / field)
        assert exc.value.path == value.path
        assert not (tmp_path / field / "template").exists(), field


def test_user_mask_values() -> None:
    """0/1, 0/255 and probability masks on and off the grid; more than one label refused."""
    from qsmiron.anatomy.pipeline import _user_mask_on

    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    grid = Image(np.zeros((12, 12, 12), np.float32), aff, Path("grid.nii.gz"))
    box = np.zeros((12, 12, 12), bool)
    box[3:9, 3:9, 3:9] = True
    for scale in (1, 255):  # binary, and binary as an image editor writes it
        m = Image((box * scale).astype(np.uint8), aff, Path("m.nii.gz"))
        assert np.array_equal(_user_mask_on(grid, m, "lesion mask"), box)
    # a probability (partial-volume) mask: set where at least half, on and off the grid
    prob = np.where(box, 0.8, 0.0).astype(np.float32)
    prob[5, 5, 5] = 0.3
    expected = box.copy()
    expected[5, 5, 5] = False
    assert np.array_equal(_user_mask_on(grid, Image(prob, aff, Path("p.nii.gz")), "mask"),
                          expected)
    ringing = prob + np.float32(0.03) * np.cos(np.arange(12, dtype=np.float32))  # overshoot
    assert np.array_equal(_user_mask_on(grid, Image(ringing, aff, Path("r.nii.gz")), "mask"),
                          expected)
    shifted = aff.copy()
    shifted[:3, 3] = 2.0  # one voxel along every axis: the same mask, one voxel further
    got = _user_mask_on(grid, Image(box.astype(np.uint8), shifted, Path("s.nii.gz")), "mask")
    assert np.array_equal(got, np.roll(box, 1, axis=(0, 1, 2)))
    two = (box * 1).astype(np.int16)
    two[3:6] *= 2  # labels 1 and 2
    with pytest.raises(InputError, match="2 different nonzero values") as exc:
        _user_mask_on(grid, Image(two, aff, Path("labels.nii.gz")), "vein mask")
    assert str(exc.value.path) == "labels.nii.gz"


def test_missing_qsm_says_run_recon(study, tmp_path, capsys) -> None:
    rc = main(["anatomy", str(study["bids"]), "--subject", SUB, "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "qsmiron recon" in err and "Chimap" in err


def test_wrong_orientation_t1w_is_refused(study, tmp_path) -> None:
    """A T1w whose header swaps anterior and posterior cannot be registered: an error."""
    t1, aff, _ = load_nifti(study["bids"] / f"sub-{SUB}" / "anat" / f"sub-{SUB}_T1w.nii.gz")
    flipped = t1[:, ::-1, :].copy()  # data reversed along y, header unchanged
    inp = _qsm_inputs(study, t1w=Image(flipped, aff, tmp_path / "flipped_T1w.nii.gz"))
    with pytest.raises(InputError) as exc:
        run_anatomy(inp, tmp_path / "work")
    assert "flipped_T1w.nii.gz" in str(exc.value)


def test_upside_down_flair_is_refused(study, tmp_path) -> None:
    """A FLAIR whose data run foot-to-head against its header: the overlap check stops it.

    The identity-initialised rigid search cannot turn the head over, so after it the FLAIR's
    head covers a fraction of the T1w brain well under :data:`MIN_RIGID_COVERAGE` (a
    correctly oriented FLAIR of the same session covers all of it, see the other tests'
    logs and ``test_head_mask_keeps_the_vertex_of_a_flair``).
    """
    from qsmiron.anatomy.freesurfer import read_freesurfer_subject
    from qsmiron.anatomy.pipeline import load_anatomy_inputs

    inp = load_anatomy_inputs(study["bids"], study["deriv"], SUB)
    inp.freesurfer = read_freesurfer_subject(_fs_subject(study, tmp_path))
    assert inp.flair is not None
    inp.flair = Image(inp.flair.data[:, :, ::-1].copy(), inp.flair.affine,
                      tmp_path / "upside_down_FLAIR.nii.gz")
    with pytest.raises(InputError, match="FLAIR vs T1w") as exc:
        run_anatomy(inp, tmp_path / "work")
    assert "upside_down_FLAIR.nii.gz" in str(exc.value)


def test_thick_slice_flair_is_flagged(study, tmp_path) -> None:
    """A FLAIR with 4 mm slices (pairs of the 2 mm slices averaged, header to match) is
    segmented, and flagged ``flair_thick_slices``: MAGNIMS-CMSC-NAIMS 2021 ask for at most
    3 mm, and the automatic rule loses lesions thinner than three slices beyond that."""
    from qsmiron.anatomy.freesurfer import read_freesurfer_subject
    from qsmiron.anatomy.pipeline import MAX_FLAIR_SLICE_MM, load_anatomy_inputs

    inp = load_anatomy_inputs(study["bids"], study["deriv"], SUB)
    inp.freesurfer = read_freesurfer_subject(_fs_subject(study, tmp_path))
    fl = inp.flair
    assert fl is not None and max(fl.voxel_size) <= MAX_FLAIR_SLICE_MM
    k = fl.shape[2] // 2 * 2
    data = fl.data[:, :, :k].reshape(fl.shape[0], fl.shape[1], k // 2, 2).mean(axis=3)
    aff = fl.affine.copy()
    aff[:3, 3] += 0.5 * aff[:3, 2]  # the centre of the first pair
    aff[:3, 2] *= 2.0
    inp.flair = Image(data.astype(np.float32), aff, tmp_path / "thick_FLAIR.nii.gz")
    res = run_anatomy(inp, tmp_path / "work")
    assert "flair_thick_slices" in res.flags
    assert np.isfinite(res.measures["t2_lesion_volume_ml"])


def test_seeded_lesions_with_freesurfer(study, tmp_path) -> None:
    """The study's semi-automatic mode: one seed per true lesion (scanner mm) grows it; a
    seed in normal white matter grows nothing and is flagged.

    A FreeSurfer-style segmentation stands in for the built-in one (no template registration);
    the FLAIR is registered to the T1w and the lesions grown on it.
    """
    from qsmiron.anatomy.freesurfer import read_freesurfer_subject
    from qsmiron.anatomy.pipeline import load_anatomy_inputs

    inst, aff, _ = load_nifti(study["truth"] / f"sub-{SUB}_desc-lesions_mask.nii.gz",
                              dtype=None)
    inst = inst.astype(int)

    def row(mask: np.ndarray) -> str:
        """The deepest voxel of ``mask`` in scanner mm (where a rater clicks)."""
        depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
        v = np.array(np.unravel_index(int(np.argmax(depth)), mask.shape), float)
        x, y, z = aff[:3, :3] @ v + aff[:3, 3]
        return f"{x:.2f}\t{y:.2f}\t{z:.2f}"

    rows = ["x\ty\tz"] + [row(inst == i) for i in range(1, inst.max() + 1) if (inst == i).any()]
    # one more seed deep in normal white matter, 10 mm from any lesion: nothing to grow there
    dseg = _img(study["truth"] / f"sub-{SUB}_dseg.nii.gz")
    far = ndi.distance_transform_edt(inst == 0, sampling=np.linalg.norm(aff[:3, :3], axis=0))
    seeds = tmp_path / "seeds.tsv"
    wm_seed = row((dseg == T.CEREBRAL_WM) & (far > 10.0))
    seeds.write_text("\n".join([*rows, wm_seed]) + "\n")
    inp = load_anatomy_inputs(study["bids"], study["deriv"], SUB, lesion_seeds=seeds)
    inp.freesurfer = read_freesurfer_subject(_fs_subject(study, tmp_path))
    res = run_anatomy(inp, tmp_path / "work")
    assert res.sources["lesions"] == f"seeded:{seeds}"
    assert "lesion_seeds_too_faint" in res.flags  # the white-matter seed, not grown
    assert "flair_thick_slices" not in res.flags  # 2 mm
    truth = _truth(study)
    assert res.measures["lesion_count"] == truth["lesion_count"] == len(rows) - 1
    d = dice(res.lesions.data.astype(bool), inst > 0)
    assert d >= 0.7, d
    inp.lesion_mask = Image(inst > 0, aff, tmp_path / "lesions.nii.gz")
    with pytest.raises(InputError, match="not both"):
        run_anatomy(inp, tmp_path / "work3")
    bad = tmp_path / "bad.tsv"
    bad.write_text("x\ty\tz\n500\t500\t500\n")
    with pytest.raises(InputError, match="outside the FLAIR"):
        run_anatomy(load_anatomy_inputs(study["bids"], study["deriv"], SUB, lesion_seeds=bad,
                                        freesurfer=_fs_subject(study, tmp_path / "b")),
                    tmp_path / "work2")
    bad.write_text(f"x\ty\tz\n{wm_seed}\n")  # nothing to grow at any seed: named file
    with pytest.raises(InputError, match="none of the 1 lesion seeds") as err:
        run_anatomy(load_anatomy_inputs(study["bids"], study["deriv"], SUB, lesion_seeds=bad,
                                        freesurfer=_fs_subject(study, tmp_path / "c")),
                    tmp_path / "work4")
    assert err.value.path == bad
