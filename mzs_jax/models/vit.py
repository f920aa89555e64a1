"""Image tower of BiomedCLIP: timm `vit_base_patch16_224` semantics in Flax NNX (MedZeroSeg §3.1).

Pre-norm ViT with a class token, learned position embedding, exact GELU, final LayerNorm,
class-token (or patch-mean, `vision.pool`) pooling and a bias-free `head.proj`. `forward_features`
exposes one block activation (`tap`) so that JAX gScoreCAM can take gradients there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mzs_jax.models.precision import DOT_NAME, flat_matmul, linear, linear_columns, mixed_einsum

TAP_POINTS = ("norm1", "norm2")
# "token": class token (timm default, BiomedCLIP); "avg": mean of the patch tokens after the final
# norm (open_clip `timm_pool="avg"`), so the pooled embedding is the mean of the dense ones;
# "max": per-channel max over the patch tokens (`timm_pool="max"`).
POOLS = ("token", "avg", "max")
# `model.remat`: recompute each transformer block in the backward pass, keeping only its input
# ("full") or its input and every matmul output ("dots_saveable"), or keep all ("none").
REMAT = ("none", "full", "dots_saveable")


def remat_layer(fn, remat: str, static_argnums: tuple[int, ...] = ()):
    """`fn(layer, *args)` under `jax.checkpoint` as `model.remat` says (one block per checkpoint).

    The layer enters as its split state, merged inside the checkpoint, and `fn` must not mutate
    it (a block's forward does not). Not `nnx.remat`: it writes the layer's state back after the
    call, which fails ("Cannot mutate Param from a different trace level") when the model was
    merged inside another transform, as exact accumulation's `jax.vjp` per micro-batch does.
    """
    if remat not in REMAT:
        raise ValueError(f"model.remat must be one of {REMAT}, got {remat!r}")
    if remat == "none":
        return fn
    cp = jax.checkpoint_policies
    policy = None
    if remat == "dots_saveable":  # mixed_einsum's dots are custom-VJP ops, saved by name
        policy = cp.save_from_both_policies(cp.dots_saveable, cp.save_only_these_names(DOT_NAME))

    def run(layer, *args):
        graphdef, state = nnx.split(layer)

        def pure(state, *args):
            return fn(nnx.merge(graphdef, state), *args)

        return jax.checkpoint(pure, policy=policy, static_argnums=static_argnums)(state, *args)

    return run


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *, dtype=None
) -> jax.Array:
    """Multi-head attention on `(B, L, H, D)` inputs; `(B, Lq, H, D)` float32 out.

    Both products take `dtype` operands (default `q.dtype`) and accumulate in float32; the
    softmax is float32. `mask` is boolean, broadcastable to `(B, H, Lq, Lk)`, False on keys to
    ignore (their weight is exactly 0, as with HF's most-negative additive mask).
    """
    dtype = dtype or q.dtype
    scale = q.shape[-1] ** -0.5
    logits = mixed_einsum("bqhd,bkhd->bhqk", q.astype(dtype), k.astype(dtype)) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return mixed_einsum("bhqk,bkhd->bqhd", weights, v.astype(dtype))


# Rational minimax approximation of erf on [-4, 4] (Eigen's `generic_fast_erf_float`, which
# XLA:CPU also uses for its own erf op): |error| < 5e-7, one pass with no branches.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)  # fmt: skip
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)  # fmt: skip


def _erf(x: jax.Array) -> jax.Array:
    x = jnp.clip(x, -4.0, 4.0)
    x2 = x * x
    p = jnp.full_like(x, _ERF_P[0])
    for c in _ERF_P[1:]:
        p = p * x2 + c
    q = jnp.full_like(x, _ERF_Q[0])
    for c in _ERF_Q[1:]:
        q = q * x2 + c
    return x * p / q


@jax.custom_jvp
def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as torch `nn.GELU()` and HF BERT's `gelu` (erf within 5e-7).

    `lax.erf` lowers to two branch polynomials plus an exp that XLA:CPU runs as three passes
    over the (B, L, 3072) activation; this is one. The derivative is the exact Φ(x) + x·φ(x).
    """
    return 0.5 * x * (1.0 + _erf(x * 0.7071067811865476))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    cdf = 0.5 * (1.0 + _erf(x * 0.7071067811865476))
    pdf = jnp.exp(-0.5 * x * x) * 0.3989422804014327
    return x * cdf, (cdf + x * pdf) * t


class Attention(nnx.Module):
    """timm `Attention`: fused `qkv` Linear (q, k, v stacked on the output axis), then `proj`."""

    def __init__(self, width: int, heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"vision.width={width} is not divisible by vision.heads={heads}")
        self.heads, self.dtype = heads, dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = linear(width, 3 * width, **kw)
        self.proj = linear(width, width, **kw)

    def __call__(self, x: jax.Array, queries: int | None = None) -> jax.Array:
        """`(B, N, W)` → `(B, N, W)`, or with `queries=Q` the first Q tokens' outputs `(B, Q, W)`
        (keys and values from all N tokens; only Q rows of the query projection are computed)."""
        b, n, w = x.shape
        heads = lambda t: t.reshape(b, t.shape[1], self.heads, -1)
        if queries is None:
            # `split` (not indexing a reshaped qkv): its gradient is one concatenate, where
            # three index gradients would each pad to the full (B, N, 3W) and be summed.
            q, k, v = (heads(t) for t in jnp.split(self.qkv(x), 3, axis=-1))
        else:
            q = heads(linear_columns(self.qkv, x[:, :queries], 0, w))
            k, v = (heads(t) for t in jnp.split(linear_columns(self.qkv, x, w, 3 * w), 2, -1))
        out = dot_product_attention(q, k, v, dtype=self.dtype)
        return self.proj(out.reshape(b, q.shape[1], w))


class Mlp(nnx.Module):
    """timm `Mlp`: fc1 → exact GELU → fc2."""

    def __init__(self, width: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = linear(width, hidden, **kw)
        self.fc2 = linear(hidden, width, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, cfg, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = nnx.LayerNorm(cfg.width, epsilon=cfg.ln_eps, **kw)
        self.attn = Attention(cfg.width, cfg.heads, **kw)
        self.norm2 = nnx.LayerNorm(cfg.width, epsilon=cfg.ln_eps, **kw)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, **kw)

    def __call__(self, x, *, tap: str | None = None, tap_delta=None, queries: int | None = None):
        """Returns `(x, tapped)`; `tapped` is the `tap` activation (+ `tap_delta`) or None.
        `queries=Q`: only the first Q tokens' outputs, `(B, Q, W)` (see `Attention`)."""
        tapped = None
        h = self.norm1(x)
        if tap == "norm1":
            h = tapped = h if tap_delta is None else h + tap_delta.astype(h.dtype)
        x = x[:, :queries] + self.attn(h, queries)
        h = self.norm2(x)
        if tap == "norm2":
            h = tapped = h if tap_delta is None else h + tap_delta.astype(h.dtype)
        x = x + self.mlp(h)
        return x, tapped


def _run_block(block: Block, x, tap_delta, tap, queries=None):
    return block(x, tap=tap, tap_delta=tap_delta, queries=queries)


class VisionTransformer(nnx.Module):
    """timm ViT trunk + `head.proj`. Input: NHWC float32 images normalised with CLIP mean/std."""

    def __init__(
        self, cfg, embed_dim: int, *, dtype, param_dtype, rngs: nnx.Rngs, remat: str = "none"
    ):
        if cfg.image_size % cfg.patch_size:
            raise ValueError(
                f"vision.image_size={cfg.image_size} is not a multiple of "
                f"vision.patch_size={cfg.patch_size}"
            )
        self.pool = cfg.get("pool", "token")
        if self.pool not in POOLS:
            raise ValueError(f"vision.pool must be one of {POOLS}, got {self.pool!r}")
        self.dtype = dtype
        remat_layer(_run_block, remat)  # validates the mode at build time
        self.remat = remat
        self.image_size, self.patch_size = cfg.image_size, cfg.patch_size
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        p = cfg.patch_size
        self.patch_embed = nnx.Conv(3, cfg.width, (p, p), strides=(p, p), padding="VALID", **kw)
        init = nnx.initializers.normal(0.02)
        self.cls_token = nnx.Param(init(rngs.params(), (1, 1, cfg.width), param_dtype))
        self.pos_embed = nnx.Param(
            init(rngs.params(), (1, 1 + num_patches, cfg.width), param_dtype)
        )
        self.blocks = nnx.List([Block(cfg, **kw) for _ in range(cfg.layers)])
        self.norm = nnx.LayerNorm(cfg.width, epsilon=cfg.ln_eps, **kw)
        self.head_proj = linear(cfg.width, embed_dim, use_bias=False, **kw)

    def forward_features(
        self,
        images: jax.Array,
        *,
        tap: tuple[int, str] | None = None,
        tap_delta: jax.Array | None = None,
        cls_only: bool = False,
    ) -> tuple[jax.Array, jax.Array | None]:
        """images `(B, H, W, 3)` → (final-norm tokens `(B, 1+N, W)`, tapped `(B, 1+N, W)` or None).

        `tap=(block_index, "norm2")` (or "norm1") returns that block's normalised activation with
        `tap_delta` added before the block continues, so `jax.grad` w.r.t. `tap_delta` is the
        gradient at that activation. `cls_only`: the last block computes only the class
        token's output (all that "token" pooling reads; the same values), tokens `(B, 1, W)`.
        """
        b, h, w, c = images.shape
        if (h, w, c) != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"images must be (B, {self.image_size}, {self.image_size}, 3) NHWC, got "
                f"{tuple(images.shape)}"
            )
        tap_block, tap_point = self._check_tap(tap)
        if cls_only and tap is not None:
            raise ValueError("forward_features: cls_only with a tap (taps need all tokens)")
        x = self._embed_patches(images)
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
        tapped, run_block = None, remat_layer(_run_block, self.remat, static_argnums=(3, 4))
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            here = tap_point if i == tap_block else None
            queries = 1 if cls_only and i == last else None
            x, t = run_block(block, x, tap_delta if here else None, here, queries)
            tapped = t if here else tapped
        return self.norm(x), tapped

    def _embed_patches(self, images: jax.Array) -> jax.Array:
        """`patch_embed` (a p×p conv with stride p) as one matmul on the flattened patches:
        `(B·N, p·p·3) @ (p·p·3, W)`, the same sums; XLA:CPU runs the conv's weight gradient
        about 30× slower than this matmul's."""
        b, p = images.shape[0], self.patch_size
        g = self.image_size // p
        patches = images.reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, g * g, p * p * 3).astype(self.dtype)
        conv = self.patch_embed
        kernel = conv.kernel[...].reshape(p * p * 3, -1).astype(self.dtype)  # HWIO → (HWI, O)
        out = flat_matmul(patches, kernel)
        return out + conv.bias[...].astype(self.dtype)

    def _check_tap(self, tap) -> tuple[int | None, str | None]:
        if tap is None:
            return None, None
        index, point = tap
        n = len(self.blocks)
        if not -n <= index < n or point not in TAP_POINTS:
            raise ValueError(f"tap must be (block in [-{n}, {n}), one of {TAP_POINTS}), got {tap}")
        return index % n, point

    def project(self, tokens: jax.Array) -> jax.Array:
        """`head.proj` on any tokens `(..., W)` → `(..., E)` (class token or all tokens)."""
        return self.head_proj(tokens)

    def __call__(self, images: jax.Array) -> jax.Array:
        """images `(B, H, W, 3)` → unnormalised embeddings `(B, E)`, pooled per `vision.pool`."""
        if self.pool == "token":
            return self.project(self.forward_features(images, cls_only=True)[0][:, 0])
        tokens, _ = self.forward_features(images)
        patches = tokens[:, 1:]
        return self.project(patches.mean(axis=1) if self.pool == "avg" else patches.max(axis=1))
