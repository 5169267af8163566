"""Vein detection on QSM (and magnitude) and vein exclusion from a region of interest.

Veins carry deoxygenated blood, so they are paramagnetic (0.3-0.5 ppm above tissue on QSM) and
tubular; the globus pallidus and other iron-rich nuclei are paramagnetic too but blob-like. A
voxel is called vein when it is both

* tubular: multi-scale Frangi vesselness of the susceptibility map (bright ridges) or of the
  magnitude (dark ridges, the T2* signal void of veins) above ``vesselness_threshold``
  (vesselness normalised to its 99.5th percentile in the mask), and
* paramagnetic: ``chi`` above the local tissue background (Gaussian-weighted mean in the mask,
  ``background_mm``) by more than ``chi_threshold_ppm``, and
* not part of a thick paramagnetic blob (one that holds a ball of radius ``max_radius_mm``).

Scales are given in mm; anisotropic grids are resampled to isotropic voxels (``filter_voxel_mm``)
for the filter and the result is resampled back.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage
from skimage.filters import frangi

from qsmiron import _checks
from qsmiron._distance import depth_mm, within_mm
from qsmiron.errors import InputError

__all__ = ["exclude_veins", "vein_mask"]

log = logging.getLogger(__name__)


def _vesselness(
    img: np.ndarray,
    mask: np.ndarray,
    vs: np.ndarray,
    scales_mm,
    black_ridges: bool,
    grid_mm: float,
) -> np.ndarray:
    """Frangi vesselness in [0, 1] (normalised to the 99.5th percentile inside ``mask``).

    The image is resampled to isotropic ``grid_mm`` voxels for the filter (so the Hessian scales
    are isotropic in mm) and the vesselness is resampled back to the input grid.
    """
    zoom = vs / grid_mm
    resample = not np.allclose(zoom, 1.0)
    fill = float(np.median(img[mask]))
    work = np.where(mask, img, fill).astype(np.float32)
    if resample:
        work = ndimage.zoom(work, zoom, order=1, grid_mode=True, mode="grid-constant", cval=fill)
    sigmas = [float(sc) / grid_mm for sc in scales_mm]
    v = frangi(work, sigmas=sigmas, black_ridges=black_ridges, mode="nearest").astype(np.float32)
    if resample:
        factors = np.array(img.shape) / np.array(v.shape)
        v = ndimage.zoom(v, factors, order=1, grid_mode=True, mode="nearest")
        v = v[: img.shape[0], : img.shape[1], : img.shape[2]]
        if v.shape != img.shape:
            pad = [(0, a - b) for a, b in zip(img.shape, v.shape, strict=True)]
            v = np.pad(v, pad, mode="edge")
    inside = v[mask]
    ref = float(np.percentile(inside, 99.5)) if inside.size else 0.0
    if ref <= 0:
        return np.zeros(img.shape, dtype=np.float32)
    return np.clip(v / ref, 0.0, 1.0).astype(np.float32)


def _local_background(chi: np.ndarray, mask: np.ndarray, vs: np.ndarray, sigma_mm: float):
    """Normalised Gaussian-weighted mean of ``chi`` inside ``mask`` (ppm)."""
    sig = sigma_mm / vs
    m = mask.astype(np.float32)
    num = ndimage.gaussian_filter(np.where(mask, chi, 0.0).astype(np.float32), sig)
    den = ndimage.gaussian_filter(m, sig)
    return num / np.maximum(den, 1e-6)


def vein_mask(
    chi: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
    voxel_size: float | tuple[float, float, float] = 1.0,
    chi_threshold_ppm: float = 0.15,
    *,
    scales_mm: tuple[float, ...] = (0.75, 1.0, 1.5, 2.0),
    vesselness_threshold: float = 0.15,
    background_mm: float = 4.0,
    max_radius_mm: float = 3.0,
    min_size_mm3: float = 4.0,
    filter_voxel_mm: float | None = None,
) -> np.ndarray:
    """Veins from a susceptibility map and a magnitude image: tubular and paramagnetic voxels.

    Parameters
    ----------
    chi : (X, Y, Z) array_like
        Susceptibility map, ppm (any zero reference: the threshold is relative to local tissue).
    magnitude : (X, Y, Z) array_like or None
        GRE magnitude (a late echo shows veins darkest); None uses the QSM alone.
    mask : (X, Y, Z) array_like of bool
        Brain mask; nothing outside it is called vein.
    voxel_size : float or sequence of 3 floats
        Voxel size in mm.
    chi_threshold_ppm : float, optional
        Minimum susceptibility above the local tissue background, ppm. Default 0.15 ppm: venous
        blood at 60-70% oxygen saturation is about 0.4-0.5 ppm above tissue, and partial volume
        and QSM blur roughly halve that in veins of 1-2 voxel diameter; 0.15 ppm keeps them while
        rejecting normal-iron grey matter (thalamus, cortex, caudate, putamen are within
        +/-0.06 ppm of their surroundings).
    scales_mm : sequence of float, optional
        Gaussian scales of the Hessian (vessel radii of about the scale), mm.
    vesselness_threshold : float, optional
        Minimum normalised vesselness (0-1) of either image.
    background_mm : float, optional
        Gaussian sigma of the local tissue background, mm.
    max_radius_mm : float, optional
        Largest vein radius, mm (deep veins 1-2 mm, straight sinus and vein of Galen up to
        3 mm; Ono et al. 1984). Paramagnetic structures (``chi`` above the brain median by
        ``chi_threshold_ppm``) holding a ball larger than this are blobs (iron-rich nuclei,
        haemorrhage), and the part of them that such balls cover is removed.
    min_size_mm3 : float, optional
        Connected components smaller than this are dropped (noise specks).
    filter_voxel_mm : float, optional
        Isotropic grid the vesselness filter runs on, mm. Default: the smallest voxel dimension,
        but not finer than the smallest scale (a Hessian scale below one voxel is meaningless),
        so 1 mm data are filtered as they are and 0.5 x 0.5 x 2 mm data on a 0.75 mm grid.

    Returns
    -------
    (X, Y, Z) ndarray of bool
        Vein mask.

    Raises
    ------
    InputError
        If shapes differ, images are not 3-D, the mask is empty, or values are not finite.

    References
    ----------
    .. [1] Frangi AF, Niessen WJ, Vincken KL, Viergever MA. Multiscale vessel enhancement
       filtering. MICCAI 1998, LNCS 1496:130-137.
    .. [2] Haacke EM, Mittal S, Wu Z, Neelavalli J, Cheng YCN. Susceptibility-weighted imaging:
       technical aspects and clinical applications. AJNR 2009;30:19-30 (venous susceptibility).
    .. [3] Chiang GC et al. Quantitative susceptibility mapping of the thalamus: relationships
       with thalamic volume, total gray matter volume, and T2 lesion burden. AJNR 2018;39:467-472.

    Examples
    --------
    >>> import numpy as np
    >>> chi = np.zeros((40, 40, 40), np.float32)
    >>> chi[19:21, 19:21, 5:35] = 0.4  # a paramagnetic tube along z
    >>> veins = vein_mask(chi, None, np.ones(chi.shape, bool), 1.0)
    >>> bool(veins[20, 20, 20]), bool(veins[5, 5, 20])
    (True, False)
    """
    chi = np.asarray(chi, dtype=np.float32)
    mask = np.asarray(mask).astype(bool)
    vs = _checks.voxel_size_mm(voxel_size)
    if chi.ndim != 3:
        raise InputError(f"chi must be a 3-D map, found shape {chi.shape}")
    if mask.shape != chi.shape:
        raise InputError(f"mask shape {mask.shape} differs from chi shape {chi.shape}")
    if not mask.any():
        raise InputError("mask is empty: no brain voxel to search for veins")
    if not np.all(np.isfinite(chi[mask])):
        raise InputError("chi has non-finite values inside the mask")
    if len(scales_mm) == 0 or min(scales_mm) <= 0:
        raise InputError(f"scales_mm must be positive sizes in mm, found {scales_mm}")

    grid = float(filter_voxel_mm) if filter_voxel_mm else max(float(vs.min()), min(scales_mm))
    if grid <= 0:
        raise InputError(f"filter_voxel_mm must be positive, found {filter_voxel_mm}")
    v_chi = _vesselness(chi, mask, vs, scales_mm, False, grid)
    tubular = v_chi >= vesselness_threshold
    if magnitude is not None:
        mag = np.asarray(magnitude, dtype=np.float32)
        if mag.shape != chi.shape:
            raise InputError(f"magnitude shape {mag.shape} differs from chi shape {chi.shape}")
        if not np.all(np.isfinite(mag[mask])):
            raise InputError("magnitude has non-finite values inside the mask")
        v_mag = _vesselness(mag, mask, vs, scales_mm, True, grid)
        tubular |= v_mag >= vesselness_threshold

    background = _local_background(chi, mask, vs, background_mm)
    paramagnetic = (chi - background) > chi_threshold_ppm
    veins = tubular & paramagnetic & mask

    # blob rejection: morphological opening of the (absolutely) paramagnetic voxels by a ball of
    # radius max_radius_mm; what survives the opening is too thick to be a vein
    para_abs = mask & ((chi - np.median(chi[mask])) > chi_threshold_ppm)
    if para_abs.any():
        core = depth_mm(para_abs, vs) > max_radius_mm
        if core.any():
            reach = max_radius_mm + 0.5 * float(vs.max())
            veins &= ~within_mm(core, reach, vs)

    if min_size_mm3 > 0 and veins.any():
        lab, n = ndimage.label(veins, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(lab.ravel())[1:] * float(np.prod(vs))
        keep = np.concatenate([[False], sizes >= min_size_mm3])
        veins = keep[lab]
    log.info("vein mask: %d voxels (%.2f mL)", int(veins.sum()), veins.sum() * np.prod(vs) / 1e3)
    return veins


def exclude_veins(
    roi_mask: np.ndarray,
    veins: np.ndarray,
    dilate_mm: float = 1.0,
    voxel_size: float | tuple[float, float, float] = 1.0,
) -> tuple[np.ndarray, float]:
    """Remove veins (grown by a margin) from a region of interest.

    Parameters
    ----------
    roi_mask : (X, Y, Z) array_like of bool
        Region of interest, e.g. a thalamus.
    veins : (X, Y, Z) array_like of bool
        Vein mask (e.g. from :func:`vein_mask`).
    dilate_mm : float, optional
        Margin grown around the veins before exclusion, mm (covers the partial-volume and
        blurring rim of a vein on QSM); 0 excludes the vein voxels only.
    voxel_size : float or sequence of 3 floats
        Voxel size in mm (the margin is Euclidean in mm, so anisotropic voxels are handled).

    Returns
    -------
    roi_without_veins : (X, Y, Z) ndarray of bool
        The region with the (grown) veins removed.
    fraction_excluded : float
        Fraction of the region's voxels removed (0 for an empty region).

    Raises
    ------
    InputError
        If the shapes differ or ``dilate_mm`` is negative.

    References
    ----------
    .. [1] Chiang GC et al. AJNR 2018;39:467-472 (major veins excluded from the thalamus ROI).

    Examples
    --------
    >>> import numpy as np
    >>> roi = np.zeros((10, 10, 10), bool); roi[2:8, 2:8, 2:8] = True
    >>> veins = np.zeros_like(roi); veins[5, 5, :] = True
    >>> kept, frac = exclude_veins(roi, veins, dilate_mm=0.0)
    >>> round(frac, 4)
    0.0278
    """
    roi = np.asarray(roi_mask).astype(bool)
    vn = np.asarray(veins).astype(bool)
    vs = _checks.voxel_size_mm(voxel_size)
    if roi.shape != vn.shape:
        raise InputError(f"roi_mask shape {roi.shape} differs from veins shape {vn.shape}")
    if dilate_mm < 0:
        raise InputError(f"dilate_mm must be >= 0, found {dilate_mm}")
    if dilate_mm > 0 and vn.any():
        grown = within_mm(vn, dilate_mm, vs)
    else:
        grown = vn
    kept = roi & ~grown
    n = int(roi.sum())
    frac = float((n - int(kept.sum())) / n) if n else 0.0
    log.info("vein exclusion: %.1f%% of %d ROI voxels removed", 100 * frac, n)
    return kept, frac
