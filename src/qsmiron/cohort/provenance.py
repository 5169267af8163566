"""Resume keys: a hash of a subject's input files, the parameters and the qsmiron version.

A subject's result is trusted on a rerun only when its key is unchanged. The key hashes file
*contents* (SHA-256), so copying or touching a dataset does not invalidate finished subjects,
while any changed byte, added or removed file, changed parameter or new qsmiron version does.
Re-reading every image on every rerun would cost minutes on large cohorts, so each file's
digest is stored with its size and modification time and reused while both are unchanged
(the rule ``make`` and ``rsync`` use).

Example
-------
>>> key, files = input_key(["sub-001/anat/a.nii.gz"], root, {"method": "medi"})  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qsmiron import __version__

__all__ = ["file_digest", "input_key", "subject_inputs"]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's contents (hex)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def subject_inputs(bids_dir: str | Path, subject: str, session: str | None) -> list[Path]:
    """The files a subject's run reads: its (session) folder and the dataset-level sidecars.

    Parameters
    ----------
    bids_dir : str or Path
        BIDS dataset root.
    subject, session : str
        Labels without prefixes; ``session`` None for datasets without sessions.

    Returns
    -------
    list of Path
        Sorted paths relative to ``bids_dir``. ``participants.tsv`` is not an input of the
        per-subject run (it is merged into the table afterwards), so editing it redoes nothing.
    """
    root = Path(bids_dir)
    folder = root / f"sub-{subject}"
    if session:
        folder = folder / f"ses-{session}"
    files = [p for p in folder.rglob("*") if p.is_file()]
    if session is None:  # a subject with sessions is processed per session
        files = [p for p in files if not p.relative_to(folder).parts[0].startswith("ses-")]
    # BIDS inheritance: sidecars at the dataset (and subject) level apply to every image
    files += [p for p in root.glob("*.json") if p.name != "participants.json"]
    if session:
        files += [p for p in (root / f"sub-{subject}").glob("*.json")]
    return sorted(p.relative_to(root) for p in files if not p.name.startswith("."))


def input_key(
    files: Iterable[str | Path],
    root: str | Path,
    params: Mapping[str, Any],
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """The resume key of a subject.

    Parameters
    ----------
    files : iterable of str or Path
        Input files relative to ``root``.
    root : str or Path
        Dataset root.
    params : mapping
        Everything else that decides the result (JSON-serialisable).
    known : mapping, optional
        ``{relative path: {"size", "mtime_ns", "sha256"}}`` from the last run; a file whose
        size and modification time are unchanged is not read again.

    Returns
    -------
    key : str
        Hex SHA-256 of the version, the parameters and every (path, content digest) pair.
    manifest : dict
        ``{relative path: {"size", "mtime_ns", "sha256"}}`` for the next run.
    """
    root = Path(root)
    known = known or {}
    manifest: dict[str, dict[str, Any]] = {}
    h = hashlib.sha256()
    h.update(f"qsmiron {__version__}\n".encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for rel in sorted(str(Path(f)) for f in files):
        st = (root / rel).stat()
        old = known.get(rel) or {}
        if old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            digest = str(old["sha256"])
        else:
            digest = file_digest(root / rel)
        manifest[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        h.update(f"\n{rel}\0{digest}".encode())
    return h.hexdigest(), manifest
