"""JSON sidecars and records: what a measure that could not be made becomes on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qsmiron.io.nifti import write_json


def test_write_json_writes_missing_numbers_as_null(tmp_path):
    """JSON has no NaN (``json.dumps(allow_nan=False)`` raises on it): a subject without a
    FLAIR or a post-gadolinium T1w has NaN measures, which must be written as null, not
    crash the writer after the work is done."""
    path = write_json(tmp_path / "m.json", {
        "lesion_count": np.nan, "volume": np.float32(2.5), "count": np.int64(3),
        "inf": float("inf"), "nested": {"a": [1.0, np.float64(np.nan)]},
        "where": Path("x") / "y.nii.gz"})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back == {"lesion_count": None, "volume": 2.5, "count": 3, "inf": None,
                    "nested": {"a": [1.0, None]}, "where": str(Path("x") / "y.nii.gz")}
    assert isinstance(back["count"], int)
