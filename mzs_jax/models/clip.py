"""BiomedCLIP two-tower model in Flax NNX and its configs (MedZeroSeg §3.1, open_clip BiomedCLIP).

`model_config(name)` gives the architecture, `CLIP(cfg, rngs=...)` builds it, and
`load(cfg, sd_or_path)` builds it from open_clip weights (see `mzs_jax.convert`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from mzs_jax.models.bert import TextTower
from mzs_jax.models.context import ContextEncoder
from mzs_jax.models.context import default_config as context_defaults
from mzs_jax.models.vit import VisionTransformer

MODEL_NAMES = ("biomedclip", "tiny")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# Tower shapes per model name. The tiny widths are chosen pairwise different (64/80/96) so a
# transposed weight cannot go unnoticed; proj_hidden = (text.width + embed_dim) // 2 as open_clip's
# HF MLP projection computes it.
_ARCHITECTURES = {
    "biomedclip": dict(
        embed_dim=512,
        vision=dict(image_size=224, patch_size=16, width=768, layers=12, heads=12, mlp_dim=3072),
        text=dict(vocab_size=30522, max_positions=512, width=768, layers=12, heads=12,
                  intermediate=3072, context_length=256, proj_hidden=640),
    ),
    "tiny": dict(
        embed_dim=96,
        vision=dict(image_size=64, patch_size=8, width=64, layers=2, heads=2, mlp_dim=128),
        text=dict(vocab_size=1024, max_positions=64, width=64, layers=2, heads=2,
                  intermediate=128, context_length=32, proj_hidden=80),
    ),
}  # fmt: skip
_VISION_COMMON = dict(ln_eps=1e-6, pool="token")
_TEXT_COMMON = dict(type_vocab_size=2, ln_eps=1e-12, pad_token_id=0)


def model_config(name: str) -> ConfigDict:
    """Architecture config for `"biomedclip"` (open_clip BiomedCLIP) or `"tiny"` (same family)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"model name must be one of {MODEL_NAMES}, got {name!r}")
    arch = _ARCHITECTURES[name]
    c = ConfigDict()
    c.name = name
    c.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.param_dtype = "float32"
    c.remat = "none"  # per transformer block, both towers: none | full | dots_saveable
    c.logit_scale_init = math.log(1 / 0.07)
    # Learned logit bias (SigLIP, `logit_bias` in open_clip): None = no bias parameter.
    c.logit_bias_init = None
    # Metadata encoder (models/context.py, disabled by default); not part of an open_clip export.
    c.context = context_defaults()
    c.embed_dim = arch["embed_dim"]
    c.vision = ConfigDict({**arch["vision"], **_VISION_COMMON})
    c.text = ConfigDict({**arch["text"], **_TEXT_COMMON})
    return c


def _dtype(cfg, field: str):
    value = cfg[field]
    if value not in DTYPES:
        raise ValueError(f"model.{field} must be one of {tuple(DTYPES)}, got {value!r}")
    return DTYPES[value]


def compiler_options(cfg: ConfigDict) -> dict[str, str]:
    """XLA options that a jit of this model's gradient needs to run as configured.

    With `model.remat` on, XLA:CPU's pipeline expands `jax.checkpoint`'s CSE barriers before CSE,
    which then merges the recomputation back into the forward pass (same memory as no remat);
    keeping the barriers makes the CPU compile rematerialise as GPU/TPU compiles do.
    Pass to `jax.jit(..., compiler_options=...)`.
    """
    if cfg.get("remat", "none") == "none" or jax.default_backend() != "cpu":
        return {}
    return {"xla_disable_hlo_passes": "cse_barrier_expander"}


def _l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class CLIP(nnx.Module):
    """`.visual` (ViT), `.text` (BERT), `.logit_scale` (scalar Param), `.logit_bias` (scalar
    Param, only with `logit_bias_init`, else None), `.context` (optional)."""

    def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
        dtype, param_dtype = _dtype(cfg, "dtype"), _dtype(cfg, "param_dtype")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if cfg.text.context_length > cfg.text.max_positions:
            raise ValueError(
                f"text.context_length={cfg.text.context_length} exceeds "
                f"text.max_positions={cfg.text.max_positions}"
            )
        remat = cfg.get("remat", "none")
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim, remat=remat, **kw)
        self.text = TextTower(cfg.text, cfg.embed_dim, remat=remat, **kw)
        self.logit_scale = nnx.Param(jnp.asarray(cfg.logit_scale_init, param_dtype))
        bias = cfg.get("logit_bias_init")
        self.logit_bias = None if bias is None else nnx.Param(jnp.asarray(bias, param_dtype))
        self.context = (
            ContextEncoder(cfg.context, cfg.embed_dim, rngs=rngs) if cfg.context.enabled else None
        )

    def encode_image(self, images: jax.Array) -> jax.Array:
        """NHWC float32 images normalised with CLIP mean/std `(B, H, W, 3)` → `(B, E)`, unit L2."""
        with jax.named_scope("visual"):  # names the tower's ops in the HLO
            return _l2_normalize(self.visual(images))

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """int32 `(B, L)` ids and 0/1 mask → `(B, E)`, unit L2."""
        with jax.named_scope("text"):
            return _l2_normalize(self.text(input_ids, attention_mask))
