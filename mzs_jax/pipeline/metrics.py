"""Segmentation metrics of one case: IoU, Dice, AUC (paper Eqs. 10-12), NSD and HD95, any shape.

Pure NumPy/SciPy functions; the empty-mask conventions are stated in `case_metrics` and
`docs/evaluation.md`. Used by `pipeline/evaluate.py` (CSVs, summaries) and stage 3 validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

# MedCLIP-SAMv2's NSD tolerance: 2 (pixels there; mm here, with the file's spacing).
NSD_TOLERANCE = 2.0


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


def _spacing(spacing, ndim: int) -> np.ndarray:
    """Voxel spacing `(ndim,)` float64: None → 1 per axis (pixels), a scalar → isotropic."""
    s = np.ones(ndim) if spacing is None else np.asarray(spacing, np.float64).ravel()
    s = np.repeat(s, ndim) if s.size == 1 else s
    if s.size != ndim or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(
            f"spacing must be {ndim} positive numbers for a {ndim}-D mask, got {spacing}"
        )
    return s


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a bool mask: the mask minus its erosion by the face-connected cross;
    voxels on the array border count as boundary (MONAI `get_mask_edges`, no sub-voxel areas)."""
    m = np.asarray(mask, bool)
    return m & ~ndimage.binary_erosion(m)


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing=None):
    """Euclidean distances (spacing units) from every boundary voxel of `pred` to the nearest
    boundary voxel of `gt`, and from `gt`'s to `pred`'s: `(d_pred_to_gt, d_gt_to_pred)`.
    Both masks must be non-empty."""
    bp, bg = boundary(pred), boundary(gt)
    if not (bp.any() and bg.any()):
        raise ValueError("surface_distances needs two non-empty masks")
    sp = _spacing(spacing, bp.ndim)
    # Crop to the boundaries' bounding box: distances between boundary voxels do not change.
    idx = np.nonzero(bp | bg)
    crop = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    bp, bg = bp[crop], bg[crop]
    to_gt = ndimage.distance_transform_edt(~bg, sampling=sp)
    to_pred = ndimage.distance_transform_edt(~bp, sampling=sp)
    return to_gt[bp], to_pred[bg]


def surface_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    spacing=None,
    tolerance: float = NSD_TOLERANCE,
    percentile: float = 95.0,
) -> tuple[float, float]:
    """`(NSD, HD95)` of two binary masks of any identical shape, in the units of `spacing`.

    NSD (normalised surface Dice, Nikolov et al. 2021) = boundary voxels of either mask lying
    within `tolerance` of the other mask's boundary / all boundary voxels of both. HD95 = max of
    the two directed `percentile`-th percentiles (linear interpolation) of boundary distances.
    Both are MONAI's `compute_surface_dice` / `compute_hausdorff_distance(percentile=95)` with
    `use_subvoxels=False` (tested against it). Empty masks: both empty → NSD 1, HD95 0; one empty
    → NSD 0, HD95 = the diagonal of the array's extent (the largest distance possible in it).
    """
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    _check_same_shape(p, g)
    sp = _spacing(spacing, p.ndim)
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError(f"NSD tolerance must be a finite number ≥ 0, got {tolerance}")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not (has_p or has_g):
        return 1.0, 0.0
    if not (has_p and has_g):
        return 0.0, float(np.linalg.norm(np.asarray(p.shape) * sp))
    d_pg, d_gp = surface_distances(p, g, sp)
    within = int((d_pg <= tolerance).sum()) + int((d_gp <= tolerance).sum())
    nsd = within / (d_pg.size + d_gp.size)
    hd = max(float(np.percentile(d_pg, percentile)), float(np.percentile(d_gp, percentile)))
    return float(nsd), hd


def nsd(pred: np.ndarray, gt: np.ndarray, tolerance: float = NSD_TOLERANCE, spacing=None) -> float:
    """Normalised surface Dice at `tolerance` (see `surface_metrics`)."""
    return surface_metrics(pred, gt, spacing=spacing, tolerance=tolerance)[0]


def hd95(pred: np.ndarray, gt: np.ndarray, spacing=None) -> float:
    """95th-percentile Hausdorff distance (see `surface_metrics`)."""
    return surface_metrics(pred, gt, spacing=spacing)[1]


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    score: np.ndarray | None = None,
    *,
    spacing=None,
    tolerance: float = NSD_TOLERANCE,
) -> dict:
    """All metrics of one binary case. Shapes: any, identical (a 2D slice or a 3D volume).

    `spacing` (voxel size per axis, mm; None = 1 per pixel) and `tolerance` (same units) feed
    NSD and HD95 (`surface_metrics`).
    Conventions (docs/evaluation.md): both masks empty -> IoU = Dice = NSD = 1, HD95 = 0 and note
    `both_empty`; only one empty -> IoU = Dice = NSD = 0, HD95 = the array's diagonal
    (`pred_empty` / `gt_empty`); AUC needs a soft `score` and
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
    nsd_, hd = surface_metrics(p, g, spacing=spacing, tolerance=tolerance)
    return {
        "iou": iou(p, g),
        "dice": dice(p, g),
        "auc": a,
        "nsd": nsd_,
        "hd95": hd,
        "nsd_tol": float(tolerance),
        "pred_voxels": np_,
        "gt_voxels": ng,
        "note": ";".join(notes),
    }


def multiclass_case_metrics(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    classes: Sequence[int],
    probs: np.ndarray | None = None,
    *,
    spacing=None,
    tolerance: float = NSD_TOLERANCE,
) -> dict[int, dict]:
    """Per-class metrics of one case from integer label maps `(*S)`.

    `probs` is `(C, *S)` class probabilities indexed by label value, or `(*S)` the foreground
    probability when `classes == [1]`; `spacing`, `tolerance` as `case_metrics`.
    Returns `{class: case_metrics(...)}`.
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
        c: case_metrics(
            pred_labels == c,
            gt_labels == c,
            None if probs is None else probs[c],
            spacing=spacing,
            tolerance=tolerance,
        )
        for c in classes
    }


def nanmean(v: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN when nothing is left."""
    a = np.asarray(v, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")
