"""grain input for the engine: per-epoch shuffle, per-process shard, batch, global arrays."""

from __future__ import annotations

import grain
import jax
import ml_collections
import numpy as np


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    steps = num_examples // batch_size
    if steps == 0:
        raise ValueError(
            f"config.batch_size={batch_size} is larger than the training set ({num_examples})"
        )
    return steps


class _ProcessRows(grain.MapDataset):
    """Rows `[p*local, (p+1)*local)` of every global batch of `parent` (epochs pass through)."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
        super().__init__(parent)
        self._gbs, self._pi, self._local = global_batch, index, global_batch // count
        self._parent_len = len(parent)
        self._len = self._parent_len // count

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, row = divmod(index, self._len)
        b, t = divmod(row, self._local)
        return self._parent[epoch * self._parent_len + b * self._gbs + self._pi * self._local + t]


def train_iterator(
    ds: grain.MapDataset,
    config: ml_collections.ConfigDict,
    num_epochs: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """Checkpointable iterator over this process's batches of `batch_size // process_count`.

    Each epoch is a fresh permutation (`seed + epoch`) truncated to whole global batches, so every
    process yields the same number of batches and the global batch is the same whatever the
    process count: global batch i is rows `[i*B, (i+1)*B)` of the permutation.
    """
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    gbs = int(config.batch_size)
    if gbs % pc:
        raise ValueError(f"config.batch_size={gbs} not divisible by {pc} processes")
    local = gbs // pc
    n = steps_per_epoch(len(ds), gbs) * gbs
    epoch = ds.shuffle(seed=int(config.seed))[:n]
    # Within global batch i, process p takes rows [p*local, (p+1)*local): the global array built
    # by `make_array_from_process_local_data` then has the same row order as on one process.
    epoch = _ProcessRows(epoch, gbs, pi, pc) if pc > 1 else epoch
    it_ds = (
        epoch.batch(local, drop_remainder=True)
        .repeat(num_epochs)
        .to_iter_dataset(
            grain.ReadOptions(
                num_threads=int(config.data.num_threads),
                prefetch_buffer_size=int(config.data.prefetch),
            )
        )
    )
    return iter(it_ds)


def to_global(local_batch: dict, sharding: jax.sharding.NamedSharding) -> dict:
    """Host-local NumPy batch -> global `jax.Array`s sharded over the batch axes."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
