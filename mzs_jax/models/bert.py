"""Text tower of BiomedCLIP: HF `BertModel` (PubMedBERT) semantics in Flax NNX (MedZeroSeg §3.1).

Post-norm BERT encoder with padding mask and token_type 0, CLS last-hidden-state pooling, then
open_clip's MLP projection Linear(W→P, no bias) → exact GELU → Linear(P→E, no bias).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mzs_jax.models.precision import linear
from mzs_jax.models.vit import dot_product_attention, gelu, remat_layer


class BertEmbeddings(nnx.Module):
    """word + position + token_type(0) embeddings, then LayerNorm."""

    def __init__(self, cfg, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        init = nnx.initializers.normal(0.02)
        embed = lambda n: nnx.Embed(n, cfg.width, embedding_init=init, **kw)
        self.max_positions = cfg.max_positions
        self.word_embeddings = embed(cfg.vocab_size)
        self.position_embeddings = embed(cfg.max_positions)
        self.token_type_embeddings = embed(cfg.type_vocab_size)
        self.LayerNorm = nnx.LayerNorm(cfg.width, epsilon=cfg.ln_eps, **kw)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        if input_ids.shape[1] > self.max_positions:
            raise ValueError(
                f"text length {input_ids.shape[1]} exceeds text.max_positions={self.max_positions}"
            )
        positions = jnp.arange(input_ids.shape[1])[None, :]
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(jnp.zeros_like(input_ids))
        )
        return self.LayerNorm(x)


class BertLayer(nnx.Module):
    """HF `BertLayer`: x = LN(x + attn(x)); x = LN(x + output(gelu(intermediate(x))))."""

    def __init__(self, cfg, *, dtype, param_dtype, rngs: nnx.Rngs):
        if cfg.width % cfg.heads:
            raise ValueError(f"text.width={cfg.width} is not divisible by text.heads={cfg.heads}")
        self.heads, self.dtype = cfg.heads, dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        w = cfg.width
        self.query = linear(w, w, **kw)
        self.key = linear(w, w, **kw)
        self.value = linear(w, w, **kw)
        self.attention_output = linear(w, w, **kw)
        self.attention_LayerNorm = nnx.LayerNorm(w, epsilon=cfg.ln_eps, **kw)
        self.intermediate = linear(w, cfg.intermediate, **kw)
        self.output = linear(cfg.intermediate, w, **kw)
        self.output_LayerNorm = nnx.LayerNorm(w, epsilon=cfg.ln_eps, **kw)

    def __call__(self, x: jax.Array, mask: jax.Array, queries: int | None = None) -> jax.Array:
        """`x` `(B, L, W)`, `mask` boolean `(B, 1, 1, L)` (False on padded keys) → `(B, L, W)`;
        `queries=Q`: only the first Q tokens' outputs `(B, Q, W)` (keys, values from all L)."""
        b, n, w = x.shape
        split = lambda t: t.reshape(b, t.shape[1], self.heads, w // self.heads)
        k, v = split(self.key(x)), split(self.value(x))
        x = x[:, :queries]
        a = dot_product_attention(split(self.query(x)), k, v, mask, dtype=self.dtype)
        x = self.attention_LayerNorm(x + self.attention_output(a.reshape(b, x.shape[1], w)))
        return self.output_LayerNorm(x + self.output(gelu(self.intermediate(x))))


class TextTower(nnx.Module):
    """open_clip `HFTextEncoder` around BERT: `transformer` → CLS token → `proj` MLP."""

    def __init__(
        self, cfg, embed_dim: int, *, dtype, param_dtype, rngs: nnx.Rngs, remat: str = "none"
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        remat_layer(BertLayer.__call__, remat)  # validates the mode at build time
        self.remat = remat
        self.context_length = cfg.context_length
        self.embeddings = BertEmbeddings(cfg, **kw)
        self.layers = nnx.List([BertLayer(cfg, **kw) for _ in range(cfg.layers)])
        self.proj_0 = linear(cfg.width, cfg.proj_hidden, use_bias=False, **kw)
        self.proj_2 = linear(cfg.proj_hidden, embed_dim, use_bias=False, **kw)

    def hidden_states(
        self, input_ids: jax.Array, attention_mask: jax.Array, *, cls_only: bool = False
    ) -> jax.Array:
        """`(B, L)` ids and 0/1 mask → last hidden state `(B, L, W)`; masked keys are ignored.
        `cls_only`: the last layer computes only the CLS token's output, `(B, 1, W)` (the same
        values; all that CLS pooling reads)."""
        if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must both be (B, L)"
            )
        mask = attention_mask[:, None, None, :] > 0
        x = self.embeddings(input_ids)
        run_layer = remat_layer(BertLayer.__call__, self.remat, static_argnums=(3,))
        for i, layer in enumerate(self.layers):
            x = run_layer(layer, x, mask, 1 if cls_only and i == len(self.layers) - 1 else None)
        return x

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """`(B, L)` ids, mask → unnormalised embeddings `(B, E)` from the CLS token."""
        cls = self.hidden_states(input_ids, attention_mask, cls_only=True)[:, 0]
        return self.proj_2(gelu(self.proj_0(cls)))
