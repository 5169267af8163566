"""Anatomy QC panel: slice choice on known geometry, the PNG itself, orientation and errors."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread
from scipy import ndimage

from qsmiron.errors import InputError
from qsmiron.report.figures import (
    COLOURS,
    FIGSIZE_INCHES,
    anatomy_qc_panel,
    lesion_mosaic,
    lesion_number_positions,
    lesion_slices,
    slice_with_most,
    top_slices,
)

SHAPE = (48, 56, 36)
VS = (2.0, 2.0, 2.5)  # anisotropic on purpose
Z_THALAMUS = 18  # centre slice of both thalamic ellipsoids
Y_THALAMUS = 30
Z_CSF = 16  # centre slice of the CSF spheres
DPI = 100  # outlines of 1.5-2 pt are > 2 px wide: fully covered pixels have the exact colour


def _ellipsoid(centre_vox, semi_mm, vs=VS, shape=SHAPE) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    r2 = sum(((g - c) * v / s) ** 2 for g, c, v, s in zip(grid, centre_vox, vs, semi_mm,
                                                           strict=True))
    return r2 <= 1.0


@pytest.fixture(scope="module")
def subject():
    """A head-sized box of 'brain' with two thalami, two CSF spheres, a vein and lesions.

    RAS+ voxel axes: the left thalamus (patient's left) has the lower axis-0 index, the CSF
    reference spheres lie posterior (lower axis-1 index) to the thalami, as the atria do.
    """
    rng = np.random.default_rng(0)
    brain = _ellipsoid((24, 28, 18), (44, 52, 40))
    chi = np.where(brain, rng.normal(0.0, 0.01, SHAPE), 0.0).astype(np.float32)
    left = _ellipsoid((19, Y_THALAMUS, Z_THALAMUS), (7, 12, 8))
    right = _ellipsoid((29, Y_THALAMUS, Z_THALAMUS), (7, 12, 8))
    csf = _ellipsoid((14, 18, Z_CSF), (4, 4, 6)) | _ellipsoid((34, 18, Z_CSF), (4, 4, 6))
    vein = np.zeros(SHAPE, bool)
    vein[23:25, 14:44, Z_THALAMUS + 1] = True  # an internal cerebral vein, along y
    chi[left | right] -= 0.03
    chi[csf] = 0.0
    chi[vein] = 0.4
    flair = np.where(brain, 100.0 + rng.normal(0, 3, SHAPE), 0.0).astype(np.float32)
    lesions = np.zeros(SHAPE, bool)
    for c in ((12, 36, 24), (36, 22, 24), (30, 40, 10)):
        lesions |= _ellipsoid(c, (4, 4, 4))
    flair[lesions] = 180.0
    return {"chi": chi, "left": left, "right": right, "csf": csf, "vein": vein,
            "flair": flair, "lesions": lesions}


def _render(tmp_path, s, name="qc.png", **kw):
    args = dict(thalamus=(s["left"], s["right"]), csf_ref=s["csf"], veins=s["vein"])
    for k in ("thalamus", "csf_ref", "veins"):
        if k in kw:
            args[k] = kw.pop(k)
    kw.setdefault("dpi", DPI)
    return anatomy_qc_panel(tmp_path / name, s["chi"], VS, **args, **kw)


def _pixels(png, colour: str, tol: float = 1.5 / 255) -> np.ndarray:
    """Boolean map of the pixels of exactly ``colour`` (to 8-bit rounding)."""
    img = imread(png)[..., :3]
    return np.all(np.abs(img - np.array(to_rgb(colour), np.float32)) <= tol, axis=-1)


# ------------------------------------------------------------------------------------------
# slice choice
# ------------------------------------------------------------------------------------------
def test_slice_with_most_picks_the_centre_of_the_thalami(subject):
    th = subject["left"] | subject["right"]
    counts = np.count_nonzero(th, axis=(0, 1))
    assert slice_with_most(th, axis=2) == Z_THALAMUS == int(np.argmax(counts))
    assert slice_with_most(th, axis=1) == Y_THALAMUS
    assert slice_with_most(subject["csf"], axis=2) == Z_CSF
    assert slice_with_most(np.zeros(SHAPE, bool)) is None


def test_slice_with_most_breaks_ties_towards_the_centre():
    m = np.zeros((8, 8, 20), bool)
    m[2:6, 2:6, 4:15] = True  # a box: slices 4..14 tie
    assert slice_with_most(m, axis=2) == 9
    m[0, 0, 14] = True  # one more voxel on slice 14: it wins outright
    assert slice_with_most(m, axis=2) == 14


def test_top_slices_ranks_and_spaces(subject):
    les = subject["lesions"]
    # lesions centred at z=24 (two of them) and z=10: those are the two best slices 4 apart
    assert top_slices(les, n=2, axis=2, min_gap=4) == [10, 24]
    three = top_slices(les, n=3, axis=2, min_gap=1)
    assert 24 in three and len(three) == 3
    assert top_slices(np.zeros(SHAPE, bool), n=3) == []
    with pytest.raises(InputError, match="min_gap"):
        top_slices(les, n=3, min_gap=0)
    with pytest.raises(InputError, match="axis"):
        slice_with_most(les, axis=3)


# ------------------------------------------------------------------------------------------
# the PNG
# ------------------------------------------------------------------------------------------
def test_panel_is_a_png_of_the_stated_size_and_deterministic(tmp_path, subject):
    kw = dict(flair=subject["flair"], lesions=subject["lesions"], title="sub-01",
              flags=("csf_ref_high_r2star",), thalamus_before_veins=(subject["left"],
                                                                    subject["right"]))
    p1 = _render(tmp_path, subject, "a/qc1.png", **kw)
    p2 = _render(tmp_path, subject, "b/qc2.png", **kw)
    assert p1 == tmp_path / "a/qc1.png" and p1.is_file()
    assert p1.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(p1)
    assert img.shape[:2] == (round(FIGSIZE_INCHES[1] * DPI), round(FIGSIZE_INCHES[0] * DPI))
    assert p1.read_bytes() == p2.read_bytes()
    assert not list(tmp_path.glob("**/*.part"))  # nothing half-written left behind


def test_overlays_are_drawn_in_their_colours(tmp_path, subject):
    """Each overlay adds pixels of its exact colour (the legend alone already has a few)."""
    full = _render(tmp_path, subject, "full.png", flair=subject["flair"],
                   lesions=subject["lesions"], flags=("thalamus_small",))
    empty = np.zeros(SHAPE, bool)
    no_th = _render(tmp_path, subject, "no_th.png", thalamus=(empty, empty), veins=empty,
                    flair=subject["flair"], lesions=np.zeros(SHAPE, bool))
    for key in ("thalamus_left", "thalamus_right", "veins", "lesions", "flags"):
        n_full = int(_pixels(full, COLOURS[key]).sum())
        n_empty = int(_pixels(no_th, COLOURS[key]).sum())
        assert n_full > 0, key
        assert n_full > n_empty + 20, (key, n_full, n_empty)
    assert _pixels(full, COLOURS["csf_ref"]).sum() > 0


def test_radiological_orientation_and_anterior_up(tmp_path, subject):
    """Left thalamus on the image right, CSF atria (posterior) below the thalami."""
    png = _render(tmp_path, subject, "orient.png")
    h, w = imread(png).shape[:2]
    region = (slice(int(0.12 * h), int(0.5 * h)), slice(0, int(0.235 * w)))  # first QSM panel
    rows_l, cols_l = np.nonzero(_pixels(png, COLOURS["thalamus_left"])[region])
    rows_r, cols_r = np.nonzero(_pixels(png, COLOURS["thalamus_right"])[region])
    rows_c, _ = np.nonzero(_pixels(png, COLOURS["csf_ref"])[region])
    assert cols_l.size > 20 and cols_r.size > 20 and rows_c.size > 20
    assert cols_l.mean() > cols_r.mean() + 10  # patient's left on the image right
    assert rows_c.mean() > max(rows_l.mean(), rows_r.mean()) + 5  # posterior is down


def test_aspect_ratio_follows_voxel_size(tmp_path):
    """A 40 x 40 mm square drawn on 2 x 4 mm voxels is square on the image."""
    shape = (40, 40, 12)
    chi = np.zeros(shape, np.float32)
    chi[5:35, 5:35, :] = 0.01
    th = np.zeros(shape, bool)
    th[10:30, 10:20, 5:7] = True  # 40 mm x 40 mm in-plane with voxels 2 x 4 mm
    png = anatomy_qc_panel(tmp_path / "sq.png", chi, (2.0, 4.0, 2.0), th,
                           np.zeros(shape, bool), np.zeros(shape, bool), dpi=DPI)
    h, w = imread(png).shape[:2]
    region = (slice(int(0.12 * h), int(0.5 * h)), slice(0, int(0.235 * w)))
    rows, cols = np.nonzero(_pixels(png, COLOURS["thalamus"])[region])
    height, width = np.ptp(rows), np.ptp(cols)
    assert width > 40 and abs(height / width - 1.0) < 0.05


def test_flair_on_its_own_grid_and_single_mask(tmp_path, subject):
    fine = np.repeat(np.repeat(subject["flair"], 2, axis=0), 2, axis=1)
    fine_les = np.repeat(np.repeat(subject["lesions"], 2, axis=0), 2, axis=1)
    png = anatomy_qc_panel(
        tmp_path / "own.png", subject["chi"], VS, subject["left"] | subject["right"],
        subject["csf"], subject["vein"], flair=fine, lesions=fine_les,
        flair_voxel_size=(1.0, 1.0, 2.5), dpi=DPI,
    )
    assert _pixels(png, COLOURS["thalamus"]).sum() > 0
    assert _pixels(png, COLOURS["lesions"]).sum() > 0


def test_empty_optional_rois_are_drawn_as_nothing(tmp_path, subject):
    empty = np.zeros(SHAPE, bool)
    for name, kw in {
        "no_csf.png": dict(csf_ref=empty, veins=empty),
        "no_thalamus.png": dict(thalamus=empty),
        "one_side.png": dict(thalamus=(subject["left"], empty)),
    }.items():
        assert _render(tmp_path, subject, name, dpi=40, **kw).is_file()


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
def test_bad_input_is_named(tmp_path, subject):
    s = subject
    empty = np.zeros(SHAPE, bool)
    out = tmp_path / "bad.png"

    def call(chi=s["chi"], vs=VS, thalamus=(s["left"], s["right"]), csf=s["csf"],
             veins=s["vein"], **kw):
        return anatomy_qc_panel(out, chi, vs, thalamus, csf, veins, dpi=40, **kw)

    with pytest.raises(InputError, match="csf_ref shape"):
        call(csf=s["csf"][:, :, :-1])
    with pytest.raises(InputError, match="veins shape"):
        call(veins=s["vein"][1:])
    with pytest.raises(InputError, match="chi must be a 3-D"):
        call(chi=s["chi"][..., None])
    with pytest.raises(InputError, match="both empty"):
        call(thalamus=empty, csf=empty)
    nan_chi = s["chi"].copy()
    nan_chi[3, 3, 3] = np.nan
    with pytest.raises(InputError, match="chi has 1 NaN"):
        call(chi=nan_chi)
    with pytest.raises(InputError, match=r"\(left, right\) pair"):
        call(thalamus=(s["left"], s["right"], s["left"]))
    with pytest.raises(InputError, match="thalamus_before_veins"):
        call(thalamus_before_veins=s["left"][:-1])
    with pytest.raises(InputError, match="voxel_size"):
        call(vs=(2.0, 0.0, 2.0))
    with pytest.raises(InputError, match="without flair"):
        call(lesions=s["lesions"])
    with pytest.raises(InputError, match="flair_voxel_size"):
        call(flair=s["flair"][::2])
    with pytest.raises(InputError, match="lesions shape"):
        call(flair=s["flair"], lesions=s["lesions"][::2])
    with pytest.raises(InputError, match="chi_window_ppm"):
        call(chi_window_ppm=(0.1, -0.1))
    assert not out.exists()


# ------------------------------------------------------------------------------------------
# lesion mosaic
# ------------------------------------------------------------------------------------------
def _blob(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def test_lesion_slices_cover_every_lesion_with_the_fewest_slices():
    """Six lesions whose z-ranges are known: two slices cross all of them (z 5 crosses the
    three of 3-6, 4-8, 5-9; z 14 the three of 12-15, 14-16, 14), and no single slice does."""
    shape = (40, 40, 20)
    ranges = [(3, 7), (4, 9), (5, 10), (12, 16), (14, 17), (14, 15)]
    mask = np.zeros(shape, bool)
    for k, (z0, z1) in enumerate(ranges):  # apart in-plane: six 26-connected components
        x = 2 + 6 * k
        mask |= _blob(shape, (x, 5, z0), (x + 3, 9, z1))
    zs, shown = lesion_slices(mask)
    assert shown == 6 and len(zs) == 2
    assert 5 <= zs[0] <= 6 and zs[1] == 14
    for z0, z1 in ranges:  # each lesion crossed by a chosen slice
        assert any(z0 <= z < z1 for z in zs)
    # each lesion numbered beside it (right of it on the radiological image: below its lowest
    # axis-0 index) on the slices crossing it: here each lesion is crossed by one of the two
    lab, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    pos = lesion_number_positions(lab, zs, (1.0, 1.0, 2.0))
    assert sorted(p[0] for p in pos) == list(range(1, 7))
    for number, z, h_mm, v_mm in pos:
        sec = lab[:, :, z] == number
        assert z in zs and sec.any()
        xs, ys = np.nonzero(sec)
        assert h_mm == (xs.min() - 1.5) * 1.0 and v_mm == ys.mean()
    # fewer slices allowed than needed: the best one, and the count it shows
    zs1, shown1 = lesion_slices(mask, max_slices=1)
    assert len(zs1) == 1 and shown1 == 3
    assert lesion_slices(np.zeros(shape, bool)) == ([], 0)
    with pytest.raises(InputError):
        lesion_slices(mask, max_slices=0)


def test_lesion_mosaic_draws_every_lesion(tmp_path, subject):
    """The subject's three lesions lie on two levels (z 24 twice, z 10): two panels, the
    lesions' red outlines in both rows of pixels; without lesions, twelve plain slices."""
    png = lesion_mosaic(tmp_path / "m.png", subject["flair"], subject["lesions"], VS,
                        title="sub-01", dpi=DPI)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h, w = imread(png).shape[:2]
    assert w == round(3 * 3.0 * DPI)  # panels of 3 inches, three wide at least
    red = _pixels(png, COLOURS["lesions"])
    thirds = [red[:, k * w // 3:(k + 1) * w // 3].sum() for k in range(3)]
    assert thirds[0] > 20 and thirds[1] > 20 and thirds[2] == 0  # two slices, both outlined
    again = lesion_mosaic(tmp_path / "m2.png", subject["flair"], subject["lesions"], VS,
                          title="sub-01", dpi=DPI)
    assert again.read_bytes() == png.read_bytes()
    none = lesion_mosaic(tmp_path / "n.png", subject["flair"], np.zeros(SHAPE, bool), VS,
                         dpi=DPI)
    assert imread(none).shape[1] == round(6 * 3.0 * DPI)  # two rows of six
    assert _pixels(none, COLOURS["lesions"]).sum() == 0
    # lesion numbers are written in the CSF-reference yellow (anti-aliased: near that colour),
    # with lesions only
    assert _pixels(png, COLOURS["csf_ref"], tol=0.2).sum() > 5
    assert _pixels(none, COLOURS["csf_ref"], tol=0.2).sum() == 0
    with pytest.raises(InputError, match="lesions shape"):
        lesion_mosaic(tmp_path / "x.png", subject["flair"], np.zeros((4, 4, 4), bool), VS)
