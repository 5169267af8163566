"""Brain and CSF masks from multi-echo GRE (no FSL).

:func:`brain_mask` finds the brain (parenchyma and intracranial CSF) in the GRE magnitude with
a deformable surface in the spirit of BET (Smith 2002): a closed surface, star-shaped about
the head's centre of gravity, is inflated from a small sphere until it meets the dark skull
or CSF edge (BET's local intensity criterion) or an abrupt rise of intensity (bright scalp or
fat touching the brain where no dark bone separates them), with a curvature-dependent
smoothness term bridging gaps in either cue. The surface is then turned into a voxel mask and
refined by intensity (dark skull, bright extracranial tissue, both judged against the local
brain intensity so that coil sensitivity does not matter), morphology (opening, largest
component, hole filling in 3D and per slice) and an optional erosion in mm. A quality check
(:func:`mask_quality`) warns when the result is implausible.

:func:`csf_mask` finds ventricular CSF automatically (low R2*, large components deep in the
brain) for the MEDI+0 zero reference (Liu et al. 2018).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from qsmiron import _checks
from qsmiron._distance import depth_mm, within_mm
from qsmiron._labels import per_label
from qsmiron.errors import InputError
from qsmiron.recon.multiecho import combine_magnitude, r2star_map

__all__ = ["MaskQuality", "MaskQualityWarning", "brain_mask", "csf_mask", "head_mask",
           "mask_quality"]

log = logging.getLogger(__name__)

#: Plausible whole-brain mask volume (mL): adult intracranial volume is about 1.2-1.8 L
#: (parenchyma plus CSF), so a whole-brain mask outside 800-2200 mL has failed (or the field
#: of view does not cover the brain).
PLAUSIBLE_BRAIN_ML = (800.0, 2200.0)


class MaskQualityWarning(UserWarning):
    """The brain mask looks implausible (volume, field-of-view border, fragments)."""


@dataclass
class MaskQuality:
    """Plausibility report of a brain mask (:func:`mask_quality`).

    Attributes
    ----------
    volume_ml : float
        Mask volume, mL.
    border_fraction : float
        Fraction of the mask's boundary voxels that lie on a face of the field of view
        (0 when the brain is fully inside the FOV).
    n_components : int
        Number of 6-connected components.
    largest_fraction : float
        Share of the mask volume in the largest component.
    problems : list of str
        Human-readable findings; empty when the mask looks plausible.
    """

    volume_ml: float
    border_fraction: float
    n_components: int
    largest_fraction: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems



#: Depth below the surface model (mm) within which bright extracranial tissue is peeled off.
PEEL_DEPTH_MM: float = 20.0

def mask_quality(
    mask: np.ndarray,
    voxel_size: float | Sequence[float],
    expected_ml: tuple[float, float] = PLAUSIBLE_BRAIN_ML,
    max_border_fraction: float = 0.05,
) -> MaskQuality:
    """Check that a brain mask is plausible for a whole-brain acquisition.

    Parameters
    ----------
    mask : (X, Y, Z) bool array
        The brain mask.
    voxel_size : float or 3 floats
        Voxel size, mm.
    expected_ml : (float, float)
        Plausible volume range, mL (default: 800-2200 mL, whole adult brain with CSF).
    max_border_fraction : float
        Largest plausible fraction of the mask boundary on the faces of the FOV (a brain
        cut by the FOV, or a mask that leaked into the neck or the background).

    Returns
    -------
    MaskQuality
        Volume, FOV-border contact, fragmentation and a list of problems (empty if fine).

    Examples
    --------
    >>> m = np.zeros((64, 64, 64), bool)
    >>> m[8:56, 8:56, 8:56] = True
    >>> q = mask_quality(m, voxel_size=2.5)
    >>> round(q.volume_ml), q.ok
    (1728, True)
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise InputError(f"mask must be 3D, found shape {m.shape}")
    vsz = _checks.voxel_size_mm(voxel_size)
    vox_ml = float(np.prod(vsz)) / 1000.0
    n = int(m.sum())
    volume = n * vox_ml
    problems: list[str] = []
    if n == 0:
        return MaskQuality(0.0, 0.0, 0, 0.0, ["the mask is empty"])
    lab, n_comp = ndi.label(m)
    sizes = np.bincount(lab.ravel())[1:]
    largest = float(sizes.max()) / n
    surface = m & ~ndi.binary_erosion(m, border_value=0)
    faces = np.zeros(m.shape, bool)
    for d in range(3):
        sl = [slice(None)] * 3
        sl[d] = 0
        faces[tuple(sl)] = True
        sl[d] = -1
        faces[tuple(sl)] = True
    border = float((surface & faces).sum()) / max(int(surface.sum()), 1)
    lo, hi = expected_ml
    if volume < lo:
        problems.append(
            f"mask volume {volume:.0f} mL is below the {lo:.0f} mL plausible for a whole brain: "
            "the mask may have missed brain (low SNR, strong bias field), or the field of view "
            "covers only part of the brain (then this is expected)")
    if volume > hi:
        problems.append(
            f"mask volume {volume:.0f} mL is above the {hi:.0f} mL plausible for a whole brain: "
            "it has probably leaked into scalp, neck or background; check it and pass a mask "
            "of your own if needed")
    if border > max_border_fraction:
        problems.append(
            f"{100 * border:.0f}% of the mask boundary lies on the edge of the field of view: "
            "the brain is cut by the FOV or the mask leaked out of the head")
    if largest < 0.95:
        problems.append(f"the mask is fragmented: its largest part holds {100 * largest:.0f}% "
                        f"of the volume ({n_comp} parts)")
    return MaskQuality(volume, border, int(n_comp), largest, problems)


# --------------------------------------------------------------------------------------------
# brain mask
# --------------------------------------------------------------------------------------------


def _sphere_points(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    azim = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([np.cos(azim) * np.sin(polar), np.sin(azim) * np.sin(polar),
                     np.cos(polar)], axis=1)


def _evolve_surface(
    img: np.ndarray,
    vsz: np.ndarray,
    centre_mm: np.ndarray,
    r0: float,
    t2: float,
    t_bg: float,
    tm: float,
    directions: np.ndarray,
    neighbours: np.ndarray,
    iterations: int,
    fraction: float,
    step_ratio: float,
    r2: np.ndarray | None = None,
    r2_step: float = 8.0,
) -> np.ndarray:
    """Radii of the brain surface along ``directions`` (mm), BET-style evolution.

    Forces on each vertex (Smith 2002), all along its ray:

    * smoothness: ``f2 * (mean radius of the neighbours - radius)``, ``f2`` a sigmoid of the
      local curvature (strong below 3.3 mm radius of curvature, weak above 10 mm);
    * intensity: ``gain * f3 * l`` (``gain`` 0.1, ``l`` the vertex spacing),
      ``f3 = 2 (I_min - t_l) / (I_max - t2)``, with ``I_min`` the
      minimum over 20 mm inwards and ``I_max`` the maximum over 10 mm inwards (clamped to
      the brain's median ``tm``), ``t_l = t2 + fraction (I_max - t2)``: outwards while the
      inward line is bright, inwards once it crosses dark bone or CSF;
    * tissue step: inwards (``f3 <= -0.5``) where the intensity within 2 mm outside the
      vertex exceeds ``step_ratio`` times the median 4-20 mm inside it, or the R2* there
      (``r2``, optional) exceeds the median inside by ``r2_step``: the surface has reached
      tissue that is not brain although no dark bone separates it (scalp, fat, muscle).

    The step size is annealed over the second half of the iterations, since the binary
    tissue stop makes the boundary oscillate by one step.
    """
    n = directions.shape[0]
    depth = np.arange(-2.0, 20.0 + 1e-6, 2.0)  # mm inwards from the vertex
    i_vertex = int(np.searchsorted(depth, 0.0))  # depth 0
    i_d2 = int(np.searchsorted(depth, 10.0, side="right"))
    i_in = (depth >= 4.0) & (depth <= 20.0)
    ang = np.sqrt(4.0 * np.pi / n)  # mean angular spacing of the vertices
    rmin, rmax = 3.33, 10.0
    e_c = 0.5 * (1.0 / rmin + 1.0 / rmax)
    f_c = 6.0 / (1.0 / rmin - 1.0 / rmax)
    radius = np.full(n, r0)
    inv_vsz = 1.0 / vsz
    for it in range(iterations):
        # full steps for the first half, then smaller and smaller: the binary stop of the
        # intensity step makes the boundary oscillate by a step; this anneals it away
        gain = 0.1 * min(1.0, 2.0 * (1.0 - it / iterations)) + 0.002
        pts = centre_mm[None, None, :] + (radius[:, None] - depth[None, :])[..., None] * \
            directions[:, None, :]
        coords = (pts * inv_vsz).reshape(-1, 3).T
        prof = ndi.map_coordinates(img, coords, order=1, mode="constant", cval=0.0,
                                   prefilter=False).reshape(n, depth.size)
        inward = prof[:, i_vertex:]
        i_min = np.maximum(t2, np.minimum(tm, inward.min(axis=1)))
        i_max = np.minimum(tm, np.maximum(t_bg, inward[:, : i_d2 - i_vertex].max(axis=1)))
        t_l = t2 + fraction * (i_max - t2)
        f3 = 2.0 * (i_min - t_l) / np.maximum(i_max - t2, 1e-12)
        outside = prof[:, : i_vertex + 1].max(axis=1)
        inside = np.median(prof[:, i_in], axis=1)
        flag = outside > step_ratio * inside
        if r2 is not None:
            pr = ndi.map_coordinates(r2, coords, order=1, mode="nearest",
                                     prefilter=False).reshape(n, depth.size)
            flag |= pr[:, : i_vertex + 1].max(axis=1) > np.median(pr[:, i_in], axis=1) + r2_step
        f3 = np.where(flag, np.minimum(f3, -0.5), f3)
        spacing = radius * ang
        sn = radius[neighbours].mean(axis=1) - radius
        rc = spacing**2 / (2.0 * np.abs(sn) + 1e-9)
        f2 = 0.5 * (1.0 + np.tanh(f_c * (1.0 / rc - e_c)))
        radius = np.maximum(radius + f2 * sn + gain * f3 * spacing, 1.0)
    return radius


def _block_mean(img: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Mean over blocks of ``factor`` voxels (the image cropped to a multiple of it)."""
    if np.all(factor == 1):
        return img
    n = [s // f for s, f in zip(img.shape, factor, strict=True)]
    out = np.zeros(n, np.float32)
    for a in range(factor[0]):
        for b in range(factor[1]):
            for c in range(factor[2]):
                out += img[a: n[0] * factor[0]: factor[0], b: n[1] * factor[1]: factor[1],
                           c: n[2] * factor[2]: factor[2]]
    out /= np.float32(np.prod(factor))
    return out


def _voxelise(radius: np.ndarray, directions: np.ndarray, centre_mm: np.ndarray,
              shape: tuple[int, ...], vsz: np.ndarray) -> np.ndarray:
    """Voxels inside the star-shaped surface ``centre + radius(u) u``."""
    # radius on a regular (polar, azimuth) grid, by inverse-distance weighting of the
    # 3 nearest vertices; voxels look it up with bilinear interpolation
    n_pol, n_az = 181, 361
    pol = np.linspace(0.0, np.pi, n_pol)
    az = np.linspace(-np.pi, np.pi, n_az)
    pp, aa = np.meshgrid(pol, az, indexing="ij")
    grid_dirs = np.stack([np.sin(pp) * np.cos(aa), np.sin(pp) * np.sin(aa), np.cos(pp)], -1)
    dist, idx = cKDTree(directions).query(grid_dirs.reshape(-1, 3), k=3)
    wgt = 1.0 / np.maximum(dist, 1e-9)
    rgrid = ((radius[idx] * wgt).sum(1) / wgt.sum(1)).reshape(n_pol, n_az).astype(np.float32)
    rmax = float(radius.max())
    lo = np.maximum(np.floor((centre_mm - rmax) / vsz).astype(int), 0)
    hi = np.minimum(np.ceil((centre_mm + rmax) / vsz).astype(int) + 1, shape)
    out = np.zeros(shape, bool)
    if np.any(hi <= lo):
        return out
    axes = [(np.arange(a, b) * v - c).astype(np.float32)
            for a, b, v, c in zip(lo, hi, vsz, centre_mm, strict=True)]
    x = axes[0][:, None, None]
    y = axes[1][None, :, None]
    z = axes[2][None, None, :]
    rho = np.sqrt(x * x + y * y + z * z)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_pol = np.clip(np.where(rho > 0, z / np.maximum(rho, 1e-6), 1.0), -1.0, 1.0)
    ipol = np.arccos(cos_pol) * np.float32((n_pol - 1) / np.pi)
    iaz = (np.arctan2(np.broadcast_to(y, rho.shape), np.broadcast_to(x, rho.shape)) + np.pi) * \
        np.float32((n_az - 1) / (2 * np.pi))
    r_at = ndi.map_coordinates(rgrid, [ipol.ravel(), iaz.ravel()], order=1, mode="nearest",
                               prefilter=False).reshape(rho.shape)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = rho <= r_at
    return out


def _local_mean(values: np.ndarray, weights: np.ndarray, sigma_vox: np.ndarray,
                factor: np.ndarray | None = None) -> np.ndarray:
    """Gaussian-weighted local mean of ``values`` where ``weights`` is True.

    Computed on the bounding box of ``weights`` (plus the filter's reach), 0 far outside;
    with ``factor``, on blocks of that many voxels (a smooth mean needs no finer grid) and
    repeated back to the full grid.
    """
    if factor is not None and np.any(factor > 1):
        w = weights.astype(np.float32)
        num = _block_mean(values * w, factor)
        den = _block_mean(w, factor)
        sig = np.asarray(sigma_vox) / factor
        num = ndi.gaussian_filter(num, sig, mode="constant", truncate=3.0)
        den = ndi.gaussian_filter(den, sig, mode="constant", truncate=3.0)
        small = num / np.maximum(den, 1e-3)
        for d in range(3):
            small = np.repeat(small, factor[d], axis=d)
        out = np.zeros(values.shape, np.float32)
        n = [min(a, b) for a, b in zip(small.shape, values.shape, strict=True)]
        out[: n[0], : n[1], : n[2]] = small[: n[0], : n[1], : n[2]]
        # the last partial blocks (if any) take the nearest full block's value
        for d in range(3):
            if n[d] < values.shape[d]:
                idx = [slice(None)] * 3
                idx[d] = slice(n[d], None)
                src = [slice(None)] * 3
                src[d] = slice(n[d] - 1, n[d])
                out[tuple(idx)] = out[tuple(src)]
        return out
    out = np.zeros(values.shape, np.float32)
    nz = np.nonzero(weights.any(axis=(1, 2)))[0], np.nonzero(weights.any(axis=(0, 2)))[0], \
        np.nonzero(weights.any(axis=(0, 1)))[0]
    if any(a.size == 0 for a in nz):
        return out
    reach = np.ceil(3.0 * np.asarray(sigma_vox)).astype(int) + 1
    box = tuple(slice(max(int(a[0]) - r, 0), int(a[-1]) + r + 1)
                for a, r in zip(nz, reach, strict=True))
    w = weights[box].astype(np.float32)
    num = ndi.gaussian_filter(values[box] * w, sigma_vox, mode="constant", truncate=3.0)
    den = ndi.gaussian_filter(w, sigma_vox, mode="constant", truncate=3.0)
    out[box] = num / np.maximum(den, 1e-3)
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (the mask itself if it has one)."""
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


#: Lower threshold of :func:`head_mask`'s hysteresis, as a fraction of Otsu's threshold:
#: a receive coil's sensitivity falls to about half from the centre of the head to the
#: vertex, while the background noise of a clinical magnitude image lies well below half of
#: Otsu's threshold (more than 6 noise SDs on the simulated FLAIRs).
HEAD_HYSTERESIS = 0.5


def head_mask(image: np.ndarray, voxel_size: Sequence[float] | float = 1.0) -> np.ndarray:
    """The head (or any imaged object) in a structural image: foreground, closed and filled.

    Otsu's threshold of the image (background noise vs tissue) grown by hysteresis down to
    half of it (tissue dimmed by the receive coil's fall-off, typically at the vertex, stays
    when it is connected to brighter tissue: a FLAIR's top slices are often under Otsu's
    threshold), the largest component, a closing by a 4 mm ball, and hole filling in 3-D and
    within the slices of every axis (dark CSF, bone and sinuses inside an open shell of scalp
    are holes of some slice).

    Parameters
    ----------
    image : (X, Y, Z) array
        Magnitude-like image (T1w, FLAIR, GRE magnitude).
    voxel_size : float or sequence of 3 floats
        Voxel size, mm.

    Returns
    -------
    (X, Y, Z) ndarray of bool
    """
    from skimage.filters import apply_hysteresis_threshold, threshold_otsu

    img = np.asarray(image, np.float32)
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,))
    sample = img[:: max(1, img.shape[0] // 64), :: max(1, img.shape[1] // 64)].ravel()
    otsu = float(threshold_otsu(sample))
    fg = largest_component(apply_hysteresis_threshold(img, HEAD_HYSTERESIS * otsu, otsu))
    # closing by a 4 mm ball, as two distance transforms (the same mask as the ball's dilation
    # and erosion, 0.6 s instead of 2.7 s for a 1 mm head), on a margin so that the head may
    # close beyond the array's edge
    r = np.maximum(np.ceil(4.0 / vs).astype(int), 1)
    fg = depth_mm(within_mm(np.pad(fg, r[:, None]), 4.0, vs), vs) > 4.0 * (1.0 + 1e-5)
    fg = fg[r[0]:-r[0], r[1]:-r[1], r[2]:-r[2]]
    fg = _fill_holes(fg)
    for axis in range(3):
        fg = _fill_holes(fg, axis)
    return fg


def _fill_holes(mask: np.ndarray, plane_axis: int | None = None) -> np.ndarray:
    """Fill holes: background components that do not reach the border.

    With ``plane_axis``, holes within the slices normal to that axis (components connected
    only within a slice, bordering on the slice's edges). Labelling the background is much
    faster than the flood fill of :func:`scipy.ndimage.binary_fill_holes`.
    """
    if plane_axis is None:
        structure = ndi.generate_binary_structure(3, 1)
        axes = (0, 1, 2)
    else:
        structure = np.zeros((3, 3, 3), bool)
        idx = [slice(None)] * 3
        idx[plane_axis] = 1
        structure[tuple(idx)] = ndi.generate_binary_structure(2, 1)
        axes = tuple(a for a in range(3) if a != plane_axis)
    lab, n = ndi.label(~mask, structure=structure)
    if n == 0:
        return mask
    border = np.zeros(n + 1, bool)
    for a in axes:
        for end in (0, -1):
            idx = [slice(None)] * 3
            idx[a] = end
            border[np.unique(lab[tuple(idx)])] = True
    border[0] = True  # label 0 is the mask itself
    return mask | ~border[lab]


def _refine(img: np.ndarray, inside: np.ndarray, vsz: np.ndarray, step_ratio: float,
            factor: np.ndarray) -> np.ndarray:
    """Voxel-level refinement of the region inside the surface (see :func:`brain_mask`).

    Works on the bounding box of ``inside`` (plus a margin for the morphology).
    """
    nz = np.nonzero(inside)
    margin = 3
    box = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in nz)
    img_b = img[box]
    inside_b = inside[box]
    # intensity refinement against the local brain intensity
    sig = 5.0 / vsz
    depth = depth_mm(inside_b, vsz)
    dark = (depth < 6.0) & (img_b < 0.5 * _local_mean(img_b, inside_b, sig, factor))
    mask = inside_b & ~dark
    excluded = dark
    # Peel bright tissue layer by layer (a thick layer is its own local reference at first),
    # only within PEEL_DEPTH_MM of the surface: scalp and skull (together about 10-15 mm thick)
    # lie there, while bright deep grey matter (thalamus, pallidum, 25 mm and more inside the
    # surface) must never be peeled.
    shallow = depth < PEEL_DEPTH_MM
    del depth
    for _ in range(10):
        ref = _local_mean(img_b, mask, sig, factor)
        bright = mask & shallow & (img_b > step_ratio * ref)
        n_bright = int(bright.sum())
        mask &= ~bright
        excluded |= bright
        if n_bright <= 1e-4 * mask.sum():
            break
    # opening and closing by a ~2 mm ball: a diamond of radius round(2 mm / voxel) as
    # iterations of the 6-neighbourhood (equivalent for this purpose, and faster)
    cross = ndi.generate_binary_structure(3, 1)
    r = max(int(np.rint(2.0 / float(vsz.min()))), 1)
    mask = ndi.binary_opening(mask, structure=cross, iterations=r)
    mask = largest_component(mask)
    mask = ndi.binary_closing(mask, structure=cross, iterations=r, border_value=0) | mask
    mask = _fill_holes(mask)
    # holes open in 3D but closed within a slice: fill them, except with the extracranial
    # tissue excluded above (e.g. the suprasellar region between the temporal lobes)
    for d in range(3):
        mask |= _fill_holes(mask, plane_axis=d) & ~excluded
    out = np.zeros(inside.shape, bool)
    out[box] = largest_component(mask)
    return out


def brain_mask(
    magnitude: np.ndarray,
    voxel_size: float | Sequence[float],
    erode_mm: float = 0.0,
    *,
    te: Sequence[float] | None = None,
    fraction: float = 0.5,
    step_ratio: float | None = None,
    r2star_step: float = 8.0,
    peel_ratio: float = 1.08,
    n_vertices: int = 2562,
    iterations: int = 200,
    check: bool = True,
) -> np.ndarray:
    """Brain mask (parenchyma and intracranial CSF) from a GRE magnitude, without FSL.

    Steps:

    1. One magnitude image: root sum of squares over echoes (:func:`combine_magnitude`),
       lightly smoothed (Gaussian, SD 1 mm).
    2. Robust intensity range as in BET: 2nd and 98th percentiles ``t2``, ``t98``,
       background threshold ``t = t2 + 0.1 (t98 - t2)``, the intensity-weighted centre of
       gravity of the voxels above it, the radius of a sphere of their volume, and the
       median intensity ``tm`` of the head within that sphere.
    3. Surface (Smith 2002; here the vertices move along rays from the centre, so the
       surface is star-shaped about it, which a brain seen from near the thalamus is):
       ``n_vertices`` directions, a sphere of half the head radius inflated on a ~2 mm
       version of the image by BET's forces - curvature-dependent smoothing, and the local
       intensity force that pushes outwards while the 20 mm inward line is bright and
       inwards once it crosses dark bone or CSF - plus a stop where the surface meets
       tissue that is not brain although no dark bone separates it (scalp, muscle, fat):
       intensity within 2 mm outside more than ``step_ratio`` times the median 4-20 mm
       inside, or, with ``te``, R2* there more than ``r2star_step`` above the median
       R2* 4-20 mm inside (extracranial soft tissue decays faster than cortex and CSF; R2*
       is a ratio of echoes, so the coil's receive bias does not affect it). The step is
       annealed over the last half of ``iterations``.
    4. Voxels inside the surface and above the background threshold, minus voxels within
       6 mm of the surface darker than half the local brain intensity (partial-volume
       bone) and voxels brighter than ``peel_ratio`` times it (extracranial tissue, peeled
       layer by layer until none is left). "Local" is a Gaussian neighbourhood (SD 5 mm)
       of the current mask, so a smooth receive bias does not matter.
    5. Morphology: opening by a ~2 mm ball (cuts thin bridges), largest connected
       component, closing by the same ball, hole filling in 3D, then per slice along every
       axis (not re-adding the extracranial tissue of step 4), largest component again.
    6. Optional erosion by ``erode_mm`` (Euclidean distance, anisotropic voxels honoured),
       then :func:`mask_quality` warns (:class:`MaskQualityWarning`) if the mask is
       implausible.

    On the simulated 2 mm heads of :mod:`qsmiron.simulate` (whose skull is missing over
    about half of the brain's surface, so the scalp touches the brain) the Dice overlap
    with the true brain is 0.97 and no voxel lies more than 1-2 voxels outside it; see
    ``tests/recon/test_mask.py``.

    Parameters
    ----------
    magnitude : (X, Y, Z) or (X, Y, Z, E) array
        GRE magnitude (any scale); echoes are combined by root sum of squares.
    voxel_size : float or 3 floats
        Voxel size, mm.
    erode_mm : float
        Erode the final mask by this distance (mm); e.g. 1-2 mm to drop the unreliable
        phase of the outermost voxels.
    te : sequence of float, optional
        Echo times (s) of a multi-echo ``magnitude``: enables the R2* stop (recommended:
        it makes the mask robust to receive bias fields).
    fraction : float
        BET's fractional intensity threshold in (0, 1): larger gives a smaller mask.
    step_ratio : float, optional
        Intensity ratio that stops the surface. Default 1.15 with ``te`` (in the combined
        GRE magnitude white matter is 3-6% brighter than grey matter, scalp and fat 15% or
        more) and 1.08 without (the intensity step is then the only cue; a receive bias
        that brightens the brain by more than 8% over 4-20 mm can cut the mask short).
    r2star_step : float
        R2* rise (1/s) that stops the surface (default 8: cortex 15-20 1/s, white matter
        20-25, CSF 2-5, scalp muscle 30 or more).
    peel_ratio : float
        Ratio to the local brain intensity above which voxels are removed in step 4.
    n_vertices : int
        Surface vertices (2562, an icosphere's count: ~5 mm spacing on a brain).
    iterations : int
        Surface evolution steps (each moves a vertex at most ~0.5 mm).
    check : bool
        Run :func:`mask_quality` and warn on problems.

    Returns
    -------
    (X, Y, Z) bool array

    References
    ----------
    .. [1] Smith SM. Fast robust automated brain extraction. Hum Brain Mapp 2002;17:143-155.
    .. [2] Segonne F, Dale AM, Busa E, et al. A hybrid approach to the skull stripping problem
       in MRI. NeuroImage 2004;22:1060-1075 (surface plus intensity refinement).

    Examples
    --------
    >>> g = np.linalg.norm(np.indices((48, 48, 48)) - 23.5, axis=0)
    >>> head = np.where(g < 16, 1.0, np.where(g < 18, 0.05, np.where(g < 22, 1.4, 0.0)))
    >>> mask = brain_mask(head + 0.01, voxel_size=4.0, check=False)   # brain r = 64 mm
    >>> inside = g < 16
    >>> bool((mask & inside).sum() / inside.sum() > 0.97 and not (mask & (g > 17)).any())
    True
    """
    vsz = _checks.voxel_size_mm(voxel_size)
    img = combine_magnitude(magnitude) if np.ndim(magnitude) == 4 else \
        _checks.image3d(magnitude, "magnitude")
    if np.any(img < 0):
        raise InputError("magnitude has negative values: pass |S|, not the real part")
    if not 0.0 < fraction < 1.0:
        raise InputError(f"fraction must be in (0, 1), found {fraction}")
    use_r2 = te is not None and np.ndim(magnitude) == 4 and np.shape(magnitude)[3] >= 2
    if step_ratio is None:
        step_ratio = 1.15 if use_r2 else 1.08
    if not (step_ratio > 1.0 and peel_ratio > 1.0 and r2star_step > 0):
        raise InputError("step_ratio and peel_ratio must be > 1 and r2star_step > 0, found "
                         f"{step_ratio}, {peel_ratio}, {r2star_step}")
    if erode_mm < 0:
        raise InputError(f"erode_mm must be >= 0, found {erode_mm}")
    shape = img.shape
    img = ndi.gaussian_filter(img, 1.0 / vsz, truncate=3.0).astype(np.float32)

    t2, t98 = (float(v) for v in np.percentile(img, [2, 98]))
    if not t98 > t2:
        raise InputError("the magnitude image is constant: no brain to find")
    t_bg = t2 + 0.1 * (t98 - t2)
    fg = img > t_bg
    if fg.sum() < 1000:
        raise InputError("fewer than 1000 voxels above the background threshold: is this a "
                         "magnitude image of a head?")
    wts = np.where(fg, np.minimum(img, t98), 0.0).astype(np.float64)
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    centre = (idx @ wts.ravel()) / wts.sum()
    del idx, wts
    centre_mm = centre * vsz
    r_head = (3.0 * float(fg.sum()) * float(np.prod(vsz)) / (4.0 * np.pi)) ** (1.0 / 3.0)
    axes = [np.arange(s) * v - c for s, v, c in zip(shape, vsz, centre_mm, strict=True)]
    d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    tm = float(np.median(img[fg & (d2 < r_head**2)]))
    del d2
    log.debug("brain_mask: t2 %.4g t98 %.4g threshold %.4g tm %.4g centre %s r %.1f mm",
              t2, t98, t_bg, tm, np.round(centre, 1).tolist(), r_head)

    directions = _sphere_points(int(n_vertices))
    _, nb = cKDTree(directions).query(directions, k=7)
    # the surface (vertex spacing ~5 mm) is evolved on a ~2 mm version of the image: as
    # accurate, faster, and blind to fine texture
    factor = np.maximum(np.rint(2.0 / vsz).astype(int), 1)
    coarse = _block_mean(img, factor)
    r2c = None
    if use_r2:
        mag4 = np.asarray(magnitude, dtype=np.float32)
        coarse4 = np.stack([_block_mean(mag4[..., e], factor) for e in range(mag4.shape[3])],
                           axis=-1)
        r2c = r2star_map(coarse4, te, _block_mean(fg.astype(np.float32), factor) > 0.5)
        r2c = ndi.median_filter(r2c, size=3)
        del coarse4
    radius = _evolve_surface(coarse, vsz * factor, centre_mm - 0.5 * (factor - 1) * vsz,
                             0.5 * r_head, t2, t_bg, tm, directions, nb[:, 1:], int(iterations),
                             float(fraction), float(step_ratio), r2c, float(r2star_step))
    del coarse
    inside = _voxelise(radius, directions, centre_mm, shape, vsz) & fg
    if not inside.any():
        raise InputError("brain_mask found no brain: the surface collapsed (is the image a "
                         "head, and the voxel size right?)")

    mask = _refine(img, inside, vsz, float(peel_ratio), factor)
    if erode_mm > 0:
        mask &= depth_mm(mask, vsz) > erode_mm
    if not mask.any():
        raise InputError(f"the brain mask is empty after erosion by {erode_mm} mm")
    if check:
        q = mask_quality(mask, vsz)
        for problem in q.problems:
            log.warning("brain_mask: %s", problem)
            warnings.warn(f"brain_mask: {problem}", MaskQualityWarning, stacklevel=2)
    return mask


# --------------------------------------------------------------------------------------------
# CSF mask
# --------------------------------------------------------------------------------------------


def csf_mask(
    r2star: np.ndarray,
    mask: np.ndarray,
    voxel_size: float | Sequence[float],
    r2star_max: float = 5.0,
    min_depth_mm: float = 15.0,
    min_volume_ml: float = 0.2,
) -> np.ndarray:
    """Ventricular CSF found automatically: low R2*, in large components deep in the brain.

    CSF has the lowest R2* of the brain (2-4 1/s at 3 T, against 15-25 1/s in grey and white
    matter), so ``R2* < r2star_max`` picks it out; the ventricles are the large low-R2*
    regions away from the brain surface, unlike sulcal CSF and noise. This is the zero
    reference of MEDI+0, whose extra term keeps the susceptibility of this region uniform
    (Liu et al. 2018).

    Steps: threshold R2* inside the brain mask; opening by the 6-neighbourhood (removes
    isolated voxels and cuts one-voxel bridges, e.g. to sulcal CSF); 6-connected
    components; keep the components with at least ``min_volume_ml`` that reach
    ``min_depth_mm`` below the brain surface; give them back the one-voxel layer the
    opening removed (within the threshold).

    Parameters
    ----------
    r2star : (X, Y, Z) array
        R2* in 1/s (e.g. :func:`qsmiron.recon.multiecho.r2star_map`).
    mask : (X, Y, Z) bool array
        Brain mask.
    voxel_size : float or 3 floats
        Voxel size, mm.
    r2star_max : float
        Largest R2* of CSF, 1/s (the 5 1/s of Liu et al. 2018).
    min_depth_mm : float
        A component must reach this distance from the brain surface (ventricles are
        20-40 mm deep; sulcal CSF is within a few mm).
    min_volume_ml : float
        Smallest component kept, mL.

    Returns
    -------
    (X, Y, Z) bool array
        The CSF reference region (may be empty if no CSF qualifies; a warning is logged).

    References
    ----------
    .. [1] Liu Z, Spincemaille P, Yao Y, Zhang Y, Wang Y. MEDI+0: morphology enabled dipole
       inversion with automatic uniform cerebrospinal fluid zero reference for quantitative
       susceptibility mapping. Magn Reson Med 2018;79:2795-2803.

    Examples
    --------
    >>> r2 = np.full((40, 40, 40), 20.0, np.float32)
    >>> r2[16:24, 16:24, 16:24] = 3.0                      # a "ventricle"
    >>> brain = np.zeros((40, 40, 40), bool); brain[2:38, 2:38, 2:38] = True
    >>> int(csf_mask(r2, brain, voxel_size=2.0, min_depth_mm=10).sum())
    512
    """
    r2 = _checks.image3d(r2star, "r2star")
    m = _checks.mask3d(mask, r2.shape, allow_none=False)
    vsz = _checks.voxel_size_mm(voxel_size)
    if not r2star_max > 0:
        raise InputError(f"r2star_max must be positive (1/s), found {r2star_max}")
    depth = depth_mm(m, vsz)
    low = m & (r2 < r2star_max)
    cross = ndi.generate_binary_structure(3, 1)
    opened = ndi.binary_opening(low, structure=cross)
    lab, n = ndi.label(opened)
    if n == 0:
        log.warning("csf_mask: no voxel with R2* < %.1f 1/s in the brain mask", r2star_max)
        return np.zeros(r2.shape, bool)
    idx = np.arange(1, n + 1)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    deepest = per_label(ndi.maximum, depth, lab, idx)
    vox_ml = float(np.prod(vsz)) / 1000.0
    keep = idx[(sizes * vox_ml >= min_volume_ml) & (np.asarray(deepest) >= min_depth_mm)]
    out = np.isin(lab, keep)
    # give back what the opening took from the kept components' surfaces (one voxel)
    out |= ndi.binary_dilation(out, structure=np.ones((3, 3, 3), bool)) & low
    if not out.any():
        log.warning("csf_mask: no low-R2* component of at least %.2f mL reaches %.0f mm "
                    "below the brain surface", min_volume_ml, min_depth_mm)
    return out
