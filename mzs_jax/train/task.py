"""The `Task` protocol: what a model brings to the one training loop (`loop.fit`).

Stage 1 CLIP (`clip_task.py`), DPFEM (stage 2) and ResUNet (stage 3) each implement it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import grain
import jax
import ml_collections
from flax import nnx


@runtime_checkable
class Task(Protocol):
    """One training problem for `mzs_jax.train.loop.fit(task, config, workdir)`.

    Required:

    - `model_config: ConfigDict` — written to `workdir/model_config.json`; it must let
      `checkpoint.build_model` rebuild the model (a `kind` field, or a `name` known to
      `checkpoint.NAME_TO_KIND`; register new kinds with `checkpoint.register_model`).
    - `build_model(rngs: nnx.Rngs) -> nnx.Module` — called inside `nnx.eval_shape` and inside a
      `jax.jit` with `out_shardings`, so it must be traceable (no host I/O, no numpy on params).
      Pretrained weights are loaded by the task in `init_from(model)` (optional, below), not here.
    - `loss_fn(model, batch, rng) -> (loss, metrics)` — pure; runs under `jax.jit` on the
      **global** batch: a dict of arrays whose leading axis is the global (micro-)batch, sharded
      over the mesh axes `("data", "fsdp")`. `rng` is a fresh `jax.Array` key per step and
      micro-batch. `loss` is a float32 scalar (mean over the batch); `metrics` a flat dict of
      scalars (logged as-is, averaged over micro-batches). The model is in training mode.
    - `train_dataset(config) -> grain.MapDataset` — the whole training set as random-access
      examples, each a dict of fixed-shape NumPy arrays (already decoded, resized, normalised,
      tokenised: everything per example). It stays on the host; the engine shuffles it per epoch
      (`config.seed`), takes this process's slice `[process_index::process_count]`, batches it
      to `config.batch_size // process_count`, checkpoints the iterator state and assembles the
      global arrays with `jax.make_array_from_process_local_data`. Strings must be dropped
      before (arrays only).

    Optional (looked up with `getattr`):

    - `bind_mesh(mesh: jax.sharding.Mesh) -> None` — called once before anything is built, e.g.
      to create a cross-device loss with `mzs_jax.losses.make_global_loss(name, mesh)`.
    - `init_from(model) -> None` — load pretrained weights into the freshly built (sharded)
      model on a fresh start; not called when resuming from a checkpoint.
    - `evaluate(model, epoch: int) -> dict[str, float]` — validation after each epoch, called
      on every process (it may use collectives); process 0 logs the result. A key named by
      `config.checkpoint.best_metric` selects the best checkpoint.
    - `sharding_rules: list[tuple[str, tuple]]` — regex over parameter paths
      (`"visual.blocks.3.attn.qkv.kernel"`) -> PartitionSpec entries; overrides
      `config.sharding_rules`.
    """

    model_config: ml_collections.ConfigDict

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

    def loss_fn(
        self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, dict[str, Any]]: ...

    def train_dataset(self, config: ml_collections.ConfigDict) -> grain.MapDataset: ...
