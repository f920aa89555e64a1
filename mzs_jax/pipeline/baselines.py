"""Baselines every zero-shot result is reported beside (`mzs demo`, `bench/zeroshot_ablation.py`).

`whole-body box`: the body's box prompts the segmenter; `random point`: a box of the chain's size
around a uniform random body pixel; `position prior` (only when the prompt names a side or zone):
that half / quadrant of the body box. A method that does not beat these has not localised.
"""

from __future__ import annotations

import re

import numpy as np

from mzs_jax.pipeline import postprocess

WHOLE_BODY, RANDOM_POINT, POSITION_PRIOR = "whole-body box", "random point", "position prior"


def body_mask(image: np.ndarray) -> np.ndarray:
    """The largest non-air component (phantom air is ≈ 0.04): the 'whole body' region."""
    body = np.squeeze(image, -1) > 0.12 if image.ndim == 3 else image > 0.12
    boxes = postprocess.tightest_box(body, mode="largest")
    return postprocess.boxes_to_mask(boxes, body.shape) & body


def prompt_position(prompt: str) -> tuple[str | None, str | None]:
    """Patient side ('left'/'right') and zone ('upper'/'lower') named in a prompt, if any."""
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    side = next((w for w in ("left", "right") if w in words), None)
    zone = next((w for w in ("upper", "lower") if w in words), None)
    return side, zone


def prior_box(body: np.ndarray, side: str | None, zone: str | None) -> np.ndarray:
    """Quadrant/half of the body box named by the prompt (image left = patient right)."""
    x0, y0, x1, y1 = postprocess.tightest_box(body)[0]
    xm, ym = (x0 + x1) // 2, (y0 + y1) // 2
    if side == "right":
        x1 = xm
    elif side == "left":
        x0 = xm
    if zone == "upper":
        y1 = ym
    elif zone == "lower":
        y0 = ym
    return np.array([x0, y0, x1, y1], np.int64)


def random_point_box(body, chain_box, rng) -> tuple[tuple[int, int], np.ndarray]:
    """A uniform random body pixel `(row, col)` and a box of the chain's size around it (half the
    image when the chain found no box), kept inside the image."""
    ys, xs = np.nonzero(body)
    j = int(rng.integers(len(ys)))
    h, w = body.shape
    if chain_box is None:
        bw, bh = w // 2, h // 2
    else:
        bw, bh = int(chain_box[2] - chain_box[0]), int(chain_box[3] - chain_box[1])
    x0 = int(np.clip(xs[j] - bw // 2, 0, w - bw))
    y0 = int(np.clip(ys[j] - bh // 2, 0, h - bh))
    return (int(ys[j]), int(xs[j])), np.array([x0, y0, x0 + bw, y0 + bh])


def baseline_masks(images, chain_boxes, segmenter, prompt: str, seed: int) -> dict:
    """`{"masks": {baseline: [bool (H, W)]}, "points": [(row, col)]}` for the `images` (H, W[, 1])
    whose chain boxes (or None) are `chain_boxes`; `seed` draws the random points."""
    rng = np.random.default_rng(seed)
    side, zone = prompt_position(prompt)
    names = [WHOLE_BODY, RANDOM_POINT] + ([POSITION_PRIOR] if side or zone else [])
    masks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    points = []
    for image, chain_box in zip(images, chain_boxes, strict=True):
        body = body_mask(image)
        point, box = random_point_box(body, chain_box, rng)
        points.append(point)
        boxes = {WHOLE_BODY: postprocess.tightest_box(body)[0], RANDOM_POINT: box}
        if POSITION_PRIOR in masks:
            boxes[POSITION_PRIOR] = prior_box(body, side, zone)
        for name, b in boxes.items():
            masks[name].append(np.asarray(segmenter.segment(image, b), bool))
    return {"masks": masks, "points": points}
