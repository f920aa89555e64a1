"""Annotation-free training of DPFEM (paper Fig 3) with the shared engine `train.loop.fit`.

Target (our choice; the paper gives none, docs/zeroshot.md §DPFEM): the dense-CRF marginal of the
min–maxed raw saliency as a soft label (BCE), plus flip consistency of the predictions.
"""

from __future__ import annotations

import pathlib

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mzs_jax.models import dpfem as dpfem_lib
from mzs_jax.pipeline import postprocess
from mzs_jax.train import defaults
from mzs_jax.train.step import with_compute_dtype


def default_config() -> ml_collections.ConfigDict:
    """`config.dpfem`: the switch, the architecture, the loss and the engine keys for `fit`."""
    c = defaults.train_config()
    c.enabled = True  # False bypasses DPFEM (ablation)
    c.width = 32
    c.stem_stride = 4
    c.consistency_weight = 1.0
    c.batch_size = 8
    c.num_epochs = 20
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.decay_factor = 1.0  # constant lr
    c.checkpoint.every_steps = 50
    c.checkpoint.async_save = False
    c.log_every_steps = 10
    return c


def crf_target(
    image: np.ndarray, saliency: np.ndarray, crf_cfg: ml_collections.ConfigDict
) -> np.ndarray:
    """Soft self-supervised target `(H, W)`: CRF marginal of the min–maxed saliency."""
    return postprocess.dense_crf(image, postprocess.minmax(saliency), **crf_cfg.to_dict())


class DPFEMTask:
    """`loop.Task` for DPFEM. Examples: dicts of `image (H, W, C)` in [0, 1], `saliency (H, W)`
    in [0, 1] and `target (H, W)` in [0, 1], all float32."""

    def __init__(self, examples: list[dict[str, np.ndarray]], config: ml_collections.ConfigDict):
        if not examples:
            raise ValueError("DPFEM training needs at least one example (no saliency maps given)")
        self.examples = examples
        self.consistency_weight = float(config.consistency_weight)
        self.model_config = dpfem_lib.model_config(
            in_channels=examples[0]["image"].shape[-1],
            width=int(config.width),
            stem_stride=int(config.stem_stride),
        )
        self.train_model_config = with_compute_dtype(self.model_config, config)

    def build_model(self, rngs):
        return dpfem_lib.DPFEM(self.train_model_config, rngs=rngs)

    def train_dataset(self, config) -> grain.MapDataset:
        return grain.MapDataset.source(self.examples)

    def loss_fn(self, model, batch, rng):
        image, sal, target = batch["image"], batch["saliency"], batch["target"]
        # Random horizontal / vertical flips (the same for image, saliency and target).
        kh, kv = jax.random.split(rng)
        b = image.shape[0]
        fh = jax.random.bernoulli(kh, 0.5, (b,))[:, None, None]
        fv = jax.random.bernoulli(kv, 0.5, (b,))[:, None, None]

        def aug(x):
            extra = (None,) * (x.ndim - 3)
            x = jnp.where(fh[(...,) + extra], x[:, :, ::-1], x)
            return jnp.where(fv[(...,) + extra], x[:, ::-1], x)

        image, sal, target = aug(image), aug(sal), aug(target)
        logits = model(image, sal)
        bce = optax.sigmoid_binary_cross_entropy(logits, target).mean()
        flipped = model(image[:, :, ::-1], sal[:, :, ::-1])[:, :, ::-1]
        consistency = jnp.mean((jax.nn.sigmoid(logits) - jax.nn.sigmoid(flipped)) ** 2)
        loss = bce + self.consistency_weight * consistency
        return loss, {"bce": bce, "consistency": consistency}


def train_dpfem(
    examples: list[dict[str, np.ndarray]],
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
) -> dict:
    """Train DPFEM on `examples` with `loop.fit` (Orbax checkpoints in `workdir`, resumable)."""
    from mzs_jax.train.loop import fit

    return fit(
        DPFEMTask(examples, config), config, workdir, name="dpfem", config_key="config.dpfem"
    )


def refine_saliency(
    model, images: np.ndarray, saliency: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """DPFEM-refined saliency `(B, H, W)` in [0, 1] (sigmoid of the logits)."""
    fn = _apply_fn()
    out = [
        np.asarray(
            fn(
                model,
                jnp.asarray(images[i : i + batch_size], jnp.float32),
                jnp.asarray(saliency[i : i + batch_size], jnp.float32),
            )
        )
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out, axis=0)


def _apply_fn():
    from flax import nnx

    return nnx.jit(lambda m, x, s: jax.nn.sigmoid(m(x, s)))
