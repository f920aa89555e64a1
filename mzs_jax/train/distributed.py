"""Multi-host start-up: `jax.distributed.initialize()` from config keys or the environment."""

from __future__ import annotations

import os

import jax

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_CLUSTER_ENV = ("TPU_WORKER_HOSTNAMES", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")


def initialize(dist_config=None) -> bool:
    """Join the JAX cluster; returns True when more than one process takes part.

    Explicit `config.distributed.{coordinator_address,num_processes,process_id}` win over the
    environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`); with neither,
    a TPU pod / SLURM / Open MPI job is auto-detected by JAX, and otherwise this is a no-op. On
    CPU the cross-process collectives use gloo.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    addr = getattr(dist_config, "coordinator_address", "") or os.environ.get(_ENV[0], "")
    num = int(getattr(dist_config, "num_processes", -1))
    pid = int(getattr(dist_config, "process_id", -1))
    num = num if num > 0 else int(os.environ.get(_ENV[1], "-1"))
    pid = pid if pid >= 0 else int(os.environ.get(_ENV[2], "-1"))
    if addr:
        if num < 1 or pid < 0:
            raise ValueError(
                "config.distributed: coordinator_address given without num_processes/process_id "
                "(or JAX_NUM_PROCESSES/JAX_PROCESS_ID)"
            )
        if num == 1:
            return False
        _cpu_collectives()
        jax.distributed.initialize(addr, num_processes=num, process_id=pid)
        return True
    if any(int(os.environ.get(k, "1") or 1) > 1 for k in _CLUSTER_ENV[1:]) or os.environ.get(
        _CLUSTER_ENV[0]
    ):
        jax.distributed.initialize()
        return jax.process_count() > 1
    return False


def barrier(name: str) -> None:
    """Wait for every process (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _cpu_collectives() -> None:
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
