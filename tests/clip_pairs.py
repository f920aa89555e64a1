"""A Flax CLIP and the same weights in open_clip (through safetensors), and random inputs: shared
by the saliency and M2IB parity tests."""

from __future__ import annotations

import numpy as np
from flax import nnx

from mzs_jax import convert
from mzs_jax.models import clip


def model_pair(name, tmp_path, seed=0):
    """`(cfg, flax_model, open_clip_model)` with the same random-init weights."""
    from torch_bridge.clip import build_open_clip

    cfg = clip.model_config(name)
    model = clip.CLIP(cfg, rngs=nnx.Rngs(seed))
    path = tmp_path / f"{name}.safetensors"
    convert.save_safetensors(convert.to_open_clip(model), path)
    return cfg, model, build_open_clip(cfg, weights=path)


def random_inputs(cfg, b, seed=1):
    """`b` random images and unit-norm text embeddings."""
    rng = np.random.default_rng(seed)
    s = cfg.vision.image_size
    images = rng.standard_normal((b, s, s, 3)).astype(np.float32)
    text = rng.standard_normal((b, cfg.embed_dim)).astype(np.float32)
    return images, text / np.linalg.norm(text, axis=-1, keepdims=True)
