"""Steady-state signal equations that turn tissue properties into image contrast.

Each function takes arrays (or look-up tables) of proton density and relaxation times and
returns the noise-free signal in arbitrary units, so the simulator's images follow the physics of
the reference study's sequences (3 T; Chiang et al., AJNR 2018;39:467):

* multi-echo spoiled GRE (TR 57 ms, flip 20 degrees): :func:`spgr`;
* 3D T1-weighted inversion-prepared SPGR, before and after gadolinium: :func:`ir_prepared_t1w`;
* 3D T2 FLAIR: :func:`flair`.
"""

from __future__ import annotations

import numpy as np

from qsmiron.simulate.tissues import GD_R1_PER_MM

__all__ = ["flair", "ir_prepared_t1w", "spgr", "t1_with_gadolinium"]


def spgr(
    pd: np.ndarray, t1_s: np.ndarray, tr_s: float = 0.057, flip_deg: float = 20.0
) -> np.ndarray:
    """Spoiled gradient-echo steady-state signal at TE = 0 (Ernst equation).

    ``S = PD sin(a) (1 - E1) / (1 - cos(a) E1)``, ``E1 = exp(-TR/T1)``.

    Parameters
    ----------
    pd : array
        Proton density.
    t1_s : array
        T1 in seconds.
    tr_s : float
        Repetition time, s (study: 57 ms).
    flip_deg : float
        Flip angle, degrees (study: 20).

    Returns
    -------
    array
        Signal, same shape as the inputs.

    References
    ----------
    Ernst RR, Anderson WA. Rev Sci Instrum 1966;37:93.
    """
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr_s / np.maximum(t1_s, 1e-6))
    return (pd * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1)).astype(np.float32)


def ir_prepared_t1w(
    pd: np.ndarray,
    t1_s: np.ndarray,
    ti_s: float = 0.9,
    tr_s: float = 2.3,
    r2star_hz: np.ndarray | None = None,
    te_s: float = 0.003,
) -> np.ndarray:
    """Inversion-prepared T1-weighted signal (MPRAGE / IR-SPGR, magnitude).

    Uses the simple inversion-recovery form ``|1 - 2 E_TI / (1 + E_TR)|`` of a readout that
    samples the centre of k-space at TI, which gives the familiar WM > GM > CSF contrast,
    times the gradient echo's decay ``exp(-TE R2*)`` when ``r2star_hz`` is given. The echo
    time of a 3D IR-SPGR / MPRAGE is about 3 ms: brain tissue (R2* 15-45 /s) keeps 87-96 % of
    its signal, the simulator's cortical bone (R2* 400 /s; more on real bone) 30 %, so with its
    low proton density the skull is dark as on a real scan, not at the grey-matter level.

    Parameters
    ----------
    pd, t1_s : array
        Proton density and T1 (s).
    ti_s, tr_s : float
        Inversion time and repetition time of the inversion, s.
    r2star_hz : array, optional
        Apparent transverse relaxation rate, 1/s. Without it, no decay.
    te_s : float
        Echo time of the readout, s.

    Returns
    -------
    array
        Signal magnitude.

    References
    ----------
    Mugler JP, Brookeman JR. MRM 1990;15:152.
    """
    t1 = np.maximum(t1_s, 1e-6)
    s = np.abs(1.0 - 2.0 * np.exp(-ti_s / t1) / (1.0 + np.exp(-tr_s / t1)))
    if r2star_hz is not None:
        s = s * np.exp(-te_s * np.asarray(r2star_hz))
    return (pd * s).astype(np.float32)


def flair(
    pd: np.ndarray,
    t1_s: np.ndarray,
    t2_s: np.ndarray,
    tr_s: float = 5.0,
    te_s: float = 0.125,
    ti_s: float | None = None,
    t1_csf_s: float = 4.2,
) -> np.ndarray:
    """Fluid-attenuated inversion-recovery signal (magnitude).

    ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)`` with, by default, TI chosen to null
    CSF: ``TI = T1_csf ln(2 / (1 + exp(-TR/T1_csf)))``.

    Parameters
    ----------
    pd, t1_s, t2_s : array
        Proton density, T1 and T2 (s).
    tr_s, te_s : float
        Repetition and effective echo time, s.
    ti_s : float, optional
        Inversion time; default nulls CSF.
    t1_csf_s : float
        T1 of CSF used to choose TI.

    Returns
    -------
    array
        Signal magnitude.

    References
    ----------
    Hajnal JV et al. J Comput Assist Tomogr 1992;16:841.
    """
    if ti_s is None:
        ti_s = t1_csf_s * np.log(2.0 / (1.0 + np.exp(-tr_s / t1_csf_s)))
    t1 = np.maximum(t1_s, 1e-6)
    s = 1.0 - 2.0 * np.exp(-ti_s / t1) + np.exp(-tr_s / t1)
    return (pd * np.abs(s) * np.exp(-te_s / np.maximum(t2_s, 1e-6))).astype(np.float32)


def t1_with_gadolinium(t1_s: np.ndarray, gd_mM: np.ndarray) -> np.ndarray:
    """T1 shortened by a gadolinium concentration: ``1/T1 = 1/T1_0 + r1 [Gd]``."""
    return (1.0 / (1.0 / np.maximum(t1_s, 1e-6) + GD_R1_PER_MM * gd_mM)).astype(np.float32)
