"""NSD and HD95: shapes with analytic answers, MONAI agreement on random shapes, properties."""

import math

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from mzs_jax import cli
from mzs_jax.pipeline import evaluate
from mzs_jax.pipeline.metrics import (
    case_metrics,
    hd95,
    nsd,
    surface_distances,
    surface_metrics,
)


def _point(shape, where):
    m = np.zeros(shape, bool)
    m[where] = True
    return m


@pytest.mark.parametrize(
    "shape, a, b, spacing",
    [
        ((10, 12), (2, 3), (6, 3), (1.0, 1.0)),
        ((10, 12), (2, 3), (6, 9), (0.5, 2.0)),
        ((8, 9, 10), (2, 3, 4), (5, 3, 8), (2.0, 1.0, 0.5)),
    ],
)
def test_two_single_voxels_are_their_spacing_scaled_distance_apart(shape, a, b, spacing):
    d = float(np.linalg.norm((np.subtract(a, b)) * np.asarray(spacing)))
    p, g = _point(shape, a), _point(shape, b)
    assert hd95(p, g, spacing) == pytest.approx(d)
    assert nsd(p, g, tolerance=d, spacing=spacing) == 1.0
    assert nsd(p, g, tolerance=d * 0.999, spacing=spacing) == 0.0


@pytest.mark.parametrize("k, sy, sx", [(2, 2.5, 1.0), (3, 2.5, 1.0), (1, 0.8, 3.0)])
def test_parallel_lines_are_k_rows_apart_in_the_row_spacing(k, sy, sx):
    g = np.zeros((20, 30), bool)
    g[5, 3:25] = True
    p = np.roll(g, k, axis=0)
    d = k * sy  # every voxel's nearest partner is straight across; the column spacing is unused
    d_pg, d_gp = surface_distances(p, g, (sy, sx))
    np.testing.assert_allclose(d_pg, d)
    np.testing.assert_allclose(d_gp, d)
    assert hd95(p, g, (sy, sx)) == pytest.approx(d)
    assert nsd(p, g, 5.0, (sy, sx)) == (1.0 if d <= 5.0 else 0.0)


def _square(size, center, half):
    m = np.zeros((size, size), bool)
    m[center - half : center + half + 1, center - half : center + half + 1] = True
    return m


@pytest.mark.parametrize("r, k", [(6, 1), (6, 3), (10, 4)])
def test_concentric_squares_match_the_counted_ring_distances(r, k):
    """GT: square of half-width r; prediction: half-width r + k, same centre. Every GT boundary
    pixel is k from the prediction's ring; prediction ring pixels beside the GT's sides are k
    away, the 2k−1 pixels of each corner sqrt(k² + j²) away (to the GT corner)."""
    g, p = _square(48, 24, r), _square(48, 24, r + k)
    d_gp = np.full(8 * r, float(k))
    corner = [math.hypot(k, j) for j in range(1, k + 1)] + [math.hypot(k, j) for j in range(1, k)]
    d_pg = np.sort(np.array([float(k)] * 4 * (2 * r + 1) + corner * 4))
    got_pg, got_gp = surface_distances(p, g)
    np.testing.assert_allclose(np.sort(got_pg), d_pg)
    np.testing.assert_allclose(np.sort(got_gp), d_gp)
    expected_hd95 = max(np.percentile(d_pg, 95), k)
    assert hd95(p, g) == pytest.approx(expected_hd95)
    for tol in (k - 0.5, k, k + 0.5, math.hypot(k, k)):
        expected = ((d_pg <= tol).sum() + (d_gp <= tol).sum()) / (d_pg.size + d_gp.size)
        assert nsd(p, g, tol) == pytest.approx(expected)
    assert nsd(p, g, math.hypot(k, k)) == 1.0  # the largest distance is the corner's k√2


def test_identical_masks_score_nsd_one_and_hd95_zero():
    m = _square(20, 10, 4)
    assert surface_metrics(m, m, spacing=(0.3, 0.7), tolerance=0.0) == (1.0, 0.0)


def test_empty_mask_conventions():
    z, m = np.zeros((10, 20), bool), _square(10, 5, 2)[:, :10].repeat(2, axis=1)
    assert surface_metrics(z, z) == (1.0, 0.0)
    diagonal = math.hypot(10 * 2.0, 20 * 0.5)
    for a, b in ((z, m), (m, z)):
        n, h = surface_metrics(a, b, spacing=(2.0, 0.5))
        assert n == 0.0 and h == pytest.approx(diagonal)
    c = case_metrics(z, m, spacing=(2.0, 0.5))
    assert c["nsd"] == 0.0 and c["hd95"] == pytest.approx(diagonal) and "pred_empty" in c["note"]


def test_bad_spacing_and_tolerance_are_clear_errors():
    m = _square(10, 5, 2)
    with pytest.raises(ValueError, match="spacing must be 2 positive"):
        nsd(m, m, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="spacing must be 2 positive"):
        hd95(m, m, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        nsd(m, m, tolerance=-1.0)


def _blob(rng, shape, sigma=2.0, level=0.1):
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma) > level


@pytest.mark.parametrize(
    "shape, spacing",
    [((40, 50), (1.0, 1.0)), ((40, 50), (0.7, 1.9)), ((10, 30, 24), (3.0, 0.8, 0.8))],
)
def test_nsd_and_hd95_agree_with_monai_on_random_shapes(shape, spacing):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(0)

    def onehot(m):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    for _ in range(6):
        p, g = _blob(rng, shape), _blob(rng, shape)
        for tol in (1.0, 2.0, 4.5):
            ref = monai_metrics.compute_surface_dice(
                onehot(p), onehot(g), [tol], spacing=list(spacing)
            ).item()
            assert nsd(p, g, tol, spacing) == pytest.approx(ref, abs=1e-6)
        ref = monai_metrics.compute_hausdorff_distance(
            onehot(p), onehot(g), percentile=95, spacing=list(spacing)
        ).item()
        assert hd95(p, g, spacing) == pytest.approx(ref, rel=1e-5)


masks = arrays(np.bool_, st.tuples(st.integers(2, 9), st.integers(2, 9)))


@settings(max_examples=60, deadline=None)
@given(masks, st.data(), st.floats(0.0, 5.0))
def test_nsd_and_hd95_properties(a, data, tol):
    b = data.draw(arrays(np.bool_, a.shape))
    n_ab, h_ab = surface_metrics(a, b, tolerance=tol)
    n_ba, h_ba = surface_metrics(b, a, tolerance=tol)
    assert n_ab == pytest.approx(n_ba) and h_ab == pytest.approx(h_ba)  # symmetric
    assert 0.0 <= n_ab <= 1.0 and h_ab >= 0.0
    assert nsd(a, b, tol + 1.0) >= n_ab  # a looser tolerance never scores lower
    if a.any() and b.any():
        d_ab, d_ba = surface_distances(a, b)
        assert h_ab <= max(d_ab.max(), d_ba.max()) + 1e-9
        assert nsd(a, b, max(d_ab.max(), d_ba.max())) == 1.0  # tolerance ≥ Hausdorff: all within
    shifted_a, shifted_b = np.pad(a, ((3, 0), (0, 2))), np.pad(b, ((3, 0), (0, 2)))
    if a.any() and b.any():  # translation with background all round does not change distances
        n_s, h_s = surface_metrics(shifted_a, shifted_b, tolerance=tol)
        assert n_s == pytest.approx(n_ab) and h_s == pytest.approx(h_ab)


def test_evaluate_reads_nifti_spacing_for_nsd_and_hd95(tmp_path):
    """A 2 mm row spacing in the NIfTI header turns a 2-row offset into 4 mm: NSD at 3 mm is 0
    (it would be 1 in pixels) and HD95 is 4."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    g = np.zeros((20, 30, 3), np.int16)
    g[5, 3:25, :] = 1
    p = np.roll(g, 2, axis=0)
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(g, affine), gt_dir / "v.nii.gz")
    nib.save(nib.Nifti1Image(p, affine), pred_dir / "v.nii.gz")
    out = tmp_path / "m.csv"
    argv = ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out)]
    assert cli.main([*argv, "--nsd-tolerance", "3"]) == 0
    (row,) = evaluate.read_csv(out)
    assert row["nsd"] == 0.0 and row["hd95"] == pytest.approx(4.0)
    assert float(row["nsd_tol"]) == 3.0
    assert cli.main([*argv, "--nsd-tolerance", "3", "--spacing", "1,1,1"]) == 0
    (row,) = evaluate.read_csv(out)
    assert row["nsd"] == 1.0 and row["hd95"] == pytest.approx(2.0)


def test_evaluate_refuses_prediction_and_ground_truth_with_different_spacing(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    m = np.zeros((6, 6, 2), np.int16)
    m[2:4, 2:4] = 1
    nib.save(nib.Nifti1Image(m, np.diag([1.0, 1.0, 1.0, 1.0])), gt_dir / "v.nii.gz")
    nib.save(nib.Nifti1Image(m, np.diag([1.0, 1.0, 3.0, 1.0])), pred_dir / "v.nii.gz")
    with pytest.raises(ValueError, match="spacing differs.*v.nii.gz"):
        evaluate.evaluate_dirs(pred_dir, gt_dir, method="m", dataset="d")
