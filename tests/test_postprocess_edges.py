"""Post-processing spec: min–max, CRF, threshold + closing, tightest box, and the edge cases."""

import numpy as np
import pytest

from mzs_jax.pipeline import postprocess as pp


def _disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_empty_map_gives_no_box_and_empty_mask():
    img = np.zeros((40, 60, 3), np.float32)
    out = pp.refine(img, np.zeros((40, 60)))
    assert out.empty and out.boxes.shape == (0, 4)
    assert out.mask.shape == (40, 60) and not out.mask.any()
    assert not pp.boxes_to_mask(out.boxes, (40, 60)).any()


def test_all_ones_map_gives_the_full_image_box():
    img = np.random.default_rng(0).random((30, 50, 3)).astype(np.float32)
    out = pp.refine(img, np.ones((30, 50)))
    np.testing.assert_array_equal(out.boxes, [[0, 0, 50, 30]])
    assert out.mask.all()


def test_minmax_maps_to_unit_range_and_keeps_constant_maps():
    x = np.array([[2.0, 4.0], [3.0, 6.0]])
    np.testing.assert_allclose(pp.minmax(x), [[0, 0.5], [0.25, 1]])
    np.testing.assert_array_equal(pp.minmax(np.full((3, 3), 7.0)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        pp.minmax(np.array([[np.nan, 1.0]]))


def test_union_box_is_tight_on_a_non_square_image():
    m = np.zeros((20, 70), bool)
    m[3:8, 10:15] = True
    m[12:18, 50:66] = True
    np.testing.assert_array_equal(pp.tightest_box(m), [[10, 3, 66, 18]])


def test_components_mode_gives_one_box_per_component_above_the_area_fraction():
    m = np.zeros((64, 48), bool)
    m[2:12, 2:12] = True  # area 100
    m[30:50, 20:40] = True  # area 400
    m[60:62, 45:47] = True  # area 4: under 0.05 * 504
    boxes = pp.tightest_box(m, mode="components", min_area_fraction=0.05)
    np.testing.assert_array_equal(boxes, [[20, 30, 40, 50], [2, 2, 12, 12]])
    np.testing.assert_array_equal(pp.tightest_box(m, mode="largest"), [[20, 30, 40, 50]])
    assert len(pp.tightest_box(m, mode="components", min_area_fraction=0.0)) == 3


def test_closing_fills_a_one_pixel_hole_and_keeps_border_foreground():
    prob = np.ones((9, 11))
    prob[4, 5] = 0.0
    m = pp.binarize(prob, 0.5, 3)
    assert m.all()  # hole filled, edges not eroded
    assert not pp.binarize(prob, 0.5, 1)[4, 5]


def test_bad_box_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="box_mode"):
        pp.tightest_box(np.ones((4, 4), bool), mode="biggest")


def test_crf_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(8, 8\).*\(8, 9\)"):
        pp.dense_crf(np.zeros((8, 9, 3)), np.zeros((8, 8)))


def test_crf_cleans_a_noisy_circle():
    rng = np.random.default_rng(0)
    h, w = 64, 96
    truth = _disk(h, w, 30, 50, 16)
    image = np.where(truth[..., None], 0.8, 0.2) + 0.05 * rng.standard_normal((h, w, 1))
    image = np.clip(np.repeat(image, 3, -1), 0, 1)
    prob = np.clip(np.where(truth, 0.7, 0.3) + 0.35 * rng.standard_normal((h, w)), 0, 1)
    noisy_acc = ((prob > 0.5) == truth).mean()
    refined = pp.dense_crf(
        image,
        prob,
        iterations=5,
        gaussian_sxy=3,
        gaussian_compat=3,
        bilateral_sxy=40,
        bilateral_srgb=13,
        bilateral_compat=10,
    )
    ref_acc = ((pp.dense_crf(image, prob) > 0.5) == truth).mean()  # reference defaults
    crf_acc = ((refined > 0.5) == truth).mean()
    assert refined.shape == (h, w) and refined.dtype == np.float32
    assert noisy_acc < 0.9 and crf_acc > 0.98 and ref_acc > noisy_acc, (noisy_acc, crf_acc, ref_acc)


def test_refine_box_matches_a_clean_blob_on_a_non_square_image():
    h, w = 48, 80
    truth = _disk(h, w, 20, 60, 8)
    image = np.repeat(np.where(truth, 0.9, 0.1)[..., None], 3, -1)
    sal = np.where(truth, 3.0, -1.0)
    out = pp.refine(image, sal)
    assert pp.box_iou(out.boxes[0], pp.tightest_box(truth)[0]) > 0.9
