"""Image/mask transforms in NumPy for grain `map`/`random_map`: CLIP normalisation, resizing,
grey->RGB, and paired geometric augmentation (same warp on image and mask, nearest for masks).
"""

from __future__ import annotations

from typing import Any

import cv2
import grain
import numpy as np

# open_clip / BiomedCLIP image normalisation (OPENAI_DATASET_MEAN / STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_normalize(images: np.ndarray) -> np.ndarray:
    """`(..., H, W, 3)` in [0, 1] -> float32 `(x - CLIP_MEAN) / CLIP_STD` per channel."""
    images = np.asarray(images, np.float32)
    if images.shape[-1] != 3:
        raise ValueError(f"clip_normalize expects 3 channels last, got shape {images.shape}")
    return (images - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def grey_to_rgb(image: np.ndarray) -> np.ndarray:
    """`(H, W)`, `(H, W, 1)` or `(H, W, 3)` -> `(H, W, 3)` (grey repeated on the channel axis)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected a grey or RGB image (H, W[, 1|3]), got shape {image.shape}")
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of `(H, W[, C])` to `size` (int or `(h, w)`), float32 out.

    Uses area averaging when shrinking (no aliasing), bilinear when enlarging.
    """
    h, w = _hw(size)
    image = np.asarray(image, np.float32)
    if image.shape[:2] == (h, w):
        return image
    shrink = h < image.shape[0] and w < image.shape[1]
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out[..., None] if image.ndim == 3 and out.ndim == 2 else out


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label map `(H, W)`; labels are never mixed."""
    h, w = _hw(size)
    mask = np.asarray(mask)
    src_h, src_w = mask.shape[:2]
    rows = np.minimum(((np.arange(h) + 0.5) * src_h / h).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * src_w / w).astype(np.int64), src_w - 1)
    return mask[rows[:, None], cols[None, :]]


def affine_pair(
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    angle_deg: float = 0.0,
    scale: float = 1.0,
    flip: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rotate by `angle_deg` and scale about the centre, then optionally flip left-right.

    The same geometric transform goes to `image` `(H, W[, C])` (bilinear) and `mask` `(H, W)`
    (nearest, so label ids stay exact). Outside the field of view is filled with 0.
    """
    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    if mask is not None and np.asarray(mask).shape[:2] != (h, w):
        raise ValueError(f"image/mask size mismatch: image {image.shape[:2]}, mask {mask.shape}")
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle_deg, scale)
    warp = dict(dsize=(w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = cv2.warpAffine(image, m, flags=cv2.INTER_LINEAR, **warp)
    if image.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    out_mask = None
    if mask is not None:
        mask = np.asarray(mask)
        # float32 carries label ids exactly (< 2**24) through cv2's nearest warp.
        warped = cv2.warpAffine(mask.astype(np.float32), m, flags=cv2.INTER_NEAREST, **warp)
        out_mask = warped.astype(mask.dtype)
    if flip:
        out = out[:, ::-1].copy()
        out_mask = None if out_mask is None else out_mask[:, ::-1].copy()
    return out, out_mask


class PairedAugment(grain.transforms.RandomMap):
    """grain `random_map`: random rotation, scale and left-right flip of `element["image"]` and
    `element["mask"]` (if present) with one shared draw per element."""

    def __init__(
        self,
        max_rotation_deg: float = 15.0,
        scale_range: tuple[float, float] = (0.9, 1.1),
        flip_prob: float = 0.5,
    ):
        self.max_rotation_deg = float(max_rotation_deg)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip_prob = float(flip_prob)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        angle = rng.uniform(-self.max_rotation_deg, self.max_rotation_deg)
        scale = rng.uniform(*self.scale_range)
        flip = bool(rng.random() < self.flip_prob)
        image, mask = affine_pair(
            element["image"], element.get("mask"), angle_deg=angle, scale=scale, flip=flip
        )
        out = dict(element, image=image)
        if mask is not None:
            out["mask"] = mask
        return out


class ToClipInput(grain.transforms.Map):
    """grain `map`: `element["image"]` in [0, 1] -> RGB, resized to `size`, CLIP-normalised.
    A `mask`, if present, is resized with nearest neighbour to the same size."""

    def __init__(self, size: int = 224):
        self.size = int(size)

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        image = clip_normalize(resize_image(grey_to_rgb(element["image"]), self.size))
        out = dict(element, image=image)
        if element.get("mask") is not None:
            out["mask"] = resize_mask(element["mask"], self.size)
        return out


# The name docs/interfaces.md gives for image resizing.
resize = resize_image
