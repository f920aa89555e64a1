"""IoU / Dice / AUC (paper Eqs. 10-12): hand-computed cases, sklearn agreement, properties."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import f1_score, jaccard_score, roc_auc_score

from mzs_jax.pipeline.metrics import auc, case_metrics, dice, iou, multiclass_case_metrics

masks = arrays(np.bool_, st.tuples(st.integers(1, 6), st.integers(1, 6)))


def test_dice_and_iou_match_hand_computed_counts():
    pred = np.array([[1, 1], [0, 0]])
    gt = np.array([[1, 0], [1, 0]])  # TP=1, FP=1, FN=1
    assert dice(pred, gt) == pytest.approx(2 * 1 / (2 + 2))
    assert iou(pred, gt) == pytest.approx(1 / 3)


def test_auc_matches_hand_computed_pairs():
    # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs ranked correctly.
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)


def test_both_empty_scores_one_and_is_flagged():
    z = np.zeros((4, 4), bool)
    m = case_metrics(z, z, np.zeros((4, 4)))
    assert m["dice"] == 1.0 and m["iou"] == 1.0
    assert "both_empty" in m["note"] and math.isnan(m["auc"])
    assert "auc_undefined_gt_constant" in m["note"]


def test_one_sided_empty_scores_zero_and_is_flagged():
    z, o = np.zeros((3, 3), bool), np.ones((3, 3), bool)
    assert case_metrics(z, o)["dice"] == 0.0 and "pred_empty" in case_metrics(z, o)["note"]
    assert case_metrics(o, z)["iou"] == 0.0 and "gt_empty" in case_metrics(o, z)["note"]


def test_auc_is_nan_without_soft_map_and_says_so():
    m = case_metrics(np.eye(3, dtype=bool), np.eye(3, dtype=bool))
    assert math.isnan(m["auc"]) and "no_soft_map" in m["note"]


@pytest.mark.parametrize("shape", [(32, 32), (5, 16, 16)])
def test_metrics_agree_with_sklearn_slices_and_volumes(shape):
    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = rng.random(shape) < 0.3
        score = np.clip(gt * 0.3 + rng.random(shape) * 0.8, 0, 1)
        pred = score > 0.5
        assert iou(pred, gt) == pytest.approx(jaccard_score(gt.ravel(), pred.ravel()))
        assert dice(pred, gt) == pytest.approx(f1_score(gt.ravel(), pred.ravel()))
        assert auc(score, gt) == pytest.approx(roc_auc_score(gt.ravel(), score.ravel()))


def test_auc_with_many_ties_agrees_with_sklearn():
    rng = np.random.default_rng(1)
    gt = rng.random(500) < 0.4
    score = np.round(rng.random(500) + 0.3 * gt, 1)
    assert auc(score, gt) == pytest.approx(roc_auc_score(gt, score))


def test_volume_wise_metric_pools_voxels_rather_than_averaging_slices():
    gt = np.zeros((2, 4, 4), bool)
    gt[0, :2] = True  # 8 voxels
    gt[1, 0, 0] = True  # 1 voxel
    pred = gt.copy()
    pred[1] = False  # miss the small slice entirely
    assert dice(pred, gt) == pytest.approx(2 * 8 / (8 + 9))
    assert np.mean([dice(pred[i], gt[i]) for i in range(2)]) == pytest.approx(0.5)


def test_multiclass_metrics_are_per_label_with_probabilities_indexed_by_label():
    gt = np.array([[0, 1, 2], [0, 1, 2]])
    pred = np.array([[0, 1, 1], [0, 1, 2]])
    probs = np.stack([(pred == c).astype(float) for c in range(3)])
    out = multiclass_case_metrics(pred, gt, [1, 2], probs)
    assert out[1]["dice"] == pytest.approx(2 * 2 / (3 + 2))
    assert out[2]["iou"] == pytest.approx(1 / 2)
    assert out[2]["auc"] == pytest.approx(roc_auc_score((gt == 2).ravel(), probs[2].ravel()))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="binary"):
        iou(np.full((2, 2), 3), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="soft map"):
        multiclass_case_metrics(np.zeros((2, 2)), np.zeros((2, 2)), [1, 2], np.zeros((2, 2, 2)))


@settings(max_examples=60, deadline=None)
@given(masks)
def test_dice_of_nonempty_mask_with_itself_is_one(m):
    if m.any():
        assert dice(m, m) == 1.0 and iou(m, m) == 1.0


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_dice_and_iou_are_symmetric_and_related(data):
    a = data.draw(masks)
    b = data.draw(arrays(np.bool_, a.shape))
    d = dice(a, b)
    assert d == pytest.approx(dice(b, a)) and iou(a, b) == pytest.approx(iou(b, a))
    assert iou(a, b) == pytest.approx(d / (2 - d))
    assert 0.0 <= d <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_auc_flips_under_negated_scores(data):
    g = data.draw(masks)
    s = data.draw(arrays(np.float64, g.shape, elements=st.floats(0, 1)))
    a = auc(s, g)
    if g.any() and not g.all():
        assert 0.0 <= a <= 1.0 and auc(-s, g) == pytest.approx(1.0 - a)
    else:
        assert math.isnan(a)
