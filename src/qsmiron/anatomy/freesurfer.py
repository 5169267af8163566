"""Bring-your-own segmentation: FreeSurfer, FastSurfer and SynthSeg outputs.

A user who already ran FreeSurfer (5.x, 6 or 7), FastSurfer or SynthSeg can hand its output to
qsmiron instead of (or to check) the built-in anatomy. This module reads

* the label map: ``aseg.mgz``, ``aparc+aseg.mgz`` (FreeSurfer), ``aparc.DKTatlas+aseg.deep.mgz``
  (FastSurfer) or a SynthSeg ``.nii``/``.nii.gz``. All of them use FreeSurfer's aseg numbering
  (:data:`ASEG_LABELS`; left thalamus 10, right thalamus 49, lateral ventricles 4/43, ...). The
  MGH vox2ras affine is scanner RAS, as a NIfTI affine, and is kept as it is;
* ``stats/aseg.stats`` (``mri_segstats``): the ``# Measure`` header lines (TotalGrayVol, eTIV,
  BrainSegVol, ...) and the segmentation table (SegId, NVoxels, Volume_mm3, StructName);
* ``stats/?h.aparc*.stats`` (``mris_anatomical_stats``): MeanThickness, WhiteSurfArea, NumVert
  and the per-region thickness;
* SynthSeg's ``--vol`` CSV (mm^3 per structure).

Every number of the study's structural side comes out of :func:`read_freesurfer_subject` or
:func:`read_synthseg` as one :class:`ExternalSegmentation`: thalamus volume (left, right), total
grey-matter volume, mean cortical thickness, intracranial volume, together with the files read
and where each number came from (``origin``), so that a result that overrides the built-in one
is traceable in the provenance.

Label numbers, not names, identify structures: FreeSurfer < 7 calls label 10
``Left-Thalamus-Proper`` and FreeSurfer 7 calls it ``Left-Thalamus``, while in FreeSurfer < 7
the name ``Left-Thalamus`` belonged to the unused label 9.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
from nibabel.freesurfer.mghformat import MGHError

from qsmiron.errors import InputError
from qsmiron.io.nifti import voxel_size as affine_voxel_size

__all__ = [
    "ASEG_KEYS",
    "ASEG_LABELS",
    "TISSUE_CLASSES",
    "AparcStats",
    "AsegLabel",
    "AsegStats",
    "ExternalSegmentation",
    "StatsMeasure",
    "gray_matter_volumes_ml",
    "label_masks",
    "load_label_map",
    "mean_cortical_thickness",
    "read_aparc_stats",
    "read_aseg_stats",
    "read_freesurfer_subject",
    "read_synthseg",
    "read_synthseg_volumes",
    "structure_volumes_ml",
]

log = logging.getLogger(__name__)


class AsegLabel(NamedTuple):
    """One entry of the aseg label table.

    Attributes
    ----------
    key : str
        qsmiron's name for the structure (snake case, side last), used for masks and columns.
    name : str
        FreeSurfer 7 name (``FreeSurferColorLUT.txt``).
    """

    key: str
    name: str


# fmt: off
#: The aseg label scheme (FreeSurferColorLUT numbers), qsmiron's output label scheme too:
#: label number -> (qsmiron key, FreeSurfer 7 name).
ASEG_LABELS: dict[int, AsegLabel] = {
    0:   AsegLabel("unknown",                          "Unknown"),
    2:   AsegLabel("cerebral_white_matter_left",       "Left-Cerebral-White-Matter"),
    3:   AsegLabel("cortex_left",                      "Left-Cerebral-Cortex"),
    4:   AsegLabel("lateral_ventricle_left",           "Left-Lateral-Ventricle"),
    5:   AsegLabel("inferior_lateral_ventricle_left",  "Left-Inf-Lat-Vent"),
    7:   AsegLabel("cerebellum_white_matter_left",     "Left-Cerebellum-White-Matter"),
    8:   AsegLabel("cerebellum_cortex_left",           "Left-Cerebellum-Cortex"),
    10:  AsegLabel("thalamus_left",                    "Left-Thalamus"),
    11:  AsegLabel("caudate_left",                     "Left-Caudate"),
    12:  AsegLabel("putamen_left",                     "Left-Putamen"),
    13:  AsegLabel("pallidum_left",                    "Left-Pallidum"),
    14:  AsegLabel("third_ventricle",                  "3rd-Ventricle"),
    15:  AsegLabel("fourth_ventricle",                 "4th-Ventricle"),
    16:  AsegLabel("brainstem",                        "Brain-Stem"),
    17:  AsegLabel("hippocampus_left",                 "Left-Hippocampus"),
    18:  AsegLabel("amygdala_left",                    "Left-Amygdala"),
    24:  AsegLabel("csf",                              "CSF"),
    26:  AsegLabel("accumbens_left",                   "Left-Accumbens-area"),
    28:  AsegLabel("ventral_dc_left",                  "Left-VentralDC"),
    30:  AsegLabel("vessel_left",                      "Left-vessel"),
    31:  AsegLabel("choroid_plexus_left",              "Left-choroid-plexus"),
    41:  AsegLabel("cerebral_white_matter_right",      "Right-Cerebral-White-Matter"),
    42:  AsegLabel("cortex_right",                     "Right-Cerebral-Cortex"),
    43:  AsegLabel("lateral_ventricle_right",          "Right-Lateral-Ventricle"),
    44:  AsegLabel("inferior_lateral_ventricle_right", "Right-Inf-Lat-Vent"),
    46:  AsegLabel("cerebellum_white_matter_right",    "Right-Cerebellum-White-Matter"),
    47:  AsegLabel("cerebellum_cortex_right",          "Right-Cerebellum-Cortex"),
    49:  AsegLabel("thalamus_right",                   "Right-Thalamus"),
    50:  AsegLabel("caudate_right",                    "Right-Caudate"),
    51:  AsegLabel("putamen_right",                    "Right-Putamen"),
    52:  AsegLabel("pallidum_right",                   "Right-Pallidum"),
    53:  AsegLabel("hippocampus_right",                "Right-Hippocampus"),
    54:  AsegLabel("amygdala_right",                   "Right-Amygdala"),
    58:  AsegLabel("accumbens_right",                  "Right-Accumbens-area"),
    60:  AsegLabel("ventral_dc_right",                 "Right-VentralDC"),
    62:  AsegLabel("vessel_right",                     "Right-vessel"),
    63:  AsegLabel("choroid_plexus_right",             "Right-choroid-plexus"),
    72:  AsegLabel("fifth_ventricle",                  "5th-Ventricle"),
    77:  AsegLabel("wm_hypointensities",               "WM-hypointensities"),
    78:  AsegLabel("wm_hypointensities_left",          "Left-WM-hypointensities"),
    79:  AsegLabel("wm_hypointensities_right",         "Right-WM-hypointensities"),
    80:  AsegLabel("non_wm_hypointensities",           "non-WM-hypointensities"),
    81:  AsegLabel("non_wm_hypointensities_left",      "Left-non-WM-hypointensities"),
    82:  AsegLabel("non_wm_hypointensities_right",     "Right-non-WM-hypointensities"),
    85:  AsegLabel("optic_chiasm",                     "Optic-Chiasm"),
    251: AsegLabel("cc_posterior",                     "CC_Posterior"),
    252: AsegLabel("cc_mid_posterior",                 "CC_Mid_Posterior"),
    253: AsegLabel("cc_central",                       "CC_Central"),
    254: AsegLabel("cc_mid_anterior",                  "CC_Mid_Anterior"),
    255: AsegLabel("cc_anterior",                      "CC_Anterior"),
}
# fmt: on

#: qsmiron key -> aseg label number (the inverse of :data:`ASEG_LABELS`).
ASEG_KEYS: dict[str, int] = {entry.key: number for number, entry in ASEG_LABELS.items()}

#: FreeSurfer < 7 names of labels that FreeSurfer 7 renamed.
_FS6_NAMES = {10: "Left-Thalamus-Proper", 49: "Right-Thalamus-Proper"}

_THALAMUS = (10, 49)
_CORTEX = (3, 42)
_SUBCORTICAL_GRAY = (10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 28, 60)
_CEREBELLAR_CORTEX = (8, 47)

#: Tissue classes as groups of aseg labels (each label also stands for its parcels, see
#: ``_LABEL_RANGES``). ``gray_matter`` is FreeSurfer's TotalGray: cortex, subcortical grey
#: nuclei (thalamus, caudate, putamen, pallidum, hippocampus, amygdala, accumbens, ventral DC)
#: and cerebellar cortex.
TISSUE_CLASSES: dict[str, tuple[int, ...]] = {
    "gray_matter": _CORTEX + _SUBCORTICAL_GRAY + _CEREBELLAR_CORTEX,
    "cortex": _CORTEX,
    "subcortical_gray": _SUBCORTICAL_GRAY,
    "cerebellar_cortex": _CEREBELLAR_CORTEX,
    "white_matter": (2, 41, 7, 46, 77, 78, 79, 251, 252, 253, 254, 255),
    "csf": (4, 5, 14, 15, 24, 43, 44, 72),
}

#: Parcellation labels that stand for an aseg label: cortical parcels of aparc+aseg
#: (ctx-lh-* 1000-1999, ctx-rh-* 2000-2999; aparc.a2009s ctx_lh_* 11100-11999, ctx_rh_*
#: 12100-12999) count as cortex, wmparc's white-matter parcels (3000-4999, 13100-14999) and
#: Left/Right-UnsegmentedWhiteMatter (5001/5002) as cerebral white matter.
_LABEL_RANGES: dict[int, tuple[tuple[int, int], ...]] = {
    3: ((1000, 2000), (11100, 12000)),
    42: ((2000, 3000), (12100, 13000)),
    2: ((3000, 4000), (13100, 14000), (5001, 5002)),
    41: ((4000, 5000), (14100, 15000), (5002, 5003)),
}

#: The masks :func:`label_masks` returns by default: the structures of the study.
_DEFAULT_MASKS = (
    "thalamus_left", "thalamus_right",
    "lateral_ventricle_left", "lateral_ventricle_right",
    "inferior_lateral_ventricle_left", "inferior_lateral_ventricle_right",
    "third_ventricle",
    "caudate_left", "caudate_right", "putamen_left", "putamen_right",
    "pallidum_left", "pallidum_right", "hippocampus_left", "hippocampus_right",
    "amygdala_left", "amygdala_right", "accumbens_left", "accumbens_right",
    "cortex", "white_matter", "csf", "gray_matter",
)

# label maps in order of preference inside <subject>/mri
_FREESURFER_MAPS = ("aseg.mgz", "aparc+aseg.mgz", "aparc.DKTatlas+aseg.mgz")
_FASTSURFER_MAPS = (
    "aparc.DKTatlas+aseg.deep.withCC.mgz",
    "aparc.DKTatlas+aseg.deep.mgz",
    "aseg.auto_noCCseg.mgz",
)
_FASTSURFER_MARKERS = ("mri/aparc.DKTatlas+aseg.deep.mgz", "scripts/deep-seg.log")
# segmentation statistics inside <subject>/stats (FastSurfer's --seg_only run writes
# aseg+DKT.stats; aseg+DKT.VINN.stats in recent versions)
_ASEG_STATS = ("aseg.stats", "aseg+DKT.stats", "aseg+DKT.VINN.stats")
# cortical parcellation statistics (any of them carries the whole-cortex MeanThickness)
_APARC_ATLASES = ("aparc", "aparc.DKTatlas", "aparc.DKTatlas.mapped", "aparc.a2009s")


# --------------------------------------------------------------------------------------------
# small helpers


def _listing(folder: Path, limit: int = 25) -> str:
    """What a folder holds, for error messages."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "nothing readable"
    if not names:
        return "nothing (empty folder)"
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _label_name(number: int) -> str:
    entry = ASEG_LABELS.get(number)
    return entry.name if entry is not None else f"label {number}"


def _voxel_volume_mm3(voxel_size: float | Sequence[float]) -> float:
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    if not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise InputError(f"voxel_size must be three positive numbers in mm, found {voxel_size}")
    return float(np.prod(vs))


def _voxel_size_of(affine: np.ndarray) -> tuple[float, float, float]:
    vs = affine_voxel_size(affine)
    return float(vs[0]), float(vs[1]), float(vs[2])


def _check_labels(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise InputError(f"labels must be a 3-D label map, found shape {lab.shape}")
    if lab.dtype.kind not in "iu":
        raise InputError(f"labels must be integers, found dtype {lab.dtype}")
    if lab.size and int(lab.min()) < 0:
        raise InputError(f"labels must be >= 0, found {int(lab.min())}")
    return lab


def _members(counts: np.ndarray, number: int) -> int:
    """Voxels of an aseg label and of the parcels that stand for it, from a bincount."""
    total = int(counts[number]) if number < counts.size else 0
    for lo, hi in _LABEL_RANGES.get(number, ()):
        total += int(counts[min(lo, counts.size) : min(hi, counts.size)].sum())
    return total


def _member_mask(labels: np.ndarray, numbers: Iterable[int]) -> np.ndarray:
    """Mask of aseg labels and the parcels that stand for them (one look-up-table gather)."""
    top = int(labels.max()) + 1 if labels.size else 1
    lut = np.zeros(top, dtype=bool)
    for number in numbers:
        if number < top:
            lut[number] = True
        for lo, hi in _LABEL_RANGES.get(number, ()):
            lut[min(lo, top) : min(hi, top)] = True
    return lut[labels]


def _resolve_structure(key: str) -> tuple[int, ...]:
    if key in TISSUE_CLASSES:
        return TISSUE_CLASSES[key]
    if key in ASEG_KEYS:
        return (ASEG_KEYS[key],)
    valid = ", ".join(list(TISSUE_CLASSES) + list(ASEG_KEYS))
    raise InputError(f"unknown structure {key!r}; expected one of: {valid}")


# --------------------------------------------------------------------------------------------
# label maps


def load_label_map(
    path: str | Path, require_thalamus: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Read a FreeSurfer/FastSurfer/SynthSeg label map (MGH/MGZ or NIfTI), checking it fully.

    Parameters
    ----------
    path : str or Path
        ``aseg.mgz``, ``aparc+aseg.mgz``, ``aparc.DKTatlas+aseg.deep.mgz``, a SynthSeg
        ``.nii``/``.nii.gz`` or any label map in aseg numbering.
    require_thalamus : bool, optional
        If True (default), the map must hold both thalamus labels (10 and 49).

    Returns
    -------
    labels : (X, Y, Z) int32 ndarray
        Label values.
    affine : (4, 4) float64 ndarray
        Voxel-to-world transform. For MGH images this is FreeSurfer's vox2ras (scanner RAS, the
        frame of a NIfTI affine), kept as it is; for NIfTI the sform (else qform).

    Raises
    ------
    InputError
        The file is missing, a folder, unreadable or corrupt, not 3-D, holds non-integer,
        negative or non-finite labels, has a singular affine, or (``require_thalamus``) lacks
        label 10 or 49; the message names the file and the labels found.

    References
    ----------
    .. [1] Fischl B et al. Whole brain segmentation: automated labeling of neuroanatomical
       structures in the human brain. Neuron 2002;33:341-355 (the aseg labels).

    Examples
    --------
    >>> labels, affine = load_label_map("sub-01/mri/aseg.mgz")  # doctest: +SKIP
    >>> int((labels == 10).sum())  # left thalamus voxels  # doctest: +SKIP
    7398
    """
    path = Path(path)
    if not path.exists():
        where = path.parent if path.parent.is_dir() else None
        found = f"; {where} holds {_listing(where)}" if where is not None else ""
        raise InputError(f"label map not found{found}", path)
    if path.is_dir():
        raise InputError(
            "expected a label map file (.mgz, .mgh, .nii, .nii.gz), found a folder", path
        )
    try:
        img = nib.load(str(path))
    except nib.filebasedimages.ImageFileError as exc:
        raise InputError(
            f"not a readable MGH/MGZ or NIfTI image: truncated, empty or another format ({exc})",
            path,
        ) from None
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, MGHError) as exc:
        raise InputError(
            f"cannot read the label map: truncated, corrupt or another format ({exc})", path
        ) from None
    if not isinstance(img, (nib.MGHImage, nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(
            f"expected an MGH/MGZ or NIfTI label map, found {type(img).__name__}", path
        )
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, MGHError) as exc:
        shape = tuple(int(n) for n in img.shape)
        raise InputError(
            f"label map data truncated or corrupt ({exc}); expected shape {shape}", path
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        shape = tuple(int(n) for n in data.shape)
        raise InputError(f"expected a 3-D label map, found shape {shape}", path)
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            raise InputError(f"{int(bad.sum())} voxels are NaN or infinite in a label map", path)
        frac = data != np.round(data)
        if frac.any():
            where = tuple(int(i) for i in np.argwhere(frac)[0])
            raise InputError(
                f"non-integer label values ({int(frac.sum())} voxels, e.g. {float(data[where]):g}"
                f" at voxel {where}); expected an integer label map: was the segmentation "
                "resampled with linear instead of nearest-neighbour interpolation?",
                path,
            )
    elif data.dtype.kind not in "iub":
        raise InputError(f"expected integer labels, found data type {data.dtype}", path)
    if data.size and float(data.min()) < 0:
        raise InputError(f"negative label values (minimum {data.min()}); labels are >= 0", path)
    if data.size and float(data.max()) > np.iinfo(np.int32).max:
        raise InputError(f"label value {data.max()} is too large for a label map", path)
    labels = np.asarray(data, dtype=np.int32)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"the voxel-to-world affine is singular or not finite:\n{affine}", path)
    if require_thalamus:
        _require_thalamus(labels, path)
    log.info("label map %s: shape %s, voxel %s mm", path, labels.shape, _voxel_size_of(affine))
    return labels, affine


def _require_thalamus(labels: np.ndarray, path: Path) -> None:
    counts = np.bincount(labels.ravel()) if labels.size else np.zeros(1, np.int64)
    missing = [n for n in _THALAMUS if n >= counts.size or counts[n] == 0]
    if not missing:
        return
    present = np.flatnonzero(counts)
    shown = ", ".join(str(int(v)) for v in present[:40])
    if present.size > 40:
        shown += f" ... ({present.size} labels)"
    hint = ""
    if 9 in present or 48 in present:
        hint = (
            " Labels 9/48 are present: they are FreeSurfer < 7's unused 'Left/Right-Thalamus'; "
            "the aseg thalamus is 10/49 (relabel the map if your tool wrote 9/48)."
        )
    names = " and ".join(f"{n} ({_label_name(n)})" for n in missing)
    raise InputError(
        f"label map has no thalamus label {names}; expected aseg numbering with left thalamus "
        f"10 and right thalamus 49; labels found: {shown}.{hint}",
        path,
    )


def label_masks(
    labels: np.ndarray, structures: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Named boolean masks of a label map in aseg numbering.

    Parameters
    ----------
    labels : (X, Y, Z) array_like of int
        Label map (aseg, aparc+aseg, FastSurfer or SynthSeg numbering).
    structures : sequence of str, optional
        Keys of :data:`ASEG_KEYS` (``"thalamus_left"``, ``"lateral_ventricle_right"``, ...)
        or of :data:`TISSUE_CLASSES` (``"cortex"``, ``"white_matter"``, ``"csf"``,
        ``"gray_matter"``, ...). Default: left and right thalamus, lateral ventricles (10/49,
        4/43), inferior lateral ventricles (5/44), third ventricle (14), caudate, putamen,
        pallidum, hippocampus, amygdala, accumbens, and the tissue classes cortex, white
        matter, CSF and grey matter. Cortical parcels (1000-2999, 11100-12999) count as
        cortex, white-matter parcels (3000-4999, 13100-14999, 5001/5002) as white matter.

    Returns
    -------
    dict of str to (X, Y, Z) ndarray of bool
        One mask per requested structure, in the order requested.

    Raises
    ------
    InputError
        If ``labels`` is not a 3-D non-negative integer array or a key is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((4, 4, 4), np.int32); lab[0, :2, :2] = 10; lab[3, 0, 0] = 1012
    >>> m = label_masks(lab, ["thalamus_left", "cortex"])
    >>> int(m["thalamus_left"].sum()), int(m["cortex"].sum())
    (4, 1)
    """
    lab = _check_labels(labels)
    keys = _DEFAULT_MASKS if structures is None else tuple(structures)
    return {key: _member_mask(lab, _resolve_structure(key)) for key in keys}


def structure_volumes_ml(
    labels: np.ndarray,
    voxel_size: float | Sequence[float],
    structures: Sequence[str] | None = None,
) -> dict[str, float]:
    """Volumes of named structures from voxel counts, mL.

    Parameters
    ----------
    labels : (X, Y, Z) array_like of int
        Label map in aseg numbering.
    voxel_size : float or sequence of 3 floats
        Voxel size in mm.
    structures : sequence of str, optional
        Keys as in :func:`label_masks` (same default).

    Returns
    -------
    dict of str to float
        Voxel count times voxel volume, mL (1 mL = 1000 mm^3).

    Raises
    ------
    InputError
        If ``labels`` is not a 3-D non-negative integer array, ``voxel_size`` is not positive,
        or a key is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((10, 10, 10), np.int32); lab[:5, :4, :2] = 49
    >>> structure_volumes_ml(lab, 2.0, ["thalamus_right"])
    {'thalamus_right': 0.32}
    """
    lab = _check_labels(labels)
    vv = _voxel_volume_mm3(voxel_size)
    counts = np.bincount(lab.ravel()) if lab.size else np.zeros(1, np.int64)
    keys = _DEFAULT_MASKS if structures is None else tuple(structures)
    out = {}
    for key in keys:
        n = sum(_members(counts, number) for number in _resolve_structure(key))
        out[key] = n * vv / 1000.0
    return out


def gray_matter_volumes_ml(
    labels: np.ndarray, voxel_size: float | Sequence[float]
) -> dict[str, float]:
    """Total grey-matter volume from a label map, FreeSurfer's TotalGray definition, mL.

    TotalGray = cerebral cortex (3/42, or its parcels in aparc+aseg) + subcortical grey matter
    (thalamus 10/49, caudate 11/50, putamen 12/51, pallidum 13/52, hippocampus 17/53, amygdala
    18/54, accumbens 26/58, ventral DC 28/60) + cerebellar cortex (8/47). FreeSurfer counts the
    last two exactly this way (voxel counts of aseg.mgz), but its cortex volume is the volume
    between the white and pial surfaces, so from a label map alone (SynthSeg, FastSurfer
    without surfaces) this is an approximation of FreeSurfer's surface-based TotalGray.

    Parameters
    ----------
    labels : (X, Y, Z) array_like of int
        Label map in aseg numbering.
    voxel_size : float or sequence of 3 floats
        Voxel size in mm.

    Returns
    -------
    dict of str to float
        ``"cortex"``, ``"subcortical_gray"``, ``"cerebellar_cortex"`` and their sum
        ``"total"``, mL.

    Raises
    ------
    InputError
        If ``labels`` is not a 3-D non-negative integer array or ``voxel_size`` is not positive.

    References
    ----------
    .. [1] FreeSurfer wiki, BrainVolStatsFixed and mri_segstats ``--totalgray``
       (https://surfer.nmr.mgh.harvard.edu/fswiki/BrainVolStatsFixed).
    .. [2] Billot B et al. SynthSeg: segmentation of brain MRI scans of any contrast and
       resolution without retraining. Med Image Anal 2023;86:102789.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((10, 10, 10), np.int32)
    >>> lab[0] = 3; lab[1, :5] = 10; lab[2, :2] = 8; lab[3] = 2  # white matter is not counted
    >>> gray_matter_volumes_ml(lab, 1.0)["total"]
    0.17
    """
    parts = structure_volumes_ml(
        labels, voxel_size, ("cortex", "subcortical_gray", "cerebellar_cortex")
    )
    parts["total"] = parts["cortex"] + parts["subcortical_gray"] + parts["cerebellar_cortex"]
    return parts


# --------------------------------------------------------------------------------------------
# stats files


@dataclass(frozen=True)
class StatsMeasure:
    """One ``# Measure`` header line of a FreeSurfer stats file.

    Attributes
    ----------
    structure : str
        First field, e.g. ``"TotalGray"`` or ``"Cortex"``.
    name : str
        Second field, the measure's key, e.g. ``"TotalGrayVol"``, ``"eTIV"``,
        ``"MeanThickness"``.
    description : str
        Third field, e.g. ``"Total gray matter volume"``.
    value : float
        The number.
    units : str
        Last field, e.g. ``"mm^3"``, ``"mm^2"``, ``"mm"``, ``"unitless"``.
    """

    structure: str
    name: str
    description: str
    value: float
    units: str


@dataclass(frozen=True)
class _StatsText:
    measures: dict[str, StatsMeasure]
    header: dict[str, str]
    columns: list[str] | None
    rows: list[tuple[int, list[str]]]


def _read_text_lines(path: Path, what: str) -> list[str]:
    if not path.exists():
        where = path.parent if path.parent.is_dir() else None
        found = f"; {where} holds {_listing(where)}" if where is not None else ""
        raise InputError(f"{what} not found{found}", path)
    if path.is_dir():
        raise InputError(f"expected a {what}, found a folder", path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} ({exc.strerror})", path) from None
    if not raw.strip():
        raise InputError(f"{what} is empty", path)
    if b"\x00" in raw:
        raise InputError(f"{what} is binary (NUL bytes), expected FreeSurfer stats text", path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"line {line}: not UTF-8/ASCII text; expected a {what}", path) from None
    return text.splitlines()


def _parse_measure(body: str, lineno: int, path: Path) -> StatsMeasure:
    parts = [p.strip() for p in body.split(",")]
    expected = "expected '# Measure <structure>, <name>, <description>, <value>, <units>'"
    if len(parts) < 5 or not parts[1]:
        raise InputError(
            f"line {lineno}: malformed measure line '# Measure {body}'; {expected}", path
        )
    try:
        value = float(parts[-2])
    except ValueError:
        raise InputError(
            f"line {lineno}: measure {parts[1]!r} has value {parts[-2]!r}, not a number; "
            + expected,
            path,
        ) from None
    if not math.isfinite(value):
        raise InputError(f"line {lineno}: measure {parts[1]!r} is not finite ({value})", path)
    return StatsMeasure(parts[0], parts[1], ", ".join(parts[2:-2]), value, parts[-1])


def _parse_stats(path: Path, what: str) -> _StatsText:
    lines = _read_text_lines(path, what)
    measures: dict[str, StatsMeasure] = {}
    header: dict[str, str] = {}
    columns: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            body = line[1:].strip()
            if body.startswith("Measure ") or body == "Measure":
                m = _parse_measure(body[len("Measure") :].strip(), lineno, path)
                measures.setdefault(m.name, m)
            elif body.startswith("ColHeaders"):
                columns = body.split()[1:]
                if not columns:
                    raise InputError(f"line {lineno}: '# ColHeaders' line names no column", path)
            else:
                kv = body.split(None, 1)
                if len(kv) == 2:
                    header.setdefault(kv[0], kv[1].strip())
            continue
        if columns is None:
            raise InputError(
                f"line {lineno}: table row before any '# ColHeaders' line ({line[:60]!r}); "
                f"expected a FreeSurfer {what}",
                path,
            )
        fields = line.split()
        if len(fields) != len(columns):
            raise InputError(
                f"line {lineno}: {len(fields)} fields where the '# ColHeaders' line has "
                f"{len(columns)} ({' '.join(columns)}): {line[:80]!r}",
                path,
            )
        rows.append((lineno, fields))
    return _StatsText(measures, header, columns, rows)


def _column(stats: _StatsText, name: str, conv: type, path: Path) -> list[Any]:
    assert stats.columns is not None
    j = stats.columns.index(name)
    out = []
    for lineno, fields in stats.rows:
        try:
            value = conv(fields[j])
        except ValueError:
            raise InputError(
                f"line {lineno}: column {name} holds {fields[j]!r}, expected a number", path
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"line {lineno}: column {name} is not finite ({fields[j]})", path)
        out.append(value)
    return out


def _measure_value(
    measures: dict[str, StatsMeasure], names: Sequence[str], units: str, path: Path
) -> float | None:
    for name in names:
        m = measures.get(name)
        if m is None:
            continue
        if m.units.replace(" ", "") != units:
            raise InputError(
                f"measure {m.name} is in {m.units!r}; expected {units!r} as FreeSurfer writes it",
                path,
            )
        return m.value
    return None


@dataclass(frozen=True)
class AsegStats:
    """Contents of an ``aseg.stats`` (any ``mri_segstats`` summary) file.

    Attributes
    ----------
    path : Path
        The file read.
    measures : dict of str to StatsMeasure
        ``# Measure`` lines keyed by measure name (``"TotalGrayVol"``, ``"BrainSegVol"``,
        ``"eTIV"``, ``"CortexVol"``, ``"SubCortGrayVol"``, ...), values with units.
    volumes_mm3 : dict of int to float
        ``Volume_mm3`` per SegId (partial-volume corrected when FreeSurfer ran ``--pv``, as
        recon-all does), mm^3.
    n_voxels : dict of int to int
        ``NVoxels`` per SegId (hard voxel counts of the segmentation); empty without that column.
    names : dict of int to str
        ``StructName`` per SegId as written (FreeSurfer < 7 ``Left-Thalamus-Proper``, 7
        ``Left-Thalamus``); the FreeSurfer 7 name where the column is absent.
    voxel_volume_mm3 : float or None
        ``# VoxelVolume_mm3`` of the segmentation, if written.
    subject : str or None
        ``# subjectname``.
    version : str or None
        ``# cvs_version`` (the FreeSurfer version, e.g. ``7.4.1``, or a CVS Id for 5.x).
    seg_file : str or None
        ``# SegVolFile``: the label map the table was computed from.
    """

    path: Path
    measures: dict[str, StatsMeasure]
    volumes_mm3: dict[int, float]
    n_voxels: dict[int, int]
    names: dict[int, str]
    voxel_volume_mm3: float | None
    subject: str | None
    version: str | None
    seg_file: str | None

    @property
    def total_gray_mm3(self) -> float | None:
        """FreeSurfer's TotalGrayVol, mm^3 (None if the file has no such measure)."""
        return _measure_value(self.measures, ("TotalGrayVol",), "mm^3", self.path)

    @property
    def intracranial_mm3(self) -> float | None:
        """Estimated total intracranial volume (``eTIV``; ``ICV`` in FreeSurfer 5.x), mm^3."""
        return _measure_value(self.measures, ("eTIV", "ICV"), "mm^3", self.path)


def read_aseg_stats(path: str | Path) -> AsegStats:
    """Read a FreeSurfer/FastSurfer ``aseg.stats`` file: header measures and structure volumes.

    Parameters
    ----------
    path : str or Path
        ``<subject>/stats/aseg.stats`` (FreeSurfer 5.x-7, FastSurfer), FastSurfer's
        ``aseg+DKT.stats``, or any ``mri_segstats --sum`` output with SegId and Volume_mm3
        columns.

    Returns
    -------
    AsegStats
        Measures (e.g. ``TotalGrayVol`` in mm^3) and per-SegId volumes in mm^3.

    Raises
    ------
    InputError
        The file is missing, empty, binary, or malformed: a ``# Measure`` line without a
        numeric value, no ``# ColHeaders`` line, no SegId/Volume_mm3 column, a row with the
        wrong number of fields, a non-numeric or duplicated entry. The message names the file
        and the line.

    References
    ----------
    .. [1] Fischl B. FreeSurfer. NeuroImage 2012;62:774-781.
    .. [2] Henschel L et al. FastSurfer - a fast and accurate deep learning based neuroimaging
       pipeline. NeuroImage 2020;219:117012.

    Examples
    --------
    >>> aseg = read_aseg_stats("sub-01/stats/aseg.stats")  # doctest: +SKIP
    >>> aseg.total_gray_mm3, aseg.volumes_mm3[10]  # doctest: +SKIP
    (660155.538403, 7280.7)
    """
    path = Path(path)
    st = _parse_stats(path, "segmentation stats file (aseg.stats)")
    if st.columns is None:
        raise InputError(
            "no '# ColHeaders' line: not a segmentation statistics table (expected mri_segstats "
            "output such as aseg.stats, with columns Index SegId NVoxels Volume_mm3 StructName)",
            path,
        )
    for needed in ("SegId", "Volume_mm3"):
        if needed not in st.columns:
            raise InputError(
                f"the table has no {needed} column (columns: {' '.join(st.columns)}); expected "
                "Index SegId NVoxels Volume_mm3 StructName ...",
                path,
            )
    if not st.rows:
        raise InputError("the segmentation table has no rows", path)
    seg_ids = _column(st, "SegId", int, path)
    volumes = _column(st, "Volume_mm3", float, path)
    counts = _column(st, "NVoxels", int, path) if "NVoxels" in st.columns else None
    names_col = None
    if "StructName" in st.columns:
        names_col = [fields[st.columns.index("StructName")] for _, fields in st.rows]
    vol_d: dict[int, float] = {}
    nvox_d: dict[int, int] = {}
    name_d: dict[int, str] = {}
    for i, ((lineno, _), sid, vol) in enumerate(zip(st.rows, seg_ids, volumes, strict=True)):
        if sid in vol_d:
            raise InputError(f"line {lineno}: SegId {sid} appears twice in the table", path)
        if vol < 0:
            raise InputError(f"line {lineno}: negative volume {vol} for SegId {sid}", path)
        vol_d[sid] = vol
        if counts is not None:
            nvox_d[sid] = counts[i]
        name_d[sid] = names_col[i] if names_col is not None else _label_name(sid)
    voxel_volume = None
    if "VoxelVolume_mm3" in st.header:
        try:
            voxel_volume = float(st.header["VoxelVolume_mm3"].split()[0])
        except (ValueError, IndexError):
            voxel_volume = None
    seg_file = st.header.get("SegVolFile")
    # the measures read by name must be in FreeSurfer's units
    _measure_value(st.measures, ("TotalGrayVol",), "mm^3", path)
    _measure_value(st.measures, ("eTIV", "ICV"), "mm^3", path)
    result = AsegStats(
        path=path,
        measures=st.measures,
        volumes_mm3=vol_d,
        n_voxels=nvox_d,
        names=name_d,
        voxel_volume_mm3=voxel_volume,
        subject=st.header.get("subjectname"),
        version=st.header.get("cvs_version"),
        seg_file=seg_file.split()[0] if seg_file else None,
    )
    log.info("%s: %d measures, %d structures", path, len(st.measures), len(vol_d))
    return result


@dataclass(frozen=True)
class AparcStats:
    """Contents of a ``?h.aparc*.stats`` (``mris_anatomical_stats``) file.

    Attributes
    ----------
    path : Path
        The file read.
    hemi : str
        ``"lh"`` or ``"rh"``.
    atlas : str
        Parcellation named by the file, e.g. ``"aparc"``, ``"aparc.DKTatlas"``,
        ``"aparc.a2009s"``, ``"aparc.DKTatlas.mapped"`` (FastSurfer).
    measures : dict of str to StatsMeasure
        ``# Measure`` lines keyed by name (``"NumVert"``, ``"WhiteSurfArea"``,
        ``"MeanThickness"``, and in FreeSurfer >= 6 copies of aseg's volumes).
    mean_thickness_mm : float
        Whole-hemisphere mean cortical thickness, mm (``MeanThickness``; without that line,
        the NumVert-weighted mean of the regions' ThickAvg, which is what FreeSurfer computes).
    white_surface_area_mm2 : float or None
        Total white-surface area of the cortex, mm^2 (``WhiteSurfArea``; else the sum of the
        regions' SurfArea).
    n_vertices : int or None
        Vertices of the cortex (``NumVert``; else the sum over regions).
    region_thickness_mm : dict of str to float
        ThickAvg per region (StructName), mm; empty if the table has no such column.
    subject : str or None
        ``# subjectname``.
    version : str or None
        ``# cvs_version``.
    """

    path: Path
    hemi: str
    atlas: str
    measures: dict[str, StatsMeasure]
    mean_thickness_mm: float
    white_surface_area_mm2: float | None
    n_vertices: int | None
    region_thickness_mm: dict[str, float] = field(default_factory=dict)
    subject: str | None = None
    version: str | None = None


def _hemi_from_name(name: str) -> str | None:
    for hemi in ("lh", "rh"):
        if name.startswith(hemi + "."):
            return hemi
    return None


def read_aparc_stats(path: str | Path, hemi: str | None = None) -> AparcStats:
    """Read a FreeSurfer/FastSurfer cortical parcellation stats file (``?h.aparc*.stats``).

    Parameters
    ----------
    path : str or Path
        ``lh.aparc.stats``, ``rh.aparc.DKTatlas.stats``, ``lh.aparc.a2009s.stats``,
        FastSurfer's ``lh.aparc.DKTatlas.mapped.stats``, ...
    hemi : {"lh", "rh"}, optional
        Expected hemisphere; checked against the file's ``# hemi`` line and name.

    Returns
    -------
    AparcStats
        Mean thickness (mm), white-surface area (mm^2), vertex count and per-region thickness.

    Raises
    ------
    InputError
        The file is missing or malformed (the message names the line), has no thickness
        (neither a ``MeanThickness`` measure nor NumVert and ThickAvg columns), its
        hemisphere cannot be told or disagrees with its name or ``hemi``, or a measure has
        other units than FreeSurfer's.

    References
    ----------
    .. [1] Fischl B, Dale AM. Measuring the thickness of the human cerebral cortex from
       magnetic resonance images. PNAS 2000;97:11050-11055.

    Examples
    --------
    >>> lh = read_aparc_stats("sub-01/stats/lh.aparc.stats")  # doctest: +SKIP
    >>> lh.hemi, lh.mean_thickness_mm, lh.white_surface_area_mm2  # doctest: +SKIP
    ('lh', 2.38119, 85184.4)
    """
    path = Path(path)
    if hemi is not None and hemi not in ("lh", "rh"):
        raise InputError(f"hemi must be 'lh' or 'rh', found {hemi!r}", path)
    st = _parse_stats(path, "cortical parcellation stats file (?h.aparc.stats)")
    from_name = _hemi_from_name(path.name)
    from_header = st.header.get("hemi", "").split()[0] if st.header.get("hemi") else None
    if from_header is not None and from_header not in ("lh", "rh"):
        raise InputError(f"'# hemi {from_header}': expected lh or rh", path)
    if from_header and from_name and from_header != from_name:
        raise InputError(
            f"the file name says {from_name} but its '# hemi' line says {from_header}", path
        )
    found = from_header or from_name
    if found is None:
        raise InputError(
            "cannot tell the hemisphere: no '# hemi' line and the name does not start with "
            "lh. or rh.",
            path,
        )
    if hemi is not None and found != hemi:
        raise InputError(f"expected the {hemi} hemisphere, the file is {found}", path)
    atlas = path.name
    if from_name:
        atlas = atlas[3:]
    atlas = atlas.removesuffix(".stats")

    cols = st.columns or []
    has_rows = bool(st.rows)
    thickness = _measure_value(st.measures, ("MeanThickness",), "mm", path)
    region_thickness: dict[str, float] = {}
    numvert_col = _column(st, "NumVert", int, path) if "NumVert" in cols and has_rows else None
    if "ThickAvg" in cols and "StructName" in cols and has_rows:
        thick_col = _column(st, "ThickAvg", float, path)
        names = [fields[cols.index("StructName")] for _, fields in st.rows]
        region_thickness = dict(zip(names, thick_col, strict=True))
        if thickness is None and numvert_col is not None and sum(numvert_col) > 0:
            thickness = float(np.dot(numvert_col, thick_col) / sum(numvert_col))
            log.info(
                "%s: no MeanThickness line; using the NumVert-weighted mean of ThickAvg "
                "(%.4f mm)", path, thickness,
            )
    if thickness is None:
        raise InputError(
            "no '# Measure Cortex, MeanThickness, Mean Thickness, <value>, mm' line and no "
            "NumVert/ThickAvg table to compute it from",
            path,
        )
    if not thickness > 0:
        raise InputError(f"mean thickness {thickness} mm is not positive", path)
    area = _measure_value(st.measures, ("WhiteSurfArea",), "mm^2", path)
    if area is None and "SurfArea" in cols and has_rows:
        area = float(sum(_column(st, "SurfArea", float, path)))
    nvert_m = _measure_value(st.measures, ("NumVert",), "unitless", path)
    n_vertices = int(nvert_m) if nvert_m is not None else None
    if n_vertices is None and numvert_col is not None:
        n_vertices = int(sum(numvert_col))
    log.info("%s: %s mean thickness %.4f mm", path, found, thickness)
    return AparcStats(
        path=path,
        hemi=found,
        atlas=atlas,
        measures=st.measures,
        mean_thickness_mm=float(thickness),
        white_surface_area_mm2=area,
        n_vertices=n_vertices,
        region_thickness_mm=region_thickness,
        subject=st.header.get("subjectname"),
        version=st.header.get("cvs_version"),
    )


def mean_cortical_thickness(lh: AparcStats, rh: AparcStats, weighting: str = "area") -> float:
    """Whole-brain mean cortical thickness from the two hemispheres' stats, mm.

    The whole-brain value is the surface-area-weighted mean of the left and right
    hemispheres' MeanThickness, ``(T_lh A_lh + T_rh A_rh) / (A_lh + A_rh)`` with ``A`` the
    white-surface area (``WhiteSurfArea``): the ENIGMA cortical protocol's formula, and how
    FreeSurfer-based studies pool hemispheres. FreeSurfer's own per-hemisphere MeanThickness is
    a mean over vertices, so ``weighting="vertices"`` (weights NumVert) gives the mean over all
    cortical vertices of both hemispheres instead; the two differ by a few hundredths of a mm
    at most.

    Parameters
    ----------
    lh, rh : AparcStats
        Left and right hemisphere stats of the same subject (:func:`read_aparc_stats`).
    weighting : {"area", "vertices"}, optional
        Hemisphere weights: white-surface area (default) or number of vertices.

    Returns
    -------
    float
        Mean cortical thickness, mm.

    Raises
    ------
    InputError
        If ``lh`` is not a left or ``rh`` not a right hemisphere, the two name different
        subjects, or a weight is missing or not positive.

    References
    ----------
    .. [1] ENIGMA Consortium. Cortical protocols: ``MThickness = (LThickness*LSurfArea +
       RThickness*RSurfArea) / (LSurfArea + RSurfArea)``
       (https://enigma.ini.usc.edu/protocols/imaging-protocols/).
    .. [2] Fischl B, Dale AM. PNAS 2000;97:11050-11055.

    Examples
    --------
    >>> lh = read_aparc_stats("sub-01/stats/lh.aparc.stats")  # doctest: +SKIP
    >>> rh = read_aparc_stats("sub-01/stats/rh.aparc.stats")  # doctest: +SKIP
    >>> round(mean_cortical_thickness(lh, rh), 3)  # doctest: +SKIP
    2.398
    """
    if lh.hemi != "lh":
        raise InputError(f"expected a left-hemisphere file as lh, found {lh.hemi}", lh.path)
    if rh.hemi != "rh":
        raise InputError(f"expected a right-hemisphere file as rh, found {rh.hemi}", rh.path)
    if lh.subject and rh.subject and lh.subject != rh.subject:
        raise InputError(
            f"lh and rh stats belong to different subjects: {lh.path} is {lh.subject!r}, "
            f"{rh.path} is {rh.subject!r}",
            rh.path,
        )
    if weighting == "area":
        w = (lh.white_surface_area_mm2, rh.white_surface_area_mm2)
        what = "white-surface area (WhiteSurfArea or SurfArea column)"
    elif weighting == "vertices":
        w = (lh.n_vertices, rh.n_vertices)
        what = "number of vertices (NumVert)"
    else:
        raise InputError(f"weighting must be 'area' or 'vertices', found {weighting!r}")
    for stats, weight in zip((lh, rh), w, strict=True):
        if weight is None or not weight > 0:
            raise InputError(f"no positive {what} to weight the hemisphere by", stats.path)
    wl, wr = float(w[0]), float(w[1])  # type: ignore[arg-type]
    return (lh.mean_thickness_mm * wl + rh.mean_thickness_mm * wr) / (wl + wr)


# --------------------------------------------------------------------------------------------
# SynthSeg volumes


def _norm_name(name: str) -> str:
    """Structure names compared across FreeSurfer and SynthSeg spellings."""
    key = re.sub(r"[^0-9a-z]", "", name.lower())
    return key.removesuffix("proper")


def _strip_image_ext(name: str) -> str:
    name = Path(name.strip()).name
    for ext in (".nii.gz", ".nii", ".mgz", ".mgh"):
        name = name.removesuffix(ext)
    return name


def _synthseg_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and data rows (with line numbers) of a SynthSeg volume CSV."""
    lines = _read_text_lines(path, "SynthSeg volume CSV")
    try:
        table = list(csv.reader(io.StringIO("\n".join(lines))))
    except csv.Error as exc:
        raise InputError(f"not a readable CSV ({exc})", path) from None
    numbered = [(i + 1, row) for i, row in enumerate(table) if any(c.strip() for c in row)]
    if not numbered:
        raise InputError("SynthSeg volume CSV is empty", path)
    head_line, head = numbered[0]
    head = [c.strip() for c in head]
    if len(head) < 2 or head[0].lower() not in ("", "subject"):
        raise InputError(
            f"line {head_line}: expected a SynthSeg header row 'subject,total intracranial,"
            f"left cerebral white matter,...', found {','.join(head[:4])!r}...",
            path,
        )
    rows = numbered[1:]
    if not rows:
        raise InputError("SynthSeg volume CSV has a header but no row of volumes", path)
    for lineno, row in rows:
        if len(row) != len(head):
            raise InputError(
                f"line {lineno}: {len(row)} fields where the header has {len(head)}", path
            )
    return head, rows


def _synthseg_row(
    head: list[str], lineno: int, row: list[str], path: Path
) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, cell in zip(head[1:], row[1:], strict=True):
        try:
            value = float(cell)
        except ValueError:
            raise InputError(
                f"line {lineno}: column {name!r} holds {cell!r}, expected a volume in mm^3", path
            ) from None
        if not math.isfinite(value) or value < 0:
            raise InputError(f"line {lineno}: column {name!r} is {value}, expected >= 0", path)
        out[name] = value
    return out


def _pick_synthseg_row(
    rows: list[tuple[int, list[str]]], subject: str | None, path: Path
) -> tuple[int, list[str]]:
    found = ", ".join(repr(r[0]) for _, r in rows[:20])
    if subject is None:
        if len(rows) == 1:
            return rows[0]
        raise InputError(
            f"{len(rows)} subjects in the file ({found}); say which with subject=", path
        )
    chosen = [(n, r) for n, r in rows if _strip_image_ext(r[0]) == _strip_image_ext(subject)]
    if len(chosen) != 1:
        how = "no row" if not chosen else f"{len(chosen)} rows"
        raise InputError(f"{how} for subject {subject!r}; subjects in the file: {found}", path)
    return chosen[0]


def read_synthseg_volumes(path: str | Path, subject: str | None = None) -> dict[str, float]:
    """Read a SynthSeg ``--vol`` CSV: structure volumes of one subject, mm^3.

    SynthSeg writes a header row (``subject,total intracranial,left cerebral white matter,
    left cerebral cortex,...`` for a file shared by several subjects, the same with an empty
    first cell for a file of one subject) and one row of volumes per subject. Volumes are
    soft (sums of posterior probabilities times voxel volume), so they differ slightly from
    voxel counts of the hard segmentation.

    Parameters
    ----------
    path : str or Path
        The CSV file.
    subject : str, optional
        Row to take, matched against the first column (with or without ``.nii``/``.nii.gz``/
        ``.mgz``). Needed when the file holds several subjects.

    Returns
    -------
    dict of str to float
        Column name (as written, stripped) -> volume in mm^3.

    Raises
    ------
    InputError
        The file is missing, not a SynthSeg volume CSV, has no data row, a non-numeric value
        (the message names the line and column), several rows and no (or an unknown)
        ``subject``.

    References
    ----------
    .. [1] Billot B et al. SynthSeg. Med Image Anal 2023;86:102789.

    Examples
    --------
    >>> vols = read_synthseg_volumes("sub-01_synthseg_vol.csv")  # doctest: +SKIP
    >>> vols["left thalamus"]  # doctest: +SKIP
    7421.5
    """
    path = Path(path)
    head, rows = _synthseg_table(path)
    lineno, row = _pick_synthseg_row(rows, subject, path)
    return _synthseg_row(head, lineno, row, path)


def _csv_volume(vols: dict[str, float], number: int) -> float | None:
    want = _norm_name(ASEG_LABELS[number].name)
    for name, value in vols.items():
        if _norm_name(name) == want:
            return value
    return None


# --------------------------------------------------------------------------------------------
# the bring-your-own result


@dataclass(frozen=True, eq=False)
class ExternalSegmentation:
    """A FreeSurfer, FastSurfer or SynthSeg result, read for qsmiron.

    Attributes
    ----------
    source : str
        ``"freesurfer"``, ``"fastsurfer"`` or ``"synthseg"``.
    label_path : Path
        The label map read.
    labels : (X, Y, Z) int32 ndarray
        The label map in aseg numbering (see :data:`ASEG_LABELS`, :func:`label_masks`).
    affine : (4, 4) float64 ndarray
        Voxel-to-world (scanner RAS) transform of ``labels``.
    voxel_size : tuple of 3 floats
        Voxel size of ``labels``, mm.
    thalamus_left_ml, thalamus_right_ml : float
        Thalamus volumes, mL: from ``aseg.stats`` (Volume_mm3 of SegId 10/49) or the SynthSeg
        CSV when read, else voxel counts of the label map times the voxel volume.
    total_gray_ml : float
        Total grey-matter volume, mL: FreeSurfer's TotalGrayVol when ``aseg.stats`` has it,
        else computed as in :func:`gray_matter_volumes_ml` (an approximation of FreeSurfer's
        surface-based value).
    mean_thickness_mm : float or None
        Mean cortical thickness, mm (area-weighted over hemispheres, see
        :func:`mean_cortical_thickness`); None without ``?h.aparc*.stats`` (always for SynthSeg).
    intracranial_ml : float or None
        Estimated total intracranial volume (eTIV; SynthSeg's total intracranial), mL.
    files_read : tuple of Path
        Every file the numbers come from, for the provenance.
    origin : dict of str to str
        Where each number came from: keys ``"thalamus"``, ``"total_gray"``,
        ``"mean_thickness"``, ``"intracranial"``.
    version : str or None
        FreeSurfer/FastSurfer version if recorded (``scripts/build-stamp.txt`` or the
        stats files' ``cvs_version``).
    aseg_stats : AsegStats or None
        The parsed ``aseg.stats``, if read.
    aparc_stats : tuple of (AparcStats, AparcStats) or None
        The parsed left and right ``?h.aparc*.stats``, if read.
    synthseg_volumes : dict of str to float or None
        The SynthSeg CSV row (mm^3), if read.
    """

    source: str
    label_path: Path
    labels: np.ndarray
    affine: np.ndarray
    voxel_size: tuple[float, float, float]
    thalamus_left_ml: float
    thalamus_right_ml: float
    total_gray_ml: float
    mean_thickness_mm: float | None
    intracranial_ml: float | None
    files_read: tuple[Path, ...]
    origin: dict[str, str]
    version: str | None = None
    aseg_stats: AsegStats | None = None
    aparc_stats: tuple[AparcStats, AparcStats] | None = None
    synthseg_volumes: dict[str, float] | None = None

    @property
    def thalamus_ml(self) -> float:
        """Left + right thalamus volume, mL."""
        return self.thalamus_left_ml + self.thalamus_right_ml

    def masks(self, structures: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Named boolean masks of :attr:`labels` (see :func:`label_masks`).

        Parameters
        ----------
        structures : sequence of str, optional
            Structure keys; default as in :func:`label_masks`.

        Returns
        -------
        dict of str to (X, Y, Z) ndarray of bool
            One mask per structure.
        """
        return label_masks(self.labels, structures)

    def provenance(self) -> dict[str, Any]:
        """What was read and where each number came from, for a JSON sidecar.

        Returns
        -------
        dict
            JSON-ready record (paths as strings, volumes in mL, thickness in mm).
        """
        return {
            "Source": self.source,
            "Version": self.version,
            "LabelMap": str(self.label_path),
            "FilesRead": [str(p) for p in self.files_read],
            "ThalamusLeft_mL": self.thalamus_left_ml,
            "ThalamusRight_mL": self.thalamus_right_ml,
            "Thalamus_mL": self.thalamus_ml,
            "TotalGray_mL": self.total_gray_ml,
            "MeanCorticalThickness_mm": self.mean_thickness_mm,
            "Intracranial_mL": self.intracranial_ml,
            "Origin": dict(self.origin),
        }


def _thalamus_from_stats(aseg: AsegStats) -> tuple[float, float]:
    missing = [n for n in _THALAMUS if n not in aseg.volumes_mm3]
    if missing:
        names = " and ".join(f"{n} ({_label_name(n)} / {_FS6_NAMES[n]})" for n in missing)
        found = ", ".join(str(s) for s in sorted(aseg.volumes_mm3)[:40])
        raise InputError(
            f"the segmentation table has no row for SegId {names}; SegIds found: {found}",
            aseg.path,
        )
    return aseg.volumes_mm3[10] / 1000.0, aseg.volumes_mm3[49] / 1000.0


def _check_stats_match_labels(aseg: AsegStats, labels: np.ndarray, label_path: Path) -> None:
    """Warn when aseg.stats was not computed from this label map (e.g. edited afterwards)."""
    if not aseg.n_voxels or aseg.seg_file is None:
        return
    if Path(aseg.seg_file).name != label_path.name:
        return
    for number in _THALAMUS:
        if number not in aseg.n_voxels:
            continue
        count = int(np.count_nonzero(labels == number))
        if aseg.n_voxels[number] != count:
            log.warning(
                "%s: NVoxels of SegId %d is %d but %s holds %d voxels of label %d; the stats "
                "were not computed from this label map (edited after recon-all?)",
                aseg.path, number, aseg.n_voxels[number], label_path, count, number,
            )


def _find_aparc_pair(stats_dir: Path) -> tuple[Path, Path] | None:
    half: list[tuple[Path, Path]] = []
    for atlas in _APARC_ATLASES:
        lh, rh = stats_dir / f"lh.{atlas}.stats", stats_dir / f"rh.{atlas}.stats"
        if lh.is_file() and rh.is_file():
            return lh, rh
        if lh.is_file():
            half.append((lh, rh))
        elif rh.is_file():
            half.append((rh, lh))
    if half:
        there, missing = half[0]
        raise InputError(
            f"found {there.name} but not {missing.name}: cortical thickness needs both "
            f"hemispheres (an unfinished or partly copied run?); {stats_dir} holds "
            f"{_listing(stats_dir)}",
            missing,
        )
    return None


def _choose_label_map(root: Path, mri: Path, label_map: str | Path | None) -> Path:
    if label_map is not None:
        candidate = Path(label_map)
        if not candidate.is_absolute():
            inside = mri / candidate
            candidate = inside if inside.exists() or not candidate.exists() else candidate
        if not candidate.exists():
            raise InputError(f"label map not found; {mri} holds {_listing(mri)}", candidate)
        return candidate
    for name in _FREESURFER_MAPS + _FASTSURFER_MAPS:
        if (mri / name).is_file():
            return mri / name
    expected = ", ".join(_FREESURFER_MAPS + _FASTSURFER_MAPS)
    raise InputError(
        f"no label map in mri/: expected one of {expected}; found {_listing(mri)}", mri
    )


def _read_build_stamp(root: Path) -> tuple[str | None, Path | None]:
    stamp = root / "scripts" / "build-stamp.txt"
    if not stamp.is_file():
        return None, None
    try:
        text = stamp.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None, None
    return (text.splitlines()[0].strip() if text else None), stamp


def read_freesurfer_subject(
    subject_dir: str | Path,
    *,
    label_map: str | Path | None = None,
    thickness_weighting: str = "area",
) -> ExternalSegmentation:
    """Read a FreeSurfer or FastSurfer subject folder: label map, volumes and thickness.

    The folder has FreeSurfer's layout (``mri/``, ``stats/``, ``surf/``, ``scripts/``). Read:

    * the label map, by preference ``mri/aseg.mgz``, then ``aparc+aseg.mgz``,
      ``aparc.DKTatlas+aseg.mgz``, and FastSurfer's ``aparc.DKTatlas+aseg.deep.withCC.mgz``,
      ``aparc.DKTatlas+aseg.deep.mgz``, ``aseg.auto_noCCseg.mgz`` (or ``label_map``);
    * ``stats/aseg.stats`` (FastSurfer seg-only: ``aseg+DKT.stats``): thalamus volumes
      (SegId 10/49 Volume_mm3), TotalGrayVol and eTIV. Without it, the thalamus and the total
      grey matter come from voxel counts of the label map, with a logged warning;
    * ``stats/?h.aparc.stats`` (else ``aparc.DKTatlas``, FastSurfer's
      ``aparc.DKTatlas.mapped``, ``aparc.a2009s``): mean cortical thickness, the
      area-weighted mean of the hemispheres. Without them the thickness is None (logged).

    The source is ``"fastsurfer"`` when ``mri/aparc.DKTatlas+aseg.deep.mgz`` or
    ``scripts/deep-seg.log`` exists, else ``"freesurfer"``. FreeSurfer 5.x, 6 and 7 are
    read alike (labels are identified by number, so ``Left-Thalamus-Proper`` and
    ``Left-Thalamus`` are both label 10).

    Parameters
    ----------
    subject_dir : str or Path
        ``$SUBJECTS_DIR/<subject>`` of FreeSurfer, or a FastSurfer output subject folder.
    label_map : str or Path, optional
        Label map to use instead of the default choice: a name inside ``mri/`` or a path.
    thickness_weighting : {"area", "vertices"}, optional
        How the hemispheres' mean thicknesses are pooled (see :func:`mean_cortical_thickness`).

    Returns
    -------
    ExternalSegmentation
        Label map, thalamus volumes, total grey matter, mean thickness, files read, origin of
        each number.

    Raises
    ------
    InputError
        The folder is missing or has no ``mri/`` folder or label map (the message lists what
        is there); the label map is unreadable, not 3-D, non-integer or without thalamus
        labels 10/49; a stats file is corrupt (the message names the line) or lacks the
        thalamus rows; only one hemisphere's aparc stats exists, or lh and rh disagree.

    References
    ----------
    .. [1] Fischl B. FreeSurfer. NeuroImage 2012;62:774-781.
    .. [2] Henschel L et al. FastSurfer. NeuroImage 2020;219:117012.
    .. [3] Chiang GC et al. Quantitative susceptibility mapping of the thalamus: relationships
       with thalamic volume, total gray matter volume, and T2 lesion burden. AJNR
       2018;39:467-472 (thalamic volume, total grey matter and thickness from FreeSurfer 5.1).

    Examples
    --------
    >>> seg = read_freesurfer_subject("derivatives/freesurfer/sub-01")  # doctest: +SKIP
    >>> seg.source, round(seg.thalamus_ml, 2), round(seg.total_gray_ml), seg.mean_thickness_mm
    ... # doctest: +SKIP
    ('freesurfer', 13.96, 660, 2.4012)
    """
    if thickness_weighting not in ("area", "vertices"):
        raise InputError(
            f"thickness_weighting must be 'area' or 'vertices', found {thickness_weighting!r}"
        )
    root = Path(subject_dir)
    if not root.exists():
        parent = root.parent if root.parent.is_dir() else None
        found = f"; {parent} holds {_listing(parent)}" if parent is not None else ""
        raise InputError(f"FreeSurfer/FastSurfer subject folder not found{found}", root)
    if not root.is_dir():
        raise InputError(
            "expected a FreeSurfer/FastSurfer subject folder (with mri/ and stats/), found a "
            "file; for a SynthSeg segmentation use read_synthseg",
            root,
        )
    mri = root / "mri"
    if not mri.is_dir():
        hint = ""
        if root.name in ("mri", "stats", "surf"):
            hint = f" (this looks like the {root.name}/ folder: pass its parent)"
        raise InputError(
            f"no mri/ folder: not a FreeSurfer/FastSurfer subject folder{hint}; expected mri/, "
            f"stats/, surf/; found {_listing(root)}",
            root,
        )
    fastsurfer = any((root / marker).exists() for marker in _FASTSURFER_MARKERS)
    source = "fastsurfer" if fastsurfer else "freesurfer"
    label_path = _choose_label_map(root, mri, label_map)
    labels, affine = load_label_map(label_path)
    vs = _voxel_size_of(affine)
    files: list[Path] = [label_path]
    origin: dict[str, str] = {}

    stats_dir = root / "stats"
    aseg = None
    if stats_dir.is_dir():
        for name in _ASEG_STATS:
            if (stats_dir / name).is_file():
                aseg = read_aseg_stats(stats_dir / name)
                files.append(aseg.path)
                break
    if aseg is not None:
        th_left, th_right = _thalamus_from_stats(aseg)
        _check_stats_match_labels(aseg, labels, label_path)
        origin["thalamus"] = f"{aseg.path.name}: Volume_mm3 of SegId 10 and 49"
    else:
        log.warning(
            "%s: no %s; thalamus and grey-matter volumes from voxel counts of %s",
            stats_dir, " or ".join(_ASEG_STATS), label_path.name,
        )
        vols = structure_volumes_ml(labels, vs, ("thalamus_left", "thalamus_right"))
        th_left, th_right = vols["thalamus_left"], vols["thalamus_right"]
        origin["thalamus"] = f"{label_path.name}: voxel counts of labels 10 and 49"

    total_gray_mm3 = aseg.total_gray_mm3 if aseg is not None else None
    if total_gray_mm3 is not None:
        total_gray = total_gray_mm3 / 1000.0
        origin["total_gray"] = f"{aseg.path.name}: TotalGrayVol"  # type: ignore[union-attr]
    else:
        if aseg is not None:
            log.info("%s has no TotalGrayVol; total grey matter from the label map", aseg.path)
        total_gray = gray_matter_volumes_ml(labels, vs)["total"]
        origin["total_gray"] = (
            f"{label_path.name}: voxel counts of cortex, subcortical grey and cerebellar "
            "cortex (approximates FreeSurfer's surface-based TotalGray)"
        )

    intracranial = None
    if aseg is not None and aseg.intracranial_mm3 is not None:
        intracranial = aseg.intracranial_mm3 / 1000.0
        origin["intracranial"] = f"{aseg.path.name}: eTIV"

    thickness = None
    aparc = None
    pair = _find_aparc_pair(stats_dir) if stats_dir.is_dir() else None
    if pair is not None:
        aparc = (read_aparc_stats(pair[0], "lh"), read_aparc_stats(pair[1], "rh"))
        thickness = mean_cortical_thickness(*aparc, weighting=thickness_weighting)
        files.extend(pair)
        weight = "white-surface area" if thickness_weighting == "area" else "vertex count"
        origin["mean_thickness"] = (
            f"{pair[0].name}, {pair[1].name}: MeanThickness, hemispheres weighted by {weight}"
        )
    else:
        log.info("%s: no ?h.aparc*.stats pair; mean cortical thickness is None", stats_dir)

    version, stamp = _read_build_stamp(root)
    if stamp is not None:
        files.append(stamp)
    if version is None and aseg is not None:
        version = aseg.version
    log.info(
        "%s (%s): thalamus %.2f + %.2f mL, total grey %.1f mL, thickness %s mm",
        root, source, th_left, th_right, total_gray,
        "n/a" if thickness is None else f"{thickness:.3f}",
    )
    return ExternalSegmentation(
        source=source,
        label_path=label_path,
        labels=labels,
        affine=affine,
        voxel_size=vs,
        thalamus_left_ml=float(th_left),
        thalamus_right_ml=float(th_right),
        total_gray_ml=float(total_gray),
        mean_thickness_mm=None if thickness is None else float(thickness),
        intracranial_ml=intracranial,
        files_read=tuple(files),
        origin=origin,
        version=version,
        aseg_stats=aseg,
        aparc_stats=aparc,
    )


def read_synthseg(
    seg_path: str | Path,
    volumes_csv: str | Path | None = None,
    *,
    subject: str | None = None,
) -> ExternalSegmentation:
    """Read a SynthSeg segmentation (and optionally its ``--vol`` CSV).

    SynthSeg labels use the aseg numbering (thalamus 10/49, ...). With the CSV, the thalamus
    volumes, total grey matter (sum of the CSV's cortex, subcortical grey and cerebellar cortex
    columns) and total intracranial volume come from it (SynthSeg's soft volumes); without it,
    from voxel counts of the label map. SynthSeg has no TotalGray and no cortical thickness:
    total grey matter follows FreeSurfer's definition (see :func:`gray_matter_volumes_ml`) and
    is an approximation of FreeSurfer's surface-based TotalGray; the thickness is None.

    Parameters
    ----------
    seg_path : str or Path
        SynthSeg output label map (``.nii``, ``.nii.gz`` or ``.mgz``).
    volumes_csv : str or Path, optional
        SynthSeg ``--vol`` CSV.
    subject : str, optional
        Row of the CSV to use when it holds several subjects (see
        :func:`read_synthseg_volumes`). By default the only row, or the row named like
        ``seg_path`` without a ``_synthseg`` suffix.

    Returns
    -------
    ExternalSegmentation
        With ``source="synthseg"`` and ``mean_thickness_mm=None``.

    Raises
    ------
    InputError
        Unreadable, non-3-D or non-integer label map, or one without thalamus labels 10/49;
        a CSV that is malformed, has no thalamus columns or no row for the subject.

    References
    ----------
    .. [1] Billot B et al. SynthSeg: segmentation of brain MRI scans of any contrast and
       resolution without retraining. Med Image Anal 2023;86:102789.

    Examples
    --------
    >>> seg = read_synthseg("sub-01_synthseg.nii.gz", "sub-01_vol.csv")  # doctest: +SKIP
    >>> seg.source, seg.mean_thickness_mm  # doctest: +SKIP
    ('synthseg', None)
    """
    seg_path = Path(seg_path)
    labels, affine = load_label_map(seg_path)
    vs = _voxel_size_of(affine)
    files: list[Path] = [seg_path]
    origin: dict[str, str] = {}
    from_labels = structure_volumes_ml(labels, vs, ("thalamus_left", "thalamus_right"))
    gm_labels = gray_matter_volumes_ml(labels, vs)["total"]
    gm_origin = (
        f"{seg_path.name}: voxel counts of cortex, subcortical grey and cerebellar cortex "
        "(approximates FreeSurfer's surface-based TotalGray)"
    )
    vols = None
    intracranial = None
    if volumes_csv is not None:
        csv_path = Path(volumes_csv)
        head, rows = _synthseg_table(csv_path)
        if subject is None and len(rows) > 1:
            subject = _strip_image_ext(seg_path.name).removesuffix("_synthseg")
        lineno, row = _pick_synthseg_row(rows, subject, csv_path)
        vols = _synthseg_row(head, lineno, row, csv_path)
        files.append(csv_path)
        left, right = _csv_volume(vols, 10), _csv_volume(vols, 49)
        if left is None or right is None:
            raise InputError(
                "no 'left thalamus' and 'right thalamus' columns; columns found: "
                + ", ".join(list(vols)[:40]),
                csv_path,
            )
        th_left, th_right = left / 1000.0, right / 1000.0
        origin["thalamus"] = f"{csv_path.name}: left/right thalamus (SynthSeg soft volumes)"
        for key, value in (("thalamus_left", th_left), ("thalamus_right", th_right)):
            ref = from_labels[key]
            if ref > 0 and abs(value - ref) > 0.2 * ref:
                log.warning(
                    "%s: %s %.2f mL differs by more than 20%% from the %.2f mL of voxels in %s;"
                    " is the CSV row of this subject?", csv_path, key, value, ref, seg_path,
                )
        gm_parts = [_csv_volume(vols, n) for n in TISSUE_CLASSES["gray_matter"]]
        if all(v is not None for v in gm_parts):
            total_gray = sum(gm_parts) / 1000.0  # type: ignore[arg-type]
            origin["total_gray"] = (
                f"{csv_path.name}: cortex + subcortical grey + cerebellar cortex columns "
                "(approximates FreeSurfer's surface-based TotalGray)"
            )
        else:
            log.warning("%s lacks grey-matter columns; total grey matter from labels", csv_path)
            total_gray = gm_labels
            origin["total_gray"] = gm_origin
        for name, value in vols.items():
            if _norm_name(name) == "totalintracranial":
                intracranial = value / 1000.0
                origin["intracranial"] = f"{csv_path.name}: total intracranial"
                break
    else:
        th_left, th_right = from_labels["thalamus_left"], from_labels["thalamus_right"]
        origin["thalamus"] = f"{seg_path.name}: voxel counts of labels 10 and 49"
        total_gray = gm_labels
        origin["total_gray"] = gm_origin
    log.info(
        "%s (synthseg): thalamus %.2f + %.2f mL, total grey %.1f mL",
        seg_path, th_left, th_right, total_gray,
    )
    return ExternalSegmentation(
        source="synthseg",
        label_path=seg_path,
        labels=labels,
        affine=affine,
        voxel_size=vs,
        thalamus_left_ml=float(th_left),
        thalamus_right_ml=float(th_right),
        total_gray_ml=float(total_gray),
        mean_thickness_mm=None,
        intracranial_ml=intracranial,
        files_read=tuple(files),
        origin=origin,
        synthseg_volumes=vols,
    )
