"""Hard-negative loss benchmark: the shipped phantom CLIP fine-tuned with every registered loss
(`losses.LOSSES`) over several seeds on `phantom-hard` captions; retrieval within 64-pair blocks.
"""

from __future__ import annotations

import pathlib
import time

import jax
import ml_collections
import numpy as np

from mzs_jax.data.phantom_hard import BLOCK, one_attribute_pairs
from mzs_jax.pipeline import retrieval


def default_config(quick: bool = False) -> ml_collections.ConfigDict:
    """Benchmark sizes and the fine-tuning recipe (one recipe for every loss)."""
    c = ml_collections.ConfigDict()
    c.losses = ()  # () = every loss in mzs_jax.losses.LOSSES, in registry order
    c.seeds = (0, 1, 2) if quick else (0, 1, 2, 3, 4)  # training seeds (batch order)
    c.train_blocks = 8 if quick else 24  # 64 pairs per block, one of every attribute combination
    c.val_blocks = 4 if quick else 8
    c.data_seed = 0  # generation and split of phantom-hard (blocks are split, not pairs)
    c.steps = 80 if quick else 200
    c.batch_size = 32  # a training batch is part of one block: no duplicate captions
    c.lr = 1e-3
    c.warmup_steps = 20
    c.decay_every_epochs = 1000.0  # constant after warm-up
    c.tie_seed = 0  # tie-breaking draws of the McNemar hits
    return c


def _check(cfg) -> None:
    if BLOCK % int(cfg.batch_size):
        raise ValueError(f"loss_quality.batch_size={cfg.batch_size} must divide {BLOCK}")
    for key in ("train_blocks", "val_blocks", "steps"):
        if int(cfg[key]) < 1:
            raise ValueError(f"loss_quality.{key}={cfg[key]} must be >= 1")
    if not cfg.seeds:
        raise ValueError("loss_quality.seeds is empty")


def loss_names(cfg) -> tuple[str, ...]:
    from mzs_jax import losses

    names = tuple(cfg.losses) or tuple(losses.LOSSES)
    unknown = [n for n in names if n not in losses.LOSSES]
    if unknown:
        raise ValueError(f"loss_quality.losses: {unknown} not in {sorted(losses.LOSSES)}")
    return names


def train_config(cfg, loss: str, init: pathlib.Path, tokenizer: pathlib.Path):
    """The `mzs train-clip` config of one fine-tuning run (dense loss on one device)."""
    from mzs_jax.train.defaults import clip_config

    c = clip_config(loss)
    c.model = "tiny"
    c.init = str(init)
    n_blocks = int(cfg.train_blocks) + int(cfg.val_blocks)
    c.data.path = f"phantom-hard:{n_blocks * BLOCK}"
    c.data.tokenizer = str(tokenizer)
    c.data.split_seed = int(cfg.data_seed)
    c.data.val_fraction = int(cfg.val_blocks) / n_blocks
    c.batch_size = int(cfg.batch_size)
    c.total_steps = int(cfg.steps)
    c.optimizer.lr = float(cfg.lr)
    c.optimizer.weight_decay = 0.0
    c.optimizer.warmup_steps = int(cfg.warmup_steps)
    c.optimizer.decay_every_epochs = float(cfg.decay_every_epochs)
    c.mesh.data, c.mesh.fsdp = 1, 1
    return c


def block_batches(blocks: np.ndarray, batch: int, steps: int, seed: int) -> list[np.ndarray]:
    """`steps` batches of row indices: each epoch shuffles the blocks and the pairs inside each
    block, then cuts every block into `64 / batch` batches (distinct attribute combinations)."""
    rng = np.random.default_rng([seed, 7])
    ids = np.unique(blocks)
    out: list[np.ndarray] = []
    while len(out) < steps:
        for b in rng.permutation(ids):
            rows = rng.permutation(np.nonzero(blocks == b)[0])
            out.extend(rows[i : i + batch] for i in range(0, len(rows) - batch + 1, batch))
    return out[:steps]


def _arrays(examples) -> dict[str, np.ndarray]:
    rows = [examples[i] for i in range(len(examples))]
    return {k: np.stack([r[k] for r in rows]) for k in ("image", "input_ids", "attention_mask")}


class Runner:
    """Holds the data (generated once) and fine-tunes the pre-trained model with one loss for
    each seed, through the stage 1 task (`ClipTask`: model, `init_from`, loss wiring) and the
    engine's `loop.init_state` + `step.make_train_step` (no checkpoints are written)."""

    def __init__(self, cfg, init: pathlib.Path, tokenizer: pathlib.Path, workdir: pathlib.Path):
        from mzs_jax.train.clip_task import ClipTask, clip_examples

        _check(cfg)
        self.cfg, self.init, self.tokenizer, self.workdir = cfg, init, tokenizer, workdir
        task = ClipTask(train_config(cfg, "infonce", init, tokenizer), workdir / "data")
        self.train = _arrays(clip_examples(task.train_src, task.tokenizer, task.model_config))
        self.train_blocks = np.array([s["block"] for s in task.train_src])
        self.val = list(clip_examples(task.val_src, task.tokenizer, task.model_config))
        val_blocks = np.array([s["block"] for s in task.val_src])
        self.chunks = [np.nonzero(val_blocks == b)[0] for b in np.unique(val_blocks)]
        self.one_attribute_pairs = sum(
            one_attribute_pairs([task.val_src[i] for i in c]) for c in self.chunks
        )

    def score(self, model, seed: int) -> dict:
        """Per-query expected hits (`scores`) and seeded tie-broken bool hits (`hits`) of
        `model` on the held-out blocks, each block one retrieval batch."""
        img, txt = retrieval.embed(model, self.val)
        return {
            "scores": retrieval.query_scores(img, txt, chunks=self.chunks),
            "hits": retrieval.query_hits(
                img, txt, chunks=self.chunks, seed=seed, tie_seed=int(self.cfg.tie_seed)
            ),
        }

    def pretrained(self) -> dict:
        from mzs_jax.train import checkpoint as ckpt

        model, _ = ckpt.restore_model(self.init)
        return self.score(model, seed=0)

    def finetune(self, loss: str, log=print) -> dict[int, dict]:
        """`{seed: score dict + final_loss + seconds}` for `loss`. Every run starts from the same
        pre-trained state (built once per loss; `config.seed` is fixed, nothing in a CLIP step is
        random) and a seed only orders the training batches."""
        import jax.numpy as jnp
        from flax import nnx

        from mzs_jax.train.clip_task import ClipTask
        from mzs_jax.train.input import to_global
        from mzs_jax.train.loop import init_state
        from mzs_jax.train.mesh import batch_sharding, make_mesh
        from mzs_jax.train.step import make_train_step

        config = train_config(self.cfg, loss, self.init, self.tokenizer)
        task = ClipTask(config, self.workdir / loss)
        mesh = make_mesh(config.mesh, jax.devices()[:1])
        task.bind_mesh(mesh)
        spe = len(self.train_blocks) // int(config.batch_size)
        graphdef, tx, state0 = init_state(task, config, mesh, spe)
        step_fn = jax.jit(make_train_step(task.loss_fn, graphdef, tx, config), donate_argnums=0)
        sharding, out = batch_sharding(mesh), {}
        for seed in map(int, self.cfg.seeds):
            t0 = time.perf_counter()
            state = jax.tree.map(jnp.copy, state0)  # the step donates its input
            for rows in block_batches(
                self.train_blocks, config.batch_size, config.total_steps, seed
            ):
                batch = to_global({k: v[rows] for k, v in self.train.items()}, sharding)
                state, metrics = step_fn(state, batch)
            final = float(metrics["loss"])
            if not np.isfinite(final):
                raise FloatingPointError(f"loss_quality: {loss} seed {seed}: final loss {final}")
            model = nnx.merge(graphdef, state["params"], state["rest"])
            out[seed] = {**self.score(model, seed), "final_loss": final}
            out[seed]["seconds"] = time.perf_counter() - t0
            top1 = float(np.mean(out[seed]["scores"]["i2t_top1"]))
            log(f"[loss_quality] {loss} seed {seed}: loss {final:.3f} i2t_top1 {top1:.3f} "
                f"({out[seed]['seconds']:.0f} s)")  # fmt: skip
        return out


def run(cfg, workdir: pathlib.Path, log=print) -> dict:
    """The whole benchmark: `{"pretrained": scores, "runs": {loss: {seed: scores}}, ...}`."""
    from mzs_jax.pipeline.phantom_clip import import_shipped, shipped_checkpoint

    folder = shipped_checkpoint()
    if folder is None:
        raise FileNotFoundError(
            "loss_quality needs the shipped phantom CLIP mzs_jax/assets/phantom_clip "
            "(model.safetensors + tokenizer/), the pre-trained starting point"
        )
    t0 = time.perf_counter()
    init = workdir / "pretrained"
    source = import_shipped(folder, init)
    runner = Runner(cfg, init, folder / "tokenizer", workdir)
    result = {
        "pretrained": runner.pretrained(),
        "runs": {},
        "init": source,
        "n_val": len(runner.val),
        "n_train": len(runner.train_blocks),
        "val_one_attribute_pairs": runner.one_attribute_pairs,
    }
    log(f"[loss_quality] data and pre-trained model: {time.perf_counter() - t0:.0f} s")
    for loss in loss_names(cfg):
        result["runs"][loss] = runner.finetune(loss, log)
    result["seconds"] = time.perf_counter() - t0
    return result
