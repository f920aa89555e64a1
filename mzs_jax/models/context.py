"""Clinical-metadata context encoder fused into the text (report) embedding only (MedZeroSeg
§"Integration of contextual information"; docs/losses.md): gated residual, gate initialised at 0.

Metadata batch format (dict of arrays, every key optional; an absent key = missing for all rows):
  "<categorical field>" int32 (B,)   for each field of `cfg.categorical` (default: modality,
                                     body_region, sex); 0 = missing, 1..V-1 = category id.
  "<numeric field>"     float (B,)   for each field of `cfg.numeric` (default: age, in years),
  "<numeric>_present"   bool (B,)    False = missing (the value is then ignored).
  "history_emb"         float (B, E) free-text history already encoded by the text tower,
  "history_present"     bool (B,)    False = no history.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

Array = jax.Array


def default_config() -> ConfigDict:
    """`model.context` defaults (disabled); it sits under the CLIP model config."""
    c = ConfigDict()
    c.enabled = False
    c.hidden = 256
    # field -> vocabulary size, index 0 reserved for "missing".
    c.categorical = ConfigDict({"modality": 16, "body_region": 32, "sex": 3})
    # field -> (mean, std) used to normalise the value.
    c.numeric = ConfigDict({"age": (50.0, 20.0)})
    c.history = True
    return c


class ContextEncoder(nnx.Module):
    """Metadata → context vector c (B, E); `fuse` adds tanh(g)·c to the text side, re-normalised.

    The image embedding is never changed: a context added to both sides of pair i gives the pair
    a shared code that matches it without looking at the image (docs/losses.md)."""

    def __init__(self, cfg: ConfigDict, embed_dim: int, *, rngs: nnx.Rngs):
        self.categorical = tuple(cfg.categorical.keys())
        self.numeric = tuple(cfg.numeric.keys())
        self.numeric_stats = tuple(tuple(map(float, cfg.numeric[k])) for k in self.numeric)
        for k, v in cfg.categorical.items():
            if int(v) < 2:
                raise ValueError(f"model.context.categorical.{k} must be >= 2 (0 is 'missing')")
        for k, (_, std) in zip(self.numeric, self.numeric_stats, strict=True):
            if std <= 0:
                raise ValueError(f"model.context.numeric.{k}: std must be > 0")
        self.use_history = bool(cfg.history)
        self.embed_dim = embed_dim
        h = int(cfg.hidden)
        self.tables = nnx.Dict(
            {k: nnx.Embed(int(v), h, rngs=rngs) for k, v in cfg.categorical.items()}
        )
        self.numeric_proj = (
            nnx.Linear(2 * len(self.numeric), h, rngs=rngs) if self.numeric else None
        )
        self.history_proj = nnx.Linear(embed_dim, h, rngs=rngs) if self.use_history else None
        self.hidden = nnx.Linear(h, h, rngs=rngs)
        self.out = nnx.Linear(h, embed_dim, rngs=rngs)
        # The gate starts at 0: the fused embedding equals the input at step 0.
        self.gate_txt = nnx.Param(jnp.zeros((), jnp.float32))

    def __call__(self, metadata: dict[str, Array], batch: int) -> tuple[Array, Array]:
        """(context (B, E) float32, present (B,) bool: the row has any metadata)."""
        present = jnp.zeros((batch,), bool)
        h = 0.0
        for k in self.categorical:
            if k in metadata:
                idx = jnp.asarray(metadata[k], jnp.int32).reshape(batch)
                h = h + self.tables[k](idx) * (idx > 0)[:, None]
                present = present | (idx > 0)
        if self.numeric:
            cols = []
            for k, (mean, std) in zip(self.numeric, self.numeric_stats, strict=True):
                if k in metadata:
                    has = jnp.asarray(metadata.get(f"{k}_present", True), bool)
                    has = jnp.broadcast_to(has, (batch,))
                    val = (jnp.asarray(metadata[k], jnp.float32).reshape(batch) - mean) / std
                    cols += [jnp.where(has, val, 0.0), has.astype(jnp.float32)]
                    present = present | has
                else:
                    cols += [jnp.zeros((batch,)), jnp.zeros((batch,))]
            h = h + self.numeric_proj(jnp.stack(cols, axis=1))
        if self.use_history and "history_emb" in metadata:
            has = jnp.broadcast_to(
                jnp.asarray(metadata.get("history_present", True), bool), (batch,)
            )
            emb = jnp.asarray(metadata["history_emb"], jnp.float32).reshape(batch, self.embed_dim)
            h = h + self.history_proj(emb) * has[:, None]
            present = present | has
        h = jnp.broadcast_to(jnp.asarray(h, jnp.float32), (batch, self.hidden.in_features))
        return self.out(jax.nn.gelu(self.hidden(jax.nn.gelu(h)))), present

    def fuse_text(self, txt: Array, metadata: dict[str, Array]) -> Array:
        """(B, E) unit txt → unit txt + tanh(g_txt)·c; rows without any metadata are unchanged."""
        if txt.ndim != 2 or txt.shape[-1] != self.embed_dim:
            raise ValueError(f"context.fuse_text: txt {txt.shape}, E={self.embed_dim}")
        c, present = self(metadata, txt.shape[0])
        y = txt.astype(jnp.float32) + jnp.tanh(self.gate_txt[...]) * c
        y = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
        return jnp.where(present[:, None], y, txt.astype(jnp.float32)).astype(txt.dtype)

    def fuse(self, img: Array, txt: Array, metadata: dict[str, Array]) -> tuple[Array, Array]:
        """(B, E) unit img/txt → (img unchanged, `fuse_text(txt)`)."""
        if img.shape != txt.shape:
            raise ValueError(f"context.fuse: img {img.shape} and txt {txt.shape} differ")
        return img, self.fuse_text(txt, metadata)
