"""Exact gradient accumulation (GradCache): with `grad_accum=k` the contrastive loss still sees the
whole batch, so loss, gradients and the updated parameters equal the `grad_accum=1` step."""

import jax
import ml_collections
import numpy as np
import pytest

from mzs_jax import losses
from mzs_jax.train import checkpoint as ckpt
from mzs_jax.train import defaults
from mzs_jax.train.clip_task import ClipTask, clip_model_config
from mzs_jax.train.input import to_global, train_iterator
from mzs_jax.train.loop import init_state
from mzs_jax.train.mesh import batch_sharding, make_mesh
from mzs_jax.train.step import make_gradient_fn, make_task_step

BATCH = 32
LOSS_NAMES = tuple(losses.LOSSES)


def _config(repo_root, name, context, mesh, k, accumulation="exact"):
    cfg = defaults.clip_config(name)  # with the loss's own initialisation (SigLIP's bias)
    cfg.model = "tiny"
    cfg.model_overrides.context = ml_collections.ConfigDict({"enabled": context})
    # One block per tower: accumulation does not depend on depth, and compiles stay short.
    cfg.model_overrides.vision = ml_collections.ConfigDict({"layers": 1})
    cfg.model_overrides.text = ml_collections.ConfigDict({"layers": 1})
    cfg.data.path = "phantom:72"
    cfg.data.val_fraction = 0.0
    cfg.mesh.data, cfg.mesh.fsdp = mesh
    cfg.batch_size, cfg.grad_accum, cfg.accumulation = BATCH, k, accumulation
    cfg.checkpoint.best_metric = ""
    return cfg


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, repo_root):
    """One ClipTask (tokenizer, data) per context setting, shared by every case."""
    out = {}
    for context in (False, True):
        cfg = _config(repo_root, "infonce", context, (1, 1), 1)
        out[context] = ClipTask(cfg, tmp_path_factory.mktemp(f"ctx{context}"))
    return out


def _gradients(task, cfg, devices):
    task.config, task.model_config = cfg, clip_model_config(cfg)
    mesh = make_mesh(cfg.mesh, devices)
    task.bind_mesh(mesh)
    graphdef, _, state = init_state(task, cfg, mesh, spe=1)
    batch = next(train_iterator(task.train_dataset(cfg), cfg, 1, 0, 1))
    batch = to_global(batch, batch_sharding(mesh))
    fn = make_gradient_fn(
        task.loss_fn, graphdef, cfg, embed_fn=task.embed, batch_loss_fn=task.batch_loss
    )
    loss, metrics, _, grads = jax.jit(fn)(state["params"], state["rest"], batch, state["rng"])
    flat = {k: np.asarray(v) for k, v in ckpt.flatten(grads).items()}
    return float(loss), flat, (graphdef, state, batch, mesh)


def _assert_same(ref, got, atol=1e-5):
    loss1, g1, _ = ref
    loss_k, gk, _ = got
    np.testing.assert_allclose(loss_k, loss1, rtol=0, atol=atol)
    assert g1.keys() == gk.keys()
    for key in g1:
        np.testing.assert_allclose(gk[key], g1[key], rtol=0, atol=atol, err_msg=key)


MESHES = {"1-device": ((1, 1), 1), "data4-fsdp2": ((4, 2), 8)}


# Every loss with and without the context encoder, and on one device and a sharded mesh: the
# context encoder on the sharded mesh (the harder case) and no context on one device, so each
# loss meets both settings of both factors in 2 cases rather than 4 (half the CI time).
CASES = [(n, True, "data4-fsdp2") for n in LOSS_NAMES] + [
    (n, False, "1-device") for n in LOSS_NAMES
]


@pytest.mark.parametrize(
    ("name", "context", "mesh_name"),
    CASES,
    ids=[f"{n}-{'context' if c else 'no-context'}-{m}" for n, c, m in CASES],
)
def test_exact_accumulation_equals_one_step_on_the_whole_batch(
    tasks, repo_root, name, context, mesh_name
):
    mesh, n_dev = MESHES[mesh_name]
    devices = jax.devices()[:n_dev]
    task = tasks[context]
    ref = _gradients(task, _config(repo_root, name, context, mesh, 1), devices)
    assert any(np.abs(g).max() > 0 for g in ref[1].values())
    _assert_same(ref, _gradients(task, _config(repo_root, name, context, mesh, 4), devices))
    if context:
        gates = [k for k in ref[1] if "gate" in k]
        assert gates and all(np.abs(ref[1][k]).max() > 0 for k in gates)


def test_exact_accumulation_with_8_micro_batches_and_the_update(tasks, repo_root):
    """k = 8 (micro-batches of 4 rows) on 8 devices, and the AdamW-updated parameters."""
    devices = jax.devices()
    task = tasks[True]
    out = {}
    for k in (1, 8):
        cfg = _config(repo_root, "cehnc", True, (4, 2), k)
        _, grads, (graphdef, state, batch, mesh) = _gradients(task, cfg, devices)
        from mzs_jax.train.step import make_optimizer

        tx = make_optimizer(cfg, state["params"], 1)
        step = jax.jit(make_task_step(task, graphdef, tx, cfg))
        new, metrics = step(state, batch)
        out[k] = (float(metrics["loss"]), grads, ckpt.flatten(new["params"]))
    _assert_same(out[1], out[8])
    for key, p in out[1][2].items():
        np.testing.assert_allclose(np.asarray(out[8][2][key]), np.asarray(p), atol=1e-6)


def test_independent_accumulation_is_a_different_objective(tasks, repo_root):
    """The named opt-out: one loss per micro-batch (B/k negatives) is not the whole-batch loss."""
    task = tasks[False]
    devices = jax.devices()[:1]
    exact = _gradients(task, _config(repo_root, "infonce", False, (1, 1), 1), devices)
    indep = _gradients(
        task, _config(repo_root, "infonce", False, (1, 1), 4, "independent"), devices
    )
    # Fewer negatives per anchor: log(B/k) instead of log(B) at chance.
    assert indep[0] < exact[0] - 0.5


def test_bad_accumulation_config_names_the_key(tasks, repo_root):
    task = tasks[False]
    with pytest.raises(ValueError, match="config.accumulation"):
        _gradients(task, _config(repo_root, "infonce", False, (1, 1), 2, "mean"), jax.devices()[:1])


def test_exact_accumulation_keeps_one_micro_batch_of_activations(tasks, repo_root):
    """Compiled temp memory: GradCache over 8 micro-batches needs far less than the whole batch's
    activations (one micro-batch's plus O(B·E) outputs), and the independent form about the same."""
    task = tasks[False]
    devices = jax.devices()[:1]
    temp = {}
    for label, k, mode in (
        ("plain", 1, "exact"),
        ("exact", 8, "exact"),
        ("indep", 8, "independent"),
    ):
        cfg = _config(repo_root, "infonce", False, (1, 1), k, mode)
        cfg.batch_size = 64
        task.config, task.model_config = cfg, clip_model_config(cfg)
        mesh = make_mesh(cfg.mesh, devices)
        task.bind_mesh(mesh)
        graphdef, _, state = init_state(task, cfg, mesh, spe=1)
        batch = next(train_iterator(task.train_dataset(cfg), cfg, 1, 0, 1))
        fn = make_gradient_fn(
            task.loss_fn, graphdef, cfg, embed_fn=task.embed, batch_loss_fn=task.batch_loss
        )
        lowered = jax.jit(fn).lower(state["params"], state["rest"], batch, state["rng"])
        temp[label] = lowered.compile().memory_analysis().temp_size_in_bytes
    assert temp["exact"] < 0.5 * temp["plain"], temp
    assert temp["exact"] < 2 * temp["indep"], temp


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_exact_accumulation_with_remat_equals_one_plain_step(tasks, repo_root, remat):
    """Remat inside exact accumulation (the model merged inside `jax.vjp` per micro-batch): the
    same gradients as one step without remat on the whole batch."""
    devices = jax.devices()
    task = tasks[True]
    ref = _gradients(task, _config(repo_root, "cehnc", True, (4, 2), 1), devices)
    cfg = _config(repo_root, "cehnc", True, (4, 2), 4)
    cfg.model_overrides.remat = remat
    _assert_same(ref, _gradients(task, cfg, devices))
