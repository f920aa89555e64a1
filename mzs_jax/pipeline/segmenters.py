"""Box → mask segmenters for the zero-shot stage, chosen by `config.segmenter.name`.

`sam` / `medsam` (torch_bridge, needs a checkpoint), `grabcut` (weight-free OpenCV GrabCut seeded
by the box and the CRF mask) and `crf` (the CRF mask inside the box, no segmenter: an ablation).
Every segmenter has a `.name` recorded next to each mask it produces.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np
from ml_collections import ConfigDict

from mzs_jax.pipeline.postprocess import boxes_to_mask, to_uint8_rgb


class Segmenter(Protocol):
    name: str

    def segment(
        self, image: np.ndarray, box: np.ndarray, init_mask: np.ndarray | None = None
    ) -> np.ndarray:
        """`image` (H, W[, C]); `box` (4,) or (K, 4) half-open XYXY → (H, W) bool."""


def default_config() -> ConfigDict:
    """`config.segmenter` defaults: the weight-free GrabCut segmenter."""
    return ConfigDict(
        {
            "name": "grabcut",  # grabcut | sam | medsam | crf
            "checkpoint": "",  # SAM / MedSAM .pth (required for sam and medsam)
            "model_type": "vit_b",
            "multimask_output": False,
            "grabcut_iterations": 5,
        }
    )


class GrabCutSegmenter:
    """OpenCV GrabCut inside the box: pixels outside the box are fixed background, pixels inside
    are "probably foreground" where the CRF mask is on and "probably background" elsewhere.

    When the box covers the whole image (no background pixels to fit the colour model) GrabCut
    is undefined; the mask is then `init_mask` inside the box and `last_note` says so.
    """

    def __init__(self, iterations: int = 5):
        if iterations < 1:
            raise ValueError(f"segmenter.grabcut_iterations must be ≥ 1, got {iterations}")
        self.iterations = iterations
        self.name = f"grabcut(iters={iterations})"
        self.last_note = ""

    def segment(
        self, image: np.ndarray, box: np.ndarray, init_mask: np.ndarray | None = None
    ) -> np.ndarray:
        rgb = to_uint8_rgb(image)
        h, w = rgb.shape[:2]
        inside = boxes_to_mask(box, (h, w))
        self.last_note = ""
        if not inside.any():
            return np.zeros((h, w), bool)
        seed = inside if init_mask is None else (np.asarray(init_mask, bool) & inside)
        gc = np.full((h, w), cv2.GC_BGD, np.uint8)
        gc[inside] = cv2.GC_PR_BGD
        gc[seed] = cv2.GC_PR_FGD
        if inside.all() or not seed.any():
            self.last_note = "grabcut undefined (no background or no seed pixels): seed mask used"
            return seed
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(rgb, gc, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        return (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)


class CRFMaskSegmenter:
    """No segmenter: the CRF mask restricted to the box (ablation of the SAM step)."""

    name = "crf-mask"

    def segment(
        self, image: np.ndarray, box: np.ndarray, init_mask: np.ndarray | None = None
    ) -> np.ndarray:
        h, w = np.asarray(image).shape[:2]
        inside = boxes_to_mask(box, (h, w))
        return inside if init_mask is None else (np.asarray(init_mask, bool) & inside)


class _TorchBoxSegmenter:
    """Adapter giving `torch_bridge.sam.BoxSegmenter` the `init_mask` keyword (ignored: SAM is
    prompted by the box only, as in the paper)."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name

    def segment(self, image, box, init_mask=None):
        del init_mask
        return self.inner.segment(image, box)


def make_segmenter(cfg: ConfigDict) -> Segmenter:
    """Build the segmenter `cfg.name`; SAM without a checkpoint is an error, never a switch."""
    name = cfg.name
    if name == "grabcut":
        return GrabCutSegmenter(cfg.grabcut_iterations)
    if name == "crf":
        return CRFMaskSegmenter()
    if name in ("sam", "medsam"):
        if not cfg.checkpoint:
            raise ValueError(
                f"segmenter.checkpoint is required for segmenter.name={name!r} "
                "(no SAM weights are bundled or downloadable here); pass "
                "--config.segmenter.checkpoint=PATH.pth or use "
                "--config.segmenter.name=grabcut"
            )
        from torch_bridge.sam import BoxSegmenter  # torch only when SAM is asked for

        return _TorchBoxSegmenter(
            BoxSegmenter(
                cfg.checkpoint,
                cfg.model_type,
                medsam=name == "medsam",
                multimask_output=cfg.multimask_output,
            )
        )
    raise ValueError(f"segmenter.name must be grabcut|sam|medsam|crf, got {name!r}")
