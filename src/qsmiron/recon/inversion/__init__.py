"""Dipole inversion: from a local field (ppm) to a susceptibility map (ppm).

* :func:`tkd`: thresholded k-space division (one FFT pair).
* :func:`tikhonov_l2`: closed-form L2 inversion with a gradient penalty, lambda by L-curve
  (one FFT pair).
* :func:`medi`: morphology-enabled dipole inversion (weighted L1 total variation with a
  magnitude edge prior) with the MEDI+0 CSF term, solved by ADMM.

All take ``(local_field, mask, voxel_size, b0_dir, ...)`` with fields in ppm, voxel size in mm
and B0 as a unit vector in the voxel frame, and return float32 susceptibility in ppm inside
the mask (0 outside). See docs/recon.md, "Dipole inversion".
"""

from qsmiron.recon.inversion.l2 import LCurve, l_curve, tikhonov_l2
from qsmiron.recon.inversion.medi import MediResult, medi
from qsmiron.recon.inversion.tkd import tkd, tkd_correction_factor

__all__ = ["LCurve", "MediResult", "l_curve", "medi", "tikhonov_l2", "tkd",
           "tkd_correction_factor"]
