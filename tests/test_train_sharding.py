"""One train step on 8 virtual CPU devices equals the same step on 1 device (DP and FSDP)."""

import jax
import numpy as np
import pytest
from train_toy import ToyTask, toy_config

from mzs_jax.train import checkpoint as ckpt
from mzs_jax.train.input import to_global, train_iterator
from mzs_jax.train.loop import init_state
from mzs_jax.train.mesh import batch_sharding, make_mesh, spec_for
from mzs_jax.train.step import make_train_step


def _one_step(config, devices):
    task = ToyTask(dropout=0.0)
    mesh = make_mesh(config.mesh, devices)
    graphdef, tx, state = init_state(task, config, mesh, spe=4)
    batch = next(train_iterator(task.train_dataset(config), config, 1, 0, 1))
    batch = to_global(batch, batch_sharding(mesh))
    step = jax.jit(make_train_step(task.loss_fn, graphdef, tx, config), donate_argnums=0)
    state, metrics = step(state, batch)
    params = {k: np.asarray(v) for k, v in ckpt.flatten(state["params"]).items()}
    shardings = {k: v.sharding.spec for k, v in ckpt.flatten(state["params"]).items()}
    return float(metrics["loss"]), params, shardings


@pytest.mark.parametrize(
    "mesh,grad_accum",
    [({"data": 8, "fsdp": 1}, 1), ({"data": 1, "fsdp": 8}, 1), ({"data": 2, "fsdp": 4}, 2)],
    ids=["data-parallel", "fsdp", "2x4-accum2"],
)
def test_one_step_on_8_devices_equals_1_device(mesh, grad_accum):
    assert jax.device_count() == 8
    cfg8 = toy_config(
        **{"mesh.data": mesh["data"], "mesh.fsdp": mesh["fsdp"]}, grad_accum=grad_accum
    )
    cfg1 = toy_config(**{"mesh.data": 1, "mesh.fsdp": 1}, grad_accum=grad_accum)
    loss8, p8, spec8 = _one_step(cfg8, jax.devices())
    loss1, p1, _ = _one_step(cfg1, jax.devices()[:1])
    np.testing.assert_allclose(loss8, loss1, atol=1e-5)
    for k in p1:
        np.testing.assert_allclose(p8[k], p1[k], atol=1e-5, err_msg=k)
    if mesh["fsdp"] > 1:  # parameters really are split over the fsdp axis
        assert "fsdp" in spec8["l1.kernel"]


def test_sharding_rules_pick_first_matching_regex():
    mesh = make_mesh(toy_config(**{"mesh.data": 2, "mesh.fsdp": 4}).mesh)
    rules = ((r"l1\.kernel", (None, "fsdp")), (".*", "fsdp"))
    assert tuple(spec_for("l1.kernel", (8, 16), rules, mesh)) == (None, "fsdp")
    assert tuple(spec_for("l2.kernel", (16, 1), rules, mesh)) == ("fsdp", None)
    assert tuple(spec_for("l2.bias", (1,), rules, mesh)) == ()  # nothing divisible: replicated
    with pytest.raises(ValueError, match="not divisible"):
        spec_for("l1.kernel", (8, 6), rules, mesh)


def test_bad_mesh_config_names_the_key():
    with pytest.raises(ValueError, match="config.mesh"):
        make_mesh(toy_config(**{"mesh.data": 3, "mesh.fsdp": 2}).mesh)
