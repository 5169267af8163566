"""Registration with ANTs (``antspyx``): bias correction, rigid and template registration.

Arrays with a NIfTI affine (RAS+ world, mm) go in and out; the ANTs images in between use ITK's
LPS world convention, converted here and nowhere else. Transforms are ANTs files (``.mat`` for
linear, ``.nii.gz`` for displacement fields) in a working folder, so they can be saved as BIDS
derivatives and applied again with ANTs tools.

* :func:`n4` - N4 bias-field correction (Tustison et al., IEEE TMI 2010;29:1310).
* :func:`register_rigid` - rigid (6 degrees of freedom) registration by Mattes mutual
  information, initialised at the identity: images of one session share the scanner's world
  coordinates, so the identity is right up to head motion, and centring by mass (what ANTs
  does by default) would be wrong for partial-coverage slabs. It reports the head motion
  found (rotation, translation) and the overlap of the two brains after registration.
* :func:`register_template` - the ICBM152 2009c template to a subject's T1w: affine, then SyN
  (Avants et al., Med Image Anal 2008;12:26) on brain-extracted images.
* :func:`resample` - apply a chain of transforms to an image or a label map (label maps with
  partial-volume fractions, see :func:`resample_labels`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qsmiron import _checks
from qsmiron._distance import depth_mm
from qsmiron.errors import InputError, QsmironError
from qsmiron.recon.mask import head_mask as _head_mask

__all__ = [
    "LinearTransform",
    "TemplateRegistration",
    "from_ants",
    "n4",
    "register_rigid",
    "register_template",
    "resample",
    "resample_labels",
    "resample_many",
    "rigid_finest_mm",
    "to_ants",
]

log = logging.getLogger(__name__)

_LPS = np.diag([-1.0, -1.0, 1.0])

#: Seed of ANTs' random sampling (``ANTS_RANDOM_SEED``) unless the environment sets one.
ANTS_SEED = 20180467


def _ants() -> Any:
    """Import antspyx lazily (it is heavy) with ITK threads matched to the CPU budget.

    ``ANTS_RANDOM_SEED`` fixes the seed of ANTs' metric sampling and Atropos' initialisation
    (otherwise drawn from the clock): reruns on the same inputs give the same result.
    """
    os.environ.setdefault(
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(max(1, len(os.sched_getaffinity(0))))
    )
    os.environ.setdefault("ANTS_RANDOM_SEED", str(ANTS_SEED))
    try:
        import ants
    except ImportError as exc:  # pragma: no cover - dependency declared in pyproject
        raise QsmironError("registration needs antspyx: pip install antspyx") from exc
    return ants


def to_ants(data: np.ndarray, affine: np.ndarray) -> Any:
    """A numpy volume with a NIfTI (RAS+) affine as an ANTs image (LPS world).

    Parameters
    ----------
    data : (X, Y, Z) array
        Voxel values (converted to float32).
    affine : (4, 4) array
        Voxel-to-world (RAS+, mm) transform; shears are not supported.

    Returns
    -------
    ants.ANTsImage
    """
    ants = _ants()
    aff = np.asarray(affine, float)
    m = _LPS @ aff[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(m)):
        raise InputError(f"affine has a zero or non-finite voxel axis:\n{aff}")
    direction = m / spacing
    origin = _LPS @ aff[:3, 3]
    # geometry rounded to float32, as a NIfTI header stores it: ANTs compares the grids of
    # images it reads back from files with a tolerance of 1e-6
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32),
                           origin=tuple(float(np.float32(o)) for o in origin),
                           spacing=tuple(float(np.float32(s)) for s in spacing),
                           direction=direction)


def from_ants(img: Any) -> tuple[np.ndarray, np.ndarray]:
    """An ANTs image as ``(data, affine)`` with a NIfTI (RAS+) affine."""
    direction = np.asarray(img.direction, float)
    spacing = np.asarray(img.spacing, float)
    aff = np.eye(4)
    aff[:3, :3] = _LPS @ direction @ np.diag(spacing)
    aff[:3, 3] = _LPS @ np.asarray(img.origin, float)
    return img.numpy().astype(np.float32, copy=False), aff


#: N4 schedule of the T1w segmentation: three fitting levels, at most 50/50/30 iterations.
N4_CONVERGENCE: dict[str, Any] = {"iters": [50, 50, 30], "tol": 1e-6}


def n4(
    image: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    resolution_mm: float = 6.0,
    convergence: dict[str, Any] | None = N4_CONVERGENCE,
) -> np.ndarray:
    """N4 bias-field correction.

    Parameters
    ----------
    image : (X, Y, Z) array
        Image with a smooth multiplicative bias.
    affine : (4, 4) array
        Its voxel-to-world transform.
    mask : (X, Y, Z) bool, optional
        Where the bias is estimated (default: the ANTs head mask of the image).
    resolution_mm : float
        The B-spline fit runs on the image shrunk to about this voxel size. Receive-field bias
        varies over several centimetres, so 6 mm loses nothing; on a 1 mm head it takes a
        third of the time of the 4 mm that ANTs scripts default to. 8 mm (measured
        2026-11-28, not adopted) takes 40-50 % of 6 mm's time and fits the true field of
        simulated scans as closely (2.1-4.1 % RMS left against 2.0-4.0 %), but what N4 finds
        on images without a field grows: 2.5 -> 3.1-3.3 % on the real patients' FLAIR,
        3.9 -> 4.3 % on the bias-free phantom, nearer the lesion stage's 5 % "auto" limit.
    convergence : dict, optional
        ``{"iters": [...], "tol": ...}`` per fitting level; None: ANTs' default (four levels
        of 50 iterations, tolerance 1e-7).

    Returns
    -------
    (X, Y, Z) float32
        Corrected image (the bias divided out; intensity scale kept).

    References
    ----------
    .. [1] Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction.
       IEEE Trans Med Imaging 2010;29:1310-1320.
    """
    ants = _ants()
    img = to_ants(np.maximum(image, 0), affine)
    m = ants.get_mask(img) if mask is None else to_ants(np.asarray(mask, np.float32), affine)
    shrink = max(1, int(round(resolution_mm / float(np.min(img.spacing)))))
    kw = {} if convergence is None else {"convergence": convergence}
    out = ants.n4_bias_field_correction(img, mask=m, shrink_factor=shrink, **kw)
    return out.numpy().astype(np.float32)


@dataclass
class LinearTransform:
    """A linear (rigid or affine) registration result.

    Attributes
    ----------
    path : Path
        ANTs transform file (moving -> fixed, in ANTs' convention for ``apply_transforms``).
    matrix : (4, 4) ndarray
        The same map as a RAS+ world matrix taking a point of the *fixed* image's world to
        the corresponding point of the *moving* image's world (ITK's point-mapping direction).
    rotation_deg : float
        Rotation angle of the transform, degrees.
    translation_mm : float
        Displacement of the fixed image's centre, mm.
    coverage : float or None
        Fraction of the fixed image's mask covered by the moving image's mask after
        registration (1 when, e.g., the whole valid QSM region lies inside the registered
        T1w brain), where both masks were given.
    """

    path: Path
    matrix: np.ndarray
    rotation_deg: float
    translation_mm: float
    coverage: float | None = None


def _read_matrix(ants: Any, path: Path) -> np.ndarray:
    return _matrix(ants.read_transform(str(path)))


def _matrix(tx: Any) -> np.ndarray:
    """An ANTs affine transform as a RAS+ world matrix (fixed -> moving points)."""
    params = np.asarray(tx.parameters, float)
    fixed = np.asarray(tx.fixed_parameters, float)
    a = params[:9].reshape(3, 3)
    t = params[9:12]
    # ITK: y = A (x - c) + t + c (LPS); convert to RAS: flip x, y.
    m_lps = np.eye(4)
    m_lps[:3, :3] = a
    m_lps[:3, 3] = t + fixed - a @ fixed
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ m_lps @ flip


def _rotation_translation(matrix: np.ndarray, centre_ras: np.ndarray) -> tuple[float, float]:
    a = matrix[:3, :3]
    u, _, vt = np.linalg.svd(a)
    r = u @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))
    moved = a @ centre_ras + matrix[:3, 3]
    return angle, float(np.linalg.norm(moved - centre_ras))


def _rank_correlation(a: np.ndarray, b: np.ndarray, n_max: int = 200_000) -> float:
    """Spearman correlation of two samples (a deterministic subsample of at most ``n_max``)."""
    if a.size < 10:
        return 0.0
    step = max(1, a.size // n_max)
    ra = np.argsort(np.argsort(a[::step])).astype(np.float64)
    rb = np.argsort(np.argsort(b[::step])).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else 0.0


def _world_centre(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    c = (np.asarray(shape[:3], float) - 1.0) / 2.0
    return affine[:3, :3] @ c + affine[:3, 3]


def rigid_finest_mm(*affines: np.ndarray) -> float:
    """Finest level of a rigid registration between images of these voxel-to-world affines.

    Twice the voxel of the coarser image (geometric mean of its three dimensions), at least
    2 mm: mutual information finds a rigid motion to about a tenth of the finest level's
    voxel, which is then a twentieth of the data's voxel; finer levels cost 8x per halving
    for nothing the data can show.

    Examples
    --------
    >>> rigid_finest_mm(np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0]))
    4.0
    >>> rigid_finest_mm(np.eye(4), np.diag([0.5, 0.5, 2.0, 1.0]))
    2.0
    """
    coarsest = max(float(np.prod(np.sqrt((np.asarray(a)[:3, :3] ** 2).sum(0)))) ** (1 / 3)
                   for a in affines)
    return float(max(2.0, 2.0 * coarsest))


def register_rigid(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    workdir: str | Path,
    name: str = "rigid",
    *,
    fixed_mask: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    init: str = "identity",
    levels_mm: tuple[float, ...] | None = None,
    iterations: tuple[int, ...] = (200, 100, 20),
    sampling_rate: float = 0.1,
) -> LinearTransform:
    """Rigid registration of ``moving`` onto ``fixed`` by Mattes mutual information.

    Parameters
    ----------
    fixed, moving : (X, Y, Z) arrays
        The two images (any contrasts: mutual information).
    fixed_affine, moving_affine : (4, 4) arrays
        Their voxel-to-world (RAS+) transforms.
    workdir : str or Path
        Folder for the transform file ``<name>_0GenericAffine.mat``.
    name : str
        File prefix.
    fixed_mask, moving_mask : bool arrays, optional
        Masks of the two images (brain, head, valid region): the fraction of the fixed mask
        that the registered moving mask covers is reported. They do not restrict the metric
        (a metric mask made ANTs' sampled mutual information fail on coarse levels of the
        simulated heads: whole images register reliably).
    init : {"identity", "centre"}
        Start at the scanner's world coordinates ("identity", right for images of one session)
        or with the centres of mass aligned (for images whose world coordinates disagree).
    levels_mm : tuple of float, optional
        Multi-resolution schedule: approximate voxel size of each level, mm (shrink factors
        of the fixed image's finest voxel). A rigid motion is found to a fraction of a voxel
        of the finest level; 2 mm gives 0.2-0.3 mm and costs an eighth of 1 mm. Default:
        8, 4 and 2 mm, ending at :func:`rigid_finest_mm` of the two images (8 and 4 mm for
        two 2 mm images: 0.14 mm and 0.03 degrees from the truth on a simulated 2 mm FLAIR
        to T1w, in 1 s instead of 9 s).
    iterations : tuple of int
        Iterations per level (the first ones, when there are fewer levels). The finest level
        starts within a few tenths of a millimetre of the answer, and its random sampling, not
        its iterations, limits it: 20 there find the FLAIR, post-gadolinium T1w and T2 of the
        two real patients as 50 do (0.27-0.52 mm from their published alignment at 70 mm from
        the centre with either) and a simulated FLAIR moved by 10-15 degrees and 6-11 mm as
        well (0.09-0.20 mm from the truth, 0.10-0.24 with 50), 1-1.5 s sooner each.
    sampling_rate : float
        Fraction of voxels (random) on which the metric is evaluated: 0.1 is 80,000 points on
        a head at 2 mm, plenty for a 32-bin joint histogram of 6 parameters, and half the
        time of ANTs' 0.2 (FLAIR, post-gadolinium T1w and GRE magnitude to T1w after rigid
        motions of 3-15 degrees and 3-9 mm: 0.02-0.03 mm and 0.02 degrees from the truth
        with either on simulated heads; 0.18-0.36 mm against 0.16-0.29 mm from the two real
        patients' published alignment).

    Returns
    -------
    LinearTransform
    """
    if not 0.0 < sampling_rate <= 1.0:
        raise InputError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
    ants = _ants()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    if levels_mm is None:
        finest_mm = rigid_finest_mm(fixed_affine, moving_affine)
        levels_mm = tuple(sorted({max(v, finest_mm) for v in (8.0, 4.0, 2.0)}, reverse=True))
    iterations = tuple(iterations[: len(levels_mm)])
    # on grids no finer than the finest level: the smoothing and the metric at full
    # resolution would cost 8 times more for detail the schedule never uses
    f = _on_grid(fixed, fixed_affine, min(levels_mm))
    m = _on_grid(moving, moving_affine, min(levels_mm))
    finest = float(np.min(f.spacing))
    shrink_factors = tuple(max(1, int(round(mm / finest))) for mm in levels_mm)
    out = ants.registration(
        fixed=f, moving=m, type_of_transform="Rigid",
        initial_transform="Identity" if init == "identity" else None,
        outprefix=str(work / f"{name}_"), aff_metric="mattes",
        aff_iterations=iterations, aff_shrink_factors=shrink_factors,
        aff_smoothing_sigmas=tuple(max(s - 1, 0) for s in shrink_factors),
        aff_random_sampling_rate=sampling_rate,
    )
    path = Path(out["fwdtransforms"][-1])
    final = work / f"{name}_0GenericAffine.mat"
    if path != final:
        shutil.copyfile(path, final)
    centre = _world_centre(fixed.shape, np.asarray(fixed_affine))
    matrix = _read_matrix(ants, final)
    angle, shift = _rotation_translation(matrix, centre)
    coverage = None
    if fixed_mask is not None and moving_mask is not None:
        warped = resample(np.asarray(moving_mask, np.float32), moving_affine, fixed.shape,
                          fixed_affine, [final], interpolation="linear") >= 0.5
        fm = np.asarray(fixed_mask, bool)
        coverage = float(np.count_nonzero(warped & fm) / max(int(fm.sum()), 1))
    log.info("rigid %s: rotation %.1f deg, translation %.1f mm, coverage %s", name, angle, shift,
             "n/a" if coverage is None else f"{coverage:.3f}")
    return LinearTransform(final, matrix, angle, shift, coverage)


def resample(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed_shape: Sequence[int],
    fixed_affine: np.ndarray,
    transforms: Sequence[str | Path],
    interpolation: str = "linear",
    invert: Sequence[bool] | None = None,
) -> np.ndarray:
    """Resample ``moving`` onto a fixed grid through ANTs transforms.

    Parameters
    ----------
    moving : (X, Y, Z) array
        Image to move.
    moving_affine : (4, 4) array
        Its voxel-to-world transform.
    fixed_shape, fixed_affine
        Target grid.
    transforms : sequence of paths
        ANTs transforms, applied as ``antsApplyTransforms`` does (last listed first); an
        empty list resamples through the world coordinates only.
    interpolation : str
        ``"linear"``, ``"nearestNeighbor"``, ``"genericLabel"``, ``"bSpline"``, ...
        ``"genericLabel"`` (label maps: the label of largest linearly interpolated indicator)
        gives ANTs' result, computed by :func:`_label_vote` at a fraction of its cost.
    invert : sequence of bool, optional
        Which transforms to invert (linear ones only).

    Returns
    -------
    (X, Y, Z) float32
    """
    if interpolation == "genericLabel":
        return _label_vote(moving, moving_affine, fixed_shape, fixed_affine, transforms, invert)
    ants = _ants()
    f = to_ants(np.zeros(tuple(fixed_shape)[:3], np.float32), fixed_affine)
    m = to_ants(moving, moving_affine)
    if not transforms:  # through the world coordinates only
        out = ants.resample_image_to_target(m, f, interp_type=interpolation)
    else:
        # in single precision, as the images are: ANTs' default (double) copies both images
        # and the output to float64 and costs 5-10% more for differences below 1e-4
        out = ants.apply_transforms(fixed=f, moving=m, transformlist=[str(t) for t in transforms],
                                    interpolator=interpolation,
                                    whichtoinvert=list(invert) if invert is not None else None,
                                    singleprecision=True)
    return out.numpy().astype(np.float32)


#: Continuous indices closer than this (voxels) to a grid point or a half-way point count as
#: on it, so that the float32 rounding of the index grids cannot split exact ties.
_INDEX_SNAP = 1e-4


def _continuous_index(
    shape: Sequence[int],
    affine: np.ndarray,
    fixed_shape: Sequence[int],
    fixed_affine: np.ndarray,
    transforms: Sequence[str | Path],
    invert: Sequence[bool] | None,
) -> list[np.ndarray]:
    """Continuous index in a grid (``shape``, ``affine``) of every voxel of a fixed grid.

    Through affine transforms (what ANTs' registrations write) the chain is one matrix,
    evaluated here. Otherwise ANTs maps the grid's three index images by linear interpolation
    (exact: the index is an affine function of the position); a point outside the grid gets
    -1, and within half a voxel of its edge the edge's index (ITK's clamping).

    Returns
    -------
    list of three (X, Y, Z) arrays
    """
    ants = _ants()
    flags = list(invert) if invert is not None else [False] * len(transforms)
    chain = np.eye(4)
    for path, inv in zip(transforms, flags, strict=True):
        tx = ants.read_transform(str(path)) if str(path).endswith(".mat") else None
        if tx is None or tx.transform_type != "AffineTransform":
            break
        m = _matrix(tx)  # fixed world -> moving world, as ANTs applies it
        chain = chain @ (np.linalg.inv(m) if inv else m)
    else:
        a = np.linalg.inv(np.asarray(affine, float)) @ chain @ np.asarray(fixed_affine, float)
        ijk = [np.arange(k, dtype=np.float64) for k in tuple(fixed_shape)[:3]]
        # float32 like ANTs' maps (a 1e-5 voxel rounding; _INDEX_SNAP absorbs it)
        return [((a[r, 0] * ijk[0][:, None, None] + a[r, 1] * ijk[1][None, :, None] + a[r, 3])
                 + a[r, 2] * ijk[2][None, None, :]).astype(np.float32) for r in range(3)]
    out = []
    for axis in range(3):
        grid = np.arange(1, shape[axis] + 1, dtype=np.float32).reshape(
            [-1 if a == axis else 1 for a in range(3)])
        # in C order, so that the callers' flat views are views (ANTs' arrays come in
        # Fortran order: every ravel was a copy)
        out.append(np.ascontiguousarray(
            resample(np.broadcast_to(grid, tuple(shape)), affine, fixed_shape, fixed_affine,
                     transforms, "linear", invert) - 1.0))
    return out


def _cells(
    coords: list[np.ndarray], sel: np.ndarray, n: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The interpolation cell of each selected point: flat index of its base corner (clamped to
    the grid, as ITK does within half a voxel of the edge), the flat step to the far corner
    along each axis (0 on the last plane) and the trilinear fraction along each axis."""
    stride = np.array([n[1] * n[2], n[2], 1])
    base = np.zeros(sel.size, np.int64)
    step, frac = [], []
    for axis, co in enumerate(coords):
        c = np.round(co.ravel()[sel].astype(np.float64) / _INDEX_SNAP) * _INDEX_SNAP
        lo = np.maximum(np.floor(c), 0.0)
        frac.append(np.clip(c - lo, 0.0, 1.0))
        lo = lo.astype(np.int64)
        base += lo * stride[axis]
        step.append((lo < n[axis] - 1) * stride[axis])
    return base, step, frac


def _in_buffer(
    coords: list[np.ndarray], n: np.ndarray, box: tuple[slice, ...] | None = None
) -> np.ndarray:
    """Flat indices of the points inside a grid as ITK has it: within half a voxel of its edge
    voxels along every axis (elsewhere ANTs writes 0).

    With ``box`` (slices of voxel indices), only the points whose interpolation cell has a
    corner inside it are kept as well (where the image is zero outside the box, the others
    read 0 anyway).
    """
    inside = np.ones(coords[0].shape, bool)
    for axis, co in enumerate(coords):
        lower, upper = -0.5, n[axis] - 0.5
        if box is not None:
            lower = max(lower, box[axis].start - 1.0 - _INDEX_SNAP)
            upper = min(upper, box[axis].stop + _INDEX_SNAP)
        inside &= (co >= lower) & (co < upper)
    return np.flatnonzero(inside)


#: Points of a target grid sampled per pass (bounds the temporary arrays to ~100 MB).
_CHUNK = 1_000_000


def resample_many(
    images: Sequence[tuple[np.ndarray, str]],
    moving_affine: np.ndarray,
    fixed_shape: Sequence[int],
    fixed_affine: np.ndarray,
    transforms: Sequence[str | Path],
    invert: Sequence[bool] | None = None,
) -> list[np.ndarray]:
    """Several images of one grid moved onto a fixed grid through one chain of transforms.

    The chain is evaluated once: every fixed voxel's continuous index in the moving grid
    (:func:`_continuous_index`; through a warp that is three ANTs resamplings, whatever the
    number of images). Each image is then read at those indices by ITK's rule for its
    interpolator, so the result is :func:`resample`'s, image by image (to float32 rounding):

    * ``"linear"``: trilinear over the 8 corners of the cell, the corners clamped to the grid
      within half a voxel of its edge (ITK's linear interpolator);
    * ``"nearestNeighbor"``: the voxel at the index rounded half up;
    * ``"genericLabel"``: :func:`_label_vote`.

    Outside the moving grid (beyond half a voxel of its edge) every image reads 0.

    Parameters
    ----------
    images : sequence of (array, interpolation)
        The images, all of one shape on ``moving_affine``, each with its interpolator.
    moving_affine, fixed_shape, fixed_affine, transforms, invert
        As for :func:`resample`.

    Returns
    -------
    list of (X, Y, Z) float32
        One per image, in order.
    """
    if not images:
        return []
    shape = tuple(images[0][0].shape)
    for data, interpolation in images:
        if tuple(data.shape) != shape:
            raise InputError(f"resample_many: images of shapes {shape} and {data.shape}; "
                             "all must share one grid")
        if interpolation not in ("linear", "nearestNeighbor", "genericLabel"):
            raise InputError(f"resample_many: interpolation {interpolation!r} is not one of "
                             "'linear', 'nearestNeighbor', 'genericLabel'")
    fixed = tuple(fixed_shape)[:3]
    coords = _continuous_index(shape, moving_affine, fixed, fixed_affine, transforms, invert)
    n = np.array(shape)
    pts = _in_buffer(coords, n)
    out: list[np.ndarray] = []
    for data, interpolation in images:
        if interpolation == "genericLabel":
            out.append(_label_vote(data, moving_affine, fixed, fixed_affine, transforms,
                                   invert, coords=coords))
        else:
            out.append(np.zeros(fixed, np.float32))
    smooth = [(k, np.asarray(d, np.float32).ravel()) for k, (d, i) in enumerate(images)
              if i == "linear"]
    nearest = [(k, np.asarray(d, np.float32).ravel()) for k, (d, i) in enumerate(images)
               if i == "nearestNeighbor"]
    if not (smooth or nearest):
        return out
    for start in range(0, pts.size, _CHUNK):
        sel = pts[start:start + _CHUNK]
        base, step, frac = _cells(coords, sel, n)
        if smooth:
            # single precision, as ANTs interpolates here (resample's singleprecision)
            fr = [(1.0 - f.astype(np.float32), f.astype(np.float32)) for f in frac]
            acc = [np.zeros(sel.size, np.float32) for _ in smooth]
            for corner in range(8):
                bits = [(corner >> a) & 1 for a in range(3)]
                at = base + bits[0] * step[0] + bits[1] * step[1] + bits[2] * step[2]
                w = fr[0][bits[0]] * fr[1][bits[1]] * fr[2][bits[2]]
                for a, (_, flat) in zip(acc, smooth, strict=True):
                    a += w * flat[at]
            for a, (k, _) in zip(acc, smooth, strict=True):
                out[k].ravel()[sel] = a
        if nearest:
            # the index rounded half up is the cell's far corner where the fraction reaches
            # one half (never on the last plane, which ends half a voxel out)
            at = base + sum((f >= 0.5) * st for f, st in zip(frac, step, strict=True))
            for k, flat in nearest:
                out[k].ravel()[sel] = flat[at]
    return out


def _label_vote(
    labels: np.ndarray,
    labels_affine: np.ndarray,
    fixed_shape: Sequence[int],
    fixed_affine: np.ndarray,
    transforms: Sequence[str | Path],
    invert: Sequence[bool] | None = None,
    coords: list[np.ndarray] | None = None,
) -> np.ndarray:
    """A label map resampled by ANTs' ``genericLabel`` rule through any chain of transforms.

    ``genericLabel`` (Schaerer et al., Insight J 2014) interpolates every label's indicator
    linearly and keeps the largest (ties to the smallest label, as ITK's strict comparison
    does): it costs one linear interpolation per label present (34 on a segmented head, 4 s on
    a 1 mm grid). The same vote needs only the 8 voxels around each point: every fixed voxel's
    continuous index in the label map (:func:`_continuous_index`: one matrix through affine
    chains, ANTs' own mapping of the map's index grids through warps) gives the 8 corners and
    their trilinear weights, and each label's interpolated indicator is the sum of the weights
    of the corners that hold it; only points in cells of more than one label vote. Outside
    the label map (beyond half a voxel of its edge) the result is 0, and within that half
    voxel the edge voxel's label, as in ITK.

    Parameters and the return value are those of :func:`resample`; ``coords``, if given, are
    the continuous indices :func:`_continuous_index` gives for them (computed once for several
    images of one grid by :func:`resample_many`).
    """
    lab = np.rint(np.asarray(labels, np.float64)).astype(np.int32)
    shape = tuple(fixed_shape)[:3]
    out = np.zeros(shape, np.float32)
    n = np.array(lab.shape)
    if not lab.any():
        return out
    if coords is None:
        coords = _continuous_index(lab.shape, labels_affine, shape, fixed_affine, transforms,
                                   invert)
    # inside the label map as ITK has it, and with a corner in the labels' box (elsewhere
    # every corner is 0)
    pts = _in_buffer(coords, n, _checks.bounding_box(lab != 0))
    flat_lab = lab.ravel()
    # cells whose 8 corners hold one label (most of them) need no vote: the voxels whose
    # 2 x 2 x 2 cell (edge-replicated) is not uniform
    padded = np.pad(lab, ((0, 1), (0, 1), (0, 1)), mode="edge")
    uniform = np.ones(lab.shape, bool)
    for k in range(1, 8):
        off = [(k >> a) & 1 for a in range(3)]
        uniform &= padded[tuple(slice(off[a], off[a] + n[a]) for a in range(3))] == lab
    del padded
    uniform = uniform.ravel()
    out_flat = out.ravel()
    for start in range(0, pts.size, _CHUNK):
        sel = pts[start:start + _CHUNK]
        base, step, frac = _cells(coords, sel, n)
        values = flat_lab[base]
        mixed = np.nonzero(~uniform[base])[0]
        base = base[mixed]
        st = [x[mixed] for x in step]
        fr = [(1.0 - f[mixed], f[mixed]) for f in frac]
        lb = np.empty((mixed.size, 8), np.int32)
        wt = np.empty((mixed.size, 8), np.float64)
        for k in range(8):
            bits = [(k >> a) & 1 for a in range(3)]
            lb[:, k] = flat_lab[base + bits[0] * st[0] + bits[1] * st[1] + bits[2] * st[2]]
            wt[:, k] = fr[0][bits[0]] * fr[1][bits[1]] * fr[2][bits[2]]
        # each corner's label scores the weights of all corners that hold it
        score = np.zeros_like(wt)
        for k in range(8):
            score += (lb == lb[:, k:k + 1]) * wt[:, k:k + 1]
        best = score.max(axis=1, keepdims=True)
        # ties (to 1e-9) go to the smallest label, as in ITK's ascending scan with ">"
        values[mixed] = np.where(score >= best - 1e-9, lb, np.iinfo(np.int32).max).min(axis=1)
        out_flat[sel] = values
    return out


def resample_labels(
    labels: np.ndarray,
    labels_affine: np.ndarray,
    fixed_shape: Sequence[int],
    fixed_affine: np.ndarray,
    transforms: Sequence[str | Path],
    keep: Sequence[int] | None = None,
    invert: Sequence[bool] | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Move a label map to another grid, with partial-volume fractions of chosen labels.

    Each label in ``keep`` is resampled as its own indicator with linear interpolation, which
    gives the fraction of each target voxel it covers (exact for a coarser target grid up to the
    interpolation kernel); the hard label map is the label of largest fraction (background
    included), which is majority voting.

    Parameters
    ----------
    labels : (X, Y, Z) int array
        Label map.
    labels_affine : (4, 4) array
        Its grid.
    fixed_shape, fixed_affine
        Target grid.
    transforms : sequence of paths
        ANTs transforms (see :func:`resample`).
    keep : sequence of int, optional
        Labels to resample (default: all non-zero labels present).
    invert : sequence of bool, optional
        Which transforms to invert.

    Returns
    -------
    hard : (X, Y, Z) int16
        Majority label per target voxel.
    fractions : dict
        Label -> (X, Y, Z) float32 fraction in [0, 1].
    """
    lab = np.asarray(labels)
    present = [int(v) for v in np.unique(lab) if v != 0]
    keep = present if keep is None else [int(k) for k in keep if int(k) in present]
    fixed_shape = tuple(fixed_shape)[:3]
    best = np.zeros(fixed_shape, np.float32)
    hard = np.zeros(fixed_shape, np.int16)
    fractions: dict[int, np.ndarray] = {}
    total = np.zeros(fixed_shape, np.float32)
    for k in keep:
        fr = np.clip(resample((lab == k).astype(np.float32), labels_affine, fixed_shape,
                              fixed_affine, transforms, "linear", invert), 0.0, 1.0)
        fractions[k] = fr
        total += fr
        win = fr > best
        hard[win] = k
        best[win] = fr[win]
    hard[best <= np.maximum(1.0 - total, 0.0)] = 0  # background wins where it is the majority
    return hard, fractions


@dataclass
class TemplateRegistration:
    """The template registered to a subject image.

    Attributes
    ----------
    transforms : list of Path
        Template -> subject transforms for :func:`resample` (``[warp, affine]``).
    inverse_transforms : list of Path
        Subject -> template (``[affine, inverse warp]`` with ``invert=[True, False]``).
    affine_only : list of Path
        The affine stage alone.
    head_overlap : float
        Fraction of the template brain (after the affine stage) inside the subject's head.
    similarity : float
        Rank correlation of subject and warped template intensities inside the brain.
    posterior_dir : (3,) ndarray
        The template's posterior direction (-y) in the subject's world (RAS) coordinates.
    info : dict
        Stage times and parameters.
    brain : (X, Y, Z) bool ndarray, optional
        The template's brain mask on the subject's grid (through ``transforms``, at least half
        inside), as the similarity check used it.
    """

    transforms: list[Path]
    inverse_transforms: list[Path]
    affine_only: list[Path]
    head_overlap: float
    similarity: float
    posterior_dir: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    brain: np.ndarray | None = None


#: SyN gradient step. ANTs' default is 0.2; 0.3 reaches further in the same iterations: on the
#: eight simulated 2 mm demo heads (3 mm SyN grid, 20 finest iterations) the thalamic volumes
#: regress less toward the template's (slope 0.868 against 0.843, mean error 2.2% against 2.4%)
#: at the same cost.
SYN_STEP = 0.3

#: SyN iterations per level (shrink factors 4, 2 and 1 of its grid). The
#: coarse levels converge before their limits, and the finest level costs nearly all the time.
SYN_ITERATIONS = (60, 40, 20)

#: The same on a 2 mm SyN grid (1 mm T1w), where an iteration of the finest level costs 3.4
#: times one on the 3 mm grid (1.3-1.5 s on 2 cores): 10 iterations there. On five simulated
#: 1 mm heads the thalamus Dice is within 0.004 of 20 iterations at step 0.2, on the real
#: patients the intensity rank correlation of the brains within 0.011 (0.688 and 0.700 against
#: 0.699 and 0.710), in half the SyN time (16-19 s against 25-35 s).
SYN_ITERATIONS_2MM = (60, 40, 10)

#: Residual misfit of the brain's outline after the affine stage, mm (up to about 10 mm where an
#: atrophied brain has shrunk from its skull): part of the SyN domain's margin around the
#: affinely registered template brain, which adds the reach of SyN's update smoothing (3 voxels
#: of its grid; 16 mm in all on the 2 mm grid of a 1 mm T1w, 19 mm on the 3 mm grid of a 2 mm one).
SYN_MISFIT_MM = 10.0


def _crop_to_mask(img: Any, mask: Any, margin_mm: float) -> tuple[Any, list[list[int]]]:
    """``img`` cropped to the bounding box of ``mask > 0`` (same grid) grown by ``margin_mm``.

    Returns the cropped ANTs image (its origin moved, so it stays in place in the world) and
    the box as ``[lower, upper)`` voxel indices; the whole image where the mask is empty.
    """
    inside = mask.numpy() > 0
    if not inside.any():
        return img, [[0] * img.dimension, list(img.shape)]
    sl = _checks.bounding_box(inside, np.ceil(margin_mm / np.asarray(img.spacing)).astype(int))
    box = [[b.start for b in sl], [b.stop for b in sl]]
    if box[0] == [0] * img.dimension and box[1] == list(img.shape):
        return img, box
    return _ants().crop_indices(img, *box), box


def _on_grid(data: np.ndarray, affine: np.ndarray, voxel_mm: float) -> Any:
    """ANTs image resampled to isotropic ``voxel_mm`` (no-op if the grid is already coarser)."""
    ants = _ants()
    img = to_ants(data, affine)
    if float(np.min(img.spacing)) >= voxel_mm - 1e-3:
        return img
    # the grid of ANTs' ``resample_image`` (same origin and axes, round(n * spacing / voxel_mm)
    # voxels along each), filled by ``resample_image_to_target``: the same values, in a fifth
    # of the time (0.07 against 0.43 s from a 1 mm head to 2 mm)
    size = tuple(int(np.floor(n * s / voxel_mm + 0.5))
                 for n, s in zip(img.shape, img.spacing, strict=True))
    target = ants.make_image(size, spacing=(voxel_mm,) * 3, origin=img.origin,
                             direction=img.direction)
    return ants.resample_image_to_target(img, target, interp_type="linear")


def register_template(
    t1w: np.ndarray,
    affine: np.ndarray,
    template: np.ndarray,
    template_affine: np.ndarray,
    template_brain: np.ndarray,
    workdir: str | Path,
    *,
    head_mask: np.ndarray | None = None,
    skull_stripped: bool = False,
    syn_resolution_mm: float = 2.0,
    syn_iterations: tuple[int, ...] | None = None,
    syn_step: float = SYN_STEP,
    check: Callable[[float, float], None] | None = None,
) -> TemplateRegistration:
    """Register a T1w template to a subject's T1w: affine on the heads, SyN on the brains.

    Parameters
    ----------
    t1w : (X, Y, Z) array
        Subject T1w (bias-corrected).
    affine : (4, 4) array
        Its voxel-to-world transform.
    template, template_brain : arrays
        Template T1w and its brain mask.
    template_affine : (4, 4) array
        The template grid.
    workdir : str or Path
        Folder for the transform files.
    head_mask : bool array, optional
        Subject head (or brain) mask, for the check that the template landed inside the head
        (default: :func:`qsmiron.recon.mask.head_mask` of ``t1w``).
    skull_stripped : bool
        The subject image is a brain only: register the brain-extracted template throughout.
    syn_resolution_mm : float
        Grid of the SyN stage: images finer than this are resampled to it first. The finest
        SyN level at 2 mm resolves the thalamus and ventricles (Dice 0.88-0.92 on the
        simulated heads) at a fixed cost whatever the input resolution; the transform is then
        applied at full resolution.
    syn_iterations : tuple of int, optional
        Iterations per SyN level (shrink factors 4, 2, 1 of ``syn_resolution_mm``); default
        :data:`SYN_ITERATIONS_2MM` on grids finer than 2.5 mm, else :data:`SYN_ITERATIONS`.
    syn_step : float
        SyN gradient step (ANTs' ``grad_step``; see :data:`SYN_STEP`).
    check : callable, optional
        Called after the affine stage with the fraction of the template brain inside the
        subject's head and the rank correlation of the two brains; it may raise to stop a
        registration that has already failed before the costly SyN stage.

    Returns
    -------
    TemplateRegistration
    """
    ants = _ants()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    if syn_iterations is None:
        syn_iterations = SYN_ITERATIONS_2MM if syn_resolution_mm < 2.5 else SYN_ITERATIONS
    info: dict[str, Any] = {"syn_resolution_mm": syn_resolution_mm,
                            "syn_iterations": list(syn_iterations),
                            "syn_step": syn_step,
                            "skull_stripped_input": bool(skull_stripped)}
    tb = np.asarray(template_brain, bool)
    tpl_head = np.asarray(template, np.float32)
    tpl_brain = tpl_head * tb
    # the affine stage on 2 mm grids (at most): 12 degrees of freedom need no finer detail
    moving_affine_img = _on_grid(tpl_brain if skull_stripped else tpl_head, template_affine,
                                 syn_resolution_mm)
    fixed_full = _on_grid(t1w, affine, syn_resolution_mm)
    t = time.perf_counter()
    aff = ants.registration(
        fixed=fixed_full, moving=moving_affine_img, type_of_transform="Affine",
        outprefix=str(work / "template_affine_"), aff_metric="mattes",
        aff_shrink_factors=(4, 2, 1), aff_smoothing_sigmas=(2, 1, 0),
        aff_iterations=(200, 50, 0),
    )
    affine_tx = Path(aff["fwdtransforms"][0])
    info["affine_seconds"] = time.perf_counter() - t

    # subject brain: the template brain mask after the affine stage (Dice 0.97 on simulated
    # heads). Not grown: a margin lets SyN stretch the template brain into the bright scalp.
    brain_aff = resample(tb.astype(np.float32), template_affine, t1w.shape, affine,
                         [affine_tx]) >= 0.5
    vs = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    head = np.asarray(head_mask, bool) if head_mask is not None else _head_mask(t1w, vs)
    head_overlap = float(np.count_nonzero(brain_aff & head) / max(int(brain_aff.sum()), 1))
    subj_brain = np.where(brain_aff, t1w, 0.0).astype(np.float32)
    warped_aff = resample(tpl_brain, template_affine, t1w.shape, affine, [affine_tx])
    core = depth_mm(brain_aff, vs) > 4.0
    affine_similarity = _rank_correlation(warped_aff[core], np.asarray(t1w)[core])
    info["affine_similarity"] = affine_similarity
    info["head_overlap"] = head_overlap
    if check is not None:
        check(head_overlap, affine_similarity)

    t = time.perf_counter()
    # SyN solves for its displacement fields on the fixed grid; outside the template brain's
    # reach both images are zero and nothing is to be matched there: the domain is the box of
    # the affinely registered template brain plus SYN_MISFIT_MM and 3 grid voxels (on the real
    # patients' MNI grids half the voxels and 30-40% of the SyN time, thalamus within Dice 0.99
    # of the whole grid's; outside the box the warp is the identity and the affine stage alone
    # maps)
    fixed_syn = _on_grid(subj_brain, affine, syn_resolution_mm)
    margin = SYN_MISFIT_MM + 3.0 * float(np.max(fixed_syn.spacing))
    fixed_syn, box = _crop_to_mask(
        fixed_syn, _on_grid(brain_aff.astype(np.float32), affine, syn_resolution_mm), margin)
    info["syn_margin_mm"] = margin
    info["syn_box"] = box
    moving_syn = _on_grid(tpl_brain, template_affine, syn_resolution_mm)
    syn = ants.registration(
        fixed=fixed_syn, moving=moving_syn, type_of_transform="SyNOnly",
        initial_transform=[str(affine_tx)], outprefix=str(work / "template_syn_"),
        syn_metric="mattes", syn_sampling=32, reg_iterations=tuple(syn_iterations),
        grad_step=syn_step,
    )
    info["syn_seconds"] = time.perf_counter() - t
    fwd = [Path(p) for p in syn["fwdtransforms"]]
    inv = [Path(p) for p in syn["invtransforms"]]
    warp = next(p for p in fwd if p.name.endswith("Warp.nii.gz"))
    inv_warp = next(p for p in inv if p.name.endswith("InverseWarp.nii.gz"))
    transforms = [warp, affine_tx]
    inverse = [affine_tx, inv_warp]

    # QC: rank correlation of subject and warped template deep inside the brain (4 mm from its
    # edge, so that partial volume with bright scalp cannot dominate)
    warped = resample(tpl_brain, template_affine, t1w.shape, affine, transforms)
    brain = resample(tb.astype(np.float32), template_affine, t1w.shape, affine,
                     transforms) >= 0.5
    core = depth_mm(brain, vs) > 4.0
    similarity = _rank_correlation(warped[core], np.asarray(t1w)[core])
    info["similarity"] = similarity
    log.info("template registration: affine %.1f s, SyN %.1f s, correlation %.3f",
             info["affine_seconds"], info["syn_seconds"], similarity)
    # ITK maps subject points to template points (x_t = A x_s + b): a template direction u
    # is A^-1 u in the subject
    a = _read_matrix(ants, affine_tx)[:3, :3]
    post = np.linalg.solve(a, np.array([0.0, -1.0, 0.0]))
    post /= np.linalg.norm(post)
    info["posterior_dir"] = [round(float(v), 4) for v in post]
    return TemplateRegistration(transforms, inverse, [affine_tx], head_overlap, similarity, post,
                                info, brain)
