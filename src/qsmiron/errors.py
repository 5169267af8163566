"""Exceptions a user can act on.

Every error raised for bad input names the file (when there is one), what was expected and
what was found, so that the command-line layer can print it without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class QsmironError(Exception):
    """Base class of all errors qsmiron raises on purpose."""


class InputError(QsmironError, ValueError):
    """Bad input data: missing, unreadable, inconsistent or out of range.

    Parameters
    ----------
    message : str
        What was wrong and, where possible, what to do about it.
    path : str or Path, optional
        The file or folder the problem was found in.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)
