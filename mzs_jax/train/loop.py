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
from flax import nnx

from mzs_jax.progress import Progress

from . import checkpoint as ckpt
from . import integrity, resume
from .input import steps_per_epoch, to_global, train_iterator
from .integrity import REJECTED_DIR
from .mesh import batch_sharding, make_mesh, replicated, tree_shardings
from .step import check_compute_dtype, make_optimizer, make_schedule, make_task_step
from .task import Task

__all__ = ["Task", "fit", "NonFiniteLossError", "CheckpointWriteError"]


class NonFiniteLossError(ValueError):
    """The loss became NaN/inf; the run stopped without writing a checkpoint of that state."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, unwritable path); earlier steps are kept."""


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
        try:
            self.file.write(json.dumps({"step": step, **metrics}) + "\n")
            self.file.flush()
        except OSError as e:
            raise OSError(e.errno, f"cannot write {self.file.name}: {e.strerror}") from e
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


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


_TRAIN_KEYS = ("opt", "step", "rng")  # the state saved as the checkpoint item `train`


def _items(state, leaves=ckpt.flatten) -> dict[str, dict]:
    """`state` as the flat checkpoint items `model` (params and rest) and `train`."""
    model = {**leaves(state["params"]), **leaves(state["rest"])}
    return {"model": model, "train": leaves({k: state[k] for k in _TRAIN_KEYS})}


def _save_args(state, iterator, where: str):
    data = grain.checkpoint.CheckpointSave(iterator)
    return ckpt.checksummed_save_args(_items(state), where=where, data=data)


def _restore(manager, state, iterator):
    """Restore into `state` / `iterator` from the newest step that reads back and matches its
    checksums; a failing step is moved aside (`W/ckpt_rejected/`) and the previous one used."""
    targets = _items(state, ckpt.abstract_of)
    newest = manager.latest_step()
    step, restored = ckpt.restore_latest_good(
        manager,
        targets,
        extra_args={"data": grain.checkpoint.CheckpointRestore(iterator)},
        log=_log,
    )
    if step is None:
        if newest is not None:
            raise ValueError(
                f"no intact checkpoint left in {manager.directory}: every step failed "
                f"verification and was moved to {manager.directory.parent / REJECTED_DIR}. "
                "Rerun to train from scratch, or move a step back by hand"
            )
        return None, state
    if newest != step:
        _log(f"resuming from step {step} (newer steps failed verification, moved aside)")
    integrity.require_finite(restored["model"], where=f"{manager.directory}/{step}")
    train = ckpt.unflatten({k: state[k] for k in _TRAIN_KEYS}, restored["train"])
    return step, {
        "params": ckpt.unflatten(state["params"], restored["model"]),
        "rest": ckpt.unflatten(state["rest"], restored["model"]),
        **train,
    }


COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def validate_config(config: ml_collections.ConfigDict, config_key: str = "config") -> None:
    """One clear error naming the key (under `config_key`) for engine values that cannot run."""

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ValueError(f"{config_key}.{key}={_get(config, key)!r}: {why}")

    for key in ("batch_size", "grad_accum", "checkpoint.every_steps", "checkpoint.keep"):
        value = _get(config, key)
        need(isinstance(value, int) and value >= 1, key, "must be an integer >= 1")
    need(config.batch_size % config.grad_accum == 0, "grad_accum", "must divide batch_size")
    need(config.compute_dtype in COMPUTE_DTYPES, "compute_dtype", f"expected {COMPUTE_DTYPES}")
    need(config.checkpoint.best_mode in ("max", "min"), "checkpoint.best_mode", "max | min")
    epochs_ok = int(config.total_steps) > 0 or int(config.num_epochs) >= 1
    need(epochs_ok, "num_epochs", "must be >= 1 (or set total_steps > 0)")
    need(int(config.eval_every_epochs) >= 1, "eval_every_epochs", "must be >= 1")
    lr = config.optimizer.lr
    lr_ok = isinstance(lr, int | float) and math.isfinite(lr) and lr >= 0
    need(lr_ok, "optimizer.lr", "must be a finite number >= 0")


def _check_batch_fits_mesh(config, mesh, config_key: str) -> None:
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = int(config.batch_size) // int(config.grad_accum)
    if micro % rows:
        raise ValueError(
            f"{config_key}.batch_size={config.batch_size} (micro-batch {micro} with grad_accum="
            f"{config.grad_accum}) does not split over the {rows} devices of the batch axes "
            f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}): use a multiple of "
            f"{rows * int(config.grad_accum)}, or a smaller --{config_key}.mesh.data"
        )


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _non_finite_error(manager, step: int, loss: float) -> NonFiniteLossError:
    """The error for a step whose loss or updated parameters are not finite."""
    manager.wait_until_finished()
    good = manager.latest_step()
    what = f"loss ({loss}) at" if not math.isfinite(loss) else "parameters (NaN/inf) after"
    advice = (
        f"The last checkpoint, {manager.directory}/{good}, holds the finite weights of step "
        f"{good} (checked when saved); rerunning resumes there and repeats the same steps, so "
        "change something first: lower config.optimizer.lr (optimizer keys may change on "
        "resume) or check the inputs."
        if good is not None
        else "No checkpoint was written: lower config.optimizer.lr or check the inputs."
    )
    return NonFiniteLossError(
        f"non-finite {what} step {step}; stopped without saving this step. {advice}"
    )


def _make_manager(workdir: pathlib.Path, cc: ml_collections.ConfigDict):
    return ckpt.make_manager(
        workdir,
        max_to_keep=int(cc.keep),
        best_metric=cc.best_metric or None,
        best_mode=cc.best_mode,
        async_save=bool(cc.async_save),
    )


def fit(
    task: Task,
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    name: str = "train",
    config_key: str = "config",
) -> dict[str, Any]:
    """Train `task` per `config` (see `defaults.train_config`), resuming from `workdir/ckpt`.

    Before anything is written, the config is checked (`validate_config`; errors name keys
    under `config_key`, e.g. `config.dpfem` for the DPFEM of stage 2) and, when `workdir`
    holds checkpoints, compared with the saved one (`resume.check_resume`).
    Returns the last step's metrics (and the last evaluation's) as floats.
    """
    workdir = pathlib.Path(workdir)
    validate_config(config, config_key)
    check = getattr(task, "check_config", None)  # a task's own cross-key checks
    if check is not None:
        check(config)
    resume.check_resume(workdir, task.model_config, config, _log)
    mesh = make_mesh(config.mesh)
    _check_batch_fits_mesh(config, mesh, config_key)
    bind = getattr(task, "bind_mesh", None)
    if bind is not None:
        bind(mesh)
    ds = task.train_dataset(config)
    spe = steps_per_epoch(len(ds), int(config.batch_size))
    total = int(config.total_steps) if config.total_steps > 0 else int(config.num_epochs) * spe
    iterator = train_iterator(ds, config, math.ceil(total / spe))
    graphdef, tx, state = init_state(task, config, mesh, spe)
    manager = _make_manager(workdir, config.checkpoint)
    try:
        start, state = _restore(manager, state, iterator)
    except BaseException:
        manager.close()
        raise
    if jax.process_index() == 0:
        ckpt.write_model_config(workdir, task.model_config)
        resume.write_run_config(workdir, config)
    start = int(start or 0)
    if start:
        _log(f"[{name}] resumed from {manager.directory}/{start}")
    if start >= total:
        _log(f"[{name}] already trained for {total} steps")
        manager.close()
        return {}
    loop = _Loop(task, config, workdir, name, manager, graphdef, spe, total)
    return loop.run(state, iterator, make_task_step(task, graphdef, tx, config), mesh, start)


class _Loop:
    """The step loop of `fit`: compiled step, per-step finiteness check, evaluation, saves."""

    def __init__(self, task, config, workdir, name, manager, graphdef, spe: int, total: int):
        self.task, self.config, self.workdir, self.name = task, config, workdir, name
        self.manager, self.graphdef, self.spe, self.total = manager, graphdef, spe, total
        self.evaluate_fn = getattr(task, "evaluate", None)

    def run(self, state, iterator, step_fn, mesh, start: int) -> dict[str, Any]:
        sharding = batch_sharding(mesh)
        prepare = getattr(self.task, "prepare_batch", None) or (lambda b: b)
        options = getattr(self.task, "compiler_options", None)  # e.g. remat on XLA:CPU
        jitted = jax.jit(step_fn, donate_argnums=0, compiler_options=options or None)
        self.mesh, self.step_fn, self.executables = mesh, jitted, {}
        first = to_global(prepare(next(iterator)), sharding)
        is_main = jax.process_index() == 0
        self.schedule = make_schedule(self.config.optimizer, self.spe)
        logger = _Logger(self.workdir, is_main)
        progress = Progress(self.total - start, self.name, unit="step", enabled=is_main)
        last: dict[str, Any] = {}
        batch, self.t_last = first, time.perf_counter()
        try:
            for step in range(start + 1, self.total + 1):
                state, metrics = self._compiled(state, batch)(state, batch)
                # The updated parameters are checked on the step that made them, before any save.
                metrics, params_ok = jax.device_get(
                    (metrics, integrity.finite_flag(state["params"]))
                )
                metrics = {k: float(v) for k, v in metrics.items()}
                if not (math.isfinite(metrics["loss"]) and bool(params_ok)):
                    raise _non_finite_error(self.manager, step, metrics["loss"])
                last = self._log_step(step, metrics, logger)
                progress.update(1, loss=metrics["loss"], samples_per_s=metrics["samples_per_s"])
                eval_metrics = self._maybe_evaluate(step, state, logger)
                if eval_metrics is not None:
                    last.update(eval_metrics)
                self._maybe_save(step, state, iterator, eval_metrics)
                if step < self.total:
                    batch = to_global(prepare(next(iterator)), sharding)
            progress.close(loss=last.get("loss", float("nan")))
            try:
                self.manager.wait_until_finished()
            except Exception as e:  # noqa: BLE001 - any write failure, reported with the path
                raise self._write_error(self.total, e) from e
        finally:
            failing = sys.exc_info()[0] is not None
            closers = [self.manager.wait_until_finished] if failing else []
            for close in [*closers, self.manager.close, logger.close, sys.stdout.flush]:
                try:
                    close()
                except Exception:  # noqa: BLE001 - while failing, the error in flight is reported
                    if not failing:
                        raise
        return last

    def _compiled(self, state, batch):
        """The step compiled for this batch's shapes: one executable per text-length bucket
        (`config.data.text_buckets`), one in all without buckets."""
        leaves = jax.tree_util.tree_leaves_with_path(batch)
        key = tuple((jax.tree_util.keystr(path), leaf.shape) for path, leaf in leaves)
        if key not in self.executables:
            t0 = time.perf_counter()
            lowered = self.step_fn.lower(state, batch)
            check_compute_dtype(lowered, self.config)
            compiled = lowered.compile()
            shapes = "" if not self.executables else f" for batch shapes {dict(key)}"
            _log(
                f"[{self.name}] compiled{shapes} in {time.perf_counter() - t0:.1f}s; mesh "
                f"{dict(self.mesh.shape)}; memory per device: {compiled.memory_analysis()}"
            )
            self.executables[key] = compiled
        return self.executables[key]

    def _write_error(self, step: int, e: BaseException) -> CheckpointWriteError:
        try:
            self.manager.reload()
        except Exception:  # noqa: BLE001, S110 - the listing below is best effort
            pass
        done = [s for s in self.manager.all_steps() if s <= step]
        return CheckpointWriteError(
            f"could not write a checkpoint in {self.manager.directory} (near step {step}): "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}. The steps "
            f"already saved ({', '.join(map(str, sorted(done))) or 'none'}) are intact: free "
            "space or fix the path, then rerun to resume from the newest one"
        )

    def _log_step(self, step: int, metrics: dict, logger: _Logger) -> dict:
        now = time.perf_counter()
        dt, self.t_last = now - self.t_last, now
        sps = int(self.config.batch_size) / dt
        metrics.update(
            samples_per_s=sps,
            samples_per_s_per_core=sps / jax.device_count(),
            lr=float(self.schedule(step - 1)),
            epoch=step / self.spe,
        )
        logger.write(step, metrics)
        return dict(metrics)

    def _maybe_evaluate(self, step: int, state, logger: _Logger) -> dict | None:
        spe, every = self.spe, max(1, int(self.config.eval_every_epochs))
        end_of_epoch = step % spe == 0 or step == self.total
        if self.evaluate_fn is None or not end_of_epoch:
            return None
        if (step // spe) % every != 0 and step != self.total:
            return None
        model = nnx.merge(self.graphdef, state["params"], state["rest"])
        out = {k: float(v) for k, v in self.evaluate_fn(model, step // spe).items()}
        if not out:  # nothing held out (e.g. config.data.val_fraction = 0)
            return None
        best = self.config.checkpoint.best_metric
        if best and best not in out:
            raise ValueError(
                f"config.checkpoint.best_metric={best!r} is not among the evaluation's metrics "
                f"{sorted(out)}"
            )
        logger.write(step, out)
        _log(
            f"[{self.name}] epoch {step / spe:.2f} "
            + " ".join(f"{k}={v:.4f}" for k, v in out.items())
        )
        return out

    def _maybe_save(self, step: int, state, iterator, eval_metrics) -> None:
        every = int(self.config.checkpoint.every_steps)
        if step % every == 0 or step == self.total or eval_metrics is not None:
            args = _save_args(state, iterator, f"{self.manager.directory}/{step}")
            try:
                self.manager.save(step, args=args, metrics=eval_metrics)
            except Exception as e:  # noqa: BLE001 - a failed (previous async) write, with the path
                raise self._write_error(step, e) from e


def final_params(workdir: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Flat `{path: array}` of the model variables in the newest readable checkpoint."""
    model, _ = ckpt.restore_model(workdir)
    return {k: np.asarray(v) for k, v in ckpt.flatten(nnx.state(model)).items()}
