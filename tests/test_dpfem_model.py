"""DPFEM: shapes, input-dependent gates, identity at init, and annotation-free training with fit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mzs_jax.models import dpfem
from mzs_jax.pipeline import dpfem_train
from mzs_jax.train.checkpoint import restore_model


@pytest.fixture(scope="module")
def model():
    return dpfem.DPFEM(dpfem.model_config(3, 8, 4), rngs=nnx.Rngs(0))


# One compiled program per input shape instead of op-by-op eager dispatch.
_forward = nnx.jit(lambda m, x, s: (m(x, s), *m.features(x, s)))


def test_output_is_logits_at_input_resolution_for_non_square_inputs(model):
    x = jax.random.uniform(jax.random.key(0), (2, 32, 48, 3))
    s = jax.random.uniform(jax.random.key(1), (2, 32, 48))
    out, fused, gates = _forward(model, x, s)
    assert out.shape == (2, 32, 48) and out.dtype == jnp.float32
    assert fused.shape == gates.shape == (2, 8, 12, 8)


def test_untrained_dpfem_passes_the_saliency_through(model):
    s = jax.random.uniform(jax.random.key(1), (1, 32, 32), minval=0.05, maxval=0.95)
    out = jax.nn.sigmoid(_forward(model, jnp.zeros((1, 32, 32, 3)), s)[0])
    np.testing.assert_allclose(out, s, atol=1e-5)


def test_gates_depend_on_the_input_and_vary_over_locations(model):
    x1 = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
    x2 = jax.random.uniform(jax.random.key(2), (1, 32, 32, 3))
    s = jax.random.uniform(jax.random.key(1), (1, 32, 32))
    g1 = _forward(model, x1, s)[2]
    g2 = _forward(model, x2, s)[2]
    g3 = _forward(model, x1, 1.0 - s)[2]
    assert float(jnp.abs(g1 - g2).max()) > 1e-3 and float(jnp.abs(g1 - g3).max()) > 1e-3
    assert float(g1.std(axis=(1, 2)).mean()) > 1e-3  # not a fixed per-channel sum
    assert float(g1.min()) > 0 and float(g1.max()) < 1


def test_bad_inputs_are_clear_errors(model):
    m = model
    with pytest.raises(ValueError, match="stem_stride=4"):
        m(jnp.zeros((1, 30, 32, 3)), jnp.zeros((1, 30, 32)))
    with pytest.raises(ValueError, match="saliency must be"):
        m(jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 16, 16)))
    with pytest.raises(ValueError, match="power of two"):
        dpfem.DPFEM(dpfem.model_config(3, 8, 3), rngs=nnx.Rngs(0))


def _examples(n=16, size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        cy, cx, r = rng.integers(10, 22, 2).tolist() + [int(rng.integers(5, 9))]
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)
        image = (
            np.repeat((0.2 + 0.6 * disk + 0.05 * rng.standard_normal(disk.shape))[..., None], 3, -1)
            .clip(0, 1)
            .astype(np.float32)
        )
        sal = np.clip(0.6 * disk + 0.2 + 0.25 * rng.standard_normal(disk.shape), 0, 1)
        crf = dpfem_train.default_config()
        out.append(
            {
                "image": image,
                "saliency": sal.astype(np.float32),
                "target": dpfem_train.crf_target(image, sal, _crf_cfg()).astype(np.float32),
            }
        )
        del crf
    return out


def _crf_cfg():
    from mzs_jax.pipeline import postprocess

    return postprocess.default_config().crf


def test_training_with_fit_reduces_the_self_supervised_loss_and_checkpoints(tmp_path):
    cfg = dpfem_train.default_config()
    cfg.width, cfg.batch_size, cfg.total_steps = 8, 8, 30
    cfg.optimizer.lr = 3e-3
    cfg.checkpoint.every_steps = 30
    examples = _examples()
    dpfem_train.train_dpfem(examples, cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), (losses[:5], losses[-5:])
    model, _ = restore_model(tmp_path, kind="dpfem")
    imgs = np.stack([e["image"] for e in examples[:2]])
    sal = np.stack([e["saliency"] for e in examples[:2]])
    out = dpfem_train.refine_saliency(model, imgs, sal)
    assert out.shape == (2, 32, 32) and 0 <= out.min() and out.max() <= 1
