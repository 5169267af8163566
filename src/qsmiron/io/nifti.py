"""NIfTI and JSON reading and writing: the only place where image files are touched.

Every writer is atomic: data go to a temporary file in the destination folder, which is then
renamed over the target, so that a crash never leaves a half-written file that a later run
could trust. Every reader turns a low-level failure (missing, truncated, not NIfTI, NaNs) into
an :class:`~qsmiron.errors.InputError` naming the file.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from qsmiron import __version__
from qsmiron.errors import InputError

__all__ = [
    "atomic_write_bytes",
    "b0_direction",
    "load_nifti",
    "read_json",
    "save_nifti",
    "voxel_size",
    "write_json",
    "write_tsv",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    path : str or Path
        Destination file. Its parent folders are created.
    data : bytes
        Content.

    Returns
    -------
    Path
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are shared like any file
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN: a missing measure is null
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, content: Mapping[str, Any], add_version: bool = False) -> Path:
    """Write a JSON file atomically, keys in insertion order, numpy values converted, NaN and
    infinite numbers as null (JSON has no NaN: a measure that could not be made).

    Parameters
    ----------
    path : str or Path
        Destination ``.json`` file.
    content : mapping
        What to write.
    add_version : bool
        Add ``{"GeneratedBy": [{"Name": "qsmiron", "Version": ...}]}`` if not present.

    Returns
    -------
    Path
        The destination path.
    """
    content = dict(_jsonable(content))
    if add_version and "GeneratedBy" not in content:
        content["GeneratedBy"] = [{"Name": "qsmiron", "Version": __version__}]
    text = json.dumps(content, indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_tsv(path: str | Path, table: Any) -> Path:
    """Write a pandas DataFrame as a BIDS-style TSV atomically (``n/a`` for missing values).

    Parameters
    ----------
    path : str or Path
        Destination ``.tsv`` file.
    table : pandas.DataFrame
        The table; its index is not written.

    Returns
    -------
    Path
        The destination path.
    """
    text = table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g",
                        lineterminator="\n")
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object, raising :class:`InputError` naming the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("JSON file not found", path) from None
    except OSError as exc:
        raise InputError(f"cannot read JSON file ({exc.strerror})", path) from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path) from None
    if not isinstance(content, dict):
        raise InputError(f"expected a JSON object, found {type(content).__name__}", path)
    return content


def read_toml(path: str | Path, what: str = "file") -> dict[str, Any]:
    """Read a TOML file, raising :class:`InputError` naming it on any problem.

    Parameters
    ----------
    path : str or Path
        The file.
    what : str
        What it is, for messages ("config file", "spec file", ...).
    """
    import tomllib

    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(f"{what} not found", path) from None
    except OSError as exc:
        raise InputError(f"cannot read {what} ({exc.strerror})", path) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML ({exc})", path) from None


def voxel_size(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along the three voxel axes, from the columns of an affine.

    Parameters
    ----------
    affine : (4, 4) array
        Voxel-to-world (RAS+, mm) transform.

    Returns
    -------
    (3,) float64 array
        Lengths of the first three columns of ``affine[:3, :3]``.
    """
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def b0_direction(
    affine: np.ndarray, b0_world: tuple[float, float, float] = (0.0, 0.0, 1.0)
) -> np.ndarray:
    """Unit vector of the main field B0 in the voxel-axis frame of an image.

    NIfTI world coordinates are the scanner's patient coordinates (RAS+), whose third axis is the
    magnet bore, so B0 is along world z. Its direction in the frame of the voxel axes is
    ``R^T b0_world`` where ``R`` is the rotation part of the affine (polar decomposition, so shears
    and voxel scaling are removed). For an axial acquisition this is ``(0, 0, +-1)``; an oblique
    slab gives a non-axis-aligned vector.

    Parameters
    ----------
    affine : (4, 4) array
        Voxel-to-world transform.
    b0_world : 3-tuple
        B0 direction in world coordinates; the default is the bore axis.

    Returns
    -------
    (3,) float64 array
        Unit vector, sign chosen so that its largest component is positive (the dipole kernel
        depends on the direction only up to sign).
    """
    m = np.asarray(affine, float)[:3, :3]
    u, _, vt = np.linalg.svd(m)
    rot = u @ vt  # nearest orthogonal matrix: columns are voxel axes in world coordinates
    b = rot.T @ np.asarray(b0_world, float)
    b /= np.linalg.norm(b)
    if b[np.argmax(np.abs(b))] < 0:
        b = -b
    return b


def load_nifti(
    path: str | Path,
    dtype: type | np.dtype | None = np.float32,
    allow_nan: bool = False,
    ndim: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI-1/2 image with scaling applied, checking it fully.

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz`` file.
    dtype : numpy dtype or None
        Output dtype (float32 by default); ``None`` keeps what nibabel returns.
    allow_nan : bool
        If False (default), NaN or infinite voxels raise :class:`InputError`.
    ndim : tuple of int, optional
        Accepted numbers of dimensions, e.g. ``(3,)`` or ``(3, 4)``.

    Returns
    -------
    data : ndarray
        Voxel values.
    affine : (4, 4) float64 array
        Voxel-to-world transform (sform if set, else qform).
    header : nibabel header
        The original header.

    Raises
    ------
    InputError
        The file is missing, unreadable, truncated, not a NIfTI image, of the wrong
        dimensionality or contains NaNs.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("image file not found", path)
    if path.is_dir():
        raise InputError("expected a NIfTI file, found a folder", path)
    try:
        img = nib.load(str(path))
    except nib.filebasedimages.ImageFileError as exc:
        raise InputError(
            f"not a readable NIfTI image: truncated, empty or another format ({exc})", path
        ) from None
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read image header ({exc})", path) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"expected a NIfTI image, found {type(img).__name__}", path)
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(
            f"image data truncated or corrupt ({exc}); expected shape {img.shape}", path
        ) from None
    if dtype is not None:
        data = np.asarray(data, dtype=dtype)
    if ndim is not None and data.ndim not in ndim:
        raise InputError(
            f"expected a {' or '.join(f'{n}D' for n in ndim)} image, found shape {data.shape}", path
        )
    if not allow_nan and np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            raise InputError(
                f"{int(bad.sum())} voxels are NaN or infinite; fix or mask them before use", path
            )
    return data, np.asarray(img.affine, dtype=np.float64), img.header


def save_nifti(
    path: str | Path,
    data: np.ndarray,
    affine: np.ndarray,
    sidecar: Mapping[str, Any] | None = None,
    dtype: type | np.dtype | None = None,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write a NIfTI image (and optionally its JSON sidecar) atomically.

    The image is serialised in memory and written with :func:`atomic_write_bytes`; ``.nii.gz``
    files are gzip-compressed with a zero timestamp so identical data give identical bytes.

    Parameters
    ----------
    path : str or Path
        Destination ``.nii`` or ``.nii.gz``.
    data : ndarray
        Voxel values; booleans are stored as uint8.
    affine : (4, 4) array
        Voxel-to-world transform, written as both sform and qform (code 1, scanner).
    sidecar : mapping, optional
        Written next to the image as ``<stem>.json`` with the qsmiron version added.
    dtype : numpy dtype, optional
        On-disk dtype; default: the data's dtype (float64 is stored as float32).
    header : nibabel header, optional
        Header to start from (e.g. the input's), so units and descriptions carry over.

    Returns
    -------
    Path
        The image path.
    """
    path = Path(path)
    arr = np.asarray(data)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if dtype is None:
        dtype = np.float32 if arr.dtype == np.float64 else arr.dtype
    arr = arr.astype(dtype, copy=False)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(arr, np.asarray(affine, float), header=hdr)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(np.asarray(affine, float), code=1)
    img.set_qform(np.asarray(affine, float), code=1)
    if np.issubdtype(np.dtype(dtype), np.floating):
        img.header.set_slope_inter(1.0, 0.0)
    raw = img.to_bytes()
    name = path.name
    if name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    atomic_write_bytes(path, raw)
    if sidecar is not None:
        write_json(sidecar_path(path), sidecar, add_version=True)
    return path


def sidecar_path(image_path: str | Path) -> Path:
    """The JSON sidecar path of an image: ``x.nii.gz`` -> ``x.json``."""
    p = Path(image_path)
    name = p.name
    for ext in (".nii.gz", ".nii", ".mgz"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_suffix(".json")
