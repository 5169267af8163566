"""qsmiron.io: the only room that reads or writes image files.

* :mod:`qsmiron.io.nifti` - atomic NIfTI/JSON reading and writing, voxel size, B0 direction.
* :mod:`qsmiron.io.phase` - detect how phase is stored and convert it to radians.
* :mod:`qsmiron.io.bids` - BIDS multi-echo GRE (``MEGRE``) and anatomical images in and out.
* :mod:`qsmiron.io.dicom` - DICOM folders to BIDS through dcm2niix.
"""

from qsmiron.io.bids import (
    MultiEchoGRE,
    bids_name,
    list_subjects,
    read_bids_anat,
    read_megre_bids,
    read_megre_nifti,
    write_bids_anat,
    write_dataset_description,
    write_megre_bids,
)
from qsmiron.io.dicom import dicom_to_bids
from qsmiron.io.nifti import (
    b0_direction,
    load_nifti,
    read_json,
    save_nifti,
    sidecar_path,
    voxel_size,
    write_json,
)
from qsmiron.io.phase import PhaseScaling, detect_phase_scaling, phase_to_radians

__all__ = [
    "MultiEchoGRE",
    "PhaseScaling",
    "b0_direction",
    "bids_name",
    "detect_phase_scaling",
    "dicom_to_bids",
    "list_subjects",
    "load_nifti",
    "phase_to_radians",
    "read_bids_anat",
    "read_json",
    "read_megre_bids",
    "read_megre_nifti",
    "save_nifti",
    "sidecar_path",
    "voxel_size",
    "write_bids_anat",
    "write_dataset_description",
    "write_json",
    "write_megre_bids",
]
