"""DICOM to BIDS through dcm2niix.

:func:`dicom_to_bids` runs ``dcm2niix`` into a temporary folder inside the BIDS dataset, reads
the JSON sidecars it writes and sorts the images into BIDS names:

* multi-echo gradient-echo magnitude and phase (or real and imaginary) series, recognised from
  ``ImageType`` (``M``/``MAGNITUDE``, ``P``/``PHASE``, ``R``/``REAL``, ``I``/``IMAGINARY``),
  ``EchoNumber`` and ``EchoTime``, become
  ``sub-X[_ses-Y][_run-n]_echo-<n>_part-{mag,phase}_MEGRE.nii.gz``;
* single-echo anatomical series become ``T1w``, ``FLAIR``, ``T2w`` or post-contrast
  ``ce-gadolinium_T1w`` where the series description makes that clear;
* anything else is kept, unrenamed, under ``sourcedata/dcm2niix/sub-X[/ses-Y]/`` and logged.

Files are moved with :func:`os.replace` from a folder on the same file system, so each appears
whole or not at all. dcm2niix keeps the phase in its stored units (e.g. ``-4096..4094`` for
Siemens); :func:`qsmiron.io.bids.read_megre_bids` detects that scaling when reading.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib

from qsmiron.errors import InputError, QsmironError
from qsmiron.io.bids import _label, bids_name, write_dataset_description
from qsmiron.io.nifti import read_json

__all__ = ["classify_series", "dicom_to_bids", "find_dcm2niix"]

logger = logging.getLogger(__name__)

#: Environment variable that overrides where the dcm2niix executable is looked for.
DCM2NIIX_ENV = "QSMIRON_DCM2NIIX"

_CONTRAST = re.compile(r"(\bgd\b|gado|\bpost\b|\+c\b|\bce\b|contrast|\bmdc\b|\bkm\b|_gd_|_ce_)")
_T1 = re.compile(r"(t1|mprage|mp-rage|spgr|bravo|\btfl\b|\btfe\b|\bffe\b)")
_FLAIR = re.compile(r"(flair|\bdark[\s_-]?fluid\b)")
_T2 = re.compile(r"(t2|\btse\b|\bfse\b)")


def find_dcm2niix() -> Path:
    """Locate the dcm2niix executable.

    Looked for, in order: the path in ``$QSMIRON_DCM2NIIX``; ``dcm2niix`` on ``PATH``; next to
    the running Python (a virtual environment's ``bin``); the binary shipped inside the
    ``dcm2niix`` Python package.

    Returns
    -------
    Path
        The executable.

    Raises
    ------
    QsmironError
        No executable found.
    """
    env = os.environ.get(DCM2NIIX_ENV)
    if env:
        p = Path(env)
        if p.is_file() and os.access(p, os.X_OK):
            return p
        raise QsmironError(f"{DCM2NIIX_ENV}={env} is not an executable file")
    candidates: list[Path] = []
    which = shutil.which("dcm2niix")
    if which:
        candidates.append(Path(which))
    exe_dir = Path(sys.executable).parent
    candidates += [exe_dir / "dcm2niix", exe_dir / "dcm2niix.exe"]
    try:
        import dcm2niix as _pkg  # the PyPI package ships the binary

        candidates.append(Path(_pkg.bin_path))
    except (ImportError, AttributeError):
        pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise QsmironError(
        "dcm2niix not found: install it (pip install dcm2niix) or set "
        f"{DCM2NIIX_ENV} to the executable"
    )


@dataclass
class _Image:
    nii: Path
    json: Path
    meta: dict[str, Any]
    series: int
    part: str  # mag, phase, real, imag
    echo: int | None
    te: float | None
    shape: tuple[int, ...] | None
    derived: bool

    @property
    def description(self) -> str:
        return " ".join(
            str(self.meta.get(k, "")) for k in ("SeriesDescription", "ProtocolName")
        ).strip()


def _part(image_type: Sequence[str]) -> str:
    tokens = {str(t).upper() for t in image_type}
    if tokens & {"P", "PHASE"}:
        return "phase"
    if tokens & {"REAL", "R"}:
        return "real"
    if tokens & {"IMAGINARY", "I"}:
        return "imag"
    return "mag"


def _scanning_sequence(meta: dict[str, Any]) -> set[str]:
    seq = meta.get("ScanningSequence", "")
    items = seq if isinstance(seq, list) else re.split(r"[\\_/ ]", str(seq))
    return {str(s).upper() for s in items if s}


def _collect(out_dir: Path) -> list[_Image]:
    images: list[_Image] = []
    for js in sorted(out_dir.rglob("*.json")):
        nii = None
        for ext in (".nii.gz", ".nii"):
            cand = js.with_name(js.name[: -len(".json")] + ext)
            if cand.exists():
                nii = cand
        if nii is None:
            logger.debug("dcm2niix sidecar without image: %s", js.name)
            continue
        meta = read_json(js)
        image_type = meta.get("ImageType", [])
        if isinstance(image_type, str):
            image_type = image_type.split("\\")
        try:
            shape: tuple[int, ...] | None = tuple(nib.load(str(nii)).shape)
        except Exception:  # noqa: BLE001 - any unreadable output is set aside, not fatal
            shape = None
        echo = meta.get("EchoNumber")
        te = meta.get("EchoTime")
        images.append(
            _Image(
                nii=nii,
                json=js,
                meta=meta,
                series=int(meta.get("SeriesNumber", -1)),
                part=_part(image_type),
                echo=int(echo) if isinstance(echo, (int, float)) else None,
                te=float(te) if isinstance(te, (int, float)) else None,
                shape=shape,
                derived=any(str(t).upper() == "DERIVED" for t in image_type),
            )
        )
    return images


def classify_series(description: str) -> tuple[str, dict[str, str]] | None:
    """Guess the BIDS suffix of a single-echo anatomical series from its description.

    Parameters
    ----------
    description : str
        SeriesDescription and/or ProtocolName.

    Returns
    -------
    (suffix, entities) or None
        ``("FLAIR", {})``, ``("T1w", {})``, ``("T1w", {"ce": "gadolinium"})``, ``("T2w", {})``;
        None when unsure.

    Examples
    --------
    >>> classify_series("t1_mprage_sag_GD")
    ('T1w', {'ce': 'gadolinium'})
    """
    d = description.lower().replace("_", " ")
    if _FLAIR.search(d):
        return "FLAIR", {}
    if _T1.search(d):
        return ("T1w", {"ce": "gadolinium"}) if _CONTRAST.search(d) else ("T1w", {})
    if _T2.search(d):
        return "T2w", {}
    return None


def _echo_list(group: list[_Image]) -> list[_Image] | None:
    """Order a series' images by echo; None if echoes are missing or duplicated."""
    if any(im.te is None for im in group):
        return None
    ordered = sorted(group, key=lambda im: (im.te, im.echo or 0))
    tes = [im.te for im in ordered]
    if len(set(tes)) != len(tes):
        return None
    return ordered


def _is_gre(im: _Image) -> bool:
    seq = _scanning_sequence(im.meta)
    if seq and ("GR" not in seq or "IR" in seq):
        return False
    suffix = classify_series(im.description)
    return suffix is None or suffix[0] not in ("T1w", "FLAIR")


def _plan(images: list[_Image], sub: str, ses: str | None) -> tuple[dict[Path, str], list[_Image]]:
    """Decide BIDS names: returns {source nii: bids name (no extension)} and the leftovers."""
    groups: dict[tuple[int, str], list[_Image]] = defaultdict(list)
    for im in images:
        groups[(im.series, im.part)].append(im)

    # multi-echo GRE: (series, part) groups of a GRE sequence with >= 2 echoes or a phase part
    gre: dict[tuple[int, str], list[_Image]] = {}
    for key, group in groups.items():
        if any(im.derived or im.shape is None for im in group) or not all(map(_is_gre, group)):
            continue
        has_partner = any(k[0] == key[0] and k[1] != key[1] for k in groups) or key[1] != "mag"
        ordered = _echo_list(group)
        if ordered is None:
            logger.warning(
                "series %s (%s): echo times missing or repeated; not used as multi-echo GRE",
                key[0],
                key[1],
            )
            continue
        if len(ordered) >= 2 or has_partner:
            gre[key] = ordered

    def signature(group: list[_Image]) -> tuple:
        return tuple(round(im.te * 1e5) for im in group), group[0].shape  # type: ignore[operator]

    pairs: list[tuple[list[_Image], list[_Image], tuple[str, str]]] = []
    used: set[tuple[int, str]] = set()
    for first, second in (("mag", "phase"), ("real", "imag")):
        for key in sorted(k for k in gre if k[1] == first):
            options = [
                k
                for k in gre
                if k[1] == second and k not in used and signature(gre[k]) == signature(gre[key])
            ]
            if not options:
                logger.warning(
                    "series %s: %s images without matching %s series; kept in sourcedata",
                    key[0],
                    first,
                    second,
                )
                continue
            # Siemens writes phase as the next series; prefer the nearest number, later first.
            best = min(options, key=lambda k: (abs(k[0] - key[0]), k[0] < key[0]))
            used.update({key, best})
            pairs.append((gre[key], gre[best], (first, second)))

    names: dict[Path, str] = {}
    multiple = len(pairs) > 1
    for run, (a, b, (pa, pb)) in enumerate(pairs, start=1):
        for echo, (ia, ib) in enumerate(zip(a, b, strict=True), start=1):
            for im, part in ((ia, pa), (ib, pb)):
                ents: dict[str, Any] = {"echo": echo, "part": part}
                if multiple:
                    ents["run"] = run
                names[im.nii] = bids_name(sub, "MEGRE", ses, ents, extension="")

    # single anatomical series
    anat: dict[tuple[str, tuple], list[tuple[int, list[_Image]]]] = defaultdict(list)
    for key, group in sorted(groups.items()):
        if key in used or key[1] != "mag" or any(im.derived for im in group):
            continue
        guess = classify_series(group[0].description)
        if guess is None or any(im.shape is None for im in group):
            continue
        suffix, ents = guess
        anat[(suffix, tuple(sorted(ents.items())))].append((key[0], group))
    for (suffix, ents_t), series_list in anat.items():
        for run, (_, group) in enumerate(sorted(series_list, key=lambda s: s[0]), start=1):
            ordered = _echo_list(group) if len(group) > 1 else group
            if ordered is None:
                continue
            for echo, im in enumerate(ordered, start=1):
                ents = dict(ents_t)
                if len(series_list) > 1:
                    ents["run"] = run
                if len(ordered) > 1:
                    ents["echo"] = echo
                names[im.nii] = bids_name(sub, suffix, ses, ents, extension="")

    leftovers = [im for im in images if im.nii not in names]
    return names, leftovers


def _run_dcm2niix(exe: Path, dicom_dir: Path, out_dir: Path, timeout: float) -> None:
    cmd = [str(exe), "-b", "y", "-z", "y", "-f", "%s_%d", "-o", str(out_dir), str(dicom_dir)]
    logger.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise InputError(f"dcm2niix did not finish within {timeout:g} s", dicom_dir) from None
    except OSError as exc:
        raise QsmironError(f"cannot run dcm2niix at {exe}: {exc}") from None
    logger.debug("dcm2niix stdout:\n%s", proc.stdout)
    errors = "\n".join(
        line
        for line in (proc.stderr + "\n" + proc.stdout).splitlines()
        if line.strip().lower().startswith("error")
    )
    detail = (proc.stderr.strip() or errors or proc.stdout.strip()[-2000:])[-2000:]
    if proc.returncode == 2:
        raise InputError(f"no DICOM images found (dcm2niix: {detail})", dicom_dir)
    if proc.returncode != 0:
        raise InputError(f"dcm2niix failed with exit code {proc.returncode}: {detail}", dicom_dir)


def dicom_to_bids(
    dicom_dir: str | Path,
    bids_dir: str | Path,
    subject: str,
    session: str | None = None,
    timeout: float = 3600.0,
) -> list[Path]:
    """Convert a folder of DICOM files into a subject (and session) of a BIDS dataset.

    Parameters
    ----------
    dicom_dir : str or Path
        Folder holding the DICOM files (searched recursively by dcm2niix).
    bids_dir : str or Path
        BIDS dataset root; created, with a ``dataset_description.json``, if needed.
    subject : str
        Subject label, with or without ``sub-``.
    session : str, optional
        Session label, with or without ``ses-``.
    timeout : float
        Seconds dcm2niix may run.

    Returns
    -------
    list of Path
        The BIDS images written under ``sub-<subject>`` (each with its JSON sidecar), sorted.
        Series that could not be identified are kept under ``sourcedata/dcm2niix`` and are not
        in this list.

    Raises
    ------
    InputError
        The DICOM folder is missing or empty, holds no DICOM images, dcm2niix fails (its
        message is included) or produces nothing usable.
    QsmironError
        dcm2niix cannot be found or started.
    """
    src = Path(dicom_dir)
    if not src.exists():
        raise InputError("DICOM folder not found", src)
    if not src.is_dir():
        raise InputError("expected a folder of DICOM files, found a file", src)
    if not any(p.is_file() for p in src.rglob("*")):
        raise InputError("DICOM folder is empty", src)
    sub = _label(subject, "sub", "subject")
    ses = None if session is None else _label(session, "ses", "session")
    exe = find_dcm2niix()
    root = Path(bids_dir)
    root.mkdir(parents=True, exist_ok=True)
    anat = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    extra = root / "sourcedata" / "dcm2niix" / f"sub-{sub}" / (f"ses-{ses}" if ses else "")
    tmp = Path(tempfile.mkdtemp(prefix=".dcm2niix-", dir=root))  # same file system: atomic moves
    try:
        _run_dcm2niix(exe, src, tmp, timeout)
        images = _collect(tmp)
        if not images:
            raise InputError("dcm2niix produced no images from this folder", src)
        names, leftovers = _plan(images, sub, ses)
        moves: list[tuple[Path, Path]] = []
        written: list[Path] = []
        for im in images:
            ext = ".nii.gz" if im.nii.name.endswith(".nii.gz") else ".nii"
            if im.nii in names:
                target = anat / (names[im.nii] + ext)
                written.append(target)
            else:
                target = extra / im.nii.name
            moves.append((im.nii, target))
            moves.append((im.json, target.with_name(target.name[: -len(ext)] + ".json")))
        for im in leftovers:
            logger.info(
                "series %s '%s' (%s): not identified; kept as %s",
                im.series,
                im.description,
                im.part,
                extra / im.nii.name,
            )
        for source, target in moves:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                logger.warning("replacing existing %s", target)
            os.replace(source, target)
        write_dataset_description(root, "qsmiron dataset", "raw", overwrite=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s into %d BIDS images for sub-%s", src, len(written), sub)
    return sorted(written)
