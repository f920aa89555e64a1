"""Baselines of the zero-shot results (`pipeline/baselines.py`): body, position words, boxes."""

from __future__ import annotations

import numpy as np
import pytest

from mzs_jax.pipeline import baselines, postprocess


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("nodule in the right lower lung zone", ("right", "lower")),
        ("Chest X-ray showing clear lungs", (None, None)),
        ("opacity in the LEFT lung", ("left", None)),
    ],
)
def test_prompt_position_reads_side_and_zone_words(prompt, expected):
    assert baselines.prompt_position(prompt) == expected


def test_prior_box_is_the_named_quadrant_of_the_body_box():
    body = np.zeros((40, 40), bool)
    body[4:36, 8:32] = True
    assert baselines.prior_box(body, "right", "upper").tolist() == [8, 4, 20, 20]  # image left
    assert baselines.prior_box(body, "left", "lower").tolist() == [20, 20, 32, 36]
    assert baselines.prior_box(body, None, None).tolist() == [8, 4, 32, 36]


class BoxSegmenter:
    """Returns the prompt box as the mask, so the baselines' boxes can be read off the masks."""

    name = "box"

    def segment(self, image, box, init_mask=None):
        return postprocess.boxes_to_mask(np.asarray(box).reshape(1, 4), image.shape[:2])


def _image():
    image = np.full((32, 32, 1), 0.04, np.float32)  # air
    image[6:26, 4:28] = 0.5  # the body
    return image


def test_baseline_masks_whole_body_random_point_and_position_prior():
    images = [_image(), _image()]
    chain_boxes = [np.array([10, 10, 16, 18]), None]
    out = baselines.baseline_masks(images, chain_boxes, BoxSegmenter(), "left upper nodule", 0)
    masks = out["masks"]
    assert list(masks) == ["whole-body box", "random point", "position prior"]
    body = baselines.body_mask(images[0])
    assert body.sum() == 20 * 24
    for m in masks["whole-body box"]:
        assert np.array_equal(m, body)
    for y, x in out["points"]:
        assert body[y, x]  # a body pixel
    ys, xs = np.nonzero(masks["random point"][0])
    assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (6, 8)  # the chain's box size
    ys, xs = np.nonzero(masks["random point"][1])
    assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (16, 16)  # no box: half image
    ys, xs = np.nonzero(masks["position prior"][0])
    assert xs.min() >= 15 and ys.max() <= 16  # patient left = image right; upper half
    again = baselines.baseline_masks(images, chain_boxes, BoxSegmenter(), "left upper nodule", 0)
    assert again["points"] == out["points"]  # the seed fixes the random points
    plain = baselines.baseline_masks(images, chain_boxes, BoxSegmenter(), "the heart", 0)
    assert "position prior" not in plain["masks"]
