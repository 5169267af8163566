"""Label table of the head phantom and the physical properties of each tissue.

Every image the simulator makes is computed from these numbers through a signal equation, so
that contrast follows physics rather than hand-picked grey levels:

* susceptibility ``chi_ppm`` relative to CSF (= water), the QSM convention;
* proton density ``pd`` (water fraction, CSF = 1), longitudinal relaxation ``t1_s`` and transverse
  relaxation ``t2_s`` at 3 T, apparent transverse relaxation rate ``r2star_hz`` at 3 T;
* ``gd_mM``: gadolinium concentration after contrast (enhancing lesions, blood, choroid plexus).

Values are rounded literature figures for healthy adults at 3 T and MS lesions:

* Susceptibility: Deistung et al., NeuroImage 2013;65:299 and Li et al., NeuroImage 2011;55:1645
  (deep grey nuclei relative to CSF); Wharton & Bowtell, NeuroImage 2010;53:515 (white matter
  about -0.03 ppm); venous blood 0.45 ppm for Hct 0.4 and oxygenation 0.6 (Weisskoff & Kiihne,
  MRM 1992;24:375: 3.4 ppm x Hct x (1 - Y)); cortical bone about -2 ppm (Dimov et al., MRM
  2018;79:121); air +9.4 ppm (Schenck, Med Phys 1996;23:815); chronic MS lesions mildly
  paramagnetic, enhancing lesions iso (Chen et al., Radiology 2014;271:183).
* T1, T2: Wansapura et al., JMRI 1999;9:531; Stanisz et al., MRM 2005;54:507 (3 T);
  blood T1 1.65 s (Lu et al., MRM 2004;52:679).
* R2*: Peran et al., Brain 2007;130:1858 and Yao et al., NeuroImage 2009;44:1259 (3 T deep grey
  nuclei); venous blood about 45 1/s at 3 T (Zhao et al., MRM 2007;58:592).
* Gadolinium relaxivity r1 = 4 1/(s mM) at 3 T for gadobutrol-like agents (Rohrer et al., Invest
  Radiol 2005;40:715).

The thalamus susceptibility in this table is only the default; each simulated subject draws its
own. Its default is the reference study's relative susceptibility (thalamus minus CSF), mean
-0.029 ppm (Chiang et al., AJNR 2018;39:467).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

__all__ = [
    "GD_R1_PER_MM",
    "LABELS",
    "TISSUES",
    "Tissue",
    "label_lut",
    "label_table_tsv",
]

#: Longitudinal relaxivity of the gadolinium agent at 3 T, 1/(s mM).
GD_R1_PER_MM: float = 4.0


@dataclass(frozen=True)
class Tissue:
    """One label of the phantom with its physical properties.

    Attributes
    ----------
    label : int
        Integer value in the label map (``_dseg``).
    name : str
        BIDS-style name (no spaces).
    chi_ppm : float
        Volume susceptibility relative to CSF, ppm.
    pd : float
        Proton density, CSF = 1.
    t1_s, t2_s : float
        Relaxation times at 3 T, seconds.
    r2star_hz : float
        Apparent transverse relaxation rate at 3 T, 1/s.
    gd_mM : float
        Gadolinium concentration after contrast injection, mM.
    tissue_class : str
        "air", "extracranial", "csf", "gm", "wm", "vein", "lesion" or "other".
    """

    label: int
    name: str
    chi_ppm: float
    pd: float
    t1_s: float
    t2_s: float
    r2star_hz: float
    gd_mM: float
    tissue_class: str


# fmt: off
TISSUES: tuple[Tissue, ...] = (
    #      label name                       chi     pd    T1    T2     R2*   Gd    class
    Tissue(0,  "air",                        9.41,  0.00, 1.00, 0.001,  0.0, 0.00, "air"),
    Tissue(1,  "scalp",                      0.10,  0.80, 0.60, 0.050, 30.0, 0.05, "extracranial"),
    Tissue(2,  "skull",                     -2.00,  0.10, 0.30, 0.001, 400.0, 0.00, "extracranial"),
    Tissue(3,  "sinus-air",                  9.41,  0.00, 1.00, 0.001,  0.0, 0.00, "air"),
    Tissue(4,  "csf-extraventricular",       0.00,  1.00, 4.20, 1.800,  3.0, 0.00, "csf"),
    Tissue(5,  "cortical-gm",                0.010, 0.82, 1.40, 0.110, 17.0, 0.00, "gm"),
    Tissue(6,  "cerebral-wm",               -0.030, 0.70, 0.85, 0.080, 22.0, 0.00, "wm"),
    Tissue(7,  "lateral-ventricle-left",     0.00,  1.00, 4.20, 1.800,  3.0, 0.00, "csf"),
    Tissue(8,  "lateral-ventricle-right",    0.00,  1.00, 4.20, 1.800,  3.0, 0.00, "csf"),
    Tissue(9,  "atrium-left",                0.00,  1.00, 4.20, 1.800,  3.0, 0.00, "csf"),
    Tissue(10, "atrium-right",               0.00,  1.00, 4.20, 1.800,  3.0, 0.00, "csf"),
    Tissue(11, "third-ventricle",            0.00,  1.00, 4.20, 1.800,  3.0, 0.00, "csf"),
    Tissue(12, "fourth-ventricle",           0.00,  1.00, 4.20, 1.800,  3.0, 0.00, "csf"),
    Tissue(13, "thalamus-left",             -0.029, 0.78, 1.10, 0.080, 22.0, 0.00, "gm"),
    Tissue(14, "thalamus-right",            -0.029, 0.78, 1.10, 0.080, 22.0, 0.00, "gm"),
    Tissue(15, "caudate-left",               0.060, 0.80, 1.30, 0.090, 21.0, 0.00, "gm"),
    Tissue(16, "caudate-right",              0.060, 0.80, 1.30, 0.090, 21.0, 0.00, "gm"),
    Tissue(17, "putamen-left",               0.050, 0.80, 1.25, 0.080, 26.0, 0.00, "gm"),
    Tissue(18, "putamen-right",              0.050, 0.80, 1.25, 0.080, 26.0, 0.00, "gm"),
    Tissue(19, "globus-pallidus-left",       0.150, 0.75, 0.95, 0.065, 42.0, 0.00, "gm"),
    Tissue(20, "globus-pallidus-right",      0.150, 0.75, 0.95, 0.065, 42.0, 0.00, "gm"),
    Tissue(21, "red-nucleus-left",           0.110, 0.75, 0.95, 0.065, 33.0, 0.00, "gm"),
    Tissue(22, "red-nucleus-right",          0.110, 0.75, 0.95, 0.065, 33.0, 0.00, "gm"),
    Tissue(23, "substantia-nigra-left",      0.140, 0.75, 0.95, 0.060, 40.0, 0.00, "gm"),
    Tissue(24, "substantia-nigra-right",     0.140, 0.75, 0.95, 0.060, 40.0, 0.00, "gm"),
    Tissue(25, "dentate-left",               0.110, 0.75, 1.00, 0.065, 33.0, 0.00, "gm"),
    Tissue(26, "dentate-right",              0.110, 0.75, 1.00, 0.065, 33.0, 0.00, "gm"),
    Tissue(27, "cerebellar-gm",              0.005, 0.82, 1.40, 0.110, 17.0, 0.00, "gm"),
    Tissue(28, "cerebellar-wm",             -0.030, 0.70, 0.85, 0.080, 22.0, 0.00, "wm"),
    Tissue(29, "brainstem",                 -0.020, 0.72, 0.95, 0.080, 22.0, 0.00, "wm"),
    Tissue(30, "other-deep-gm",              0.005, 0.80, 1.30, 0.095, 18.0, 0.00, "gm"),
    Tissue(31, "internal-cerebral-vein",     0.450, 0.85, 1.65, 0.030, 45.0, 0.30, "vein"),
    Tissue(32, "basal-vein-of-rosenthal",    0.450, 0.85, 1.65, 0.030, 45.0, 0.30, "vein"),
    Tissue(33, "other-vein",                 0.450, 0.85, 1.65, 0.030, 45.0, 0.30, "vein"),
    Tissue(34, "choroid-plexus",             0.020, 0.85, 1.50, 0.150, 25.0, 0.30, "other"),
    Tissue(35, "wm-lesion",                  0.015, 0.85, 1.30, 0.200, 15.0, 0.00, "lesion"),
    Tissue(36, "wm-lesion-enhancing",        0.000, 0.88, 1.40, 0.220, 14.0, 0.35, "lesion"),
)
# fmt: on

#: label value -> name
LABELS: dict[int, str] = {t.label: t.name for t in TISSUES}

#: Label groups used throughout the simulator and its truth.
THALAMUS = (13, 14)
LATERAL_VENTRICLES = (7, 8, 9, 10)
ATRIA = (9, 10)
VENTRICLES = (7, 8, 9, 10, 11, 12)
CSF_LABELS = (4, 7, 8, 9, 10, 11, 12)
VEINS = (31, 32, 33)
LESIONS = (35, 36)
CEREBRAL_WM = 6
CORTEX = 5
#: Grey matter counted in "total grey-matter volume", as FreeSurfer's TotalGray: cortex,
#: subcortical grey nuclei and cerebellar cortex.
GM_LABELS = (5, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 30)
#: Everything that is brain parenchyma or intracranial CSF (the brain mask of the truth).
BRAIN_LABELS = tuple(t.label for t in TISSUES if t.tissue_class not in ("air", "extracranial"))


def label_lut(prop: str, overrides: dict[int, float] | None = None) -> np.ndarray:
    """Look-up table ``value[label]`` of one tissue property.

    Parameters
    ----------
    prop : str
        A :class:`Tissue` field name, e.g. ``"chi_ppm"``.
    overrides : dict, optional
        ``{label: value}`` replacing the table's value (e.g. a subject's thalamic chi).

    Returns
    -------
    (max_label + 1,) float32 array
    """
    names = {f.name for f in fields(Tissue)}
    if prop not in names:
        raise KeyError(f"unknown tissue property {prop!r}; choose from {sorted(names)}")
    lut = np.zeros(max(LABELS) + 1, dtype=np.float32)
    for t in TISSUES:
        lut[t.label] = getattr(t, prop)
    for k, v in (overrides or {}).items():
        lut[k] = v
    return lut


def label_table_tsv() -> str:
    """The BIDS ``_dseg.tsv`` label table (index, name, class, default chi in ppm)."""
    lines = ["index\tname\ttissue_class\tchi_ppm_default"]
    lines += [f"{t.label}\t{t.name}\t{t.tissue_class}\t{t.chi_ppm:g}" for t in TISSUES]
    return "\n".join(lines) + "\n"
