"""A small NNX regression task for the engine tests (the engine is model-agnostic)."""

from __future__ import annotations

import grain
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mzs_jax.train import checkpoint as ckpt
from mzs_jax.train.defaults import train_config


class ToyNet(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(cfg.d_in, cfg.hidden, rngs=rngs)
        self.l2 = nnx.Linear(cfg.hidden, 1, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)

    def __call__(self, x, rng=None):
        h = self.drop(jnp.tanh(self.l1(x)), rngs=rng)
        return self.l2(h)[:, 0]


ckpt.register_model("toynet", ToyNet)


class ToyTask:
    def __init__(self, n: int = 64, dropout: float = 0.0, hidden: int = 16):
        self.model_config = ml_collections.ConfigDict(
            {"kind": "toynet", "d_in": 8, "hidden": hidden, "dropout": dropout}
        )
        rs = np.random.RandomState(0)
        self.x = rs.randn(n, 8).astype(np.float32)
        self.y = (self.x @ rs.randn(8) + 0.1 * rs.randn(n)).astype(np.float32)

    def build_model(self, rngs):
        return ToyNet(self.model_config, rngs=rngs)

    def loss_fn(self, model, batch, rng):
        pred = model(batch["x"], rng=rng)
        loss = jnp.mean((pred - batch["y"]) ** 2)
        return loss, {"mae": jnp.mean(jnp.abs(pred - batch["y"]))}

    def train_dataset(self, config):
        x, y = self.x, self.y
        return grain.MapDataset.range(len(x)).map(lambda i: {"x": x[i], "y": y[i]})


def toy_config(**kw) -> ml_collections.ConfigDict:
    c = train_config()
    c.batch_size = 16
    c.num_epochs = 2
    c.optimizer.lr = 1e-2
    c.optimizer.weight_decay = 0.0
    c.checkpoint.every_steps = 2
    c.log_every_steps = 1
    c.data.num_threads = 1
    c.data.prefetch = 2
    for k, v in kw.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c
