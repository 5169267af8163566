"""Gadolinium-enhancing lesions from pre- and post-contrast T1w: foci found, counted per T2 lesion.

:func:`enhancing_lesions` takes the pre-contrast T1w, the post-gadolinium T1w *already
resampled onto the pre-contrast grid* (registration is :mod:`qsmiron.anatomy.register`'s job),
the T2 (FLAIR) lesion mask or labels on the same grid and a brain mask, and returns the
enhancing foci, the number of enhancing T2 lesions, a per-focus table and the reasons every
rejected candidate was rejected.

The steps and why each number is what it is (from principles and the literature, not fitted
to the test images)
-----------------------------------------------------------------------------------------------
1. **Tissue classes.** CSF / grey / white matter of the pre-contrast T1w by Otsu thresholds
   (Otsu 1979 [9]_): white matter above the Otsu threshold of the brain, CSF below the Otsu
   threshold of the darker part (two two-class splits: a three-class Otsu puts its extra
   threshold inside white matter when CSF is a small class, as at 2 mm). They are computed on
   the image divided by its smooth receive bias (normalised convolution of the white matter,
   Gaussian ``bias_sigma_mm = 30`` mm, as :mod:`qsmiron.anatomy.lesions` does for its T1w):
   a 15 % bias otherwise splits white matter in two. The subtraction itself needs no bias
   correction, pre and post sharing the coil.
2. **Intensity matching.** Receiver scaling may differ between the two series, so the model is
   ``post = gain * pre`` in tissue that does not enhance, and ``gain`` is the *median of the
   voxel ratio post / pre* over normal-appearing white matter (NAWM: white matter of a
   1-voxel-smoothed copy, so that voxel noise does not bias the selection, deeper than
   ``2 * surface_mm`` and outside every lesion zone). White matter is the most homogeneous
   tissue with the smallest blood volume (the least enhancement of any parenchyma); the median
   ignores the bright tail of its few vessels, and the ratio is free of the shared bias. The
   subtraction ``s = post / gain - pre`` (pre-contrast units) is then zero in non-enhancing
   tissue; unlike the post image it removes T1-bright tissue and shows enhancement of
   T1-dark lesions (Downs et al. 2013 [1]_).
3. **Noise and thresholds.** The noise SD of ``s`` is ``1.4826 * MAD`` of ``s`` over the brain
   deeper than ``surface_mm`` (Rousseeuw & Croux 1993 [2]_): enhancing voxels are a few per cent
   of the brain and do not move the median absolute deviation. A candidate is a 26-connected
   set of voxels above the *low* threshold holding at least one voxel above the *high* one
   (hysteresis, Canny 1986 [3]_):

   * high = max(``k_high`` SD, ``min_enhancement`` x local NAWM signal). ``k_high = 5``:
     one-sided Gaussian tail 2.9e-7, fewer than one false seed voxel in a whole 1 mm brain
     (~1.5 million voxels), a Bonferroni-type bound. ``min_enhancement = 0.2``: an effect-size
     floor, which rules at high SNR. Normal grey matter holds 4-6 % blood (Leenders et al.
     1990 [4]_), which at a standard dose raises its inversion-prepared T1w signal by at most
     ~0.1 of the NAWM signal (the simulator's signal equation with fast water exchange, an
     upper bound); 0.2 is twice that, so intravascular enhancement of normal parenchyma and
     small registration residuals never seed a focus. "Local NAWM signal" is the NAWM level
     times the bias at the voxel, so the floor is the same fraction of tissue signal
     everywhere.
   * low = max(``k_low`` SD, ``min_enhancement / 2`` x local NAWM). ``k_low = 3`` (one-sided
     0.13 %) grows seeds into their partial-volume rim, as in :mod:`qsmiron.anatomy.lesions`;
     the floor is the half maximum of the weakest acceptable focus.
4. **Lesion zones and pieces.** MS enhancement is the breakdown of the blood-brain barrier in a
   (new) lesion, which has a T2 correlate; radiology counts "Gd-enhancing lesions" (Filippi et
   al. 2016 [5]_). Each T2 lesion gets a zone: the voxels within ``margin_mm`` (default 2 mm,
   the residual of a FLAIR-to-T1w registration and the partial-volume edge of the T2 mask)
   plus one voxel (26-neighbourhood: the partial-volume rim of the enhancement itself); zones
   are split between lesions by nearest lesion. Candidates are cut at the zone boundary: the
   parts inside zones are *pieces*, judged below; the parts outside every zone are rejected as
   **non-lesional** (vessels, sinuses, dura, choroid plexus, pineal gland, ...: structures
   without a blood-brain barrier enhance normally, Smirniotopoulos et al. 2007 [6]_) and are
   only classified by shape for the diagnostics. Cutting matters: at 2 mm an enhancing
   periventricular lesion and a subependymal vein one voxel away are one connected component,
   which no whole-component shape test could judge.
5. **Context tests of every piece**, in this order:

   * **small**: volume below ``min_volume_mm3 = 10`` mm^3 (a sphere of 2.7 mm; MAGNIMS counts
     lesions of >= 3 mm [5]_).
   * **surface** (dura, meninges, cortical veins): every voxel within ``surface_mm = 3`` mm of
     the brain-mask boundary (one cortical thickness, ~2.5 mm, plus the skull-stripping
     edge). Pachymeningeal enhancement lies along the inner table, falx and tentorium [6]_.
   * **csf** (choroid plexus, intraventricular): more than ``csf_contact_max = 0.5`` of the
     piece's 1-voxel shell is CSF or outside the brain: the piece floats in fluid. A
     periventricular lesion touches the ventricle on one side only.
6. **Lesional evidence.** For each T2 lesion ``j`` a piece overlaps, ``A_j`` is the piece's
   voxels inside lesion ``j`` above the high threshold, split into 26-components; tubular
   components (below) are dropped. Lesion ``j`` enhances when the rest

   * covers at least ``lesion_fraction_min = 0.5`` of lesion ``j`` ("fraction"): a structure
     outside a convex lesion reaches into it by partial volume only through the boundary
     voxels on the side facing it, less than half the lesion; or
   * has an *interior* part ("interior"): voxels not 26-adjacent to any candidate voxel
     outside lesion ``j`` (no partial volume of a neighbouring vessel, plexus, dura or other
     lesion can explain them), forming a non-tubular blob of at least ``min_volume_mm3``
     and 3 voxels: a nodule or ring inside a large lesion. Components that are *intrusions*,
     connected to an enhancing structure outside the lesion that continues beyond every
     lesion zone (a voxel above the high threshold there), may be a vein, the plexus or the
     dura reaching into the lesion (or into a generously drawn T2 mask) and give no interior
     evidence.

   A piece without lesional evidence is rejected as **attached** (partial volume of a vessel,
   plexus or dura grazing the lesion) when its candidate continues outside every zone with a
   voxel above the high threshold; as **tubular** when it is elongated; otherwise it is a
   focus wholly contained next to the lesion (misregistration, or a T2 mask drawn slightly
   too small) and is accepted ("adjacent") for the lesion it overlaps most, or the nearest.
7. **Tubular shape.** Elongation = sqrt(largest / middle eigenvalue) of the covariance of the
   voxel positions in mm (inertia tensor; a voxel's own extent ``v^2 / 12`` is added to the
   diagonal); an ellipsoid gives its long/short axis ratio. MS lesions are ovoid with axis
   ratios of about 1.5-2.5 (Horowitz et al. 1989 [7]_), so ``elongation_max = 3`` marks a
   vessel. Frangi vesselness (used on QSM by :func:`qsmiron.anatomy.veins.vein_mask`) was
   tried on the subtraction image: its mean over the pieces did not separate 2-3 voxel wide
   lesions from 1-2 voxel wide veins at 2 mm, and cost ~8 s per 2 mm brain.
8. **Counting.** One count per enhancing *T2 lesion* (the radiological convention: a lesion
   with two enhancing foci, e.g. an open ring cut in two by the threshold, counts once); each
   focus is a row of the table with its T2 lesion id, and a piece that carries evidence for
   two lesions is split between them by nearest lesion. Those lesions count once: enhancing
   tissue is T2-hyperintense, so enhancement continuous across the gap between two T2
   components means the T2 segmentation cut one lesion in two (the one miss of the
   95-subject demo cohort: a 7.4 mL enhancing lesion among 97 mL of confluent T2 lesions came
   out as two and was counted twice; joining the T2 lesions that its saved foci touch makes
   all 95 counts exact). Enhancement not attached to a T2 lesion is not counted, so an
   enhancing lesion missing from the T2 mask is missed: the count is only as complete as the
   T2 lesion mask.

Focus extent and table
----------------------
A focus's voxels (``mask`` and ``labels``) are those of its piece at or above half its robust
peak (95th percentile of ``s``): the full-width-at-half-maximum boundary, so that a 2 mm
partial-volume rim does not inflate volumes. Table columns: ``focus``, ``t2_lesion``,
``volume_mm3``, ``centroid_i/j/k`` (voxel indices), ``relative_enhancement`` (sum of ``s`` over
sum of ``pre``: (post - pre) / pre of the focus, bias-free), ``enhancement_nawm`` (mean ``s`` /
local NAWM signal), ``cnr`` (mean ``s`` / noise SD) and ``evidence`` ("fraction", "interior"
or "adjacent").

Validation (tests/anatomy/test_enhancing.py) and known limits
--------------------------------------------------------------
* Simulated subjects (8 T2 lesions, 8 mL, 0-3 enhancing; veins and choroid plexus enhance;
  shared bias; Rician noise): the count is exact on all 19 subjects tried at 2 mm (seeds
  1-19) at structural SNR 100, 40, 20 and 10, and at SNR 100 with the T2 labels dilated by a
  full voxel (and, seeds 1-7, with half of their boundary voxels added or removed). A full
  one-voxel
  *erosion* at 2 mm was exact on 18 of 19: it left one 43-voxel enhancing lesion as a 4-voxel
  line, which reads as a vessel. Also exact on 4 subjects with 25 small lesions (5 mL, 6
  enhancing, down to 3 voxels at 2 mm), on 2 subjects at 1 mm and 2 at 1 x 1 x 2 mm (SNR 100
  and 40). The tests run 3 subjects. ~0.5 s per 2 mm brain, ~5 s per 1 mm brain.
* Fake T2 lesions next to every vein and the choroid plexus, or the whole vein / plexus
  labelled as a T2 lesion, make no count. But the method trusts the T2 mask: a T2 "lesion"
  that is a short *segment* of an enhancing vein (a FLAIR segmentation error) looks at 2 mm
  like an enhancing lesion touching that vein, and was counted in about half of such
  placements (4 mm balls of vein voxels). Veins of 2-5 mm crossing a lesion or running
  along its edge inside its mask are rejected (tubular, or an intrusion).
* Analytic head: an enhancing sphere is found with its volume (within 8 %) and enhancement,
  a nodule of 3 % of a large lesion is found on interior evidence, and veins through,
  beside, or inside the mask of non-enhancing lesions are rejected.
* The simulator's enhancing lesions are strong (about 1.5-2 x the NAWM signal); fainter real
  enhancement near the 0.2 floor, misregistration and real meningeal enhancement are not
  simulated.

References
----------
.. [1] Downs RK, Bashir MH, Ng CK, Heidenreich JO. Quantitative contrast ratio comparison
   between T1 (TSE at 1.5T, FLAIR at 3T), magnetization prepared rapid gradient echo and
   subtraction imaging at 1.5T and 3T. Quant Imaging Med Surg 2013;3:141-146.
.. [2] Rousseeuw PJ, Croux C. Alternatives to the median absolute deviation. J Am Stat Assoc
   1993;88:1273-1283.
.. [3] Canny J. A computational approach to edge detection. IEEE TPAMI 1986;8:679-698.
.. [4] Leenders KL, Perani D, Lammertsma AA, et al. Cerebral blood flow, blood volume and
   oxygen utilization. Normal values and effect of age. Brain 1990;113:27-47.
.. [5] Filippi M, Rocca MA, Ciccarelli O, et al. MRI criteria for the diagnosis of multiple
   sclerosis: MAGNIMS consensus guidelines. Lancet Neurol 2016;15:292-303.
.. [6] Smirniotopoulos JG, Murphy FM, Rushing EJ, Rees JH, Schroeder JW. Patterns of contrast
   enhancement in the brain and meninges. RadioGraphics 2007;27:525-551.
.. [7] Horowitz AL, Kaplan RD, Grewe G, White RT, Salberg LM. The ovoid lesion: a new MR
   observation in patients with multiple sclerosis. AJNR 1989;10:303-305.
.. [8] Coronado I, Gabr RE, Narayana PA. Deep learning segmentation of gadolinium-enhancing
   lesions in multiple sclerosis. Mult Scler 2021;27:519-527 (lesion-wise detection falls
   for enhancement volumes below ~70 mm^3, the regime of 2 mm data).
.. [9] Otsu N. A threshold selection method from gray-level histograms. IEEE Trans Syst Man
   Cybern 1979;9:62-66.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.filters import threshold_otsu

from qsmiron import _checks
from qsmiron._distance import depth_mm
from qsmiron._labels import per_label
from qsmiron.anatomy._smooth import robust_sd, smooth_ratio
from qsmiron.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["FOCUS_COLUMNS", "EnhancingResult", "enhancing_lesions"]

#: Columns of :attr:`EnhancingResult.foci`, in order.
FOCUS_COLUMNS: tuple[str, ...] = (
    "focus",
    "t2_lesion",
    "volume_mm3",
    "centroid_i",
    "centroid_j",
    "centroid_k",
    "relative_enhancement",
    "enhancement_nawm",
    "cnr",
    "evidence",
)

_S26 = np.ones((3, 3, 3), dtype=bool)
_S6 = ndi.generate_binary_structure(3, 1)


@dataclass
class EnhancingResult:
    """Output of :func:`enhancing_lesions`.

    Attributes
    ----------
    mask : (X, Y, Z) bool
        Voxels of the counted enhancing foci (half-maximum extent).
    labels : (X, Y, Z) int32
        Focus labels 1..n_foci (the ``focus`` column of ``foci``), 0 elsewhere.
    count : int
        Number of enhancing lesions: one per enhancing T2 lesion, however many foci it holds;
        T2 lesions joined by one continuous enhancing piece count once (listed in
        ``diagnostics["joined_lesions"]``).
    foci : pandas.DataFrame
        One row per focus, columns :data:`FOCUS_COLUMNS`: volume (mm^3), centroid (voxel
        indices), relative enhancement, enhancement in NAWM units, CNR, the T2 lesion id it
        belongs to and the evidence that made it lesional.
    enhancing_lesion_ids : tuple of int
        The T2 lesion labels counted as enhancing (ascending).
    subtraction : (X, Y, Z) float32
        ``post / gain - pre`` inside the brain (pre-contrast intensity units), 0 outside: the
        image to show a radiologist.
    diagnostics : dict
        Gain, NAWM level, noise SD, thresholds, tissue thresholds, numbers of candidates and
        pieces, rejected pieces and non-lesional candidates by reason, per-lesion evidence.
    """

    mask: np.ndarray
    labels: np.ndarray
    count: int
    foci: pd.DataFrame
    enhancing_lesion_ids: tuple[int, ...]
    subtraction: np.ndarray
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def n_foci(self) -> int:
        """Number of enhancing foci (rows of :attr:`foci`)."""
        return int(len(self.foci))


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _image(img: Any, name: str, shape: tuple[int, ...] | None) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim != 3:
        raise InputError(f"{name} must be a 3D image, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise InputError(
            f"{name} has shape {arr.shape}, expected {shape} (the pre-contrast T1w grid: "
            "register and resample it first)"
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise InputError(f"{name} must be a real numeric image, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def _brain(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise InputError(f"brain_mask has shape {m.shape}, expected {shape} (the T1w grid)")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number) or not np.all(np.isfinite(m)):
            raise InputError("brain_mask must be boolean or numeric without NaN")
        m = m > 0.5
    if not m.any():
        raise InputError("brain_mask is empty: no voxel inside the brain")
    return m


def _lesion_labels(t2: Any, shape: tuple[int, ...]) -> np.ndarray:
    """T2 lesion instance labels (int32): a boolean/0-1 mask is split into 26-components."""
    a = np.asarray(t2)
    if a.shape != shape:
        raise InputError(f"t2_lesions has shape {a.shape}, expected {shape} (the T1w grid)")
    if a.dtype == bool:
        lab, _ = ndi.label(a, structure=_S26)
        return lab.astype(np.int32)
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(f"t2_lesions must be a mask or integer labels, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise InputError("t2_lesions contains NaN or infinite values")
    if np.any(a < 0):
        raise InputError("t2_lesions has negative values: expected a mask or labels 0..n")
    if not np.all(a == np.round(a)):
        raise InputError(
            "t2_lesions has non-integer values: pass a boolean mask or integer lesion labels "
            "(threshold a probability map first)"
        )
    if a.max() > np.iinfo(np.int32).max:
        raise InputError("t2_lesions labels exceed the int32 range")
    ai = a.astype(np.int32)
    if ai.max() <= 1:
        lab, _ = ndi.label(ai > 0, structure=_S26)
        return lab.astype(np.int32)
    return ai


def _pad(sl: tuple[slice, ...], shape: tuple[int, ...], k: int = 1) -> tuple[slice, ...]:
    return tuple(
        slice(max(s.start - k, 0), min(s.stop + k, n)) for s, n in zip(sl, shape, strict=True)
    )


def _tissue_classes(
    pre: np.ndarray, brain: np.ndarray, vs: np.ndarray, bias_sigma_mm: float
) -> tuple[np.ndarray, float, float]:
    """Smooth receive bias of the pre-contrast T1w and its CSF / WM thresholds after removal.

    White matter is above the Otsu threshold of the brain, CSF below the Otsu threshold of the
    darker voxels (two two-class splits; a three-class Otsu splits white matter when CSF is a
    small class). Intensity classes are only meaningful on a flat image: a 15 % bias splits
    white matter in two. The bias is estimated by normalised convolution, first from all
    tissue (above the CSF threshold), then twice from white matter of the flattened image, and
    normalised to a median of 1 in white matter (as
    :func:`qsmiron.anatomy.lesions.segment_lesions` does for its T1w).
    """
    def otsu(img: np.ndarray) -> tuple[float, float]:
        v = img[brain]
        if not v.max() > v.min():
            raise ValueError("constant image")
        wm_th = float(threshold_otsu(v))  # dark (CSF and GM) | white matter
        dark = v[v < wm_th]
        if dark.size < 2 or not dark.max() > dark.min():
            raise ValueError("no dark class")
        csf_th = float(threshold_otsu(dark))  # CSF | GM
        return csf_th, wm_th

    def field(weight: np.ndarray) -> np.ndarray:
        if np.count_nonzero(weight) < 100:
            raise ValueError("too few voxels for a bias field")
        b = smooth_ratio(pre * weight, weight, bias_sigma_mm, vs)
        b = np.where(b > 0, b, 1.0)
        return (b / max(float(np.median(b[weight])), 1e-12)).astype(np.float32)

    try:
        csf_th, _ = otsu(pre)
        bias = field(brain & (pre > csf_th))  # all tissue first
        for _ in range(2):  # then white matter of the flattened image
            _, wm_th = otsu(pre / bias)
            bias = field(brain & (pre / bias > wm_th))
        csf_th, wm_th = otsu(pre / bias)
    except ValueError:
        raise InputError(
            "t1w_pre has too little contrast inside the brain mask to separate CSF, grey and "
            "white matter"
        ) from None
    return bias.astype(np.float32), csf_th, wm_th


# --------------------------------------------------------------------------------------------
# shape and context of labelled components (vectorised over labels)
# --------------------------------------------------------------------------------------------
def _elongation(lab: np.ndarray, n: int, vs: np.ndarray) -> np.ndarray:
    """sqrt(largest / middle eigenvalue) of each component's position covariance (mm^2)."""
    if n == 0:
        return np.zeros(0)
    idx = np.nonzero(lab)
    lv = lab[idx]
    cnt = np.bincount(lv, minlength=n + 1)[1:].astype(np.float64)
    cnt = np.maximum(cnt, 1.0)
    xyz = [i.astype(np.float64) * v for i, v in zip(idx, vs, strict=True)]
    mean = [np.bincount(lv, weights=x, minlength=n + 1)[1:] / cnt for x in xyz]
    cov = np.zeros((n, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            m = np.bincount(lv, weights=xyz[a] * xyz[b], minlength=n + 1)[1:] / cnt
            cov[:, a, b] = cov[:, b, a] = m - mean[a] * mean[b]
        cov[:, a, a] += vs[a] ** 2 / 12.0  # each voxel's own extent
    ev = np.linalg.eigvalsh(cov)  # ascending
    return np.sqrt(np.maximum(ev[:, 2], 1e-12) / np.maximum(ev[:, 1], 1e-12))


def _features(
    lab: np.ndarray, n: int, vs: np.ndarray, depth: np.ndarray, fluid: np.ndarray
) -> dict[str, np.ndarray]:
    """Volume (mm^3), largest depth (mm), CSF contact of the 1-voxel shell, elongation."""
    if n == 0:
        z = np.zeros(0)
        return {"volume_mm3": z, "max_depth": z, "csf_contact": z, "elongation": z}
    size = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.float64)
    max_depth = per_label(ndi.maximum, depth, lab, np.arange(1, n + 1))
    shell_lab = ndi.grey_dilation(lab, footprint=_S6)
    shell = (shell_lab > 0) & (lab == 0)
    s_size = np.bincount(shell_lab[shell], minlength=n + 1)[1:].astype(np.float64)
    s_fluid = np.bincount(shell_lab[shell & fluid], minlength=n + 1)[1:].astype(np.float64)
    return {
        "volume_mm3": size * float(np.prod(vs)),
        "max_depth": max_depth,
        "csf_contact": s_fluid / np.maximum(s_size, 1.0),
        "elongation": _elongation(lab, n, vs),
    }


def _lesion_evidence(
    piece: np.ndarray,
    t2b: np.ndarray,
    j: int,
    strong_b: np.ndarray,
    cand_b: np.ndarray,
    beyond_b: np.ndarray,
    core_b: np.ndarray,
    vs: np.ndarray,
    core_voxels: int,
    lesion_fraction_min: float,
    elongation_max: float,
    min_interior_mm3: float,
) -> tuple[str | None, dict[str, Any]]:
    """Does T2 lesion ``j`` enhance by itself? (``"fraction"``, ``"interior"`` or None).

    ``A_j`` (the piece's strong voxels inside lesion ``j``) is split into 26-components and
    tubular ones (elongation >= ``elongation_max``, 3 voxels or more) are discarded. The rest
    is evidence when it covers ``lesion_fraction_min`` of the lesion ("fraction"). Otherwise a
    component counts when part of it is interior (not 26-adjacent to any candidate voxel
    outside the lesion), that part being a non-tubular blob of at least ``min_interior_mm3``
    (and 3 voxels), and the component is not an *intrusion*: connected to an enhancing
    structure outside the lesion that has strong voxels beyond every lesion zone
    (``beyond_b``), i.e. a vein, plexus or dura reaching into the lesion ("interior").
    """
    vox = float(np.prod(vs))
    a_j = piece & (t2b == j) & strong_b
    foreign = cand_b & (t2b != j)
    a_lab, n_a = ndi.label(a_j, structure=_S26)
    sizes = np.bincount(a_lab.ravel(), minlength=n_a + 1)
    elong = np.concatenate([[0.0], _elongation(a_lab, n_a, vs)])
    tubular = (sizes >= 3) & (elong >= elongation_max)
    tubular[0] = False
    own = (a_lab > 0) & ~tubular[a_lab]
    frac = float(np.count_nonzero(own & (core_b == j))) / max(core_voxels, 1)
    interior = own & ~ndi.binary_dilation(foreign, structure=_S26)
    why = None
    n_intrusion = 0
    if frac >= lesion_fraction_min:
        why = "fraction"
    elif interior.any():
        f_lab, n_f = ndi.label(foreign, structure=_S26)
        f_beyond = np.bincount(f_lab[foreign & beyond_b], minlength=n_f + 1) > 0
        f_beyond[0] = False
        for c in np.unique(a_lab[interior]):
            comp_c = a_lab == c
            touch = np.unique(f_lab[ndi.binary_dilation(comp_c, structure=_S26) & foreign])
            if np.any(f_beyond[touch]):
                n_intrusion += 1
                continue
            i_lab, n_i = ndi.label(interior & comp_c, structure=_S26)
            i_size = np.bincount(i_lab.ravel(), minlength=n_i + 1)[1:]
            i_el = _elongation(i_lab, n_i, vs)
            big = (i_size >= 3) & (i_size * vox >= min_interior_mm3)
            if np.any(big & (i_el < elongation_max)):
                why = "interior"
                break
    info = {
        "enhancing_fraction": round(frac, 4),
        "interior_voxels": int(np.count_nonzero(interior)),
        "tubular_parts": int(np.count_nonzero(tubular)),
        "intrusions": n_intrusion,
        "evidence": why,
    }
    return why, info


def _join(ids: tuple[int, ...], links: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Groups of the lesions ``ids`` that ``links`` (tuples of lesions) connect, in order."""
    if not ids:
        return []
    index = {j: k for k, j in enumerate(ids)}
    rows: list[int] = []
    cols: list[int] = []
    for link in links:
        present = [index[j] for j in link if j in index]
        rows += present[:1] * (len(present) - 1)
        cols += present[1:]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), len(ids)))
    _, comp = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for j, c in zip(ids, comp, strict=True):
        groups.setdefault(int(c), []).append(j)
    return sorted(tuple(g) for g in groups.values())


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def enhancing_lesions(
    t1w_pre: np.ndarray,
    t1w_post: np.ndarray,
    t2_lesions: np.ndarray,
    brain_mask: np.ndarray,
    voxel_size: Any,
    *,
    margin_mm: float = 2.0,
    k_high: float = 5.0,
    k_low: float = 3.0,
    min_enhancement: float = 0.2,
    min_volume_mm3: float = 10.0,
    lesion_fraction_min: float = 0.5,
    elongation_max: float = 3.0,
    surface_mm: float = 3.0,
    csf_contact_max: float = 0.5,
    gain: float | None = None,
    bias_sigma_mm: float = 30.0,
) -> EnhancingResult:
    """Find gadolinium-enhancing foci and count the enhancing T2 lesions.

    See the module docstring for the rationale of every step and default.

    Parameters
    ----------
    t1w_pre : (X, Y, Z) array
        Pre-contrast T1w (magnitude).
    t1w_post : (X, Y, Z) array
        Post-gadolinium T1w, registered and resampled to the pre-contrast grid.
    t2_lesions : (X, Y, Z) array
        T2/FLAIR lesions on the same grid: integer instance labels (0 background, 1..n), or a
        boolean / 0-1 mask, which is split into 26-connected lesions.
    brain_mask : (X, Y, Z) bool
        Brain (parenchyma and intracranial CSF) on the same grid.
    voxel_size : float or sequence of 3 float
        Voxel size in mm.
    margin_mm : float
        Enhancement within this distance of a T2 lesion belongs to it (registration residual
        and T2-mask edge); one more voxel is added for the partial-volume rim.
    k_high, k_low : float
        Seed and growth thresholds of the hysteresis, in noise SDs of the subtraction image.
    min_enhancement : float
        Effect-size floor of the seeds, as a fraction of the NAWM pre-contrast signal (the
        growth floor is half of it).
    min_volume_mm3 : float
        Smallest focus (piece) kept.
    lesion_fraction_min : float
        Fraction of a T2 lesion's voxels that must enhance for the lesion to enhance without
        interior evidence (a grazing structure reaches less than half a convex lesion).
    elongation_max : float
        Enhancing parts at least this elongated (inertia axis ratio) are vessels.
    surface_mm : float
        Pieces lying entirely within this distance of the brain boundary are dura/meninges.
    csf_contact_max : float
        Largest fraction of a piece's 1-voxel shell that may be CSF (choroid plexus test).
    gain : float, optional
        Known scale of post relative to pre; estimated from NAWM when None.
    bias_sigma_mm : float
        Smoothness (Gaussian SD) of the receive bias estimated from the pre-contrast T1w for
        the tissue classes and the local NAWM level (the subtraction itself needs no bias
        correction: pre and post share it).

    Returns
    -------
    EnhancingResult
        Foci mask and labels, count of enhancing T2 lesions, per-focus table, subtraction
        image and diagnostics.

    Raises
    ------
    InputError
        Images not 3D or of different shapes, NaNs, an empty brain mask, a non-positive voxel
        size, a post (or pre) image that is zero in the brain, too little tissue contrast to
        find white matter, or parameters out of range.

    References
    ----------
    .. [1] Downs RK et al. Subtraction imaging at 1.5T and 3T. QIMS 2013;3:141-146.
    .. [2] Filippi M et al. MAGNIMS consensus guidelines. Lancet Neurol 2016;15:292-303.
    .. [3] Smirniotopoulos JG et al. Patterns of contrast enhancement in the brain and
       meninges. RadioGraphics 2007;27:525-551.

    Examples
    --------
    >>> res = enhancing_lesions(t1, t1_gd_reg, lesions, brain, (1, 1, 1))  # doctest: +SKIP
    >>> res.count, res.foci[["t2_lesion", "volume_mm3"]]  # doctest: +SKIP
    """
    vs = _checks.voxel_size_mm(voxel_size)
    pre_full = _image(t1w_pre, "t1w_pre", None)
    shape = pre_full.shape
    post_full = _image(t1w_post, "t1w_post", shape)
    brain_full = _brain(brain_mask, shape)
    t2_full = _lesion_labels(t2_lesions, shape)
    for name, val, ok, rule in (
        ("margin_mm", margin_mm, margin_mm >= 0, ">= 0"),
        ("k_low", k_low, k_low > 0, "> 0"),
        ("k_high", k_high, k_high >= k_low, ">= k_low"),
        ("min_enhancement", min_enhancement, min_enhancement >= 0, ">= 0"),
        ("min_volume_mm3", min_volume_mm3, min_volume_mm3 >= 0, ">= 0"),
        ("lesion_fraction_min", lesion_fraction_min, 0 < lesion_fraction_min <= 1, "in (0, 1]"),
        ("elongation_max", elongation_max, elongation_max > 1, "> 1"),
        ("surface_mm", surface_mm, surface_mm >= 0, ">= 0"),
        ("csf_contact_max", csf_contact_max, 0 <= csf_contact_max <= 1, "in [0, 1]"),
        ("bias_sigma_mm", bias_sigma_mm, bias_sigma_mm > 0, "> 0"),
    ):
        if not (np.isfinite(val) and ok):
            raise InputError(f"{name} must be {rule}, got {val!r}")
    if not np.any(post_full[brain_full]):
        raise InputError("t1w_post is zero everywhere inside the brain mask: no post-contrast data")
    if not np.any(pre_full[brain_full]):
        raise InputError("t1w_pre is zero everywhere inside the brain mask: no pre-contrast data")
    if gain is not None and not (np.isfinite(gain) and gain > 0):
        raise InputError(f"gain must be a positive number, got {gain!r}")

    # ---- crop to the brain ---------------------------------------------------------------------
    sl = _checks.bounding_box(brain_full, margin=2)
    off = np.array([s.start for s in sl])
    pre = pre_full[sl]
    post = post_full[sl]
    brain = brain_full[sl]
    t2 = np.where(brain, t2_full[sl], 0).astype(np.int32)
    vox_mm3 = float(np.prod(vs))
    # depth below the brain surface, mm (padded: a mask touching the array edge ends there)
    depth = depth_mm(np.pad(brain, 1), vs)[1:-1, 1:-1, 1:-1]

    # ---- tissue classes of the (bias-flattened) pre-contrast T1w ----------------------------
    bias, csf_th, wm_th = _tissue_classes(pre, brain, vs, bias_sigma_mm)
    flat = pre / bias
    fluid = (flat < csf_th) | ~brain  # CSF (darkest class) or outside the brain

    # ---- T2 lesion zones (nearest lesion within margin_mm, plus one voxel) -----------------
    n_les = int(t2.max())
    lesion_size = np.bincount(t2.ravel(), minlength=n_les + 1)
    if n_les:
        dl, ind = ndi.distance_transform_edt(t2 == 0, sampling=vs, return_indices=True)
        near = t2[tuple(ind)]
        del ind
        near[dl > margin_mm] = 0
        near = np.where(near > 0, near, ndi.grey_dilation(near, footprint=_S26))
        near[~brain] = 0
    else:
        near = np.zeros(pre.shape, np.int32)
    zone = near > 0
    # lesion cores: voxels whose 6 neighbours belong to the same lesion (the T2 mask's outer
    # voxel layer is its least certain part); a lesion without core is its own core
    core = np.where(
        (t2 > 0) & (ndi.grey_erosion(t2, footprint=_S6) == t2)
        & (ndi.grey_dilation(t2, footprint=_S6) == t2), t2, 0
    )
    core_size = np.bincount(core.ravel(), minlength=n_les + 1)
    coreless = (core_size == 0) & (lesion_size > 0)
    coreless[0] = False
    if coreless.any():
        core = np.where(coreless[t2], t2, core)
        core_size = np.bincount(core.ravel(), minlength=n_les + 1)

    # ---- intensity matching over NAWM -----------------------------------------------------------
    flat_smooth = ndi.gaussian_filter(flat, 1.0)
    ref = brain & (flat_smooth >= wm_th) & (depth > 2.0 * surface_mm) & ~zone & (pre > 0)
    if np.count_nonzero(ref) < 100:  # small or odd images: all non-CSF brain away from lesions
        ref = brain & (flat_smooth >= csf_th) & ~zone & (pre > 0)
    if np.count_nonzero(ref) < 100:
        raise InputError(
            f"only {np.count_nonzero(ref)} normal white-matter voxels to match post to pre: "
            "check the brain mask and the T1w images"
        )
    if gain is None:
        gain = float(np.median(post[ref] / pre[ref]))
        if not (np.isfinite(gain) and gain > 0):
            raise InputError(
                f"t1w_post / t1w_pre in normal white matter has median {gain}: the post-contrast "
                "image has no signal where the pre-contrast image has"
            )
    nawm = float(np.median(flat[ref]))  # NAWM signal of the flattened image
    nawm_local = (nawm * bias).astype(np.float32)  # NAWM signal where each voxel is
    s = np.where(brain, post / np.float32(gain) - pre, 0.0).astype(np.float32)

    # ---- noise and thresholds ------------------------------------------------------------------
    noise_region = brain & (depth > surface_mm)
    if np.count_nonzero(noise_region) < 100:
        noise_region = brain
    vals = s[noise_region]
    sd = robust_sd(vals)
    if not sd > 0:
        sd = float(np.std(vals))
        log.warning("subtraction image has zero MAD (noise-free data?); using its SD %.3g", sd)
    tiny = float(np.finfo(np.float32).tiny)  # identical noise-free images: nothing enhances
    th_high = np.maximum(max(k_high * sd, tiny), min_enhancement * nawm_local)
    th_low = np.maximum(max(k_low * sd, tiny), 0.5 * min_enhancement * nawm_local)
    diag: dict[str, Any] = {
        "gain": float(gain),
        "nawm_level": nawm,
        "noise_sd": sd,
        "threshold_high_sd": float(k_high * sd),
        "threshold_low_sd": float(k_low * sd),
        "threshold_high_floor": float(min_enhancement * nawm),
        "bias_range": (float(np.min(bias[brain])), float(np.max(bias[brain]))),
        "csf_threshold": csf_th,
        "wm_threshold": wm_th,
        "n_t2_lesions": int(np.count_nonzero(lesion_size[1:])),
        "margin_mm": float(margin_mm),
    }

    # ---- candidates: 26-connected hysteresis ---------------------------------------------------
    low = brain & (s > th_low)
    comp, n_comp = ndi.label(low, structure=_S26)
    strong_any = low & (s >= th_high)
    seeded = np.bincount(comp[strong_any], minlength=n_comp + 1) > 0
    seeded[0] = False
    cand = seeded[comp]
    comp = np.where(cand, comp, 0)
    strong = cand & (s >= th_high)
    diag["n_candidates"] = int(np.count_nonzero(seeded))
    strong_outside = np.bincount(comp[strong & ~zone], minlength=n_comp + 1)

    # ---- non-lesional candidates (outside every zone): classified for the record ---------------
    out_lab, n_out = ndi.label(cand & ~zone, structure=_S26)
    fo = _features(out_lab, n_out, vs, depth, fluid)
    big = fo["volume_mm3"] >= min_volume_mm3
    surf_o = big & (fo["max_depth"] <= surface_mm)
    csf_o = big & ~surf_o & (fo["csf_contact"] > csf_contact_max)
    tub_o = big & ~surf_o & ~csf_o & (fo["elongation"] >= elongation_max)
    diag["non_lesional"] = {
        "total": int(n_out),
        "small": int((~big).sum()),
        "surface": int(surf_o.sum()),
        "csf": int(csf_o.sum()),
        "tubular": int(tub_o.sum()),
        "other": int((big & ~surf_o & ~csf_o & ~tub_o).sum()),
    }

    # ---- pieces inside the lesion zones ----------------------------------------------------------
    pieces, n_p = ndi.label(cand & zone, structure=_S26)
    fp = _features(pieces, n_p, vs, depth, fluid)
    objs = ndi.find_objects(pieces)
    rejected = {"small": 0, "surface": 0, "csf": 0, "tubular": 0, "attached": 0}
    evidence_log: dict[int, dict[str, Any]] = {}
    foci: list[tuple[np.ndarray, tuple[slice, ...], int, str]] = []  # (mask, box, lesion, why)
    joined: list[tuple[int, ...]] = []  # T2 lesions one enhancing piece carries evidence for
    for k in range(1, n_p + 1):
        box = _pad(objs[k - 1], pieces.shape, 1)
        p = pieces[box] == k
        i = k - 1
        if fp["volume_mm3"][i] < min_volume_mm3:
            rejected["small"] += 1
            continue
        if fp["max_depth"][i] <= surface_mm:
            rejected["surface"] += 1
            continue
        if fp["csf_contact"][i] > csf_contact_max:
            rejected["csf"] += 1
            continue
        t2b = t2[box]
        strong_b = strong[box]
        cand_b = cand[box]
        beyond_b = strong_b & ~zone[box]
        overlapped = np.unique(t2b[p & (t2b > 0)])
        accepted: dict[int, str] = {}
        for j in (int(x) for x in overlapped):
            why, info = _lesion_evidence(
                p, t2b, j, strong_b, cand_b, beyond_b, core[box], vs, int(core_size[j]),
                lesion_fraction_min, elongation_max, min_volume_mm3,
            )
            if why or not (evidence_log.get(j) or {}).get("evidence"):
                evidence_log[j] = info  # keep the piece that made the lesion enhance
            if why:
                accepted[j] = why
        if not accepted:
            parent = int(comp[box][p][0])
            if strong_outside[parent] > 0:
                rejected["attached"] += 1
                continue
            if fp["elongation"][i] >= elongation_max:
                rejected["tubular"] += 1
                continue
            if overlapped.size:
                counts = [np.count_nonzero(p & (t2b == j)) for j in overlapped]
                j = int(overlapped[int(np.argmax(counts))])
            else:
                nb = near[box][p]
                j = int(np.bincount(nb[nb > 0]).argmax())
            accepted[j] = "adjacent"
        if len(accepted) == 1:
            (j, why), = accepted.items()
            foci.append((p, box, j, why))
        else:  # enhancement of several lesions merged: split by nearest accepted lesion
            ids = np.array(sorted(accepted))
            joined.append(tuple(int(j) for j in ids))
            _, idx = ndi.distance_transform_edt(
                ~np.isin(t2b, ids), sampling=vs, return_indices=True
            )
            owner = t2b[tuple(idx)]
            for j in ids:
                part = p & (owner == j)
                if part.any():
                    foci.append((part, box, int(j), accepted[int(j)]))
    diag["n_pieces"] = int(n_p)
    diag["rejected"] = rejected
    diag["lesion_evidence"] = evidence_log

    # ---- focus extent (half maximum), table, outputs -------------------------------------------
    labels = np.zeros(pre.shape, np.int32)
    rows = []
    for f_id, (part, box, j, why) in enumerate(foci, start=1):
        vals_f = s[box][part]
        peak = float(np.percentile(vals_f, 95))
        fm = part & (s[box] >= 0.5 * peak)
        lb = labels[box]
        lb[fm & (lb == 0)] = f_id
        vi = np.argwhere(fm) + np.array([b.start for b in box]) + off
        s_f = s[box][fm].astype(np.float64)
        pre_f = pre[box][fm].astype(np.float64)
        rows.append(
            {
                "focus": f_id,
                "t2_lesion": int(j),
                "volume_mm3": float(np.count_nonzero(fm) * vox_mm3),
                "centroid_i": float(vi[:, 0].mean()),
                "centroid_j": float(vi[:, 1].mean()),
                "centroid_k": float(vi[:, 2].mean()),
                "relative_enhancement": float(s_f.sum() / max(pre_f.sum(), 1e-12)),
                "enhancement_nawm": float(np.mean(s_f / nawm_local[box][fm])),
                "cnr": float(s_f.mean() / sd) if sd > 0 else float("inf"),
                "evidence": why,
            }
        )
    table = pd.DataFrame(rows, columns=list(FOCUS_COLUMNS))
    ids = tuple(sorted({int(r["t2_lesion"]) for r in rows}))
    groups = _join(ids, joined)
    diag["n_foci"] = len(rows)
    diag["joined_lesions"] = [g for g in groups if len(g) > 1]
    diag["n_enhancing_t2_lesions"] = len(ids)  # T2 lesions with foci, before joining

    labels_full = np.zeros(shape, np.int32)
    labels_full[sl] = labels
    sub_full = np.zeros(shape, np.float32)
    sub_full[sl] = s
    log.info(
        "enhancing lesions: %d (foci %d; gain %.4g, noise SD %.3g, high threshold %.3g = "
        "%.2f x NAWM; %d pieces rejected, %d non-lesional candidates)",
        len(groups),
        len(rows),
        gain,
        sd,
        max(k_high * sd, min_enhancement * nawm),
        max(k_high * sd, min_enhancement * nawm) / nawm if nawm > 0 else float("nan"),
        sum(rejected.values()),
        n_out,
    )
    return EnhancingResult(
        mask=labels_full > 0,
        labels=labels_full,
        count=len(groups),
        foci=table,
        enhancing_lesion_ids=ids,
        subtraction=sub_full,
        diagnostics=diag,
    )
