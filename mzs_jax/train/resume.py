"""Resume safety: before a run writes anything into a workdir that holds checkpoints, its model
config and the config keys that fix the data order are compared with the ones saved there.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from .checkpoint import CKPT_DIR, MODEL_CONFIG_FILE

RUN_CONFIG_FILE = "run_config.json"
# Keys whose change makes a resumed run a different experiment: the example order (seed, batch
# size) and the examples themselves (every `data.*` key but the reader's performance knobs).
DATA_ORDER_KEYS = ("seed", "batch_size", "data")
IGNORED_KEYS = ("data.num_threads", "data.prefetch", "allow_config_change")


class ResumeConfigError(ValueError):
    """Resuming a workdir with a model or data-order config that differs from the saved one."""


def _plain(value: Any) -> Any:
    """JSON-normalised value (tuples as lists, ConfigDicts as dicts, unknowns as str)."""
    if isinstance(value, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str))


def flat_items(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """`{"data.path": ..., "optimizer.lr": ...}` of a nested dict."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flat_items(v, key + "."))
        else:
            out[key] = v
    return out


def differences(old: Mapping, new: Mapping, keys: tuple[str, ...] | None = None) -> list[str]:
    """`"key: old -> new"` for every dotted key (under `keys`, if given) that differs."""
    a, b = flat_items(_plain(old)), flat_items(_plain(new))

    def selected(k: str) -> bool:
        if k in IGNORED_KEYS:
            return False
        return keys is None or any(k == p or k.startswith(p + ".") for p in keys)

    out = []
    for k in sorted(set(a) | set(b)):
        before, after = a.get(k, _ABSENT), b.get(k, _ABSENT)
        if selected(k) and before != after:
            out.append(f"{k}: {_show(before)} -> {_show(after)}")
    return out


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def has_checkpoints(workdir: pathlib.Path) -> bool:
    ckpt_dir = workdir / CKPT_DIR
    return ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())


def _read(path: pathlib.Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); restore it or use a new --workdir") from e


def check_resume(
    workdir: str | pathlib.Path,
    model_config: ml_collections.ConfigDict,
    config: ml_collections.ConfigDict,
    log: Callable[[str], None],
) -> None:
    """Raise `ResumeConfigError` listing the keys when `workdir` holds checkpoints of another
    model or data order, unless `config.allow_config_change`; log the other changed keys."""
    workdir = pathlib.Path(workdir)
    if not has_checkpoints(workdir):
        return
    saved_model = _read(workdir / MODEL_CONFIG_FILE)
    saved_run = _read(workdir / RUN_CONFIG_FILE)
    diffs = []
    if saved_model is not None:
        diffs += [f"model {d}" for d in differences(saved_model, model_config)]
    if saved_run is not None:
        diffs += differences(saved_run, config, DATA_ORDER_KEYS)
    allowed = bool(config.get("allow_config_change", False))
    if diffs and not allowed:
        raise ResumeConfigError(
            f"{workdir} holds checkpoints of a run with a different config ({len(diffs)} "
            f"key(s)): {'; '.join(diffs)}. Resuming would mix two experiments: use a new "
            "--workdir, or pass --config.allow_config_change=True to resume anyway"
        )
    if diffs:
        log(f"allow_config_change=True: resuming {workdir} with changed keys: {'; '.join(diffs)}")
    if saved_run is None:
        log(f"{workdir}: no {RUN_CONFIG_FILE} (older workdir): data-order keys not compared")
        return
    other = [d for d in differences(saved_run, config) if d not in diffs]
    if other:
        log(f"resuming {workdir} with changed keys: {'; '.join(other)}")


def write_run_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
    path = pathlib.Path(workdir) / RUN_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(config), indent=2, sort_keys=True))
