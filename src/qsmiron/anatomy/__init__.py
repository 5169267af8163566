"""qsmiron.anatomy."""

from qsmiron.anatomy.lesions import (
    GrownLesions,
    LesionResult,
    grow_lesions,
    label_lesions,
    lesion_count,
    lesion_volume_ml,
    segment_lesions,
)
from qsmiron.anatomy.thickness import ThicknessResult, cortical_thickness
from qsmiron.anatomy.veins import exclude_veins, vein_mask

__all__ = [
    "GrownLesions",
    "LesionResult",
    "grow_lesions",
    "label_lesions",
    "lesion_count",
    "lesion_volume_ml",
    "segment_lesions",
    "ThicknessResult",
    "cortical_thickness",
    "exclude_veins",
    "vein_mask",
]
