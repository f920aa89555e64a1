"""Hard-negative chest X-ray captions (`phantom-hard:N`): six binary attributes drawn into the image
and named in the caption, arranged in blocks of all 64 combinations (docs/losses.md).

Any two pairs of a block differ in at least one attribute; every pair has six others in its block
that differ in exactly one (side, zone, size, count, finding or heart), so a batch made of one
block is full of hard negatives and holds no duplicate captions.
"""

from __future__ import annotations

import functools
import itertools

import cv2
import numpy as np
from scipy import ndimage

from mzs_jax.data import phantom_text as text
from mzs_jax.data.phantom import XRAY_LABELS, chest_anatomy
from mzs_jax.data.phantom_shapes import acquire, blob, smooth_texture
from mzs_jax.data.sources import split_indices

# attribute -> its two values, in caption words
ATTRIBUTES = {
    "side": ("right", "left"),  # patient side (image left = patient right)
    "zone": ("upper", "lower"),
    "size": ("small", "large"),
    "count": ("one", "two"),
    "finding": ("ground-glass opacity", "consolidation"),
    "heart": ("normal", "enlarged"),
}
COMBOS = tuple(itertools.product(*([0, 1] for _ in ATTRIBUTES)))  # 64 value-index tuples
BLOCK = len(COMBOS)
_HARD_ID = 4  # rng stream id (phantom.py uses 1-3 for xray/mri/ct)
_RADIUS = {"small": (0.03, 0.038), "large": (0.06, 0.07)}  # × image side
_DENSITY = {"ground-glass opacity": 0.16, "consolidation": 0.40}  # added intensity


def attributes(combo: tuple[int, ...]) -> dict[str, str]:
    return {k: ATTRIBUTES[k][v] for k, v in zip(ATTRIBUTES, combo, strict=True)}


def caption(rng: np.random.Generator, attrs: dict[str, str]) -> str:
    """'Chest X-ray showing two large consolidations in the left upper lung zone and an
    enlarged cardiac silhouette.' (the modality phrase varies, the attributes do not)."""
    mod = str(text.XRAY_MODALITY[int(rng.integers(len(text.XRAY_MODALITY)))])
    finding, size = attrs["finding"], attrs["size"]
    if attrs["count"] == "one":
        lesion = f"a single {size} {finding}"
    else:
        lesion = f"two {size} {finding.replace('opacity', 'opacities')}"
        lesion = lesion if finding != "consolidation" else f"two {size} consolidations"
    heart = (
        "an enlarged cardiac silhouette" if attrs["heart"] == "enlarged" else "a normal heart size"
    )
    return f"{mod} showing {lesion} in the {attrs['side']} {attrs['zone']} lung zone and {heart}."


def _zone(mask: np.ndarray, label: int, zone: str) -> np.ndarray:
    """Bool region of lung `label` above (upper) or below (lower) its vertical middle."""
    lung = mask == label
    ys = np.nonzero(lung)[0]
    mid = (ys.min() + ys.max()) / 2
    rows = np.arange(mask.shape[0])[:, None]
    return lung & ((rows < mid) if zone == "upper" else (rows >= mid))


def _centres(rng, region: np.ndarray, radius: float, count: int) -> list[tuple[int, int]]:
    """`count` (1 or 2) lesion centres inside `region`, half a radius from its edge where
    possible; a second centre is drawn at least `2·radius + 2` px from the first (the farthest
    candidate if none is), so two lesions stay two."""
    dist = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 3)
    for margin in (0.5 * radius, 0.0):
        ys, xs = np.nonzero(dist > margin)
        if ys.size:
            break
    j = int(rng.integers(ys.size))
    out = [(int(ys[j]), int(xs[j]))]
    if count == 2:
        d = np.hypot(ys - ys[j], xs - xs[j])
        far = np.nonzero(d >= 2 * radius + 2)[0]
        k = int(far[rng.integers(far.size)]) if far.size else int(np.argmax(d))
        out.append((int(ys[k]), int(xs[k])))
    return out


def _lesions(rng, region, lung, radius: float, count: int, tries: int = 5) -> np.ndarray:
    """Bool mask of `count` blobs centred in `region`, clipped to `lung`; redrawn (up to
    `tries` times) while two lesions touch and would read as one."""
    for _ in range(tries):
        out = np.zeros(region.shape, bool)
        for cy, cx in _centres(rng, region, radius, count):
            r = radius * rng.uniform(0.9, 1.1, 2)
            angle = rng.uniform(0, np.pi)
            out |= blob(region.shape, (cy, cx), tuple(r), rng, wobble=0.12, angle=angle)
        out &= lung
        if ndimage.label(out)[1] >= count:
            break
    return out


def hard_sample(rng: np.random.Generator, combo: tuple[int, ...], size: int = 64) -> dict:
    """One chest X-ray phantom showing the attributes of `combo` (index tuple into ATTRIBUTES):
    lesions in one lung zone, their size, count and density, and the heart size."""
    attrs = attributes(combo)
    S, shp = size, (size, size)
    img, mask = chest_anatomy(rng, size, attrs["heart"] == "enlarged")
    label = XRAY_LABELS["right lung" if attrs["side"] == "right" else "left lung"]
    region = _zone(mask, label, attrs["zone"])
    lo, hi = _RADIUS[attrs["size"]]
    radius = float(rng.uniform(lo, hi) * S)
    lesion_tex = smooth_texture(shp, rng, 12)
    lesions = _lesions(rng, region, mask == label, radius, 1 if attrs["count"] == "one" else 2)
    img[lesions] += _DENSITY[attrs["finding"]] + 0.04 * lesion_tex[lesions]
    mask[lesions] = XRAY_LABELS["opacity"]
    img = np.clip(acquire(img, rng, blur_px=0.6 * S / 64, noise=0.02), 0, 1)
    key = "consolidation" if attrs["finding"] == "consolidation" else "covid"
    return {
        "image": img[..., None],
        "mask": mask,
        "caption": caption(rng, attrs),
        "metadata": text.metadata(rng, key, "X-ray", "chest"),
        "attributes": attrs,
        "combo": int(COMBOS.index(tuple(combo))),
        "finding": attrs["finding"],
    }


def block_of(index: int) -> int:
    return index // BLOCK


@functools.lru_cache(maxsize=64)
def _block_perm(seed: int, block: int) -> np.ndarray:
    return np.random.default_rng([seed, _HARD_ID, 1, block]).permutation(BLOCK)


def hard_item(index: int, seed: int = 0, size: int = 64) -> dict:
    """Sample `index`: combination `perm_b[index % 64]` of block b = index // 64 (a seeded
    permutation of all 64), drawn from its own generator (so it does not depend on n)."""
    b = block_of(index)
    combo = COMBOS[_block_perm(int(seed), b)[index % BLOCK]]
    s = hard_sample(np.random.default_rng([int(seed), _HARD_ID, 0, index]), combo, size)
    s["id"], s["block"] = f"hard_{index:05d}", b
    return s


def generate_hard(n: int, seed: int = 0, size: int = 64, blocks=None) -> list[dict]:
    """Samples `0..n-1` (only those in `blocks`, a set of block ids, if given)."""
    keep = range(n) if blocks is None else (i for i in range(n) if block_of(i) in blocks)
    return [hard_item(i, seed, size) for i in keep]


def split(n: int, seed: int, val_fraction: float, which: str) -> list[dict]:
    """Samples of `which` ('train' | 'val' | 'all') of `phantom-hard:n`, split by whole blocks
    (`sources.split_indices` over block ids). Cached: benchmarks build many tasks on one set."""
    return list(_split(int(n), int(seed), float(val_fraction), str(which)))


@functools.lru_cache(maxsize=4)
def _split(n: int, seed: int, val_fraction: float, which: str) -> tuple[dict, ...]:
    blocks = set(split_indices(block_of(n - 1) + 1, val_fraction, seed, which).tolist())
    return tuple(generate_hard(n, seed=seed, blocks=blocks))


def one_attribute_pairs(samples: list[dict]) -> int:
    """How many unordered pairs of `samples` differ in exactly one attribute."""
    combos = np.array([COMBOS[s["combo"]] for s in samples])
    diff = (combos[:, None, :] != combos[None, :, :]).sum(-1)
    return int(np.triu(diff == 1).sum())
