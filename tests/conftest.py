"""Fixtures shared across test packages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qsmiron.cli import main
from qsmiron.simulate.cohort import simulate_cohort


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (also inside dicts, lists, tuples) as plain Python values."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


@pytest.fixture
def record_property(request) -> Any:
    """pytest's ``record_property``, with numpy values made plain Python values first.

    The figures the tests record (Dice, errors in ppb, NRMSE) are numpy scalars; test reports
    travel between processes (pytest-xdist workers), which serialise plain types only.
    """

    def record(name: str, value: Any) -> None:
        request.node.user_properties.append((name, _plain(value)))

    return record


@pytest.fixture(scope="session")
def seed7_subject(tmp_path_factory) -> dict[str, Path]:
    """Cohort seed 7's sub-001 (2 mm) through ``qsmiron recon`` and ``qsmiron anatomy``.

    Read-only for the tests: the anatomy tests judge its outputs against the simulator's truth
    and the report tests draw its pages. Keys: ``root``, ``bids``, ``deriv``, ``anat`` (the
    subject's anatomy derivatives) and ``truth`` (its truth folder).
    """
    out = tmp_path_factory.mktemp("seed7")
    simulate_cohort(out, 1, seed=7)
    bids, deriv = out / "bids", out / "deriv"
    assert main(["recon", str(bids), "--subject", "001", "--out", str(deriv)]) == 0
    assert main(["anatomy", str(bids), "--subject", "001", "--out", str(deriv)]) == 0
    return {"root": out, "bids": bids, "deriv": deriv,
            "anat": deriv / "qsmiron" / "sub-001" / "anat",
            "truth": out / "truth" / "sub-001"}
