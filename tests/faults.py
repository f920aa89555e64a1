"""Checkpoint faults for the tests and `bench/fault_trials.py`: each damages one step in place."""

from __future__ import annotations

import hashlib
import pathlib


def data_file(step_dir: pathlib.Path, item: str = "model") -> pathlib.Path:
    """The largest array data file of an item of a step (OCDBT chunk store)."""
    files = [f for f in (step_dir / item).rglob("*") if f.is_file() and "/d/" in f.as_posix()]
    if not files:
        raise FileNotFoundError(f"{step_dir / item}: no data files")
    return max(files, key=lambda f: f.stat().st_size)


def flip_bytes(step_dir: pathlib.Path, n: int = 8, item: str = "model") -> pathlib.Path:
    """XOR `n` bytes in the middle of the item's largest data file (silent bit rot)."""
    f = data_file(step_dir, item)
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0x5A
    f.write_bytes(bytes(data))
    return f


def truncate(step_dir: pathlib.Path, keep: float = 0.5, item: str = "model") -> pathlib.Path:
    """Cut every file of the item to `keep` of its size (a torn write)."""
    for f in (step_dir / item).rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep)])
    return step_dir / item


def delete_metadata(step_dir: pathlib.Path, item: str = "model") -> pathlib.Path:
    """Remove the item's array metadata file (`_METADATA`)."""
    f = step_dir / item / "_METADATA"
    f.unlink()
    return f


def replace_values(step_dir: pathlib.Path, item: str = "model") -> pathlib.Path:
    """Rewrite the item as a valid Orbax item whose largest array has one element changed:
    data that decodes without error but is not what was saved (silent corruption)."""
    import shutil

    import numpy as np
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        flat = checkpointer.restore(step_dir / item)
        key = max(flat, key=lambda k: np.asarray(flat[k]).size)
        changed = np.array(flat[key])
        changed.reshape(-1)[changed.size // 2] += 1
        flat = {k: np.asarray(v) for k, v in flat.items()} | {key: changed}
        tmp = step_dir.parent / f".{step_dir.name}-{item}-replaced"
        checkpointer.save(tmp, flat)
    shutil.rmtree(step_dir / item)
    tmp.rename(step_dir / item)
    return step_dir / item


def empty_step(step_dir: pathlib.Path) -> pathlib.Path:
    """Leave the step directory with no files at all."""
    for f in sorted(step_dir.rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    return step_dir


CORRUPTIONS = {
    "flipped_bytes": flip_bytes,
    "replaced_values": replace_values,
    "truncated": truncate,
    "deleted_metadata": delete_metadata,
    "empty_step": empty_step,
}


def tree_digest(root: pathlib.Path) -> dict[str, str]:
    """`{relative path: sha256}` of every file under `root` (to prove nothing was lost)."""
    root = pathlib.Path(root)
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*"))
        if f.is_file()
    }
