"""Box → mask segmenters for the zero-shot stage, chosen by `config.segmenter.name`.

`sam` / `medsam` (torch_bridge, needs a checkpoint), `grabcut` (weight-free OpenCV GrabCut seeded
by the box and the CRF mask) and `crf` (the CRF mask inside the box, no segmenter: an ablation).
Every segmenter has a `.name` recorded next to each mask it produces.
"""

from __future__ import annotations

import functools
import pathlib
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
            "grabcut_min_side": 256,  # smaller images are upscaled for GrabCut (see its class)
            "grabcut_on_empty": "seed",  # seed | empty: what an empty cut returns (noted)
        }
    )


class GrabCutSegmenter:
    """OpenCV GrabCut inside the box: pixels outside the box are fixed background, pixels inside
    are "probably foreground" where the CRF mask is on and "probably background" elsewhere.

    Images whose shorter side is below `min_side` are upscaled by an integer factor first
    (bilinear image, nearest masks; the result is area-averaged back, > 0.5): GrabCut's pairwise
    weight (γ = 50) is fixed per pixel pair, so on a 64-px image the boundary term outweighs the
    colour term of a small region and the cut collapses to all background even from a perfect
    seed (`test_grabcut_keeps_a_bright_structure_on_a_small_image`). SAM likewise works at 1024 px.
    When the box covers the whole image (no background pixels to fit the colour model) GrabCut
    is undefined; the mask is then `init_mask` inside the box and `last_note` says so. When the
    cut comes back empty (the structure's grey levels are also in the background's colour model,
    e.g. a heart next to a spine of the same brightness), `on_empty="seed"` returns the seed mask
    and says so in `last_note`; `on_empty="empty"` returns the empty cut.
    """

    ON_EMPTY = ("seed", "empty")

    def __init__(self, iterations: int = 5, min_side: int = 256, on_empty: str = "seed"):
        if iterations < 1:
            raise ValueError(f"segmenter.grabcut_iterations must be ≥ 1, got {iterations}")
        if min_side < 1:
            raise ValueError(f"segmenter.grabcut_min_side must be ≥ 1, got {min_side}")
        if on_empty not in self.ON_EMPTY:
            raise ValueError(f"segmenter.grabcut_on_empty must be one of {self.ON_EMPTY}")
        self.iterations, self.min_side, self.on_empty = iterations, min_side, on_empty
        self.name = f"grabcut(iters={iterations}, min_side={min_side}, on_empty={on_empty})"
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
        if inside.all() or not seed.any():
            self.last_note = "grabcut undefined (no background or no seed pixels): seed mask used"
            return seed
        f = max(1, -(-self.min_side // min(h, w)))  # ceil
        if f > 1:
            rgb = cv2.resize(rgb, (w * f, h * f), interpolation=cv2.INTER_LINEAR)
        gc = np.full((h * f, w * f), cv2.GC_BGD, np.uint8)
        gc[np.repeat(np.repeat(inside, f, 0), f, 1)] = cv2.GC_PR_BGD
        gc[np.repeat(np.repeat(seed, f, 0), f, 1)] = cv2.GC_PR_FGD
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(rgb, gc, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.float32)
        out = fg.reshape(h, f, w, f).mean(axis=(1, 3)) > 0.5
        if not out.any() and self.on_empty == "seed":
            self.last_note = "grabcut cut was empty: seed mask used (segmenter.grabcut_on_empty)"
            return seed
        return out


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
        return GrabCutSegmenter(cfg.grabcut_iterations, cfg.grabcut_min_side, cfg.grabcut_on_empty)
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
        path = pathlib.Path(cfg.checkpoint)
        stamp = (str(path.absolute()), *_file_stamp(path))
        return _sam_segmenter(stamp, cfg.model_type, name == "medsam", bool(cfg.multimask_output))
    raise ValueError(f"segmenter.name must be grabcut|sam|medsam|crf, got {name!r}")


def _file_stamp(path: pathlib.Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)  # BoxSegmenter names the missing file
    return (st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=1)
def _sam_segmenter(stamp: tuple, model_type: str, medsam: bool, multimask: bool):
    """One SAM per process for the same checkpoint file (path, mtime, size) and settings: the
    chain and the box baselines then share the model and its image-embedding cache."""
    from torch_bridge.sam import BoxSegmenter  # torch only when SAM is asked for

    return _TorchBoxSegmenter(
        BoxSegmenter(stamp[0], model_type, medsam=medsam, multimask_output=multimask)
    )
