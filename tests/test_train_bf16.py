"""`compute_dtype="bfloat16"` runs the towers' matmuls in bf16 (read from the lowered step's
StableHLO, not from parameter dtypes); float32 runs none; the bf16 loss stays close to fp32."""

import runpy

import jax
import numpy as np
import pytest

from mzs_jax.train.clip_task import ClipTask
from mzs_jax.train.input import to_global, train_iterator
from mzs_jax.train.loop import init_state
from mzs_jax.train.mesh import batch_sharding, make_mesh
from mzs_jax.train.step import make_optimizer, make_task_step, matmul_operand_dtypes


def _lowered_step(tmp_path, repo_root, dtype):
    cfg = runpy.run_path(str(repo_root / "configs" / "clip_cehnc.py"))["get_config"]()
    cfg.model, cfg.data.path, cfg.data.val_fraction = "tiny", "phantom:24", 0.0
    cfg.batch_size, cfg.compute_dtype = 8, dtype
    cfg.mesh.data = 2
    task = ClipTask(cfg, tmp_path / dtype)
    mesh = make_mesh(cfg.mesh, jax.devices()[:2])
    task.bind_mesh(mesh)
    graphdef, _, state = init_state(task, cfg, mesh, spe=1)
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(state["params"]))  # master copy
    batch = to_global(
        next(train_iterator(task.train_dataset(cfg), cfg, 1, 0, 1)), batch_sharding(mesh)
    )
    tx = make_optimizer(cfg, state["params"], 1)
    step = jax.jit(make_task_step(task, graphdef, tx, cfg))
    return step.lower(state, batch), step, state, batch


@pytest.fixture(scope="module")
def steps(tmp_path_factory, repo_root):
    tmp = tmp_path_factory.mktemp("bf16")
    return {d: _lowered_step(tmp, repo_root, d) for d in ("float32", "bfloat16")}


def _by_tower(lowered):
    out = {}
    for name, lhs, rhs in matmul_operand_dtypes(lowered):
        tower = "visual" if "visual" in name else "text" if "text" in name else "loss"
        out.setdefault(tower, set()).update((lhs, rhs))
    return out


def test_bf16_step_runs_both_towers_matmuls_in_bf16(steps):
    bf16 = _by_tower(steps["bfloat16"][0])
    # Forward and backward of both towers: every dot/convolution takes bf16 operands.
    assert bf16["visual"] == {"bf16"} and bf16["text"] == {"bf16"}, bf16
    fp32 = _by_tower(steps["float32"][0])
    assert "bf16" not in set().union(*fp32.values()), fp32
    assert fp32["visual"] == {"f32"} and fp32["text"] == {"f32"}


def test_bf16_loss_is_close_to_fp32(steps):
    losses = {}
    for dtype, (lowered, _, state, batch) in steps.items():
        _, metrics = lowered.compile()(state, batch)
        losses[dtype] = float(metrics["loss"])
    assert np.isfinite(losses["bfloat16"])
    assert abs(losses["bfloat16"] - losses["float32"]) <= 2e-2 * abs(losses["float32"]), losses
