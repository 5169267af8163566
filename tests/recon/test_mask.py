"""Brain and CSF masks against the phantom's true labels.

The phantom's head has scalp, a partly missing skull (about half of the brain's surface
touches the scalp directly, with no dark bone between) and sinuses, which makes it a harder
case for skull stripping than most real GRE scans.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmiron.errors import InputError
from qsmiron.recon.mask import (
    MaskQualityWarning,
    brain_mask,
    csf_mask,
    head_mask,
    mask_quality,
)
from qsmiron.recon.multiecho import r2star_map
from qsmiron.simulate import tissues as T

EXTRACRANIAL = (0, 1, 2, 3)  # air, scalp, skull, sinus air


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _check_brain(sub, mask):
    """Dice >= 0.9 with the true brain (parenchyma and intracranial CSF) and no scalp: the
    extracranial voxels in the mask are only the partial-volume layer at the brain's edge
    (labels are by majority at 2 mm, so a voxel half brain is labelled scalp), i.e. none lies
    more than one voxel diagonal (3.5 mm) outside the true brain.

    Returns the Dice coefficient and the extracranial fraction of the mask."""
    brain = sub.brain
    vs = np.asarray(sub.voxel_size, float)
    dice = _dice(mask, brain)
    assert dice >= 0.9, dice
    extra = mask & np.isin(sub.phantom.labels, EXTRACRANIAL)
    outside_mm = ndi.distance_transform_edt(~brain, sampling=vs)
    assert outside_mm[extra].max(initial=0.0) <= np.sqrt(3) * vs.max() + 1e-6
    return dice, extra.sum() / mask.sum()


@pytest.fixture(scope="module")
def mask_multi_echo(subject2mm):
    sub = subject2mm
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskQualityWarning)  # a plausible mask: no warning
        return brain_mask(sub.scan.magnitude, sub.voxel_size, te=sub.protocol.te)


def test_brain_mask_phantom_multi_echo(subject2mm, mask_multi_echo):
    sub = subject2mm
    mask = mask_multi_echo
    assert mask.dtype == bool and mask.shape == sub.brain.shape
    dice, extra = _check_brain(sub, mask)
    assert dice >= 0.95  # measured 0.97
    # the partial-volume layer it includes is thin: < 1% of the mask (measured 0.4%; the
    # brain's boundary layer is ~8% of it)
    assert extra < 0.01, extra
    q = mask_quality(mask, sub.voxel_size)
    assert q.ok and q.n_components == 1 and 800 < q.volume_ml < 2200


def test_brain_mask_phantom_magnitude_only(subject2mm):
    """Without echo times (no R2* cue) the intensity step alone finds the brain here (it
    keeps more of the partial-volume layer: 1.2% of the mask, against 0.4% with R2*)."""
    sub = subject2mm
    mask = brain_mask(sub.scan.magnitude, sub.voxel_size, check=False)
    _check_brain(sub, mask)


def test_brain_mask_erosion(subject2mm, mask_multi_echo):
    sub = subject2mm
    vs = np.asarray(sub.voxel_size, float)
    full = mask_multi_echo
    eroded = brain_mask(sub.scan.magnitude, vs, erode_mm=4.0, te=sub.protocol.te, check=False)
    assert not (eroded & ~full).any()
    depth = ndi.distance_transform_edt(full, sampling=vs)
    np.testing.assert_array_equal(eroded, depth > 4.0)


def test_mask_quality_flags_implausible_masks():
    m = np.zeros((64, 64, 64), bool)
    m[8:56, 8:56, 8:56] = True  # 48^3 voxels of 2.5 mm: 1728 mL, away from the FOV border
    assert mask_quality(m, 2.5).ok
    small = mask_quality(m, 1.0)
    assert not small.ok and "below" in small.problems[0]
    big = mask_quality(m, 3.5)
    assert not big.ok and "above" in big.problems[0]
    edge = np.zeros_like(m)
    edge[:, 8:56, 8:56] = True
    q = mask_quality(edge, 2.5)
    assert q.border_fraction > 0.05 and any("field of view" in p for p in q.problems)
    two = m.copy()
    two[:, :, 30:34] = False
    assert any("fragmented" in p for p in mask_quality(two, 2.5).problems)
    assert mask_quality(np.zeros_like(m), 2.5).problems == ["the mask is empty"]


def test_brain_mask_warns_on_implausible_volume():
    """A 'head' whose brain is 270 mL: the mask is right but implausible for a brain."""
    g = np.linalg.norm(np.indices((48, 48, 48)) - 23.5, axis=0)
    head = np.where(g < 16, 1.0, np.where(g < 18, 0.05, np.where(g < 22, 1.4, 0.0))) + 0.01
    with pytest.warns(MaskQualityWarning, match="below"):
        mask = brain_mask(head, voxel_size=2.5)
    inside = g < 16
    assert _dice(mask, inside) > 0.97 and not (mask & (g > 17)).any()


def test_csf_mask_phantom(subject2mm):
    """Automatic CSF (R2* < 5 1/s, deep, large): all of it is CSF, mostly ventricles.

    At 2 mm only the ventricles' cores pass the threshold (partial volume with tissue raises
    R2* at their walls), so a third of the ventricular volume is expected."""
    sub = subject2mm
    te = np.asarray(sub.protocol.te)
    r2 = r2star_map(sub.scan.magnitude, te, sub.brain)
    csf = csf_mask(r2, sub.brain, sub.voxel_size)
    labels = sub.phantom.labels
    assert csf.sum() > 500
    assert np.isin(labels[csf], T.CSF_LABELS).mean() > 0.99
    vent = np.isin(labels, T.VENTRICLES)
    assert (csf & vent).sum() / csf.sum() > 0.6
    assert (csf & vent).sum() / vent.sum() > 0.25
    # both lateral ventricles are found
    for side in ((7, 9), (8, 10)):
        assert (csf & np.isin(labels, side)).sum() > 100


def test_csf_mask_empty_warns(caplog):
    r2 = np.full((20, 20, 20), 20.0, np.float32)
    brain = np.zeros((20, 20, 20), bool)
    brain[2:18, 2:18, 2:18] = True
    with caplog.at_level("WARNING"):
        out = csf_mask(r2, brain, 2.0)
    assert not out.any() and "no voxel" in caplog.text


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros((8, 8)), {}, "3D image"),
        (-np.ones((8, 8, 8)), {}, "negative"),
        (np.ones((16, 16, 16)), {}, "constant"),
        (np.ones((16, 16, 16, 2)), {"voxel_size": (1.0, 1.0)}, "voxel_size"),
        (np.full((8, 8, 8), np.nan), {}, "NaN"),
        (np.random.default_rng(0).random((16, 16, 16)), {"erode_mm": -1.0}, "erode_mm"),
    ],
)
def test_brain_mask_bad_input(image, kwargs, match):
    kw = {"voxel_size": 2.0} | kwargs
    with pytest.raises(InputError, match=match):
        brain_mask(image, **kw)


def test_csf_mask_bad_input():
    with pytest.raises(InputError, match="mask is empty"):
        csf_mask(np.ones((8, 8, 8)), np.zeros((8, 8, 8), bool), 1.0)
    with pytest.raises(InputError, match="mask shape"):
        csf_mask(np.ones((8, 8, 8)), np.ones((8, 8, 7), bool), 1.0)


def test_brain_mask_keeps_bright_deep_grey_matter():
    """Deep grey nuclei brighter than the white matter around them are brain, not scalp:
    at 1 mm the mask keeps (nearly) all of the thalami, pallidi and putamina (>= 99%)."""
    from qsmiron.recon.mask import brain_mask
    from qsmiron.simulate.phantom import AnatomyParams, make_phantom
    from qsmiron.simulate.scan import Protocol, simulate_scan

    te = (0.0043, 0.0108, 0.0173)
    ph = make_phantom(AnatomyParams(thalamus_volume_ml=14.0), voxel_size=1.0, seed=1)
    scan = simulate_scan(ph, Protocol(te=te), seed=2)
    mask = brain_mask(scan.magnitude, ph.voxel_size, te=te)
    for labels in ((13, 14), (19, 20), (17, 18)):
        roi = np.isin(ph.labels, labels)
        assert (mask & roi).sum() >= 0.99 * roi.sum(), labels


@pytest.mark.parametrize("falloff", [1.0, 0.5])
def test_head_mask_keeps_the_vertex_of_a_flair(subject2mm, falloff):
    """The FLAIR's dim vertex (GM and sulcal CSF under the coil's fall-off) stays in the head.

    Truth: the phantom's brain. The simulated FLAIR is also dimmed by a receive-coil fall-off
    from 1 at the thalami's level to ``falloff`` at the top slice; everything down to half of
    Otsu's threshold that is connected to the head is kept, so the whole brain is covered and
    the mask grows by no more than its own partial-volume rim outside the true head.
    """
    sub = subject2mm
    z = np.arange(sub.scan.flair.shape[2], dtype=np.float32)
    centre = ndi.center_of_mass(np.isin(sub.phantom.labels, T.THALAMUS))[2]
    ramp = 1.0 - (1.0 - falloff) * np.clip((z - centre) / (z[-1] - centre), 0.0, 1.0)
    flair = sub.scan.flair * ramp
    head = head_mask(flair, sub.voxel_size)
    brain = sub.brain
    assert (head & brain).sum() / brain.sum() > 0.995
    true_head = ndi.binary_fill_holes(sub.phantom.labels > 0)
    assert (head & ~true_head).sum() / true_head.sum() < 0.05
