"""Synthetic MS cohorts whose covariates, imaging truth and effects are known.

A cohort is drawn subject by subject (each from its own seed, so adding subjects never changes
the earlier ones) in two layers:

1. **Table level** (:func:`draw_subject`, :func:`cohort_table`): covariates drawn like the
   reference cohort (Chiang et al., AJNR 2018;39:467: 95 patients with RRMS, age 42 +/- 10,
   two-thirds female, disease duration 8.9 +/- 7.8 years, 57/95 on therapy, 9/95 with enhancing
   lesions, EDSS 2.2 +/- 2.2) and imaging targets linked to them through user-settable effect
   sizes whose defaults are the paper's adjusted coefficients: relative thalamic susceptibility
   10.68 ppb higher with enhancing lesions (Table 2) and log T2 lesion volume rising 0.029 per
   ppb of relative susceptibility (Table 1); no association with thalamic volume, grey-matter
   volume or cortical thickness (Table 1, p >= .16). Marginal distributions match the paper's:
   relative susceptibility -29.0 +/- 11.7 ppb, lesion volume 11.0 +/- 15.8 mL (log-normal),
   thalamic volume 14.0 +/- 2.1 mL, grey matter 607 +/- 67 mL, cortical thickness 2.40 +/- 0.16 mm.
2. **Image level** (:func:`simulate_cohort`): each subject's targets become a head phantom and a
   simulated session written as a BIDS dataset, with the truth measured on the phantom written
   beside it. The phantom reaches the grey-matter target by thinning or thickening the cortex
   of its template, so the table's cortical thickness is not realised: the truth is the
   thickness of the phantom's own cortex label, measured by the Laplace method that
   :mod:`qsmiron.anatomy.thickness` validates on shells of known thickness (3-5 mm at 2 mm
   voxels: the template's cortex, smoother than a real one, holds the grey-matter volume in
   less area).

The log of lesion volume is the natural log of the volume in mL.
"""

from __future__ import annotations

import multiprocessing
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from qsmiron import __version__
from qsmiron.errors import InputError
from qsmiron.io.bids import write_bids_anat, write_dataset_description, write_megre_bids
from qsmiron.io.nifti import atomic_write_bytes, save_nifti, write_json, write_tsv
from qsmiron.recon.fft import default_workers, limit_threads
from qsmiron.simulate import tissues as T
from qsmiron.simulate.phantom import AnatomyParams, make_phantom
from qsmiron.simulate.scan import Protocol, simulate_scan

__all__ = ["Effects", "cohort_table", "draw_subject", "simulate_cohort", "subject_anatomy"]


@dataclass(frozen=True)
class Effects:
    """Effect sizes and marginal distributions of a simulated cohort.

    Attributes
    ----------
    rel_chi_mean_ppb, rel_chi_sd_ppb : float
        Mean and SD of relative thalamic susceptibility (thalamus minus CSF), ppb.
    chi_enhancing_ppb : float
        Difference in relative susceptibility with vs without enhancing lesions, ppb.
    chi_per_decade_age_ppb, chi_female_ppb, chi_therapy_ppb, chi_per_year_duration_ppb : float
        Other covariate effects on relative susceptibility (paper: not significant; default 0).
    log_lesion_per_chi_ppb : float
        Change of ln(T2 lesion volume / mL) per ppb of relative susceptibility.
    thalamus_ml_per_chi_ppb, gm_ml_per_chi_ppb, thickness_mm_per_chi_ppb : float
        Slopes of the other structural measures on relative susceptibility (default 0).
    lesion_volume_mean_ml, lesion_volume_sd_ml : float
        Marginal mean and SD of T2 lesion volume (log-normal).
    thalamus_volume_mean_ml, thalamus_volume_sd_ml : float
        Marginal mean and SD of total thalamic volume.
    gm_volume_mean_ml, gm_volume_sd_ml : float
        Marginal mean and SD of total grey-matter volume.
    thickness_mean_mm, thickness_sd_mm : float
        Marginal mean and SD of mean cortical thickness (table level only).
    p_enhancing : float
        Probability of having enhancing lesions.
    p_female, p_therapy : float
        Probabilities of female sex and disease-modifying therapy.
    age_mean, age_sd, age_min, age_max : float
        Age distribution (truncated normal), years.
    duration_mean, duration_sd : float
        Disease duration (gamma), years.
    edss_mean, edss_sd : float
        EDSS (gamma, rounded to 0.5, at most 9.5).
    """

    rel_chi_mean_ppb: float = -29.0
    rel_chi_sd_ppb: float = 11.7
    chi_enhancing_ppb: float = 10.68
    chi_per_decade_age_ppb: float = 0.0
    chi_female_ppb: float = 0.0
    chi_therapy_ppb: float = 0.0
    chi_per_year_duration_ppb: float = 0.0
    log_lesion_per_chi_ppb: float = 0.029
    thalamus_ml_per_chi_ppb: float = 0.0
    gm_ml_per_chi_ppb: float = 0.0
    thickness_mm_per_chi_ppb: float = 0.0
    lesion_volume_mean_ml: float = 11.0
    lesion_volume_sd_ml: float = 15.8
    thalamus_volume_mean_ml: float = 14.0
    thalamus_volume_sd_ml: float = 2.1
    gm_volume_mean_ml: float = 607.0
    gm_volume_sd_ml: float = 67.0
    thickness_mean_mm: float = 2.40
    thickness_sd_mm: float = 0.16
    p_enhancing: float = 9.0 / 95.0
    p_female: float = 2.0 / 3.0
    p_therapy: float = 57.0 / 95.0
    age_mean: float = 42.0
    age_sd: float = 10.0
    age_min: float = 25.0
    age_max: float = 71.0
    duration_mean: float = 8.9
    duration_sd: float = 7.8
    edss_mean: float = 2.2
    edss_sd: float = 2.2

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str | Path | None = None) -> Effects:
        """Build from a mapping (e.g. a TOML table), rejecting unknown names."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(
                f"unknown effect name(s) {unknown}; known: {sorted(known)}", source
            )
        try:
            return cls(**{k: float(v) for k, v in values.items()})
        except (TypeError, ValueError) as exc:
            raise InputError(f"effect values must be numbers ({exc})", source) from None


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream)]))


def _sd_resid(total_sd: float, explained_var: float) -> float:
    return float(np.sqrt(max(total_sd**2 - explained_var, 1e-12)))


def draw_subject(index: int, seed: int, effects: Effects | None = None) -> dict[str, Any]:
    """Draw one subject's covariates and imaging targets (table level).

    Parameters
    ----------
    index : int
        Subject index (0-based); the subject's ID is ``index + 1`` zero-padded to 3 digits.
    seed : int
        Cohort seed.
    effects : Effects, optional
        Effect sizes; the reference study's by default.

    Returns
    -------
    dict
        ``participant_id``, covariates (``age``, ``sex``, ``disease_duration``, ``therapy``,
        ``edss``, ``enhancing_lesions``) and true imaging measures (``rel_chi_ppb``,
        ``t2_lesion_volume_ml``, ``thalamus_volume_ml``, ``total_gm_volume_ml``,
        ``cortical_thickness_mm``, ``lesion_count``, ``enhancing_lesion_count``).
    """
    e = effects or Effects()
    rng = _rng(seed, index, 0)
    age = rng.normal(e.age_mean, e.age_sd)
    while not e.age_min <= age <= e.age_max:
        age = rng.normal(e.age_mean, e.age_sd)
    female = bool(rng.random() < e.p_female)
    k = (e.duration_mean / e.duration_sd) ** 2
    duration = float(min(rng.gamma(k, e.duration_mean / k), age - 16.0))
    therapy = bool(rng.random() < e.p_therapy)
    ke = (e.edss_mean / e.edss_sd) ** 2
    edss = float(min(np.round(rng.gamma(ke, e.edss_mean / ke) * 2.0) / 2.0, 9.5))
    enhancing = bool(rng.random() < e.p_enhancing)

    # Relative thalamic susceptibility: covariate effects (centred) plus residual.
    p = e.p_enhancing
    explained = (e.chi_enhancing_ppb**2 * p * (1 - p)
                 + (e.chi_per_decade_age_ppb * e.age_sd / 10.0) ** 2
                 + e.chi_female_ppb**2 * e.p_female * (1 - e.p_female)
                 + e.chi_therapy_ppb**2 * e.p_therapy * (1 - e.p_therapy)
                 + (e.chi_per_year_duration_ppb * e.duration_sd) ** 2)
    rel_chi = (e.rel_chi_mean_ppb
               + e.chi_enhancing_ppb * (enhancing - p)
               + e.chi_per_decade_age_ppb * (age - e.age_mean) / 10.0
               + e.chi_female_ppb * (female - e.p_female)
               + e.chi_therapy_ppb * (therapy - e.p_therapy)
               + e.chi_per_year_duration_ppb * (duration - e.duration_mean)
               + rng.normal(0.0, _sd_resid(e.rel_chi_sd_ppb, explained)))
    dchi = rel_chi - e.rel_chi_mean_ppb

    # Lesion volume: log-normal with the paper's mean and SD; ln(volume) rises with chi.
    s2 = np.log(1.0 + (e.lesion_volume_sd_ml / e.lesion_volume_mean_ml) ** 2)
    mu = np.log(e.lesion_volume_mean_ml) - s2 / 2.0
    b = e.log_lesion_per_chi_ppb
    log_lv = mu + b * dchi + rng.normal(0.0, _sd_resid(np.sqrt(s2), (b * e.rel_chi_sd_ppb) ** 2))
    lesion_ml = float(np.clip(np.exp(log_lv), 0.05, 150.0))

    def linked(mean, sd, slope, lo, hi):
        v = mean + slope * dchi + rng.normal(0.0, _sd_resid(sd, (slope * e.rel_chi_sd_ppb) ** 2))
        return float(np.clip(v, lo, hi))

    thal = linked(e.thalamus_volume_mean_ml, e.thalamus_volume_sd_ml, e.thalamus_ml_per_chi_ppb,
                  8.0, 19.0)
    gm = linked(e.gm_volume_mean_ml, e.gm_volume_sd_ml, e.gm_ml_per_chi_ppb, 420.0, 780.0)
    thick = linked(e.thickness_mean_mm, e.thickness_sd_mm, e.thickness_mm_per_chi_ppb, 1.8, 3.0)

    # Lesion count grows with load (about 8 lesions at 11 mL); enhancing count given presence.
    n_les = int(np.clip(rng.poisson(2.5 * np.sqrt(lesion_ml)), 1, 40))
    n_enh = int(min(1 + rng.poisson(0.7), n_les)) if enhancing else 0
    return {
        "participant_id": f"sub-{index + 1:03d}",
        "age": round(float(age), 1),
        "sex": "F" if female else "M",
        "disease_duration": round(max(duration, 0.0), 1),
        "therapy": "yes" if therapy else "no",
        "edss": edss,
        "enhancing_lesions": "yes" if enhancing else "no",
        "rel_chi_ppb": float(rel_chi),
        "t2_lesion_volume_ml": lesion_ml,
        "thalamus_volume_ml": thal,
        "total_gm_volume_ml": gm,
        "cortical_thickness_mm": thick,
        "lesion_count": n_les,
        "enhancing_lesion_count": n_enh,
    }


def cohort_table(n: int, seed: int = 0, effects: Effects | None = None) -> pd.DataFrame:
    """A table-level cohort of ``n`` subjects (no images), e.g. to test the statistics.

    Examples
    --------
    >>> df = cohort_table(95, seed=1)
    >>> len(df), sorted(df["sex"].unique())
    (95, ['F', 'M'])
    """
    if n < 1:
        raise InputError(f"the number of subjects must be at least 1, found {n}")
    return pd.DataFrame([draw_subject(i, seed, effects) for i in range(n)])


def subject_anatomy(row: dict[str, Any], index: int, seed: int) -> AnatomyParams:
    """Phantom parameters realising a subject's targets, with random head pose and shape."""
    rng = _rng(seed, index, 1)
    rel = float(row["rel_chi_ppb"]) / 1000.0
    asym = rng.normal(0.0, 0.002)
    return AnatomyParams(
        head_scale=float(np.clip(rng.normal(0.92, 0.025), 0.85, 0.99)),
        rotation_deg=(float(rng.normal(0, 4.0)), float(rng.normal(0, 2.0)),
                      float(rng.normal(0, 2.0))),
        translation_mm=tuple(float(v) for v in rng.normal(0.0, 2.0, 3)),
        thalamus_chi_ppm=(rel + asym / 2.0, rel - asym / 2.0),
        thalamus_volume_ml=float(row["thalamus_volume_ml"]),
        thalamus_left_fraction=float(np.clip(rng.normal(0.5, 0.01), 0.45, 0.55)),
        gm_volume_ml=float(row["total_gm_volume_ml"]),
        lesion_volume_ml=float(row["t2_lesion_volume_ml"]),
        lesion_count=int(row["lesion_count"]),
        enhancing_count=int(row["enhancing_lesion_count"]),
    )


_PARTICIPANT_COLUMNS = ["participant_id", "age", "sex", "disease_duration", "therapy", "edss"]
_PARTICIPANTS_JSON = {
    "age": {"Description": "age at scan", "Units": "year"},
    "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
    "disease_duration": {"Description": "years since MS onset", "Units": "year"},
    "therapy": {"Description": "on disease-modifying therapy", "Levels": {"yes": "", "no": ""}},
    "edss": {"Description": "Expanded Disability Status Scale (Kurtzke)"},
}


#: Labels on the outer (CSF) side of the cerebral cortex, besides the cortex itself: outside
#: the brain, extraventricular CSF and the cerebellum (its own cortex is not measured).
_OUTSIDE_CEREBRUM = (0, 1, 2, 3, 4, 25, 26, 27, 28)


def _cortical_thickness_mm(labels: np.ndarray, voxel_size: np.ndarray) -> float:
    """Mean thickness of the phantom's cerebral cortex label (Laplace, area-weighted), mm."""
    from qsmiron.anatomy.thickness import cortical_thickness

    cortex = labels == T.CORTEX
    inner = ~cortex & ~np.isin(labels, _OUTSIDE_CEREBRUM)
    return float(cortical_thickness(cortex, inner, tuple(voxel_size)).surface_mean_mm)


def _simulate_subject(bids: Path, truth_dir: Path, i: int, seed: int, eff: Effects,
                      prot: Protocol, vs: np.ndarray,
                      slab_rotation_deg: tuple[float, float, float]) -> dict[str, Any]:
    """Simulate subject ``i`` of the cohort, write its BIDS and truth files, return its row
    of ``truth.tsv``. Depends only on its arguments (the subject's seeds derive from ``seed``
    and ``i``), so subjects may run in any order or process.

    BLAS runs single-threaded here: a multi-threaded matrix product rounds differently with
    the number of threads, and the files must not depend on the cores or on ``workers``.
    """
    with threadpool_limits(1, user_api="blas"):
        return _simulate_subject_files(bids, truth_dir, i, seed, eff, prot, vs,
                                       slab_rotation_deg)


def _simulate_subject_files(bids: Path, truth_dir: Path, i: int, seed: int, eff: Effects,
                            prot: Protocol, vs: np.ndarray,
                            slab_rotation_deg: tuple[float, float, float]) -> dict[str, Any]:
    """:func:`_simulate_subject`'s work, under its thread limit."""
    row = draw_subject(i, seed, eff)
    sub = row["participant_id"][4:]
    params = subject_anatomy(row, i, seed)
    ph = make_phantom(params, voxel_size=tuple(vs), seed=int(_rng(seed, i, 2).integers(2**31)),
                      slab_rotation_deg=slab_rotation_deg)
    scan = simulate_scan(ph, prot, seed=int(_rng(seed, i, 3).integers(2**31)))
    common = {"MagneticFieldStrength": prot.b0, "Manufacturer": "qsmiron simulator"}
    write_megre_bids(
        bids, sub, scan.magnitude, scan.phase, prot.te, ph.affine, b0=prot.b0,
        sidecar={"Manufacturer": "qsmiron simulator", "RepetitionTime": prot.tr,
                 "FlipAngle": prot.flip_deg},
    )
    write_bids_anat(bids, sub, "T1w", scan.t1w, ph.affine, sidecar=common)
    write_bids_anat(bids, sub, "FLAIR", scan.flair, ph.affine, sidecar=common)
    write_bids_anat(bids, sub, "T1w", scan.t1w_gd, ph.affine, entities={"ce": "gadolinium"},
                    sidecar={**common, "ContrastBolusIngredient": "GADOLINIUM"})
    tdir = truth_dir / f"sub-{sub}"
    save_nifti(tdir / f"sub-{sub}_dseg.nii.gz", ph.labels, ph.affine, dtype=np.int16)
    atomic_write_bytes(tdir / f"sub-{sub}_dseg.tsv", T.label_table_tsv().encode())
    save_nifti(tdir / f"sub-{sub}_Chimap.nii.gz", ph.chi, ph.affine,
               sidecar={"Units": "ppm", "Reference": "CSF (chi_csf = 0); air = +9.41 ppm"})
    save_nifti(tdir / f"sub-{sub}_desc-lesions_mask.nii.gz", ph.lesions, ph.affine,
               dtype=np.int16)
    save_nifti(tdir / f"sub-{sub}_desc-total_fieldmap.nii.gz", scan.field_total, ph.affine,
               sidecar={"Units": "ppm", "Description": "total field dB/B0"})
    save_nifti(tdir / f"sub-{sub}_desc-local_fieldmap.nii.gz", scan.field_local, ph.affine,
               sidecar={"Units": "ppm",
                        "Description": "field of the sources inside the brain mask"})
    thickness = _cortical_thickness_mm(ph.labels, vs)
    truth = {
        "participant_id": row["participant_id"],
        "targets": row,
        "anatomy": asdict(params),
        **ph.truth,
        "cortical_thickness_mm": thickness,
        "noise_sigma": scan.noise_sigma,
        "echo_times_s": list(prot.te),
        "voxel_size_mm": list(vs),
        "slab_rotation_deg": list(slab_rotation_deg),
    }
    write_json(tdir / f"sub-{sub}_truth.json", truth, add_version=True)
    return {
        **{k: row[k] for k in _PARTICIPANT_COLUMNS},
        "enhancing_lesions": "yes" if ph.truth["enhancing_lesion_count"] else "no",
        "rel_chi_ppb": ph.truth["rel_chi_ppb"],
        "thalamus_chi_ppb": 1000.0 * ph.truth["thalamus_chi_ppm"],
        "csf_ref_chi_ppb": 1000.0 * ph.truth["csf_ref_chi_ppm"],
        "thalamus_volume_ml": ph.truth["thalamus_volume_ml"],
        "thalamus_left_volume_ml": ph.truth["thalamus_left_volume_ml"],
        "thalamus_right_volume_ml": ph.truth["thalamus_right_volume_ml"],
        "total_gm_volume_ml": ph.truth["total_gm_volume_ml"],
        "cortical_thickness_mm": thickness,
        "t2_lesion_volume_ml": ph.truth["t2_lesion_volume_ml"],
        "lesion_count": ph.truth["lesion_count"],
        "enhancing_lesion_count": ph.truth["enhancing_lesion_count"],
    }


def simulate_cohort(
    out_dir: str | Path,
    n_subjects: int,
    seed: int = 0,
    voxel_size: float | tuple[float, float, float] = 2.0,
    effects: Effects | None = None,
    protocol: Protocol | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    overwrite: bool = False,
    slab_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    workers: int = 1,
) -> Path:
    """Simulate a cohort and write it as a BIDS dataset with a separate truth folder.

    Layout::

        OUT/bids/dataset_description.json, participants.tsv, participants.json
        OUT/bids/sub-001/anat/sub-001_echo-<n>_part-{mag,phase}_MEGRE.nii.gz (+ .json)
        OUT/bids/sub-001/anat/sub-001_T1w.nii.gz, _FLAIR.nii.gz, _ce-gadolinium_T1w.nii.gz
        OUT/truth/truth.tsv                       all subjects' true measures and covariates
        OUT/truth/dseg.tsv                        label table
        OUT/truth/sub-001/sub-001_dseg.nii.gz     label map
        OUT/truth/sub-001/sub-001_Chimap.nii.gz   susceptibility, ppm relative to CSF
        OUT/truth/sub-001/sub-001_desc-lesions_mask.nii.gz   lesion instances (1..n)
        OUT/truth/sub-001/sub-001_desc-{total,local}_fieldmap.nii.gz   field, ppm
        OUT/truth/sub-001/sub-001_truth.json      true measures

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created).
    n_subjects : int
        Number of subjects.
    seed : int
        Cohort seed; the same seed gives byte-identical files.
    voxel_size : float or 3-tuple
        Voxel size, mm (e.g. 2, or the study's anisotropic (0.5, 0.5, 2)).
    effects : Effects, optional
        Cohort effects and distributions.
    protocol : Protocol, optional
        Acquisition parameters.
    progress : callable, optional
        Called as ``progress(done, total, participant_id)`` after each subject.
    overwrite : bool
        Replace an existing ``bids``/``truth`` folder; otherwise refuse to write into one.
    slab_rotation_deg : 3-tuple
        Oblique acquisition: rotation of the imaging grid about the scanner axes, degrees.
    workers : int
        Subjects simulated at once, each in its own process with an even share of the cores
        (1: one after the other in this process). The files are the same either way. The
        processes are spawned: a script that asks for more than one must guard its entry
        point with ``if __name__ == "__main__":``, as for any use of multiprocessing.

    Returns
    -------
    Path
        The BIDS dataset folder.
    """
    if int(n_subjects) < 1:
        raise InputError(f"the number of subjects must be at least 1, found {n_subjects}")
    out = Path(out_dir)
    bids, truth_dir = out / "bids", out / "truth"
    for d in (bids, truth_dir):
        if d.exists() and any(d.iterdir()):
            if not overwrite:
                raise InputError("output folder is not empty; choose another or overwrite", d)
            shutil.rmtree(d)
    prot = protocol or Protocol()
    eff = effects or Effects()
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,))
    if np.any(vs <= 0) or np.any(vs > 4):
        raise InputError(f"voxel size must be in (0, 4] mm, found {tuple(vs)}")
    vs_txt = "x".join(f"{v:g}" for v in vs)
    write_dataset_description(
        bids, "qsmiron simulated MS cohort", dataset_type="raw",
        generated_by=[{"Name": "qsmiron simulate", "Version": __version__,
                       "Description": f"seed={seed}, voxel_size={vs_txt} mm"}],
    )
    args = [(bids, truth_dir, i, seed, eff, prot, vs, tuple(slab_rotation_deg))
            for i in range(n_subjects)]
    rows: list[dict[str, Any]] = [{} for _ in range(n_subjects)]
    workers = max(1, min(int(workers or 1), n_subjects))
    if workers == 1:
        for i, a in enumerate(args):
            rows[i] = _simulate_subject(*a)
            if progress is not None:
                progress(i + 1, n_subjects, rows[i]["participant_id"])
    else:
        # processes, not threads (the simulation holds the GIL in NumPy glue); spawned, so no
        # thread pool of this process is forked mid-state; each with an even share of cores
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, default_workers() // workers)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=limit_threads,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_simulate_subject, *a): i for i, a in enumerate(args)}
            try:
                for done, fut in enumerate(as_completed(futures), start=1):
                    i = futures[fut]
                    rows[i] = fut.result()
                    if progress is not None:
                        progress(done, n_subjects, rows[i]["participant_id"])
            except BaseException:
                # a failed subject (or Ctrl-C) stops the run as it does serially: the subjects
                # not yet started are dropped instead of simulated before the error is shown
                pool.shutdown(cancel_futures=True)
                raise
    table = pd.DataFrame(rows)
    write_tsv(bids / "participants.tsv", table[_PARTICIPANT_COLUMNS])
    write_json(bids / "participants.json", _PARTICIPANTS_JSON)
    write_tsv(truth_dir / "truth.tsv", table)
    atomic_write_bytes(truth_dir / "dseg.tsv", T.label_table_tsv().encode())
    write_json(truth_dir / "effects.json", {**asdict(eff), "seed": seed,
                                            "voxel_size_mm": list(vs),
                                            "protocol": asdict(prot)}, add_version=True)
    return bids
