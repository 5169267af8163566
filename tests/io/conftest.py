"""Shared fixtures for the io tests: small synthetic multi-echo GRE data with known truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from qsmiron.io.bids import write_megre_bids

SHAPE = (12, 10, 8)
TE = (0.004, 0.009, 0.014)  # seconds
B0 = 3.0  # tesla


def shared_data_dir() -> Path | None:
    """The shared data folder next to the repository (or /work/shared/data), if present."""
    for cand in (
        Path(__file__).resolve().parents[2] / ".." / "shared" / "data",
        Path("/work/shared/data"),
    ):
        if cand.is_dir():
            return cand.resolve()
    return None


def rotation_x(deg: float) -> np.ndarray:
    """Rotation matrix about the x axis by ``deg`` degrees."""
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def oblique_affine(deg: float = 20.0, vox: tuple[float, float, float] = (1.0, 1.2, 2.0)):
    """Voxel-to-world affine rotated ``deg`` about x, voxel size ``vox`` mm."""
    aff = np.eye(4)
    aff[:3, :3] = rotation_x(deg) @ np.diag(vox)
    aff[:3, 3] = (-10.0, 20.0, -5.0)
    return aff


def wrapped_phase(shape: tuple[int, ...], te: tuple[float, ...], seed: int = 0) -> np.ndarray:
    """Wrapped phase in radians [-pi, pi) of a linear field (several wraps) plus small noise."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    hz = 30.0 + 21.0 * grids[0] - 17.0 * grids[1] + 13.0 * grids[2]
    out = []
    for t in te:
        phi = 2 * np.pi * hz * t + 0.3 + rng.normal(0, 0.05, shape)
        out.append(np.mod(phi + np.pi, 2 * np.pi) - np.pi)
    return np.stack(out, axis=-1)


def magnitude(shape: tuple[int, ...], te: tuple[float, ...], seed: int = 1) -> np.ndarray:
    """Positive magnitude decaying with echo time (T2* 40 ms)."""
    rng = np.random.default_rng(seed)
    base = 500.0 + 400.0 * rng.random(shape)
    return np.stack([base * np.exp(-t / 0.04) for t in te], axis=-1).astype(np.float32)


@dataclass
class GreTruth:
    """What a synthetic GRE dataset was written with."""

    root: Path
    magnitude: np.ndarray
    phase: np.ndarray
    te: np.ndarray
    affine: np.ndarray
    files: list[Path]

    def file(self, echo: int, part: str) -> Path:
        """The written image of one echo and part."""
        return self.root / "sub-01" / "anat" / f"sub-01_echo-{echo}_part-{part}_MEGRE.nii.gz"


@pytest.fixture
def gre_bids(tmp_path: Path) -> GreTruth:
    """A BIDS dataset with one subject's 3-echo GRE (oblique affine), written by qsmiron."""
    mag = magnitude(SHAPE, TE)
    pha = wrapped_phase(SHAPE, TE).astype(np.float32)
    aff = oblique_affine()
    root = tmp_path / "bids"
    files = write_megre_bids(
        root, "01", mag, pha, TE, aff, b0=B0, sidecar={"RepetitionTime": 0.03, "FlipAngle": 15}
    )
    return GreTruth(root, mag, pha, np.asarray(TE), aff, files)
