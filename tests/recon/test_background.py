"""Background field removal (PDF, LBV, V-SHARP) against analytic fields and the phantom truth.

Analytic cases pin each method down exactly: a field whose sources all lie outside the mask
must be removed, a field whose sources lie well inside must be kept. On the 2 mm head phantom
the local field each method leaves is compared with the simulator's true local field (the
field of the susceptibility inside the true brain mask, relative to CSF); the NRMSE is stated
in the test report (``record_property``) and in the assertion message.

Why the phantom NRMSEs are large (0.6-0.9 in the returned masks), and the bounds loose:
- a constant is unobservable, so means are removed; but the local field also has a smooth
  component that is *harmonic* inside the mask (the exterior dipole field of white matter and
  nuclei reaching the CSF and cortex next to the boundary), which no background method can
  tell from the background: this alone costs LBV about 0.3 at 1 mm and 0.4 at 2 mm
  (``docs/recon.md``);
- at 2 mm the phantom's boundary voxels carry partial-volume skull and air (chi from -0.75 to
  +0.35 ppm in 2171 of the 15229 boundary voxels); the truth counts them as local sources,
  while every method treats the boundary as background or unreliable, and their field is
  strongest exactly there;
- PDF's errors concentrate next to the boundary (its fit leaks where the fields of inside and
  outside sources are least orthogonal): 2 voxels in from the edge its NRMSE halves.
The bounds are set about 10% above the values the implementation gives (stated in each test)
so that a regression shows, while the analytic tests carry the tight, justified tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage as ndi

from qsmiron.errors import InputError
from qsmiron.recon.background import lbv, pdf, smv_kernel, vsharp
from qsmiron.simulate.gre import forward_field

SIX = ndi.generate_binary_structure(3, 1)


def nrmse(est: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float:
    """``||est - true|| / ||true||`` in ``mask`` after removing each one's mean there."""
    a = est[mask].astype(np.float64)
    b = true[mask].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def leak(est: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Norm of ``est`` (mean removed) relative to that of ``ref`` (mean removed) in ``mask``."""
    a = est[mask].astype(np.float64)
    b = ref[mask].astype(np.float64)
    return float(np.linalg.norm(a - a.mean()) / np.linalg.norm(b - b.mean()))


METHODS = {
    "pdf": lambda f, m, vs, **kw: pdf(f, m, vs, **kw),
    "lbv": lambda f, m, vs, **kw: lbv(f, m, vs, **kw),
    "vsharp": lambda f, m, vs, **kw: vsharp(f, m, vs, **kw),
}


# --------------------------------------------------------------------------------------
# analytic fields on small grids
# --------------------------------------------------------------------------------------


def _grid(shape, voxel_size):
    vs = np.broadcast_to(np.asarray(voxel_size, float), (3,))
    axes = [(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, vs, strict=True)]
    return np.meshgrid(*axes, indexing="ij")


def _ball(x, y, z, centre, radius):
    cx, cy, cz = centre
    return (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius**2


@pytest.fixture(scope="module")
def outside_case():
    """Sources only outside a box mask: air ball beside it, a bone plate under it (1 mm)."""
    shape = (64, 64, 64)
    x, y, z = _grid(shape, 1.0)
    chi = np.zeros(shape, np.float32)
    chi[_ball(x, y, z, (0, 24, 4), 6)] = 9.4
    chi[(np.abs(z + 26) <= 2) & (np.abs(x) < 20) & (np.abs(y) < 20)] = -2.0
    mask = (np.abs(x) < 18) & (np.abs(y + 2) < 16) & (np.abs(z - 2) < 18)
    assert not (mask & (chi != 0)).any()
    return forward_field(chi, 1.0), mask


@pytest.mark.parametrize("method,bound", [("pdf", 0.02), ("lbv", 1e-3), ("vsharp", 0.01)])
def test_outside_sources_removed(outside_case, method, bound, record_property):
    """A field made only by sources outside the mask is removed: what is left, relative to
    that field, is below 2% (PDF: the CG stops at 0.2% relative residual, and the fit is by
    a kernel other than the simulator's), 0.1% (LBV: exact for a discretely harmonic field up
    to the solver tolerance) and 1% (V-SHARP: exact where the ball fits, minus the truncated
    deconvolution)."""
    field, mask = outside_case
    local, m = METHODS[method](field, mask, 1.0)
    value = leak(local, field, m)
    record_property(f"{method}_outside_leak", value)
    assert value < bound, f"{method}: {100 * value:.2f}% of an outside-source field is left"
    assert local.dtype == np.float32 and m.dtype == bool


@pytest.fixture(scope="module")
def inside_case():
    """Sources well inside a spherical mask (radius 30 mm): two balls of +-0.1 ppm (1 mm)."""
    shape = (80, 80, 80)
    x, y, z = _grid(shape, 1.0)
    mask = _ball(x, y, z, (0, 0, 0), 30)
    chi = np.zeros(shape, np.float32)
    chi[_ball(x, y, z, (5, -3, 4), 4)] = 0.1
    chi[_ball(x, y, z, (-8, 6, -2), 3)] = -0.1
    return forward_field(chi, 1.0), mask


@pytest.mark.parametrize("method,bound", [("pdf", 0.15), ("lbv", 0.05), ("vsharp", 0.05)])
def test_inside_sources_preserved(inside_case, method, bound, record_property):
    """A field made only by sources well inside the mask is kept (NRMSE in the returned
    mask). PDF (about 10%): dipole fields of inside and outside sources are not exactly
    orthogonal, so the fit takes some of the local field (Liu et al. 2011 report the same).
    LBV (about 2%): the local field on the boundary (1/r^3 tail, small 20 mm away) is taken
    for background. V-SHARP (about 2.5%): the truncated deconvolution loses the lowest
    frequencies."""
    field, mask = inside_case
    local, m = METHODS[method](field, mask, 1.0)
    value = nrmse(local, field, m)
    record_property(f"{method}_inside_nrmse", value)
    assert value < bound, f"{method}: NRMSE {value:.3f} of an inside-source field"


@pytest.mark.parametrize(
    "voxel_size,b0_dir",
    [((1.0, 1.0, 2.0), (0.0, 0.0, 1.0)), ((1.0, 1.0, 2.0), (0.3, -0.4, 0.866)),
     ((0.8, 1.2, 1.0), (0.5, 0.0, 0.866))],
)
def test_pdf_anisotropic_oblique(voxel_size, b0_dir, record_property):
    """PDF with anisotropic voxels and oblique B0 (data simulated with the same geometry):
    an outside-source field (air ball, bone ball) is removed to ~1.2% (bound 2.5%); an
    inside ball's field is kept with NRMSE ~0.3 (bound 0.4: the 4 mm ball sits 10 mm from the
    edge of an 18 mm mask, where inside and outside dipole fields are far from orthogonal);
    assuming isotropic voxels instead makes it more than twice as bad."""
    shape = (64, 64, 40) if voxel_size[2] == 2.0 else (72, 48, 64)
    x, y, z = _grid(shape, voxel_size)
    chi = np.zeros(shape, np.float32)
    chi[_ball(x, y, z, (0, 26, 10), 6)] = 9.4
    chi[_ball(x, y, z, (-22, -18, -20), 6)] = -2.0
    mask = _ball(x, y, z, (0, -2, 0), 18)
    assert not (mask & (chi != 0)).any()
    inner = np.zeros(shape, np.float32)
    inner[_ball(x, y, z, (2, -3, 1), 4)] = 0.1
    background = forward_field(chi, voxel_size, b0_dir)
    local_true = forward_field(inner, voxel_size, b0_dir)
    local, m = pdf(background, mask, voxel_size, b0_dir)
    left = leak(local, background, m)
    local, m = pdf(background + local_true, mask, voxel_size, b0_dir)
    value = nrmse(local, local_true, m)
    iso, _ = pdf(background + local_true, mask, 1.0, b0_dir)
    wrong = nrmse(iso, local_true, m)
    record_property("pdf_aniso", {"leak": left, "nrmse": value, "nrmse_iso_voxels": wrong})
    msg = f"voxels {voxel_size}, B0 {b0_dir}: leak {left:.4f}, NRMSE {value:.3f}, iso {wrong:.3f}"
    assert left < 0.025 and value < 0.4 and wrong > 2 * value, msg


def test_pdf_equivariant_under_axis_permutation():
    """Reversing the axes of the data, the voxel size and B0 reverses the result: PDF uses
    voxel size and B0 direction consistently (FFT grids chosen to permute exactly)."""
    vs = (1.0, 1.0, 2.0)
    b0 = (0.3, -0.4, 0.866)
    x, y, z = _grid((64, 48, 32), vs)
    chi = np.zeros(x.shape, np.float32)
    chi[_ball(x, y, z, (0, 20, 12), 6)] = 9.4
    chi[_ball(x, y, z, (2, -3, 1), 4)] = 0.1
    mask = _ball(x, y, z, (0, -4, 0), 16) & (chi != 9.4)
    field = forward_field(chi, vs, b0)
    a, ma = pdf(field, mask, vs, b0, tol=1e-3)
    b, mb = pdf(field.transpose(2, 1, 0), mask.transpose(2, 1, 0), vs[::-1], b0[::-1], tol=1e-3)
    np.testing.assert_array_equal(mb.transpose(2, 1, 0), ma)
    assert nrmse(b.transpose(2, 1, 0), a, ma) < 1e-3


def test_lbv_exact_for_harmonic_polynomials():
    """Discretely harmonic polynomials (x^2 - y^2, x^3 - 3 x y^2, linear) are pure
    background for LBV: removed to the solver tolerance, also with anisotropic voxels."""
    vs = (0.5, 0.5, 2.0)
    x, y, z = _grid((96, 96, 32), vs)
    field = 0.01 * (x * x - y * y) + 1e-4 * (x**3 - 3 * x * y * y) + 0.02 * z + 0.3
    mask = (x / 22) ** 2 + (y / 20) ** 2 + (z / 26) ** 2 < 1
    info: dict = {}
    local, m = lbv(field.astype(np.float32), mask, vs, tol=1e-6, info=info)
    assert np.abs(local[m]).max() < 1e-4 * np.abs(field[m]).max()
    # the multigrid preconditioner keeps the iteration count low despite 4:1 voxels
    assert info["iterations"] <= 12, info


def test_returned_masks():
    """LBV drops the boundary and ``peel`` layers, V-SHARP erodes by its smallest radius,
    PDF keeps the mask."""
    x, y, z = _grid((40, 40, 40), 1.0)
    mask = _ball(x, y, z, (0, 0, 0), 15)
    field = (0.01 * x + 0.001 * (y * y - z * z) + 0.5).astype(np.float32)
    for peel in (0, 1, 3):
        _, m = lbv(field, mask, 1.0, peel=peel)
        np.testing.assert_array_equal(m, ndi.binary_erosion(mask, SIX, iterations=1 + peel))
    _, m = vsharp(field, mask, 1.0, radii_mm=(5.0, 3.0))
    ball3 = _ball(*_grid((7, 7, 7), 1.0), (0, 0, 0), 3)
    np.testing.assert_array_equal(m, ndi.binary_erosion(mask, ball3))
    _, m = pdf(field, mask, 1.0, max_iter=2)
    np.testing.assert_array_equal(m, mask)


def test_smv_kernel_is_a_mean():
    """The SMV kernel is 1 at k = 0 and averages: x^2 - y^2 (isotropic voxels) and linear
    functions equal their ball means (mean value property), away from the grid edges."""
    shape = (32, 32, 32)
    s = smv_kernel(shape, 1.0, 4.0)
    assert s.shape == (32, 32, 17) and s.dtype == np.float32
    assert s[0, 0, 0] == pytest.approx(1.0, abs=1e-6)
    assert s.max() <= 1.0 + 1e-6 and s.min() >= -1.0
    x, y, z = _grid(shape, 1.0)
    f = (x * x - y * y + 2 * z).astype(np.float32)
    mean = scipy.fft.irfftn(scipy.fft.rfftn(f) * s, s=shape)
    core = (slice(6, -6),) * 3
    np.testing.assert_allclose(mean[core], f[core], atol=1e-3)


# --------------------------------------------------------------------------------------
# the 2 mm head phantom
# --------------------------------------------------------------------------------------

#: Measured on ``subject2mm`` (NRMSE vs field_local in the returned mask / in the returned mask
#: 2 voxels in from the brain edge): PDF 0.80 / 0.43, LBV 0.87 / 0.87, V-SHARP 0.59 / 0.58.
PHANTOM_BOUNDS = {"pdf": (0.9, 0.5), "lbv": (0.95, 0.95), "vsharp": (0.7, 0.7)}


@pytest.fixture(scope="module")
def phantom_results(subject2mm):
    f = subject2mm.scan.field_total
    brain = subject2mm.brain
    vs = subject2mm.voxel_size
    out = {}
    for name, fn in METHODS.items():
        info: dict = {}
        local, m = fn(f, brain, vs, info=info)
        out[name] = (local, m, info)
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_phantom_local_field_nrmse(subject2mm, phantom_results, method, record_property):
    """NRMSE against the true local field, in the returned mask and 2 voxels in from the
    brain's edge (where the partial-volume skull of the boundary voxels no longer dominates);
    see the module docstring for why these levels are expected."""
    local, m, info = phantom_results[method]
    truth = subject2mm.scan.field_local
    core = m & ndi.binary_erosion(subject2mm.brain, SIX, iterations=2)
    full_value = nrmse(local, truth, m)
    core_value = nrmse(local, truth, core)
    record_property(f"{method}_nrmse_mask", round(full_value, 4))
    record_property(f"{method}_nrmse_core", round(core_value, 4))
    record_property(f"{method}_info", {k: v for k, v in info.items() if k != "levels"})
    full_bound, core_bound = PHANTOM_BOUNDS[method]
    msg = (f"{method}: NRMSE {full_value:.3f} in its mask ({int(m.sum())} voxels), "
           f"{core_value:.3f} 2 voxels in ({int(core.sum())} voxels); info {info}")
    assert full_value < full_bound and core_value < core_bound, msg
    assert local.dtype == np.float32 and not local[~m].any()


@pytest.mark.parametrize("method,bound", [("pdf", 0.3), ("lbv", 1e-3), ("vsharp", 0.2)])
def test_phantom_background_removed(subject2mm, method, bound, record_property):
    """The phantom's true background (total minus local: air, skull, scalp) alone, passed
    through each method, leaves little, relative to the true local field's norm: LBV removes
    it to the solver tolerance (it is discretely harmonic inside the mask), V-SHARP to
    about 0.17 (truncated deconvolution near the edge), PDF to about 0.24, most of it next to
    the boundary."""
    sc = subject2mm.scan
    background = sc.field_total - sc.field_local
    local, m = METHODS[method](background, subject2mm.brain, subject2mm.voxel_size)
    value = leak(local, sc.field_local, m)
    record_property(f"{method}_background_leak", value)
    assert value < bound, f"{method}: background left = {value:.3f} x the local field's norm"


def test_pdf_weights_and_fft_count(subject2mm, phantom_results, record_property):
    """Magnitude data weights (small at the dark, noisy edges) do not hurt PDF; the FFT count
    is 4 per CG iteration plus 4."""
    sc = subject2mm.scan
    info: dict = {}
    local, m = pdf(sc.field_total, subject2mm.brain, subject2mm.voxel_size,
                   weights=sc.magnitude[..., 0], info=info)
    value = nrmse(local, sc.field_local, m)
    record_property("pdf_magnitude_weights_nrmse", value)
    assert value < PHANTOM_BOUNDS["pdf"][0]
    assert info["n_fft"] == 4 * info["iterations"] + 4
    _, _, info0 = phantom_results["pdf"]
    assert info0["iterations"] < 50 and info0["relative_residual"] <= 2e-3


def test_linear_in_units(subject2mm):
    """The methods are linear: a field in Hz gives the local field in Hz."""
    f = subject2mm.scan.field_total
    brain = subject2mm.brain
    vs = subject2mm.voxel_size
    scale = np.float32(127.7)  # ppm -> Hz at 3 T
    for name in ("lbv", "vsharp"):
        a, _ = METHODS[name](f, brain, vs)
        b, _ = METHODS[name](f * scale, brain, vs)
        np.testing.assert_allclose(b, a * scale, atol=2e-3 * float(np.abs(a * scale).max()))


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    x, y, z = _grid((24, 24, 24), 1.0)
    mask = _ball(x, y, z, (0, 0, 0), 9)
    field = (0.01 * x + 0.002 * (y * y - z * z) + 0.1).astype(np.float32)
    return field, mask


@pytest.mark.parametrize("method", list(METHODS))
def test_bad_inputs(small, method):
    field, mask = small
    fn = METHODS[method]
    with pytest.raises(InputError, match="empty"):
        fn(field, np.zeros_like(mask), 1.0)
    with pytest.raises(InputError, match="does not match"):
        fn(field, mask[:-1], 1.0)
    nan = field.copy()
    nan[12, 12, 12] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fn(nan, mask, 1.0)
    shifted = np.where(np.roll(mask, 8, axis=0), field, 0).astype(np.float32)
    with pytest.raises(InputError, match="outside the field"):
        fn(shifted, mask, 1.0)
    with pytest.raises(InputError, match="voxel_size"):
        fn(field, mask, (1.0, -1.0, 1.0))
    # NaN outside the mask is ignored
    outside_nan = field.copy()
    outside_nan[0, 0, 0] = np.nan
    local, m = fn(outside_nan, mask, 1.0)
    assert np.isfinite(local).all()


def test_bad_method_options(small):
    field, mask = small
    with pytest.raises(InputError, match="noise"):
        pdf(field, mask, 1.0, noise=np.zeros_like(field))
    with pytest.raises(InputError, match="either"):
        pdf(field, mask, 1.0, noise=np.ones_like(field), weights=np.ones_like(field))
    with pytest.raises(InputError, match="b0_dir"):
        pdf(field, mask, 1.0, b0_dir=(0, 0, 0))
    with pytest.raises(InputError, match="radii"):
        vsharp(field, mask, (1.0, 1.0, 2.0), radii_mm=(4.0, 1.0))
    with pytest.raises(InputError, match="threshold"):
        vsharp(field, mask, 1.0, threshold=1.5)
    thin = np.zeros_like(mask)
    thin[5:20, 5:20, 12:14] = True
    with pytest.raises(InputError, match="interior"):
        lbv(field, thin, 1.0)
    with pytest.raises(InputError, match="ball"):
        vsharp(field, thin, 1.0, radii_mm=(3.0,))
