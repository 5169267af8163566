"""BIDS datasets: multi-echo GRE (``MEGRE``) and anatomical images in and out.

Layout (BIDS 1.9)::

    <bids_dir>/dataset_description.json
    <bids_dir>/sub-<label>[/ses-<label>]/anat/
        sub-<label>[_ses-<label>][_acq-<label>]_echo-<n>_part-mag_MEGRE.nii.gz (+ .json)
        sub-<label>[_ses-<label>][_acq-<label>]_echo-<n>_part-phase_MEGRE.nii.gz (+ .json)
        sub-<label>[_ses-<label>][_ce-<label>]_T1w.nii.gz, ..._FLAIR.nii.gz

Echo times are in seconds (``EchoTime``), field strength in tesla (``MagneticFieldStrength``).
Sidecars are merged following the BIDS inheritance principle: JSON files higher in the tree
(dataset root, subject, session folders) whose entities are a subset of the image's apply first,
the image's own sidecar last.

Every reader turns bad input into an :class:`~qsmiron.errors.InputError` that names the file and
says what was wrong.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qsmiron import __version__
from qsmiron.errors import InputError
from qsmiron.io.nifti import (
    b0_direction,
    load_nifti,
    read_json,
    save_nifti,
    sidecar_path,
    voxel_size,
    write_json,
)
from qsmiron.io.phase import PhaseScaling, phase_to_radians, wrap_to_pi

__all__ = [
    "BIDS_VERSION",
    "ENTITY_ORDER",
    "derivatives_dir",
    "MultiEchoGRE",
    "bids_name",
    "inherited_sidecar",
    "list_subjects",
    "parse_bids_name",
    "read_bids_anat",
    "read_megre_bids",
    "read_megre_nifti",
    "write_bids_anat",
    "write_dataset_description",
    "write_megre_bids",
]

logger = logging.getLogger(__name__)

BIDS_VERSION = "1.9.0"

#: Order of entities in BIDS file names (BIDS 1.9 entity table, with the transform entities
#: from/to/mode of BIDS derivatives).
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "ce", "trc", "stain", "rec", "dir",
    "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split",
    "recording", "chunk", "seg", "res", "den", "label", "from", "to", "mode", "desc",
)  # fmt: skip

_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_IMAGE_EXTS = (".nii.gz", ".nii")
#: Longest plausible GRE echo time in seconds; larger values are taken for milliseconds.
_MAX_TE_S = 0.2
#: A magnitude image with more than this fraction of negative voxels is taken for a phase image.
_MAX_NEGATIVE_FRACTION = 0.05


# --------------------------------------------------------------------------------------------
# names


def _label(value: str | int, prefix: str, what: str) -> str:
    text = str(value)
    if text.startswith(prefix + "-"):
        text = text[len(prefix) + 1 :]
    if not _LABEL.match(text):
        raise InputError(f"invalid {what} label {value!r}: BIDS labels are letters and digits only")
    return text


def bids_name(
    subject: str,
    suffix: str,
    session: str | None = None,
    entities: Mapping[str, str | int] | None = None,
    extension: str = ".nii.gz",
) -> str:
    """Build a BIDS file name with entities in the standard order.

    Parameters
    ----------
    subject : str
        Subject label, with or without ``sub-``.
    suffix : str
        E.g. ``"T1w"``, ``"FLAIR"``, ``"MEGRE"``.
    session : str, optional
        Session label, with or without ``ses-``.
    entities : mapping, optional
        Further entities, e.g. ``{"ce": "gadolinium"}`` or ``{"echo": 2, "part": "phase"}``.
    extension : str
        ``".nii.gz"``, ``".json"``, ...

    Returns
    -------
    str
        E.g. ``"sub-01_ce-gadolinium_T1w.nii.gz"``.

    Raises
    ------
    InputError
        An unknown entity or a label with characters other than letters and digits.
    """
    ents: dict[str, str] = {"sub": _label(subject, "sub", "subject")}
    if session is not None:
        ents["ses"] = _label(session, "ses", "session")
    for key, value in (entities or {}).items():
        if key not in ENTITY_ORDER or key in ("sub", "ses"):
            raise InputError(f"unknown BIDS entity {key!r}; known: {', '.join(ENTITY_ORDER[2:])}")
        ents[key] = _label(value, key, key)
    if not _LABEL.match(suffix):
        raise InputError(f"invalid BIDS suffix {suffix!r}")
    parts = [f"{k}-{ents[k]}" for k in ENTITY_ORDER if k in ents]
    return "_".join(parts + [suffix]) + extension


def _strip_ext(name: str) -> tuple[str, str]:
    for ext in (".nii.gz", ".nii", ".json"):
        if name.endswith(ext):
            return name[: -len(ext)], ext
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext) if dot else (name, "")


def parse_bids_name(name: str | Path) -> tuple[dict[str, str], str, str] | None:
    """Split a BIDS file name into entities, suffix and extension.

    Parameters
    ----------
    name : str or Path
        File name (folders are ignored).

    Returns
    -------
    (entities, suffix, extension) or None
        ``({"sub": "01", "echo": "2", ...}, "MEGRE", ".nii.gz")``; None when the name is not of
        the form ``key-value_..._suffix.ext``.
    """
    stem, ext = _strip_ext(Path(name).name)
    pieces = stem.split("_")
    if not pieces or not pieces[-1] or "-" in pieces[-1]:
        return None
    ents: dict[str, str] = {}
    for piece in pieces[:-1]:
        key, sep, value = piece.partition("-")
        if not sep or not key or not value or key in ents:
            return None
        ents[key] = value
    return ents, pieces[-1], ext


# --------------------------------------------------------------------------------------------
# folders and sidecars


def _dataset_root(bids_dir: str | Path) -> Path:
    root = Path(bids_dir)
    if not root.exists():
        raise InputError("BIDS dataset folder not found", root)
    if not root.is_dir():
        raise InputError("expected a BIDS dataset folder, found a file", root)
    return root


def list_subjects(bids_dir: str | Path) -> list[tuple[str, str | None]]:
    """List the (subject, session) pairs of a BIDS dataset.

    Parameters
    ----------
    bids_dir : str or Path
        Dataset root.

    Returns
    -------
    list of (str, str or None)
        Subject and session labels without their ``sub-``/``ses-`` prefixes, sorted; session is
        None for subjects without session folders.

    Raises
    ------
    InputError
        The folder does not exist.
    """
    root = _dataset_root(bids_dir)
    pairs: list[tuple[str, str | None]] = []
    for sub in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        label = sub.name[4:]
        sessions = sorted(p.name[4:] for p in sub.glob("ses-*") if p.is_dir())
        if sessions:
            pairs.extend((label, ses) for ses in sessions)
        else:
            pairs.append((label, None))
    return pairs


def _subject_dir(root: Path, subject: str, session: str | None) -> tuple[Path, str, str | None]:
    """Return the folder holding the datatype folders of a subject (and session)."""
    sub = _label(subject, "sub", "subject")
    sub_dir = root / f"sub-{sub}"
    if not sub_dir.is_dir():
        found = [f"{s}" + (f"/ses-{t}" if t else "") for s, t in list_subjects(root)]
        raise InputError(
            f"subject sub-{sub} not found; subjects in the dataset: "
            f"{', '.join(found[:20]) or 'none'}",
            root,
        )
    sessions = sorted(p.name[4:] for p in sub_dir.glob("ses-*") if p.is_dir())
    if session is not None:
        ses = _label(session, "ses", "session")
        ses_dir = sub_dir / f"ses-{ses}"
        if not ses_dir.is_dir():
            raise InputError(
                f"session ses-{ses} not found for sub-{sub}; sessions: "
                f"{', '.join(sessions) or 'none'}",
                sub_dir,
            )
        return ses_dir, sub, ses
    if sessions and not (sub_dir / "anat").is_dir():
        if len(sessions) == 1:
            logger.info("sub-%s has one session, ses-%s; using it", sub, sessions[0])
            return sub_dir / f"ses-{sessions[0]}", sub, sessions[0]
        raise InputError(
            f"sub-{sub} has several sessions ({', '.join(sessions)}); say which one", sub_dir
        )
    return sub_dir, sub, None


def inherited_sidecar(image: str | Path, root: str | Path | None = None) -> tuple[dict, list[Path]]:
    """Merge the JSON metadata that applies to an image (BIDS inheritance principle).

    JSON files with the same suffix whose entities are a subset of the image's, found in the
    dataset root, the subject and session folders and the image's own folder, are applied from
    the top of the tree down; within a folder, files with fewer entities first. The image's own
    sidecar (same name) comes last and wins.

    Parameters
    ----------
    image : str or Path
        BIDS image file.
    root : str or Path, optional
        Dataset root; default: three folders up from ``anat`` (or four with sessions).

    Returns
    -------
    metadata : dict
        Merged key-value pairs.
    sources : list of Path
        The JSON files used, in the order they were applied.
    """
    image = Path(image)
    parsed = parse_bids_name(image)
    own = sidecar_path(image)
    if parsed is None:
        return (read_json(own), [own]) if own.exists() else ({}, [])
    ents, suffix, _ = parsed
    folders: list[Path] = []
    folder = image.parent
    root_p = Path(root) if root is not None else None
    for _ in range(4):
        folders.insert(0, folder)
        if root_p is not None and folder.resolve() == root_p.resolve():
            break
        if root_p is None and (folder / "dataset_description.json").exists():
            break
        folder = folder.parent
    merged: dict[str, Any] = {}
    used: list[Path] = []
    for folder in folders:
        candidates = []
        for js in folder.glob(f"*{suffix}.json"):
            p = parse_bids_name(js)
            if p is None or p[1] != suffix:
                continue
            if all(ents.get(k) == v for k, v in p[0].items()):
                candidates.append((len(p[0]), js.name, js))
        for _, _, js in sorted(candidates):
            merged.update(read_json(js))
            used.append(js)
    return merged, used


def derivatives_dir(
    deriv_dir: str | Path, subject: str, session: str | None = None, create: bool = False
) -> Path:
    """A subject's folder in qsmiron's BIDS derivatives: ``DERIV/qsmiron/sub-X[/ses-Y]``.

    Parameters
    ----------
    deriv_dir : str or Path
        The derivatives folder given to the commands.
    subject, session : str
        Labels, with or without ``sub-`` / ``ses-``.
    create : bool
        Write ``DERIV/qsmiron/dataset_description.json`` (GeneratedBy qsmiron) if missing.

    Returns
    -------
    Path
        The subject (or session) folder; ``anat/`` and ``figures/`` go inside.
    """
    from qsmiron import __version__

    root = Path(deriv_dir) / "qsmiron"
    if create:
        write_dataset_description(
            root, "qsmiron derivatives", dataset_type="derivative",
            generated_by=[{"Name": "qsmiron", "Version": __version__}], overwrite=False,
        )
    sub = _label(subject, "sub", "subject")
    folder = root / f"sub-{sub}"
    if session:
        folder = folder / f"ses-{_label(session, 'ses', 'session')}"
    return folder


def write_dataset_description(
    root: str | Path,
    name: str,
    dataset_type: str = "raw",
    generated_by: Sequence[Mapping[str, Any]] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``dataset_description.json`` at the root of a BIDS (or derivative) dataset.

    Parameters
    ----------
    root : str or Path
        Dataset root, created if needed.
    name : str
        Dataset name.
    dataset_type : {"raw", "derivative"}
        BIDS ``DatasetType``.
    generated_by : sequence of mappings, optional
        BIDS ``GeneratedBy``; for derivatives the default names qsmiron and its version.
    overwrite : bool
        If False and the file exists, leave it alone.

    Returns
    -------
    Path
        The file.

    Raises
    ------
    InputError
        ``dataset_type`` is neither "raw" nor "derivative".
    """
    if dataset_type not in ("raw", "derivative"):
        raise InputError(f"dataset_type must be 'raw' or 'derivative', got {dataset_type!r}")
    path = Path(root) / "dataset_description.json"
    if path.exists() and not overwrite:
        return path
    content: dict[str, Any] = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": dataset_type,
    }
    if generated_by is not None:
        content["GeneratedBy"] = [dict(g) for g in generated_by]
    elif dataset_type == "derivative":
        content["GeneratedBy"] = [{"Name": "qsmiron", "Version": __version__}]
    return write_json(path, content)


# --------------------------------------------------------------------------------------------
# the multi-echo GRE container


@dataclass
class MultiEchoGRE:
    """A multi-echo gradient-echo acquisition, ready for reconstruction.

    Attributes
    ----------
    magnitude : (X, Y, Z, E) float32 array
        Magnitude per echo (arbitrary units, non-negative).
    phase : (X, Y, Z, E) float32 array
        Phase per echo in radians, ``[-pi, pi)``.
    te : (E,) float64 array
        Echo times in seconds, strictly increasing.
    b0 : float or None
        Main field in tesla, None if unknown.
    affine : (4, 4) float64 array
        Voxel-to-world (RAS+, mm) transform.
    voxel_size : (3,) float64 array
        Voxel size in mm.
    b0_dir : (3,) float64 array
        Unit vector of B0 in the voxel frame.
    sources : list of Path
        Files the data came from.
    metadata : dict
        The first echo's (merged) sidecar, plus ``"PhaseScaling"`` describing how the phase
        was converted to radians.
    """

    magnitude: np.ndarray
    phase: np.ndarray
    te: np.ndarray
    b0: float | None
    affine: np.ndarray
    voxel_size: np.ndarray = field(default=None)  # type: ignore[assignment]
    b0_dir: np.ndarray = field(default=None)  # type: ignore[assignment]
    sources: list[Path] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.magnitude = np.asarray(self.magnitude, dtype=np.float32)
        self.phase = np.asarray(self.phase, dtype=np.float32)
        if self.magnitude.ndim == 3:
            self.magnitude = self.magnitude[..., None]
        if self.phase.ndim == 3:
            self.phase = self.phase[..., None]
        if self.magnitude.ndim != 4 or self.magnitude.shape != self.phase.shape:
            raise InputError(
                f"magnitude {self.magnitude.shape} and phase {self.phase.shape} must be "
                "(X, Y, Z, echoes) arrays of the same shape"
            )
        self.te = _check_te(self.te, self.magnitude.shape[3])
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise InputError(f"affine must be 4x4, got shape {self.affine.shape}")
        if self.voxel_size is None:
            self.voxel_size = voxel_size(self.affine)
        self.voxel_size = np.asarray(self.voxel_size, dtype=np.float64)
        if self.b0_dir is None:
            self.b0_dir = b0_direction(self.affine)
        self.b0_dir = np.asarray(self.b0_dir, dtype=np.float64)
        if self.b0 is not None:
            self.b0 = _check_b0(self.b0)
        self.sources = [Path(s) for s in self.sources]

    @property
    def n_echoes(self) -> int:
        """Number of echoes."""
        return int(self.magnitude.shape[3])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (X, Y, Z)."""
        return tuple(int(n) for n in self.magnitude.shape[:3])  # type: ignore[return-value]

    def complex(self) -> np.ndarray:
        """The complex signal ``magnitude * exp(i * phase)`` as complex64, (X, Y, Z, E)."""
        out = np.exp(1j * self.phase.astype(np.complex64))
        out *= self.magnitude
        return out.astype(np.complex64, copy=False)


def _check_te(te: Any, n_echoes: int | None = None, path: Path | None = None) -> np.ndarray:
    """Echo times in seconds: finite, positive, strictly increasing, not in milliseconds."""
    try:
        arr = np.atleast_1d(np.asarray(te, dtype=np.float64))
    except (TypeError, ValueError):
        raise InputError(f"echo times must be numbers in seconds, got {te!r}", path) from None
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"echo times must be a 1D list, got {te!r}", path)
    if n_echoes is not None and arr.size != n_echoes:
        raise InputError(f"{arr.size} echo times given for {n_echoes} echoes", path)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(
            f"echo times must be positive numbers of seconds, got {arr.tolist()}", path
        )
    if np.any(arr > _MAX_TE_S):
        raise InputError(
            f"echo times {arr.tolist()} look like milliseconds; give them in seconds "
            f"(e.g. {arr[0] / 1000:g} instead of {arr[0]:g})",
            path,
        )
    if np.any(np.diff(arr) <= 0):
        raise InputError(f"echo times must be strictly increasing, got {arr.tolist()} s", path)
    return arr


def _check_b0(b0: Any, path: Path | None = None) -> float:
    try:
        value = float(b0)
    except (TypeError, ValueError):
        raise InputError(
            f"MagneticFieldStrength must be a number of tesla, got {b0!r}", path
        ) from None
    if not np.isfinite(value) or not 0.0 < value <= 21.1:
        raise InputError(
            f"MagneticFieldStrength {value:g} T is not a plausible field in tesla", path
        )
    return value


def _check_magnitude(mag: np.ndarray, path: Path | None) -> None:
    """Refuse a 'magnitude' that has many negative values: it is probably a phase image."""
    neg = float(np.count_nonzero(mag < 0)) / max(mag.size, 1)
    if neg > _MAX_NEGATIVE_FRACTION:
        raise InputError(
            f"magnitude image has {neg:.0%} negative values (range {float(mag.min()):.4g}.."
            f"{float(mag.max()):.4g}); it looks like a phase image: magnitude and phase may be "
            "swapped",
            path,
        )
    if neg > 0:
        logger.warning("%s: %.2g%% of magnitude voxels are negative", path, 100 * neg)


def _same_grid(
    ref_affine: np.ndarray, ref_path: Path, affine: np.ndarray, path: Path, what: str
) -> None:
    if not np.allclose(affine, ref_affine, atol=1e-3, rtol=1e-5):
        raise InputError(
            f"{what} affine differs from that of {ref_path.name}; all echoes and the magnitude "
            f"and phase must share one voxel grid (max difference "
            f"{float(np.abs(affine - ref_affine).max()):.3g} mm)",
            path,
        )


def _load_echo(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data, affine, _ = load_nifti(path, ndim=(3, 4))
    if data.ndim == 4:
        if data.shape[3] != 1:
            raise InputError(
                f"expected one 3D volume per echo file, found shape {data.shape}", path
            )
        data = data[..., 0]
    return data, affine


def _finish_phase(
    raw: np.ndarray,
    path: Path,
    phase_scale: Any,
    sidecar: Mapping[str, Any],
) -> tuple[np.ndarray, PhaseScaling]:
    units = str(sidecar.get("Units", "")).strip().lower()
    if (
        isinstance(phase_scale, str)
        and phase_scale == "auto"
        and units in ("rad", "radian", "radians")
    ):
        phase, scaling = phase_to_radians(raw, path, "rad")
        scaling = PhaseScaling(
            scaling.kind, scaling.lo, scaling.hi, scaling.offset, scaling.period, source="sidecar"
        )
        return phase, scaling
    return phase_to_radians(raw, path, phase_scale)


def _build(
    mags: list[tuple[np.ndarray, np.ndarray, Path]],
    phases: list[tuple[np.ndarray, np.ndarray, Path]] | None,
    te: np.ndarray,
    b0: float | None,
    phase_scale: Any,
    phase_sidecar: Mapping[str, Any],
    metadata: dict[str, Any],
    complex_parts: list[tuple[np.ndarray, np.ndarray, Path]] | None = None,
) -> MultiEchoGRE:
    """Check grids and values of per-echo volumes, stack them and convert the phase."""
    ref_shape, ref_affine, ref_path = mags[0][0].shape, mags[0][1], mags[0][2]
    sources: list[Path] = []
    volumes = [(v, "magnitude" if complex_parts is None else "real") for v in mags]
    volumes += [(v, "phase" if complex_parts is None else "imaginary") for v in (phases or [])]
    for (data, affine, path), what in volumes:
        if data.shape != ref_shape:
            raise InputError(
                f"{what} image shape {data.shape} differs from {ref_shape} of {ref_path.name}; "
                "all echoes and the magnitude and phase must share one voxel grid",
                path,
            )
        _same_grid(ref_affine, ref_path, affine, path, what)
        sources.append(path)
    if complex_parts is not None:
        real = np.stack([m[0] for m in mags], axis=-1)
        imag = np.stack([p[0] for p in (phases or [])], axis=-1)
        z = real.astype(np.complex64) + 1j * imag.astype(np.complex64)
        magnitude = np.abs(z).astype(np.float32)
        phase = wrap_to_pi(np.angle(z))
        scaling = PhaseScaling("complex", -np.pi, np.pi, 0.0, 2 * np.pi, source="auto")
    else:
        for data, _, path in mags:
            _check_magnitude(data, path)
        magnitude = np.stack([m[0] for m in mags], axis=-1).astype(np.float32, copy=False)
        raw = np.stack([p[0] for p in (phases or [])], axis=-1)
        phase_path = (phases or [])[0][2]
        phase, scaling = _finish_phase(raw, phase_path, phase_scale, phase_sidecar)
    metadata = dict(metadata)
    metadata["PhaseScaling"] = scaling.as_dict()
    return MultiEchoGRE(
        magnitude=magnitude,
        phase=phase,
        te=te,
        b0=b0,
        affine=ref_affine,
        sources=sources,
        metadata=metadata,
    )


# --------------------------------------------------------------------------------------------
# readers


def _select(
    files: list[tuple[Path, dict[str, str]]], key: str, value: str | None, where: Path
) -> list[tuple[Path, dict[str, str]]]:
    """Keep files whose entity ``key`` equals ``value``; with no value, insist on one choice."""
    if value == "":
        return [(p, e) for p, e in files if key not in e]
    if value is not None:
        want = _label(value, key, key)
        if key == "run" and want.isdigit():  # an index: run-1 and run-01 are the same run
            return [
                (p, e) for p, e in files if e.get(key, "").isdigit() and int(e[key]) == int(want)
            ]
        return [(p, e) for p, e in files if e.get(key) == want]
    values = sorted({e.get(key, "") for _, e in files})
    if len(values) > 1:
        shown = ", ".join(f"{key}-{v}" if v else f"(no {key})" for v in values)
        raise InputError(
            f"several multi-echo GRE series differ in '{key}' ({shown}); say which one "
            f"({key}=<label>, or {key}='' for the one without)",
            where,
        )
    return files


def read_megre_bids(
    bids_dir: str | Path,
    subject: str,
    session: str | None = None,
    acq: str | None = None,
    run: str | int | None = None,
    phase_scale: str | tuple[float, float] = "auto",
) -> MultiEchoGRE:
    """Read a multi-echo GRE series from a BIDS dataset.

    Looks for ``sub-<subject>[/ses-<session>]/anat/*_echo-<n>_part-{mag,phase}_MEGRE.nii[.gz]``
    (or ``part-real``/``part-imag`` pairs, converted to magnitude and phase) with JSON sidecars
    giving ``EchoTime`` (s) and ``MagneticFieldStrength`` (T), merged by BIDS inheritance.

    Parameters
    ----------
    bids_dir : str or Path
        Dataset root.
    subject : str
        Subject label, with or without ``sub-``.
    session : str, optional
        Session label; needed only when the subject has several sessions.
    acq, run : str, optional
        Entities selecting one series when there are several; ``""`` selects the series
        without that entity.
    phase_scale : {"auto", "rad"} or (lo, hi)
        How the stored phase maps to radians; see :func:`qsmiron.io.phase.phase_to_radians`.
        With "auto", a phase sidecar saying ``"Units": "rad"`` is honoured.

    Returns
    -------
    MultiEchoGRE
        Echoes in echo-number order; ``metadata`` is the first magnitude echo's merged sidecar
        plus ``"PhaseScaling"``.

    Raises
    ------
    InputError
        Dataset, subject, session or series missing; echoes missing or unpaired; shapes or
        affines differing; echo times missing, not increasing or in milliseconds; NaNs;
        unreadable files; magnitude and phase swapped; phase scaling ambiguous.
    """
    root = _dataset_root(bids_dir)
    base, sub, ses = _subject_dir(root, subject, session)
    anat = base / "anat"
    if not anat.is_dir():
        raise InputError(f"no anat folder for sub-{sub}", base)
    files: list[tuple[Path, dict[str, str]]] = []
    for path in sorted(anat.iterdir()):
        if not path.name.endswith(_IMAGE_EXTS):
            continue
        parsed = parse_bids_name(path)
        if parsed is None or parsed[1] != "MEGRE":
            continue
        files.append((path, parsed[0]))
    if not files:
        raise InputError(
            f"no multi-echo GRE images (*_echo-<n>_part-mag_MEGRE.nii.gz) for sub-{sub}", anat
        )
    files = _select(files, "acq", acq, anat)
    files = _select(files, "run", None if run is None else str(run), anat)
    if not files:
        raise InputError(f"no multi-echo GRE images with acq={acq!r}, run={run!r}", anat)

    table: dict[tuple[int, str], Path] = {}
    for path, ents in files:
        if "echo" not in ents or not ents["echo"].isdigit():
            raise InputError("multi-echo GRE file has no echo-<n> entity", path)
        part = ents.get("part")
        if part not in ("mag", "phase", "real", "imag"):
            raise InputError(
                f"multi-echo GRE file has part-{part}; expected part-mag, part-phase, part-real "
                "or part-imag",
                path,
            )
        key = (int(ents["echo"]), part)
        if key in table:
            raise InputError(
                f"two files for echo-{key[0]} part-{part}: {table[key].name} and {path.name}", path
            )
        table[key] = path

    echoes = sorted({e for e, _ in table})
    expected = list(range(1, max(echoes) + 1))
    missing = [e for e in expected if e not in echoes]
    if missing:
        raise InputError(
            f"echo(es) {', '.join(f'echo-{e}' for e in missing)} missing: found "
            f"{', '.join(f'echo-{e}' for e in echoes)} of the multi-echo GRE series of sub-{sub}",
            anat,
        )
    has_magphase = any(p in ("mag", "phase") for _, p in table)
    pair = ("mag", "phase") if has_magphase else ("real", "imag")
    for e in echoes:
        if (e, pair[0]) not in table and (e, pair[1]) not in table:
            parts = ", ".join(f"part-{p}" for (n, p) in sorted(table) if n == e)
            raise InputError(
                f"echo-{e} has {parts} but the other echoes have part-{pair[0]}/part-{pair[1]}; "
                "all echoes must be stored the same way",
                anat,
            )
        for have_part, lacking in ((pair[0], pair[1]), (pair[1], pair[0])):
            have = table.get((e, have_part))
            if have is not None and (e, lacking) not in table:
                expected_name = have.name.replace(f"part-{have_part}", f"part-{lacking}")
                raise InputError(
                    f"echo-{e} has part-{have_part} but no matching part-{lacking} file "
                    f"(expected {expected_name})",
                    have,
                )

    te: list[float] = []
    first_meta: dict[str, Any] = {}
    phase_meta: dict[str, Any] = {}
    for e in echoes:
        path_a, path_b = table[(e, pair[0])], table[(e, pair[1])]
        meta_a, used_a = inherited_sidecar(path_a, root)
        meta_b, _ = inherited_sidecar(path_b, root)
        if "EchoTime" not in meta_a:
            where = used_a[-1] if used_a else sidecar_path(path_a)
            what = "sidecar has no EchoTime" if used_a else "no JSON sidecar with EchoTime"
            raise InputError(f"{what} for {path_a.name}; EchoTime (seconds) is required", where)
        t = meta_a["EchoTime"]
        te_path = next(js for js in reversed(used_a) if "EchoTime" in read_json(js))
        _check_te([t], path=te_path)
        if "EchoTime" in meta_b:
            tb = meta_b["EchoTime"]
            try:
                differs = abs(float(tb) - float(t)) > 1e-6
            except (TypeError, ValueError):
                differs = True
            if differs:
                raise InputError(
                    f"EchoTime {tb} differs from {t} in the sidecar of {path_a.name}",
                    sidecar_path(path_b),
                )
        if te and float(t) <= te[-1]:
            raise InputError(
                f"EchoTime {float(t):g} s of echo-{e} is not larger than {te[-1]:g} s of "
                f"echo-{e - 1}; echo times must increase with the echo number",
                te_path,
            )
        te.append(float(t))
        if e == 1:
            first_meta, phase_meta = meta_a, meta_b

    b0 = first_meta.get("MagneticFieldStrength")
    first_path = table[(1, pair[0])]
    if b0 is not None:
        b0 = _check_b0(b0, sidecar_path(first_path))
    else:
        logger.warning("%s: no MagneticFieldStrength in the sidecar; B0 unknown", first_path)

    vols_a = [(*_load_echo(table[(e, pair[0])]), table[(e, pair[0])]) for e in echoes]
    vols_b = [(*_load_echo(table[(e, pair[1])]), table[(e, pair[1])]) for e in echoes]
    return _build(
        vols_a,
        vols_b,
        np.asarray(te),
        b0,
        phase_scale,
        phase_meta,
        first_meta,
        complex_parts=None if has_magphase else vols_a,
    )


def _as_paths(spec: str | Path | Sequence[str | Path], what: str) -> list[Path]:
    if isinstance(spec, (str, Path)):
        return [Path(spec)]
    paths = [Path(p) for p in spec]
    if not paths:
        raise InputError(f"no {what} files given")
    return paths


def _load_series(paths: list[Path], what: str) -> list[tuple[np.ndarray, np.ndarray, Path]]:
    if len(paths) == 1:
        data, affine, _ = load_nifti(paths[0], ndim=(3, 4))
        if data.ndim == 3:
            return [(data, affine, paths[0])]
        return [(data[..., i], affine, paths[0]) for i in range(data.shape[3])]
    return [(*_load_echo(p), p) for p in paths]


def read_megre_nifti(
    magnitude: str | Path | Sequence[str | Path],
    phase: str | Path | Sequence[str | Path],
    te: Sequence[float],
    b0: float | None = None,
    phase_scale: str | tuple[float, float] = "auto",
) -> MultiEchoGRE:
    """Read multi-echo GRE data from plain NIfTI files and echo times given by the caller.

    Parameters
    ----------
    magnitude, phase : path or sequence of paths
        One 4D image (X, Y, Z, echoes) or one 3D image per echo, in echo order.
    te : sequence of float
        Echo times in seconds, one per echo, strictly increasing.
    b0 : float, optional
        Field strength in tesla; if None, taken from the magnitude's JSON sidecar if it has
        ``MagneticFieldStrength``.
    phase_scale : {"auto", "rad"} or (lo, hi)
        How the stored phase maps to radians; see :func:`qsmiron.io.phase.phase_to_radians`.

    Returns
    -------
    MultiEchoGRE
        The data; ``metadata`` is the magnitude's sidecar (if any) plus ``"PhaseScaling"``.

    Raises
    ------
    InputError
        Files missing, unreadable or holding NaNs; echo counts, shapes or affines differing;
        echo times wrong (count, order, milliseconds); magnitude and phase swapped; phase
        scaling ambiguous.
    """
    mag_paths = _as_paths(magnitude, "magnitude")
    phase_paths = _as_paths(phase, "phase")
    mags = _load_series(mag_paths, "magnitude")
    phases = _load_series(phase_paths, "phase")
    if len(mags) != len(phases):
        raise InputError(
            f"{len(mags)} magnitude echoes but {len(phases)} phase echoes", phase_paths[0]
        )
    te_arr = _check_te(te, len(mags), mag_paths[0])
    meta: dict[str, Any] = {}
    side = sidecar_path(mag_paths[0])
    if side.exists():
        meta = read_json(side)
    if b0 is None and "MagneticFieldStrength" in meta:
        b0 = meta["MagneticFieldStrength"]
    b0_val = None if b0 is None else _check_b0(b0, side if side.exists() else None)
    phase_side = sidecar_path(phase_paths[0])
    phase_meta = read_json(phase_side) if phase_side.exists() else {}
    return _build(mags, phases, te_arr, b0_val, phase_scale, phase_meta, meta)


def read_bids_anat(
    bids_dir: str | Path,
    subject: str,
    suffix: str,
    session: str | None = None,
    entities: Mapping[str, str | int] | None = None,
) -> tuple[np.ndarray, np.ndarray, Path]:
    """Read one anatomical image (e.g. T1w, FLAIR) of a subject from a BIDS dataset.

    The file whose entities (besides ``sub``/``ses``) equal ``entities`` exactly is chosen; if
    there is none, a single file that differs only by ``acq``, ``run`` or ``rec`` is accepted.
    A post-contrast ``ce-`` image is never taken for a plain one.

    Parameters
    ----------
    bids_dir : str or Path
        Dataset root.
    subject : str
        Subject label, with or without ``sub-``.
    suffix : str
        ``"T1w"``, ``"FLAIR"``, ``"T2w"``, ...
    session : str, optional
        Session label.
    entities : mapping, optional
        E.g. ``{"ce": "gadolinium"}``.

    Returns
    -------
    data : float32 ndarray
        Voxel values.
    affine : (4, 4) array
        Voxel-to-world transform.
    path : Path
        The file read.

    Raises
    ------
    InputError
        Dataset, subject or image missing, several candidates, or the image unreadable.
    """
    root = _dataset_root(bids_dir)
    base, sub, _ = _subject_dir(root, subject, session)
    anat = base / "anat"
    want = {k: _label(v, k, k) for k, v in (entities or {}).items()}
    exact: list[Path] = []
    loose: list[Path] = []
    present: list[str] = []
    if anat.is_dir():
        for path in sorted(anat.iterdir()):
            if not path.name.endswith(_IMAGE_EXTS):
                continue
            present.append(path.name)
            parsed = parse_bids_name(path)
            if parsed is None or parsed[1] != suffix:
                continue
            ents = {k: v for k, v in parsed[0].items() if k not in ("sub", "ses")}
            if ents == want:
                exact.append(path)
            elif all(ents.get(k) == v for k, v in want.items()) and set(ents) - set(want) <= {
                "acq",
                "run",
                "rec",
            }:
                loose.append(path)
    label = "_".join([f"{k}-{v}" for k, v in want.items()] + [suffix])
    if len(exact) > 1:
        raise InputError(f"several files match {label}: {', '.join(p.name for p in exact)}", anat)
    if not exact and len(loose) > 1:
        raise InputError(
            f"several files match {label}: {', '.join(p.name for p in loose)}; give acq/run",
            anat,
        )
    chosen = exact or loose
    if not chosen:
        raise InputError(
            f"no {label} image for sub-{sub}; anat holds: {', '.join(present) or 'nothing'}",
            anat if anat.is_dir() else base,
        )
    data, affine, _ = load_nifti(chosen[0])
    return data, affine, chosen[0]


# --------------------------------------------------------------------------------------------
# writers


def _anat_dir(
    bids_dir: str | Path, subject: str, session: str | None
) -> tuple[Path, str, str | None]:
    sub = _label(subject, "sub", "subject")
    ses = None if session is None else _label(session, "ses", "session")
    folder = Path(bids_dir) / f"sub-{sub}"
    if ses is not None:
        folder = folder / f"ses-{ses}"
    return folder / "anat", sub, ses


def write_megre_bids(
    bids_dir: str | Path,
    subject: str,
    magnitude: np.ndarray,
    phase: np.ndarray,
    te: Sequence[float],
    affine: np.ndarray,
    b0: float | None = 3.0,
    session: str | None = None,
    sidecar: Mapping[str, Any] | None = None,
    acq: str | None = None,
    run: int | str | None = None,
) -> list[Path]:
    """Write a multi-echo GRE series into a BIDS dataset, one file per echo and part.

    Phase is stored in radians as float32, wrapped onto ``[-pi, pi)``, with ``"Units": "rad"``
    in its sidecar. Every file is written atomically; ``dataset_description.json`` is created
    if the dataset has none.

    Parameters
    ----------
    bids_dir : str or Path
        Dataset root (created if needed).
    subject : str
        Subject label, with or without ``sub-``.
    magnitude, phase : (X, Y, Z, E) or (X, Y, Z) arrays
        Magnitude and phase (radians) per echo.
    te : sequence of float
        Echo times in seconds, strictly increasing.
    affine : (4, 4) array
        Voxel-to-world transform.
    b0 : float or None
        Field strength in tesla, written as ``MagneticFieldStrength``; if None, the value in
        ``sidecar`` is used if there is one.
    session, acq, run : optional
        BIDS entities.
    sidecar : mapping, optional
        Extra sidecar entries (e.g. ``RepetitionTime``, ``FlipAngle``); ``EchoTime``,
        ``EchoNumber``, ``MagneticFieldStrength`` and the phase ``Units`` are set by qsmiron.

    Returns
    -------
    list of Path
        The images written, ``[echo-1 mag, echo-1 phase, echo-2 mag, ...]``.

    Raises
    ------
    InputError
        Shapes differ, the echo times are wrong, values are not finite, or a label is invalid.
    """
    mag = np.asarray(magnitude)
    pha = np.asarray(phase)
    if mag.ndim == 3:
        mag = mag[..., None]
    if pha.ndim == 3:
        pha = pha[..., None]
    if mag.ndim != 4 or mag.shape != pha.shape:
        raise InputError(
            f"magnitude {np.shape(magnitude)} and phase {np.shape(phase)} must be (X, Y, Z, "
            "echoes) arrays of the same shape"
        )
    te_arr = _check_te(te, mag.shape[3])
    if not (np.all(np.isfinite(mag)) and np.all(np.isfinite(pha))):
        raise InputError("magnitude or phase holds NaN or infinite values; nothing written")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InputError(f"affine must be 4x4, got shape {affine.shape}")
    b0_val = None if b0 is None else _check_b0(b0)
    anat, sub, ses = _anat_dir(bids_dir, subject, session)
    ents: dict[str, Any] = {}
    if acq is not None:
        ents["acq"] = acq
    if run is not None:
        ents["run"] = run
    extra = dict(sidecar or {})
    if b0_val is None and extra.get("MagneticFieldStrength") is not None:
        b0_val = _check_b0(extra["MagneticFieldStrength"])
    for key, ours in (
        ("EchoTime", None),
        ("EchoNumber", None),
        ("Units", None),
        ("MagneticFieldStrength", b0_val),
    ):
        if key in extra:
            theirs = extra.pop(key)
            if theirs != ours:
                logger.warning("sidecar entry %s=%r ignored: set by write_megre_bids", key, theirs)
    write_dataset_description(bids_dir, "qsmiron dataset", "raw", overwrite=False)
    written: list[Path] = []
    for i in range(mag.shape[3]):
        common: dict[str, Any] = {**extra, "EchoTime": float(te_arr[i]), "EchoNumber": i + 1}
        if b0_val is not None:
            common["MagneticFieldStrength"] = b0_val
        for part, vol, more in (
            ("mag", mag[..., i].astype(np.float32), {}),
            ("phase", wrap_to_pi(pha[..., i]), {"Units": "rad"}),
        ):
            name = bids_name(sub, "MEGRE", ses, {**ents, "echo": i + 1, "part": part})
            written.append(
                save_nifti(anat / name, vol, affine, sidecar={**common, **more}, dtype=np.float32)
            )
    logger.info("wrote %d-echo GRE for sub-%s to %s", mag.shape[3], sub, anat)
    return written


def write_bids_anat(
    bids_dir: str | Path,
    subject: str,
    suffix: str,
    data: np.ndarray,
    affine: np.ndarray,
    session: str | None = None,
    entities: Mapping[str, str | int] | None = None,
    sidecar: Mapping[str, Any] | None = None,
) -> Path:
    """Write one anatomical image into a BIDS dataset (atomically).

    Parameters
    ----------
    bids_dir : str or Path
        Dataset root.
    subject : str
        Subject label, with or without ``sub-``.
    suffix : str
        ``"T1w"``, ``"FLAIR"``, ``"T2w"``, ``"MEGRE"``, ...
    data : ndarray
        Voxel values.
    affine : (4, 4) array
        Voxel-to-world transform.
    session : str, optional
        Session label.
    entities : mapping, optional
        Further entities, e.g. ``{"ce": "gadolinium"}`` for a post-contrast T1w, written in BIDS
        order (sub, ses, acq, ce, rec, run, echo, part, ...).
    sidecar : mapping, optional
        JSON sidecar content; none is written if None.

    Returns
    -------
    Path
        The image written, e.g. ``sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz``.

    Raises
    ------
    InputError
        Unknown entity or invalid label.
    """
    anat, sub, ses = _anat_dir(bids_dir, subject, session)
    path = anat / bids_name(sub, suffix, ses, entities)
    return save_nifti(path, data, affine, sidecar=sidecar)
