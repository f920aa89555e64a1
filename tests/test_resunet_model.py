"""ResUNet (stage 3): shapes, residual path, config errors, and it overfits a tiny batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mzs_jax.models import resunet
from mzs_jax.pipeline.metrics import dice


@pytest.mark.parametrize("norm", ["group", "layer", "none"])
def test_logits_have_input_resolution_and_one_channel_per_class(norm):
    cfg = resunet.model_config("tiny", in_channels=3, num_classes=4, norm=norm)
    model = resunet.ResUNet(cfg, rngs=nnx.Rngs(0))
    y = nnx.jit(lambda m, x: m(x))(model, jnp.ones((2, 32, 48, 3)))
    assert y.shape == (2, 32, 48, 4) and y.dtype == jnp.float32
    assert bool(jnp.isfinite(y).all())


def test_encoder_and_decoder_blocks_are_residual_with_skip_concatenation():
    cfg = resunet.model_config("tiny", depth=3, width=8)
    model = resunet.ResUNet(cfg, rngs=nnx.Rngs(0))
    assert [lvl[0].conv1.out_features for lvl in model.encoder] == [8, 16, 32]
    # decoder blocks see the upsampled features concatenated with the encoder skip
    assert [lvl[0].conv1.in_features for lvl in model.decoder] == [32, 16]
    assert all(isinstance(b, resunet.ResBlock) for lvl in model.decoder for b in lvl)


def test_block_output_is_shortcut_plus_residual_branch():
    cfg = resunet.model_config("tiny")
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 8))
    same = resunet.ResBlock(8, 8, 1, cfg, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(same(x), x + same.residual(x), rtol=1e-6, atol=1e-6)
    # zeroing the last conv leaves exactly the identity path
    same.conv2.kernel[...] = jnp.zeros_like(same.conv2.kernel[...])
    np.testing.assert_allclose(same(x), x, atol=1e-6)
    down = resunet.ResBlock(8, 16, 2, cfg, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(down(x), down.shortcut(x) + down.residual(x), rtol=1e-5, atol=1e-5)
    assert down(x).shape == (1, 4, 4, 16)


def test_bad_config_and_input_raise_clear_errors():
    with pytest.raises(ValueError, match="norm"):
        resunet.model_config("tiny", norm="batch")
    with pytest.raises(ValueError, match="num_classes"):
        resunet.model_config("tiny", num_classes=1)
    model = resunet.ResUNet(resunet.model_config("tiny"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(jnp.ones((1, 30, 32, 1)))


def test_overfits_a_tiny_batch_with_cross_entropy():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    masks = np.stack(
        [((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) for cy, cx, r in [(10, 12, 6), (20, 18, 9)]]
    ).astype(np.int32)
    images = (masks * 0.6 + rng.normal(0, 0.2, masks.shape))[..., None].astype(np.float32)
    model = resunet.ResUNet(resunet.model_config("tiny"), rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt, images, masks)) for _ in range(120)]
    pred = np.asarray(nnx.jit(lambda m, x: m(x))(model, images).argmax(-1))
    assert losses[-1] < 0.1 * losses[0]
    assert dice(pred == 1, masks == 1) > 0.95
