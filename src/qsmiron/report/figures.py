"""Per-subject QC figures: the anatomy panel a radiologist checks in seconds.

:func:`anatomy_qc_panel` draws one PNG per subject, after the reference study's Figures 1 and 2
(Chiang et al., AJNR 2018): row 1 is the QSM at the level of the thalami with the thalamus ROI
(left and right in two colours), the CSF reference ROIs in the atria of the lateral ventricles
and the excluded veins; row 2 is the FLAIR with the T2 lesions outlined. A side panel lists the
legend, ROI and lesion volumes and the voxel sizes; QC flags are printed in red under the title.
:func:`lesion_mosaic` draws a second PNG with every T2 lesion: the fewest axial FLAIR slices that
cross each lesion once (:func:`lesion_slices`), lesions outlined.

Display conventions (stated on the figure):

* arrays are indexed in the voxel axes of a RAS+ image (index increasing along axis 0 towards
  the patient's Right, along axis 1 towards Anterior, along axis 2 towards Superior), as
  :func:`nibabel.as_closest_canonical` returns them;
* radiological convention: the patient's right is on the image's left (letters R and L on every
  axial and coronal view); anterior is up in axial views, superior is up in coronal and sagittal
  views, anterior is on the left in sagittal views;
* voxels are drawn at their size in mm (anisotropic voxels keep the true aspect ratio);
* outlines follow voxel edges (a voxel is either in an ROI or not; nothing is smoothed).

Figures are rendered with matplotlib's Agg canvas on a :class:`matplotlib.figure.Figure`
(no pyplot, no display, no global state), written atomically, and are byte-for-byte
reproducible (no timestamp or software version in the PNG).
"""

from __future__ import annotations

import io
import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from qsmiron.anatomy.lesions import label_lesions, lesion_count, lesion_volume_ml
from qsmiron.errors import InputError
from qsmiron.io.nifti import atomic_write_bytes

__all__ = [
    "COLOURS",
    "FIGSIZE_INCHES",
    "anatomy_qc_panel",
    "lesion_mosaic",
    "lesion_number_positions",
    "lesion_slices",
    "slice_with_most",
    "top_slices",
]

log = logging.getLogger(__name__)

#: Colours of the overlays (Okabe-Ito palette where it reads well on grey-scale images), as
#: ``#RRGGBB``; outlines are drawn opaque in exactly these colours.
COLOURS: dict[str, str] = {
    "thalamus": "#56B4E9",  # a single (bilateral) thalamus mask
    "thalamus_left": "#56B4E9",  # sky blue
    "thalamus_right": "#E69F00",  # orange
    "thalamus_before_veins": "#FFFFFF",  # dashed, under the final outline
    "csf_ref": "#F0E442",  # yellow
    "veins": "#FF00FF",  # magenta, filled semi-transparent and outlined
    "lesions": "#FF3B30",  # red
    "flags": "#FF4040",
    "background": "#101010",
    "text": "#FFFFFF",
}

#: Size of the QC panel, inches (width, height); the PNG is ``dpi`` times this in pixels.
FIGSIZE_INCHES: tuple[float, float] = (16.0, 9.0)

_VEIN_FILL_ALPHA = 0.45
_UPSAMPLE = 4  # outline sampling per voxel: contours run along voxel edges
_ZOOM_MARGIN_MM = 12.0
_LESION_SLICE_GAP_MM = 10.0
_N_FLAIR = 3
_MOSAIC_COLUMNS = 6
_MOSAIC_MAX_PANELS = 24
_MOSAIC_EMPTY_PANELS = 12

# orientation of the three views: (normal axis, horizontal axis, vertical axis, letters on the
# left and right of the image); horizontal axes are always shown with the highest index on the
# left (RAS+: patient's right, or anterior in the sagittal view)
_VIEWS: dict[str, tuple[int, int, int, tuple[str, str]]] = {
    "axial": (2, 0, 1, ("R", "L")),
    "coronal": (1, 0, 2, ("R", "L")),
    "sagittal": (0, 1, 2, ("A", "P")),
}


# --------------------------------------------------------------------------------------------
# slice choice
# --------------------------------------------------------------------------------------------
def _per_slice_counts(mask: np.ndarray, axis: int) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise InputError(f"mask must be 3-D, found shape {m.shape}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, found {axis}")
    other = tuple(a for a in range(3) if a != axis)
    return np.count_nonzero(m, axis=other)


def slice_with_most(mask: np.ndarray, axis: int = 2) -> int | None:
    """Index of the slice holding the most voxels of a mask.

    Ties (e.g. a cylinder along ``axis``) are broken towards the mask's centre of mass along
    ``axis``, then towards the lower index, so the choice is deterministic and central.

    Parameters
    ----------
    mask : (X, Y, Z) array_like
        Mask; nonzero voxels are inside.
    axis : int, optional
        Axis normal to the slices: 2 (default) gives axial slices of a RAS+ image, 1 coronal,
        0 sagittal.

    Returns
    -------
    int or None
        Slice index, or None if the mask is empty.

    Raises
    ------
    InputError
        If the mask is not 3-D or ``axis`` is not 0, 1 or 2.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((5, 5, 6), bool); m[1:4, 1:4, 3] = True; m[2, 2, 1] = True
    >>> slice_with_most(m)
    3
    """
    counts = _per_slice_counts(mask, axis)
    best = int(counts.max()) if counts.size else 0
    if best == 0:
        return None
    tied = np.flatnonzero(counts == best)
    centre = float(np.sum(np.arange(counts.size) * counts) / counts.sum())
    return int(tied[np.argmin(np.abs(tied - centre))])


def top_slices(mask: np.ndarray, n: int = 3, axis: int = 2, min_gap: int = 1) -> list[int]:
    """Up to ``n`` slices with the most mask voxels, at least ``min_gap`` slices apart.

    Greedy: slices are taken in decreasing order of voxel count (ties: lower index first) and a
    slice closer than ``min_gap`` to one already taken is skipped, so that the slices show
    different parts of the mask (different lesions rather than one lesion three times).

    Parameters
    ----------
    mask : (X, Y, Z) array_like
        Mask; nonzero voxels are inside.
    n : int, optional
        Number of slices wanted.
    axis : int, optional
        Axis normal to the slices (2: axial for a RAS+ image).
    min_gap : int, optional
        Smallest distance between two chosen slices, in slices (1: any distinct slices).

    Returns
    -------
    list of int
        Chosen slice indices in increasing order; fewer than ``n`` (possibly none) when the
        mask does not reach enough slices.

    Raises
    ------
    InputError
        If the mask is not 3-D, ``axis`` is invalid, or ``n`` or ``min_gap`` is below 1.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((4, 4, 10), bool)
    >>> m[:, :, 2] = True; m[:2, :, 3] = True; m[0, 0, 8] = True
    >>> top_slices(m, n=2, min_gap=1), top_slices(m, n=2, min_gap=3)
    ([2, 3], [2, 8])
    """
    if n < 1 or min_gap < 1:
        raise InputError(f"n and min_gap must be at least 1, found n={n}, min_gap={min_gap}")
    counts = _per_slice_counts(mask, axis)
    order = np.argsort(-counts, kind="stable")
    chosen: list[int] = []
    for k in order:
        if counts[k] == 0 or len(chosen) == n:
            break
        if all(abs(int(k) - c) >= min_gap for c in chosen):
            chosen.append(int(k))
    return sorted(chosen)


def lesion_slices(mask: np.ndarray, max_slices: int = _MOSAIC_MAX_PANELS,
                  axis: int = 2) -> tuple[list[int], int]:
    """The fewest slices that show every lesion at least once (greedy set cover).

    Lesions are the 26-connected components of ``mask`` (as :func:`lesion_count` counts them).
    Slices are taken one at a time: the slice crossing the most lesions not shown yet (ties:
    the most voxels of those lesions, then the lower index), until every lesion is shown or
    ``max_slices`` are taken. Greedy set cover needs at most ln(N) + 1 times the fewest
    possible slices; for the scattered lesions of MS it is one slice for most lesions and
    one slice for each cluster.

    Parameters
    ----------
    mask : (X, Y, Z) array_like
        Lesion mask; nonzero voxels are lesion.
    max_slices : int, optional
        Most slices returned.
    axis : int, optional
        Axis normal to the slices (2: axial for a RAS+ image).

    Returns
    -------
    slices : list of int
        Chosen slice indices in increasing order (empty when the mask is).
    shown : int
        Number of lesions crossed by the chosen slices (all of them unless ``max_slices`` ran
        out).

    Raises
    ------
    InputError
        If the mask is not 3-D, ``axis`` is invalid or ``max_slices`` is below 1.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((9, 9, 12), bool)
    >>> m[1:3, 1:3, 2:5] = True; m[6:8, 6:8, 4:6] = True; m[4, 4, 9] = True
    >>> lesion_slices(m)
    ([4, 9], 3)
    """
    if max_slices < 1:
        raise InputError(f"max_slices must be at least 1, found {max_slices}")
    _per_slice_counts(mask, axis)  # checks the shape and axis
    return _cover_slices(label_lesions(mask)[0], max_slices, axis)


def _cover_slices(lab: np.ndarray, max_slices: int, axis: int = 2) -> tuple[list[int], int]:
    """Greedy set cover of :func:`lesion_slices` over a lesion label map (numbers may skip)."""
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return [], 0
    # voxels of each lesion in each slice: (slices, lesions + 1), column 0 the background
    moved = np.moveaxis(lab, axis, 0).reshape(lab.shape[axis], -1)
    per = np.stack([np.bincount(row, minlength=n + 1) for row in moved])[:, 1:]
    crossed = per > 0
    left = crossed.any(axis=0)  # the numbers present
    total = int(left.sum())
    chosen: list[int] = []
    while left.any() and len(chosen) < max_slices:
        gain = crossed[:, left].sum(axis=1)
        voxels = per[:, left].sum(axis=1)
        best = int(np.lexsort((np.arange(gain.size), -voxels, -gain))[0])
        chosen.append(best)
        left &= ~crossed[best]
    return sorted(chosen), total - int(left.sum())


def lesion_number_positions(
    labels: np.ndarray, slices: Sequence[int], voxel_size: float | Sequence[float]
) -> list[tuple[int, int, float, float]]:
    """Where the mosaic writes the lesions' numbers: beside each lesion on each slice drawn.

    Every lesion (a nonzero value of ``labels``) crossed by a slice of ``slices`` is numbered
    on that slice, 1.5 voxels beyond its cross-section's lowest axis-0 index (on the image's
    right of it in the radiological view), at the height of the cross-section's centre.

    Parameters
    ----------
    labels : (X, Y, Z) int array
        Lesion label map (RAS+ voxel axes), e.g. :func:`qsmiron.anatomy.lesions.label_lesions`.
    slices : sequence of int
        Axial slices drawn.
    voxel_size : float or sequence of 3 floats
        Voxel size, mm.

    Returns
    -------
    list of (number, slice, horizontal mm, vertical mm)
        In the panel's coordinates, by slice then number.

    Examples
    --------
    >>> lab = np.zeros((10, 10, 6), int); lab[4:6, 2:4, 1:4] = 1; lab[6, 6, 3] = 2
    >>> lesion_number_positions(lab, [2, 3], 1.0)
    [(1, 2, 2.5, 2.5), (1, 3, 2.5, 2.5), (2, 3, 4.5, 6.0)]
    """
    vs = _voxel_size(voxel_size, "voxel_size")
    lab = np.asarray(labels)
    out: list[tuple[int, int, float, float]] = []
    for z in sorted(int(z) for z in slices):
        sec = lab[:, :, z]
        for i in np.unique(sec[sec > 0]).tolist():
            hi, vi = np.nonzero(sec == i)
            out.append((int(i), z, float((hi.min() - 1.5) * vs[0]), float(vi.mean() * vs[1])))
    return out


def _even_slices(img: np.ndarray, n: int) -> list[int]:
    """``n`` axial slices evenly through the head (10-90% of its extent)."""
    zs = np.flatnonzero(np.count_nonzero(_head(img), axis=(0, 1)))
    z0, z1 = (int(zs[0]), int(zs[-1])) if zs.size else (0, img.shape[2] - 1)
    return sorted({int(round(z0 + f * (z1 - z0))) for f in np.linspace(0.1, 0.9, n)})


def lesion_mosaic(
    out_png: str | Path,
    flair: np.ndarray,
    lesions: np.ndarray | None,
    voxel_size: float | Sequence[float],
    *,
    title: str = "",
    max_panels: int = _MOSAIC_MAX_PANELS,
    dpi: int = 100,
) -> Path:
    """Write a mosaic of axial FLAIR slices that shows every T2 lesion, outlined.

    The anatomy panel's FLAIR row shows the three slices with the most lesion voxels; a
    radiologist checking (or correcting) an automatic segmentation needs to see every lesion,
    and every false one. The slices are those of :func:`lesion_slices` (each lesion crossed at
    least once, the fewest slices; at most ``max_panels``, and the title says how many lesions
    they show), in anatomical order, six to a row, each cropped to the head; without lesions,
    twelve slices evenly through the head. Each lesion's number (yellow) is written beside it on
    every slice that crosses it. Same conventions as :func:`anatomy_qc_panel`: RAS+
    voxel axes, radiological view, voxels at their size in mm, outlines along voxel edges.

    Parameters
    ----------
    out_png : str or Path
        Destination PNG; written atomically, parent folders created.
    flair : (X, Y, Z) array_like
        FLAIR image in the voxel axes of a RAS+ image.
    lesions : (X, Y, Z) array_like or None
        Lesion mask on the FLAIR grid (nonzero is lesion), or a lesion label map whose numbers
        are written beside the lesions (:func:`lesion_number_positions`; a mask is numbered
        by its 26-connected components); None: not segmented.
    voxel_size : float or sequence of 3 floats
        FLAIR voxel size, mm.
    title : str, optional
        Title (the subject id), followed by the lesion count and volume.
    max_panels : int, optional
        Most slices drawn.
    dpi : int, optional
        Resolution; each panel is 3 x 3 inches.

    Returns
    -------
    Path
        The PNG written.

    Raises
    ------
    InputError
        If an image is not 3-D or the shapes differ, or a voxel size, ``max_panels`` or
        ``dpi`` is invalid.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> fl = np.zeros((20, 20, 10), np.float32); fl[3:17, 3:17, 1:9] = 1.0
    >>> les = np.zeros(fl.shape, bool); les[8:10, 8:10, 4:6] = True; fl[les] = 2.0
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "mosaic.png"
    >>> lesion_mosaic(out, fl, les, 1.0, dpi=30).exists()
    True
    """
    fl = _image(flair, "flair")
    fvs = _voxel_size(voxel_size, "voxel_size")
    les = None if lesions is None else _mask(lesions, "lesions", fl.shape, "FLAIR")
    if not (isinstance(dpi, (int, np.integer)) and dpi > 0):
        raise InputError(f"dpi must be a positive integer, found {dpi!r}")
    if not (isinstance(max_panels, (int, np.integer)) and max_panels >= 1):
        raise InputError(f"max_panels must be a positive integer, found {max_panels!r}")
    lab = None
    n_les = 0
    if les is not None and les.any():
        given = np.asarray(lesions)
        if np.issubdtype(given.dtype, np.integer) and int(given.max()) > 1:
            lab = np.where(given > 0, given, 0).astype(np.int32)  # numbers of the lesion table
            n_les = int(np.unique(lab[lab > 0]).size)
        else:
            lab, n_les = label_lesions(les)
    if n_les:
        zs, shown = _cover_slices(lab, max_panels)
    else:
        zs, shown = _even_slices(fl, min(_MOSAIC_EMPTY_PANELS, max_panels)), 0
    cols = min(_MOSAIC_COLUMNS, max(len(zs), 3))  # three wide at least: room for the title
    rows = -(-len(zs) // cols)
    head = _head(fl)
    box = _bbox(head, np.full(3, 2))
    pos = fl[head]
    hi = float(np.percentile(pos, 99.5)) if pos.size else float(fl.max())
    hi = hi if hi > 0 else 1.0
    # panel aspect: the head's in-plane extent in mm
    w_mm = (box[0].stop - box[0].start) * fvs[0]
    h_mm = (box[1].stop - box[1].start) * fvs[1]
    panel_w = 3.0
    panel_h = panel_w * h_mm / max(w_mm, 1e-6) + 0.35
    fig = Figure(figsize=(panel_w * cols, panel_h * rows + 0.9), dpi=dpi,
                 facecolor=COLOURS["background"])
    top = 1.0 - 0.9 / (panel_h * rows + 0.9)
    gs = fig.add_gridspec(rows, cols, left=0.005, right=0.995, bottom=0.005, top=top,
                          wspace=0.02, hspace=0.12)
    numbers = [] if lab is None else lesion_number_positions(lab, zs, fvs)
    stroke = [patheffects.withStroke(linewidth=2.0, foreground="black")]
    for k, z in enumerate(zs):
        ax = fig.add_subplot(gs[k // cols, k % cols])
        sec = fl[:, :, z]
        ax.imshow(sec.T, origin="lower", extent=_extent(sec.shape, fvs[0], fvs[1]),
                  cmap="gray", vmin=0.0, vmax=hi, interpolation="nearest")
        what = ""
        if les is not None:
            _outline(ax, les[:, :, z], fvs[0], fvs[1], COLOURS["lesions"], lw=1.2)
            if lab is not None:
                k_les = int(np.count_nonzero(np.unique(lab[:, :, z])))
                what = f", {k_les} lesion{'s' if k_les != 1 else ''}"
                for number, zn, h_mm, v_mm in numbers:
                    if zn == z:
                        ax.text(h_mm, v_mm, str(number), color=COLOURS["csf_ref"],
                                fontsize=7, ha="left", va="center", path_effects=stroke,
                                clip_on=True)
        _crop_limits(ax, box, "axial", fvs)
        _bare(ax)
        if k == 0:
            _letters(ax, _VIEWS["axial"][3])
        ax.set_title(f"z={z}{what}", color=COLOURS["text"], fontsize=10, pad=2)
    if les is None:
        summary = "lesions not segmented"
    elif n_les == 0:
        summary = "no T2 lesions: FLAIR evenly through the head"
    else:
        vol = lesion_volume_ml(les, fvs)
        n_z = f"{len(zs)} axial slice{'s' if len(zs) != 1 else ''}"
        summary = (f"{n_les} T2 lesion{'s' if n_les != 1 else ''} (26-connected), mask "
                   f"{vol:.2f} mL: "
                   + (("the lesion" if n_les == 1 else "every lesion") + f" in {n_z}"
                      if shown == n_les else f"{shown} of {n_les} lesions in the {n_z} drawn"))
    fig.text(0.005, 1.0 - 0.1 / (panel_h * rows + 0.9), f"{title}   {summary}".strip(),
             ha="left", va="top", color=COLOURS["text"], fontsize=14, fontweight="bold")
    fig.text(0.995, 1.0 - 0.5 / (panel_h * rows + 0.9),
             "lesions in red, numbered as in the lesion table; R = patient's right "
             "(image left)", ha="right", va="top", color="#B0B0B0", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor(),
                metadata={"Software": None})
    path = atomic_write_bytes(out_png, buf.getvalue())
    log.info("lesion mosaic written to %s (%d slices, %d lesions)", path, len(zs), n_les)
    return path


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _voxel_size(voxel_size: Any, name: str) -> np.ndarray:
    try:
        vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,)).copy()
    except (TypeError, ValueError):
        raise InputError(
            f"{name} must be three positive numbers in mm, found {voxel_size!r}"
        ) from None
    if not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise InputError(f"{name} must be three positive numbers in mm, found {voxel_size!r}")
    return vs


def _image(img: Any, name: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 3:
        raise InputError(f"{name} must be a 3-D image, found shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise InputError(f"{name} must be numeric, found dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise InputError(f"{name} has {bad} NaN or infinite voxels; fix or zero them first")
    return a


def _mask(m: Any, name: str, shape: tuple[int, ...], grid: str) -> np.ndarray:
    a = np.asarray(m)
    if a.shape != shape:
        raise InputError(f"{name} shape {a.shape} differs from the {grid} shape {shape}")
    return a.astype(bool)


def _rois(th: Any, name: str, shape: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    """A thalamus argument as [(colour key, mask), ...]: one bool mask or a (left, right) pair."""
    if isinstance(th, (tuple, list)):
        if len(th) != 2:
            raise InputError(
                f"{name} must be one 3-D mask or a (left, right) pair of masks, "
                f"found a sequence of {len(th)}"
            )
        return [
            ("thalamus_left", _mask(th[0], f"{name} (left)", shape, "chi")),
            ("thalamus_right", _mask(th[1], f"{name} (right)", shape, "chi")),
        ]
    return [("thalamus", _mask(th, name, shape, "chi"))]


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------
def _plane(vol: np.ndarray, view: str, index: int) -> np.ndarray:
    """2-D section indexed (horizontal, vertical) of a 3-D volume."""
    normal = _VIEWS[view][0]
    return np.take(vol, index, axis=normal)


def _spacing(vs: np.ndarray, view: str) -> tuple[float, float]:
    _, h, v, _ = _VIEWS[view]
    return float(vs[h]), float(vs[v])


def _extent(shape2d: tuple[int, int], dh: float, dv: float) -> tuple[float, float, float, float]:
    return (-0.5 * dh, (shape2d[0] - 0.5) * dh, -0.5 * dv, (shape2d[1] - 0.5) * dv)


def _outline(ax, m2d: np.ndarray, dh: float, dv: float, colour: str, lw: float, ls: str = "-"):
    """Outline a 2-D mask (horizontal, vertical) along its voxel edges, coordinates in mm."""
    if not m2d.any():
        return
    hi, vi = np.nonzero(m2d)
    h0, h1 = max(int(hi.min()) - 1, 0), int(hi.max()) + 2
    v0, v1 = max(int(vi.min()) - 1, 0), int(vi.max()) + 2
    sub = m2d[h0:h1, v0:v1]
    k = _UPSAMPLE
    up = np.repeat(np.repeat(sub, k, axis=0), k, axis=1)
    up = np.pad(up, 1).astype(np.float32)  # closed contours at the image border
    # sample j of voxel i sits at i + (j + 0.5) / k - 0.5 (voxel units): level 0.5 between the
    # last sample of one voxel and the first of the next falls exactly on their common edge
    xs = (h0 + (np.arange(up.shape[0]) - 1 + 0.5) / k - 0.5) * dh
    ys = (v0 + (np.arange(up.shape[1]) - 1 + 0.5) / k - 0.5) * dv
    ax.contour(xs, ys, up.T, levels=[0.5], colors=[colour], linewidths=lw, linestyles=ls)


def _fill(ax, m2d: np.ndarray, dh: float, dv: float, colour: str, alpha: float) -> None:
    if not m2d.any():
        return
    rgba = np.zeros((m2d.shape[1], m2d.shape[0], 4), dtype=np.float32)
    rgba[m2d.T] = to_rgba(colour, alpha)
    ax.imshow(rgba, origin="lower", extent=_extent(m2d.shape, dh, dv), interpolation="nearest")


def _letters(ax, pair: tuple[str, str]) -> None:
    stroke = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for x, ha, letter in ((0.015, "left", pair[0]), (0.985, "right", pair[1])):
        ax.text(x, 0.5, letter, transform=ax.transAxes, ha=ha, va="center", color="white",
                fontsize=13, fontweight="bold", path_effects=stroke)


def _crop_limits(
    ax, box: tuple[slice, slice, slice], view: str, vs: np.ndarray
) -> None:
    """Show the in-plane part of ``box`` (voxel slices); highest horizontal index on the left."""
    _, h, v, _ = _VIEWS[view]
    bh, bv = box[h], box[v]
    ax.set_xlim((bh.stop - 0.5) * vs[h], (bh.start - 0.5) * vs[h])
    ax.set_ylim((bv.start - 0.5) * vs[v], (bv.stop - 0.5) * vs[v])


def _bbox(mask: np.ndarray, margin_vox: np.ndarray) -> tuple[slice, slice, slice]:
    if not mask.any():
        return tuple(slice(0, s) for s in mask.shape)  # type: ignore[return-value]
    idx = np.nonzero(mask)
    return tuple(  # type: ignore[return-value]
        slice(max(int(i.min()) - int(m), 0), min(int(i.max()) + 1 + int(m), s))
        for i, m, s in zip(idx, margin_vox, mask.shape, strict=True)
    )


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("black")
    for sp in ax.spines.values():
        sp.set_visible(False)


def _qsm_view(ax, chi, vs, view, index, window, layers, box, title):
    """One QSM section with the ROI overlays; returns the grey-scale image artist."""
    dh, dv = _spacing(vs, view)
    sec = _plane(chi, view, index)
    im = ax.imshow(sec.T, origin="lower", extent=_extent(sec.shape, dh, dv), cmap="gray",
                   vmin=window[0], vmax=window[1], interpolation="nearest")
    for kind, colour, m in layers:
        m2d = _plane(m, view, index)
        if kind == "fill":
            _fill(ax, m2d, dh, dv, colour, _VEIN_FILL_ALPHA)
            _outline(ax, m2d, dh, dv, colour, lw=1.5)
        elif kind == "dashed":
            _outline(ax, m2d, dh, dv, colour, lw=1.0, ls="--")
        else:
            _outline(ax, m2d, dh, dv, colour, lw=2.0)
    _crop_limits(ax, box, view, vs)
    _bare(ax)
    _letters(ax, _VIEWS[view][3])
    ax.set_title(title, color=COLOURS["text"], fontsize=11)
    return im


def _flair_slices(flair: np.ndarray, lesions: np.ndarray | None, vs: np.ndarray) -> list[int]:
    """Axial FLAIR slices: most lesion voxels (10 mm apart), else evenly through the brain."""
    gap = max(1, int(np.ceil(_LESION_SLICE_GAP_MM / vs[2])))
    chosen = top_slices(lesions, _N_FLAIR, axis=2, min_gap=gap) if lesions is not None else []
    if len(chosen) < _N_FLAIR:
        head = _head(flair)
        zs = np.flatnonzero(np.count_nonzero(head, axis=(0, 1)))
        z0, z1 = (int(zs[0]), int(zs[-1])) if zs.size else (0, flair.shape[2] - 1)
        for f in (0.5, 0.3, 0.7, 0.4, 0.6, 0.2, 0.8):
            z = int(round(z0 + f * (z1 - z0)))
            if len(chosen) < _N_FLAIR and all(abs(z - c) >= gap for c in chosen):
                chosen.append(z)
        for z in range(flair.shape[2]):  # tiny volumes: any remaining distinct slices
            if len(chosen) < _N_FLAIR and z not in chosen:
                chosen.append(z)
    return sorted(chosen)


def _head(img: np.ndarray) -> np.ndarray:
    """Voxels clearly above the background of a structural image."""
    pos = img[img > 0]
    if pos.size == 0:
        return np.zeros(img.shape, bool)
    return img > 0.1 * float(np.percentile(pos, 99))


def _ml(mask: np.ndarray, vs: np.ndarray) -> float:
    return float(np.count_nonzero(mask) * np.prod(vs) / 1000.0)


# --------------------------------------------------------------------------------------------
# the panel
# --------------------------------------------------------------------------------------------
def anatomy_qc_panel(
    out_png: str | Path,
    chi: np.ndarray,
    voxel_size: float | Sequence[float],
    thalamus: np.ndarray | Sequence[np.ndarray],
    csf_ref: np.ndarray,
    veins: np.ndarray,
    *,
    thalamus_before_veins: np.ndarray | Sequence[np.ndarray] | None = None,
    flair: np.ndarray | None = None,
    lesions: np.ndarray | None = None,
    flair_voxel_size: float | Sequence[float] | None = None,
    title: str = "",
    flags: Sequence[str] = (),
    chi_window_ppm: tuple[float, float] = (-0.15, 0.15),
    dpi: int = 120,
) -> Path:
    """Write a subject's anatomy QC panel: QSM with thalamus, CSF reference and veins; FLAIR.

    Layout (``FIGSIZE_INCHES`` at ``dpi``, so 1920 x 1080 pixels by default):

    * row 1, QSM in a grey-scale window (colourbar "chi (ppm)"): (a) the axial slice with the
      most thalamus voxels, whole brain; (b) the same slice zoomed on the thalami and atria;
      (c) the axial slice with the most CSF-reference voxels, zoomed, or, if that is the slice
      of (a), a sagittal slice through the thalamus; (d) the coronal slice with the most
      thalamus voxels. Thalamus outlined (left and right in two colours when given as a pair),
      CSF reference outlined, veins filled semi-transparent and outlined, the thalamus before
      vein exclusion dashed if given.
    * row 2, FLAIR: three axial slices with the most lesion voxels, at least 10 mm apart (evenly
      spaced through the head when there are fewer lesion slices or no lesions), lesions
      outlined; a side panel with the legend, ROI volumes, lesion count (26-connected
      components) and volume, and the voxel sizes.
    * title with the subject id; QC flags in red under it ("no QC flags" when there are none).

    Empty ROIs are drawn as nothing (the QC flags of the caller say what is missing); the
    slices are then chosen from the ROIs that are not empty.

    Parameters
    ----------
    out_png : str or Path
        Destination PNG; written atomically, parent folders created.
    chi : (X, Y, Z) array_like
        Susceptibility map, ppm, in the voxel axes of a RAS+ image (axis 0 towards the
        patient's Right, 1 Anterior, 2 Superior; reorient with
        :func:`nibabel.as_closest_canonical` first). Voxels outside the brain are usually 0.
    voxel_size : float or sequence of 3 floats
        Voxel size of ``chi`` in mm (anisotropic voxels are shown at their true aspect).
    thalamus : (X, Y, Z) array_like of bool, or a (left, right) pair of them
        Thalamus ROI (after vein exclusion) on the ``chi`` grid; nonzero voxels are inside. A
        pair is outlined in two colours (``COLOURS["thalamus_left"]``, ``["thalamus_right"]``),
        a single mask in ``COLOURS["thalamus"]``.
    csf_ref : (X, Y, Z) array_like of bool
        CSF reference ROI (both atria) on the ``chi`` grid.
    veins : (X, Y, Z) array_like of bool
        Veins excluded from the ROIs, on the ``chi`` grid.
    thalamus_before_veins : array_like or pair, optional
        Thalamus before vein (and partial-volume rim) exclusion (same form as ``thalamus``),
        drawn dashed so the excluded part is visible.
    flair : (X', Y', Z') array_like, optional
        FLAIR image (RAS+ voxel axes), on its own grid or on the ``chi`` grid. Without it, row 2
        says "no FLAIR".
    lesions : (X', Y', Z') array_like, optional
        Lesion mask (or lesion label map; nonzero is lesion) on the FLAIR grid.
    flair_voxel_size : float or sequence of 3 floats, optional
        FLAIR voxel size in mm; may be omitted when the FLAIR is on the ``chi`` grid (same
        shape), in which case ``voxel_size`` is used.
    title : str, optional
        Subject id (and session), printed at the top.
    flags : sequence of str, optional
        QC flags (e.g. ``"csf_ref_high_r2star"``), printed in red.
    chi_window_ppm : (float, float), optional
        Grey-scale window of the QSM, ppm (default -0.15 to 0.15 ppm: deep grey nuclei, white
        matter and CSF are distinguishable, veins are white).
    dpi : int, optional
        Resolution, pixels per inch.

    Returns
    -------
    Path
        ``out_png``.

    Raises
    ------
    InputError
        If an image is not 3-D or holds NaN/infinite values, a mask's shape differs from its
        image's, both the thalamus and the CSF reference are empty, lesions are given without a
        FLAIR, a FLAIR on another grid comes without ``flair_voxel_size``, or a voxel size,
        window or ``dpi`` is invalid.

    References
    ----------
    .. [1] Chiang GC et al. Quantitative susceptibility mapping of the thalamus: relationships
       with thalamic volume, total gray matter volume, and T2 lesion burden. AJNR
       2018;39:467-472 (Figures 1 and 2).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> chi = np.zeros((40, 48, 40), np.float32)
    >>> th = np.zeros(chi.shape, bool); th[14:26, 20:30, 18:24] = True
    >>> csf = np.zeros(chi.shape, bool); csf[18:22, 12:15, 19:22] = True
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "qc.png"
    >>> anatomy_qc_panel(out, chi, 2.0, th, csf, np.zeros(chi.shape, bool), dpi=40).exists()
    True
    """
    chi = _image(chi, "chi")
    shape = chi.shape
    vs = _voxel_size(voxel_size, "voxel_size")
    th_layers = _rois(thalamus, "thalamus", shape)
    csf = _mask(csf_ref, "csf_ref", shape, "chi")
    vn = _mask(veins, "veins", shape, "chi")
    before = None
    if thalamus_before_veins is not None:
        before = np.logical_or.reduce(
            [m for _, m in _rois(thalamus_before_veins, "thalamus_before_veins", shape)]
        )
    th_all = np.logical_or.reduce([m for _, m in th_layers])
    if not th_all.any() and not csf.any():
        raise InputError(
            "thalamus and csf_ref are both empty: nothing to show at the level of the thalami"
        )
    lo, hi = (float(w) for w in chi_window_ppm)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InputError(f"chi_window_ppm must be (low, high) with low < high, found "
                         f"{chi_window_ppm!r}")
    if not (isinstance(dpi, (int, np.integer)) and dpi > 0):
        raise InputError(f"dpi must be a positive integer, found {dpi!r}")
    flag_list = [flags] if isinstance(flags, str) else [str(f) for f in flags]

    fl = les = None
    fvs = vs
    if flair is not None:
        fl = _image(flair, "flair")
        if flair_voxel_size is None:
            if fl.shape != shape:
                raise InputError(
                    f"flair shape {fl.shape} differs from chi shape {shape}: give "
                    "flair_voxel_size for a FLAIR on its own grid"
                )
        else:
            fvs = _voxel_size(flair_voxel_size, "flair_voxel_size")
        if lesions is not None:
            les = _mask(lesions, "lesions", fl.shape, "flair")
    elif lesions is not None:
        raise InputError("lesions given without flair: lesions are drawn on the FLAIR")

    # ---- slices -------------------------------------------------------------------------
    anchor = th_all if th_all.any() else csf
    anchor_name = "thalamus" if th_all.any() else "CSF ref"
    z_th = slice_with_most(anchor, axis=2)
    y_th = slice_with_most(anchor, axis=1)
    z_csf = slice_with_most(csf, axis=2)
    assert z_th is not None and y_th is not None  # anchor is not empty

    brain = chi != 0
    if not brain.any():
        brain = np.ones(shape, bool)
    box_brain = _bbox(brain, np.full(3, 2))
    roi_any = th_all | csf if before is None else th_all | csf | before
    box_zoom = _bbox(roi_any, np.ceil(_ZOOM_MARGIN_MM / vs).astype(int))

    layers: list[tuple[str, str, np.ndarray]] = []
    if before is not None:
        layers.append(("dashed", COLOURS["thalamus_before_veins"], before))
    layers.append(("fill", COLOURS["veins"], vn))
    layers += [("line", COLOURS[key], m) for key, m in th_layers]
    layers.append(("line", COLOURS["csf_ref"], csf))

    # ---- figure -------------------------------------------------------------------------
    fig = Figure(figsize=FIGSIZE_INCHES, dpi=dpi, facecolor=COLOURS["background"])
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(
        2, 5, width_ratios=[1, 1, 1, 1, 0.05], left=0.01, right=0.955, top=0.885, bottom=0.01,
        wspace=0.06, hspace=0.12,
    )
    window = (lo, hi)
    nx, ny, nz = shape
    ax = fig.add_subplot(gs[0, 0])
    im = _qsm_view(ax, chi, vs, "axial", z_th, window, layers, box_brain,
                   f"QSM axial z={z_th}/{nz - 1} (most {anchor_name})")
    ax = fig.add_subplot(gs[0, 1])
    _qsm_view(ax, chi, vs, "axial", z_th, window, layers, box_zoom, f"zoom, z={z_th}")
    ax = fig.add_subplot(gs[0, 2])
    if z_csf is not None and z_csf != z_th:
        _qsm_view(ax, chi, vs, "axial", z_csf, window, layers, box_zoom,
                  f"zoom, z={z_csf} (most CSF ref)")
    else:
        x_th = slice_with_most(anchor, axis=0)
        assert x_th is not None
        _qsm_view(ax, chi, vs, "sagittal", x_th, window, layers, box_brain,
                  f"sagittal x={x_th}/{nx - 1} ({anchor_name})")
    ax = fig.add_subplot(gs[0, 3])
    _qsm_view(ax, chi, vs, "coronal", y_th, window, layers, box_brain,
              f"coronal y={y_th}/{ny - 1} ({anchor_name})")
    cax = fig.add_subplot(gs[0, 4])
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("chi (ppm)", color=COLOURS["text"], fontsize=11)
    cb.ax.tick_params(colors=COLOURS["text"], labelsize=9)
    cb.outline.set_edgecolor(COLOURS["text"])

    # ---- FLAIR row ----------------------------------------------------------------------
    if fl is None:
        ax = fig.add_subplot(gs[1, 0:3])
        _bare(ax)
        ax.set_facecolor(COLOURS["background"])
        ax.text(0.5, 0.5, "no FLAIR", transform=ax.transAxes, ha="center", va="center",
                color=COLOURS["text"], fontsize=16)
    else:
        f_head = _head(fl)
        f_pos = fl[f_head]
        f_lo = 0.0
        f_hi = float(np.percentile(f_pos, 99.5)) if f_pos.size else float(fl.max())
        if not f_hi > f_lo:
            f_hi = f_lo + 1.0
        f_box = _bbox(f_head, np.full(3, 2))
        for col, z in enumerate(_flair_slices(fl, les, fvs)):
            ax = fig.add_subplot(gs[1, col])
            sec = fl[:, :, z]
            ext = _extent(sec.shape, fvs[0], fvs[1])
            ax.imshow(sec.T, origin="lower", extent=ext, cmap="gray", vmin=f_lo, vmax=f_hi,
                      interpolation="nearest")
            n_les = 0
            if les is not None:
                _outline(ax, les[:, :, z], fvs[0], fvs[1], COLOURS["lesions"], lw=1.8)
                n_les = int(np.count_nonzero(les[:, :, z]))
            _crop_limits(ax, f_box, "axial", fvs)
            _bare(ax)
            _letters(ax, _VIEWS["axial"][3])
            what = f", {n_les} lesion voxels" if les is not None else ""
            ax.set_title(f"FLAIR axial z={z}/{fl.shape[2] - 1}{what}", color=COLOURS["text"],
                         fontsize=11)

    # ---- side panel: legend and numbers -------------------------------------------------
    ax = fig.add_subplot(gs[1, 3:5])
    ax.set_axis_off()
    handles = []
    labels = []
    names = {"thalamus": "thalamus", "thalamus_left": "thalamus L",
             "thalamus_right": "thalamus R"}
    for key, _ in th_layers:
        handles.append(Line2D([], [], color=COLOURS[key], lw=2.0))
        labels.append(names[key])
    if before is not None:
        handles.append(Line2D([], [], color=COLOURS["thalamus_before_veins"], lw=1.0, ls="--"))
        labels.append("thalamus before exclusions")
    handles.append(Line2D([], [], color=COLOURS["csf_ref"], lw=2.0))
    labels.append("CSF reference (atria)")
    handles.append(Patch(facecolor=to_rgba(COLOURS["veins"], _VEIN_FILL_ALPHA),
                         edgecolor=COLOURS["veins"], lw=1.5))
    labels.append("veins (excluded)")
    if les is not None:
        handles.append(Line2D([], [], color=COLOURS["lesions"], lw=1.8))
        labels.append("T2 lesions (FLAIR)")
    leg = ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.0, 1.0), frameon=True,
                    facecolor="#303030", edgecolor="#808080", fontsize=11, handlelength=2.5)
    for t in leg.get_texts():
        t.set_color(COLOURS["text"])

    lines = []
    for key, m in th_layers:
        lines.append(f"{names[key]} ROI (QSM voxels): {_ml(m, vs):.2f} mL")
    if before is not None:
        n_b = int(np.count_nonzero(before))
        frac = 1.0 - np.count_nonzero(th_all & before) / n_b if n_b else 0.0
        lines.append(f"left out of the ROI (veins, rims): {100 * frac:.1f} %")
    lines.append(f"CSF reference: {_ml(csf, vs) * 1000:.0f} mm3")
    lines.append(f"veins: {_ml(vn, vs):.2f} mL")
    if les is not None:
        lines.append(f"lesions: {lesion_count(les, fvs)} (26-connected), "
                     f"{lesion_volume_ml(les, fvs):.2f} mL")
    elif fl is not None:
        lines.append("lesions: not given")
    lines.append("QSM voxel: " + " x ".join(f"{v:.3g}" for v in vs) + " mm")
    if fl is not None:
        lines.append("FLAIR voxel: " + " x ".join(f"{v:.3g}" for v in fvs) + " mm")
    lines.append("radiological view: patient's right on image left")
    ax.text(0.0, 0.0, "\n".join(lines), transform=ax.transAxes, ha="left", va="bottom",
            color=COLOURS["text"], fontsize=11, linespacing=1.5, family="monospace")

    # ---- title and flags ----------------------------------------------------------------
    fig.text(0.01, 0.975, title or "(no subject id)", ha="left", va="top",
             color=COLOURS["text"], fontsize=18, fontweight="bold")
    fig.text(0.99, 0.975, "radiological convention: R = patient's right (image left), "
             "anterior up", ha="right", va="top", color="#B0B0B0", fontsize=11)
    if flag_list:
        text = textwrap.shorten("QC FLAGS: " + ", ".join(flag_list), width=160,
                                placeholder=f" ... ({len(flag_list)} flags)")
        fig.text(0.01, 0.935, text, ha="left", va="top", color=COLOURS["flags"], fontsize=14,
                 fontweight="bold")
    else:
        fig.text(0.01, 0.935, "no QC flags", ha="left", va="top", color="#B0B0B0",
                 fontsize=12)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor(),
                metadata={"Software": None})
    path = atomic_write_bytes(out_png, buf.getvalue())
    log.info("anatomy QC panel written to %s (%d flags)", path, len(flag_list))
    return path
