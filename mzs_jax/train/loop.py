"""The one training loop (`fit`) for every model: stage 1 CLIP, DPFEM (stage 2), ResUNet (stage 3).

Mesh -> parameters created sharded -> compiled step (memory printed) -> plain Python loop with
checkpoints (resume by re-running with the same workdir), JSON-lines/TensorBoard logs and
per-epoch evaluation.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mzs_jax.progress import Progress

from . import checkpoint as ckpt
from .input import steps_per_epoch, to_global, train_iterator
from .mesh import batch_sharding, make_mesh, replicated, tree_shardings
from .step import check_compute_dtype, make_optimizer, make_schedule, make_task_step
from .task import Task

__all__ = ["Task", "fit", "NonFiniteLossError"]


class NonFiniteLossError(ValueError):
    """The loss became NaN/inf; the run stopped without writing a checkpoint of that state."""


class _Logger:
    """metrics.jsonl + TensorBoard, written by process 0 only."""

    def __init__(self, workdir: pathlib.Path, enabled: bool):
        self.enabled = enabled
        self.file = self.tb = None
        if enabled:
            workdir.mkdir(parents=True, exist_ok=True)
            self.file = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _num_steps(config, spe: int) -> int:
    return int(config.total_steps) if config.total_steps > 0 else int(config.num_epochs) * spe


def init_state(task: Task, config: ml_collections.ConfigDict, mesh, spe: int):
    """Parameters and optimizer state created directly with their shardings (no host copy)."""
    rules = getattr(task, "sharding_rules", None) or tuple(tuple(r) for r in config.sharding_rules)
    abstract = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(config.seed)))
    graphdef, abs_params, abs_rest = nnx.split(abstract, nnx.Param, ...)
    p_shard = tree_shardings(abs_params, rules, mesh)
    r_shard = jax.tree.map(lambda _: replicated(mesh), abs_rest)

    def init_model():
        model = task.build_model(nnx.Rngs(config.seed))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return params, rest

    init_model = jax.jit(init_model, out_shardings=(p_shard, r_shard))
    params, rest = init_model()
    init_from = getattr(task, "init_from", None)
    if init_from is not None:
        model = nnx.merge(graphdef, params, rest)
        init_from(model)
        _, params, rest = nnx.split(model, nnx.Param, ...)
        params = jax.device_put(params, p_shard)
    tx = make_optimizer(config, abs_params, spe)
    abs_opt = jax.eval_shape(tx.init, abs_params)
    o_shard = tree_shardings(abs_opt, rules, mesh)
    opt = jax.jit(tx.init, out_shardings=o_shard)(params)
    rep = replicated(mesh)
    # Created inside jit so that multi-host runs get global (not host-local) arrays.
    step, rng = jax.jit(
        lambda: (jnp.zeros((), jnp.int32), jax.random.key(config.seed + 1)),
        out_shardings=(rep, rep),
    )()
    state = {"params": params, "rest": rest, "opt": opt, "step": step, "rng": rng}
    return graphdef, tx, state


def _save_args(state, iterator):
    model = {**ckpt.flatten(state["params"]), **ckpt.flatten(state["rest"])}
    train = ckpt.flatten({"opt": state["opt"], "step": state["step"], "rng": state["rng"]})
    return ocp.args.Composite(
        model=ocp.args.StandardSave(model),
        train=ocp.args.StandardSave(train),
        data=grain.checkpoint.CheckpointSave(iterator),
    )


def _restore(manager, state, iterator):
    """Restore into `state` / `iterator` from the newest readable step; drop unreadable ones."""
    model_t = {**ckpt.abstract_of(state["params"]), **ckpt.abstract_of(state["rest"])}
    train_t = ckpt.abstract_of({"opt": state["opt"], "step": state["step"], "rng": state["rng"]})

    def args(_):
        return ocp.args.Composite(
            model=ocp.args.StandardRestore(model_t),
            train=ocp.args.StandardRestore(train_t),
            data=grain.checkpoint.CheckpointRestore(iterator),
        )

    newest = manager.latest_step()
    step, restored = ckpt.restore_latest_good(manager, args, log=_log)
    if step is None:
        if newest is not None:
            raise ValueError(f"no readable checkpoint in {manager.directory}")
        return None, state
    for bad in [s for s in manager.all_steps() if s > step]:
        manager.delete(bad)
    if newest != step:
        _log(f"resuming from step {step} (newer unreadable checkpoints removed)")
    rest = ckpt.unflatten(
        {"opt": state["opt"], "step": state["step"], "rng": state["rng"]}, restored["train"]
    )
    return step, {
        "params": ckpt.unflatten(state["params"], restored["model"]),
        "rest": ckpt.unflatten(state["rest"], restored["model"]),
        **rest,
    }


def fit(
    task: Task,
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    name: str = "train",
) -> dict[str, Any]:
    """Train `task` per `config` (see `defaults.train_config`), resuming from `workdir/ckpt`.

    Returns the last step's metrics (and the last evaluation's) as floats.
    """
    workdir = pathlib.Path(workdir)
    mesh = make_mesh(config.mesh)
    bind = getattr(task, "bind_mesh", None)
    if bind is not None:
        bind(mesh)
    is_main = jax.process_index() == 0
    if is_main:
        ckpt.write_model_config(workdir, task.model_config)

    ds = task.train_dataset(config)
    spe = steps_per_epoch(len(ds), int(config.batch_size))
    total = _num_steps(config, spe)
    num_epochs = math.ceil(total / spe)
    iterator = train_iterator(ds, config, num_epochs)

    graphdef, tx, state = init_state(task, config, mesh, spe)
    cc = config.checkpoint
    manager = ckpt.make_manager(
        workdir,
        max_to_keep=int(cc.keep),
        best_metric=cc.best_metric or None,
        best_mode=cc.best_mode,
        async_save=bool(cc.async_save),
        item_handlers={
            "model": ocp.StandardCheckpointHandler(),
            "train": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        },
    )
    start, state = _restore(manager, state, iterator)
    start = int(start or 0)
    if start:
        _log(f"[{name}] resumed from {manager.directory}/{start}")
    if start >= total:
        _log(f"[{name}] already trained for {total} steps")
        manager.close()
        return {}

    sharding = batch_sharding(mesh)
    step_fn = jax.jit(make_task_step(task, graphdef, tx, config), donate_argnums=0)
    first = to_global(next(iterator), sharding)
    t0 = time.perf_counter()
    lowered = step_fn.lower(state, first)
    check_compute_dtype(lowered, config)
    compiled = lowered.compile()
    _log(
        f"[{name}] compiled in {time.perf_counter() - t0:.1f}s; mesh {dict(mesh.shape)}; "
        f"memory per device: {compiled.memory_analysis()}"
    )

    schedule = make_schedule(config.optimizer, spe)
    logger = _Logger(workdir, is_main)
    progress = Progress(total - start, name, unit="step", enabled=is_main)
    n_cores = jax.device_count()
    last: dict[str, Any] = {}
    batch, t_last = first, time.perf_counter()
    try:
        for step in range(start + 1, total + 1):
            state, metrics = compiled(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not math.isfinite(metrics["loss"]):
                manager.wait_until_finished()
                good = manager.latest_step()
                raise NonFiniteLossError(
                    f"non-finite loss ({metrics['loss']}) at step {step}; stopped without saving. "
                    f"Last good checkpoint: {manager.directory}/{good}. Lower config.optimizer.lr "
                    "or check the inputs."
                )
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            sps = int(config.batch_size) / dt
            metrics.update(
                samples_per_s=sps,
                samples_per_s_per_core=sps / n_cores,
                lr=float(schedule(step - 1)),
                epoch=step / spe,
            )
            logger.write(step, metrics)
            last = metrics
            progress.update(1, loss=metrics["loss"], samples_per_s=sps)
            eval_metrics = None
            end_of_epoch = step % spe == 0 or step == total
            evaluate = getattr(task, "evaluate", None)
            if (
                evaluate is not None
                and end_of_epoch
                and ((step // spe) % max(1, int(config.eval_every_epochs)) == 0 or step == total)
            ):
                model = nnx.merge(graphdef, state["params"], state["rest"])
                eval_metrics = {k: float(v) for k, v in evaluate(model, step // spe).items()}
                logger.write(step, eval_metrics)
                last.update(eval_metrics)
                _log(
                    f"[{name}] epoch {step / spe:.2f} "
                    + " ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items())
                )
            if step % int(cc.every_steps) == 0 or step == total or eval_metrics is not None:
                manager.save(step, args=_save_args(state, iterator), metrics=eval_metrics)
            if step < total:
                batch = to_global(next(iterator), sharding)
        progress.close(loss=last.get("loss", float("nan")))
    finally:
        manager.wait_until_finished()
        manager.close()
        logger.close()
        sys.stdout.flush()
    return last


def final_params(workdir: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Flat `{path: array}` of the model variables in the newest readable checkpoint."""
    model, _ = ckpt.restore_model(workdir)
    return {k: np.asarray(v) for k, v in ckpt.flatten(nnx.state(model)).items()}
