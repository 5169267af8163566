"""Voxel-based cortical thickness: Laplace streamlines (Jones 2000; Yezzi & Prince 2003).

Two plain functions of a grey-matter and a white-matter mask:

* ``method="laplace"`` solves Laplace's equation in the grey matter with potential 0 on the
  white-matter side and 1 on the pial (CSF / outside) side, then integrates the lengths of the
  streamlines of the normalised potential gradient with the Eulerian upwind PDEs of Yezzi and
  Prince (``L0`` from the white matter, ``L1`` from the pial side); thickness = ``L0 + L1``.
* ``method="distance"`` is a cheaper estimate: the sum of the Euclidean distances from each grey
  matter voxel to the white matter and to the outer boundary (the shortest path through the voxel),
  which equals the thickness of a locally flat sheet and underestimates it less than 1 voxel
  where the sheet folds.

Both place the white/grey and grey/pial surfaces half-way between the last voxel of one class and
the first voxel of the other (the boundary of a voxelised mask is known only to within one voxel),
and both use ``voxel_size`` for every length, so anisotropic voxels are handled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from qsmiron._distance import depth_mm
from qsmiron.errors import InputError

__all__ = ["ThicknessResult", "cortical_thickness"]

log = logging.getLogger(__name__)

_METHODS = ("laplace", "distance")


@dataclass(frozen=True)
class ThicknessResult:
    """Cortical thickness of one subject.

    Attributes
    ----------
    thickness : (X, Y, Z) float32
        Thickness in mm at every grey-matter voxel; NaN outside the grey matter and at grey-matter
        voxels that do not lie between white matter and the outer boundary (e.g. an island of grey
        matter with no white matter next to it).
    mean_mm : float
        Mean thickness over the finite voxels, mm.
    median_mm : float
        Median thickness over the finite voxels, mm.
    surface_mean_mm : float
        Area-weighted mean thickness, mm: the harmonic mean of the voxel thicknesses (a voxel of
        thickness ``t`` stands for ``voxel volume / t`` of cortical surface). This is the figure
        comparable with a surface-based (FreeSurfer) mean thickness; the voxel mean weights
        thick cortex more.
    method : str
        ``"laplace"`` or ``"distance"``.
    n_voxels : int
        Number of grey-matter voxels with a finite thickness.
    """

    thickness: np.ndarray
    mean_mm: float
    median_mm: float
    surface_mean_mm: float
    method: str
    n_voxels: int


def _check_inputs(
    gm_mask: np.ndarray, wm_mask: np.ndarray, voxel_size
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gm = np.asarray(gm_mask)
    wm = np.asarray(wm_mask)
    if gm.ndim != 3 or wm.ndim != 3:
        raise InputError(f"gm_mask and wm_mask must be 3-D, found shapes {gm.shape} and {wm.shape}")
    if gm.shape != wm.shape:
        raise InputError(f"gm_mask shape {gm.shape} differs from wm_mask shape {wm.shape}")
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise InputError(f"voxel_size must be three positive numbers in mm, found {voxel_size}")
    gm = gm.astype(bool)
    wm = wm.astype(bool) & ~gm
    if not gm.any():
        raise InputError("gm_mask is empty: no grey-matter voxel to measure")
    if not wm.any():
        raise InputError("wm_mask is empty (after removing voxels also in gm_mask)")
    return gm, wm, vs


def _crop(gm: np.ndarray, wm: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Bounding box of the grey matter plus a 2-voxel margin, padded by one more voxel."""
    idx = np.nonzero(gm)
    sl = []
    for ax, ii in enumerate(idx):
        lo = max(int(ii.min()) - 2, 0)
        hi = min(int(ii.max()) + 3, gm.shape[ax])
        sl.append(slice(lo, hi))
    sl_t = tuple(sl)
    gm_c = np.pad(gm[sl_t], 1)
    # white matter continues past the crop (edge mode); grey matter never lies in the pad, so
    # every grey-matter voxel has all six neighbours
    wm_c = np.pad(wm[sl_t], 1, mode="edge") & ~gm_c
    return sl_t, gm_c, wm_c


def _buried_sulci(gm: np.ndarray, wm: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """Grey-matter voxels on a ridge of the white-matter distance, away from the outer side."""
    cube = np.ones((3, 3, 3), dtype=bool)
    d_wm = depth_mm(~wm, vs)
    near_out = ndimage.binary_dilation(~(gm | wm), cube)
    local_max = ndimage.maximum_filter(np.where(gm, d_wm, 0.0), footprint=cube)
    return gm & ~near_out & (d_wm >= local_max) & (d_wm > float(vs.max()))


def _neighbours(gm: np.ndarray, wm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compact indexing of the grey matter.

    Returns the flat indices of the GM voxels (in the padded grid) and a (6, n) table of the
    neighbour of each along -x, +x, -y, +y, -z, +z as an index into a value vector of length
    n + 2: ``0..n-1`` grey matter, ``n`` white matter, ``n + 1`` outside (pial side).
    """
    flat = np.flatnonzero(gm)
    n = flat.size
    lut = np.full(gm.size, n + 1, dtype=np.int64)
    lut[np.flatnonzero(wm)] = n
    lut[flat] = np.arange(n)
    strides = np.array(gm.strides) // gm.itemsize
    nb = np.empty((6, n), dtype=np.int64)
    for ax in range(3):
        s = int(strides[ax])
        nb[2 * ax] = lut[flat - s]
        nb[2 * ax + 1] = lut[flat + s]
    return flat, nb


def _solve_laplace(
    nb: np.ndarray,
    vs: np.ndarray,
    u0: np.ndarray,
    tol: float,
    max_iter: int,
    omega: float,
    colour: np.ndarray,
) -> np.ndarray:
    """Red-black SOR for the 7-point anisotropic Laplacian on the compact grey matter."""
    n = nb.shape[1]
    w = np.repeat(1.0 / vs**2, 2).astype(np.float32)[:, None]  # (6, 1)
    wsum = float(w.sum())
    v = np.empty(n + 2, dtype=np.float32)
    v[:n] = u0
    v[n] = 0.0
    v[n + 1] = 1.0
    groups = [np.flatnonzero(colour == c) for c in (0, 1)]
    nbg = [nb[:, g] for g in groups]
    for it in range(max_iter):
        change = 0.0
        for g, nbc in zip(groups, nbg, strict=True):
            new = (w * v[nbc]).sum(0) / wsum
            d = new - v[g]
            v[g] += omega * d
            change = max(change, float(np.abs(d).max()) if d.size else 0.0)
        if change < tol:
            log.debug("Laplace SOR converged in %d iterations (max update %.2e)", it + 1, change)
            break
    else:
        log.warning("Laplace SOR stopped at max_iter=%d (max update %.2e)", max_iter, change)
    return v[:n]


def _path_length(
    nb: np.ndarray,
    tangent: np.ndarray,
    vs: np.ndarray,
    towards_wm: bool,
    tol: float,
    max_iter: int,
    u: np.ndarray,
) -> np.ndarray:
    """Jacobi iterations of the Yezzi-Prince upwind PDE ``T . grad L = 1``.

    ``towards_wm=True`` gives ``L0`` (length back to the white matter, boundary slot ``n``),
    ``False`` gives ``L1`` (length forward to the pial side, slot ``n + 1``). The surface is put
    half-way between a boundary voxel and the grey-matter voxel next to it: a boundary neighbour
    contributes ``-D/2`` where ``D = 1 / sum_i |T_i| / h_i`` is the step length along the streamline
    to the neighbouring voxel layer. Only neighbours upstream in the potential ``u`` (lower for
    ``L0``, higher for ``L1``) are used, so the dependencies form an acyclic graph and the
    iterations converge in at most as many sweeps as the longest streamline has voxels.
    """
    n = nb.shape[1]
    boundary = n if towards_wm else n + 1
    other = n + 1 if towards_wm else n
    sign = -1.0 if towards_wm else 1.0
    # upwind neighbour along each axis: the -axis neighbour if sign*T_i < 0 else the +axis one
    up = np.empty((3, n), dtype=np.int64)
    a = np.empty((3, n), dtype=np.float32)
    for ax in range(3):
        plus = sign * tangent[ax] > 0
        up[ax] = np.where(plus, nb[2 * ax + 1], nb[2 * ax])
        a[ax] = np.abs(tangent[ax]) / vs[ax]
    a[up == other] = 0.0  # a streamline does not come from the wrong side; drop that term
    uext = np.concatenate([u, np.array([0.0, 1.0], dtype=u.dtype)])
    upstream = uext[up] < u[None, :] if towards_wm else uext[up] > u[None, :]
    a[~upstream] = 0.0
    asum = a.sum(0)
    ok = asum > 1e-6
    inv = np.zeros(n, dtype=np.float32)
    inv[ok] = 1.0 / asum[ok]  # D, the step length along the streamline (mm)
    is_b = up == boundary
    # constant part: D * (1 + sum_{boundary nbrs} a_i * (-D/2))
    const = inv * (1.0 - 0.5 * inv * (a * is_b).sum(0))
    wgt = a * inv * ~is_b  # weights of grey-matter neighbours
    up_g = np.where(is_b, 0, up)  # any valid index where the weight is 0
    up_g = np.minimum(up_g, n - 1) if n else up_g
    ell = const.copy()
    for it in range(max_iter):
        new = const + (wgt * ell[up_g]).sum(0)
        change = float(np.abs(new - ell).max()) if n else 0.0
        ell = new
        if change < tol:
            log.debug("path-length PDE converged in %d iterations", it + 1)
            break
    else:
        log.warning("path-length PDE stopped at max_iter=%d (max update %.2e mm)", max_iter, change)
    ell[~ok] = np.nan
    return ell


def _gradient_at(field: np.ndarray, flat: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """Central-difference gradient (per mm) of a padded 3-D field at flat indices, shape (3, n)."""
    strides = np.array(field.strides) // field.itemsize
    f = field.ravel()
    g = np.empty((3, flat.size), dtype=np.float32)
    for ax in range(3):
        s = int(strides[ax])
        g[ax] = (f[flat + s] - f[flat - s]) / (2.0 * vs[ax])
    return g


def cortical_thickness(
    gm_mask: np.ndarray,
    wm_mask: np.ndarray,
    voxel_size: float | tuple[float, float, float] = 1.0,
    method: str = "laplace",
    *,
    tol: float = 1e-4,
    max_iter: int = 2000,
    omega: float = 1.8,
    buried_sulci: bool = True,
) -> ThicknessResult:
    """Voxel-based cortical thickness between a white-matter and an outer (pial) boundary.

    Parameters
    ----------
    gm_mask : (X, Y, Z) array_like of bool
        Cortical grey matter.
    wm_mask : (X, Y, Z) array_like of bool
        White matter (lesions in white matter should be included). Every voxel in neither mask is
        the outer (CSF / pial) side.
    voxel_size : float or sequence of 3 floats
        Voxel size in mm; used for every distance, so anisotropic voxels are handled.
    method : {"laplace", "distance"}
        ``"laplace"``: Laplace streamlines with Eulerian path-length PDEs (Jones 2000; Yezzi and
        Prince 2003). ``"distance"``: sum of the Euclidean distances to the white matter and to the
        outer boundary at each grey-matter voxel (about 10 times faster; underestimates in folded
        cortex where the two nearest boundary points are not on one streamline).
    tol : float, optional
        Convergence tolerance of the iterations (potential units for the Laplace solve, mm for the
        path lengths).
    max_iter : int, optional
        Iteration cap for each iterative solve.
    omega : float, optional
        Over-relaxation factor of the red-black SOR Laplace solver (1 = Gauss-Seidel).
    buried_sulci : bool, optional
        Open sulci whose CSF is not resolved (two banks of grey matter touching): grey-matter
        voxels on a ridge of the distance to the white matter (a local maximum over the 26
        neighbours), not next to the outer boundary and more than one voxel from the white
        matter, are treated as outer boundary (their thickness is NaN), so each bank is measured
        on its own instead of both together (cf. Hutton et al. 2008).

    Returns
    -------
    ThicknessResult
        Thickness map (float32, mm, NaN outside the grey matter), mean and median in mm.

    Raises
    ------
    InputError
        If the masks are not 3-D, differ in shape, are empty, or ``voxel_size`` / ``method`` is
        invalid.

    Notes
    -----
    The masks are voxelised, so each surface is known only to within one voxel. Both methods put
    the surface half-way between the last voxel of one class and the first of the other: the
    Laplace path lengths start at ``-D/2`` in the boundary voxel (``D`` the streamline step to the
    next voxel layer), and the distance method subtracts the same ``D`` (half a step at each
    side) from ``d_wm + d_outer``. On concentric-sphere shells (R = 20 mm) of 2-3 mm at 1 mm and
    0.8 x 0.8 x 1.6 mm voxels the mean error is +0.07 to +0.14 mm (Laplace) and +0.10 to
    +0.23 mm (distance) (tests/anatomy/test_thickness.py).

    Report ``surface_mean_mm`` when comparing with FreeSurfer: a surface method averages over
    vertices (area), a voxel mean over volume, which weights thick cortex more. Runtime on a
    simulated 1 mm head (415 mL of cortex, 2 cores): about 2.5 s (Laplace), 1.5 s (distance).

    References
    ----------
    .. [1] Jones SE, Buchbinder BR, Aharon I. Three-dimensional mapping of cortical thickness
       using Laplace's equation. Hum Brain Mapp 2000;11:12-32.
    .. [2] Yezzi AJ, Prince JL. An Eulerian PDE approach for computing tissue thickness. IEEE Trans
       Med Imaging 2003;22:1332-1339.
    .. [3] Hutton C, De Vita E, Ashburner J, Deichmann R, Turner R. Voxel-based cortical
       thickness measurements in MRI. NeuroImage 2008;40:1701-1710 (distance-based estimates).

    Examples
    --------
    >>> import numpy as np
    >>> x, y, z = np.mgrid[-30:31, -30:31, -30:31].astype(float)
    >>> r = np.sqrt(x**2 + y**2 + z**2)
    >>> res = cortical_thickness((r >= 20) & (r < 22.5), r < 20, 1.0)
    >>> abs(res.mean_mm - 2.5) < 0.15
    True
    """
    if method not in _METHODS:
        raise InputError(f"method must be one of {_METHODS}, found {method!r}")
    gm, wm, vs = _check_inputs(gm_mask, wm_mask, voxel_size)
    sl, gm_c, wm_c = _crop(gm, wm)
    if buried_sulci:
        ridge = _buried_sulci(gm_c, wm_c, vs)
        if ridge.any():
            log.debug("buried sulci: %d grey-matter voxels set to the outer boundary", ridge.sum())
            gm_c = gm_c & ~ridge
    out_c = ~(gm_c | wm_c)
    flat, nb = _neighbours(gm_c, wm_c)
    n = flat.size

    d_wm = depth_mm(~wm_c, vs)
    d_out = depth_mm(~out_c, vs)

    if method == "distance":
        g = _gradient_at(d_wm - d_out, flat, vs)
        norm = np.sqrt((g**2).sum(0))
        tang = g / np.maximum(norm, 1e-6)
        step = 1.0 / np.maximum((np.abs(tang) / vs[:, None]).sum(0), 1e-6)
        thick = d_wm.ravel()[flat] + d_out.ravel()[flat] - step
    else:
        # initial potential from the distance ratio: already close to the harmonic solution
        dw = d_wm.ravel()[flat]
        do = d_out.ravel()[flat]
        u0 = dw / np.maximum(dw + do, 1e-6)
        coords = np.unravel_index(flat, gm_c.shape)
        colour = (coords[0] + coords[1] + coords[2]) % 2
        u = _solve_laplace(nb, vs, u0.astype(np.float32), tol, max_iter, omega, colour)
        field = np.where(wm_c, 0.0, 1.0).astype(np.float32)
        field.ravel()[flat] = u
        g = _gradient_at(field, flat, vs)
        norm = np.sqrt((g**2).sum(0))
        tang = (g / np.maximum(norm, 1e-12)).astype(np.float32)
        tang[:, norm < 1e-6] = 0.0
        l0 = _path_length(nb, tang, vs, True, tol, max_iter, u)
        l1 = _path_length(nb, tang, vs, False, tol, max_iter, u)
        thick = l0 + l1
        # an island of grey matter not touching both sides has a flat potential: no streamline
        touches_wm = np.isin(nb, n).any(0)
        touches_out = np.isin(nb, n + 1).any(0)
        lab, nlab = ndimage.label(gm_c)
        lab_flat = lab.ravel()[flat]
        has_wm = np.zeros(nlab + 1, dtype=bool)
        has_out = np.zeros(nlab + 1, dtype=bool)
        has_wm[lab_flat[touches_wm]] = True
        has_out[lab_flat[touches_out]] = True
        thick[~(has_wm[lab_flat] & has_out[lab_flat])] = np.nan

    thick = thick.astype(np.float32)
    thick[~np.isfinite(thick) | (thick <= 0)] = np.nan
    full_c = np.full(gm_c.shape, np.nan, dtype=np.float32)
    full_c.ravel()[flat] = thick
    result = np.full(gm.shape, np.nan, dtype=np.float32)
    result[sl] = full_c[1:-1, 1:-1, 1:-1]
    finite = thick[np.isfinite(thick)]
    if finite.size == 0:
        raise InputError(
            "no grey-matter voxel lies between white matter and the outer boundary; "
            "check that gm_mask and wm_mask touch"
        )
    mean = float(finite.mean())
    median = float(np.median(finite))
    surface_mean = float(1.0 / np.mean(1.0 / finite.astype(np.float64)))
    log.info(
        "cortical thickness (%s): mean %.3f mm, median %.3f mm, area-weighted %.3f mm over %d "
        "voxels",
        method,
        mean,
        median,
        surface_mean,
        finite.size,
    )
    return ThicknessResult(result, mean, median, surface_mean, method, int(finite.size))
