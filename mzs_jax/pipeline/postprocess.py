"""Saliency → box post-processing (paper, "Zero-shot segmentation…", steps (1)–(5)), or KMeans.

`method="crf"`: dense CRF → min–max → threshold 0.5 → 3×3 closing; `method="kmeans"`
(MedCLIP-SAMv2): KMeans(2) on the intensities → largest component. Then tightest box(es):
half-open pixel boxes `(x0, y0, x1, y1)`, the XYXY form SAM takes.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from ml_collections import ConfigDict
from scipy import ndimage

_EPS = 1e-6
METHODS = ("crf", "kmeans")


# MedCLIP-SAMv2's postprocess_saliency_maps.py values (reference §4.1): one mean-field iteration,
# Gaussian sxy 5 / compat 3, bilateral sxy 5 / srgb 3 / compat 5. The one source of these numbers.
CRF_DEFAULTS = dict(
    iterations=1,
    gaussian_sxy=5.0,
    gaussian_compat=3.0,
    bilateral_sxy=5.0,
    bilateral_srgb=3.0,
    bilateral_compat=5.0,
    clip=1e-5,
)


def default_config() -> ConfigDict:
    """Post-processing hyperparameters (`config.postprocess` in `configs/zeroshot_*.py`)."""
    return ConfigDict(
        {
            # "crf": the paper's chain ([CRF if crf.enabled] → min–max → threshold → closing);
            # "kmeans": MedCLIP-SAMv2's (KMeans(2) on the map → the largest `components`
            # connected components; crf / threshold / closing_kernel are not used).
            "method": "crf",
            "kmeans": {"seed": 10, "components": 1},
            "crf": {"enabled": True, **CRF_DEFAULTS},
            # A map whose range is below this counts as constant and is not stretched by min–max.
            "min_range": 1e-3,
            "threshold": 0.5,
            "closing_kernel": 3,
            # "union": one box around all foreground (the paper); "components": one box per
            # connected component with area ≥ min_area_fraction of the foreground; "largest".
            "box_mode": "union",
            "min_area_fraction": 0.1,
        }
    )


def minmax(x: np.ndarray, min_range: float = _EPS) -> np.ndarray:
    """Min–max normalise a map to [0, 1], `(H, W)` float32.

    A constant map carries no ranking, so it is not stretched: its values are kept, clipped to
    [0, 1] (an all-ones map stays all ones → full box; an all-zeros map stays empty).
    """
    x = np.asarray(x, np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("saliency map contains NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < min_range:
        return np.clip(x, 0.0, 1.0)
    return (x - lo) / (hi - lo)


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """`(H, W[, 1 or 3])` image, float in [0, 1] or uint8 → C-contiguous uint8 RGB `(H, W, 3)`."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3); got shape {img.shape}")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype != np.uint8:
        img = np.clip(np.asarray(img, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def dense_crf(
    image: np.ndarray,
    prob: np.ndarray,
    *,
    iterations: int = CRF_DEFAULTS["iterations"],
    gaussian_sxy: float = CRF_DEFAULTS["gaussian_sxy"],
    gaussian_compat: float = CRF_DEFAULTS["gaussian_compat"],
    bilateral_sxy: float = CRF_DEFAULTS["bilateral_sxy"],
    bilateral_srgb: float = CRF_DEFAULTS["bilateral_srgb"],
    bilateral_compat: float = CRF_DEFAULTS["bilateral_compat"],
    clip: float = CRF_DEFAULTS["clip"],
    enabled: bool = True,
) -> np.ndarray:
    """Two-label fully connected CRF (Krähenbühl & Koltun) on a foreground probability.

    image: `(H, W[, C])`; prob: `(H, W)` in [0, 1]. Unary = −log of (1−p, p); pairwise = a
    Gaussian (smoothness) kernel plus a bilateral (appearance) kernel on the image colours.
    Returns the mean-field foreground marginal `(H, W)` float32.
    """
    del enabled  # the switch is read by `refine`; accepted here so a config section can be splatted
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    rgb = to_uint8_rgb(image)
    p = np.asarray(prob, np.float32)
    if p.shape != rgb.shape[:2]:
        raise ValueError(f"saliency shape {p.shape} != image shape {rgb.shape[:2]}")
    if iterations < 1:
        raise ValueError(f"crf.iterations must be ≥ 1, got {iterations}")
    h, w = p.shape
    p = np.clip(p, 0.0, 1.0)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.stack([1 - p, p]), clip=clip)))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=rgb, compat=bilateral_compat
    )
    q = np.asarray(crf.inference(int(iterations)), np.float32).reshape(2, h, w)
    return q[1]


def binarize(prob: np.ndarray, threshold: float = 0.5, closing_kernel: int = 3) -> np.ndarray:
    """`prob > threshold`, then morphological closing with a k×k square → `(H, W)` bool.

    OpenCV's closing ignores the image border (no erosion of foreground touching the edge).
    """
    m = (np.asarray(prob) > threshold).astype(np.uint8)
    if closing_kernel and closing_kernel > 1:
        kernel = np.ones((closing_kernel, closing_kernel), np.uint8)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
    return m.astype(bool)


def largest_components(mask: np.ndarray, n: int = 1) -> np.ndarray:
    """The `n` largest 8-connected components of a bool mask `(H, W)` (equal areas: the
    component found first in raster order wins), as a bool mask."""
    if n < 1:
        raise ValueError(f"postprocess.kmeans.components must be ≥ 1, got {n}")
    labels, count = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), int))
    if count <= n:
        return labels > 0
    areas = np.bincount(labels.ravel())[1:]
    keep = 1 + np.argsort(-areas, kind="stable")[:n]
    return np.isin(labels, keep)


def kmeans_mask(
    prob: np.ndarray,
    *,
    seed: int = 10,
    components: int = 1,
    min_range: float = 1e-3,
) -> np.ndarray:
    """MedCLIP-SAMv2's coarse mask: scikit-learn `KMeans(2)` on the pixel intensities of a map
    `(H, W)` in [0, 1] (k-means++, 10 initialisations, `random_state=seed`), foreground = the
    cluster with the higher centre, then the `components` largest connected components.

    A map whose range is below `min_range` has no two clusters: its foreground is where it
    exceeds 0.5 (an all-ones map is all foreground, an all-zeros map empty), as the CRF chain.
    """
    from sklearn.cluster import KMeans

    p = np.asarray(prob, np.float64)
    if p.ndim != 2:
        raise ValueError(f"saliency must be (H, W); got shape {p.shape}")
    if float(p.max() - p.min()) < min_range:
        fg = p > 0.5
    else:
        km = KMeans(n_clusters=2, init="k-means++", n_init=10, random_state=int(seed))
        labels = km.fit_predict(p.reshape(-1, 1))
        fg = (labels == int(np.argmax(km.cluster_centers_[:, 0]))).reshape(p.shape)
    return largest_components(fg, int(components)) if fg.any() else fg


def tightest_box(
    mask: np.ndarray, *, mode: str = "union", min_area_fraction: float = 0.0
) -> np.ndarray:
    """Boxes `(K, 4)` int64 `(x0, y0, x1, y1)`, half-open, around the foreground of a bool mask.

    mode "union": one box around all foreground pixels (K ≤ 1); "components": one per
    8-connected component with area ≥ `min_area_fraction` × total foreground area, largest
    first; "largest": the largest component only. An empty mask gives `(0, 4)`.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W); got shape {m.shape}")
    if not m.any():
        return np.zeros((0, 4), np.int64)
    if mode == "union":
        ys, xs = np.nonzero(m)
        return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.int64)
    if mode not in ("components", "largest"):
        raise ValueError(f"postprocess.box_mode must be union|components|largest, got {mode!r}")
    n, _, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    stats = stats[1:n]  # row 0 is the background
    order = np.argsort(-stats[:, cv2.CC_STAT_AREA], kind="stable")
    stats = stats[order]
    if mode == "largest":
        stats = stats[:1]
    else:
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area_fraction * m.sum()
        stats = stats[keep]
    x0, y0 = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    return np.stack(
        [x0, y0, x0 + stats[:, cv2.CC_STAT_WIDTH], y0 + stats[:, cv2.CC_STAT_HEIGHT]], axis=1
    ).astype(np.int64)


def boxes_to_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Union of half-open boxes `(K, 4)` painted into a `(H, W)` bool mask."""
    out = np.zeros(shape, bool)
    for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4):
        out[y0:y1, x0:x1] = True
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two half-open boxes `(4,)`; 0 when either is degenerate."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclasses.dataclass
class Refined:
    """Output of `refine`: `prob` (H, W) in [0, 1] (after CRF + min–max, or the min–maxed map
    for KMeans), `mask` (H, W) bool (threshold + closing, or KMeans + components), `boxes`
    (K, 4), `chain` (which post-processing ran, e.g. "crf>threshold>closing"); `empty` is True
    when no box was found (the stage then writes an empty mask and reports it)."""

    prob: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    chain: str = ""

    @property
    def empty(self) -> bool:
        return len(self.boxes) == 0


def refine(image: np.ndarray, saliency: np.ndarray, cfg: ConfigDict | None = None) -> Refined:
    """One `(H, W)` saliency → coarse mask → box(es), per `cfg.method`:

    "crf" (paper order): [CRF] → min–max → threshold → closing. The CRF's unary needs a
    probability, so the map is min–maxed before it as well. A CRF marginal whose range is below
    `min_range` counts as constant and is not stretched (that would turn round-off of an
    all-zeros map into foreground).
    "kmeans" (MedCLIP-SAMv2): min–max → `kmeans_mask` (KMeans(2) → largest components).
    The box step (`box_mode`, `min_area_fraction`) is the same for both.
    """
    cfg = cfg if cfg is not None else default_config()
    method = cfg.get("method", "crf")
    if method not in METHODS:
        raise ValueError(f"postprocess.method must be one of {METHODS}, got {method!r}")
    prob = minmax(saliency)
    if method == "kmeans":
        k = cfg.kmeans
        mask = kmeans_mask(
            prob, seed=int(k.seed), components=int(k.components), min_range=cfg.min_range
        )
        chain = f"kmeans>largest{int(k.components)}"
    else:
        chain = "threshold>closing"
        if cfg.crf.enabled:
            prob = minmax(dense_crf(image, prob, **cfg.crf.to_dict()), cfg.min_range)
            chain = "crf>" + chain
        mask = binarize(prob, cfg.threshold, cfg.closing_kernel)
    boxes = tightest_box(mask, mode=cfg.box_mode, min_area_fraction=cfg.min_area_fraction)
    return Refined(prob=prob, mask=mask, boxes=boxes, chain=chain)
