"""The QSM pipeline: multi-echo GRE -> brain mask -> field -> unwrap -> background -> chi.

Each stage is one plain function of :mod:`qsmiron.recon`; this module chains them with the
study's defaults, times them, counts FFTs, and writes the results as BIDS derivatives.

Default chain (the reference study used MEDI; Liu et al. NeuroImage 2012;59:2560):

1. brain mask from the GRE magnitude (:func:`qsmiron.recon.mask.brain_mask`);
2. nonlinear complex fit of all echoes: field, initial phase, field noise
   (:func:`qsmiron.recon.multiecho.fit_complex`), R2* and an echo-combined magnitude;
3. spatial unwrapping of the fitted field (ROMEO-style region growing by default), then
   removal from the mask of voxels whose unwrapped field is ambiguous (steep field next to
   air, :func:`reliable_field_mask`);
4. background removal (LBV by default: on the phantom it biases deep grey matter least;
   PDF, weighted by the field noise, and V-SHARP on request);
5. dipole inversion (MEDI with the magnitude edge prior, noise weighting and the MEDI+0 CSF
   term by default), so chi is referenced to automatically found ventricular CSF.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi

from qsmiron.errors import InputError
from qsmiron.io.bids import MultiEchoGRE, bids_name, derivatives_dir
from qsmiron.io.nifti import save_nifti
from qsmiron.recon.background import lbv, pdf, vsharp
from qsmiron.recon.inversion import medi, tikhonov_l2, tkd
from qsmiron.recon.mask import brain_mask, csf_mask, largest_component
from qsmiron.recon.multiecho import combine_magnitude, fit_complex, hz_to_ppm, r2star_map
from qsmiron.recon.unwrap import laplacian_unwrap, romeo_unwrap

__all__ = ["ReconParams", "ReconResult", "reconstruct", "reliable_field_mask",
           "write_recon_derivatives"]

log = logging.getLogger(__name__)

Method = Literal["medi", "tkd", "l2"]
BgMethod = Literal["pdf", "lbv", "vsharp"]
UnwrapMethod = Literal["romeo", "laplacian"]


@dataclass(frozen=True)
class ReconParams:
    """Parameters of :func:`reconstruct`.

    Attributes
    ----------
    method : {"medi", "tkd", "l2"}
        Dipole inversion.
    bgremove : {"pdf", "lbv", "vsharp"}
        Background field removal.
    unwrap : {"romeo", "laplacian"}
        Spatial unwrapping of the fitted field.
    mask_erode_mm : float
        Extra erosion of the brain mask, mm.
    zero_csf : bool
        MEDI+0: keep automatically found CSF uniform and use it as the zero reference.
    medi_lam : float or None
        MEDI regularisation weight; None uses :func:`qsmiron.recon.inversion.medi`'s default.
    """

    method: Method = "medi"
    bgremove: BgMethod = "lbv"
    unwrap: UnwrapMethod = "romeo"
    mask_erode_mm: float = 0.0
    zero_csf: bool = True
    medi_lam: float | None = None


@dataclass
class ReconResult:
    """Everything :func:`reconstruct` produced; maps are (X, Y, Z) float32.

    Attributes
    ----------
    chi : ndarray
        Susceptibility, ppm (referenced to the CSF mask with MEDI+0, else to the mask mean).
    mask : ndarray
        Mask on which ``chi`` and the local field are valid (after background removal).
    brain_mask : ndarray
        Brain mask from the magnitude.
    field_total, field_local, noise : ndarray
        Total (unwrapped) field, local field and field noise SD, ppm.
    r2star : ndarray
        R2*, 1/s.
    magnitude : ndarray
        Echo-combined magnitude (edge prior of MEDI).
    csf_mask : ndarray
        Automatic CSF (ventricles) used by MEDI+0.
    seconds : dict
        Wall time per stage.
    n_fft : dict
        FFT count per stage where known.
    info : dict
        Parameters and diagnostics for the provenance sidecar.
    """

    chi: np.ndarray
    mask: np.ndarray
    brain_mask: np.ndarray
    field_total: np.ndarray
    field_local: np.ndarray
    noise: np.ndarray
    r2star: np.ndarray
    magnitude: np.ndarray
    csf_mask: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    n_fft: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def reconstruct(
    gre: MultiEchoGRE,
    params: ReconParams | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReconResult:
    """Reconstruct a susceptibility map from a multi-echo GRE.

    Parameters
    ----------
    gre : MultiEchoGRE
        Magnitude, phase (rad), echo times (s), B0 (T), voxel size and B0 direction
        (:func:`qsmiron.io.bids.read_megre_bids`).
    params : ReconParams, optional
        Method choices; the reference study's chain by default.
    progress : callable, optional
        Called with the name of each stage as it starts.

    Returns
    -------
    ReconResult

    Raises
    ------
    InputError
        Field strength unknown, or a stage rejected the data.
    """
    p = params or ReconParams()
    if gre.b0 is None:
        raise InputError(
            "the field strength is unknown (no MagneticFieldStrength in the sidecar): "
            "give it with --b0"
        )
    vs = np.asarray(gre.voxel_size, float)
    b0_dir = np.asarray(gre.b0_dir, float)
    te = np.asarray(gre.te, float)
    seconds: dict[str, float] = {}
    n_fft: dict[str, int] = {}
    info: dict[str, Any] = {"params": asdict(p)}

    def stage(name: str) -> float:
        if progress is not None:
            progress(name)
        log.info("recon stage: %s", name)
        return time.perf_counter()

    t = stage("mask")
    mask = brain_mask(gre.magnitude, vs, erode_mm=p.mask_erode_mm, te=te)
    seconds["mask"] = time.perf_counter() - t
    info["brain_volume_ml"] = float(mask.sum() * np.prod(vs) / 1000.0)

    t = stage("fit")
    fit = fit_complex(gre.magnitude, gre.phase, te, mask, voxel_size=vs)
    magnitude = combine_magnitude(gre.magnitude, te)
    r2s = r2star_map(gre.magnitude, te, mask)
    seconds["fit"] = time.perf_counter() - t
    info["fit_iterations"] = int(fit.iterations)
    info["noise_sigma"] = float(fit.noise_sigma)

    t = stage("unwrap")
    field_hz = _unwrap_field(fit, gre, mask, magnitude, vs, p.unwrap)
    seconds["unwrap"] = time.perf_counter() - t
    total = hz_to_ppm(field_hz, gre.b0).astype(np.float32)
    noise = hz_to_ppm(fit.noise_hz, gre.b0).astype(np.float32)
    noise = np.where(np.isfinite(noise) & mask, noise, np.float32(0.0)).astype(np.float32)
    period_ppm = None if fit.alias_period_hz is None else hz_to_ppm(fit.alias_period_hz, gre.b0)
    reliable = reliable_field_mask(total, mask, period_ppm)
    info["unreliable_excluded_ml"] = float((mask & ~reliable).sum() * np.prod(vs) / 1000.0)
    mask = reliable

    t = stage("background")
    bg_info: dict[str, Any] = {}
    # Data weights are 1/noise; floor the noise at its 5th percentile in the mask so that a
    # few voxels with an implausibly small noise estimate cannot dominate the weighted fits.
    floor = np.float32(max(float(np.percentile(noise[mask], 5.0)), 1e-6)) if mask.any() else 1.0
    weights_noise = np.where(mask, np.maximum(noise, floor), np.float32(1.0)).astype(np.float32)
    if p.bgremove == "pdf":
        local, mask_local = pdf(total, mask, vs, b0_dir, noise=weights_noise, info=bg_info)
    elif p.bgremove == "lbv":
        local, mask_local = lbv(total, mask, vs, info=bg_info)
    elif p.bgremove == "vsharp":
        local, mask_local = vsharp(total, mask, vs, info=bg_info)
    else:
        raise InputError(f"unknown background method {p.bgremove!r}; use pdf, lbv or vsharp")
    seconds["background"] = time.perf_counter() - t
    if "n_fft" in bg_info:
        n_fft["background"] = int(bg_info["n_fft"])
    info["background"] = {k: v for k, v in bg_info.items() if np.isscalar(v)}

    t = stage("csf")
    csf = csf_mask(r2s, mask_local, vs) if p.zero_csf else np.zeros_like(mask_local)
    seconds["csf"] = time.perf_counter() - t
    info["csf_volume_ml"] = float(csf.sum() * np.prod(vs) / 1000.0)

    t = stage("inversion")
    if p.method == "medi":
        kw: dict[str, Any] = {} if p.medi_lam is None else {"lam": p.medi_lam}
        res = medi(local, mask_local, vs, b0_dir, magnitude=magnitude,
                   noise=np.where(mask_local, weights_noise, 1.0).astype(np.float32),
                   csf_mask=csf if csf.any() else None, **kw)
        chi = res.chi
        n_fft["inversion"] = int(res.n_fft)
        info["inversion"] = {k: v for k, v in asdict(res).items() if k != "chi"}
    elif p.method == "tkd":
        chi = tkd(local, mask_local, vs, b0_dir)
    elif p.method == "l2":
        chi = tikhonov_l2(local, mask_local, vs, b0_dir)
    else:
        raise InputError(f"unknown inversion method {p.method!r}; use medi, tkd or l2")
    if p.method != "medi" and csf.any():
        chi = np.where(mask_local, chi - np.float32(chi[csf].mean()), 0).astype(np.float32)
    seconds["inversion"] = time.perf_counter() - t
    return ReconResult(
        chi=chi.astype(np.float32, copy=False), mask=mask_local, brain_mask=mask,
        field_total=total, field_local=local.astype(np.float32, copy=False), noise=noise,
        r2star=r2s, magnitude=magnitude, csf_mask=csf, seconds=seconds, n_fft=n_fft,
        info=info,
    )


def _unwrap_field(fit, gre: MultiEchoGRE, mask, magnitude, vs, method: UnwrapMethod):
    """Spatially unwrap the fitted field (Hz), defined modulo ``fit.alias_period_hz``."""
    period = fit.alias_period_hz
    if period is None:  # one echo: the field is phase / TE, unwrap that phase
        period = 1.0 / float(gre.te[0])
    wrapped = (2.0 * np.pi * fit.field_hz / period).astype(np.float32)
    if method == "romeo":
        unwrapped = romeo_unwrap(wrapped, magnitude=magnitude, mask=mask)
    elif method == "laplacian":
        unwrapped = laplacian_unwrap(wrapped, vs, mask=mask)
    else:
        raise InputError(f"unknown unwrapping method {method!r}; use romeo or laplacian")
    return np.where(mask, unwrapped * np.float32(period / (2.0 * np.pi)), 0).astype(np.float32)


def reliable_field_mask(
    field_ppm: np.ndarray, mask: np.ndarray, period_ppm: float | None, fraction: float = 0.25
) -> np.ndarray:
    """Remove voxels where the unwrapped field cannot be trusted from a brain mask.

    Next to air-tissue interfaces (sinuses, ear canals) the field can change by more than half
    its alias period ``1 / dTE`` between neighbouring voxels; there, spatial unwrapping is
    ambiguous and errors of whole periods occur. They matter far beyond their number: LBV takes
    its boundary values from them and PDF and the inversion fit them. A voxel is unreliable if
    the field differs from a neighbour inside the mask by more than ``fraction`` of the period;
    unreliable voxels and their neighbours leave the mask, then the largest connected part is
    kept and interior holes are filled (veins and lesions inside the brain stay in).

    Parameters
    ----------
    field_ppm : (X, Y, Z) array
        Unwrapped total field, ppm.
    mask : (X, Y, Z) bool array
        Brain mask.
    period_ppm : float or None
        Alias period of the field (``1 / dTE`` in ppm); None (one echo) returns ``mask``.
    fraction : float
        Largest trusted neighbour difference, as a fraction of the period.

    Returns
    -------
    (X, Y, Z) bool array
    """
    if period_ppm is None:
        return mask
    bad = np.zeros(mask.shape, bool)
    for ax in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        lo_t, hi_t = tuple(lo), tuple(hi)
        jump = (np.abs(field_ppm[hi_t] - field_ppm[lo_t]) > fraction * period_ppm)
        jump &= mask[lo_t] & mask[hi_t]
        bad[lo_t] |= jump
        bad[hi_t] |= jump
    if not bad.any():
        return mask
    keep = mask & ~ndi.binary_dilation(bad, iterations=1)
    if not keep.any():
        return mask
    return ndi.binary_fill_holes(largest_component(keep)) & mask


def write_recon_derivatives(
    result: ReconResult,
    deriv_dir: str | Path,
    subject: str,
    affine: np.ndarray,
    session: str | None = None,
    sources: list[Path] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write a reconstruction as BIDS derivatives under ``DERIV_DIR/qsmiron/``.

    Files (``sub-X[_ses-Y]_`` prefix, in ``sub-X[/ses-Y]/anat/``): ``Chimap`` (ppm, with the
    full provenance sidecar), ``desc-brain_mask``, ``desc-qsm_mask`` (where chi is valid),
    ``desc-csf_mask``, ``desc-total_fieldmap``, ``desc-local_fieldmap``,
    ``desc-noise_fieldmap`` (ppm), ``R2starmap`` (1/s), ``desc-echocombined_magnitude``.

    Returns
    -------
    dict
        Name -> path of every file written.
    """
    sub = subject[4:] if subject.startswith("sub-") else subject
    folder = derivatives_dir(deriv_dir, sub, session, create=True) / "anat"
    provenance = {
        "Sources": [str(s) for s in (sources or [])],
        "SignConvention": "chi in ppm; MEDI+0 references it to automatically found CSF",
        "StageSeconds": result.seconds,
        "FFTCounts": result.n_fft,
        **result.info,
        **(extra or {}),
    }

    def name(suffix: str, desc: str | None = None) -> Path:
        ents = {"desc": desc} if desc else None
        return folder / bids_name(sub, suffix, session=session, entities=ents)

    out = {
        "chi": save_nifti(name("Chimap"), result.chi, affine,
                          sidecar={"Units": "ppm", **provenance}),
        "brain_mask": save_nifti(name("mask", "brain"), result.brain_mask, affine,
                                 dtype=np.uint8, sidecar={"Type": "Brain"}),
        "qsm_mask": save_nifti(name("mask", "qsm"), result.mask, affine, dtype=np.uint8,
                               sidecar={"Description": "voxels where chi is valid"}),
        "csf_mask": save_nifti(name("mask", "csf"), result.csf_mask, affine, dtype=np.uint8,
                               sidecar={"Description": "automatic CSF (MEDI+0 reference)"}),
        "total_field": save_nifti(name("fieldmap", "total"), result.field_total, affine,
                                  sidecar={"Units": "ppm"}),
        "local_field": save_nifti(name("fieldmap", "local"), result.field_local, affine,
                                  sidecar={"Units": "ppm"}),
        "noise": save_nifti(name("fieldmap", "noise"), result.noise, affine,
                            sidecar={"Units": "ppm", "Description": "field noise SD"}),
        "r2star": save_nifti(name("R2starmap"), result.r2star, affine, sidecar={"Units": "1/s"}),
        "magnitude": save_nifti(name("magnitude", "echocombined"), result.magnitude, affine),
    }
    return out
