"""Shared phantom data for the reconstruction tests: one 2 mm subject with known truth.

The subject has veins, lesions and a background field from the head's air-tissue interfaces;
its GRE is simulated at SNR 100 with 6 echoes (first TE 4.3 ms, spacing 6.5 ms, 3 T).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from qsmiron.simulate import tissues as T
from qsmiron.simulate.phantom import AnatomyParams, Phantom, make_phantom
from qsmiron.simulate.scan import Protocol, Scan, simulate_scan


@dataclass
class Subject:
    """A simulated subject: phantom (truth), scan (data) and protocol."""

    phantom: Phantom
    scan: Scan
    protocol: Protocol

    @property
    def voxel_size(self) -> np.ndarray:
        return self.phantom.voxel_size

    @property
    def brain(self) -> np.ndarray:
        """True brain mask (parenchyma and intracranial CSF)."""
        return self.phantom.brain_mask

    def roi(self, *labels: int) -> np.ndarray:
        return np.isin(self.phantom.labels, labels)


@pytest.fixture(scope="session")
def subject2mm() -> Subject:
    params = AnatomyParams(
        thalamus_chi_ppm=(-0.025, -0.030),
        thalamus_volume_ml=14.0,
        lesion_volume_ml=6.0,
        lesion_count=6,
        enhancing_count=1,
        rotation_deg=(4.0, 1.0, -2.0),
    )
    phantom = make_phantom(params, voxel_size=2.0, seed=42)
    protocol = Protocol(snr=100.0)
    scan = simulate_scan(phantom, protocol, seed=43)
    return Subject(phantom, scan, protocol)


#: ROI labels the QSM accuracy criteria are judged on (issue: thalamus, caudate, putamen, GP).
DEEP_GM = {
    "thalamus": T.THALAMUS,
    "caudate": (15, 16),
    "putamen": (17, 18),
    "globus_pallidus": (19, 20),
}
