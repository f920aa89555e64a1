"""M2IB saliency (Wang et al. 2023; MedCLIP-SAMv2's default): a per-token information bottleneck
after a vision block, fitted so the image embedding keeps its cosine with the prompt's embedding.
Batched over images, jit-compiled; `torch_bridge.m2ib` is the PyTorch reference it is tested on.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

# MedCLIP-SAMv2 (reference notes §3.1): vlayer 9 of 12, 10 Adam steps at lr 1, 10 noisy copies,
# α initialised to 5 (λ = σ(5) ≈ 0.993); β is 2.0 (brain) or 1.0 (breast) in its scripts.
DEFAULTS = dict(layer=9, beta=1.0, steps=10, lr=1.0, samples=10, seed=12)
ALPHA_INIT = 5.0


def embed(visual, images: jax.Array) -> jax.Array:
    """Patch + class-token + position embedding `(B, 1+N, W)`: the residual stream before block 0
    (the first lines of `VisionTransformer.forward_features`; `test_m2ib` checks the match)."""
    b, h, w, c = images.shape
    if (h, w, c) != (visual.image_size, visual.image_size, 3):
        raise ValueError(
            f"images must be (B, {visual.image_size}, {visual.image_size}, 3) NHWC, got "
            f"{tuple(images.shape)}"
        )
    x = visual.patch_embed(images.astype(visual.dtype))
    x = x.reshape(b, -1, x.shape[-1])
    cls = jnp.broadcast_to(visual.cls_token[...].astype(x.dtype), (b, 1, x.shape[-1]))
    return jnp.concatenate([cls, x], axis=1) + visual.pos_embed[...].astype(x.dtype)


def run_blocks(visual, x: jax.Array, start: int, stop: int | None = None) -> jax.Array:
    """The residual stream after blocks `start..stop-1` applied to `x`."""
    for block in list(visual.blocks)[start:stop]:
        x, _ = block(x)
    return x


def head(visual, x: jax.Array) -> jax.Array:
    """Final norm → pooling (`vision.pool`) → `head.proj` → L2-normalised `(B, E)` float32."""
    tokens = visual.norm(x)
    if visual.pool == "token":
        pooled = tokens[:, 0]
    else:
        patches = tokens[:, 1:]
        pooled = patches.mean(axis=1) if visual.pool == "avg" else patches.max(axis=1)
    emb = visual.project(pooled).astype(jnp.float32)
    return emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


def capacity(x: jax.Array, alpha: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """λ = σ(α); the bottleneck's mean λx, std (1−λ) and per-element capacity
    KL(N(λx, (1−λ)²) ‖ N(0, 1)) = −½(1 + log σ² − μ² − σ²), as M2IB's `InformationBottleneck`."""
    lam = jax.nn.sigmoid(alpha)
    mu, var = x * lam, (1.0 - lam) ** 2
    return mu, jnp.sqrt(var), -0.5 * (1.0 + jnp.log(var) - mu**2 - var)


def _fit(model, images, text, noise, *, layer, beta, lr):
    """Optimise α `(B, 1+N, W)` per image; returns the capacity of the last forward pass (the one
    before the final Adam update, as M2IB's `buffer_capacity`). `noise`: `(steps, S, 1+N, W)`,
    shared by all images so a map does not depend on its batch."""
    visual = model.visual
    x = jax.lax.stop_gradient(run_blocks(visual, embed(visual, images), 0, layer + 1))
    x = x.astype(jnp.float32)
    b, n, w = x.shape
    samples = noise.shape[1]
    text = text / jnp.maximum(jnp.linalg.norm(text, axis=-1, keepdims=True), 1e-12)
    tx = optax.adam(lr)

    def loss_fn(alpha, eps):
        mu, std, cap = capacity(x, alpha)
        z = (mu[:, None] + std[:, None] * eps[None]).reshape(b * samples, n, w)
        emb = head(visual, run_blocks(visual, z.astype(visual.dtype), layer + 1))
        cos = jnp.einsum("bse,be->bs", emb.reshape(b, samples, -1), text)
        # images do not interact: the gradient of the sum is each image's own loss gradient
        return jnp.sum(beta * cap.mean(axis=(1, 2)) - cos.mean(axis=1)), cap

    def step(carry, eps):
        alpha, opt, _ = carry
        (_, cap), grad = jax.value_and_grad(loss_fn, has_aux=True)(alpha, eps)
        updates, opt = tx.update(grad, opt, alpha)
        return (optax.apply_updates(alpha, updates), opt, cap), None

    alpha = jnp.full((b, n, w), ALPHA_INIT, jnp.float32)
    carry = (alpha, tx.init(alpha), jnp.zeros_like(alpha))
    (_, _, cap), _ = jax.lax.scan(step, carry, noise)
    return cap


def capacity_map(cap: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Capacity `(B, 1+N, W)` → NaN-sum over channels → class token dropped → `(g, g)` → bilinear
    resize (half-pixel centres, torch `interpolate(mode="bilinear")`) → min–max → `(B, H, W)`;
    a constant map gives zeros."""
    per_token = jnp.nansum(cap, axis=-1)[:, 1:]
    g = int(round(per_token.shape[1] ** 0.5))
    if g * g != per_token.shape[1]:
        raise ValueError(f"patch tokens do not form a square grid: {per_token.shape[1]}")
    grid = per_token.reshape(-1, g, g)

    def one(m):
        m = jax.image.resize(m, size, "linear", antialias=False)
        lo, hi = m.min(), m.max()
        return jnp.where(hi > lo, (m - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0)

    return jax.vmap(one)(grid)


@functools.lru_cache(maxsize=16)
def _compiled(graphdef, layer: int, beta: float, lr: float):
    def run(state, images, text, noise):
        model = nnx.merge(graphdef, state)
        cap = _fit(model, images, text, noise, layer=layer, beta=beta, lr=lr)
        return capacity_map(cap, images.shape[1:3])

    return jax.jit(run)


def noise_for(model, *, seed: int, steps: int, samples: int) -> jax.Array:
    """Standard-normal bottleneck noise `(steps, samples, 1+N, W)` for `model` from `seed`."""
    v = model.visual
    shape = (steps, samples, (v.image_size // v.patch_size) ** 2 + 1, v.norm.scale.shape[0])
    return jax.random.normal(jax.random.key(int(seed)), shape)


def default_config() -> ConfigDict:
    """`config.saliency.m2ib` keys (MedCLIP-SAMv2's values; `layer` indexes the vision blocks)."""
    return ConfigDict(dict(DEFAULTS))


def from_config(model, images, text, cfg, torch_model=None) -> np.ndarray:
    """Maps `(B, H, W)` per `config.saliency` (`backend`, `batch_size`, `m2ib.*`). The torch
    backend (`torch_model()` builds the open_clip twin) gets the same noise draw as JAX would."""
    m = cfg.m2ib
    steps, samples = int(m.steps), int(m.samples)
    noise = noise_for(model, seed=int(m.seed), steps=steps, samples=samples)
    layer, beta, lr = _block_index(model, int(m.layer)), float(m.beta), float(m.lr)
    if cfg.backend == "torch":
        from torch_bridge import m2ib as torch_m2ib

        return torch_m2ib.m2ib(
            torch_model(), images, text, np.asarray(noise), layer=layer, beta=beta, lr=lr
        )
    if cfg.backend != "jax":
        raise ValueError(f"saliency.backend must be jax or torch, got {cfg.backend!r}")
    kw = dict(layer=layer, beta=beta, lr=lr, steps=steps, samples=samples, noise=noise)
    bs = int(cfg.batch_size)
    out = [
        m2ib(model, images[i : i + bs], text[i : i + bs], **kw) for i in range(0, len(images), bs)
    ]
    return np.concatenate([np.asarray(o) for o in out])


def _block_index(model, layer: int) -> int:
    depth = len(model.visual.blocks)
    if not -depth <= layer < depth:
        raise ValueError(f"saliency.m2ib.layer must be in [-{depth}, {depth}), got {layer}")
    return layer % depth


def m2ib(
    model,
    images,
    text,
    *,
    layer: int = DEFAULTS["layer"],
    beta: float = DEFAULTS["beta"],
    steps: int = DEFAULTS["steps"],
    lr: float = DEFAULTS["lr"],
    samples: int = DEFAULTS["samples"],
    seed: int = DEFAULTS["seed"],
    noise=None,
) -> jax.Array:
    """M2IB maps `(B, H, W)` in [0, 1] for images `(B, H, W, 3)` (CLIP-normalised NHWC) and
    L2-normalised text embeddings `(B, E)` (row i prompts image i).

    The residual stream after block `layer` (negative: from the last) becomes λ·x + (1−λ)·ε,
    λ = σ(α) per token and channel (α = 5 at start), ε ~ N(0, 1) drawn for `samples` copies of
    each image; `steps` Adam steps (lr `lr`) minimise β·mean(capacity) − mean cos(text, image
    embedding). The map is the per-token capacity summed over channels. `noise`
    `(steps, samples, 1+N, W)` overrides the draw from `seed` (the parity test feeds both
    backends the same one); every image of the batch gets the same draw.
    """
    images, text = jnp.asarray(images, jnp.float32), jnp.asarray(text, jnp.float32)
    if images.ndim != 4 or text.ndim != 2 or images.shape[0] != text.shape[0]:
        raise ValueError(
            f"images (B, H, W, 3) and text (B, E) expected, got {images.shape} and {text.shape}"
        )
    layer = _block_index(model, layer)
    if steps < 1 or samples < 1:
        raise ValueError(f"saliency.m2ib steps and samples must be ≥ 1, got {steps}, {samples}")
    expected = noise_for(model, seed=seed, steps=steps, samples=samples)
    noise = expected if noise is None else jnp.asarray(noise, jnp.float32)
    if noise.shape != expected.shape:
        raise ValueError(f"noise must be {expected.shape}, got {tuple(noise.shape)}")
    graphdef, state = nnx.split(model)
    return _compiled(graphdef, int(layer), float(beta), float(lr))(state, images, text, noise)
