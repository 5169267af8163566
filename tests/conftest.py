"""Fixtures shared across test packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsmiron.cli import main
from qsmiron.simulate.cohort import simulate_cohort


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
