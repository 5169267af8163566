"""Registration wrappers: world conventions, a known rigid motion recovered, label resampling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from qsmiron.anatomy import register as reg
from qsmiron.errors import InputError
from qsmiron.recon.mask import head_mask


def _rotation(deg: float, axis: int) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def test_ants_roundtrip_keeps_oblique_affine() -> None:
    aff = np.eye(4)
    aff[:3, :3] = _rotation(12.0, 0) @ np.diag([0.9, 1.1, 2.0])
    aff[:3, 3] = (-80.5, 20.25, -33.0)
    data = np.random.default_rng(0).random((12, 10, 8)).astype(np.float32)
    back, aff2 = reg.from_ants(reg.to_ants(data, aff))
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(aff2, aff, atol=1e-5)


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, np.ndarray]:
    """A simulated 2 mm T1w head (the phantom's, no lesions)."""
    from qsmiron.simulate.phantom import AnatomyParams, make_phantom
    from qsmiron.simulate.scan import Protocol, simulate_scan

    ph = make_phantom(AnatomyParams(lesion_count=0), voxel_size=2.0, seed=5)
    sc = simulate_scan(ph, Protocol(te=(0.004,)), seed=6)
    return sc.t1w, ph.affine


def test_rigid_registration_recovers_known_motion(head, tmp_path) -> None:
    """The T1w resampled on a grid moved by 6 deg and 5 mm: the transform found is that motion.

    Truth: the moving image's grid is ``M @ affine`` with a known rigid ``M``; the image was
    resampled through world coordinates, so ``register_rigid`` must return (as a fixed-to-
    moving world map) the identity up to interpolation, and the identity-initialised search
    must undo the 6 deg / 5 mm offset between the grids.
    """
    t1, aff = head
    m = np.eye(4)
    m[:3, :3] = _rotation(6.0, 2)
    m[:3, 3] = (3.0, -4.0, 0.0)
    moved_aff = m @ aff
    # the same head seen on the moved grid: content in world coordinates moved by inv(M)
    moving = reg.resample(t1, aff, t1.shape, moved_aff, [], interpolation="linear")
    # now pretend the scanner lost the motion: give the moving image the original affine
    tx = reg.register_rigid(t1, aff, moving, aff, tmp_path, "known",
                            fixed_mask=head_mask(t1, 2.0), moving_mask=head_mask(moving, 2.0))
    # the found map takes fixed-world points to where that anatomy sits in the moving image
    inv = np.linalg.inv(m)
    np.testing.assert_allclose(tx.matrix[:3, :3], inv[:3, :3], atol=0.01)
    centre = aff[:3, :3] @ (np.array(t1.shape) / 2.0) + aff[:3, 3]
    found = tx.matrix[:3, :3] @ centre + tx.matrix[:3, 3]
    expected = inv[:3, :3] @ centre + inv[:3, 3]
    assert np.linalg.norm(found - expected) < 1.0  # half a voxel
    assert tx.rotation_deg == pytest.approx(6.0, abs=0.5)
    assert tx.coverage is not None and tx.coverage > 0.97
    back = reg.resample(moving, aff, t1.shape, aff, [tx.path])
    inside = ndi.binary_erosion(head_mask(t1, 2.0), iterations=3)
    assert np.corrcoef(back[inside], t1[inside])[0, 1] > 0.95
    with pytest.raises(InputError, match="sampling_rate"):
        reg.register_rigid(t1, aff, moving, aff, tmp_path, "bad", sampling_rate=0.0)


def test_resample_labels_majority_and_fractions() -> None:
    """A 2x coarser grid: fractions are block means, the hard label the block majority."""
    fine = np.zeros((8, 8, 8), np.int16)
    fine[:3, :, :] = 5  # 3 of the 4 fine slabs of the first coarse slab... by construction
    fine[3:6, :, :] = 7
    aff_f = np.eye(4)
    aff_c = np.diag([2.0, 2.0, 2.0, 1.0])
    aff_c[:3, 3] = 0.5  # coarse voxel centres between two fine ones
    hard, fr = reg.resample_labels(fine, aff_f, (4, 4, 4), aff_c, [], keep=(5, 7))
    # coarse slab 0 covers fine 0,1 (label 5); slab 1 covers 2 (5) and 3 (7); slab 2: 4,5 (7)
    np.testing.assert_allclose(fr[5][:, 1, 1], [1.0, 0.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(fr[7][:, 1, 1], [0.0, 0.5, 1.0, 0.0], atol=1e-6)
    assert hard[0, 1, 1] == 5 and hard[2, 1, 1] == 7 and hard[3, 1, 1] == 0


def test_syn_domain_is_the_brain_box_plus_margin(tmp_path) -> None:
    """The SyN domain: the mask's bounding box grown by the margin in mm, clipped to the image,
    in place in the world (oblique grid); and a warp defined on that box alone moves nothing
    outside it (ITK's displacement field is zero outside its grid), so points outside the box
    keep the affine map. Truth by construction: a block mask, a ramp image, a warp of a
    constant 4 mm shift."""
    aff = np.eye(4)
    aff[:3, :3] = _rotation(10.0, 2) @ np.diag([2.0, 2.0, 2.0])
    aff[:3, 3] = (-20.0, -21.0, -22.0)
    ramp = np.broadcast_to(np.arange(20, dtype=np.float32)[:, None, None], (20, 20, 20)).copy()
    img = reg.to_ants(ramp, aff)
    mask = np.zeros((20, 20, 20), np.float32)
    mask[8:11, 7:12, 1:4] = 1.0
    sub, box = reg._crop_to_mask(img, reg.to_ants(mask, aff), 5.0)  # 5 mm: 3 voxels of 2 mm
    assert box == [[5, 4, 0], [14, 15, 7]]
    assert sub.shape == (9, 11, 7)
    data, sub_aff = reg.from_ants(sub)
    np.testing.assert_array_equal(data, ramp[5:14, 4:15, 0:7])
    np.testing.assert_allclose(sub_aff[:3, 3], aff[:3, :3] @ (5, 4, 0) + aff[:3, 3], atol=1e-4)
    whole, box0 = reg._crop_to_mask(img, reg.to_ants(np.zeros_like(mask), aff), 5.0)
    assert whole is img and box0 == [[0, 0, 0], [20, 20, 20]]

    # a warp on the box only: +4 mm along the grid's first axis inside, nothing outside
    ants = reg._ants()
    shift = np.zeros(sub.shape + (3,), np.float32)
    shift[..., :] = np.asarray(sub.direction) @ np.array([4.0, 0.0, 0.0])  # ITK (LPS) vector
    warp = ants.from_numpy(shift, origin=sub.origin, spacing=sub.spacing,
                           direction=sub.direction, has_components=True)
    path = tmp_path / "boxWarp.nii.gz"
    ants.image_write(warp, str(path))
    moved = reg.resample(ramp, aff, ramp.shape, aff, [path])
    assert moved[9, 9, 3] == pytest.approx(11.0, abs=1e-4)  # two voxels on, inside the box
    assert moved[2, 9, 3] == pytest.approx(2.0, abs=1e-4)   # outside: where it was
    assert moved[17, 9, 12] == pytest.approx(17.0, abs=1e-4)


@pytest.mark.parametrize(("shape", "vs", "voxel_mm", "deg"), [
    ((177, 60, 51), (1.0, 1.0, 1.0), 2.0, 0.0),
    ((101, 40, 33), (0.9, 0.9, 1.3), 2.0, 12.0),
    ((64, 64, 20), (0.5, 0.5, 2.0), 2.0, 7.0),
    ((51, 30, 31), (0.7, 1.2, 1.0), 3.0, 20.0),
])
def test_on_grid_is_ants_resample_image(shape, vs, voxel_mm, deg) -> None:
    """The registrations' coarse grids: the grid and values of ANTs' own ``resample_image``
    (same origin and axes, round(n * spacing / voxel_mm) voxels) on odd sizes, non-integer
    ratios and oblique axes."""
    aff = np.eye(4)
    aff[:3, :3] = _rotation(deg, 0) @ _rotation(deg / 2, 2) @ np.diag(vs)
    aff[:3, 3] = (-40.3, 17.2, -5.5)
    data = np.random.default_rng(1).random(shape).astype(np.float32)
    ref = reg._ants().resample_image(reg.to_ants(data, aff), (voxel_mm,) * 3,
                                     use_voxels=False, interp_type=0)
    got = reg._on_grid(data, aff, voxel_mm)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.origin, ref.origin, atol=1e-5)
    np.testing.assert_allclose(got.spacing, ref.spacing, atol=1e-6)
    np.testing.assert_allclose(got.direction, ref.direction, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)


def _transform_file(ants, kind: str, folder) -> str:
    """An ANTs transform of each kind the pipeline applies: a 12-parameter affine (what ANTs
    registrations write), a 6-parameter Euler rigid, and a smooth displacement field."""
    path = str(folder / f"{kind}.{'nii.gz' if kind == 'warp' else 'mat'}")
    if kind == "affine":
        tx = ants.create_ants_transform(
            transform_type="AffineTransform", precision="float", dimension=3,
            matrix=np.array([[1.02, 0.03, -0.01], [-0.02, 0.98, 0.05], [0.01, -0.04, 1.01]]),
            translation=(1.3, -2.2, 0.7), center=(10.0, -5.0, 3.0))
        ants.write_transform(tx, path)
    elif kind == "euler":
        tx = ants.create_ants_transform(transform_type="Euler3DTransform", center=(0.0, 0.0, 0.0))
        tx.set_parameters([0.05, -0.03, 0.08, 2.3, -1.7, 0.9])
        ants.write_transform(tx, path)
    else:
        g = np.meshgrid(*[np.linspace(0, np.pi, 24)] * 3, indexing="ij")
        field = np.stack([2.5 * np.sin(g[1]), -1.5 * np.sin(g[2]), 1.2 * np.cos(g[0])], -1)
        ants.image_write(ants.from_numpy(field.astype(np.float32), origin=(-30.0,) * 3,
                                         spacing=(2.5,) * 3, has_components=True), path)
    return path


def _scene(grid: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], np.ndarray]:
    """A smooth random image on an oblique anisotropic grid, and a target grid: oblique with
    other voxels (``"oblique"``), or of twice the voxel size with centres half-way between the
    image's (``"half"``: every point a tie of two voxels)."""
    rng = np.random.default_rng(4)
    smooth = ndi.gaussian_filter(rng.standard_normal((40, 36, 30)), 2.5)
    aff = np.eye(4)
    aff[:3, :3] = _rotation(9.0, 1) @ np.diag([1.0, 1.1, 1.2])
    aff[:3, 3] = (-20.0, -19.0, -17.0)
    if grid == "oblique":
        f_shape, f_aff = (34, 44, 14), np.eye(4)
        f_aff[:3, :3] = _rotation(-14.0, 0) @ np.diag([1.3, 0.9, 2.5])
        f_aff[:3, 3] = (-22.0, -18.0, -16.0)
    else:
        f_shape, f_aff = (20, 18, 15), aff @ np.diag([2.0, 2.0, 2.0, 1.0])
        f_aff[:3, 3] = aff[:3, :3] @ (0.5, 0.5, 0.5) + aff[:3, 3]
    return smooth, aff, f_shape, f_aff


def _ants_resample(ants, data, aff, f_shape, f_aff, transforms, interpolator, invert):
    """ANTs' own resampling (the truth of the resampling tests)."""
    f = reg.to_ants(np.zeros(f_shape, np.float32), f_aff)
    m = reg.to_ants(np.asarray(data, np.float32), aff)
    if transforms:
        return ants.apply_transforms(fixed=f, moving=m, transformlist=transforms,
                                     interpolator=interpolator, whichtoinvert=invert,
                                     singleprecision=True).numpy()
    return ants.resample_image_to_target(m, f, interp_type=interpolator).numpy()


_CHAINS = [
    ((), None), (("affine",), None), (("affine",), [True]), (("euler",), None),
    (("warp", "affine"), [False, False]), (("euler", "affine"), [False, True]),
]


@pytest.mark.parametrize(("chain", "invert"), _CHAINS)
@pytest.mark.parametrize("grid", ["oblique", "half"])
def test_generic_label_is_ants_generic_label(chain, invert, grid, tmp_path) -> None:
    """``resample(..., "genericLabel")`` (our 8-corner vote) against ANTs' own genericLabel
    interpolator (one linear interpolation per label, the largest wins) through every kind of
    transform chain, on an oblique anisotropic grid and on a grid of 2x voxels whose centres
    fall half-way between the label map's (exact ties everywhere: the smallest label wins in
    both). Truth: ANTs' result; a voxel may differ only where the two labels' interpolated
    indicators (by ANTs, label by label) tie to 1e-3."""
    ants = reg._ants()
    smooth, aff, f_shape, f_aff = _scene(grid)
    labels = np.digitize(smooth, np.quantile(smooth, [0.3, 0.5, 0.6, 0.75, 0.9])) * 7
    labels[:3] = 0  # background at one end, several labels elsewhere
    transforms = [_transform_file(ants, k, tmp_path) for k in chain]
    got = reg.resample(labels.astype(np.float32), aff, f_shape, f_aff, transforms,
                       "genericLabel", invert)
    ref = _ants_resample(ants, labels, aff, f_shape, f_aff, transforms, "genericLabel", invert)
    assert np.unique(ref).size >= 4 and (ref == 0).any()
    differ = got != ref
    if differ.any():  # only at ties (on the half grid ANTs' float indices split them at random)
        values = {k: reg.resample((labels == k).astype(np.float32), aff, f_shape, f_aff,
                                  transforms, "linear", invert) for k in np.unique(labels)}
        for v_got, v_ref, idx in zip(got[differ], ref[differ], np.argwhere(differ),
                                     strict=True):
            assert values[int(v_got)][tuple(idx)] == pytest.approx(
                values[int(v_ref)][tuple(idx)], abs=1e-3)


@pytest.mark.parametrize(("chain", "invert"), _CHAINS)
def test_resample_many_is_ants_image_by_image(chain, invert, tmp_path) -> None:
    """``resample_many`` (one evaluation of the chain, each image read at the indices by ITK's
    rule) against ANTs resampling each image on its own: a smooth image by linear
    interpolation, an integer image by nearest neighbour, through every kind of transform
    chain, on an oblique grid that reaches beyond the moving image (zero there). Truth: ANTs'
    results; linear to the float32 rounding of the indices (1e-4 of values of unit scale),
    nearest exactly except where an index lies half-way between voxels to 1e-3 (a tie). A
    label map by genericLabel equals :func:`resample`'s vote (ANTs' own, test above)."""
    ants = reg._ants()
    smooth, aff, f_shape, f_aff = _scene("oblique")
    smooth = (smooth / smooth.std() + 3.0).astype(np.float32)  # nowhere zero inside
    integers = np.digitize(smooth, np.quantile(smooth, [0.25, 0.5, 0.75])).astype(np.float32)
    labels = (integers * 5).astype(np.float32)
    labels[:3] = 0
    transforms = [_transform_file(ants, k, tmp_path) for k in chain]
    kinds = ("linear", "nearestNeighbor", "genericLabel")
    images = (smooth, integers, labels)
    got = reg.resample_many(list(zip(images, kinds, strict=True)), aff, f_shape, f_aff,
                            transforms, invert)
    for data, kind, g in zip(images, kinds, got, strict=True):
        ref = _ants_resample(ants, data, aff, f_shape, f_aff, transforms, kind, invert)
        assert g.shape == tuple(f_shape) and g.dtype == np.float32
        if kind == "linear":
            assert (ref == 0).any() and (ref != 0).mean() > 0.5  # inside and beyond the image
            np.testing.assert_allclose(g, ref, atol=1e-4)
            continue
        if kind == "genericLabel":  # resample's vote exactly (against ANTs: the test above)
            np.testing.assert_array_equal(g, reg.resample(data, aff, f_shape, f_aff, transforms,
                                                          kind, invert))
            continue
        differ = np.argwhere(g != ref)
        assert len(differ) <= 0.001 * g.size, (kind, len(differ))
        if len(differ):  # only where the index lies half-way between voxels (a tie)
            idx = reg._continuous_index(data.shape, aff, f_shape, f_aff, transforms, invert)
            for p in differ:
                frac = np.array([c[tuple(p)] for c in idx]) % 1.0
                assert np.any(np.abs(frac - 0.5) < 1e-3), (kind, p, frac)
    with pytest.raises(InputError, match="one grid"):
        reg.resample_many([(smooth, "linear"), (smooth[:-1], "linear")], aff, f_shape, f_aff,
                          transforms, invert)
    with pytest.raises(InputError, match="interpolation"):
        reg.resample_many([(smooth, "bSpline")], aff, f_shape, f_aff, transforms, invert)
