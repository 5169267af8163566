"""Write tiny synthetic Siemens-like multi-echo GRE DICOM series with known content.

The encoded magnitude and phase are analytic functions of the patient (LPS) position of each
voxel, so a test can recompute the truth at the world position of every voxel that comes back,
whatever flips or reorientations the converter applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class GreSpec:
    """Geometry and timing of the synthetic series."""

    columns: int = 16
    rows: int = 14
    slices: int = 6
    pixel_spacing: tuple[float, float] = (1.5, 1.0)  # (between rows, between columns) in mm
    slice_thickness: float = 2.0
    origin_lps: tuple[float, float, float] = (-12.0, -9.0, -5.0)
    te_ms: tuple[float, ...] = (4.0, 9.0, 14.0)
    field_t: float = 3.0
    # field offset pattern: Hz per mm along L, P, S, plus a constant (enough to wrap the phase)
    hz_per_mm: tuple[float, float, float] = (9.0, -6.0, 11.0)
    hz0: float = 13.0
    series_numbers: dict[str, int] = field(default_factory=lambda: {"mag": 5, "phase": 6})


def true_phase(lps: np.ndarray, te_s: float, spec: GreSpec) -> np.ndarray:
    """Wrapped phase in radians at patient (LPS) positions ``lps`` (..., 3) for echo time te_s."""
    hz = spec.hz0 + lps @ np.asarray(spec.hz_per_mm)
    phi = 2 * np.pi * hz * te_s + 0.4
    return np.mod(phi + np.pi, 2 * np.pi) - np.pi


def true_magnitude(lps: np.ndarray, te_s: float) -> np.ndarray:
    """Magnitude (stored integer units) at LPS positions for echo time te_s."""
    base = 1000.0 + 20.0 * lps[..., 0] + 7.0 * lps[..., 1] - 5.0 * lps[..., 2]
    return np.round(base * np.exp(-te_s / 0.04))


def encode_phase(phi: np.ndarray) -> np.ndarray:
    """Radians [-pi, pi) -> stored 0..4095 (Siemens: value*2 - 4096 spans -4096..4094)."""
    raw = np.round((phi + np.pi) / (2 * np.pi) * 4096).astype(np.int64) % 4096
    return raw.astype(np.uint16)


def slice_positions(spec: GreSpec) -> np.ndarray:
    """(slices, rows, columns, 3) LPS positions of every pixel (axial, rows along +P)."""
    r = np.arange(spec.rows)[:, None] * spec.pixel_spacing[0]
    c = np.arange(spec.columns)[None, :] * spec.pixel_spacing[1]
    out = np.zeros((spec.slices, spec.rows, spec.columns, 3))
    for k in range(spec.slices):
        out[k, ..., 0] = spec.origin_lps[0] + c
        out[k, ..., 1] = spec.origin_lps[1] + r
        out[k, ..., 2] = spec.origin_lps[2] + k * spec.slice_thickness
    return out


def write_megre_dicom(folder: Path, spec: GreSpec | None = None) -> GreSpec:
    """Write magnitude and phase series (one file per slice and echo) into ``folder``."""
    spec = spec or GreSpec()
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, frame_uid = generate_uid(), generate_uid()
    pos = slice_positions(spec)
    instance = 0
    for part, image_type in (("mag", "M"), ("phase", "P")):
        series_uid = generate_uid()
        number = spec.series_numbers[part]
        for e, te_ms in enumerate(spec.te_ms, start=1):
            for k in range(spec.slices):
                instance += 1
                if part == "mag":
                    pixels = true_magnitude(pos[k], te_ms / 1000).astype(np.uint16)
                else:
                    pixels = encode_phase(true_phase(pos[k], te_ms / 1000, spec))
                ds = _dataset(spec, study_uid, series_uid, frame_uid)
                ds.ImageType = ["ORIGINAL", "PRIMARY", image_type, "ND"]
                ds.SeriesNumber = number
                ds.SeriesDescription = "gre_me_qsm" + ("_ph" if part == "phase" else "")
                ds.InstanceNumber = (e - 1) * spec.slices + k + 1
                ds.EchoTime = f"{te_ms:g}"
                ds.EchoNumbers = e
                ds.ImagePositionPatient = [f"{v:g}" for v in pos[k, 0, 0]]
                ds.SliceLocation = f"{pos[k, 0, 0, 2]:g}"
                if part == "phase":
                    ds.RescaleSlope = "2"
                    ds.RescaleIntercept = "-4096"
                    ds.RescaleType = "US"
                ds.PixelData = np.ascontiguousarray(pixels).tobytes()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.save_as(folder / f"IM{instance:05d}.dcm", enforce_file_format=True)
    return spec


def write_single_series(
    folder: Path,
    description: str,
    series_number: int,
    scanning_sequence: str = "GR\\IR",
    spec: GreSpec | None = None,
) -> None:
    """Write a single-echo magnitude series (e.g. a T1w or FLAIR) on the GRE grid."""
    spec = spec or GreSpec()
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, frame_uid, series_uid = generate_uid(), generate_uid(), generate_uid()
    pos = slice_positions(spec)
    for k in range(spec.slices):
        ds = _dataset(spec, study_uid, series_uid, frame_uid)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.ScanningSequence = scanning_sequence
        ds.InstanceNumber = k + 1
        ds.EchoTime = "2.5"
        ds.EchoNumbers = 1
        ds.ImagePositionPatient = [f"{v:g}" for v in pos[k, 0, 0]]
        ds.SliceLocation = f"{pos[k, 0, 0, 2]:g}"
        pixels = 100 * series_number + 10 * k + np.arange(spec.rows * spec.columns) % 50
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"S{series_number:03d}_{k:03d}.dcm", enforce_file_format=True)


def _dataset(spec: GreSpec, study_uid: str, series_uid: str, frame_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid()
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Prisma"
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "PHANTOM01"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.SeriesDate = "20240101"
    ds.AcquisitionTime = "120100.000000"
    ds.AcquisitionNumber = 1
    ds.ProtocolName = "gre_me_qsm"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "30"
    ds.FlipAngle = "15"
    ds.MagneticFieldStrength = f"{spec.field_t:g}"
    ds.ImagingFrequency = f"{42.577478518 * spec.field_t:.6f}"
    ds.ImagedNucleus = "1H"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.PixelSpacing = [f"{v:g}" for v in spec.pixel_spacing]
    ds.SliceThickness = f"{spec.slice_thickness:g}"
    ds.SpacingBetweenSlices = f"{spec.slice_thickness:g}"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PatientPosition = "HFS"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """Flip the first two axes: NIfTI RAS+ world -> DICOM LPS patient coordinates."""
    out = np.array(points, dtype=float)
    out[..., :2] *= -1
    return out


def voxel_world_lps(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """LPS positions (X, Y, Z, 3) of the voxels of a NIfTI grid."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    return ras_to_lps(ras)


__all__ = [
    "GreSpec",
    "encode_phase",
    "true_magnitude",
    "true_phase",
    "voxel_world_lps",
    "write_megre_dicom",
    "write_single_series",
]
