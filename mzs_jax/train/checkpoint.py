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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

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


def abstract_of(tree):
    """ShapeDtypeStructs (with the same shardings) for Orbax restore targets."""

    def one(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

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
# Checkpoint manager with fallback past a corrupted latest step


def make_manager(
    workdir: str | pathlib.Path,
    *,
    max_to_keep: int = 3,
    best_metric: str | None = None,
    best_mode: str = "max",
    async_save: bool = True,
    item_handlers=None,
) -> ocp.CheckpointManager:
    """Orbax manager on `workdir/ckpt`; keep-N, optional best-by-metric, async saves."""
    directory = (pathlib.Path(workdir) / CKPT_DIR).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        best_fn=(lambda m: m[best_metric]) if best_metric else None,
        best_mode=best_mode,
        keep_checkpoints_without_metrics=True,
        create=True,
    )
    return ocp.CheckpointManager(directory, options=options, item_handlers=item_handlers)


def restore_latest_good(
    manager: ocp.CheckpointManager,
    make_args: Callable[[int], Any],
    *,
    log: Callable[[str], None] | None = None,
):
    """Restore the newest step that reads back; a corrupted newer step is reported and skipped.

    Returns `(step, restored)` or `(None, None)` when there is no checkpoint at all.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            return step, manager.restore(step, args=make_args(step))
        except Exception as e:  # noqa: BLE001 - any read failure means this step is unusable
            log(
                f"checkpoint {manager.directory}/{step} is unreadable "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); trying the previous one"
            )
    return None, None


# ---------------------------------------------------------------------------------------------
# save_model / restore_model: the seam used by `mzs import/export` and later stages


def save_model(
    workdir: str | pathlib.Path,
    model: nnx.Module,
    model_config: ml_collections.ConfigDict,
    step: int = 0,
) -> pathlib.Path:
    """Write `workdir/model_config.json` and the model variables as checkpoint `step`."""
    model_kind(model_config)  # fail early on a config that could not be rebuilt
    write_model_config(workdir, model_config)
    with make_manager(workdir, async_save=False) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(model=ocp.args.StandardSave(flatten(nnx.state(model)))),
            force=True,
        )
        manager.wait_until_finished()
    return pathlib.Path(workdir) / CKPT_DIR / str(step)


def abstract_model(model_config: ml_collections.ConfigDict, seed: int = 0) -> nnx.Module:
    """The model with `ShapeDtypeStruct` leaves: shapes without allocating parameters."""
    return nnx.eval_shape(lambda: build_model(model_config, nnx.Rngs(seed)))


def restore_model(
    workdir: str | pathlib.Path,
    step: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
):
    """`(model, model_config)` from `workdir` (latest readable step unless `step` is given).

    `sharding` (default: the first local device) places every restored array.
    """
    model_config = read_model_config(workdir)
    model = abstract_model(model_config)
    graphdef, abstract_state = nnx.split(model)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), flatten(abstract_state)
    )
    args = lambda _: ocp.args.Composite(model=ocp.args.StandardRestore(target))
    ckpt_dir = pathlib.Path(workdir) / CKPT_DIR
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
    with make_manager(workdir, async_save=False) as manager:
        if step is None:
            found, restored = restore_latest_good(manager, args)
            if found is None:
                raise FileNotFoundError(f"no readable checkpoint in {ckpt_dir}")
        else:
            restored = manager.restore(step, args=args(step))
    state = unflatten(abstract_state, restored["model"])
    return nnx.merge(graphdef, state), model_config
