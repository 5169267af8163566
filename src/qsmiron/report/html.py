"""The study's HTML report: one cohort page and one QC page per subject.

:func:`write_report` turns the statistics (``REPORT_DIR/stats.json``, written by
:func:`qsmiron.stats.tables.run_stats`) and the cohort table into ``REPORT_DIR/report.html``:
the cohort description, the paper's Tables 1 and 2 (unadjusted and adjusted side by side), the
sensitivity-analysis tables, Tukey's ladder of powers with its quantile-normal grids, scatter
plots with fits, the power statement, notes, provenance and one row per subject linking to the
subject's QC page. :func:`write_subject_pages` writes those pages
(``REPORT_DIR/subjects/sub-X[_ses-Y].html``) from the anatomy stage's derivatives: the QC
picture (QSM through the thalami with the thalamus, CSF-reference and vein outlines; FLAIR with
lesions; the reference study's Figures 1 and 2), the subject's measures and QC flags, and the
reconstruction's provenance.

The report folder is self-contained: pages link only to files inside it (PNG images beside
the pages, relative links), load no font, script or style sheet from anywhere, and open from
disk in any browser with no server, so the folder can be zipped and mailed. Every text taken
from data is HTML-escaped (Jinja2 autoescape). Every file is written atomically.

Example
-------
>>> from qsmiron.report.html import write_report            # doctest: +SKIP
>>> write_report("report", deriv_root="deriv/qsmiron")       # doctest: +SKIP
PosixPath('report/report.html')
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from qsmiron import __version__
from qsmiron.errors import InputError
from qsmiron.io.nifti import atomic_write_bytes

__all__ = [
    "DEFAULT_TITLE",
    "QC_FLAG_HELP",
    "SIGN_CONVENTION_TEXT",
    "subject_key",
    "write_report",
    "write_subject_pages",
]

log = logging.getLogger(__name__)

#: Default title of the cohort report.
DEFAULT_TITLE = "qsmiron report: thalamic susceptibility in multiple sclerosis"

#: The sign convention stated on every page.
SIGN_CONVENTION_TEXT = (
    "Relative thalamic susceptibility (rel_chi_ppb) = mean susceptibility of the thalamus "
    "(both sides, veins and one-voxel vein/CSF rims left out) minus mean susceptibility of the "
    "CSF reference (small ROIs in the atria of the lateral ventricles), in ppb (parts per "
    "billion). Negative values: the thalamus is less paramagnetic than CSF. The reference "
    "study's text states the subtraction the other way round, but its reported numbers "
    "(mean -29.0 ppb) follow this convention."
)

#: What each QC flag means (docs/anatomy.md); a flag ending in one of these keys gets its text.
QC_FLAG_HELP: dict[str, str] = {
    "no_flair": "no FLAIR: lesion measures are missing",
    "no_gadolinium_t1w": "no post-gadolinium T1w: enhancing lesions not counted",
    "thalamus_left_small": "left thalamus below 3 mL",
    "thalamus_left_large": "left thalamus above 12 mL",
    "thalamus_right_small": "right thalamus below 3 mL",
    "thalamus_right_large": "right thalamus above 12 mL",
    "thalamus_outside_qsm": "more than 5% of the thalamus lies outside the valid QSM region",
    "vein_fraction_high": "more than 20% of the thalamus removed as veins",
    "csf_ref_small": "CSF reference below 30 mm3",
    "csf_ref_outside_qsm": "CSF reference outside the valid QSM region",
    "csf_ref_high_r2star": "CSF reference has a tissue-like R2* (tissue or choroid plexus?)",
    "csf_ref_left_missing": "no left CSF reference ROI",
    "csf_ref_right_missing": "no right CSF reference ROI",
    "csf_ref_left_near_wall": "left CSF reference touches the ventricle wall",
    "csf_ref_right_near_wall": "right CSF reference touches the ventricle wall",
    "flair_t1w_large_motion": "FLAIR and T1w far apart (> 20 degrees or 30 mm)",
    "gd_t1w_large_motion": "post-Gd T1w and T1w far apart (> 20 degrees or 30 mm)",
    "t1w_gre_large_motion": "T1w and GRE far apart (> 20 degrees or 30 mm)",
    "thalamus_mask_not_lateralised": "the thalamus mask is not split into left and right "
    "(sides taken from the segmentation's thalami where there is one)",
    "thalamus_mask_disagrees_with_segmentation": "the user's thalamus mask overlaps the "
    "segmentation's thalamus by less than half (Dice < 0.5): misplaced mask or failed "
    "segmentation?",
    "thalamus_mask_sides_swapped": "the user's left thalamus lies on the segmentation's right "
    "(labels 10 and 49 swapped?)",
    "lesion_mask_empty": "the user's lesion mask is empty: counted as no T2 lesion",
    "vein_mask_empty": "the user's vein mask is empty: no vein excluded",
    "enhancing_without_t2_lesions": "no T2 lesion mask (no FLAIR): enhancing lesions, "
    "counted per T2 lesion, are not counted",
    "flair_thick_slices": "FLAIR slices thicker than 3 mm: small T2 lesions are missed",
    "lesion_seeds_too_faint": "some lesion seeds lie within 2 local SDs of their surroundings: "
    "not grown",
}

_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
_MISSING = "\u2014"  # em dash

# columns of the per-subject table of the cohort page: (column, header, decimals)
_SUBJECT_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("rel_chi_ppb", "rel \u03c7 (ppb)", 1),
    ("thalamus_volume_ml", "thalamus (mL)", 2),
    ("total_gm_volume_ml", "total GM (mL)", 0),
    ("cortical_thickness_mm", "cortex (mm)", 2),
    ("t2_lesion_volume_ml", "T2 lesions (mL)", 2),
    ("enhancing_lesion_count", "enhancing", 0),
)

# measures of a subject page, in groups: (group, [(key, decimals)])
_SUBJECT_GROUPS: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    ("Susceptibility (ppb)", (
        ("rel_chi_ppb", 1), ("rel_chi_left_ppb", 1), ("rel_chi_right_ppb", 1),
        ("thalamus_chi_ppb", 1), ("thalamus_left_chi_ppb", 1), ("thalamus_right_chi_ppb", 1),
        ("thalamus_with_veins_chi_ppb", 1), ("csf_ref_chi_ppb", 1),
        ("caudate_rel_chi_ppb", 1), ("putamen_rel_chi_ppb", 1), ("pallidum_rel_chi_ppb", 1))),
    ("Volumes and thickness", (
        ("thalamus_volume_ml", 2), ("thalamus_left_volume_ml", 2),
        ("thalamus_right_volume_ml", 2), ("total_gm_volume_ml", 1), ("brain_volume_ml", 1),
        ("cortical_thickness_mm", 2))),
    ("Lesions", (
        ("t2_lesion_volume_ml", 2), ("lesion_count", 0), ("enhancing_lesion_count", 0),
        ("enhancing_lesions", 0))),
    ("Regions of interest", (
        ("vein_fraction_excluded", 3), ("csf_rim_fraction_excluded", 3),
        ("thalamus_outside_qsm_fraction", 3),
        ("csf_ref_volume_mm3", 0), ("csf_ref_left_centre_mm", 1),
        ("csf_ref_right_centre_mm", 1))),
)
# headline numbers at the top of a subject page: (key, label, unit, decimals)
_SUBJECT_SUMMARY: tuple[tuple[str, str, str, int], ...] = (
    ("rel_chi_ppb", "relative susceptibility (thalamus \u2212 CSF)", "ppb", 1),
    ("thalamus_volume_ml", "thalamus", "mL", 2),
    ("total_gm_volume_ml", "total GM", "mL", 0),
    ("t2_lesion_volume_ml", "T2 lesions", "mL", 2),
    ("lesion_count", "lesion count", "", 0),
    ("enhancing_lesion_count", "enhancing", "", 0),
)
_PARTICIPANT_KEYS = ("age", "sex", "disease_duration", "therapy", "edss")
_NOT_SHOWN = {"participant_id", "session_id", "status", "qc_flags", "error", "stage",
              "sign_convention", "input_hash", "Sources", "StageSeconds", "QCFlags", "params",
              "GeneratedBy", "segmentation", "lesions", "enhancing", "t1w_to_qsm",
              "stage_seconds"}

# units of the reference study's variables when the data dictionary is not at hand
_UNITS = {"ppb": "ppb", "_ml": "mL", "_mm3": "mm\u00b3", "_mm": "mm"}


# ---------------------------------------------------------------------------------------------
# small helpers
def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return True
    try:
        return bool(pd.isna(value)) if not isinstance(value, (list, tuple, dict)) else False
    except (TypeError, ValueError):
        return False


def _num(value: Any, decimals: int = 2) -> str:
    """A number for a table cell (an em dash for a missing value, text kept as it is)."""
    if _is_missing(value):
        return _MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_num(v, decimals) for v in value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if decimals == 0 and abs(x - round(x)) < 1e-9:
        return f"{int(round(x))}"
    return f"{x:.{decimals}f}".replace("-", "\u2212")


def _fmt_coef(coef: Any, lo: Any, hi: Any) -> str:
    """``coef (lo–hi)`` as the statistics' tables print it."""
    from qsmiron.stats.models import format_estimate

    if any(_is_missing(v) for v in (coef, lo, hi)):
        return "not estimable"
    return format_estimate(float(coef), float(lo), float(hi), 0.5).rsplit(", P ", 1)[0]


def _fmt_p(p: Any) -> str:
    """A p-value in the journal's style (``.037``, ``.63``, ``<.001``), as the tables print it."""
    from qsmiron.stats.models import format_p

    return _MISSING if _is_missing(p) else format_p(float(p))


def _unit(key: str, dictionary: Mapping[str, Mapping[str, str]]) -> str:
    unit = dictionary.get(key, {}).get("Units")
    if unit:
        return {"mm^3": "mm\u00b3", "1": ""}.get(unit, unit)
    for suffix, u in _UNITS.items():
        if key.endswith(suffix):
            return u
    return ""


@lru_cache(maxsize=1)
def _data_dictionary() -> dict[str, dict[str, str]]:
    """The cohort table's data dictionary (column descriptions and units), if available."""
    try:
        from qsmiron.measure.subject import MEASURES
    except ImportError:  # pragma: no cover - the measure stage is part of the package
        return {}
    return {k: dict(v) for k, v in MEASURES.items()}


@lru_cache(maxsize=1)
def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("qsmiron.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _num
    env.filters["p"] = _fmt_p
    return env


def _render(template: str, **context: Any) -> bytes:
    return _env().get_template(template).render(**context).encode("utf-8")


def _generated_at() -> str:
    """Date and time of the report (UTC), or ``SOURCE_DATE_EPOCH`` for reproducible builds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.strip().isdigit():
        when = _dt.datetime.fromtimestamp(int(epoch), tz=_dt.UTC)
    else:
        when = _dt.datetime.now(tz=_dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _text(value: Any) -> str:
    return "" if _is_missing(value) else str(value).strip()


def _flags(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = _text(value).replace(",", ";").split(";")
    return [f.strip() for f in items if f.strip()]


def _flag_help(flag: str) -> str:
    return QC_FLAG_HELP.get(flag, "")


def subject_key(participant_id: Any, session_id: Any = None) -> str:
    """Key (and page name) of a subject: ``sub-X`` or ``sub-X_ses-Y``.

    Parameters
    ----------
    participant_id : str
        ``sub-<label>`` or ``<label>`` (BIDS: letters and digits).
    session_id : str, optional
        ``ses-<label>`` or ``<label>``; missing or empty for a dataset without sessions.

    Returns
    -------
    str
        The key.

    Raises
    ------
    InputError
        A label that is not BIDS (letters and digits only).

    Examples
    --------
    >>> subject_key("sub-001"), subject_key("001", "ses-01")
    ('sub-001', 'sub-001_ses-01')
    """
    sub = _text(participant_id).removeprefix("sub-")
    if not _LABEL_RE.match(sub):
        raise InputError(f"participant_id must be sub-<letters and digits>, found "
                         f"{participant_id!r}")
    ses = _text(session_id).removeprefix("ses-")
    if ses.lower() in ("", "n/a", "nan", "none"):
        return f"sub-{sub}"
    if not _LABEL_RE.match(ses):
        raise InputError(f"session_id must be ses-<letters and digits>, found {session_id!r}")
    return f"sub-{sub}_ses-{ses}"


def _split_key(key: str) -> tuple[str, str | None]:
    sub, _, ses = key.partition("_ses-")
    return sub.removeprefix("sub-"), ses or None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _records(measures: pd.DataFrame) -> list[dict[str, Any]]:
    if "participant_id" not in measures.columns:
        raise InputError("the measures table needs a participant_id column, found "
                         f"{list(measures.columns)}")
    rows = []
    for rec in measures.to_dict(orient="records"):
        rows.append({str(k): (None if _is_missing(v) else v) for k, v in rec.items()})
    return rows


def _status(row: Mapping[str, Any]) -> str:
    status = _text(row.get("status")).lower()
    if status:
        return status
    return "ok" if not _is_missing(row.get("rel_chi_ppb")) else "missing"


def _copy_into(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` atomically, unless an identical copy is already there."""
    if dst.is_file():
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and d.st_mtime >= s.st_mtime:
            return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# subject pages
def _recon_summary(chimap: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if not chimap:
        return []
    items: list[tuple[str, str]] = []
    params = chimap.get("params") or {}
    for key, label in (("method", "dipole inversion"), ("bgremove", "background removal"),
                       ("unwrap", "phase unwrapping")):
        if key in params:
            items.append((label, _text(params[key])))
    inv = chimap.get("inversion") or {}
    if isinstance(inv, Mapping) and "iterations" in inv:
        conv = inv.get("converged")
        items.append(("inversion iterations",
                      f"{inv['iterations']}" + ("" if conv is None else
                                                ", converged" if conv else ", NOT converged")))
    for key, label, unit, d in (("brain_volume_ml", "brain mask", "mL", 0),
                                ("csf_volume_ml", "CSF (zero reference of the map)", "mL", 1),
                                ("unreliable_excluded_ml", "unreliable voxels excluded", "mL",
                                 1)):
        if key in chimap:
            items.append((label, f"{_num(chimap[key], d)} {unit}"))
    if "SignConvention" in chimap:
        items.append(("map reference", _text(chimap["SignConvention"])))
    n_src = len(chimap.get("Sources") or [])
    if n_src:
        items.append(("input files", f"{n_src}"))
    return items


def _measure_rows(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Groups of (label, value, unit, description) rows of a subject page."""
    dd = _data_dictionary()
    groups: list[dict[str, Any]] = []
    shown: set[str] = set()
    participant = [(k, 1) for k in _PARTICIPANT_KEYS if k in values]
    for group, keys in (("Participant", tuple(participant)), *_SUBJECT_GROUPS):
        rows = []
        for key, d in keys:
            if key not in values:
                continue
            shown.add(key)
            value = values[key]
            if key.endswith("_fraction_excluded") and not _is_missing(value):
                text, unit = _num(100.0 * float(value), 1), "%"
            else:
                text, unit = _num(value, d), _unit(key, dd)
            rows.append({"key": key, "value": text, "unit": unit,
                         "description": dd.get(key, {}).get("Description", "")})
        if rows:
            groups.append({"title": group, "rows": rows})
    other = []
    for key, value in values.items():
        if key in shown or key in _NOT_SHOWN or isinstance(value, Mapping):
            continue
        other.append({"key": key, "value": _num(value, 3), "unit": _unit(key, dd),
                      "description": dd.get(key, {}).get("Description", "")})
    if other:
        groups.append({"title": "Other", "rows": other})
    return groups


def _subject_page(
    key: str,
    row: Mapping[str, Any],
    deriv_root: Path,
    subjects_dir: Path,
    report_name: str,
) -> None:
    sub, ses = _split_key(key)
    folder = deriv_root / f"sub-{sub}" / (f"ses-{ses}" if ses else "")
    stem = key  # sub-X[_ses-Y]
    anat = _read_json(folder / "anat" / f"{stem}_desc-anatomy_measures.json")
    chimap = _read_json(folder / "anat" / f"{stem}_Chimap.json")
    fig_src = folder / "figures" / f"{stem}_desc-anatomy_qc.png"
    figure = None
    if fig_src.is_file():
        figure = _copy_into(fig_src, subjects_dir / fig_src.name).name
    mosaic_src = folder / "figures" / f"{stem}_desc-lesions_qc.png"
    mosaic = (_copy_into(mosaic_src, subjects_dir / mosaic_src.name).name
              if mosaic_src.is_file() else None)
    values: dict[str, Any] = {}
    if anat:
        values.update({k: v for k, v in anat.items() if not isinstance(v, Mapping)})
    values.update({k: v for k, v in row.items() if v is not None})
    flags = list(dict.fromkeys(_flags(row.get("qc_flags")) + _flags(
        (anat or {}).get("QCFlags") or (anat or {}).get("qc_flags"))))
    status = _status(row)
    sources = {str(k): _text(v) for k, v in ((anat or {}).get("Sources") or {}).items()}
    versions = {_text(g.get("Name")): _text(g.get("Version"))
                for src in (anat, chimap) if src for g in (src.get("GeneratedBy") or [])
                if isinstance(g, Mapping)}
    summary = [(label, f"{_num(values[k], d)} {unit}".strip())
               for k, label, unit, d in _SUBJECT_SUMMARY
               if k in values and not _is_missing(values[k])]
    page = _render(
        "subject.html.j2",
        key=key,
        summary=summary,
        title=f"{key}: qsmiron QC",
        status=status,
        error=_text(row.get("error")),
        stage=_text(row.get("stage")),
        flags=[{"name": f, "help": _flag_help(f)} for f in flags],
        figure=figure,
        lesion_mosaic=mosaic,
        figure_expected=str(fig_src.relative_to(deriv_root)),
        groups=_measure_rows(values),
        sources=sources,
        recon=_recon_summary(chimap),
        versions=versions,
        have_anat=anat is not None,
        sign_convention=SIGN_CONVENTION_TEXT,
        report_link=f"../{report_name}",
        qsmiron_version=__version__,
    )
    atomic_write_bytes(subjects_dir / f"{key}.html", page)


def write_subject_pages(
    deriv_root: str | Path,
    report_dir: str | Path,
    measures: pd.DataFrame,
) -> dict[str, str]:
    """Write one QC page per subject into ``REPORT_DIR/subjects/``.

    Each page shows the subject's anatomy QC picture (copied from
    ``DERIV_ROOT/sub-X[/ses-Y]/figures/sub-X[_ses-Y]_desc-anatomy_qc.png`` into
    ``REPORT_DIR/subjects/``): the QSM through the thalami with the thalamus (left and right),
    the CSF reference and the excluded veins outlined, and FLAIR slices with the T2 lesions. It
    lists the subject's status (a failed subject's stage and error), QC flags with their
    meaning, every measure with its unit (from the cohort table's row and
    ``anat/sub-X_desc-anatomy_measures.json``), where each measure came from, the QSM
    reconstruction's settings (``anat/sub-X_Chimap.json``), the sign convention and a link back
    to the cohort report (``../report.html``). A subject without a QC picture (a failed run)
    gets a page that says so, with no broken image.

    Parameters
    ----------
    deriv_root : str or Path
        The qsmiron derivatives folder, ``DERIV_DIR/qsmiron``.
    report_dir : str or Path
        The report folder (created if needed).
    measures : pandas.DataFrame
        The cohort table (``measures.tsv``), one row per subject and session: at least
        ``participant_id``; ``session_id``, ``status``, ``error``, ``stage``, ``qc_flags`` and
        the measures are used where present.

    Returns
    -------
    dict
        Subject key (``sub-X`` or ``sub-X_ses-Y``) -> path of its page relative to
        ``report_dir`` (``subjects/sub-X.html``), in table order.

    Raises
    ------
    InputError
        No ``participant_id`` column, a label that is not BIDS, or a subject twice.
    """
    deriv_root, report_dir = Path(deriv_root), Path(report_dir)
    subjects_dir = report_dir / "subjects"
    rows = _records(measures)
    keys = [subject_key(r.get("participant_id"), r.get("session_id")) for r in rows]
    dupes = sorted(k for k, c in Counter(keys).items() if c > 1)
    if dupes:
        raise InputError(f"subjects appear more than once in the measures table: {dupes}")
    pages: dict[str, str] = {}
    for key, row in zip(keys, rows, strict=True):
        _subject_page(key, row, deriv_root, subjects_dir, "report.html")
        pages[key] = f"subjects/{key}.html"
    log.info("wrote %d subject pages in %s", len(pages), subjects_dir)
    return pages


# ---------------------------------------------------------------------------------------------
# cohort page
def _label(var: str, spec: Mapping[str, Any], with_transform: str | None = None) -> str:
    from qsmiron.stats.spec import DEFAULT_LABELS

    labels = {**DEFAULT_LABELS, **(spec.get("labels") or {})}
    base = str(labels.get(var, var))
    tr = with_transform
    if tr and tr not in ("identity", "none"):
        base = f"{tr} {base}"
    return base


def _levels_note(var: str, spec: Mapping[str, Any]) -> str:
    levels = (spec.get("levels") or {}).get(var)
    if isinstance(levels, (list, tuple)) and len(levels) == 2:
        return f"{levels[1]} vs {levels[0]}"
    return ""


def _image(report_dir: Path, path: Any, alt: str) -> dict[str, Any]:
    """An image of the report: a relative path inside ``report_dir`` or a 'missing' note."""
    rel = _text(path)
    if not rel:
        return {"src": None, "alt": alt, "missing": "(no figure)"}
    p = Path(rel)
    full = p if p.is_absolute() else report_dir / p
    if not full.is_file():
        return {"src": None, "alt": alt, "missing": rel}
    full_r, root_r = full.resolve(), report_dir.resolve()
    if not full_r.is_relative_to(root_r):  # keep the folder self-contained: copy it in
        full_r = _copy_into(full_r, report_dir / "figures" / full_r.name).resolve()
    return {"src": full_r.relative_to(root_r).as_posix(), "alt": alt, "missing": None}


def _predictor_label(row: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    """The predictor's name with its contrast (``Sex (F vs M)``), as the Markdown tables."""
    predictor = _text(row.get("predictor"))
    base = _label(predictor, spec, row.get("predictor_transform")
                  or (spec.get("transforms") or {}).get(predictor))
    term, ref = _text(row.get("term")), _text(row.get("reference"))
    if ref and term.startswith(predictor + "[") and term.endswith("]"):
        return f"{base} ({term[len(predictor) + 1:-1]} vs {ref})"
    levels = _levels_note(predictor, spec)
    return f"{base} ({levels})" if levels else base


def _cell(row: Mapping[str, Any] | None) -> dict[str, Any]:
    """Coefficient (95% CI) and P of one fit, formatted as in the CSV and Markdown tables."""
    if row is None:
        return {"coef": _MISSING, "p": "", "significant": False, "reason": ""}
    status = _text(row.get("status")) or "ok"
    coef, lo, hi, p = (row.get(k) for k in ("coef", "ci_low", "ci_high", "p"))
    if status != "ok" or _is_missing(coef):
        return {"coef": "not estimable", "p": "", "significant": False,
                "reason": _text(row.get("reason"))}
    text = _text(row.get("text"))
    coef_text = text.rsplit(", P ", 1)[0] if ", P " in text else _fmt_coef(coef, lo, hi)
    return {"coef": coef_text, "p": _fmt_p(p),
            "significant": (not _is_missing(p)) and float(p) < 0.05, "reason": ""}


def _paired_rows(table: Mapping[str, Any], spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One display row per (outcome, predictor): the unadjusted and adjusted fits side by side."""
    # one term per predictor (a binary factor is coded as one level against the other); a
    # fit that was not estimable has no term, so pairs are keyed by the variables only
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for r in table.get("rows") or []:
        k = (_text(r.get("outcome")), _text(r.get("predictor")))
        entry = pairs.setdefault(k, {"unadjusted": None, "adjusted": None})
        entry["adjusted" if r.get("adjusted") else "unadjusted"] = r
    out = []
    spec_tr = spec.get("transforms") or {}
    for (outcome, _predictor), e in pairs.items():
        un, ad = e["unadjusted"], e["adjusted"]
        with_term = [r for r in (ad, un) if r is not None and _text(r.get("term"))]
        any_row = with_term[0] if with_term else (ad if ad is not None else un)
        ns = [_num(r.get("n"), 0) for r in (un, ad) if r is not None]
        n = ns[0] if len(set(ns)) == 1 else " / ".join(ns)
        out.append({
            "outcome": _label(outcome, spec, any_row.get("transform")
                              or spec_tr.get(outcome)),
            "predictor": _predictor_label(any_row, spec),
            "n": n,
            "unadjusted": _cell(un),
            "adjusted": _cell(ad),
            "covariates": [_label(c, spec) for c in _covariates(ad)] if ad else [],
        })
    return out


def _covariates(row: Mapping[str, Any]) -> list[str]:
    cov = row.get("covariates")
    if isinstance(cov, str):
        return [c.strip() for c in re.split(r"[;,+]", cov) if c.strip()]
    return [str(c) for c in cov or []]


def _table_context(report_dir: Path, table: Mapping[str, Any],
                   spec: Mapping[str, Any]) -> dict[str, Any]:
    rows = _paired_rows(table, spec)
    covs: list[str] = []
    for r in rows:
        covs += [c for c in r["covariates"] if c not in covs]
    outcomes = list(dict.fromkeys(r["outcome"] for r in rows))
    predictors = list(dict.fromkeys(r["predictor"] for r in rows))
    one_out, one_pred = len(outcomes) == 1, len(predictors) == 1
    links = []
    for key, label in (("csv", "CSV"), ("markdown", "Markdown")):
        rel = _text(table.get(key))
        if rel and (report_dir / rel).is_file():
            links.append({"href": Path(rel).as_posix(), "label": label})
    reasons = [f"{r['outcome']} ~ {r['predictor']}, {side}: {r[side]['reason']}"
               for r in rows for side in ("unadjusted", "adjusted") if r[side]["reason"]]
    return {"id": _text(table.get("id")), "key": _text(table.get("key") or table.get("id")),
            "title": _text(table.get("title")), "subgroup": _text(table.get("subgroup")),
            "rows": rows, "covariates": covs, "links": links,
            "show_outcome": not one_out or one_pred, "show_predictor": not one_pred,
            "outcome": outcomes[0] if one_out else "",
            "predictor": predictors[0] if one_pred else "",
            "reasons": reasons}


def _ladder_context(report_dir: Path, item: Mapping[str, Any],
                    spec: Mapping[str, Any]) -> dict[str, Any]:
    var = _text(item.get("variable"))
    chosen = _text(item.get("chosen"))
    rows = []
    for t in item.get("transforms") or []:
        name = _text(t.get("name"))
        applicable = bool(t.get("applicable", True))
        rows.append({"name": name, "applicable": applicable, "chosen": name == chosen,
                     "spec": name == (_text(item.get("spec_transform")) or "identity"),
                     "skewness": _num(t.get("skewness"), 2) if applicable else _MISSING,
                     "kurtosis": _num(t.get("kurtosis"), 2) if applicable else _MISSING,
                     "chi2": _num(t.get("chi2"), 2) if applicable else _MISSING,
                     "p": _fmt_p(t.get("p")) if applicable else "not applicable"})
    label = _label(var, spec)
    return {"variable": var, "label": label, "chosen": chosen,
            "spec_transform": _text(item.get("spec_transform")) or "identity",
            "test": _text(item.get("test")), "rows": rows,
            "figure": _image(report_dir, item.get("figure"),
                             f"quantile-normal plots of {label} under each transform")}


def _power_text(power: Mapping[str, Any] | None) -> str:
    if not power:
        return ""
    r, alpha, n, pw = (power.get(k) for k in ("r", "alpha", "n", "power"))
    if any(_is_missing(v) for v in (r, alpha, n, pw)):
        return ""
    pw = float(pw)
    pct = pw if pw > 1.0 else 100.0 * pw
    text = (f"With n = {int(n)}, the power to detect a correlation of r = {float(r):g} at "
            f"two-sided \u03b1 = {float(alpha):g} is {pct:.1f}% (Fisher z).")
    target, n_target = power.get("target_power"), power.get("n_for_target")
    if _is_missing(target) or _is_missing(n_target):
        target, n_target = 0.8, power.get("n_for_80")
    if not _is_missing(n_target):
        text += f" {100.0 * float(target):.0f}% power needs n = {int(n_target)}."
    return text


def _cohort_text(cohort: Mapping[str, Any] | None) -> str:
    if not cohort:
        return ""
    from qsmiron.stats.tables import cohort_paragraph

    return cohort_paragraph(dict(cohort))


def _subject_table(records: Sequence[Mapping[str, Any]], pages: Mapping[str, str]
                   ) -> dict[str, Any]:
    rows = []
    with_sessions = any(_text(r.get("session_id")) for r in records)
    for r in records:
        key = subject_key(r.get("participant_id"), r.get("session_id"))
        status = _status(r)
        flags = _flags(r.get("qc_flags"))
        rows.append({
            "participant": _text(r.get("participant_id")),
            "session": _text(r.get("session_id")),
            "href": pages.get(key),
            "status": status,
            "failed": status not in ("ok", "missing"),
            "error": _text(r.get("error")),
            "stage": _text(r.get("stage")),
            "cells": [_num(r.get(c), d) for c, _, d in _SUBJECT_COLUMNS],
            "flags": [{"name": f, "help": _flag_help(f)} for f in flags],
        })
    n_failed = sum(r["failed"] for r in rows)
    return {"rows": rows, "with_sessions": with_sessions,
            "headers": [h for _, h, _ in _SUBJECT_COLUMNS], "n_failed": n_failed,
            "n_flagged": sum(bool(r["flags"]) for r in rows)}


def _load_measures(deriv_root: Path | None, stats: Mapping[str, Any], report_dir: Path
                   ) -> pd.DataFrame | None:
    candidates = []
    if deriv_root is not None:
        candidates.append(deriv_root / "measures.tsv")
    source = _text(stats.get("source"))
    if source:
        p = Path(source)
        candidates += [p] if p.is_absolute() else [report_dir / p, Path.cwd() / p]
    for path in candidates:
        if path.is_file() and path.suffix in (".tsv", ".csv", ".txt"):
            sep = "," if path.suffix == ".csv" else "\t"
            return pd.read_csv(path, sep=sep, keep_default_na=True, na_values=["n/a"])
    return None


def write_report(
    report_dir: str | Path,
    deriv_root: str | Path | None = None,
    measures: pd.DataFrame | None = None,
    title: str = DEFAULT_TITLE,
) -> Path:
    """Write the cohort report ``REPORT_DIR/report.html`` (and the subject QC pages).

    The page shows, in order: the cohort description (the reference study's Results
    paragraph with this cohort's numbers), the power statement, each table of the statistics
    (the unadjusted and adjusted coefficient with its 95% CI and P side by side, as in the
    paper; the subgroup tables of the sensitivity analysis after the main ones), Tukey's ladder
    of powers per outcome (skewness, kurtosis and the normality test per transform, the chosen
    one marked, and the grid of quantile-normal plots), the scatter plots with fits, the notes
    of the statistics, one row per subject (status, relative susceptibility, volumes, lesion
    volume, QC flags; a failed subject's stage and error) linking to the subject's QC page,
    the sign convention and the provenance (qsmiron version, source table, date).

    Parameters
    ----------
    report_dir : str or Path
        The folder ``qsmiron stats`` wrote: ``stats.json`` and the ``tables/`` and
        ``figures/`` it names. ``report.html`` and ``subjects/`` are written there.
    deriv_root : str or Path, optional
        The qsmiron derivatives folder (``DERIV_DIR/qsmiron``). With it, each subject gets a QC
        page (:func:`write_subject_pages`), and the cohort table defaults to its
        ``measures.tsv``.
    measures : pandas.DataFrame, optional
        The cohort table. Default: ``DERIV_ROOT/measures.tsv``, else the table ``stats.json``
        names as its source (if it can be found); without any, the report has no per-subject
        section.
    title : str
        Title of the page.

    Returns
    -------
    Path
        ``REPORT_DIR/report.html``.

    Raises
    ------
    InputError
        ``stats.json`` missing or unreadable; a bad measures table (see
        :func:`write_subject_pages`).
    """
    report_dir = Path(report_dir)
    stats_path = report_dir / "stats.json"
    if not stats_path.is_file():
        raise InputError("no stats.json: run `qsmiron stats measures.tsv --out REPORT_DIR` "
                         "first", stats_path)
    try:
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"not valid JSON ({exc})", stats_path) from exc
    if not isinstance(stats, dict):
        raise InputError("expected a JSON object", stats_path)
    deriv = Path(deriv_root) if deriv_root is not None else None
    if measures is None:
        measures = _load_measures(deriv, stats, report_dir)
    spec = stats.get("spec") or {}

    pages: dict[str, str] = {}
    subjects = None
    if measures is not None:
        if deriv is not None:
            pages = write_subject_pages(deriv, report_dir, measures)
        subjects = _subject_table(_records(measures), pages)

    tables = [_table_context(report_dir, t, spec) for t in stats.get("tables") or []]
    main_tables = [t for t in tables if not t["subgroup"]]
    sub_tables = [t for t in tables if t["subgroup"]]
    numbers = {t["id"]: i for i, t in enumerate(main_tables, start=1)}
    for t in tables:
        t["number"] = numbers.get(t["id"])
    ladder = [_ladder_context(report_dir, item, spec) for item in stats.get("ladder") or []]
    scatter = []
    for s in stats.get("scatter") or []:
        tr = spec.get("transforms") or {}
        o = _label(_text(s.get("outcome")), spec, tr.get(_text(s.get("outcome"))))
        p = _label(_text(s.get("predictor")), spec, tr.get(_text(s.get("predictor"))))
        if _text(s.get("kind")) == "group":
            caption = (f"{o} by {p[:1].lower() + p[1:]}: each subject (points), box plot per "
                       "group, and the group mean with its 95% confidence interval.")
        else:
            caption = (f"{o} against {p[:1].lower() + p[1:]}: each subject (points), the "
                       "least-squares line and its 95% confidence band (unadjusted).")
        scatter.append({"caption": caption,
                        "image": _image(report_dir, s.get("figure"), f"{o} against {p}")})
    page = _render(
        "report.html.j2",
        title=title,
        study=_text(spec.get("name")),
        cohort_text=_cohort_text(stats.get("cohort")),
        n_rows=stats.get("n_rows"),
        n_ok=stats.get("n_ok"),
        power_text=_power_text(stats.get("power")),
        main_tables=main_tables,
        sub_tables=sub_tables,
        ladder=ladder,
        scatter=scatter,
        notes=[_text(n) for n in stats.get("notes") or [] if _text(n)],
        subjects=subjects,
        sign_convention=SIGN_CONVENTION_TEXT,
        stats_version=_text(stats.get("qsmiron_version")),
        qsmiron_version=__version__,
        source=_text(stats.get("source")),
        spec_source=_text(spec.get("source")),
        generated=_generated_at(),
    )
    out = atomic_write_bytes(report_dir / "report.html", page)
    log.info("wrote %s", out)
    return out
