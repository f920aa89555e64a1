"""Orbax checkpoints for every model of the pipeline (stage 1 CLIP, DPFEM, ResUNet).

A workdir holds `model_config.json` (how to rebuild the model) and `ckpt/<step>/` written by an
Orbax `CheckpointManager`: item `model` (all model variables), and during training `train`
(optimizer state, step, RNG) and `data` (the grain iterator state).
"""

from __future__ import annotations

import importlib
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from . import integrity
from .distributed import barrier

# kind -> "module:callable"; the callable is `Cls(model_config, *, rngs)`.
MODEL_BUILDERS: dict[str, str] = {
    "clip": "mzs_jax.models.clip:CLIP",
    "dpfem": "mzs_jax.models.dpfem:DPFEM",
    "resunet": "mzs_jax.models.resunet:ResUNet",
}
# model_config.name -> kind, for configs without an explicit `kind` field.
NAME_TO_KIND: dict[str, str] = {"biomedclip": "clip", "tiny": "clip"}

MODEL_CONFIG_FILE = "model_config.json"
CKPT_DIR = "ckpt"


def register_model(kind: str, target: str | Callable[..., nnx.Module]) -> None:
    """Add a model kind: `target` is `"module:callable"` or the callable `(cfg, *, rngs)`."""
    MODEL_BUILDERS[kind] = target


def model_kind(model_config: ml_collections.ConfigDict) -> str:
    """`model_config.kind` if present, else looked up from `model_config.name`."""
    kind = model_config.get("kind") or NAME_TO_KIND.get(model_config.get("name", ""))
    if kind is None or kind not in MODEL_BUILDERS:
        raise ValueError(
            f"model config: cannot tell which model to build (kind={model_config.get('kind')!r}, "
            f"name={model_config.get('name')!r}); known kinds: {sorted(MODEL_BUILDERS)}"
        )
    return kind


def build_model(model_config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """Build the model named by `model_config` through the registry."""
    target = MODEL_BUILDERS[model_kind(model_config)]
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module_name), attr)
    return target(model_config, rngs=rngs)


# ---------------------------------------------------------------------------------------------
# Pytrees <-> flat {path: array} dicts. Orbax stores flat dicts with readable keys; PRNG key
# arrays are stored as their raw key data (Orbax cannot write typed keys).


def path_str(keypath) -> str:
    """`('text', 'layers', 0, 'attn', 'value')` -> `"text.layers.0.attn"` (NNX `.value` dropped)."""
    parts = []
    for k in keypath:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", None)))
        if name == "value" and isinstance(k, jax.tree_util.GetAttrKey):
            continue
        parts.append(str(name))
    return ".".join(parts)


def _is_key(x) -> bool:
    return jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def flatten(tree) -> dict[str, Any]:
    """Flat dict of a pytree's leaves by path; PRNG keys replaced by their key data."""
    out = {}
    for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if _is_key(x):
            x = (
                jax.eval_shape(jax.random.key_data, x)
                if isinstance(x, jax.ShapeDtypeStruct)
                else jax.random.key_data(x)
            )
        key = path_str(kp)
        if key in out:
            raise ValueError(f"checkpoint: two leaves share the path {key!r}")
        out[key] = x
    return out


def unflatten(template, flat: dict[str, Any]):
    """Inverse of `flatten`: `template` (concrete or abstract) gives structure and key dtypes."""

    def leaf(kp, t):
        key = path_str(kp)
        if key not in flat:
            raise ValueError(f"checkpoint: missing entry {key!r}")
        x = flat[key]
        return jax.random.wrap_key_data(x) if _is_key(t) else x

    return jax.tree_util.tree_map_with_path(leaf, template)


def abstract_of(tree, sharding: jax.sharding.Sharding | None = None):
    """Orbax restore targets: `flatten(tree)` as ShapeDtypeStructs, on `sharding` or the leaves'."""

    def one(x):
        place = getattr(x, "sharding", None) if sharding is None else sharding
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=place)

    return jax.tree.map(one, flatten(tree))


# ---------------------------------------------------------------------------------------------
# Model config


def write_model_config(workdir: str | pathlib.Path, model_config: ml_collections.ConfigDict):
    path = pathlib.Path(workdir) / MODEL_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(model_config.to_dict(), indent=2, sort_keys=True, default=str))


def read_model_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    path = pathlib.Path(workdir) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no model config: {path} (train or `mzs import` first)")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


# ---------------------------------------------------------------------------------------------
# Checkpoint manager: keep-N plus the best step, verified restore with fallback


class CheckpointMismatchError(ValueError):
    """An intact checkpoint that does not fit the configured model (or holds no training state);
    it is left where it is."""


def make_manager(
    workdir: str | pathlib.Path,
    *,
    max_to_keep: int = 3,
    best_metric: str | None = None,
    best_mode: str = "max",
    async_save: bool = True,
    item_handlers=None,
) -> ocp.CheckpointManager:
    """Orbax manager on `workdir/ckpt` (items `model`, `train`, `data`, `checksums`) keeping the
    `max_to_keep` newest steps plus, with `best_metric`, the best evaluated one (at most
    `max_to_keep + 1` on disk); async saves."""
    directory = (pathlib.Path(workdir) / CKPT_DIR).absolute()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file, not a checkpoint folder: move it away")
    policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
    if best_metric:
        policies.append(
            ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[best_metric],
                reverse=best_mode == "min",
                n=1,
                keep_checkpoints_without_metrics=False,
            )
        )
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        create=True,
    )
    handlers = {
        "model": ocp.StandardCheckpointHandler(),
        "train": ocp.StandardCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
        integrity.CHECKSUM_ITEM: ocp.JsonCheckpointHandler(),
        **(item_handlers or {}),
    }
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def checksummed_save_args(items: dict[str, dict], *, where: str, **extra) -> ocp.args.Composite:
    """Save args for flat `{path: array}` items plus their checksums (refuses NaN/inf)."""
    sums = integrity.checksums(items, where=where)
    return ocp.args.Composite(
        **{name: ocp.args.StandardSave(flat) for name, flat in items.items()},
        **{integrity.CHECKSUM_ITEM: ocp.args.JsonSave(sums)},
        **extra,
    )


def _check_fits(manager, step: int, targets: dict[str, dict], where: str) -> bool:
    """Compare the step's array metadata with the restore targets; returns whether checksums
    are stored. Unreadable metadata = corrupt (raised as is); a different structure raises
    `CheckpointMismatchError`."""
    step_dir = pathlib.Path(manager.directory) / str(step)
    present = {p.name for p in step_dir.iterdir() if p.is_dir()} if step_dir.is_dir() else set()
    missing = sorted(set(targets) - present)
    if missing and "model" in present and present <= {"model", integrity.CHECKSUM_ITEM}:
        raise CheckpointMismatchError(
            f"{where} holds model weights only, no {'/'.join(missing)} state (a workdir written "
            "by `mzs import` or save_model): train into a new --workdir with "
            f"--config.init={step_dir.parent.parent}"
        )
    metadata = manager.item_metadata(step)
    for name, target in targets.items():
        tree = metadata[name] if name in metadata.keys() else None
        if tree is None:
            raise integrity.CorruptCheckpointError(f"{where}: item {name!r} has no metadata")
        stored = dict(tree.tree if hasattr(tree, "tree") else tree)
        problems = [f"missing {k}" for k in sorted(set(target) - set(stored))]
        problems += [f"unexpected {k}" for k in sorted(set(stored) - set(target))]
        problems += [
            f"{k}: stored {tuple(stored[k].shape)} {stored[k].dtype}, model needs "
            f"{tuple(t.shape)} {t.dtype}"
            for k, t in sorted(target.items())
            if k in stored
            and (tuple(stored[k].shape) != tuple(t.shape) or stored[k].dtype != t.dtype)
        ]
        if problems:
            raise CheckpointMismatchError(
                f"{where} does not fit the configured model ({len(problems)} difference(s) in "
                f"{name}: {'; '.join(problems[:4])}). The model config changed since it was "
                "saved: use a new --workdir, or restore the old model config"
            )
    return integrity.CHECKSUM_ITEM in present


def _restore_verified(manager, step, targets, extra_args, where, log):
    has_sums = _check_fits(manager, step, targets, where)
    args = {n: ocp.args.StandardRestore(t) for n, t in targets.items()}
    if has_sums:
        args[integrity.CHECKSUM_ITEM] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**args, **(extra_args or {})))
    if has_sums:
        integrity.verify(
            {n: restored[n] for n in targets}, restored[integrity.CHECKSUM_ITEM], where=where
        )
    else:
        log(f"checkpoint {where} has no checksums (saved by an older version): not verified")
    return restored


def reject_step(manager: ocp.CheckpointManager, step: int, why: str, log) -> None:
    """Move a step that failed verification into `W/ckpt_rejected/` (never deleted), log it."""
    step_dir = pathlib.Path(manager.directory) / str(step)
    target = integrity.REJECTED_DIR
    if jax.process_index() == 0 and step_dir.exists():
        target = integrity.move_aside(step_dir)
    barrier(f"reject-{step}")
    manager.reload()
    log(f"checkpoint {step_dir} is unreadable or corrupt ({why}); moved it to {target} "
        "(kept, not deleted); trying the previous step")  # fmt: skip


def restore_latest_good(
    manager: ocp.CheckpointManager,
    targets: dict[str, dict],
    *,
    extra_args: dict | None = None,
    log: Callable[[str], None] | None = None,
    prefer: int | None = None,
):
    """Restore the newest step (or `prefer` first) that reads back and matches its checksums.

    `targets`: `{item: {path: ShapeDtypeStruct}}` restored and verified; `extra_args`: other
    items' restore args (the grain iterator). A step that fails is moved aside and the previous
    one tried; a step that does not fit the model raises `CheckpointMismatchError`.
    Returns `(step, restored)` or `(None, None)` when no step is left.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    steps = sorted(manager.all_steps(), reverse=True)
    if prefer is not None and prefer in steps:
        steps = [prefer] + [s for s in steps if s != prefer]
    for step in steps:
        where = f"{manager.directory}/{step}"
        try:
            return step, _restore_verified(manager, step, targets, extra_args, where, log)
        except CheckpointMismatchError:
            raise
        except Exception as e:  # noqa: BLE001 - any read/verify failure: this step is unusable
            first_line = (str(e).splitlines() or [""])[0][:300]
            reject_step(manager, step, f"{type(e).__name__}: {first_line}", log)
    return None, None


# ---------------------------------------------------------------------------------------------
# save_model / restore_model: the seam used by `mzs import/export` and later stages


def save_model(
    workdir: str | pathlib.Path,
    model: nnx.Module,
    model_config: ml_collections.ConfigDict,
    step: int = 0,
) -> pathlib.Path:
    """Write `workdir/model_config.json` and the model variables (with checksums) as `step`.

    Raises `integrity.NonFiniteWeightsError` before writing anything if a weight is NaN/inf."""
    model_kind(model_config)  # fail early on a config that could not be rebuilt
    flat = flatten(nnx.state(model))
    where = f"{pathlib.Path(workdir) / CKPT_DIR}/{step}"
    args = checksummed_save_args({"model": flat}, where=where)
    write_model_config(workdir, model_config)
    with make_manager(workdir, async_save=False) as manager:
        manager.save(step, args=args, force=True)
        manager.wait_until_finished()
    return pathlib.Path(workdir) / CKPT_DIR / str(step)


def restore_model(
    workdir: str | pathlib.Path,
    step: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
    log: Callable[[str], None] | None = None,
    kind: str | None = None,
):
    """`(model, model_config)` from `workdir`: `step` if given and intact, else the newest step
    that reads back and matches its checksums (a failing step is moved aside and logged).
    `kind` (e.g. "clip"): the model the caller needs; another kind is one clear error.

    Raises `integrity.NonFiniteWeightsError` for weights holding NaN/inf: no consumer (export,
    segment, retrieval, prediction) runs on them. `sharding` (default: the first local device)
    places every restored array.
    """
    model_config = read_model_config(workdir)
    if kind is not None and model_kind(model_config) != kind:
        raise ValueError(
            f"{workdir} holds a {model_kind(model_config)} model "
            f"({model_config.get('name', '?')!r}), not a {kind}"
        )
    # ShapeDtypeStruct leaves: the shapes without allocating parameters.
    model = nnx.eval_shape(lambda: build_model(model_config, nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(model)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = abstract_of(abstract_state, sharding)
    ckpt_dir = pathlib.Path(workdir) / CKPT_DIR
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
    with make_manager(workdir, async_save=False) as manager:
        found, restored = restore_latest_good(manager, {"model": target}, log=log, prefer=step)
        if found is None:
            raise FileNotFoundError(f"no readable checkpoint in {ckpt_dir}")
    if step is not None and found != step:
        (log or (lambda s: print(s, file=sys.stderr, flush=True)))(
            f"restored step {found} instead of the requested step {step}"
        )
    integrity.require_finite(restored["model"], where=f"{ckpt_dir}/{found}")
    state = unflatten(abstract_state, restored["model"])
    return nnx.merge(graphdef, state), model_config
