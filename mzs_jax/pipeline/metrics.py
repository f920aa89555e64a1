"""Segmentation metrics of one case: IoU, Dice and AUC (paper Eqs. 10-12), any spatial shape.

Pure NumPy/SciPy functions; the empty-mask conventions are stated in `case_metrics` and
`docs/evaluation.md`. Used by `pipeline/evaluate.py` (CSVs, summaries) and stage 3 validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _binary(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    if not np.isin(x, (0, 1)).all():
        raise ValueError(
            f"{name}: expected a binary mask (0/1 or bool), got values {np.unique(x)[:5]}"
        )
    return x.astype(bool)


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} differs from ground-truth shape {b.shape}")


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice = 2|P∩G| / (|P|+|G|) over all pixels/voxels (any shape). Both empty -> 1.0."""
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    _check_same_shape(p, g)
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, g).sum()) / denom


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU = |P∩G| / |P∪G| over all pixels/voxels (any shape). Both empty -> 1.0."""
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    _check_same_shape(p, g)
    union = int(np.logical_or(p, g).sum())
    return 1.0 if union == 0 else int(np.logical_and(p, g).sum()) / union


def auc(score: np.ndarray, gt: np.ndarray) -> float:
    """ROC AUC of a soft map against a binary mask (Mann-Whitney rank form, ties count 1/2).

    NaN when the ground truth is all one class (AUC undefined); callers exclude NaN from means.
    Equals `sklearn.metrics.roc_auc_score(gt.ravel(), score.ravel())`.
    """
    from scipy.stats import rankdata

    s = np.asarray(score, dtype=np.float64)
    g = _binary(gt, "gt")
    _check_same_shape(s, g)
    s, g = s.ravel(), g.ravel()
    n_pos = int(g.sum())
    n_neg = g.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    if not np.isfinite(s).all():
        raise ValueError("soft map contains NaN or inf")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[g].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def case_metrics(pred: np.ndarray, gt: np.ndarray, score: np.ndarray | None = None) -> dict:
    """All metrics of one binary case. Shapes: any, identical (a 2D slice or a 3D volume).

    Conventions (docs/evaluation.md): both masks empty -> IoU = Dice = 1 and note `both_empty`;
    only one empty -> IoU = Dice = 0 (`pred_empty` / `gt_empty`); AUC needs a soft `score` and
    a ground truth with both classes, otherwise NaN and note `auc_undefined_gt_constant` or
    `no_soft_map` (NaN values are left out of every mean and counted in the report).
    """
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    _check_same_shape(p, g)
    notes = []
    np_, ng = int(p.sum()), int(g.sum())
    if np_ == 0 and ng == 0:
        notes.append("both_empty")
    elif np_ == 0:
        notes.append("pred_empty")
    elif ng == 0:
        notes.append("gt_empty")
    if score is None:
        a = float("nan")
        notes.append("no_soft_map")
    else:
        a = auc(score, g)
        if math.isnan(a):
            notes.append("auc_undefined_gt_constant")
    return {
        "iou": iou(p, g),
        "dice": dice(p, g),
        "auc": a,
        "pred_voxels": np_,
        "gt_voxels": ng,
        "note": ";".join(notes),
    }


def multiclass_case_metrics(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    classes: Sequence[int],
    probs: np.ndarray | None = None,
) -> dict[int, dict]:
    """Per-class metrics of one case from integer label maps `(*S)`.

    `probs` is `(C, *S)` class probabilities indexed by label value, or `(*S)` the foreground
    probability when `classes == [1]`. Returns `{class: case_metrics(...)}`.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    _check_same_shape(pred_labels, gt_labels)
    if probs is not None:
        probs = np.asarray(probs)
        if probs.shape == pred_labels.shape:
            if list(classes) != [1]:
                raise ValueError(f"a single soft map needs classes [1], got {list(classes)}")
            probs = np.stack([1.0 - probs, probs])
        if probs.shape[1:] != pred_labels.shape or probs.shape[0] <= max(classes):
            raise ValueError(
                f"soft map shape {probs.shape} does not fit label map "
                f"{pred_labels.shape} with classes {list(classes)}"
            )
    return {
        c: case_metrics(pred_labels == c, gt_labels == c, None if probs is None else probs[c])
        for c in classes
    }


def nanmean(v: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN when nothing is left."""
    a = np.asarray(v, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")
