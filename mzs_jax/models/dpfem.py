"""DPFEM: dual-path feature enhancement of a saliency map (paper Fig 3, eqs. 6–9), Flax NNX.

Conv stem (↓ resolution) → local branch (depthwise-separable conv + SiLU) ∥ global branch
(single-head self-attention over the stem tokens) → dynamic per-location gated fusion → head →
refined saliency logits at input resolution. Input: image + raw saliency.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

_EPS = 1e-3


def model_config(in_channels: int = 3, width: int = 32, stem_stride: int = 4) -> ConfigDict:
    """DPFEM architecture (`kind="dpfem"` for the checkpoint registry)."""
    return ConfigDict(
        {
            "kind": "dpfem",
            "name": "dpfem",
            "in_channels": in_channels,
            "width": width,
            "stem_stride": stem_stride,
            "dtype": "float32",
        }
    )


def saliency_logit(saliency: jax.Array) -> jax.Array:
    """logit of a [0, 1] saliency, clipped away from 0 and 1."""
    s = jnp.clip(saliency, _EPS, 1 - _EPS)
    return jnp.log(s) - jnp.log1p(-s)


class DPFEM(nnx.Module):
    """`DPFEM(cfg, rngs=...)`; `model(images (B, H, W, C), saliency (B, H, W)) -> logits (B, H, W)`.

    The head's output is added to the logit of the raw saliency through a learned scalar skip
    (initialised to 1, head initialised to 0), so an untrained DPFEM passes the saliency through
    unchanged and training learns a correction.
    """

    def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
        s, w = int(cfg.stem_stride), int(cfg.width)
        if s < 1 or s & (s - 1):
            raise ValueError(f"dpfem.stem_stride must be a power of two ≥ 1, got {s}")
        self.stride, self.width = s, w
        c_in = int(cfg.in_channels) + 1
        # Stem (eq. 6): one stride-2 3×3 conv per halving (a 3×3 conv when stride is 1).
        n_down = max(1, int(math.log2(s)))
        stride = (2, 2) if s > 1 else (1, 1)
        self.stem = nnx.List(
            [
                nnx.Conv(c, w, (3, 3), strides=stride, padding="SAME", rngs=rngs)
                for c in [c_in] + [w] * (n_down - 1)
            ]
        )
        # Local branch (eq. 7): depthwise 3×3 then pointwise 1×1, SiLU.
        self.depthwise = nnx.Conv(w, w, (3, 3), padding="SAME", feature_group_count=w, rngs=rngs)
        self.pointwise = nnx.Conv(w, w, (1, 1), rngs=rngs)
        # Global branch (eq. 8): single-head self-attention over all stem tokens.
        self.norm = nnx.LayerNorm(w, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=1, in_features=w, decode=False, rngs=rngs)
        # Fusion (eq. 9): per-location, per-channel gates from both branches.
        self.gate = nnx.Conv(2 * w, w, (1, 1), rngs=rngs)
        self.head = nnx.Conv(w, 1, (1, 1), kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.skip = nnx.Param(jnp.ones((), jnp.float32))

    def features(self, images: jax.Array, saliency: jax.Array):
        """→ (fused `(B, h, w, W)`, gates `(B, h, w, W)` in (0, 1)) at the stem resolution."""
        b, h, w, _ = images.shape
        if saliency.shape != (b, h, w):
            raise ValueError(f"saliency must be (B, H, W) = {(b, h, w)}, got {saliency.shape}")
        if h % self.stride or w % self.stride:
            raise ValueError(f"DPFEM input {h}×{w} is not divisible by stem_stride={self.stride}")
        x = jnp.concatenate([images, saliency[..., None] * 2.0 - 1.0], axis=-1)
        for conv in self.stem:
            x = nnx.silu(conv(x))
        local = nnx.silu(self.pointwise(self.depthwise(x)))
        tokens = self.norm(x).reshape(b, -1, self.width)
        glob = x + self.attn(tokens).reshape(x.shape)
        gates = nnx.sigmoid(self.gate(jnp.concatenate([local, glob], axis=-1)))
        return gates * local + (1.0 - gates) * glob, gates

    def __call__(self, images: jax.Array, saliency: jax.Array) -> jax.Array:
        fused, _ = self.features(images, saliency)
        low = self.head(fused)[..., 0]
        b, h, w = saliency.shape
        up = jax.image.resize(low, (b, h, w), "linear")
        return up + self.skip[...] * saliency_logit(saliency)
