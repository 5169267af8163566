"""Simulated acquisitions of a phantom: multi-echo complex GRE and the structural images.

The field is computed from the phantom's susceptibility relative to the surrounding air (air,
outside the head and in the sinuses, is zero), so that the zero padding of the dipole
convolution is physically air and the head itself produces the background field. The local
field (the part from sources inside the brain, susceptibility relative to CSF) is computed as
well and returned as truth for background-removal methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qsmiron.constants import CHI_AIR_REL_WATER_PPM
from qsmiron.errors import InputError
from qsmiron.io.nifti import b0_direction
from qsmiron.simulate.gre import (
    add_rician_noise,
    forward_field,
    gre_signal,
    noise_sigma_for_snr,
    smooth_phase_offset,
)
from qsmiron.simulate.phantom import Phantom, _smooth_field

__all__ = ["Protocol", "Scan", "simulate_scan"]


@dataclass(frozen=True)
class Protocol:
    """Acquisition parameters of a simulated session (defaults: the reference study, 3 T).

    Attributes
    ----------
    te : tuple of float
        Echo times, s. Default: 6 echoes from 4.3 ms every 6.5 ms (study: first TE 4.3 ms,
        TR 57 ms).
    b0 : float
        Field strength, T.
    tr : float
        GRE repetition time, s.
    flip_deg : float
        GRE flip angle, degrees.
    snr : float
        Mean first-echo GRE magnitude in the brain divided by the noise SD per channel.
    structural_snr : float
        Mean brain intensity divided by the noise SD of T1w, FLAIR and post-Gd T1w.
    phase_offset_rad : float
        Amplitude of the smooth receive phase offset added to every echo, rad.
    bias_amplitude : float
        Relative amplitude of the smooth receive-sensitivity (bias) field of every image.
    b0_dir : tuple of float or None
        B0 in the voxel frame; None (default) derives it from the phantom's affine (B0 along
        the scanner's z axis), which is (0, 0, 1) unless the slab is oblique.
    """

    te: tuple[float, ...] = (0.0043, 0.0108, 0.0173, 0.0238, 0.0303, 0.0368)
    b0: float = 3.0
    tr: float = 0.057
    flip_deg: float = 20.0
    snr: float = 100.0
    structural_snr: float = 40.0
    phase_offset_rad: float = np.pi
    bias_amplitude: float = 0.15
    b0_dir: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        """Refuse an acquisition that cannot be simulated, before any work is done."""
        te = np.asarray(self.te, float)
        if te.ndim != 1 or te.size == 0 or not np.all(np.isfinite(te)) or np.any(te <= 0) \
                or np.any(np.diff(te) <= 0):
            raise InputError(f"echo times must be positive and increasing, found {self.te}")
        for name in ("b0", "tr", "snr", "structural_snr"):
            value = getattr(self, name)
            if not value > 0:
                raise InputError(f"{name} must be positive, found {value}")
        if not self.bias_amplitude >= 0:
            raise InputError(f"bias_amplitude must not be negative, found {self.bias_amplitude}")


@dataclass
class Scan:
    """A simulated session, images on the phantom's grid.

    Attributes
    ----------
    magnitude, phase : (X, Y, Z, E) float32
        GRE magnitude (a.u.) and wrapped phase (rad).
    t1w, flair, t1w_gd : (X, Y, Z) float32
        Structural images with bias field and Rician noise.
    field_total, field_local : (X, Y, Z) float32
        True total and local field, ppm.
    phase0 : (X, Y, Z) float32
        True phase offset at TE = 0, rad.
    noise_sigma : float
        GRE noise SD per channel.
    """

    magnitude: np.ndarray
    phase: np.ndarray
    t1w: np.ndarray
    flair: np.ndarray
    t1w_gd: np.ndarray
    field_total: np.ndarray
    field_local: np.ndarray
    phase0: np.ndarray
    noise_sigma: float


def _bias(shape, voxel_mm: float, rng, amplitude: float) -> np.ndarray:
    """Smooth positive multiplicative field, ``exp(amplitude * g)`` with g of unit RMS."""
    g = _smooth_field(shape, rng, 80.0 / voxel_mm, n=1)[0]
    return np.exp(amplitude * g).astype(np.float32)


def simulate_scan(phantom: Phantom, protocol: Protocol | None = None, seed: int = 0) -> Scan:
    """Acquire a phantom: multi-echo GRE (complex, noisy) plus T1w, FLAIR and post-Gd T1w.

    Parameters
    ----------
    phantom : Phantom
        Anatomy and tissue properties (:func:`qsmiron.simulate.phantom.make_phantom`).
    protocol : Protocol, optional
        Sequence parameters; the reference study's by default.
    seed : int
        Seed of the noise, phase offset and bias fields.

    Returns
    -------
    Scan
    """
    prot = protocol or Protocol()
    rng = np.random.default_rng(seed)
    vs = phantom.voxel_size
    brain = phantom.brain_mask

    b0_dir = b0_direction(phantom.affine) if prot.b0_dir is None else np.asarray(prot.b0_dir)
    chi_air = (phantom.chi - np.float32(CHI_AIR_REL_WATER_PPM)).astype(np.float32)
    total = forward_field(chi_air, vs, b0_dir)
    del chi_air
    local = forward_field(np.where(brain, phantom.chi, 0.0).astype(np.float32), vs, b0_dir)

    phase0 = smooth_phase_offset(phantom.labels.shape, vs, rng, amplitude_rad=prot.phase_offset_rad)
    coil = _bias(phantom.labels.shape, float(vs.mean()), rng, prot.bias_amplitude)
    m0 = phantom.m0 * coil
    te = np.asarray(prot.te, float)
    first = m0 * np.exp(-phantom.r2star * np.float32(te[0]))
    sigma = noise_sigma_for_snr(first, brain, prot.snr)
    del first
    signal = gre_signal(total, m0, phantom.r2star, te, b0=prot.b0, phase0=phase0,
                        noise_sigma=sigma, rng=rng)
    magnitude = np.abs(signal).astype(np.float32)
    phase = np.angle(signal).astype(np.float32)
    del signal

    structural = []
    bias_t1 = _bias(brain.shape, float(vs.mean()), rng, prot.bias_amplitude)
    bias_flair = _bias(brain.shape, float(vs.mean()), rng, prot.bias_amplitude)
    # pre- and post-contrast T1w come from the same coil set-up: same bias field
    for img, bias in ((phantom.t1w, bias_t1), (phantom.flair, bias_flair),
                      (phantom.t1w_gd, bias_t1)):
        biased = img * bias
        s = float(biased[brain].mean()) / prot.structural_snr
        structural.append(add_rician_noise(biased, s, rng).astype(np.float32))
    return Scan(
        magnitude=magnitude,
        phase=phase,
        t1w=structural[0],
        flair=structural[1],
        t1w_gd=structural[2],
        field_total=total,
        field_local=local,
        phase0=phase0.astype(np.float32),
        noise_sigma=float(sigma),
    )
