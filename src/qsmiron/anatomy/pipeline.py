"""The anatomy stage: structural images and a QSM in, ROIs, lesions and volumes out.

:func:`run_anatomy` chains the plain functions of :mod:`qsmiron.anatomy` for one subject:

1. T1w segmentation (:func:`qsmiron.anatomy.segment.segment_t1w`: N4, template registration,
   CerebrA labels, Atropos tissue classes), or a user's FreeSurfer/FastSurfer/SynthSeg output;
2. FLAIR -> T1w (rigid), automatic T2 lesions on the FLAIR with the T1w and its tissue
   classes (:func:`qsmiron.anatomy.lesions.segment_lesions`), or a user's lesion mask;
   lesions become ``WM-hypointensities`` in the T1w segmentation, never grey matter;
3. post-gadolinium T1w -> T1w (rigid) and the enhancing lesions
   (:func:`qsmiron.anatomy.enhancing.enhancing_lesions`);
4. volumes (thalamus, total grey matter) and cortical thickness on the T1w grid;
5. T1w -> GRE magnitude (rigid), labels into QSM space by majority of per-label linear
   interpolation (partial volume), the thalamus with veins (searched within 15 mm of the
   thalami, :func:`qsmiron.anatomy.veins.vein_mask`) and the partial-volume rims of veins
   and CSF excluded, the CSF reference in the atria
   (:func:`qsmiron.anatomy.rois.csf_reference_roi`);
6. measures (susceptibility of the thalamus and the deep grey nuclei relative to the CSF
   reference, volumes, lesion burden) and QC flags.

User masks (thalamus, CSF reference, lesions, veins) override the built-in results; where each
figure came from is recorded. Sign convention everywhere:
``rel_chi_ppb = mean(thalamus) - mean(CSF reference)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from qsmiron import _checks
from qsmiron._distance import depth_mm
from qsmiron.anatomy import register as reg
from qsmiron.anatomy.enhancing import enhancing_lesions
from qsmiron.anatomy.freesurfer import ExternalSegmentation
from qsmiron.anatomy.lesions import (
    grow_lesions,
    label_lesions,
    lesion_table,
    lesion_volume_ml,
    segment_lesions,
)
from qsmiron.anatomy.rois import (
    ThalamusRoi,
    atrium_search_regions,
    csf_reference_roi,
    roi_qc,
    thalamus_roi,
)
from qsmiron.anatomy.segment import (
    T1Segmentation,
    add_lesions,
    cortical_ribbon,
    partial_volumes,
    segment_t1w,
    structure_volumes,
)
from qsmiron.anatomy.thickness import cortical_thickness
from qsmiron.anatomy.veins import vein_mask
from qsmiron.errors import InputError
from qsmiron.io.bids import derivatives_dir, read_bids_anat
from qsmiron.io.nifti import load_nifti
from qsmiron.recon.mask import head_mask

__all__ = [
    "NUCLEI",
    "AnatomyInputs",
    "AnatomyParams",
    "AnatomyResult",
    "Image",
    "load_anatomy_inputs",
    "run_anatomy",
    "write_anatomy_derivatives",
]

log = logging.getLogger(__name__)

SIGN_CONVENTION = "rel_chi_ppb = mean(thalamus) - mean(CSF reference), ppb"

#: Deep grey nuclei measured besides the thalamus: name -> (left, right) aseg labels.
NUCLEI: dict[str, tuple[int, int]] = {
    "caudate": (11, 50),
    "putamen": (12, 51),
    "pallidum": (13, 52),
}
#: qsmiron labels added to the QSM-space label map.
CSF_REF_LEFT, CSF_REF_RIGHT, VEIN_EXCLUDED = 9001, 9002, 9003
EXTRA_LABELS = {
    CSF_REF_LEFT: "CSF-reference-left",
    CSF_REF_RIGHT: "CSF-reference-right",
    VEIN_EXCLUDED: "thalamus-excluded-vein-or-CSF-rim",
}
#: Coverage after a rigid registration (fraction of the fixed image's mask inside the
#: registered moving image's mask) below which the two images are taken not to show the same
#: head (wrong file or header orientation): aligned images of one session give > 0.97.
MIN_RIGID_COVERAGE = 0.9
#: Least ``|contrast|`` of a registered FLAIR or post-contrast T1w between the T1w's white
#: matter and lateral ventricles (:func:`ventricle_contrast`; CSF is dark on both by physics:
#: nulled by the inversion, long T1). Aligned images give +1.00: real MS patients' FLAIR and
#: post-contrast T1w (their T2w -1.00), the 190 simulated FLAIR and post-contrast T1w of the
#: 95-subject demo cohort; the simulated images flipped head-to-foot or front-to-back give
#: -0.55 to +0.48 after the rigid search, though their heads still overlap by 81-100% (a
#: left-right flip cannot be seen by either test).
MIN_VENTRICLE_CONTRAST = 0.8
#: Fewest eroded white-matter and ventricle voxels :func:`ventricle_contrast` judges on.
MIN_CONTRAST_VOXELS = 50
#: Thickest FLAIR voxel (mm) the automatic lesion rule is made for; beyond it the result is
#: flagged ``flair_thick_slices`` (MAGNIMS-CMSC-NAIMS 2021, Wattjes et al., Lancet Neurol
#: 20:653: 2D FLAIR slices of at most 3 mm).
MAX_FLAIR_SLICE_MM = 3.0
#: Head motion between two images of one session beyond which they are flagged.
MAX_ROTATION_DEG, MAX_TRANSLATION_MM = 20.0, 30.0


@dataclass
class Image:
    """A 3-D image with its grid and file."""

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel size, mm."""
        return np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(0))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return tuple(self.data.shape[:3])  # type: ignore[return-value]


@dataclass
class AnatomyInputs:
    """Everything :func:`run_anatomy` reads for one subject.

    Attributes
    ----------
    chi, magnitude, r2star, qsm_mask : Image
        QSM (ppm), echo-combined GRE magnitude, R2* (1/s) and the valid-QSM mask, one grid.
    t1w : Image or None
        Pre-contrast T1w (required unless a FreeSurfer result and user ROIs make it moot).
    flair, t1w_gd : Image or None
        FLAIR and post-gadolinium T1w (optional: without them lesion measures are missing).
    freesurfer : ExternalSegmentation or None
        A FreeSurfer/FastSurfer/SynthSeg result on the T1w's world coordinates.
    thalamus_mask, csf_ref_mask, lesion_mask, vein_mask : Image or None
        User masks: thalamus (labels 10/49, or a mask), CSF reference and veins on the QSM's
        world coordinates, lesions on the FLAIR's (or T1w's).
    lesion_seeds : (N, 3) ndarray or None
        The study's semi-automatic mode: one seed per lesion in scanner (RAS) mm; each lesion
        is grown on the FLAIR (:func:`qsmiron.anatomy.lesions.grow_lesions`).
    lesion_seeds_path : Path or None
        The file the seeds came from (provenance).
    anat_dir : Path or None
        The BIDS folder the structural images were looked for in (named in errors).
    """

    chi: Image
    magnitude: Image
    r2star: Image
    qsm_mask: Image
    t1w: Image | None = None
    flair: Image | None = None
    t1w_gd: Image | None = None
    freesurfer: ExternalSegmentation | None = None
    thalamus_mask: Image | None = None
    csf_ref_mask: Image | None = None
    lesion_mask: Image | None = None
    vein_mask: Image | None = None
    lesion_seeds: np.ndarray | None = None
    lesion_seeds_path: Path | None = None
    anat_dir: Path | None = None


@dataclass(frozen=True)
class AnatomyParams:
    """Parameters of :func:`run_anatomy`.

    Attributes
    ----------
    csf_reference : {"atrium", "ventricles"}
        The study's small ROI in each atrium, or the whole lateral ventricles.
    csf_radius_mm : float
        Radius of the atrium ROI, mm.
    vein_margin_mm : float
        Further margin around veins removed from the thalamus, mm (beyond the rim).
    rim_voxels : int
        Partial-volume rim around veins and CSF left out of the thalamus measure, voxels.
    vein_chi_threshold_ppm : float
        Paramagnetic threshold of the vein detection, ppm above local tissue.
    thickness_method : {"laplace", "distance"}
        Cortical thickness estimator.
    syn_resolution_mm : float or None
        Grid of the template SyN stage, mm; None (default) picks it from the T1w's voxel size
        (:func:`qsmiron.anatomy.segment.syn_grid_mm`).
    """

    csf_reference: str = "atrium"
    csf_radius_mm: float = 4.0
    vein_margin_mm: float = 0.0
    rim_voxels: int = 1
    vein_chi_threshold_ppm: float = 0.15
    thickness_method: str = "laplace"
    syn_resolution_mm: float | None = None


@dataclass
class AnatomyResult:
    """What :func:`run_anatomy` produced.

    Attributes
    ----------
    measures : dict
        One subject's record: susceptibilities (ppb), volumes (mL), thickness (mm), lesion
        burden, vein fraction, CSF reference size and position; NaN where not measurable.
    flags : list of str
        QC flags.
    qsm_labels : (X, Y, Z) int16
        Label map on the QSM grid (aseg numbering; thalamus as measured, CSF reference
        9001/9002, thalamus voxels left out as vein or CSF partial-volume rim 9003).
    t1_labels : (X, Y, Z) int16 or None
        Label map on the T1w grid.
    thalamus : ThalamusRoi
        Thalamus ROI on the QSM grid.
    csf_ref : (X, Y, Z) bool
        CSF reference on the QSM grid.
    veins : (X, Y, Z) bool
        Vein mask on the QSM grid.
    lesions : Image or None
        T2 lesion mask on the FLAIR grid (or the grid it was given on).
    lesion_table : pandas.DataFrame or None
        One row per lesion (:func:`qsmiron.anatomy.lesions.lesion_table`: volume, centre in
        scanner mm, location).
    enhancing : Image or None
        Enhancing foci on the T1w grid.
    segmentation : T1Segmentation or None
        The built-in T1w segmentation.
    transforms : dict
        Name -> ANTs transform file (``template_to_t1w`` affine and warp, ``t1w_to_qsm``,
        ``flair_to_t1w``, ``gd_to_t1w``).
    sources : dict
        Where each ROI and measure came from (``builtin``, ``freesurfer``, ``user:<file>``).
    seconds : dict
        Stage times.
    info : dict
        Parameters and diagnostics for the provenance sidecar.
    """

    measures: dict[str, Any]
    flags: list[str]
    qsm_labels: np.ndarray
    t1_labels: np.ndarray | None
    thalamus: ThalamusRoi
    csf_ref: np.ndarray
    veins: np.ndarray
    lesions: Image | None = None
    lesion_table: pd.DataFrame | None = None
    enhancing: Image | None = None
    segmentation: T1Segmentation | None = None
    transforms: dict[str, Path] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# helpers


def _check_image(img: Image, name: str) -> None:
    if img.data.ndim != 3:
        raise InputError(f"the {name} must be a 3-D image, found shape {img.data.shape}",
                         img.path)
    if not np.all(np.isfinite(img.data)):
        raise InputError(f"the {name} holds NaN or infinite voxels", img.path)


def _same_grid(a: Image, b: Image) -> bool:
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-3)


#: Overshoot beyond [0, 1] of a probability mask resampled with a spline or sinc kernel.
_MASK_OVERSHOOT = 0.05


def _mask_fraction(user: Image, name: str, hint: str = "") -> np.ndarray:
    """A user's mask as a 0-1 fraction: a binary or probability mask, or one nonzero value.

    Values within [0, 1] are read as they are (binary or partial-volume; the few percent of
    overshoot that a spline or sinc resampling leaves are clipped); a mask with a single
    nonzero value (0/255 from an image editor, a label written alone) is that value's voxels;
    anything else is a label map or an intensity image given in the wrong place (the whole
    nonzero volume would silently become the ROI), an error naming the file.
    """
    data = np.asarray(user.data)
    lo, hi = float(data.min()), float(data.max())
    if lo >= -_MASK_OVERSHOOT and hi <= 1.0 + _MASK_OVERSHOOT:
        return np.clip(data, 0.0, 1.0).astype(np.float32, copy=False)
    values = np.unique(data)
    nonzero = values[values != 0]
    if lo >= 0.0 and nonzero.size == 1:
        return (data != 0).astype(np.float32)
    shown = ", ".join(f"{v:g}" for v in nonzero[:6]) + (", ..." if nonzero.size > 6 else "")
    raise InputError(
        f"the {name} is not a mask: it holds {nonzero.size} different nonzero values "
        f"({shown}; range {lo:g} to {hi:g}). Give a binary (0/1) or probability (0-1) mask; "
        "from a label map, write out the one label you mean (e.g. label 99, lesions, of "
        f"SAMSEG's seg.mgz){hint}",
        user.path,
    )


def _user_mask_on(grid: Image, user: Image, name: str, labels: bool = False,
                  allow_empty: bool = False, hint: str = "") -> np.ndarray:
    """A user's mask (or label map) on ``grid``, through world coordinates if needed.

    A mask (``labels=False``) is read by :func:`_mask_fraction` and set where its fraction
    on ``grid`` is at least one half. An empty result is an error naming the file, except a
    file with no voxel set at all where ``allow_empty`` (a rater's "none": no lesion, no
    vein); a mask that is set in its file but misses ``grid`` is always an error.
    """
    _check_image(user, name)
    data = user.data if labels else _mask_fraction(user, name, hint)
    if allow_empty and not np.any(data):
        return np.zeros(grid.shape, bool)
    if _same_grid(grid, user):
        out = data
    else:
        out = reg.resample(data, user.affine, grid.shape, grid.affine, [],
                           interpolation="genericLabel" if labels else "linear")
    if not labels:
        out = out >= 0.5
    if not np.any(out):
        raise InputError(f"the {name} is empty on the target grid (no voxel set, or it does "
                         "not overlap the image it belongs to)", user.path)
    return np.rint(out).astype(np.int32) if labels else np.asarray(out, bool)


#: Thalamus labels of a user's thalamus label map (FreeSurfer aseg numbering).
_THALAMUS_LABELS = (10, 49)
#: Smallest Dice between a user's thalamus mask and the segmentation's thalamus that passes
#: without a flag: a rater's thalamus and an automatic one agree at 0.8-0.9 (FreeSurfer, FSL
#: FIRST and manual tracings); below one half the mask is misplaced, of another structure or
#: of another subject, or the segmentation failed, and either way someone should look.
THALAMUS_MASK_MIN_DICE = 0.5


def _user_thalamus(grid: Image, user: Image) -> tuple[np.ndarray, np.ndarray, bool]:
    """A user's thalamus on ``grid``: left, right, and whether the user gave the sides.

    A label map holding the aseg thalamus labels (10 left, 49 right; any other label, as in
    a whole aseg, is ignored) gives both sides; a mask (binary, probability or one nonzero
    value) gives the thalamus without sides (all in ``left``); a label map without 10 or 49
    is an error naming the file.
    """
    _check_image(user, "thalamus mask")
    data = np.asarray(user.data)
    if np.isin(data, _THALAMUS_LABELS).any() and data.max() > 1.0 + _MASK_OVERSHOOT:
        sides = np.where(np.isin(data, _THALAMUS_LABELS), data, 0).astype(np.float32)
        lab = _user_mask_on(grid, Image(sides, user.affine, user.path), "thalamus mask",
                            labels=True)
        return lab == 10, lab == 49, True
    whole = _user_mask_on(grid, user, "thalamus mask",
                          hint=", or a label map with the thalamus labels 10 (left) and 49 "
                               "(right)")
    return whole, np.zeros(grid.shape, bool), False


def _thalamus_mask_check(left: np.ndarray, right: np.ndarray, lateralised: bool,
                         q_labels: np.ndarray, voxel_size: np.ndarray,
                         flags: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A user's thalamus against the segmentation's (labels 10/49 on the same grid).

    Flags ``thalamus_mask_disagrees_with_segmentation`` (Dice below
    :data:`THALAMUS_MASK_MIN_DICE`) and ``thalamus_mask_sides_swapped`` (the user's left lies
    more on the segmentation's right thalamus than on its left, and vice versa). A mask
    without sides is split by the segmentation: each voxel goes to the nearer of its two
    thalami. Returns the (possibly split) sides and what was found, for the provenance.
    """
    seg_l, seg_r = q_labels == 10, q_labels == 49
    if not (seg_l.any() and seg_r.any()):
        return left, right, {}
    user = left | right
    dice = 2.0 * np.count_nonzero(user & (seg_l | seg_r)) / (
        np.count_nonzero(user) + np.count_nonzero(seg_l | seg_r))
    found: dict[str, Any] = {"dice_vs_segmentation": round(float(dice), 4)}
    if dice < THALAMUS_MASK_MIN_DICE:
        flags.append("thalamus_mask_disagrees_with_segmentation")
    if lateralised:
        same = np.count_nonzero(left & seg_l) + np.count_nonzero(right & seg_r)
        swapped = np.count_nonzero(left & seg_r) + np.count_nonzero(right & seg_l)
        if swapped > same:
            flags.append("thalamus_mask_sides_swapped")
    else:
        d_l = depth_mm(~seg_l, voxel_size)
        d_r = depth_mm(~seg_r, voxel_size)
        left, right = user & (d_l <= d_r), user & (d_l > d_r)
        found["sides"] = "split by the segmentation's thalami"
    return left, right, found


def ventricle_contrast(image: np.ndarray, labels: np.ndarray) -> float | None:
    """Contrast of an image between white matter and the lateral ventricles, -1 to +1.

    ``2 P(WM > m) - 1`` with ``m`` the ventricles' median (ties count half): +1 when the
    white matter is brighter than the typical ventricular voxel (T1w, FLAIR), -1 when darker
    (T2w), near 0 when the labels do not lie on the anatomy they name. The
    ventricles' median, not each of their voxels, is compared: choroid plexus, partial CSF
    suppression and periventricular lesions make a quarter of an MS patient's ventricle
    label bright on FLAIR (a voxel-pair statistic gives 0.69-0.79 there).

    Parameters
    ----------
    image : (X, Y, Z) array
        An image resampled onto the grid of ``labels``.
    labels : (X, Y, Z) int array
        FreeSurfer aseg numbering (white matter 2/41, lateral ventricles 4/43).

    Returns
    -------
    float or None
        None when fewer than :data:`MIN_CONTRAST_VOXELS` voxels of either remain after
        a one-voxel erosion (slit ventricles on a coarse grid).
    """
    vent = ndi.binary_erosion(np.isin(labels, (4, 43)))
    wm = ndi.binary_erosion(np.isin(labels, (2, 41)))
    if min(int(vent.sum()), int(wm.sum())) < MIN_CONTRAST_VOXELS:
        return None
    img = np.asarray(image)
    m = np.median(img[vent])
    w = img[wm]
    return float(2.0 * (np.mean(w > m) + 0.5 * np.mean(w == m)) - 1.0)


def _registered_contrast(image: Image, tx: reg.LinearTransform,
                         labels: Image | None) -> float | None:
    """:func:`ventricle_contrast` of ``image`` brought onto the T1w labels' grid by ``tx``
    (which maps ``image`` onto the T1w)."""
    if labels is None:
        return None

    def onto(a: np.ndarray) -> np.ndarray:
        return reg.resample(a, image.affine, labels.shape, labels.affine, [tx.path])

    # judged within the image's field of view (a 2-D FLAIR need not cover the whole brain)
    inside = onto(np.ones(image.shape, np.float32)) > 0.99
    return ventricle_contrast(onto(image.data), np.where(inside, labels.data, 0))


def _brain_overlap_check(tx: reg.LinearTransform, what: str, moving: Image,
                         flags: list[str], code: str, contrast: float | None = None) -> None:
    """Refuse a registration that did not bring one head onto the other; flag large motion.

    ``contrast`` is :func:`ventricle_contrast` of the FLAIR or post-contrast T1w on the T1w's
    labels after the registration (None: not checked).
    """
    if tx.coverage is not None and tx.coverage < MIN_RIGID_COVERAGE:
        raise InputError(
            f"{what}: after rigid registration only {100 * tx.coverage:.0f}% of the brain "
            f"lies inside the other image's brain or head (expected > "
            f"{100 * MIN_RIGID_COVERAGE:.0f}% for images of one session); the image is of "
            "another subject or its header orientation is wrong (check with fsleyes or "
            "mrview)", moving.path)
    if contrast is not None:
        log.info("%s: white matter vs lateral ventricles, contrast %+.2f", what, contrast)
        if abs(contrast) < MIN_VENTRICLE_CONTRAST:
            raise InputError(
                f"{what}: after rigid registration the T1w's lateral ventricles and white "
                f"matter do not differ in the other image (contrast {contrast:+.2f}; expected "
                f"beyond +/-{MIN_VENTRICLE_CONTRAST:.1f} on aligned images of one session): "
                "its header orientation is wrong (flipped or swapped axes) or it is of another "
                "subject (check with fsleyes or mrview)", moving.path)
    if tx.rotation_deg > MAX_ROTATION_DEG or tx.translation_mm > MAX_TRANSLATION_MM:
        flags.append(f"{code}_large_motion")
        log.warning("%s: head moved %.0f deg / %.0f mm between the scans", what,
                    tx.rotation_deg, tx.translation_mm)


#: Veins are searched within this distance of the thalami, mm: the internal cerebral veins,
#: basal veins of Rosenthal and thalamostriate veins lie on or beside them, and the vein
#: filter's largest scale and local background need a few mm more.
VEIN_SEARCH_MM = 15.0


def _veins_near(chi: np.ndarray, magnitude: np.ndarray, mask: np.ndarray, vs: np.ndarray,
                near: np.ndarray, threshold_ppm: float) -> np.ndarray:
    """Veins within :data:`VEIN_SEARCH_MM` of ``near`` (the whole brain if it is empty)."""
    if not near.any():
        return vein_mask(chi, magnitude, mask, vs, threshold_ppm)
    box = _checks.bounding_box(near, np.ceil(VEIN_SEARCH_MM / vs).astype(int))
    out = np.zeros(chi.shape, bool)
    if mask[box].any():
        out[box] = vein_mask(chi[box], magnitude[box], mask[box], vs, threshold_ppm)
    return out


def _world_to_voxel(points_mm: np.ndarray, img: Image, path: Path | None) -> np.ndarray:
    """Scanner (RAS) mm -> nearest voxel indices of ``img``; every point must fall inside."""
    pts = np.asarray(points_mm, float).reshape(-1, 3)
    vox = np.rint((pts - img.affine[:3, 3]) @ np.linalg.inv(img.affine[:3, :3]).T).astype(int)
    outside = np.any((vox < 0) | (vox >= np.array(img.shape)), axis=1)
    if outside.any():
        first = pts[np.argmax(outside)].round(1).tolist()
        raise InputError(f"{int(outside.sum())} lesion seed(s) lie outside the FLAIR, the first "
                         f"at {first} mm (scanner RAS coordinates expected)", path)
    return vox


def _mean(values: np.ndarray, roi: np.ndarray) -> float:
    return float(values[roi].mean()) if roi.any() else np.nan


# --------------------------------------------------------------------------------------------
# the stage


#: Data dictionary of the per-lesion table (``sub-X_space-FLAIR_lesions.tsv``).
LESION_TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "lesion": {"Description": "lesion number: 26-connected components of the lesion mask, "
                              "in scipy.ndimage.label order"},
    "voxels": {"Description": "voxels of the lesion"},
    "volume_ml": {"Description": "volume of the lesion's voxels", "Units": "mL"},
    "centre_x": {"Description": "centre of the lesion, scanner RAS x (increasing towards "
                                "the patient's right)", "Units": "mm"},
    "centre_y": {"Description": "centre of the lesion, scanner RAS y (increasing "
                                "anteriorly)", "Units": "mm"},
    "centre_z": {"Description": "centre of the lesion, scanner RAS z (increasing "
                                "superiorly)", "Units": "mm"},
    "location": {"Description": "first that applies (MAGNIMS 2016 definitions, 2 mm contact "
                                "tolerance); n/a without anatomical labels",
                 "Levels": {"infratentorial": "half or more in brainstem or cerebellum",
                            "periventricular": "touching a lateral ventricle",
                            "juxtacortical": "touching the cortex (cortical or "
                                             "juxtacortical)",
                            "deep_grey_matter": "half or more in thalamus or basal ganglia",
                            "white_matter": "elsewhere in the white matter",
                            "n/a": "no anatomical labels"}},
}

#: Lesion locations counted in the measures (``lesion_count_<location>``): the three of the
#: MAGNIMS / McDonald 2017 criteria of dissemination in space (the cord is not imaged).
LOCATION_COUNTS = ("periventricular", "juxtacortical", "infratentorial")


def _lesion_table(lesions: Image, inp: AnatomyInputs, seg: T1Segmentation | None,
                  tx_fl: str | None,
                  on_grid: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """The per-lesion table on the lesions' grid, with locations where the anatomy is known.

    Lesion-blind labels: the propagated atlas of the built-in segmentation (with its CSF
    posterior, which widens the ventricles), or a FreeSurfer / SynthSeg aseg; moved onto the
    lesions' grid (the FLAIR: through the FLAIR-to-T1w registration), unless ``on_grid``
    gives them there already (atlas labels, CSF posterior), as the lesion rule had them.
    """
    if on_grid is not None:
        return lesion_table(lesions.data.astype(bool), lesions.voxel_size, lesions.affine,
                            labels=on_grid[0], csf_prior=on_grid[1])
    labels = csf = None
    src_affine = None
    if seg is not None and seg.atlas_labels is not None:
        labels, csf, src_affine = seg.atlas_labels, seg.probs["csf"], seg.affine
    elif inp.freesurfer is not None:
        labels, src_affine = inp.freesurfer.labels, inp.freesurfer.affine
    if labels is not None and src_affine is not None:
        on_flair = inp.flair is not None and lesions.shape == inp.flair.shape and \
            np.allclose(lesions.affine, inp.flair.affine, atol=1e-3)
        if on_flair and tx_fl is None:
            labels = csf = None  # the FLAIR was never registered to the T1w
        else:
            xfm = [tx_fl] if on_flair else []
            inv = [True] if on_flair else None
            labels = reg.resample(np.asarray(labels, np.float32), src_affine, lesions.shape,
                                  lesions.affine, xfm, interpolation="genericLabel",
                                  invert=inv)
            if csf is not None:
                csf = reg.resample(csf, src_affine, lesions.shape, lesions.affine, xfm,
                                   invert=inv)
    return lesion_table(lesions.data.astype(bool), lesions.voxel_size, lesions.affine,
                        labels=labels, csf_prior=csf)


def run_anatomy(
    inputs: AnatomyInputs,
    workdir: str | Path,
    params: AnatomyParams | None = None,
    progress: Callable[[str], None] | None = None,
) -> AnatomyResult:
    """Run the anatomy stage for one subject.

    Parameters
    ----------
    inputs : AnatomyInputs
        Images of the subject.
    workdir : str or Path
        Folder for the registration transforms.
    params : AnatomyParams, optional
        Choices; the reference study's by default.
    progress : callable, optional
        Called with the name of each stage as it starts.

    Returns
    -------
    AnatomyResult

    Raises
    ------
    InputError
        Missing or unusable inputs (a clear message naming the file).
    """
    p = params or AnatomyParams()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    flags: list[str] = []
    sources: dict[str, str] = {}
    transforms: dict[str, Path] = {}
    info: dict[str, Any] = {"params": asdict(p)}
    inp = inputs

    def stage(name: str) -> float:
        if progress is not None:
            progress(name)
        log.info("anatomy stage: %s", name)
        return time.perf_counter()

    qsm = inp.chi
    for img, name in ((inp.chi, "QSM"), (inp.magnitude, "GRE magnitude"), (inp.r2star, "R2*"),
                      (inp.qsm_mask, "QSM mask")):
        _check_image(img, name)
        if img is not qsm and not _same_grid(qsm, img):
            raise InputError(f"the {name} is not on the QSM's grid", img.path)
    qmask = inp.qsm_mask.data > 0
    if not qmask.any():
        raise InputError("the QSM mask is empty", inp.qsm_mask.path)
    vs_q = qsm.voxel_size
    chi = qsm.data.astype(np.float32)
    r2s = inp.r2star.data.astype(np.float32)
    need_t1 = inp.thalamus_mask is None or inp.csf_ref_mask is None or inp.freesurfer is None
    if inp.t1w is None and need_t1:
        where = "" if inp.anat_dir is None else f" in {inp.anat_dir}"
        raise InputError(
            f"no T1w image{where}: the built-in segmentation needs one (or give a FreeSurfer "
            "subject with --freesurfer and both --thalamus-mask and --csf-ref-mask)",
            inp.anat_dir)
    if inp.t1w is not None:
        _check_image(inp.t1w, "T1w")
    # the user's ROIs and lesion inputs first: a bad one fails before minutes of
    # segmentation
    user_thalamus = None if inp.thalamus_mask is None else _user_thalamus(qsm, inp.thalamus_mask)
    user_csf = (None if inp.csf_ref_mask is None
                else _user_mask_on(qsm, inp.csf_ref_mask, "CSF reference mask"))
    user_veins = (None if inp.vein_mask is None
                  else _user_mask_on(qsm, inp.vein_mask, "vein mask", allow_empty=True))
    lesions_img: Image | None = None
    if inp.flair is not None:
        _check_image(inp.flair, "FLAIR")
    if inp.lesion_seeds is not None and inp.flair is None:
        raise InputError("lesion seeds are grown on the FLAIR, and this subject has none",
                         inp.lesion_seeds_path)
    if inp.lesion_seeds is not None and inp.lesion_mask is not None:
        raise InputError("give lesion seeds or a lesion mask, not both", inp.lesion_seeds_path)
    if inp.lesion_mask is not None:
        grid = inp.flair if inp.flair is not None else inp.t1w
        if grid is None:
            raise InputError("a lesion mask needs the FLAIR or T1w it was drawn on",
                             inp.lesion_mask.path)
        les = _user_mask_on(grid, inp.lesion_mask, "lesion mask", allow_empty=True)
        lesions_img = Image(les, grid.affine, inp.lesion_mask.path)
        sources["lesions"] = f"user:{inp.lesion_mask.path}"
        if not les.any():
            flags.append("lesion_mask_empty")  # the rater's "no lesion": counted as zero

    # 1. T1w segmentation -------------------------------------------------------------------
    seg: T1Segmentation | None = None
    fs = inp.freesurfer
    t1 = inp.t1w
    t1_labels: np.ndarray | None = None
    t1_label_grid: Image | None = None
    posterior = np.array([0.0, -1.0, 0.0])
    if fs is not None:
        t1_labels = fs.labels.astype(np.int16)
        t1_label_grid = Image(t1_labels, fs.affine, fs.label_path)
        sources["segmentation"] = f"{fs.source}:{fs.label_path}"
    elif t1 is not None:
        t = stage("T1w segmentation")
        seg = segment_t1w(t1.data, t1.affine, work / "template", path=t1.path,
                          syn_resolution_mm=p.syn_resolution_mm)
        seconds["segmentation"] = time.perf_counter() - t
        t1_labels = seg.labels
        t1_label_grid = Image(seg.labels, seg.affine, t1.path)
        assert seg.registration is not None
        posterior = seg.registration.posterior_dir
        transforms["template_to_t1w_affine"] = seg.registration.transforms[1]
        transforms["template_to_t1w_warp"] = seg.registration.transforms[0]
        info["segmentation"] = seg.info
        sources["segmentation"] = "builtin"
    t1_ref = seg.t1w if seg is not None else (t1.data if t1 is not None else None)
    brain_t1 = (seg.brain_mask if seg is not None
                else (np.isin(t1_labels, [0, 24], invert=True) if t1_labels is not None
                      and t1 is not None and _same_grid(t1, t1_label_grid) else None))

    # 2. FLAIR and lesions -------------------------------------------------------------------
    lesion_pv_ml: float | None = None
    lesions_t1: np.ndarray | None = None
    les_table: pd.DataFrame | None = None
    tx_fl_path: str | None = None
    lesion_grid_anatomy: tuple[np.ndarray, np.ndarray] | None = None  # labels, CSF on FLAIR
    measures: dict[str, Any] = {}
    if inp.flair is not None and t1 is not None and t1_ref is not None:
        t = stage("FLAIR registration")
        fl = inp.flair
        tx_fl = reg.register_rigid(t1_ref, t1.affine, fl.data, fl.affine, work, "flair_to_t1w",
                                   fixed_mask=brain_t1,
                                   moving_mask=head_mask(fl.data, fl.voxel_size))
        transforms["flair_to_t1w"] = tx_fl.path
        tx_fl_path = tx_fl.path
        _brain_overlap_check(tx_fl, "FLAIR vs T1w", fl, flags, "flair_t1w",
                             _registered_contrast(fl, tx_fl, t1_label_grid))
        seconds["flair_registration"] = time.perf_counter() - t
        if lesions_img is None:
            t = stage("lesions")
            if float(np.max(fl.voxel_size)) > MAX_FLAIR_SLICE_MM:
                # MAGNIMS-CMSC-NAIMS 2021: 2D FLAIR slices of at most 3 mm; thicker, the
                # automatic rule loses lesions thinner than three slices (real patients on
                # 4-5 mm slices: -7 to -65% of the lesion volume)
                flags.append("flair_thick_slices")

            def to_flair(a: np.ndarray, interp: str = "linear") -> np.ndarray:
                return reg.resample(a, t1.affine, fl.shape, fl.affine, [tx_fl.path],
                                    interpolation=interp, invert=[True])

            brain_f = to_flair(brain_t1.astype(np.float32)) >= 0.5 if brain_t1 is not None \
                else fl.data > 0
            kw: dict[str, Any] = {}
            if seg is not None:
                kw = {"wm_prior": to_flair(seg.probs["wm"]),
                      "gm_prior": to_flair(seg.probs["gm"]),
                      "csf_prior": to_flair(seg.probs["csf"]),
                      "labels": to_flair(seg.atlas_labels.astype(np.float32),
                                         "genericLabel").astype(np.int16)}
                lesion_grid_anatomy = (kw["labels"], kw["csf_prior"])
            if inp.lesion_seeds is not None:
                seeds = _world_to_voxel(inp.lesion_seeds, fl, inp.lesion_seeds_path)
                try:
                    grown = grow_lesions(fl.data, seeds, brain_f, fl.voxel_size)
                except InputError as e:  # name the seeds file (the FLAIR's voxels in e)
                    raise InputError(e.message, inp.lesion_seeds_path) from e
                lesions_img = Image(grown.mask, fl.affine, fl.path)
                sources["lesions"] = f"seeded:{inp.lesion_seeds_path}"
                info["lesions"] = {"seeds": int(len(seeds)), "seeds_grown": grown.grown,
                                   "seeds_too_faint": grown.faint}
                if grown.faint:
                    flags.append("lesion_seeds_too_faint")
            else:
                res = segment_lesions(fl.data, brain_f, fl.voxel_size, t1w=to_flair(t1_ref),
                                      **kw)
                lesions_img = Image(res.mask, fl.affine, fl.path)
                sources["lesions"] = "builtin"
                lesion_pv_ml = float(res.diagnostics.get("partial_volume_ml", res.volume_ml))
                info["lesions"] = {k: v for k, v in res.diagnostics.items()
                                   if isinstance(v, int | float | str)}
            seconds["lesions"] = time.perf_counter() - t
        if lesions_img is not None:
            if _same_grid(lesions_img, t1):
                lesions_t1 = lesions_img.data.astype(bool)
            else:
                lesions_t1 = reg.resample(lesions_img.data.astype(np.float32),
                                          lesions_img.affine, t1.shape, t1.affine,
                                          [tx_fl.path]) >= 0.5
    elif lesions_img is not None and t1 is not None:
        lesions_t1 = _user_mask_on(t1, Image(lesions_img.data.astype(np.float32),
                                             lesions_img.affine, lesions_img.path),
                                   "lesion mask", allow_empty=True)
    if inp.flair is None and inp.lesion_mask is None:
        flags.append("no_flair")
    if lesions_img is not None:
        _, n = label_lesions(lesions_img.data.astype(bool))
        mask_ml = lesion_volume_ml(lesions_img.data.astype(bool), lesions_img.voxel_size)
        # the automatic segmentation's volume is its partial-volume estimate; a user's or a
        # seeded mask is measured as drawn
        measures["t2_lesion_volume_ml"] = mask_ml if lesion_pv_ml is None else lesion_pv_ml
        measures["t2_lesion_mask_volume_ml"] = mask_ml
        measures["lesion_count"] = int(n)
        les_table = _lesion_table(lesions_img, inp, seg, tx_fl_path, lesion_grid_anatomy)
        known = bool((les_table["location"] != "n/a").all())
        for where in LOCATION_COUNTS:
            measures[f"lesion_count_{where}"] = (
                int((les_table["location"] == where).sum()) if known else np.nan)
    else:
        measures["t2_lesion_volume_ml"] = np.nan
        measures["t2_lesion_mask_volume_ml"] = np.nan
        measures["lesion_count"] = np.nan
        for where in LOCATION_COUNTS:
            measures[f"lesion_count_{where}"] = np.nan
    if seg is not None and lesions_t1 is not None:
        add_lesions(seg, lesions_t1)
        t1_labels = seg.labels

    # 3. enhancing lesions -------------------------------------------------------------------
    enhancing_img: Image | None = None
    measures["enhancing_lesion_count"] = np.nan
    if inp.t1w_gd is not None and t1 is not None and t1_ref is not None:
        _check_image(inp.t1w_gd, "post-gadolinium T1w")
        t = stage("enhancing lesions")
        gd = inp.t1w_gd
        tx_gd = reg.register_rigid(t1_ref, t1.affine, gd.data, gd.affine, work, "gd_to_t1w",
                                   fixed_mask=brain_t1,
                                   moving_mask=head_mask(gd.data, gd.voxel_size))
        _brain_overlap_check(tx_gd, "post-gadolinium T1w vs T1w", gd, flags, "gd_t1w",
                             _registered_contrast(gd, tx_gd, t1_label_grid))
        transforms["gd_to_t1w"] = tx_gd.path
        gd_on_t1 = reg.resample(gd.data, gd.affine, t1.shape, t1.affine, [tx_gd.path])
        les_t1 = lesions_t1 if lesions_t1 is not None else np.zeros(t1.shape, bool)
        brain = brain_t1 if brain_t1 is not None else t1.data > 0
        enh = enhancing_lesions(t1.data, gd_on_t1, les_t1, brain, t1.voxel_size)
        enhancing_img = Image(enh.mask, t1.affine, gd.path)
        # counted per T2 lesion: without a T2 lesion mask (no FLAIR) the count would read 0,
        # "no enhancing lesion", whatever the post-contrast image shows
        measures["enhancing_lesion_count"] = int(enh.count) if lesions_t1 is not None else np.nan
        info["enhancing"] = {k: v for k, v in enh.diagnostics.items()
                             if isinstance(v, int | float | str)}
        sources["enhancing"] = "builtin"
        if lesions_t1 is None:
            flags.append("enhancing_without_t2_lesions")
        seconds["enhancing"] = time.perf_counter() - t
    elif inp.t1w_gd is None:
        flags.append("no_gadolinium_t1w")

    # 4. volumes and thickness ---------------------------------------------------------------
    t = stage("volumes")
    if fs is not None:
        measures.update({
            "thalamus_left_volume_ml": fs.thalamus_left_ml,
            "thalamus_right_volume_ml": fs.thalamus_right_ml,
            "thalamus_volume_ml": fs.thalamus_left_ml + fs.thalamus_right_ml,
            "total_gm_volume_ml": fs.total_gray_ml if fs.total_gray_ml is not None else np.nan,
            "cortical_thickness_mm": (fs.mean_thickness_mm if fs.mean_thickness_mm is not None
                                      else np.nan),
        })
        sources["volumes"] = sources["thickness"] = fs.source
    elif seg is not None:
        pv = partial_volumes(seg)
        vols = structure_volumes(seg, pv)
        measures.update({k: vols[k] for k in (
            "thalamus_left_volume_ml", "thalamus_right_volume_ml", "thalamus_volume_ml",
            "total_gm_volume_ml", "brain_volume_ml")})
        ctx, inner = cortical_ribbon(seg, pv)
        th = cortical_thickness(ctx, inner, seg.voxel_size, p.thickness_method)
        measures["cortical_thickness_mm"] = th.surface_mean_mm
        sources["volumes"] = sources["thickness"] = "builtin"
    seconds["volumes"] = time.perf_counter() - t

    # 5. into QSM space ----------------------------------------------------------------------
    t = stage("QSM-space ROIs")
    mag = inp.magnitude
    tx_q: reg.LinearTransform | None = None
    if t1 is not None and t1_ref is not None:
        tx_q = reg.register_rigid(mag.data, mag.affine, t1_ref, t1.affine, work, "t1w_to_qsm",
                                  fixed_mask=qmask, moving_mask=brain_t1)
        transforms["t1w_to_qsm"] = tx_q.path
        # no contrast test here: the GRE magnitude's CSF-to-white-matter contrast depends on
        # TR, flip angle and echo times and can vanish (0.80-1.00 on the simulated protocol)
        _brain_overlap_check(tx_q, "T1w vs GRE", t1, flags, "t1w_gre")
        info["t1w_to_qsm"] = {"rotation_deg": tx_q.rotation_deg,
                              "translation_mm": tx_q.translation_mm,
                              "coverage": tx_q.coverage}
    q_labels = np.zeros(qsm.shape, np.int16)
    q_fracs: dict[int, np.ndarray] = {}
    if t1_labels is not None and t1_label_grid is not None and tx_q is not None:
        # every label by majority (ANTs genericLabel: per-label linear interpolation, the
        # largest wins); fractions of the ROIs' own labels for partial-volume rules
        q_labels = reg.resample(t1_labels.astype(np.float32), t1_label_grid.affine,
                                qsm.shape, qsm.affine, [tx_q.path],
                                interpolation="genericLabel").astype(np.int16)
        _, q_fracs = reg.resample_labels(t1_labels, t1_label_grid.affine, qsm.shape,
                                         qsm.affine, [tx_q.path], keep=(4, 43))
        search_l, search_r = atrium_search_regions(t1_labels, t1_label_grid.affine, posterior)
        s_l = reg.resample(search_l.astype(np.float32), t1_label_grid.affine, qsm.shape,
                           qsm.affine, [tx_q.path]) >= 0.5
        s_r = reg.resample(search_r.astype(np.float32), t1_label_grid.affine, qsm.shape,
                           qsm.affine, [tx_q.path]) >= 0.5
    else:
        s_l = s_r = np.zeros(qsm.shape, bool)

    # thalamus
    if user_thalamus is not None and inp.thalamus_mask is not None:
        th_l, th_r, lateralised = user_thalamus
        if not lateralised:
            flags.append("thalamus_mask_not_lateralised")
        # never a silent wrong ROI: the user's thalamus against the segmentation's
        th_l, th_r, info["thalamus_mask"] = _thalamus_mask_check(
            th_l, th_r, lateralised, q_labels, vs_q, flags)
        sources["thalamus"] = f"user:{inp.thalamus_mask.path}"
    else:
        th_l, th_r = q_labels == 10, q_labels == 49
        sources["thalamus"] = sources.get("segmentation", "none")
    if user_veins is not None and inp.vein_mask is not None:
        veins = user_veins
        if not veins.any():
            flags.append("vein_mask_empty")
        sources["veins"] = f"user:{inp.vein_mask.path}"
    else:
        veins = _veins_near(chi, mag.data, qmask, vs_q, th_l | th_r,
                            p.vein_chi_threshold_ppm)
        sources["veins"] = "builtin"
    csf_q = np.isin(q_labels, (4, 5, 14, 15, 24, 43, 44))
    thal = thalamus_roi(th_l, th_r, veins, qmask, vs_q, p.vein_margin_mm, csf=csf_q,
                        rim_voxels=p.rim_voxels)

    # CSF reference
    if user_csf is not None and inp.csf_ref_mask is not None:
        csf = user_csf
        sources["csf_ref"] = f"user:{inp.csf_ref_mask.path}"
        ref = None
    else:
        vl = q_fracs.get(4, np.zeros(qsm.shape, np.float32))
        vr = q_fracs.get(43, np.zeros(qsm.shape, np.float32))
        ref = csf_reference_roi(vl, vr, r2s, qmask, vs_q, qsm.affine, search_left=s_l,
                                search_right=s_r, method=p.csf_reference,
                                radius_mm=p.csf_radius_mm)
        csf = ref.mask
        flags.extend(ref.flags)
        sources["csf_ref"] = f"builtin:{p.csf_reference}"
    flags.extend(roi_qc(thal, csf, r2s, qmask, vs_q))
    seconds["qsm_rois"] = time.perf_counter() - t

    # 6. measures ----------------------------------------------------------------------------
    # outside the valid QSM region chi is not measured (zero): never part of a mean
    # (flagged csf_ref_outside_qsm; a reference entirely outside it gives no number)
    csf_chi = _mean(chi, csf & qmask)
    ppb = 1000.0
    th_all = thal.both
    measures.update({
        "thalamus_chi_ppb": ppb * _mean(chi, th_all),
        "thalamus_left_chi_ppb": ppb * _mean(chi, thal.left),
        "thalamus_right_chi_ppb": ppb * _mean(chi, thal.right),
        "thalamus_with_veins_chi_ppb": ppb * _mean(
            chi, thal.left_before_veins | thal.right_before_veins),
        "csf_ref_chi_ppb": ppb * csf_chi,
    })
    measures["rel_chi_ppb"] = measures["thalamus_chi_ppb"] - measures["csf_ref_chi_ppb"]
    measures["rel_chi_left_ppb"] = measures["thalamus_left_chi_ppb"] - measures["csf_ref_chi_ppb"]
    measures["rel_chi_right_ppb"] = (measures["thalamus_right_chi_ppb"]
                                     - measures["csf_ref_chi_ppb"])
    for name, (lab_l, lab_r) in NUCLEI.items():
        roi = np.isin(q_labels, (lab_l, lab_r)) & qmask
        measures[f"{name}_rel_chi_ppb"] = ppb * (_mean(chi, roi) - csf_chi)
    measures["vein_fraction_excluded"] = thal.vein_fraction_excluded
    measures["csf_rim_fraction_excluded"] = thal.csf_rim_fraction
    measures["thalamus_outside_qsm_fraction"] = thal.outside_qsm_fraction
    measures["csf_ref_volume_mm3"] = float(csf.sum() * np.prod(vs_q))
    if ref is not None:
        for side, d in ref.sides.items():
            measures[f"csf_ref_{side}_centre_mm"] = d["centre_world_mm"]
    measures["sign_convention"] = SIGN_CONVENTION

    # label map on the QSM grid, as measured
    out = q_labels.copy()
    out[np.isin(out, (10, 49)) & ~(th_l | th_r)] = 0
    out[th_l] = 10
    out[th_r] = 49
    out[(thal.left_before_veins & ~thal.left) | (thal.right_before_veins & ~thal.right)] = \
        VEIN_EXCLUDED
    left_side = q_fracs[4] >= q_fracs[43] if 4 in q_fracs and 43 in q_fracs else s_l
    out[csf & left_side] = CSF_REF_LEFT
    out[csf & ~left_side] = CSF_REF_RIGHT
    flags = list(dict.fromkeys(flags))
    measures["qc_flags"] = ";".join(flags)
    return AnatomyResult(
        measures=measures, flags=flags, qsm_labels=out, t1_labels=t1_labels, thalamus=thal,
        csf_ref=csf, veins=veins, lesions=lesions_img, lesion_table=les_table,
        enhancing=enhancing_img,
        segmentation=seg, transforms=transforms, sources=sources, seconds=seconds, info=info,
    )



# --------------------------------------------------------------------------------------------
# files in and out


def _load(path: Path) -> Image:
    data, affine, _ = load_nifti(path, ndim=(3,))
    return Image(data, affine, path)


def _optional_anat(bids_dir: Path, sub: str, suffix: str, session: str | None,
                   entities: dict[str, str] | None = None) -> Image | None:
    try:
        data, affine, path = read_bids_anat(bids_dir, sub, suffix, session=session,
                                            entities=entities)
    except InputError as exc:
        if "no " in exc.message and "image for" in exc.message:
            return None
        raise
    if data.ndim != 3:
        raise InputError(f"expected a 3-D {suffix} image, found shape {data.shape}", path)
    return Image(data, affine, path)


def load_anatomy_inputs(
    bids_dir: str | Path,
    deriv_dir: str | Path,
    subject: str,
    session: str | None = None,
    *,
    freesurfer: str | Path | None = None,
    synthseg: str | Path | None = None,
    thalamus_mask: str | Path | None = None,
    csf_ref_mask: str | Path | None = None,
    lesion_mask: str | Path | None = None,
    vein_mask: str | Path | None = None,
    lesion_seeds: str | Path | None = None,
    gd_entity: str = "gadolinium",
) -> AnatomyInputs:
    """Read a subject's structural images (BIDS) and QSM (qsmiron recon derivatives).

    Parameters
    ----------
    bids_dir : str or Path
        BIDS dataset with ``anat/`` T1w, FLAIR and ``ce-<gd_entity>`` T1w.
    deriv_dir : str or Path
        Derivatives folder holding ``qsmiron/`` from ``qsmiron recon``.
    subject, session : str
        Subject (and session) label.
    freesurfer : str or Path, optional
        FreeSurfer/FastSurfer subject folder to use instead of the built-in segmentation.
    synthseg : str or Path, optional
        SynthSeg label map (with ``<name>_volumes.csv`` beside it, if present).
    thalamus_mask, csf_ref_mask, lesion_mask, vein_mask : str or Path, optional
        User masks (NIfTI) overriding the built-in ROIs.
    lesion_seeds : str or Path, optional
        TSV or CSV with columns ``x y z`` (scanner RAS mm), one seed per lesion: the study's
        semi-automatic lesion mode instead of the automatic segmentation.
    gd_entity : str
        ``ce-`` label of the post-contrast T1w.

    Returns
    -------
    AnatomyInputs

    Raises
    ------
    InputError
        The QSM derivatives are missing (run ``qsmiron recon`` first), a file is unreadable.
    """
    from qsmiron.anatomy.freesurfer import read_freesurfer_subject, read_synthseg
    from qsmiron.io.bids import bids_name

    bids = Path(bids_dir)
    sub = subject.removeprefix("sub-")
    ses = session.removeprefix("ses-") if session else None
    folder = derivatives_dir(deriv_dir, sub, ses) / "anat"

    def recon_file(suffix: str, desc: str | None = None) -> Image:
        path = folder / bids_name(sub, suffix, session=ses,
                                  entities={"desc": desc} if desc else None)
        if not path.exists():
            raise InputError(
                f"{path.name} not found: the anatomy stage needs the QSM of sub-{sub}; run "
                f"'qsmiron recon {bids} --subject {sub} --out {deriv_dir}' first",
                folder if folder.exists() else Path(deriv_dir))
        return _load(path)

    inp = AnatomyInputs(
        chi=recon_file("Chimap"),
        magnitude=recon_file("magnitude", "echocombined"),
        r2star=recon_file("R2starmap"),
        qsm_mask=recon_file("mask", "qsm"),
        t1w=_optional_anat(bids, sub, "T1w", ses),
        flair=_optional_anat(bids, sub, "FLAIR", ses),
        t1w_gd=_optional_anat(bids, sub, "T1w", ses, {"ce": gd_entity}),
        anat_dir=bids / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat",
    )
    if freesurfer is not None and synthseg is not None:
        raise InputError("give either a FreeSurfer subject or a SynthSeg label map, not both")
    if freesurfer is not None:
        inp.freesurfer = read_freesurfer_subject(freesurfer)
    if synthseg is not None:
        seg_path = Path(synthseg)
        csv = seg_path.with_name(seg_path.name.split(".")[0] + "_volumes.csv")
        inp.freesurfer = read_synthseg(seg_path, csv if csv.exists() else None)
    for name, value in (("thalamus_mask", thalamus_mask), ("csf_ref_mask", csf_ref_mask),
                        ("lesion_mask", lesion_mask), ("vein_mask", vein_mask)):
        if value is not None:  # absolute: the provenance must find it from anywhere
            setattr(inp, name, _load(Path(value).absolute()))
    if lesion_seeds is not None:
        inp.lesion_seeds_path = Path(lesion_seeds).absolute()
        inp.lesion_seeds = _read_seeds(inp.lesion_seeds_path)
    return inp


def _read_seeds(path: Path) -> np.ndarray:
    import pandas as pd

    if not path.is_file():
        raise InputError("lesion seed file not found", path)
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"not a readable TSV/CSV table ({exc})", path) from None
    cols = {c.strip().lower(): c for c in table.columns}
    if not {"x", "y", "z"} <= set(cols):
        raise InputError("the seed table needs columns x, y, z (scanner RAS mm); found "
                         f"{', '.join(map(str, table.columns))}", path)
    pts = table[[cols["x"], cols["y"], cols["z"]]].to_numpy(dtype=float, na_value=np.nan)
    if len(pts) == 0 or not np.all(np.isfinite(pts)):
        raise InputError("the seed table is empty or holds non-numeric coordinates", path)
    return pts


def _dseg_table(labels: np.ndarray) -> str:
    from qsmiron.anatomy.freesurfer import ASEG_LABELS

    rows = ["index\tname\tabbreviation"]
    for k in sorted(int(v) for v in np.unique(labels) if v != 0):
        if k in EXTRA_LABELS:
            rows.append(f"{k}\t{EXTRA_LABELS[k]}\tqsmiron")
        elif k in ASEG_LABELS:
            rows.append(f"{k}\t{ASEG_LABELS[k].name}\t{ASEG_LABELS[k].key}")
        else:
            rows.append(f"{k}\tlabel-{k}\tunknown")
    return "\n".join(rows) + "\n"


def write_anatomy_derivatives(
    result: AnatomyResult,
    inputs: AnatomyInputs,
    deriv_dir: str | Path,
    subject: str,
    session: str | None = None,
) -> dict[str, Path]:
    """Write the anatomy stage's outputs as BIDS derivatives under ``DERIV_DIR/qsmiron/``.

    Files in ``sub-X[/ses-Y]/anat/`` (``sub-X[_ses-Y]_`` prefix):

    * ``space-qsm_dseg.nii.gz`` and ``.tsv``: labels as measured (aseg numbering, CSF
      reference 9001/9002, thalamus voxels left out as vein or CSF rim 9003);
    * ``space-qsm_desc-veins_mask``, ``space-qsm_desc-csfref_mask``;
    * ``space-T1w_dseg`` (+ ``.tsv``), ``space-T1w_label-{CSF,GM,WM}_probseg``;
    * ``space-FLAIR_desc-lesions_mask``, ``space-T1w_desc-enhancing_mask``;
    * the transforms, ``from-A_to-B_mode-image[_desc-D]_xfm.mat`` / ``.nii.gz`` (ANTs);
    * ``desc-anatomy_measures.json``: every measure, QC flag, source and parameter;

    and ``sub-X/figures/sub-X_desc-anatomy_qc.png`` (the anatomy panel) and, with a FLAIR,
    ``sub-X_desc-lesions_qc.png`` (axial FLAIR slices showing every lesion outlined).

    Returns
    -------
    dict
        Name -> path of every file written.
    """
    import shutil

    from qsmiron.io.bids import bids_name
    from qsmiron.io.nifti import atomic_write_bytes, save_nifti, write_json
    from qsmiron.report.figures import anatomy_qc_panel, lesion_mosaic

    sub = subject.removeprefix("sub-")
    ses = session.removeprefix("ses-") if session else None
    subdir = derivatives_dir(deriv_dir, sub, ses, create=True)
    folder = subdir / "anat"

    def name(suffix: str, ext: str = ".nii.gz", **ents: str) -> Path:
        return folder / bids_name(sub, suffix, session=ses, entities=ents or None,
                                  extension=ext)

    # the record of a finished run goes first and comes back last: outputs of a run that
    # stops half-way never sit beside the previous run's measures as if they were its own
    record = name("measures", ".json", desc="anatomy")
    record.unlink(missing_ok=True)
    r = result
    qa = inputs.chi.affine
    out: dict[str, Path] = {}
    prov = {"Sources": {k: str(v) for k, v in r.sources.items()},
            "StageSeconds": r.seconds, "QCFlags": r.flags, **r.info}
    out["dseg"] = save_nifti(name("dseg", space="qsm"), r.qsm_labels, qa, dtype=np.int16,
                             sidecar={"Description": "labels on the QSM grid as measured",
                                      **prov})
    out["dseg_tsv"] = atomic_write_bytes(name("dseg", ".tsv", space="qsm"),
                                         _dseg_table(r.qsm_labels).encode())
    out["veins"] = save_nifti(name("mask", space="qsm", desc="veins"), r.veins, qa,
                              dtype=np.uint8, sidecar={"Description": "veins (QSM space)"})
    out["csf_ref"] = save_nifti(name("mask", space="qsm", desc="csfref"), r.csf_ref, qa,
                                dtype=np.uint8, sidecar={"Description": "CSF zero reference"})
    if r.segmentation is not None and inputs.t1w is not None:
        seg = r.segmentation
        out["t1_dseg"] = save_nifti(name("dseg", space="T1w"), seg.labels, seg.affine,
                                    dtype=np.int16)
        out["t1_dseg_tsv"] = atomic_write_bytes(name("dseg", ".tsv", space="T1w"),
                                                _dseg_table(seg.labels).encode())
        for cls in ("csf", "gm", "wm"):
            out[f"probseg_{cls}"] = save_nifti(
                name("probseg", space="T1w", label=cls.upper()), seg.probs[cls], seg.affine)
    les_space = "FLAIR" if inputs.flair is not None else "T1w"  # the grid lesions are on
    if r.lesions is not None:
        out["lesions"] = save_nifti(name("mask", space=les_space, desc="lesions"),
                                    r.lesions.data.astype(bool), r.lesions.affine,
                                    dtype=np.uint8,
                                    sidecar={"Description": "T2 (FLAIR) lesions"})
    if r.lesion_table is not None and r.lesions is not None:
        tsv = r.lesion_table.to_csv(sep="\t", index=False, float_format="%.6g",
                                    lineterminator="\n")
        out["lesion_table"] = atomic_write_bytes(name("lesions", ".tsv", space=les_space),
                                                 tsv.encode())
        out["lesion_table_json"] = write_json(name("lesions", ".json", space=les_space),
                                              LESION_TABLE_COLUMNS)
    if r.enhancing is not None:
        out["enhancing"] = save_nifti(name("mask", space="T1w", desc="enhancing"),
                                      r.enhancing.data.astype(bool), r.enhancing.affine,
                                      dtype=np.uint8,
                                      sidecar={"Description": "gadolinium-enhancing foci"})
    xfm_names = {
        "template_to_t1w_affine": ("MNI152NLin2009cSym", "T1w", "affine", ".mat"),
        "template_to_t1w_warp": ("MNI152NLin2009cSym", "T1w", "warp", ".nii.gz"),
        "t1w_to_qsm": ("T1w", "qsm", None, ".mat"),
        "flair_to_t1w": ("FLAIR", "T1w", None, ".mat"),
        "gd_to_t1w": ("T1wGd", "T1w", None, ".mat"),
    }
    for key, path in r.transforms.items():
        src, dst, desc, ext = xfm_names[key]
        ents = {"from": src, "to": dst, "mode": "image"}
        if desc:
            ents["desc"] = desc
        target = name("xfm", ext, **ents)
        tmp = target.with_name(target.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, tmp)
        tmp.replace(target)
        out[f"xfm_{key}"] = target
    # QC picture (RAS+ views)
    fig = subdir / "figures" / bids_name(sub, "qc", session=ses,
                                         entities={"desc": "anatomy"}, extension=".png")
    out["qc"] = _qc_png(fig, r, inputs, anatomy_qc_panel)
    if inputs.flair is not None:
        # every lesion (and every false one) on the FLAIR, for the radiologist's check
        fl, fvs = _canonical(inputs.flair.data, inputs.flair.affine)
        les = None
        if r.lesions is not None and r.lesions.data.shape == inputs.flair.data.shape:
            # numbered as in the lesion table (label_lesions on the FLAIR's own grid)
            les = _canonical(label_lesions(r.lesions.data.astype(bool))[0],
                             inputs.flair.affine)[0]
        out["lesion_qc"] = lesion_mosaic(
            fig.with_name(bids_name(sub, "qc", session=ses, entities={"desc": "lesions"},
                                    extension=".png")),
            fl, les, tuple(fvs), title=fig.name.split("_desc-")[0])
    _remove_stale_outputs(out, (folder, fig.parent), sub, ses)
    out["measures"] = write_json(record, {"participant_id": f"sub-{sub}",
                                          "session_id": f"ses-{ses}" if ses else None,
                                          **r.measures, **prov}, add_version=True)
    return out


def _remove_stale_outputs(written: dict[str, Path], folders: tuple[Path, ...], subject: str,
                          session: str | None) -> None:
    """Delete the anatomy outputs of an earlier run that this run did not write again.

    A rerun into the same derivatives folder with other inputs (no FLAIR now, a user's
    lesion mask instead of the FLAIR's) would otherwise leave the earlier lesion masks,
    tables, transforms and pictures beside the new measures. Anatomy outputs are the
    subject's (and session's) BIDS files with a ``space`` or ``from`` entity and the ``qc``
    pictures; the reconstruction's files (``Chimap``, ``desc-*_mask``, field maps) have
    neither and are never touched, nor are another session's files.
    """
    from qsmiron.io.bids import parse_bids_name

    def stem(path: Path) -> str | None:
        """The name without its extension, for the files of this subject and session."""
        parsed = parse_bids_name(path)
        if parsed is None or parsed[0].get("sub") != subject or parsed[0].get("ses") != session:
            return None
        return path.name[: len(path.name) - len(parsed[2])]

    keep = {stem(p) for p in written.values()}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            parsed = parse_bids_name(path)
            ours = parsed is not None and ({"space", "from"} & parsed[0].keys()
                                           or parsed[1] == "qc")
            name = stem(path) if ours and path.is_file() else None
            if name is not None and name not in keep:
                log.info("removing %s, an output of an earlier run not made this time", path)
                path.unlink()


def _canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    tr = nib.orientations.ornt_transform(ornt, ras)
    arr = nib.orientations.apply_orientation(data, tr)
    vs = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    return arr, vs[np.argsort(ornt[:, 0].astype(int))]


def _qc_png(path: Path, r: AnatomyResult, inputs: AnatomyInputs, panel: Callable) -> Path:
    qa = inputs.chi.affine
    chi, vs = _canonical(inputs.chi.data, qa)

    def c(a: np.ndarray) -> np.ndarray:
        return _canonical(np.asarray(a), qa)[0]

    kw: dict[str, Any] = {}
    if inputs.flair is not None:
        fl, fvs = _canonical(inputs.flair.data, inputs.flair.affine)
        kw["flair"] = fl
        kw["flair_voxel_size"] = tuple(fvs)
        if r.lesions is not None and r.lesions.data.shape == inputs.flair.data.shape:
            kw["lesions"] = _canonical(r.lesions.data.astype(bool), inputs.flair.affine)[0]
    m = r.measures
    title = (f"{path.name.split('_desc-')[0]}   rel chi {m['rel_chi_ppb']:+.1f} ppb "
             "(thalamus - CSF)")
    return panel(path, chi, tuple(vs), (c(r.thalamus.left), c(r.thalamus.right)),
                 c(r.csf_ref), c(r.veins),
                 thalamus_before_veins=(c(r.thalamus.left_before_veins),
                                        c(r.thalamus.right_before_veins)),
                 title=title, flags=tuple(r.flags), **kw)
