"""Building the open_clip architecture before loading our weights prints no "Model initialized
randomly" warning (it would stand right before the line saying the weights were loaded)."""

import logging

from mzs_jax.models import clip
from torch_bridge.clip import build_open_clip


def test_build_open_clip_does_not_warn_about_random_init(caplog):
    with caplog.at_level(logging.WARNING):
        build_open_clip(clip.model_config("tiny"))
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "initialized randomly" not in text and "no CLIP weights found" not in text
    logging.warning("a warning after the build still shows")
    assert "still shows" in caplog.text
