"""Shared set-up of the fault trials: phantom datasets in every real layout, a random and a trained
tiny CLIP workdir, stage 3 and evaluation folders; each built once per `Context` and copied."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
from PIL import Image

CLIP_TINY = [
    "--config", "configs/phantom.py",
    "--config.data.path=phantom:48", "--config.batch_size=8", "--config.total_steps=8",
    "--config.checkpoint.every_steps=2", "--config.eval.max_examples=16", "--config.eval.batch=8",
    "--config.data.num_threads=1",
]  # fmt: skip


def copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def random_clip(ctx) -> pathlib.Path:
    """A tiny CLIP saved with random weights and a phantom tokenizer (for `mzs segment`)."""

    def make(path):
        from flax import nnx

        from mzs_jax.data import phantom
        from mzs_jax.data.tokenizer import build_wordpiece_tokenizer
        from mzs_jax.models import clip
        from mzs_jax.train.checkpoint import save_model

        cfg = clip.model_config("tiny")
        save_model(path, clip.CLIP(cfg, rngs=nnx.Rngs(0)), cfg)
        texts = [s["caption"] for s in phantom.generate_captions(30)]
        build_wordpiece_tokenizer(texts, path / "tokenizer", vocab_size=512)
        return path

    return ctx.once("random_clip", make)


def trained_clip(ctx) -> tuple[pathlib.Path, dict]:
    """`mzs train-clip` on the tiny config (8 steps) and its final parameters."""

    def make(path):
        from fault_trials import in_process

        from mzs_jax.train.loop import final_params

        res = in_process(["train-clip", *CLIP_TINY, "--workdir", path / "w"])
        if res.rc != 0:
            raise RuntimeError(f"reference training failed: {res.err[-2000:]}{res.exc}")
        return path / "w", final_params(path / "w")

    return ctx.once("trained_clip", make)


def xray_tree(ctx) -> pathlib.Path:
    from mzs_jax.data import phantom, phantom_formats

    return ctx.once(
        "covidqu",
        lambda p: (phantom_formats.write_covidqu(p, phantom.generate_xray(12, 0, 64), 0), p)[1],
    )


def acdc_tree(ctx) -> pathlib.Path:
    from mzs_jax.data import phantom_formats

    return ctx.once("acdc", lambda p: (phantom_formats.write_acdc(p, 2, 0, 32, 3), p)[1])


def synapse_tree(ctx) -> pathlib.Path:
    from mzs_jax.data import phantom_formats

    return ctx.once("synapse", lambda p: (phantom_formats.write_synapse(p, 5, 0, 32, 3), p)[1])


def roco_tree(ctx) -> pathlib.Path:
    from mzs_jax.data import phantom, phantom_formats

    def make(p):
        phantom_formats.write_roco(p, phantom.generate_captions(40, 0, 32))
        return p

    return ctx.once("roco", make)


def weak_dirs(ctx) -> dict[str, pathlib.Path]:
    def make(p):
        from mzs_jax.data import phantom

        dirs = {k: p / k for k in ("images", "pseudo", "gt")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(phantom.generate("xray", 12, seed=0, size=32)):
            lungs = np.isin(s["mask"], (1, 2)).astype(np.uint8)
            image = np.round(s["image"][..., 0] * 255).astype(np.uint8)
            Image.fromarray(image).save(dirs["images"] / f"xr{i:03d}.png")
            Image.fromarray(lungs).save(dirs["gt"] / f"xr{i:03d}.png")
            Image.fromarray(lungs).save(dirs["pseudo"] / f"xr{i:03d}.png")
        return dirs

    return ctx.once("weak", make)


def eval_dirs(ctx) -> dict[str, pathlib.Path]:
    """24 GT cases (`case00`..`case23`) and a prediction for each."""

    def make(p):
        gt, pred = p / "gt", p / "pred"
        gt.mkdir(), pred.mkdir()
        for i in range(24):
            g = np.zeros((16, 16), np.uint8)
            g[2:10, 3 : 6 + i % 8] = 1
            Image.fromarray(g * 255).save(gt / f"case{i:02d}.png")
            Image.fromarray(g).save(pred / f"case{i:02d}.png")
        return {"gt": gt, "pred": pred}

    return ctx.once("eval", make)


def open_clip_file(ctx) -> pathlib.Path:
    """Random open_clip-keyed tiny CLIP weights as safetensors."""

    def make(p):
        from safetensors.numpy import save_file

        from mzs_jax import convert
        from mzs_jax.models import clip

        save_file(convert.random_state_dict(clip.model_config("tiny")), str(p / "w.safetensors"))
        return p / "w.safetensors"

    return ctx.once("open_clip", make)


def resunet_workdir(ctx) -> pathlib.Path:
    def make(p):
        from flax import nnx

        from mzs_jax.models import resunet
        from mzs_jax.train.checkpoint import save_model

        cfg = resunet.model_config("tiny", in_channels=1, num_classes=2, image_size=32)
        save_model(p, resunet.ResUNet(cfg, rngs=nnx.Rngs(0)), cfg)
        return p

    return ctx.once("resunet", make)
