"""make_global_loss on 8 virtual CPU devices equals the single-device loss (value and gradient)."""

import jax
import losses_numpy_reference as ref
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mzs_jax import losses

HP = {
    "infonce": {},
    "dcl": {},
    "hn_nce": {"beta": 0.6},
    "dhn_nce": {"beta1": 0.4, "beta2": 0.9},
    "cehnc": {"beta1": 0.5, "beta2": 1.5, "adaptive": True},
}


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (virtual) devices")
    return jax.make_mesh((8,), ("data",))


def _pairs(b, d=6, seed=0):
    rng = np.random.default_rng(seed)
    img = ref.unit(rng.normal(size=(b, d)))
    return img, ref.unit(img + 0.7 * rng.normal(size=(b, d)))


@pytest.mark.parametrize("name", list(HP))
def test_global_loss_equals_single_device_loss_in_value_and_gradient(mesh, name):
    img, txt = _pairs(24)  # 3 rows per device; block 5 does not divide 24 (padded, masked)
    with jax.enable_x64(True):
        want = jax.value_and_grad(
            lambda i, t, ta: losses.get_loss(name)(i, t, ta, **HP[name]), argnums=(0, 1, 2)
        )(img, txt, 0.2)
        fn = losses.make_global_loss(name, mesh, block_size=5, **HP[name])
        got = jax.value_and_grad(fn, argnums=(0, 1, 2))(img, txt, np.float64(0.2))
    np.testing.assert_allclose(float(got[0]), float(want[0]), atol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def test_global_loss_accepts_explicitly_sharded_inputs_and_default_block(mesh):
    img, txt = _pairs(16)
    sh = NamedSharding(mesh, P("data"))
    fn = losses.make_global_loss("cehnc", mesh, **HP["cehnc"])
    got = jax.jit(fn)(jax.device_put(img.astype(np.float32), sh), jax.device_put(txt, sh), 0.1)
    want = losses.cehnc(img.astype(np.float32), txt.astype(np.float32), 0.1, **HP["cehnc"])
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_global_loss_refuses_a_batch_that_does_not_split_over_the_mesh(mesh):
    img, txt = _pairs(20)
    with pytest.raises(ValueError, match="not a multiple of mesh axis"):
        losses.make_global_loss("infonce", mesh)(img, txt, 0.1)
    with pytest.raises(ValueError, match="block_size"):
        losses.make_global_loss("infonce", mesh, block_size=0)
    with pytest.raises(ValueError, match="no axis"):
        losses.make_global_loss("infonce", mesh, axis="model")
