"""`mzs demo` stage 1 (paper §3.1, Table 1): tiny CLIP pre-training, fine-tuning with each of the
five losses through `train.loop.fit`, ROCO-protocol retrieval, and the open_clip export check.
"""

from __future__ import annotations

import math
import pathlib

import ml_collections
import numpy as np

from mzs_jax.pipeline.phantom_clip import (  # noqa: F401 - the demo's names for them
    SHIPPED,
    import_shipped,
    shipped_checkpoint,
)
from mzs_jax.train.defaults import clip_config


def build_tokenizer(demo_cfg: ml_collections.ConfigDict, out_dir: pathlib.Path) -> pathlib.Path:
    """WordPiece vocabulary trained on the training captions of the demo's caption set."""
    from mzs_jax.data.tokenizer import build_wordpiece_tokenizer
    from mzs_jax.train.clip_task import caption_source

    train = caption_source(
        f"phantom:{demo_cfg.clip.n_captions}", "phantom", "train", seed=demo_cfg.seed
    )
    return build_wordpiece_tokenizer(
        [s["caption"] for s in train], out_dir, vocab_size=int(demo_cfg.clip.vocab_size)
    )


def run_config(
    demo_cfg: ml_collections.ConfigDict,
    loss: str,
    steps: int,
    lr: float,
    tokenizer: pathlib.Path,
    init: pathlib.Path | None,
) -> ml_collections.ConfigDict:
    """A `mzs train-clip` config (train.defaults.clip_config) for one demo training run."""
    c = clip_config(loss)
    c.model = demo_cfg.clip.model
    c.seed = int(demo_cfg.seed)
    c.init = str(init or "")
    c.data.path = f"phantom:{demo_cfg.clip.n_captions}"
    c.data.tokenizer = str(tokenizer)
    c.data.split_seed = int(demo_cfg.seed)
    c.data.num_threads = 1
    c.data.prefetch = 4
    c.batch_size = int(demo_cfg.clip.batch_size)
    c.total_steps = int(steps)
    c.optimizer.lr = float(lr)
    c.optimizer.weight_decay = 0.0
    c.optimizer.warmup_steps = max(1, int(steps) // 10)
    c.optimizer.decay_every_epochs = 1000.0  # constant after warm-up (runs are a few epochs)
    c.checkpoint.every_steps = int(steps)
    c.checkpoint.keep = 1
    c.checkpoint.best_metric = ""
    c.checkpoint.async_save = False
    c.eval_every_epochs = 10**6  # evaluate once, at the last step (fit always does)
    c.eval.batch, c.eval.seeds = int(demo_cfg.clip.eval_batch), int(demo_cfg.clip.eval_seeds)
    c.eval.max_examples = 10**6
    c.log_every_steps = 10
    return c


def train(
    demo_cfg: ml_collections.ConfigDict,
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    name: str,
) -> dict:
    """One `loop.fit` run of the stage 1 task; returns `scores` (below) of the final model on the
    held-out captions (the embeddings of fit's end-of-run evaluation are reused)."""
    from mzs_jax.train.clip_task import ClipTask
    from mzs_jax.train.loop import fit

    task = ClipTask(config, workdir)
    fit(task, config, workdir, name=name)
    return scores(demo_cfg, *task.val_embeddings)


def summary(demo_cfg, img: np.ndarray, txt: np.ndarray) -> dict[str, tuple[float, float]]:
    from mzs_jax.pipeline import retrieval as ret

    return ret.summarize(
        img, txt, batch=int(demo_cfg.clip.eval_batch), seeds=int(demo_cfg.clip.eval_seeds)
    )


def scores(demo_cfg, img: np.ndarray, txt: np.ndarray) -> dict:
    """`{"summary": {metric: (mean, std)} over `eval_seeds` shuffles in batches of `eval_batch`,
    "hits": {metric: bool (M,)} per query of the seed-0 shuffle}` (hits pair up across models
    for McNemar: `significance`)."""
    from mzs_jax.pipeline import retrieval as ret

    hits = ret.query_hits(img, txt, batch=int(demo_cfg.clip.eval_batch), seed=0)
    return {"summary": summary(demo_cfg, img, txt), "hits": hits}


def significance(model: dict, pretrained: dict) -> dict[str, dict]:
    """Per top-1 metric: Δ of the seed-0 per-query hit rate vs the pre-trained model and
    McNemar's p on those paired hits; `changed` = p < 0.05."""
    from mzs_jax.pipeline.stats import mcnemar

    out = {}
    for m in ("i2t_top1", "t2i_top1"):
        a, b = model["hits"][m], pretrained["hits"][m]
        p = mcnemar(a, b).pvalue
        out[m] = {"diff": float(a.mean() - b.mean()), "p": p, "changed": bool(p < 0.05)}
    return out


def hard_benchmark(
    demo_cfg: ml_collections.ConfigDict, workdir: pathlib.Path
) -> tuple[dict, object]:
    """The hard-negative loss benchmark (`pipeline/loss_quality.py`) at the demo's sizes
    (`demo_cfg.clip.hard`, for `demo_cfg.clip.losses`); returns (result, its config)."""
    from mzs_jax.pipeline import loss_quality

    cfg = loss_quality.default_config(quick=True)
    cfg.update(demo_cfg.clip.hard.to_dict())
    cfg.losses = tuple(demo_cfg.clip.losses)
    return loss_quality.run(cfg, workdir), cfg


def retrieval(
    demo_cfg: ml_collections.ConfigDict, workdir: pathlib.Path, tokenizer: pathlib.Path
) -> dict:
    """The same retrieval for a model already in `workdir` (the imported starting point)."""
    from mzs_jax.pipeline import retrieval as ret
    from mzs_jax.train import checkpoint as ckpt
    from mzs_jax.train.clip_task import eval_examples

    model, mc = ckpt.restore_model(workdir)
    ex = eval_examples(
        f"phantom:{demo_cfg.clip.n_captions}",
        "phantom",
        "val",
        mc,
        tokenizer=str(tokenizer),
        seed=int(demo_cfg.seed),
    )
    return scores(demo_cfg, *ret.embed(model, ex))


def export_check(workdir: pathlib.Path, out: pathlib.Path, images: np.ndarray) -> dict:
    """Export the model in `workdir` to open_clip safetensors, load it into the PyTorch
    open_clip model (`torch_bridge.clip.build_open_clip`) and compare image embeddings of
    `images` `(B, S, S, 3)` (CLIP-normalised NHWC). Returns the file, its size and the max
    |JAX − torch| difference."""
    import torch

    from mzs_jax import convert
    from mzs_jax.train import checkpoint as ckpt
    from torch_bridge.clip import build_open_clip

    model, mc = ckpt.restore_model(workdir)
    out.parent.mkdir(parents=True, exist_ok=True)
    convert.save_safetensors(convert.to_open_clip(model), out)
    tmodel = build_open_clip(mc, weights=out)
    with torch.no_grad():
        t_emb = tmodel.encode_image(
            torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), normalize=True
        ).numpy()
    j_emb = np.asarray(model.encode_image(images))
    diff = float(np.abs(t_emb - j_emb).max())
    if not math.isfinite(diff):
        raise ValueError(f"{out}: exported model gives non-finite embeddings in torch")
    return {
        "file": str(out),
        "bytes": out.stat().st_size,
        "max_abs_diff": diff,
        "n_images": int(len(images)),
    }
