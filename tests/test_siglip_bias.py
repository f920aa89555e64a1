"""SigLIP's learned logit bias: a CLIP Param that the loss's gradient reaches (dense and global),
and open_clip's `logit_bias` key round-trips through export and the PyTorch model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mzs_jax import convert, losses
from mzs_jax.models import clip
from mzs_jax.train.clip_task import clip_loss


def _config(bias=-10.0):
    cfg = clip.model_config("tiny")
    cfg.logit_scale_init = float(np.log(10.0))
    cfg.logit_bias_init = bias
    return cfg


def _batch(cfg, b=8, seed=0):
    rng = np.random.default_rng(seed)
    s, length = cfg.vision.image_size, cfg.text.context_length
    ids = rng.integers(5, cfg.text.vocab_size, (b, length)).astype(np.int32)
    return {
        "image": rng.standard_normal((b, s, s, 3)).astype(np.float32),
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
    }


def test_a_model_has_a_bias_param_only_when_configured():
    assert clip.CLIP(clip.model_config("tiny"), rngs=nnx.Rngs(0)).logit_bias is None
    model = clip.CLIP(_config(), rngs=nnx.Rngs(0))
    assert isinstance(model.logit_bias, nnx.Param) and float(model.logit_bias[...]) == -10.0


def test_the_bias_gradient_reaches_the_param_in_the_dense_and_the_global_form():
    cfg = _config(-2.0)
    model, batch = clip.CLIP(cfg, rngs=nnx.Rngs(0)), _batch(cfg)
    loss_cfg = losses.default_config()
    loss_cfg.name = "siglip"
    mesh = jax.make_mesh((8,), ("data",))
    grads = {}
    for form, fn in (
        ("dense", losses.loss_from_config(loss_cfg)),
        ("ring", losses.make_global_loss("siglip", mesh, form="ring")),
        ("gather", losses.make_global_loss("siglip", mesh, form="gather")),
    ):
        step = nnx.jit(nnx.value_and_grad(lambda m, f=fn: clip_loss(m, batch, f), has_aux=True))
        (_, aux), g = step(model)
        assert float(aux["logit_bias"]) == -2.0
        grads[form] = float(g.logit_bias[...])
    img = model.encode_image(batch["image"])
    txt = model.encode_text(batch["input_ids"], batch["attention_mask"])
    want = jax.grad(losses.siglip, argnums=3)(img, txt, 0.1, jnp.float32(-2.0))
    assert float(want) != 0.0
    # The bias gradient sums B² = 64 sigmoid terms of size ~0.1 that cancel to ~2e-3: float32
    # reassociation (ring order, jit fusion) errs on the scale of the terms, hence the atol.
    for form, got in grads.items():
        np.testing.assert_allclose(got, float(want), rtol=1e-4, atol=1e-6, err_msg=form)


def test_logit_bias_round_trips_through_open_clip_keys():
    cfg = _config()
    sd = convert.random_state_dict(cfg, seed=1)
    assert sd["logit_bias"] == np.float32(-10.0)
    back = convert.to_open_clip(convert.from_open_clip(sd, cfg))
    assert sorted(back) == sorted(sd)
    assert np.array_equal(back["logit_bias"], sd["logit_bias"])
    plain = clip.model_config("tiny")
    plain_sd = convert.random_state_dict(plain)
    assert "logit_bias" not in convert.to_open_clip(convert.from_open_clip(plain_sd, plain))
    with pytest.raises(ValueError, match="model.logit_bias_init"):
        convert.from_open_clip(sd, plain)
    with pytest.raises(ValueError, match="missing key 'logit_bias'"):
        convert.from_open_clip(plain_sd, cfg)


def test_the_exported_bias_loads_into_open_clip_strictly(tmp_path):
    pytest.importorskip("open_clip")
    from torch_bridge.clip import build_open_clip

    cfg = _config(-7.5)
    model = convert.from_open_clip(convert.random_state_dict(cfg, seed=2), cfg)
    path = tmp_path / "siglip.safetensors"
    convert.save_safetensors(convert.to_open_clip(model), path)
    torch_model = build_open_clip(cfg, weights=path)  # load_state_dict(strict=True)
    assert torch_model.logit_bias.item() == -7.5
    assert float(build_open_clip(_config(-10.0)).logit_bias.item()) == -10.0
