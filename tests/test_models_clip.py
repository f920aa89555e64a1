"""Flax BiomedCLIP model: configs, shapes, L2 norm, attention mask, gScoreCAM tap, bf16 compute."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mzs_jax import convert
from mzs_jax.models import clip, vit
from mzs_jax.models.context import ContextEncoder


@pytest.fixture(scope="module")
def tiny():
    cfg = clip.model_config("tiny")
    return cfg, convert.from_open_clip(convert.random_state_dict(cfg, seed=1), cfg)


def test_biomedclip_config_is_the_published_architecture():
    c = clip.model_config("biomedclip")
    assert (c.embed_dim, c.dtype, c.param_dtype, c.context.enabled) == (
        512,
        "float32",
        "float32",
        False,
    )
    assert c.logit_scale_init == pytest.approx(math.log(1 / 0.07))
    v, t = c.vision, c.text
    assert (v.image_size, v.patch_size, v.width, v.layers, v.heads, v.mlp_dim, v.ln_eps) == (
        224, 16, 768, 12, 12, 3072, 1e-6)  # fmt: skip
    assert (t.vocab_size, t.max_positions, t.type_vocab_size, t.width, t.layers, t.heads) == (
        30522, 512, 2, 768, 12, 12)  # fmt: skip
    assert (t.intermediate, t.ln_eps, t.context_length, t.proj_hidden, t.pad_token_id) == (
        3072, 1e-12, 256, 640, 0)  # fmt: skip


def test_unknown_model_name_and_dtype_are_rejected_by_name():
    with pytest.raises(ValueError, match="'vit_huge'"):
        clip.model_config("vit_huge")
    cfg = clip.model_config("tiny")
    cfg.dtype = "float16"
    with pytest.raises(ValueError, match=r"model\.dtype.*'float16'"):
        clip.CLIP(cfg, rngs=nnx.Rngs(0))


def test_embeddings_have_the_configured_dim_and_unit_norm(tiny):
    cfg, model = tiny
    images = jax.random.normal(jax.random.key(0), (3, 64, 64, 3))
    ids = jnp.full((3, cfg.text.context_length), 7, jnp.int32)
    img = nnx.jit(lambda m, x: m.encode_image(x))(model, images)
    txt = nnx.jit(lambda m, i, a: m.encode_text(i, a))(model, ids, jnp.ones_like(ids))
    assert img.shape == txt.shape == (3, cfg.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(img, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=-1), 1.0, atol=1e-5)


def test_padded_positions_do_not_change_the_text_embedding(tiny):
    cfg, model = tiny
    ids = np.zeros((1, cfg.text.context_length), np.int32)
    ids[0, :6] = [2, 11, 12, 13, 14, 3]
    mask = (ids != 0).astype(np.int32)
    noisy = ids.copy()
    noisy[0, 6:] = 99  # garbage under the mask
    encode = nnx.jit(lambda m, i, a: m.encode_text(i, a))
    a, b = encode(model, ids, mask), encode(model, noisy, mask)
    np.testing.assert_array_equal(a, b)
    # Unmasked, the same garbage does move the embedding (weights are N(0, 0.02): small but real).
    assert np.abs(a - encode(model, noisy, np.ones_like(mask))).max() > 1e-4


def test_tap_returns_the_norm2_activation_and_its_gradient(tiny):
    _, model = tiny
    images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    features = nnx.jit(
        lambda m, x, d, tap: m.visual.forward_features(x, tap=tap, tap_delta=d), static_argnums=3
    )
    plain, none = features(model, images, None, None)
    assert none is None
    zeros = jnp.zeros(plain.shape)
    tokens, tapped = features(model, images, zeros, (1, "norm2"))
    np.testing.assert_allclose(tokens, plain, atol=1e-6)
    assert tapped.shape == plain.shape
    # Injecting a delta at the tap moves the output: the tap is on the live path.
    moved, _ = features(model, images, zeros + 0.1, (1, "norm2"))
    assert np.abs(moved - plain).max() > 1e-3

    def score(delta):
        t, _ = model.visual.forward_features(images, tap=(-1, "norm2"), tap_delta=delta)
        return model.visual.project(t[:, 0]).sum()

    score = jax.jit(score)
    grad = jax.jit(jax.grad(score))(zeros)
    assert grad.shape == plain.shape and bool(jnp.all(jnp.isfinite(grad)))
    direction = jax.random.normal(jax.random.key(2), plain.shape)
    eps = 1e-2
    numeric = (score(eps * direction) - score(-eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grad, direction), numeric, rtol=2e-2)
    with pytest.raises(ValueError, match="tap must be"):
        model.visual.forward_features(images, tap=(5, "norm2"))


def test_project_on_the_class_token_is_the_image_embedding(tiny):
    _, model = tiny
    images = jax.random.normal(jax.random.key(3), (2, 64, 64, 3))
    dense, pooled = nnx.jit(lambda m, x: (m.visual.project(m.visual.forward_features(x)[0]),
                                          m.visual(x)))(model, images)  # fmt: skip
    assert dense.shape == (2, 65, model.visual.head_proj.out_features)
    np.testing.assert_allclose(dense[:, 0], pooled, atol=1e-6)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_class_token_only_last_layer_gives_the_full_layers_values_and_gradients(tiny, remat):
    """Both towers pool the class token, so their last layer computes only its output; the
    embeddings and every parameter gradient equal those of the full last layer."""
    cfg, model = tiny
    model = convert.from_open_clip(convert.to_open_clip(model), cfg.copy_and_resolve_references())
    model.visual.remat = model.text.remat = remat
    images = jax.random.normal(jax.random.key(4), (2, 64, 64, 3))
    ids = jax.random.randint(jax.random.key(5), (2, cfg.text.context_length), 1, 50)
    mask = (jnp.arange(cfg.text.context_length)[None] < jnp.array([[9], [20]])).astype(jnp.int32)

    def embeddings(m, full: bool):
        if not full:
            return m.visual(images), m.text(ids, mask)
        tokens, _ = m.visual.forward_features(images)
        cls = m.text.hidden_states(ids, mask)[:, 0]
        return m.visual.project(tokens[:, 0]), m.text.proj_2(vit.gelu(m.text.proj_0(cls)))

    def loss(m, full):
        img, txt = embeddings(m, full)
        return jnp.sum(jnp.sin(img)) + jnp.sum(jnp.cos(txt))

    grad = nnx.jit(nnx.grad(loss), static_argnums=1)
    for a, b in zip(embeddings(model, False), embeddings(model, True), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    fast, full = nnx.state(grad(model, False)), nnx.state(grad(model, True))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), fast, full)
    with pytest.raises(ValueError, match="cls_only with a tap"):
        model.visual.forward_features(images, tap=(0, "norm2"), cls_only=True)


def test_bfloat16_compute_keeps_float32_params_and_close_embeddings():
    cfg = clip.model_config("tiny")
    sd = convert.random_state_dict(cfg, seed=2)
    f32 = convert.from_open_clip(sd, cfg)
    cfg.dtype = "bfloat16"
    bf16 = convert.from_open_clip(sd, cfg)
    assert bf16.visual.blocks[0].attn.qkv.kernel[...].dtype == jnp.float32
    images = jax.random.normal(jax.random.key(4), (2, 64, 64, 3))
    encode = nnx.jit(lambda m, x: m.encode_image(x))
    a, b = encode(f32, images), encode(bf16, images)
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=5e-2)


def test_context_config_switch_builds_the_encoder_or_leaves_none():
    cfg = clip.model_config("tiny")
    assert clip.CLIP(cfg, rngs=nnx.Rngs(0)).context is None
    cfg.context.enabled = True
    model = clip.CLIP(cfg, rngs=nnx.Rngs(0))
    assert isinstance(model.context, ContextEncoder)


def test_unknown_pooling_is_rejected_naming_the_key():
    cfg = clip.model_config("tiny")
    cfg.vision.pool = "cls"
    with pytest.raises(ValueError, match="vision.pool"):
        clip.CLIP(cfg, rngs=nnx.Rngs(0))
