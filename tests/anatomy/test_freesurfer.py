"""Bring-your-own FreeSurfer/FastSurfer/SynthSeg outputs on synthetic subject folders.

Every truth here is either a number written into the synthetic files (stats measures, CSV
volumes), an analytic voxel count of the blocks drawn into the label map, a hand computation
from those (area-weighted thickness), or the numbers of a real FreeSurfer 7.4.1 aseg.stats.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmiron.anatomy.freesurfer import (
    ASEG_KEYS,
    ASEG_LABELS,
    gray_matter_volumes_ml,
    label_masks,
    load_label_map,
    mean_cortical_thickness,
    read_aparc_stats,
    read_aseg_stats,
    read_freesurfer_subject,
    read_synthseg,
    read_synthseg_volumes,
    structure_volumes_ml,
)
from qsmiron.errors import InputError

# ---------------------------------------------------------------------------------------------
# the synthetic label map: one box per label, boxes in separate 13-voxel cells of a 64^3 grid

SHAPE = (64, 64, 64)
#: label -> box shape (voxels); the voxel count of each label is the product
BLOCKS: dict[int, tuple[int, int, int]] = {
    2: (12, 10, 8), 41: (12, 10, 7),        # cerebral white matter
    3: (10, 10, 4), 42: (10, 10, 3),        # cerebral cortex
    4: (6, 4, 3), 43: (6, 4, 2),            # lateral ventricles
    5: (2, 2, 1), 44: (2, 1, 1),            # inferior lateral ventricles
    14: (3, 2, 2), 24: (2, 2, 2),           # third ventricle, CSF
    7: (4, 4, 2), 46: (4, 4, 1),            # cerebellar white matter
    8: (6, 5, 4), 47: (6, 5, 3),            # cerebellar cortex
    10: (8, 6, 5), 49: (7, 6, 5),           # thalamus
    11: (3, 3, 3), 50: (3, 3, 2),           # caudate
    12: (4, 3, 3), 51: (4, 3, 2),           # putamen
    13: (2, 2, 2), 52: (2, 2, 3),           # pallidum
    17: (5, 2, 2), 53: (5, 2, 3),           # hippocampus
    18: (3, 2, 2), 54: (3, 3, 2),           # amygdala
    26: (2, 2, 1), 58: (2, 1, 1),           # accumbens
    28: (3, 2, 2), 60: (3, 2, 1),           # ventral DC
    16: (4, 4, 4),                          # brainstem
}  # fmt: skip
COUNT = {label: math.prod(shape) for label, shape in BLOCKS.items()}
#: FreeSurfer's TotalGray: cortex + subcortical grey + cerebellar cortex
GM_LABELS = (3, 42, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 28, 60, 8, 47)
#: a conformed-like LIA affine with a non-zero centre, to check it is kept
AFFINE = np.array(
    [[-1.0, 0.0, 0.0, 34.5], [0.0, 0.0, 1.0, -20.25], [0.0, -1.0, 0.0, 41.0], [0, 0, 0, 1]]
)


def make_labels(parcels: bool = False) -> np.ndarray:
    """The block label map; ``parcels`` splits the cortex boxes into aparc parcels."""
    lab = np.zeros(SHAPE, np.int32)
    for i, (label, (a, b, c)) in enumerate(BLOCKS.items()):
        x, y, z = (13 * (i // 25) + 1, 13 * ((i // 5) % 5) + 1, 13 * (i % 5) + 1)
        lab[x : x + a, y : y + b, z : z + c] = label
        if parcels and label in (3, 42):
            base = 1000 if label == 3 else 2000
            lab[x : x + a, y : y + b, z : z + c] = base + 28  # superiorfrontal
            lab[x : x + a // 2, y : y + b, z : z + c] = base + 35  # insula
    return lab


def save_mgz(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.MGHImage(data, affine), str(path))
    return path


# ---------------------------------------------------------------------------------------------
# stats files in FreeSurfer's text format

ASEG_MEASURES_FS7 = [
    ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", 1118981.573888, "mm^3"),
    ("BrainSegNotVent", "BrainSegVolNotVent", "Brain Segmentation Volume Without Ventricles",
     1107684.526061, "mm^3"),
    ("lhCortex", "lhCortexVol", "Left hemisphere cortical gray matter volume", 239141.691447,
     "mm^3"),
    ("Cortex", "CortexVol", "Total cortical gray matter volume", 481309.853138, "mm^3"),
    ("SubCortGray", "SubCortGrayVol", "Subcortical gray matter volume", 55992.348144, "mm^3"),
    ("TotalGray", "TotalGrayVol", "Total gray matter volume", 612345.678901, "mm^3"),
    ("BrainSegVol-to-eTIV", "BrainSegVol-to-eTIV", "Ratio of BrainSegVol to eTIV", 0.764228,
     "unitless"),
    ("SurfaceHoles", "SurfaceHoles", "Total number of defect holes in surfaces prior to fixing",
     15, "unitless"),
    ("EstimatedTotalIntraCranialVol", "eTIV", "Estimated Total Intracranial Volume",
     1464199.032007, "mm^3"),
]  # fmt: skip
ASEG_MEASURES_FS51 = [
    ("lhCortex", "lhCortexVol", "Left hemisphere cortical gray matter volume", 234615.987869,
     "mm^3"),
    ("SubCortGray", "SubCortGrayVol", "Subcortical gray matter volume", 188561.0, "mm^3"),
    ("TotalGray", "TotalGrayVol", "Total gray matter volume", 684125.672133, "mm^3"),
    ("IntraCranialVol", "ICV", "Intracranial Volume", 1137205.24919, "mm^3"),
]  # fmt: skip
#: Volume_mm3 written for the thalamus (partial-volume corrected, so not the voxel count)
THAL_MM3 = {10: 231.7, 49: 204.9}
AREA = {"lh": 85000.0, "rh": 90000.0}
THICK = {"lh": 2.45, "rh": 2.35}
NVERT = {"lh": 120000, "rh": 125000}


def stats_volume(label: int) -> float:
    return THAL_MM3.get(label, COUNT[label] - 0.5)


def aseg_stats_text(
    style: str = "fs7",
    measures: list | None = None,
    counts: dict[int, int] | None = None,
    seg_file: str = "mri/aseg.mgz",
    drop: tuple[int, ...] = (),
) -> str:
    """An aseg.stats in mri_segstats' layout (header, measures, TableCol lines, rows)."""
    counts = dict(COUNT) if counts is None else counts
    if measures is None:
        measures = ASEG_MEASURES_FS7 if style == "fs7" else ASEG_MEASURES_FS51
    version = "7.4.1" if style == "fs7" else "$Id: mri_segstats.c,v 1.75.2.2 2011/04/27 nicks Exp $"
    lines = [
        "# Title Segmentation Statistics ",
        "# ",
        "# generating_program mri_segstats",
        f"# cvs_version {version}",
        f"# cmdline mri_segstats --seg {seg_file} --sum stats/aseg.stats --pv mri/norm.mgz "
        "--empty --excludeid 0 --excl-ctxgmwm --supratent --subcortgray --etiv --totalgray",
        "# sysname  Linux",
        "# anatomy_type volume",
        "# ",
        "# subjectname sub-01",
    ]
    lines += [f"# Measure {s}, {n}, {d}, {v:f}, {u}" for s, n, d, v, u in measures]
    lines += [f"# SegVolFile {seg_file} ", "# ExcludeSegId 0 2 3 41 42 ", "# VoxelVolume_mm3 1 "]
    cols = "Index SegId NVoxels Volume_mm3 StructName normMean normStdDev normMin normMax normRange"
    for k, col in enumerate(cols.split(), start=1):
        lines += [f"# TableCol {k:2d} ColHeader {col} ", f"# TableCol {k:2d} Units     NA"]
    rows = [lab for lab in sorted(BLOCKS) if lab not in (2, 3, 41, 42) and lab not in drop]
    lines += [f"# NRows {len(rows)} ", "# NTableCols 10 ", f"# ColHeaders  {cols}  "]
    for i, lab in enumerate(rows, start=1):
        name = ASEG_LABELS[lab].name
        if style != "fs7" and lab in (10, 49):
            name += "-Proper"
        lines.append(
            f"{i:3d} {lab:3d} {counts[lab]:9d} {stats_volume(lab):10.1f}  {name:<32s} "
            "   80.1234     9.8765    30.0000   110.0000    80.0000 "
        )
    return "\n".join(lines) + "\n"


#: StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv FoldInd CurvInd
REGIONS = [
    ("bankssts", 3600, 1138, 2546, 2.239, 0.393, 0.056, 0.012, 19, 1.9),
    ("cuneus", 4485, 1511, 3260, 1.949, 0.462, 0.084, 0.024, 40, 4.3),
    ("precentral", 14004, 4449, 14260, 2.734, 0.578, 0.060, 0.016, 67, 9.3),
]


def aparc_stats_text(
    hemi: str,
    subject: str = "sub-01",
    mean_thickness: bool = True,
    area: bool = True,
) -> str:
    """A ?h.aparc.stats in mris_anatomical_stats' layout (FreeSurfer 7)."""
    lines = [
        "# Table of FreeSurfer cortical parcellation anatomical statistics ",
        "# ",
        "# CreationTime 2023/08/22-21:46:04-GMT",
        "# generating_program mris_anatomical_stats",
        "# cvs_version 7.4.1",
        f"# cmdline mris_anatomical_stats -th3 -mgz -cortex ../label/{hemi}.cortex.label "
        f"-f ../stats/{hemi}.aparc.stats -b -a ../label/{hemi}.aparc.annot {subject} {hemi} white ",
        "# anatomy_type surface",
        f"# subjectname {subject}",
        f"# hemi {hemi}",
        f"# AnnotationFile ../label/{hemi}.aparc.annot",
        f"# Measure Cortex, NumVert, Number of Vertices, {NVERT[hemi]}, unitless",
    ]
    if area:
        lines.append(
            f"# Measure Cortex, WhiteSurfArea, White Surface Total Area, {AREA[hemi]}, mm^2"
        )
    if mean_thickness:
        lines.append(f"# Measure Cortex, MeanThickness, Mean Thickness, {THICK[hemi]}, mm")
    lines += [
        "# BrainVolStatsFixed see surfer.nmr.mgh.harvard.edu/fswiki/BrainVolStatsFixed",
        "# Measure Cortex, CortexVol, Total cortical gray matter volume, 481309.853138, mm^3",
        "# NTableCols 10",
        "# TableCol  1 ColHeader StructName",
        "# TableCol  5 ColHeader ThickAvg ",
        "# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv "
        "FoldInd CurvInd",
    ]
    for r in REGIONS:
        lines.append(
            f"{r[0]:<40s} {r[1]:6d} {r[2]:6d} {r[3]:6d} {r[4]:6.3f} {r[5]:5.3f} {r[6]:9.3f} "
            f"{r[7]:9.3f} {r[8]:8d} {r[9]:6.1f}"
        )
    return "\n".join(lines) + "\n"


def make_subject(
    root: Path,
    style: str = "fs7",
    aparc: bool = True,
    stats: bool = True,
    **aseg_kwargs,
) -> Path:
    """A FreeSurfer subject folder: mri/aseg.mgz, mri/aparc+aseg.mgz, stats/, surf/."""
    save_mgz(root / "mri" / "aseg.mgz", make_labels())
    save_mgz(root / "mri" / "aparc+aseg.mgz", make_labels(parcels=True))
    (root / "surf").mkdir(parents=True, exist_ok=True)
    (root / "scripts").mkdir(parents=True, exist_ok=True)
    if stats:
        (root / "stats").mkdir(parents=True, exist_ok=True)
        (root / "stats" / "aseg.stats").write_text(aseg_stats_text(style, **aseg_kwargs))
        if aparc:
            for hemi in ("lh", "rh"):
                (root / "stats" / f"{hemi}.aparc.stats").write_text(aparc_stats_text(hemi))
    return root


@pytest.fixture
def subject(tmp_path) -> Path:
    return make_subject(tmp_path / "sub-01")


def error_of(func, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as err:
        func(*args, **kwargs)
    return err.value


def line_of(text: str, start: str) -> int:
    """1-based number of the first line of ``text`` starting with ``start``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


# ---------------------------------------------------------------------------------------------
# stats parsers


def test_aseg_stats_measures_and_volumes(subject):
    aseg = read_aseg_stats(subject / "stats" / "aseg.stats")
    for s, n, d, v, u in ASEG_MEASURES_FS7:
        m = aseg.measures[n]
        assert (m.structure, m.description, m.units) == (s, d, u)
        assert m.value == pytest.approx(v, abs=1e-6)
    assert aseg.total_gray_mm3 == pytest.approx(612345.678901, abs=1e-6)
    assert aseg.intracranial_mm3 == pytest.approx(1464199.032007, abs=1e-6)
    table = [lab for lab in BLOCKS if lab not in (2, 3, 41, 42)]
    assert set(aseg.volumes_mm3) == set(table)
    for lab in table:
        assert aseg.volumes_mm3[lab] == pytest.approx(stats_volume(lab), abs=0.05)
        assert aseg.n_voxels[lab] == COUNT[lab]
    assert aseg.names[10] == "Left-Thalamus" and aseg.names[49] == "Right-Thalamus"
    assert aseg.voxel_volume_mm3 == 1.0
    assert (aseg.subject, aseg.version, aseg.seg_file) == ("sub-01", "7.4.1", "mri/aseg.mgz")


def test_aseg_stats_freesurfer5_thalamus_proper(tmp_path):
    path = tmp_path / "aseg.stats"
    path.write_text(aseg_stats_text("fs51"))
    aseg = read_aseg_stats(path)
    assert aseg.names[10] == "Left-Thalamus-Proper"
    assert aseg.names[49] == "Right-Thalamus-Proper"
    assert aseg.volumes_mm3[10] == pytest.approx(231.7) and aseg.volumes_mm3[49] == 204.9
    assert aseg.total_gray_mm3 == pytest.approx(684125.672133, abs=1e-6)
    assert aseg.intracranial_mm3 == pytest.approx(1137205.24919, abs=1e-6)  # ICV in 5.x


def test_aparc_stats_and_area_weighted_thickness(subject):
    lh = read_aparc_stats(subject / "stats" / "lh.aparc.stats")
    rh = read_aparc_stats(subject / "stats" / "rh.aparc.stats", hemi="rh")
    assert (lh.hemi, rh.hemi, lh.atlas) == ("lh", "rh", "aparc")
    assert lh.mean_thickness_mm == 2.45 and rh.mean_thickness_mm == 2.35
    assert lh.white_surface_area_mm2 == 85000.0 and rh.white_surface_area_mm2 == 90000.0
    assert lh.n_vertices == 120000 and rh.n_vertices == 125000
    assert lh.measures["MeanThickness"].units == "mm"
    assert lh.measures["CortexVol"].value == pytest.approx(481309.853138)
    assert lh.region_thickness_mm == {r[0]: r[4] for r in REGIONS}
    # (2.45 * 85000 + 2.35 * 90000) / (85000 + 90000) = 419750 / 175000
    assert mean_cortical_thickness(lh, rh) == pytest.approx(419750 / 175000, rel=1e-12)
    # (2.45 * 120000 + 2.35 * 125000) / 245000 = 587750 / 245000
    assert mean_cortical_thickness(lh, rh, "vertices") == pytest.approx(587750 / 245000)


def test_aparc_without_measure_lines_uses_the_table(tmp_path):
    path = tmp_path / "lh.aparc.DKTatlas.stats"
    path.write_text(aparc_stats_text("lh", mean_thickness=False, area=False))
    lh = read_aparc_stats(path)
    assert lh.atlas == "aparc.DKTatlas"
    # FreeSurfer's MeanThickness is the per-vertex mean: NumVert-weighted ThickAvg
    nv = [r[1] for r in REGIONS]
    expect = sum(r[1] * r[4] for r in REGIONS) / sum(nv)
    assert lh.mean_thickness_mm == pytest.approx(expect, rel=1e-12)
    assert lh.white_surface_area_mm2 == sum(r[2] for r in REGIONS)
    assert lh.n_vertices == 120000  # NumVert measure line still there


# ---------------------------------------------------------------------------------------------
# label maps


def test_load_label_map_keeps_affine_and_labels(subject):
    labels, affine = load_label_map(subject / "mri" / "aseg.mgz")
    assert labels.dtype == np.int32 and labels.shape == SHAPE
    np.testing.assert_allclose(affine, AFFINE, atol=1e-5)
    np.testing.assert_array_equal(labels, make_labels())


def test_label_masks_counts():
    lab = make_labels()
    masks = label_masks(lab)
    for key in ("thalamus_left", "thalamus_right", "lateral_ventricle_left",
                "lateral_ventricle_right", "inferior_lateral_ventricle_left",
                "inferior_lateral_ventricle_right", "third_ventricle", "caudate_left",
                "putamen_right", "pallidum_left", "hippocampus_right", "amygdala_left",
                "accumbens_right"):  # fmt: skip
        assert masks[key].dtype == bool
        assert int(masks[key].sum()) == COUNT[ASEG_KEYS[key]], key
    assert ASEG_KEYS["thalamus_left"] == 10 and ASEG_KEYS["thalamus_right"] == 49
    assert int(masks["cortex"].sum()) == COUNT[3] + COUNT[42]
    assert int(masks["csf"].sum()) == sum(COUNT[k] for k in (4, 43, 5, 44, 14, 24))
    assert int(masks["white_matter"].sum()) == sum(COUNT[k] for k in (2, 41, 7, 46))
    assert int(masks["gray_matter"].sum()) == sum(COUNT[k] for k in GM_LABELS)
    assert not (masks["gray_matter"] & masks["white_matter"]).any()
    # aparc+aseg: cortical parcels count as cortex
    parc = label_masks(make_labels(parcels=True), ["cortex", "cortex_left", "cortex_right"])
    assert int(parc["cortex"].sum()) == COUNT[3] + COUNT[42]
    assert int(parc["cortex_left"].sum()) == COUNT[3]
    assert int(parc["cortex_right"].sum()) == COUNT[42]
    assert "unknown structure" in error_of(label_masks, lab, ["thalamus"]).message


def test_label_volumes_anisotropic_voxels():
    lab = make_labels()
    vs = (0.9, 1.0, 1.2)
    vv = 0.9 * 1.0 * 1.2
    vols = structure_volumes_ml(lab, vs, ["thalamus_left", "thalamus_right", "brainstem"])
    assert vols["thalamus_left"] == pytest.approx(COUNT[10] * vv / 1000)
    assert vols["thalamus_right"] == pytest.approx(COUNT[49] * vv / 1000)
    assert vols["brainstem"] == pytest.approx(COUNT[16] * vv / 1000)
    gm = gray_matter_volumes_ml(make_labels(parcels=True), vs)
    assert gm["cortex"] == pytest.approx((COUNT[3] + COUNT[42]) * vv / 1000)
    assert gm["cerebellar_cortex"] == pytest.approx((COUNT[8] + COUNT[47]) * vv / 1000)
    assert gm["total"] == pytest.approx(sum(COUNT[k] for k in GM_LABELS) * vv / 1000)


def test_gray_matter_definition_reproduces_freesurfer_741():
    """Voxel counts of a real FreeSurfer 7.4.1 aseg.stats (0.7 mm voxels, 0.343 mm^3).

    FreeSurfer writes SubCortGrayVol = 55992.348144 mm^3 and TotalGrayVol - CortexVol =
    660155.538403 - 481309.853138 mm^3 for these NVoxels; its cortex is surface-based, so the
    label-derived parts other than the cortex must reproduce them.
    """
    nvox = {
        10: 21607, 49: 19911, 11: 9535, 50: 9465, 12: 13649, 51: 14917, 13: 5413, 52: 5698,
        17: 12307, 53: 12712, 18: 4343, 54: 4813, 26: 1842, 58: 1656, 28: 12604, 60: 12771,
        8: 179083, 47: 179090, 2: 5000, 4: 11076, 16: 63207,
    }  # fmt: skip
    flat = np.repeat(np.array(list(nvox), np.int32), list(nvox.values()))
    lab = np.zeros(85 * 85 * 85, np.int32)
    lab[: flat.size] = flat
    gm = gray_matter_volumes_ml(lab.reshape(85, 85, 85), 0.7)
    assert gm["cortex"] == 0.0
    assert gm["subcortical_gray"] * 1000 == pytest.approx(55992.348144, rel=1e-7)
    other = gm["subcortical_gray"] + gm["cerebellar_cortex"]
    assert other * 1000 == pytest.approx(660155.538403 - 481309.853138, rel=1e-7)


# ---------------------------------------------------------------------------------------------
# whole subjects


def test_freesurfer_subject(subject):
    seg = read_freesurfer_subject(subject)
    assert seg.source == "freesurfer"
    assert seg.label_path == subject / "mri" / "aseg.mgz"
    np.testing.assert_array_equal(seg.labels, make_labels())
    np.testing.assert_allclose(seg.affine, AFFINE, atol=1e-5)
    assert seg.voxel_size == pytest.approx((1.0, 1.0, 1.0))
    # aseg.stats Volume_mm3 overrides the voxel counts
    assert seg.thalamus_left_ml == pytest.approx(0.2317)
    assert seg.thalamus_right_ml == pytest.approx(0.2049)
    assert seg.thalamus_ml == pytest.approx(0.4366)
    assert seg.total_gray_ml == pytest.approx(612.345678901)
    assert seg.intracranial_ml == pytest.approx(1464.199032007)
    assert seg.mean_thickness_mm == pytest.approx(419750 / 175000)
    assert seg.version == "7.4.1"
    stats = subject / "stats"
    assert seg.files_read == (
        subject / "mri" / "aseg.mgz", stats / "aseg.stats",
        stats / "lh.aparc.stats", stats / "rh.aparc.stats",
    )  # fmt: skip
    assert "aseg.stats" in seg.origin["thalamus"] and "TotalGrayVol" in seg.origin["total_gray"]
    prov = json.loads(json.dumps(seg.provenance()))
    assert prov["Source"] == "freesurfer" and prov["Thalamus_mL"] == pytest.approx(0.4366)
    assert prov["FilesRead"][0].endswith("aseg.mgz")
    assert int(seg.masks(["thalamus_left"])["thalamus_left"].sum()) == COUNT[10]


def test_freesurfer5_and_freesurfer7_names_give_the_same_thalamus(tmp_path):
    fs5 = read_freesurfer_subject(make_subject(tmp_path / "fs5", style="fs51"))
    fs7 = read_freesurfer_subject(make_subject(tmp_path / "fs7", style="fs7"))
    for seg in (fs5, fs7):
        assert seg.thalamus_left_ml == pytest.approx(0.2317)
        assert seg.thalamus_right_ml == pytest.approx(0.2049)
    assert fs5.aseg_stats.names[10] == "Left-Thalamus-Proper"
    assert fs7.aseg_stats.names[10] == "Left-Thalamus"
    assert fs5.intracranial_ml == pytest.approx(1137.20524919)


def test_without_stats_everything_from_labels(tmp_path, caplog):
    root = make_subject(tmp_path / "sub-01", stats=False)
    with caplog.at_level(logging.INFO, logger="qsmiron.anatomy.freesurfer"):
        seg = read_freesurfer_subject(root)
    assert seg.thalamus_left_ml == COUNT[10] / 1000 and seg.thalamus_right_ml == COUNT[49] / 1000
    assert seg.total_gray_ml == pytest.approx(sum(COUNT[k] for k in GM_LABELS) / 1000)
    assert seg.mean_thickness_mm is None and seg.intracranial_ml is None
    assert "voxel counts" in seg.origin["thalamus"]
    assert "mean_thickness" not in seg.origin
    assert "thickness is None" in caplog.text
    assert seg.files_read == (root / "mri" / "aseg.mgz",)


def test_no_aparc_stats_gives_no_thickness(tmp_path, caplog):
    root = make_subject(tmp_path / "sub-01", aparc=False)
    with caplog.at_level(logging.INFO, logger="qsmiron.anatomy.freesurfer"):
        seg = read_freesurfer_subject(root)
    assert seg.mean_thickness_mm is None and seg.aparc_stats is None
    assert seg.thalamus_left_ml == pytest.approx(0.2317)
    assert "no ?h.aparc*.stats" in caplog.text


def test_label_map_choice_and_stats_mismatch_warning(tmp_path, caplog):
    counts = dict(COUNT)
    counts[10] += 7  # the stats were computed from another aseg.mgz
    root = make_subject(tmp_path / "sub-01", counts=counts)
    with caplog.at_level(logging.WARNING, logger="qsmiron.anatomy.freesurfer"):
        seg = read_freesurfer_subject(root)
    assert "NVoxels of SegId 10" in caplog.text
    assert seg.thalamus_left_ml == pytest.approx(0.2317)  # the stats still win
    caplog.clear()
    seg = read_freesurfer_subject(root, label_map="aparc+aseg.mgz")
    assert seg.label_path.name == "aparc+aseg.mgz"
    assert int((seg.labels == 1028).sum()) > 0
    assert "NVoxels" not in caplog.text  # the stats belong to aseg.mgz, not to this map


def test_fastsurfer_seg_only_and_surfaces(tmp_path):
    root = tmp_path / "sub-02"
    save_mgz(root / "mri" / "aparc.DKTatlas+aseg.deep.mgz", make_labels(parcels=True))
    (root / "stats").mkdir(parents=True)
    no_total = [m for m in ASEG_MEASURES_FS7 if m[1] != "TotalGrayVol"]
    (root / "stats" / "aseg+DKT.stats").write_text(
        aseg_stats_text(measures=no_total, seg_file="mri/aparc.DKTatlas+aseg.deep.mgz")
    )
    for hemi in ("lh", "rh"):
        (root / "stats" / f"{hemi}.aparc.DKTatlas.mapped.stats").write_text(aparc_stats_text(hemi))
    seg = read_freesurfer_subject(root)
    assert seg.source == "fastsurfer"
    assert seg.label_path.name == "aparc.DKTatlas+aseg.deep.mgz"
    assert seg.thalamus_left_ml == pytest.approx(0.2317)
    # no TotalGrayVol: cortex parcels + subcortical grey + cerebellar cortex voxel counts
    assert seg.total_gray_ml == pytest.approx(sum(COUNT[k] for k in GM_LABELS) / 1000)
    assert "approximates" in seg.origin["total_gray"]
    assert seg.mean_thickness_mm == pytest.approx(419750 / 175000)
    assert seg.files_read[-1].name == "rh.aparc.DKTatlas.mapped.stats"


# ---------------------------------------------------------------------------------------------
# SynthSeg

SYNTHSEG_NAMES = {
    2: "left cerebral white matter", 3: "left cerebral cortex", 4: "left lateral ventricle",
    5: "left inferior lateral ventricle", 7: "left cerebellum white matter",
    8: "left cerebellum cortex", 10: "left thalamus", 11: "left caudate", 12: "left putamen",
    13: "left pallidum", 14: "3rd ventricle", 16: "brain-stem", 17: "left hippocampus",
    18: "left amygdala", 24: "csf", 26: "left accumbens area", 28: "left ventral DC",
    41: "right cerebral white matter", 42: "right cerebral cortex",
    43: "right lateral ventricle", 44: "right inferior lateral ventricle",
    46: "right cerebellum white matter", 47: "right cerebellum cortex", 49: "right thalamus",
    50: "right caudate", 51: "right putamen", 52: "right pallidum", 53: "right hippocampus",
    54: "right amygdala", 58: "right accumbens area", 60: "right ventral DC",
}  # fmt: skip
#: volumes written in the CSV (mm^3): soft volumes, deliberately not the voxel counts
CSV_MM3 = {label: COUNT[label] * 1.04 + 0.25 for label in SYNTHSEG_NAMES}
TIV_MM3 = 1512345.5


def synthseg_csv(subjects: list[str], first: str = "subject") -> str:
    labels = list(SYNTHSEG_NAMES)
    lines = [",".join([first, "total intracranial"] + [SYNTHSEG_NAMES[k] for k in labels])]
    for s in subjects:
        lines.append(",".join([s, f"{TIV_MM3}"] + [f"{CSV_MM3[k]}" for k in labels]))
    return "\n".join(lines) + "\n"


@pytest.fixture
def synthseg(tmp_path) -> Path:
    img = nib.Nifti1Image(make_labels(), np.diag([0.9, 1.0, 1.2, 1.0]))
    path = tmp_path / "sub-01_synthseg.nii.gz"
    nib.save(img, str(path))
    return path


def test_synthseg_from_labels(synthseg):
    seg = read_synthseg(synthseg)
    vv = 0.9 * 1.0 * 1.2
    assert seg.source == "synthseg" and seg.mean_thickness_mm is None
    assert seg.thalamus_left_ml == pytest.approx(COUNT[10] * vv / 1000)
    assert seg.thalamus_right_ml == pytest.approx(COUNT[49] * vv / 1000)
    assert seg.total_gray_ml == pytest.approx(sum(COUNT[k] for k in GM_LABELS) * vv / 1000)
    np.testing.assert_allclose(seg.affine, np.diag([0.9, 1.0, 1.2, 1.0]))


@pytest.mark.parametrize("first", ["subject", ""])
def test_synthseg_with_volume_csv(synthseg, tmp_path, first):
    csv_path = tmp_path / "vol.csv"
    csv_path.write_text(synthseg_csv(["sub-01_T1w"], first=first))
    vols = read_synthseg_volumes(csv_path)
    assert vols["left thalamus"] == CSV_MM3[10] and vols["total intracranial"] == TIV_MM3
    seg = read_synthseg(synthseg, csv_path)
    assert seg.thalamus_left_ml == pytest.approx(CSV_MM3[10] / 1000)
    assert seg.thalamus_right_ml == pytest.approx(CSV_MM3[49] / 1000)
    assert seg.total_gray_ml == pytest.approx(sum(CSV_MM3[k] for k in GM_LABELS) / 1000)
    assert seg.intracranial_ml == pytest.approx(TIV_MM3 / 1000)
    assert seg.files_read == (synthseg, csv_path)
    assert "vol.csv" in seg.origin["thalamus"]


def test_synthseg_csv_of_several_subjects(synthseg, tmp_path):
    csv_path = tmp_path / "volumes.csv"
    text = synthseg_csv(["sub-00", "sub-01", "sub-02"])
    lines = text.splitlines()
    lines[1] = lines[1].replace(f",{CSV_MM3[10]},", ",1.5,", 1)  # another subject's thalamus
    csv_path.write_text("\n".join(lines) + "\n")
    # the row is found from the segmentation's name (sub-01_synthseg -> sub-01) ...
    assert read_synthseg(synthseg, csv_path).thalamus_left_ml == pytest.approx(CSV_MM3[10] / 1000)
    # ... or named
    assert read_synthseg_volumes(csv_path, subject="sub-00")["left thalamus"] == 1.5
    err = error_of(read_synthseg_volumes, csv_path)
    assert err.path == csv_path and "3 subjects" in err.message and "'sub-02'" in err.message


# ---------------------------------------------------------------------------------------------
# bad input: an InputError naming the file and saying what was wrong


def test_missing_folders_and_label_maps(tmp_path):
    err = error_of(read_freesurfer_subject, tmp_path / "nobody")
    assert err.path == tmp_path / "nobody" and "not found" in err.message
    (tmp_path / "sub-01" / "stats").mkdir(parents=True)
    (tmp_path / "sub-01" / "notes.txt").write_text("x")
    err = error_of(read_freesurfer_subject, tmp_path / "sub-01")
    assert "no mri/ folder" in err.message and "notes.txt" in err.message and "stats/" in str(err)
    (tmp_path / "sub-01" / "mri" / "orig.mgz").parent.mkdir()
    (tmp_path / "sub-01" / "mri" / "orig.mgz").write_bytes(b"")
    err = error_of(read_freesurfer_subject, tmp_path / "sub-01")
    assert "no label map" in err.message and "orig.mgz" in err.message and "aseg.mgz" in err.message
    err = error_of(read_freesurfer_subject, tmp_path / "sub-01" / "notes.txt")
    assert "found a file" in err.message and "notes.txt" in str(err)
    err = error_of(read_freesurfer_subject, tmp_path / "sub-01", label_map="aseg.presurf.mgz")
    assert "aseg.presurf.mgz" in str(err) and "orig.mgz" in err.message


def test_corrupt_and_truncated_label_maps(tmp_path):
    bad = tmp_path / "aseg.mgz"
    bad.write_bytes(b"this is not an MGZ file" * 10)
    assert error_of(load_label_map, bad).path == bad
    good = save_mgz(tmp_path / "full.mgz", make_labels())
    cut = tmp_path / "cut.mgz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    err = error_of(load_label_map, cut)
    assert err.path == cut and "corrupt" in err.message


def test_label_map_shape_type_and_thalamus(tmp_path):
    four_d = save_mgz(tmp_path / "aseg4d.mgz", np.zeros((8, 8, 8, 2), np.int32))
    err = error_of(load_label_map, four_d)
    assert err.path == four_d and "3-D" in err.message
    half = make_labels().astype(np.float32)
    half[1, 1, 1] = 10.5
    frac = save_mgz(tmp_path / "resampled.mgz", half)
    err = error_of(load_label_map, frac)
    assert err.path == frac and "non-integer" in err.message and "10.5" in err.message
    # integral floats are fine (mri_convert -odt float)
    whole = save_mgz(tmp_path / "float.mgz", make_labels().astype(np.float32))
    np.testing.assert_array_equal(load_label_map(whole)[0], make_labels())
    lab = make_labels()
    lab[np.isin(lab, (10, 49))] = 0
    no_thal = save_mgz(tmp_path / "nothal.mgz", lab)
    err = error_of(load_label_map, no_thal)
    assert err.path == no_thal and "10 (Left-Thalamus) and 49 (Right-Thalamus)" in err.message
    assert "labels found: 0, 2, 3, 4, 5" in err.message
    lab[lab == 2] = 9
    err = error_of(load_label_map, save_mgz(tmp_path / "nine.mgz", lab))
    assert "9/48" in err.message


def test_corrupt_aseg_stats(tmp_path):
    path = tmp_path / "aseg.stats"
    text = aseg_stats_text().replace("Total gray matter volume, 612345.678901", "Total gray, abc")
    path.write_text(text)
    err = error_of(read_aseg_stats, path)
    n = line_of(text, "# Measure TotalGray")
    assert err.path == path and f"line {n}:" in err.message and "'abc'" in err.message
    text = aseg_stats_text().replace("Left-Thalamus ", " ")  # a row without its StructName
    path.write_text(text)
    err = error_of(read_aseg_stats, path)
    n = next(i for i, s in enumerate(text.splitlines(), 1) if s.split()[1:2] == ["10"])
    assert f"line {n}:" in err.message and "9 fields" in err.message
    path.write_text("# Title Segmentation Statistics\n# Measure BrainSeg, BrainSegVol, x, 1, mm^3")
    assert "ColHeaders" in error_of(read_aseg_stats, path).message
    path.write_text("")
    assert "empty" in error_of(read_aseg_stats, path).message
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
    assert error_of(read_aseg_stats, path).path == path
    assert "not found" in error_of(read_aseg_stats, tmp_path / "none.stats").message


def test_aseg_stats_without_thalamus_rows(tmp_path):
    root = make_subject(tmp_path / "sub-01", drop=(49,))
    err = error_of(read_freesurfer_subject, root)
    assert err.path == root / "stats" / "aseg.stats"
    assert "SegId 49" in err.message and "Right-Thalamus-Proper" in err.message


def test_aparc_pair_problems(tmp_path, subject):
    stats = subject / "stats"
    (stats / "rh.aparc.stats").unlink()
    err = error_of(read_freesurfer_subject, subject)
    assert err.path == stats / "rh.aparc.stats" and "lh.aparc.stats" in err.message
    (stats / "rh.aparc.stats").write_text(aparc_stats_text("lh"))  # lh content under rh name
    err = error_of(read_freesurfer_subject, subject)
    assert err.path == stats / "rh.aparc.stats" and "says rh" in err.message
    (stats / "rh.aparc.stats").write_text(aparc_stats_text("rh", subject="sub-99"))
    err = error_of(read_freesurfer_subject, subject)
    assert "different subjects" in err.message and "sub-99" in err.message
    lh = read_aparc_stats(stats / "lh.aparc.stats")
    err = error_of(mean_cortical_thickness, lh, lh)
    assert err.path == stats / "lh.aparc.stats" and "right-hemisphere" in err.message
    bad = tmp_path / "lh.aparc.stats"
    text = aparc_stats_text("lh").replace("Mean Thickness, 2.45, mm", "Mean Thickness, 2.45, cm")
    bad.write_text(text)
    err = error_of(read_aparc_stats, bad)
    assert err.path == bad and "'cm'" in err.message
    bad.write_text(aparc_stats_text("lh", mean_thickness=False).replace("ThickAvg", "Thick"))
    assert "MeanThickness" in error_of(read_aparc_stats, bad).message
    anon = tmp_path / "cortex.stats"
    anon.write_text(aparc_stats_text("lh").replace("# hemi lh\n", ""))
    assert "hemisphere" in error_of(read_aparc_stats, anon).message


def test_bad_synthseg_csv(synthseg, tmp_path):
    path = tmp_path / "vol.csv"
    path.write_text(synthseg_csv(["sub-01"]).replace("left thalamus", "left thalamus?", 1)
                    .replace("right thalamus", "right thal", 1))  # fmt: skip
    err = error_of(read_synthseg, synthseg, path)
    assert err.path == path and "left thalamus" in err.message
    text = synthseg_csv(["sub-01"]).replace(f",{CSV_MM3[49]},", ",n/a,", 1)
    path.write_text(text)
    err = error_of(read_synthseg_volumes, path)
    assert err.path == path and "line 2:" in err.message and "'right thalamus'" in err.message
    path.write_text("a,b,c\n1,2,3\n")
    assert "header" in error_of(read_synthseg_volumes, path).message
    path.write_text(synthseg_csv(["sub-07", "sub-08"]))
    err = error_of(read_synthseg, synthseg, path)
    assert "no row for subject 'sub-01'" in err.message and "'sub-07'" in err.message
