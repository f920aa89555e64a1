"""Checkpoint integrity: per-array fingerprints computed on device, finiteness checks, and moving
a step that fails verification aside (renamed into `W/ckpt_rejected/`, never deleted).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

CHECKSUM_ITEM = "checksums"
REJECTED_DIR = "ckpt_rejected"
FINGERPRINT = "sum32x2-v1"  # the name of the hash below, stored with the checksums


class CorruptCheckpointError(ValueError):
    """A checkpoint step whose arrays do not match the checksums saved with them."""


class NonFiniteWeightsError(ValueError):
    """Weights holding NaN or inf: refused by every save and by every consumer."""


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser (an invertible bit mixer)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _as_uint32(x: jax.Array) -> jax.Array:
    """The bits of `x` as uint32 (8/16-bit types widened; 64-bit types are not used, x64 is off)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size in (1, 2):
        unsigned = jnp.uint8 if size == 1 else jnp.uint16
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    raise TypeError(f"no fingerprint for dtype {x.dtype}")


def _fingerprint(x: jax.Array) -> jax.Array:
    """Two uint32 sums over the array: `Σ bits·(2i+1)` and `Σ fmix(bits ⊕ fmix(i))` (mod 2³²),
    with `i` the flat index built from per-axis iotas (no reshape, so sharded arrays stay put).
    Any change of one element changes both sums; integer sums are exact in any order."""
    u = _as_uint32(x)
    index = jnp.zeros(u.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(u.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, u.shape, axis) * jnp.uint32(stride)
        stride = (stride * u.shape[axis]) % (1 << 32)
    h1 = jnp.sum(u * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
    h2 = jnp.sum(_fmix32(u ^ _fmix32(index + jnp.uint32(0x9E3779B9))), dtype=jnp.uint32)
    return jnp.stack([h1, h2])


def _finite(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.all(jnp.isfinite(x))
    return jnp.asarray(True)


@jax.jit
def _digest(flat: dict[str, jax.Array]) -> dict[str, tuple[jax.Array, jax.Array]]:
    return {k: (_fingerprint(v), _finite(v)) for k, v in flat.items()}


@jax.jit
def finite_flag(tree) -> jax.Array:
    """Device scalar: every float leaf of `tree` is finite (one fused reduction)."""
    leaves = [_finite(x) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def all_finite(tree) -> bool:
    """Whether every float leaf of `tree` is finite (one fused reduction on device)."""
    return bool(jax.device_get(finite_flag(tree)))


def digest(flat: Mapping[str, jax.Array]) -> tuple[dict[str, str], list[str]]:
    """`({key: 16 hex digits}, [keys holding NaN/inf])` of a flat `{path: array}` dict."""
    out = jax.device_get(_digest(dict(flat)))
    hashes = {k: "".join(f"{int(h):08x}" for h in np.asarray(fp)) for k, (fp, _) in out.items()}
    return hashes, sorted(k for k, (_, ok) in out.items() if not bool(ok))


def checksums(items: Mapping[str, Mapping[str, jax.Array]], *, where: str) -> dict:
    """The JSON saved beside a step: fingerprints per item and key. Raises
    `NonFiniteWeightsError` naming the keys when any float array is not finite, so no
    checkpoint of non-finite weights is ever written."""
    out: dict = {"fingerprint": FINGERPRINT, "items": {}}
    for name, flat in items.items():
        hashes, bad = digest(flat)
        if bad:
            raise NonFiniteWeightsError(
                f"{where}: refusing to save non-finite values (NaN/inf) in {name} {_first(bad)}"
            )
        out["items"][name] = hashes
    return out


def verify(restored: Mapping[str, Mapping[str, jax.Array]], saved: dict, *, where: str) -> None:
    """Raise `CorruptCheckpointError` naming the arrays whose fingerprint differs from `saved`."""
    if saved.get("fingerprint") != FINGERPRINT:
        raise CorruptCheckpointError(
            f"{where}: unknown checksum format {saved.get('fingerprint')!r}"
        )
    for name, flat in restored.items():
        expected = saved["items"].get(name)
        if expected is None:
            raise CorruptCheckpointError(f"{where}: no checksums for item {name!r}")
        hashes, _ = digest(flat)
        if set(hashes) != set(expected):
            raise CorruptCheckpointError(f"{where}: {name} keys differ from its checksums")
        bad = sorted(k for k in hashes if hashes[k] != expected[k])
        if bad:
            raise CorruptCheckpointError(
                f"{where}: {len(bad)} array(s) of {name} differ from the checksums saved with "
                f"them: {_first(bad)}"
            )


def require_finite(flat: Mapping[str, jax.Array], *, where: str) -> None:
    """Raise `NonFiniteWeightsError` naming the keys of `flat` that hold NaN/inf."""
    _, bad = digest(flat)
    if bad:
        raise NonFiniteWeightsError(
            f"{where}: the weights hold NaN/inf in {_first(bad)}; refusing to use them"
        )


def _first(keys: list[str], n: int = 5) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def move_aside(step_dir: pathlib.Path) -> pathlib.Path:
    """Rename `W/ckpt/<step>` to `W/ckpt_rejected/<step>` (`<step>.1`, ... if taken)."""
    step_dir = pathlib.Path(step_dir)
    target_dir = step_dir.parent.parent / REJECTED_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    target, k = target_dir / step_dir.name, 0
    while target.exists():
        k += 1
        target = target_dir / f"{step_dir.name}.{k}"
    step_dir.rename(target)
    return target
