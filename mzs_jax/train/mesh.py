"""Device mesh (`data`, `fsdp`) and regex sharding rules over parameter paths (engine, stage 1-3).

Axis types are `Auto`: the model code carries no sharding annotations, so XLA's propagation
chooses the layouts of activations from the parameter and batch shardings we fix here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .checkpoint import path_str

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch is split over every device


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """`jax.make_mesh((data, fsdp), ("data", "fsdp"))`; one size may be -1 (the rest)."""
    devices = list(devices or jax.devices())
    n = len(devices)
    data, fsdp = int(mesh_config.data), int(mesh_config.fsdp)
    if data == -1 and fsdp == -1:
        raise ValueError("config.mesh: only one of mesh.data / mesh.fsdp may be -1")
    if data == -1:
        data = n // max(fsdp, 1)
    if fsdp == -1:
        fsdp = n // max(data, 1)
    if (
        data < 1
        or fsdp < 1
        or n % (data * fsdp)
        or (data * fsdp != n and -1 in (mesh_config.data, mesh_config.fsdp))
    ):
        raise ValueError(
            f"config.mesh: data={mesh_config.data} x fsdp={mesh_config.fsdp} "
            f"does not fit {n} devices"
        )
    devices = devices[: data * fsdp]  # an explicit smaller mesh uses the first devices
    return jax.make_mesh((data, fsdp), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def spec_for(path: str, shape: tuple[int, ...], rules, mesh: Mesh) -> P:
    """PartitionSpec of the first rule whose regex `re.search`es `path`; replicated if none."""
    for pattern, spec in rules:
        if not re.search(pattern, path):
            continue
        if spec == "fsdp":
            return _fsdp_spec(shape, mesh.shape["fsdp"])
        spec = tuple(spec) if spec is not None else ()
        if len(spec) > len(shape):
            raise ValueError(
                f"sharding rule {pattern!r}: spec {spec} has more dims than {path} {shape}"
            )
        for dim, axis in zip(shape, spec, strict=False):
            size = int(np.prod([mesh.shape[a] for a in np.atleast_1d(axis)])) if axis else 1
            if dim % size:
                raise ValueError(
                    f"sharding rule {pattern!r}: {path} dim {dim} not divisible by {axis}={size}"
                )
        return P(*spec)
    return P()


def _fsdp_spec(shape: tuple[int, ...], size: int) -> P:
    """Shard the largest dimension divisible by the fsdp axis (big_vision's `fsdp` rule)."""
    if size == 1 or not shape:
        return P()
    for i in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[i] % size == 0:
            return P(*["fsdp" if j == i else None for j in range(len(shape))])
    return P()


def tree_shardings(tree, rules, mesh: Mesh):
    """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs) from the rules."""

    def one(kp, x):
        return NamedSharding(mesh, spec_for(path_str(kp), tuple(x.shape), rules, mesh))

    return jax.tree_util.tree_map_with_path(one, tree)
