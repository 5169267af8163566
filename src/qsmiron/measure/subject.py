"""One subject from scanner files to one row of measures: recon -> anatomy -> record.

:func:`measure_subject` runs the per-subject chain of a cohort (the same steps as
``qsmiron recon`` then ``qsmiron anatomy``) and returns the subject's record: every measure of
the study with its unit in the name, the QC flags and the time spent per stage.
:data:`MEASURES` is the data dictionary of those columns; the cohort table
(``measures.tsv``) and its JSON sidecar are built from it.

Example
-------
>>> from qsmiron.measure.subject import MEASURES
>>> MEASURES["rel_chi_ppb"]["Units"]
'ppb'
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qsmiron import __version__
from qsmiron.anatomy.pipeline import SIGN_CONVENTION, AnatomyParams
from qsmiron.recon.pipeline import ReconParams

__all__ = ["MEASURES", "STAGES", "SubjectParams", "measure_subject", "subject_record"]

log = logging.getLogger(__name__)

#: The stages of one subject, in order (the name a failure is recorded under).
STAGES = ("read", "recon", "anatomy", "measure")

_PPB = "ppb"

#: Data dictionary of the cohort table (BIDS-style column descriptions).
MEASURES: dict[str, dict[str, str]] = {
    "participant_id": {"Description": "participant label (sub-<label>)"},
    "session_id": {"Description": "session label (ses-<label>); empty without sessions"},
    "status": {"Description": "outcome of the subject's run",
               "Levels": {"ok": "all stages finished", "failed": "a stage failed; see error"}},
    "thalamus_chi_ppb": {
        "Description": "mean susceptibility of both thalami, veins and one-voxel vein/CSF "
                       "rims excluded, on the QSM's own (MEDI+0, CSF) reference",
        "Units": _PPB},
    "thalamus_left_chi_ppb": {"Description": "as thalamus_chi_ppb, left thalamus",
                              "Units": _PPB},
    "thalamus_right_chi_ppb": {"Description": "as thalamus_chi_ppb, right thalamus",
                               "Units": _PPB},
    "csf_ref_chi_ppb": {"Description": "mean susceptibility of the CSF reference ROIs in the "
                                       "atria of both lateral ventricles", "Units": _PPB},
    "rel_chi_ppb": {"Description": "relative thalamic susceptibility: thalamus minus CSF "
                                   "reference (" + SIGN_CONVENTION + ")", "Units": _PPB},
    "rel_chi_left_ppb": {"Description": "left thalamus minus CSF reference", "Units": _PPB},
    "rel_chi_right_ppb": {"Description": "right thalamus minus CSF reference", "Units": _PPB},
    "thalamus_with_veins_chi_ppb": {
        "Description": "mean thalamic susceptibility without excluding veins (shows the vein "
                       "bias)", "Units": _PPB},
    "caudate_rel_chi_ppb": {"Description": "caudate (both sides) minus CSF reference",
                            "Units": _PPB},
    "putamen_rel_chi_ppb": {"Description": "putamen (both sides) minus CSF reference",
                            "Units": _PPB},
    "pallidum_rel_chi_ppb": {"Description": "globus pallidus (both sides) minus CSF reference",
                             "Units": _PPB},
    "thalamus_volume_ml": {"Description": "left + right thalamus volume (T1w segmentation)",
                           "Units": "mL"},
    "thalamus_left_volume_ml": {"Description": "left thalamus volume", "Units": "mL"},
    "thalamus_right_volume_ml": {"Description": "right thalamus volume", "Units": "mL"},
    "total_gm_volume_ml": {"Description": "total grey-matter volume (cortex + deep grey, "
                                          "partial-volume corrected)", "Units": "mL"},
    "brain_volume_ml": {"Description": "brain volume (grey + white matter + lesions)",
                        "Units": "mL"},
    "cortical_thickness_mm": {"Description": "mean cortical thickness; empty when no source "
                                             "provides it", "Units": "mm"},
    "t2_lesion_volume_ml": {"Description": "T2 (FLAIR) lesion volume (automatic segmentation: "
                                           "partial-volume estimate; a given mask: as drawn)",
                            "Units": "mL"},
    "t2_lesion_mask_volume_ml": {"Description": "volume of the binary lesion mask",
                                 "Units": "mL"},
    "lesion_count": {"Description": "number of T2 lesions (connected components)"},
    "lesion_count_periventricular": {
        "Description": "T2 lesions touching a lateral ventricle (MAGNIMS location; see "
                       "the subject's _lesions.tsv); empty without anatomical labels"},
    "lesion_count_juxtacortical": {
        "Description": "T2 lesions touching the cortex, not periventricular (cortical or "
                       "juxtacortical)"},
    "lesion_count_infratentorial": {
        "Description": "T2 lesions mostly in the brainstem or cerebellum"},
    "enhancing_lesion_count": {"Description": "number of gadolinium-enhancing lesions"},
    "enhancing_lesions": {"Description": "any gadolinium-enhancing lesion",
                          "Levels": {"yes": "at least one", "no": "none"}},
    "vein_fraction_excluded": {"Description": "fraction of the thalamus left out as veins",
                               "Units": "1"},
    "csf_rim_fraction_excluded": {"Description": "fraction of the thalamus left out as CSF "
                                                 "partial-volume rim", "Units": "1"},
    "thalamus_outside_qsm_fraction": {
        "Description": "fraction of the thalamus outside the valid QSM region (not measured; "
                       "flagged thalamus_outside_qsm above 0.05)", "Units": "1"},
    "csf_ref_volume_mm3": {"Description": "volume of the CSF reference ROIs", "Units": "mm^3"},
    "qc_flags": {"Description": "QC flags, ';'-separated (see docs/anatomy.md); empty if none"},
    "error": {"Description": "error message of a failed subject"},
    "stage": {"Description": "stage a failed subject stopped in (read, recon, anatomy, "
                             "measure)"},
    "input_hash": {"Description": "SHA-256 of the subject's input files, the parameters and "
                                  "the qsmiron version (the resume key)"},
    "seconds": {"Description": "wall time of the subject's run", "Units": "s"},
}

#: Columns of the anatomy measures copied into the record.
_FROM_ANATOMY = [k for k in MEASURES if k not in {
    "participant_id", "session_id", "status", "enhancing_lesions", "qc_flags", "error",
    "stage", "input_hash", "seconds"}]


@dataclass(frozen=True)
class SubjectParams:
    """Everything that decides a subject's results (part of its resume key).

    Attributes
    ----------
    recon : ReconParams
        QSM reconstruction.
    anatomy : AnatomyParams
        Segmentation, ROIs and measures.
    gd_entity : str
        ``ce-`` label of the post-contrast T1w.
    """

    recon: ReconParams = field(default_factory=ReconParams)
    anatomy: AnatomyParams = field(default_factory=AnatomyParams)
    gd_entity: str = "gadolinium"

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form (for hashing and provenance)."""
        return {"recon": asdict(self.recon), "anatomy": asdict(self.anatomy),
                "gd_entity": self.gd_entity}


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def subject_record(
    subject: str,
    session: str | None,
    anatomy_measures: dict[str, Any],
    flags: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """A subject's row of the cohort table from the anatomy stage's measures.

    Parameters
    ----------
    subject, session : str
        Labels (with or without ``sub-``/``ses-``).
    anatomy_measures : dict
        :attr:`qsmiron.anatomy.pipeline.AnatomyResult.measures`.
    flags : sequence of str
        QC flags of all stages.

    Returns
    -------
    dict
        Keys of :data:`MEASURES` (``status`` ``ok``); NaN measures become None (JSON null,
        an empty cell in the table).
    """
    sub = subject.removeprefix("sub-")
    ses = session.removeprefix("ses-") if session else None
    row: dict[str, Any] = {"participant_id": f"sub-{sub}",
                           "session_id": f"ses-{ses}" if ses else None, "status": "ok"}
    for key in _FROM_ANATOMY:
        row[key] = _finite_or_none(anatomy_measures.get(key))
    n_enh = row.get("enhancing_lesion_count")
    row["enhancing_lesions"] = None if n_enh is None else ("yes" if n_enh > 0 else "no")
    row["qc_flags"] = ";".join(dict.fromkeys(flags))
    row["error"] = None
    row["stage"] = None
    return row


def measure_subject(
    bids_dir: str | Path,
    deriv_dir: str | Path,
    subject: str,
    session: str | None = None,
    params: SubjectParams | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one subject through reconstruction, anatomy and measurement.

    Writes the ``qsmiron recon`` and ``qsmiron anatomy`` derivatives under
    ``DERIV_DIR/qsmiron/sub-X[/ses-Y]/`` and returns the subject's record.

    Parameters
    ----------
    bids_dir : str or Path
        BIDS dataset (multi-echo GRE, T1w, FLAIR, optional post-Gd T1w).
    deriv_dir : str or Path
        Derivatives folder (``qsmiron/`` is created inside).
    subject, session : str
        Labels.
    params : SubjectParams, optional
        Parameters; the reference study's chain by default.
    progress : callable, optional
        Called with each stage name of :data:`STAGES` as it starts (and with the recon and
        anatomy sub-stages as ``"recon: <name>"``, ``"anatomy: <name>"``).

    Returns
    -------
    dict
        :func:`subject_record` plus ``seconds`` (total) and ``stage_seconds``.

    Raises
    ------
    QsmironError
        Bad input; the caller records the stage reached through ``progress``.
    """
    from qsmiron.anatomy.pipeline import (
        load_anatomy_inputs,
        run_anatomy,
        write_anatomy_derivatives,
    )
    from qsmiron.io.bids import read_megre_bids
    from qsmiron.recon.pipeline import reconstruct, write_recon_derivatives

    p = params or SubjectParams()
    sub = subject.removeprefix("sub-")
    ses = session.removeprefix("ses-") if session else None
    say = progress or (lambda _s: None)
    seconds: dict[str, float] = {}
    t0 = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[name] = round(now - t, 3)
        t = now

    say("read")
    log.info("sub-%s%s: reading the multi-echo GRE", sub, f" ses-{ses}" if ses else "")
    gre = read_megre_bids(bids_dir, sub, session=ses)
    lap("read")

    say("recon")
    recon = reconstruct(gre, p.recon, progress=lambda s: say(f"recon: {s}"))
    write_recon_derivatives(recon, deriv_dir, sub, gre.affine, session=ses, sources=gre.sources)
    log.info("recon done in %.1f s (%s)", time.perf_counter() - t,
             ", ".join(f"{k} {v:.1f} s" for k, v in recon.seconds.items()))
    del recon
    lap("recon")

    say("anatomy")
    inputs = load_anatomy_inputs(bids_dir, deriv_dir, sub, ses, gd_entity=p.gd_entity)
    with tempfile.TemporaryDirectory(prefix="qsmiron-anat-") as work:
        result = run_anatomy(inputs, work, p.anatomy,
                             progress=lambda s: say(f"anatomy: {s}"))
        write_anatomy_derivatives(result, inputs, deriv_dir, sub, ses)
    log.info("anatomy done in %.1f s (%s)", time.perf_counter() - t,
             ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    lap("anatomy")

    say("measure")
    record = subject_record(sub, ses, result.measures, result.flags)
    lap("measure")
    record["seconds"] = round(time.perf_counter() - t0, 3)
    record["stage_seconds"] = seconds
    record["sign_convention"] = SIGN_CONVENTION
    record["qsmiron_version"] = __version__
    record["params"] = p.as_dict()
    return record
