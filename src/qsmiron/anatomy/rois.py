"""Regions of interest in QSM space: the CSF zero reference, the thalamus without veins, QC.

The reference study (Chiang et al., AJNR 2018;39:467) measured the thalamus on QSM with the
internal cerebral veins and basal veins of Rosenthal excluded, and referenced it to "a small
circular CSF ROI in the atrium of each lateral ventricle, next to the thalamus". Here:

* :func:`atrium_search_regions` - where each atrium is: the part of the lateral ventricle
  behind the posterior pole of the thalamus (pulvinar), from the subject's own labels.
* :func:`csf_reference_roi` - per side, voxels of the lateral ventricle (label fraction
  >= 0.5) inside the atrium search region, with CSF-like R2* (below half of the brain's
  median: free water has R2* of a few 1/s, parenchyma 15-25 1/s at 3 T, choroid plexus
  more), at least ``wall_margin_mm`` from anything that is not such CSF (ventricle wall,
  choroid plexus, septum: partial volume with tissue would bias the reference), and within
  ``radius_mm`` of the deepest CSF point of the atrium: a small ball where the study drew a
  small circle.
  ``method="ventricles"`` takes the whole lateral ventricles (same R2* and wall rules) as a
  larger, noisier-but-steadier reference.
* :func:`thalamus_roi` - the thalamus with veins (and a margin) removed, and the voxels outside
  the valid QSM region dropped.
* :func:`roi_qc` - QC flags of a set of ROIs, whether built here or supplied by the user.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from qsmiron import _checks
from qsmiron._distance import depth_mm
from qsmiron.anatomy.veins import exclude_veins
from qsmiron.errors import InputError

__all__ = [
    "CsfReference",
    "ThalamusRoi",
    "atrium_search_regions",
    "csf_reference_roi",
    "roi_qc",
    "thalamus_roi",
]

log = logging.getLogger(__name__)

#: Smallest plausible CSF reference, mm^3 (below this the reference mean is noise-dominated:
#: at 1 mm, 30 voxels average the QSM noise down by about 5.5).
MIN_CSF_REF_MM3 = 30.0
#: Plausible thalamus volume per side, mL (adults 5-9 mL; severe atrophy 4 mL).
THALAMUS_ML_RANGE = (3.0, 12.0)


def _same_shape(ref: np.ndarray, **arrays: Any) -> None:
    for name, a in arrays.items():
        if a is not None and np.shape(a) != ref.shape:
            raise InputError(f"{name} has shape {np.shape(a)}, expected {ref.shape} "
                             "(all ROIs and maps must be on the QSM grid)")


def atrium_search_regions(
    labels: np.ndarray,
    affine: np.ndarray,
    posterior_dir: Any = (0.0, -1.0, 0.0),
    posterior_range_mm: tuple[float, float] = (2.0, 14.0),
    radius_mm: float = 12.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Where the atrium (trigone) of each lateral ventricle is, from an aseg label map.

    The atrium is the part of the lateral ventricle behind the pulvinar, where the body, the
    occipital and the temporal horns meet. Per side: the ventricle voxels lying
    ``posterior_range_mm`` behind the posterior pole of the thalamus (along
    ``posterior_dir``), their centre, and the ventricle voxels within ``radius_mm`` of it.

    Parameters
    ----------
    labels : (X, Y, Z) int
        aseg-numbered labels (thalamus 10/49, lateral ventricles 4/43).
    affine : (4, 4) array
        Voxel-to-world transform of ``labels``.
    posterior_dir : sequence of 3 float
        The subject's posterior direction in world (RAS) coordinates: -y for a head in the
        usual scanner pose, or the template's -y mapped through its registration.
    posterior_range_mm : (float, float)
        Distance range behind the thalamus's posterior pole, mm.
    radius_mm : float
        Radius of the region around its centre, mm.

    Returns
    -------
    left, right : (X, Y, Z) bool
        Search regions (empty where a thalamus or ventricle label is missing).
    """
    lab = np.asarray(labels)
    aff = np.asarray(affine, float)
    d = np.asarray(posterior_dir, float)
    d = d / np.linalg.norm(d)
    out = []
    for thal, vent in ((10, 4), (49, 43)):
        region = np.zeros(lab.shape, bool)
        t = np.argwhere(lab == thal)
        v = np.argwhere(lab == vent)
        if len(t) and len(v):
            tw = t @ aff[:3, :3].T + aff[:3, 3]
            vw = v @ aff[:3, :3].T + aff[:3, 3]
            pole = float((tw @ d).max())
            behind = vw @ d - pole
            slab = vw[(behind >= posterior_range_mm[0]) & (behind <= posterior_range_mm[1])]
            if len(slab):
                near = np.linalg.norm(vw - slab.mean(axis=0), axis=1) <= radius_mm
                region[tuple(v[near].T)] = True
        out.append(region)
    return out[0], out[1]


@dataclass
class CsfReference:
    """The CSF zero reference.

    Attributes
    ----------
    mask : (X, Y, Z) bool
        Reference voxels (both sides).
    sides : dict
        ``"left"``/``"right"`` -> per-side dict: ``n_voxels``, ``volume_mm3``,
        ``centre_world_mm`` (scanner RAS of the ROI's centroid), ``centre_voxel``,
        ``depth_mm`` (distance of the centre from the nearest non-CSF voxel).
    method : str
        ``"atrium"`` or ``"ventricles"``.
    r2star_threshold : float
        R2* below which a ventricle voxel counted as CSF, 1/s.
    flags : list of str
        QC flags raised while building it (e.g. ``csf_ref_near_wall``).
    """

    mask: np.ndarray
    sides: dict[str, dict[str, Any]]
    method: str
    r2star_threshold: float
    flags: list[str] = field(default_factory=list)

    @property
    def volume_mm3(self) -> float:
        """Total volume of both sides, mm^3."""
        return float(sum(s["volume_mm3"] for s in self.sides.values()))


def csf_reference_roi(
    ventricle_left: np.ndarray,
    ventricle_right: np.ndarray,
    r2star: np.ndarray,
    mask: np.ndarray,
    voxel_size: Any,
    affine: np.ndarray,
    *,
    search_left: np.ndarray | None = None,
    search_right: np.ndarray | None = None,
    method: str = "atrium",
    radius_mm: float = 4.0,
    wall_margin_mm: float | None = None,
    r2star_max: float | None = None,
) -> CsfReference:
    """CSF reference ROI in the atrium of each lateral ventricle (or the whole ventricles).

    Parameters
    ----------
    ventricle_left, ventricle_right : (X, Y, Z) array
        Lateral-ventricle label fractions (0-1) or masks on the QSM grid.
    r2star : (X, Y, Z) array
        R2* map, 1/s.
    mask : (X, Y, Z) bool
        Where QSM is valid.
    voxel_size : sequence of 3 float
        Voxel size, mm.
    affine : (4, 4) array
        QSM voxel-to-world transform (for the reported positions).
    search_left, search_right : (X, Y, Z) bool, optional
        Atrium search regions (required for ``method="atrium"``).
    method : {"atrium", "ventricles"}
        The study's small ROI in each atrium, or the whole lateral ventricles.
    radius_mm : float
        Radius of the atrium ball around the deepest CSF point, mm. 4 mm gives 0.27 mL per
        side at most: small, like the study's circles, yet 34 voxels at 2 mm and 268 at 1 mm.
    wall_margin_mm : float, optional
        Smallest distance from any non-CSF voxel, mm. Default: the largest voxel dimension
        (one whole voxel of CSF between the ROI and the wall, so no ROI voxel shares a voxel
        boundary with tissue).
    r2star_max : float, optional
        Largest R2* of a CSF voxel, 1/s. Default: half the median R2* inside ``mask``.

    Returns
    -------
    CsfReference

    Raises
    ------
    InputError
        Shapes differ, the mask is empty, or the atrium method lacks search regions.

    References
    ----------
    .. [1] Chiang GC, Hu J, Morris E, et al. Quantitative susceptibility mapping of the
       thalamus: relationships with thalamic volume, total gray matter volume, and T2 lesion
       burden. AJNR 2018;39:467-472.
    .. [2] Straub S, Schneider TM, Emmerich J, et al. Suitable reference tissues for
       quantitative susceptibility mapping of the brain. Magn Reson Med 2017;78:204-214.
    """
    r2s = np.asarray(r2star, np.float32)
    qsm = np.asarray(mask, bool)
    vs = _checks.voxel_size_mm(voxel_size)
    _same_shape(r2s, ventricle_left=ventricle_left, ventricle_right=ventricle_right, mask=qsm,
                search_left=search_left, search_right=search_right)
    if method not in ("atrium", "ventricles"):
        raise InputError(f"unknown CSF reference method {method!r}; use atrium or ventricles")
    if method == "atrium" and (search_left is None or search_right is None):
        raise InputError("the atrium CSF reference needs the atrium search regions")
    if not qsm.any():
        raise InputError("the QSM mask is empty: no CSF reference can be placed")
    if r2star_max is None:
        tissue = r2s[qsm & np.isfinite(r2s) & (r2s > 0)]
        r2star_max = 0.5 * float(np.median(tissue)) if tissue.size else np.inf
    margin = float(vs.max()) if wall_margin_mm is None else float(wall_margin_mm)
    aff = np.asarray(affine, float)
    flags: list[str] = []
    roi = np.zeros(r2s.shape, bool)
    sides: dict[str, dict[str, Any]] = {}
    for side, vent, search in (("left", ventricle_left, search_left),
                               ("right", ventricle_right, search_right)):
        csf = (np.asarray(vent, np.float32) >= 0.5) & qsm & (r2s < r2star_max)
        depth = depth_mm(csf, vs)
        cand = csf if method == "ventricles" else csf & np.asarray(search, bool)
        if not cand.any():
            flags.append(f"csf_ref_{side}_missing")
            sides[side] = {"n_voxels": 0, "volume_mm3": 0.0, "centre_world_mm": None,
                           "centre_voxel": None, "depth_mm": 0.0}
            log.warning("no CSF found in the %s %s", side, method)
            continue
        deep = cand & (depth > margin)
        if not deep.any():
            flags.append(f"csf_ref_{side}_near_wall")
            deep = cand
        if method == "atrium":
            d = np.where(deep, depth, 0.0)
            centre = np.array(np.unravel_index(int(np.argmax(d)), d.shape))
            half = np.ceil(radius_mm / vs).astype(int)
            lo = np.maximum(centre - half, 0)
            hi = np.minimum(centre + half + 1, r2s.shape)
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            grid = np.indices(tuple(hi - lo), dtype=np.float32)
            dist2 = sum(((grid[k] + lo[k] - centre[k]) * vs[k]) ** 2 for k in range(3))
            part = np.zeros_like(deep)
            part[box] = deep[box] & (dist2 <= radius_mm**2)
        else:
            part = deep
        roi |= part
        idx = np.argwhere(part)
        c_vox = idx.mean(axis=0)
        c_world = aff[:3, :3] @ c_vox + aff[:3, 3]
        sides[side] = {
            "n_voxels": int(part.sum()),
            "volume_mm3": float(part.sum() * np.prod(vs)),
            "centre_world_mm": [round(float(v), 2) for v in c_world],
            "centre_voxel": [round(float(v), 2) for v in c_vox],
            "depth_mm": float(depth[tuple(np.rint(c_vox).astype(int))]),
        }
    ref = CsfReference(roi, sides, method, float(r2star_max), flags)
    log.info("CSF reference (%s): %.0f mm3", method, ref.volume_mm3)
    return ref


@dataclass
class ThalamusRoi:
    """The thalamus ROI used for the susceptibility measure.

    Attributes
    ----------
    left, right : (X, Y, Z) bool
        Thalamus voxels measured: inside the QSM mask, veins and the partial-volume rims of
        veins and CSF removed.
    left_before_veins, right_before_veins : (X, Y, Z) bool
        Inside the QSM mask, before any exclusion.
    vein_fraction_excluded : float
        Fraction of the (both-sided) thalamus removed as vein or vein rim.
    csf_rim_fraction : float
        Fraction removed as the partial-volume rim with CSF (ventricles).
    outside_qsm_fraction : float
        Fraction of the thalamus label outside the valid QSM region.
    """

    left: np.ndarray
    right: np.ndarray
    left_before_veins: np.ndarray
    right_before_veins: np.ndarray
    vein_fraction_excluded: float
    outside_qsm_fraction: float
    csf_rim_fraction: float = 0.0

    @property
    def both(self) -> np.ndarray:
        """Left and right together."""
        return self.left | self.right


def _rim(mask: np.ndarray, voxels: int) -> np.ndarray:
    """``mask`` grown by ``voxels`` layers of 26-neighbours (its partial-volume rim)."""
    if voxels <= 0 or not mask.any():
        return mask
    return ndi.binary_dilation(mask, structure=np.ones((3, 3, 3), bool), iterations=voxels)


def thalamus_roi(
    thalamus_left: np.ndarray,
    thalamus_right: np.ndarray,
    veins: np.ndarray | None,
    mask: np.ndarray,
    voxel_size: Any,
    vein_margin_mm: float = 0.0,
    *,
    csf: np.ndarray | None = None,
    rim_voxels: int = 1,
) -> ThalamusRoi:
    """The thalamus on QSM with veins, and the partial-volume rims of veins and CSF, excluded.

    A voxel that touches a vein or CSF (26-neighbourhood) shares some of its volume with it
    on a voxelised, blurred image: a vein (+0.45 ppm) in 10% of a thalamus voxel adds 45 ppb,
    and ventricular CSF raises a negative thalamic value towards 0. On simulated heads at
    2 mm the true thalamus label, averaged with its rim, reads +3 to +3.5 ppb high, its core
    +0.0 to +0.3 ppb. The study avoided both by drawing inside the thalamus and nudging veins
    out by hand; here one voxel around each is removed from the measurement (the thalamic
    volume is measured on the T1w, not on this ROI).

    Parameters
    ----------
    thalamus_left, thalamus_right : (X, Y, Z) bool
        Thalamus masks on the QSM grid.
    veins : (X, Y, Z) bool or None
        Vein mask (:func:`qsmiron.anatomy.veins.vein_mask`); None keeps every voxel.
    mask : (X, Y, Z) bool
        Where QSM is valid.
    voxel_size : sequence of 3 float
        Voxel size, mm.
    vein_margin_mm : float
        Further margin around the veins (after the one-voxel rim), mm.
    csf : (X, Y, Z) bool, optional
        CSF (ventricles) on the QSM grid, whose rim is removed.
    rim_voxels : int
        Width of the removed rims, voxels (0 removes the vein voxels only).

    Returns
    -------
    ThalamusRoi
    """
    qsm = np.asarray(mask, bool)
    vs = _checks.voxel_size_mm(voxel_size)
    _same_shape(qsm, thalamus_left=thalamus_left, thalamus_right=thalamus_right, veins=veins,
                csf=csf)
    tl = np.asarray(thalamus_left, bool)
    tr = np.asarray(thalamus_right, bool)
    n_all = int(tl.sum() + tr.sum())
    inside_l, inside_r = tl & qsm, tr & qsm
    outside = 1.0 - (inside_l.sum() + inside_r.sum()) / n_all if n_all else 0.0
    vn = np.zeros_like(qsm) if veins is None else _rim(np.asarray(veins, bool), rim_voxels)
    kept_l, _ = exclude_veins(inside_l, vn, vein_margin_mm, vs)
    kept_r, _ = exclude_veins(inside_r, vn, vein_margin_mm, vs)
    n_in = int(inside_l.sum() + inside_r.sum())
    frac = 1.0 - (kept_l.sum() + kept_r.sum()) / n_in if n_in else 0.0
    rim_frac = 0.0
    if csf is not None:
        near = _rim(np.asarray(csf, bool), rim_voxels)
        n_kept = int(kept_l.sum() + kept_r.sum())
        kept_l, kept_r = kept_l & ~near, kept_r & ~near
        rim_frac = (n_kept - int(kept_l.sum() + kept_r.sum())) / n_in if n_in else 0.0
    return ThalamusRoi(kept_l, kept_r, inside_l, inside_r, float(frac), float(outside),
                       float(rim_frac))


def roi_qc(
    thalamus: ThalamusRoi,
    csf_ref: np.ndarray,
    r2star: np.ndarray,
    mask: np.ndarray,
    voxel_size: Any,
    r2star_max: float | None = None,
    max_vein_fraction: float = 0.2,
) -> list[str]:
    """QC flags for the thalamus and CSF reference ROIs (built-in or user-supplied).

    Flags: ``thalamus_{left,right}_small`` / ``_large`` (the structure, inside the valid QSM
    region, outside :data:`THALAMUS_ML_RANGE`; before the vein and CSF-rim exclusions, which
    remove up to half of an atrophied thalamus at 2 mm and have their own flag),
    ``thalamus_outside_qsm`` (> 5% of the label outside the valid QSM region: mask or
    registration problem),
    ``vein_fraction_high`` (more than ``max_vein_fraction`` removed as vein),
    ``csf_ref_small`` (< :data:`MIN_CSF_REF_MM3`), ``csf_ref_outside_qsm`` (any voxel outside
    the QSM mask), ``csf_ref_high_r2star`` (median R2* above ``r2star_max``: tissue or choroid
    plexus, not CSF).

    Parameters
    ----------
    thalamus : ThalamusRoi
        The thalamus ROI.
    csf_ref : (X, Y, Z) bool
        The CSF reference.
    r2star : (X, Y, Z) array
        R2*, 1/s.
    mask : (X, Y, Z) bool
        Valid QSM region.
    voxel_size : sequence of 3 float
        Voxel size, mm.
    r2star_max : float, optional
        CSF R2* limit, 1/s (default: half the median R2* in ``mask``).
    max_vein_fraction : float
        Vein fraction above which the thalamus is flagged.

    Returns
    -------
    list of str
    """
    vs = _checks.voxel_size_mm(voxel_size)
    qsm = np.asarray(mask, bool)
    ref = np.asarray(csf_ref, bool)
    r2s = np.asarray(r2star, np.float32)
    _same_shape(qsm, csf_ref=ref, r2star=r2s)
    flags: list[str] = []
    vox_ml = float(np.prod(vs)) / 1000.0
    lo, hi = THALAMUS_ML_RANGE
    for side, m in (("left", thalamus.left_before_veins),
                    ("right", thalamus.right_before_veins)):
        v = float(m.sum()) * vox_ml
        if v < lo:
            flags.append(f"thalamus_{side}_small")
        elif v > hi:
            flags.append(f"thalamus_{side}_large")
    if thalamus.outside_qsm_fraction > 0.05:
        flags.append("thalamus_outside_qsm")
    if thalamus.vein_fraction_excluded > max_vein_fraction:
        flags.append("vein_fraction_high")
    if r2star_max is None:
        tissue = r2s[qsm & np.isfinite(r2s) & (r2s > 0)]
        r2star_max = 0.5 * float(np.median(tissue)) if tissue.size else np.inf
    if ref.sum() * np.prod(vs) < MIN_CSF_REF_MM3:
        flags.append("csf_ref_small")
    if (ref & ~qsm).any():
        flags.append("csf_ref_outside_qsm")
    if ref.any() and float(np.median(r2s[ref])) > r2star_max:
        flags.append("csf_ref_high_r2star")
    return flags
