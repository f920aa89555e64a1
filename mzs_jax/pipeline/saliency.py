"""Text-prompted saliency on the Flax CLIP, JAX-native (paper "Zero-shot segmentation…": gScoreCAM).

gScoreCAM (Chen et al. 2022; reference steps in docs/zeroshot.md), Grad-CAM (the paper's
ablation) and MaskCLIP-style dense similarity; `jax.grad` at a tapped block activation, `vmap`
over masked inputs, jit-compiled, batched over images. Mirrors `torch_bridge.cam`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

METHODS = ("gscorecam", "gradcam", "dense")


def bilinear_matrix(out_size: int, in_size: int) -> jax.Array:
    """`(out, in)` linear-interpolation matrix with align_corners=True (torch
    `UpsamplingBilinear2d`, used by the reference to turn channels into masks)."""
    if in_size == 1:
        return jnp.ones((out_size, 1), jnp.float32)
    pos = jnp.linspace(0.0, in_size - 1.0, out_size)
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, in_size - 2)
    frac = pos - lo
    eye = jnp.eye(in_size, dtype=jnp.float32)
    return eye[lo] * (1 - frac)[:, None] + eye[lo + 1] * frac[:, None]


def _unit_range(x: jax.Array, axes: tuple[int, ...], eps: float) -> jax.Array:
    lo = x.min(axis=axes, keepdims=True)
    x = x - lo
    return x / (x.max(axis=axes, keepdims=True) + eps)


def finish_map(cam: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Native-grid map `(g, g)` → min–max → bilinear resize (half-pixel, as `cv2.resize`) →
    min–max again: pytorch-grad-cam's `scale_cam_image` + layer aggregation. → `(H, W)`."""
    cam = _unit_range(cam, (0, 1), 1e-7)
    cam = jax.image.resize(cam, size, "linear", antialias=False)
    return _unit_range(cam, (0, 1), 1e-7)


def _grid(tokens: jax.Array) -> jax.Array:
    """Patch tokens `(1+N, C)` (class token first) → `(g, g, C)`."""
    n = tokens.shape[0] - 1
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"patch tokens do not form a square grid: {n}")
    return tokens[1:].reshape(g, g, tokens.shape[-1])


def _scores(model, images: jax.Array, text: jax.Array) -> jax.Array:
    """`logit_scale · cos(image, text)` per row: images `(B, H, W, 3)`, text `(B, E)` → `(B,)`."""
    return jnp.exp(model.logit_scale[...]) * jnp.sum(model.encode_image(images) * text, axis=-1)


def _acts_and_grads(model, images, text, tap):
    """Tapped activations `(B, 1+N, C)` and d score / d activation, per image."""
    shape = jax.eval_shape(lambda: model.visual.forward_features(images, tap=tap)[1])
    delta0 = jnp.zeros(shape.shape, shape.dtype)

    def total_score(delta):
        tokens, tapped = model.visual.forward_features(images, tap=tap, tap_delta=delta)
        emb = model.visual.project(tokens[:, 0]).astype(jnp.float32)
        emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        score = jnp.exp(model.logit_scale[...]) * jnp.sum(emb * text, axis=-1)
        return score.sum(), tapped  # images do not interact: the sum's gradient is per image

    (_, acts), grads = jax.value_and_grad(total_score, has_aux=True)(delta0)
    return acts.astype(jnp.float32), grads.astype(jnp.float32)


def _gscorecam(model, images, text, *, topk, tap, chunk):
    b, h, w, _ = images.shape
    acts, grads = _acts_and_grads(model, images, text, tap)
    acts = jax.vmap(_grid)(acts)  # (B, g, g, C)
    importance = jax.vmap(_grid)(grads).mean(axis=(1, 2))  # (B, C), signed as the reference
    _, top = jax.lax.top_k(importance, topk)  # (B, k)
    g, c = acts.shape[1], acts.shape[-1]
    rh, rw = bilinear_matrix(h, g), bilinear_matrix(w, g)

    def score_channels(image, act, txt, channels):
        def one(ch):
            up = rh @ act[:, :, ch] @ rw.T  # (H, W)
            mask = _unit_range(up, (0, 1), 1e-8)
            return _scores(model, (image * mask[:, :, None])[None], txt[None])[0]

        return jax.lax.map(one, channels, batch_size=chunk)  # vmapped in chunks

    s = jax.vmap(score_channels)(images, acts, text, top)  # (B, k)
    s = jnp.nan_to_num(s)
    full = jnp.zeros((b, c), jnp.float32).at[jnp.arange(b)[:, None], top].set(s)
    weights = jax.nn.softmax(full, axis=-1)  # over all C; unselected channels score 0
    cam = jax.nn.relu(jnp.einsum("bijc,bc->bij", acts, weights))
    maps = jax.vmap(lambda m: finish_map(m, (h, w)))(cam)
    return maps, top, importance


def _gradcam(model, images, text, *, tap):
    h, w = images.shape[1:3]
    acts, grads = _acts_and_grads(model, images, text, tap)
    acts, grads = jax.vmap(_grid)(acts), jax.vmap(_grid)(grads)
    cam = jax.nn.relu(jnp.einsum("bijc,bc->bij", acts, grads.mean(axis=(1, 2))))
    return jax.vmap(lambda m: finish_map(m, (h, w)))(cam)


def _dense(model, images, text):
    h, w = images.shape[1:3]
    tokens, _ = model.visual.forward_features(images)
    emb = model.visual.project(tokens).astype(jnp.float32)  # (B, 1+N, E)
    emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    sim = jnp.einsum("bne,be->bn", emb, text)[:, :, None]
    sim = jax.vmap(_grid)(sim)[..., 0]
    return jax.vmap(lambda m: finish_map(m, (h, w)))(sim)


@functools.lru_cache(maxsize=32)
def _compiled(graphdef, method: str, topk: int, tap: tuple[int, str], chunk: int):
    def run(state, images, text):
        model = nnx.merge(graphdef, state)
        if method == "gscorecam":
            return _gscorecam(model, images, text, topk=topk, tap=tap, chunk=chunk)
        if method == "gradcam":
            return _gradcam(model, images, text, tap=tap)
        return _dense(model, images, text)

    return jax.jit(run)


def _check(model, images, text, method):
    if method not in METHODS:
        raise ValueError(f"saliency.method must be one of {METHODS}, got {method!r}")
    if images.ndim != 4 or text.ndim != 2 or images.shape[0] != text.shape[0]:
        raise ValueError(
            f"images (B, H, W, 3) and text (B, E) expected, got {images.shape} and {text.shape}"
        )


def saliency(
    model,
    images: jax.Array,
    text: jax.Array,
    method: str = "gscorecam",
    *,
    topk: int = 60,
    layer: int = -1,
    point: str = "norm2",
    chunk: int = 32,
    return_channels: bool = False,
):
    """Saliency maps `(B, H, W)` in [0, 1] for images `(B, H, W, 3)` (CLIP-normalised NHWC) and
    L2-normalised text embeddings `(B, E)` (row i prompts image i).

    gScoreCAM: rank the `point` activation channels of block `layer` by the signed spatial mean
    of d(logit_scale·cos)/dA, keep the top-k, use each upsampled (align_corners) and min–maxed
    channel as a mask on the input, score the k masked inputs (in chunks of `chunk`), softmax the
    scores over all channels (unselected = 0), weight, ReLU, normalise, resize.
    `return_channels=True` (gscorecam) also returns top-k indices `(B, k)` and importances `(B, C)`.
    """
    images, text = jnp.asarray(images, jnp.float32), jnp.asarray(text, jnp.float32)
    _check(model, images, text, method)
    width = model.visual.blocks[0].norm2.scale.shape[0]
    if method == "gscorecam" and not 1 <= topk <= width:
        raise ValueError(f"saliency.topk must be in [1, {width}], got {topk}")
    graphdef, state = nnx.split(model)
    fn = _compiled(graphdef, method, int(topk), (int(layer), point), int(chunk))
    out = fn(state, images, text)
    if method == "gscorecam":
        maps, top, importance = out
        return (maps, top, importance) if return_channels else maps
    return out
