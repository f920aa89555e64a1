"""Stage 1 (paper §3.1): contrastive fine-tuning of BiomedCLIP as a `Task` for `loop.fit`, and the
`mzs train-clip` command. Inputs: ROCO / MedPix captions or generated phantom captions.
"""

from __future__ import annotations

import argparse
import math
import pathlib
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mzs_jax.data.transforms import ToClipInput
from mzs_jax.train import clip_context, text_buckets
from mzs_jax.train.distributed import barrier

BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


def clip_model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`models.clip.model_config(config.model)` + `config.model_overrides`, τ0 from the config."""
    from mzs_jax.models import clip

    mc = clip.model_config(config.model)
    mc.update(config.model_overrides.to_dict())
    if not 0 < config.temperature_init <= 1:
        raise ValueError(f"config.temperature_init={config.temperature_init} must be in (0, 1]")
    mc.logit_scale_init = math.log(1.0 / config.temperature_init)
    if mc.context.enabled:
        clip_context.with_default_vocab(mc.context)
    return mc


# ------------------------------------------------------------------------------------ data


def _guess_source(path: str) -> str:
    for kind in ("phantom", "phantom-hard"):
        if path.startswith(f"{kind}:"):
            return kind
    return "medpix" if pathlib.Path(path).is_file() else "roco"


def _phantom_count(path: str, kind: str) -> int:
    try:
        n = int(path.split(":", 1)[1])
    except (IndexError, ValueError) as e:
        raise ValueError(f"config.data.path={path!r}: expected '{kind}:N'") from e
    if n < 1:
        raise ValueError(f"config.data.path={path!r}: N must be >= 1")
    return n


def caption_source(
    path: str, source: str | None, split: str, *, seed: int = 0, val_fraction: float = 0.15
):
    """A random-access source of `{"image", "caption", "metadata", "id"}` dicts.

    `phantom-hard:N` (`data/phantom_hard.py`) is split by whole 64-pair blocks, so each held-out
    block holds every attribute combination once."""
    source = source or _guess_source(path)
    if source in ("phantom", "phantom-hard"):
        from mzs_jax.data import phantom, phantom_hard
        from mzs_jax.data.sources import split_indices

        n = _phantom_count(path, source)
        if source == "phantom-hard":
            return phantom_hard.split(n, seed, val_fraction, split)
        samples = phantom.generate_captions(n, seed=seed)
        return [samples[i] for i in split_indices(n, val_fraction, seed, split)]
    from mzs_jax.data import captions

    if source == "roco":
        return captions.RocoCaptions(path, split, seed=seed, val_fraction=val_fraction)
    if source == "medpix":
        return captions.MedPixCaptions(path, split, seed=seed, val_fraction=val_fraction)
    raise ValueError(
        f"config.data.source={source!r}: expected roco | medpix | phantom | phantom-hard"
    )


def resolve_tokenizer(
    spec: str | None, workdir: pathlib.Path | None, context_length: int, texts=None
):
    """Explicit dir/hub id; else `WORKDIR/tokenizer`; else (phantoms) one built from `texts`;
    else BiomedCLIP's PubMedBERT vocabulary from the local HF cache.

    An explicit tokenizer used with a workdir is saved as `WORKDIR/tokenizer`, so the later stages
    (`mzs segment`, `mzs eval-retrieval`) find the vocabulary the model was trained with."""
    from mzs_jax.data import tokenizer as tk

    local = pathlib.Path(workdir) / "tokenizer" if workdir else None
    if spec:
        tok = tk.load_tokenizer(spec, context_length)
        if local is not None and not local.is_dir():
            if jax.process_index() == 0:
                tok.hf.save_pretrained(str(local))
            barrier("tokenizer")
            print(f"saved the tokenizer {spec} with the model: {local}")
        return tok
    if local is not None and local.is_dir():
        return tk.load_tokenizer(local, context_length)
    if texts is not None and local is not None:
        if jax.process_index() == 0:
            tk.build_wordpiece_tokenizer(texts, local)
        barrier("tokenizer")
        print(f"built a WordPiece tokenizer from the training captions: {local}")
        return tk.load_tokenizer(local, context_length)
    return tk.load_tokenizer(BIOMEDCLIP_HUB_ID, context_length)


class ToClipExample(grain.transforms.Map):
    """`{"image", "caption", ...}` -> `{"image" (S,S,3) f32 CLIP-normalised, "input_ids" (L,),
    "attention_mask" (L,)}`; strings are dropped. With `context_cfg` (`model.context`, enabled)
    the metadata becomes `"context"`: a dict of arrays (`clip_context.MetadataArrays`)."""

    def __init__(self, tokenizer, image_size: int, context_cfg=None):
        self.tokenizer, self.to_input = tokenizer, ToClipInput(image_size)
        self.context = (
            None if context_cfg is None else clip_context.MetadataArrays(context_cfg, tokenizer)
        )

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        tokens = self.tokenizer([element["caption"]])
        out = {
            "image": self.to_input.map({"image": element["image"]})["image"],
            "input_ids": np.asarray(tokens["input_ids"][0], np.int32),
            "attention_mask": np.asarray(tokens["attention_mask"][0], np.int32),
        }
        if self.context is not None:
            out["context"] = self.context(element.get("metadata"))
        return out


def clip_examples(
    src, tokenizer, model_config, limit: int = 0, *, context: bool = False
) -> grain.MapDataset:
    """`src` records as model inputs (`ToClipExample`), the first `limit` when `limit > 0`."""
    ds = grain.MapDataset.source(src)
    if limit > 0:
        ds = ds[:limit]
    ctx = model_config.context if context and model_config.context.enabled else None
    return ds.map(ToClipExample(tokenizer, model_config.vision.image_size, ctx))


def eval_examples(
    path: str,
    source: str | None,
    split: str,
    model_config,
    *,
    tokenizer: str | None = None,
    workdir=None,
    seed: int = 0,
    limit: int = 0,
    context: bool = False,
) -> grain.MapDataset:
    """Processed evaluation pairs for `mzs eval-retrieval` and the per-epoch validation; with
    `context` (and `model_config.context.enabled`) each carries its `"context"` arrays."""
    src = caption_source(path, source, split, seed=seed)
    tok = resolve_tokenizer(
        tokenizer, None if tokenizer else workdir, model_config.text.context_length
    )
    return clip_examples(src, tok, model_config, limit, context=context)


# ------------------------------------------------------------------------------------ task


def clip_embed(model, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The towers' per-example outputs: `img`, `txt` (B, E) unit L2, and with a context encoder
    the metadata history through the text tower (`clip_context.encode_history`)."""
    out = {
        "img": model.encode_image(batch["image"]),
        "txt": model.encode_text(batch["input_ids"], batch["attention_mask"]),
    }
    if getattr(model, "context", None) is not None:
        if "context" not in batch:
            raise ValueError(
                "model.context.enabled=True but the batch has no 'context' metadata arrays"
            )
        out.update(clip_context.encode_history(model, batch["context"]))
    return out


def clip_objective(
    model, outputs: dict[str, jax.Array], batch: dict[str, jax.Array], loss: Callable
) -> tuple[jax.Array, dict]:
    """`loss(img, txt, τ[, bias])` on the whole batch's tower outputs (after the context fusion);
    the model's `logit_bias` (SigLIP, `model.logit_bias_init`) is passed if it has one."""
    img, txt = outputs["img"], outputs["txt"]
    if getattr(model, "context", None) is not None:
        img, txt = clip_context.fuse_batch(model, img, txt, batch["context"], outputs)
    scale = model.logit_scale[...].astype(jnp.float32)
    temperature = jnp.exp(-scale)
    if getattr(model, "logit_bias", None) is None:
        return loss(img, txt, temperature), {"temperature": temperature}
    bias = model.logit_bias[...].astype(jnp.float32)  # SigLIP: the loss learns the bias too
    return loss(img, txt, temperature, bias), {"temperature": temperature, "logit_bias": bias}


def clip_loss(model, batch: dict[str, jax.Array], loss: Callable) -> tuple[jax.Array, dict]:
    """The stage 1 objective: `clip_objective` on the two L2-normalised `(B, E)` embeddings.

    `batch`: `image` (B,S,S,3), `input_ids`/`attention_mask` (B,L). τ = 1/exp(logit_scale) as in
    open_clip (logits = exp(logit_scale)·cos). Used by `ClipTask` and `bench/train_step.py`.
    A model with a context encoder (`model.context.enabled`) needs `batch["context"]` (metadata
    arrays, `clip_context.MetadataArrays`) and fuses it into the text embedding before the loss.
    """
    return clip_objective(model, clip_embed(model, batch), batch, loss)


class ClipTask:
    """Contrastive fine-tuning of `models.clip.CLIP` with one of the five losses."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
        self.config, self.workdir = config, pathlib.Path(workdir)
        self.model_config = clip_model_config(config)
        if config.data.image_size and config.data.image_size != self.model_config.vision.image_size:
            raise ValueError(
                f"config.data.image_size={config.data.image_size} differs from the model's "
                f"vision.image_size={self.model_config.vision.image_size}"
            )
        for key in ("batch", "seeds"):  # retrieval batches of eval.batch pairs, eval.seeds orders
            if int(config.eval[key]) < 1:
                raise ValueError(f"config.eval.{key}={config.eval[key]}: must be >= 1")
        d = config.data
        self.train_src = caption_source(
            d.path, d.source or None, "train", seed=d.split_seed, val_fraction=d.val_fraction
        )
        self.val_src = caption_source(
            d.path, d.source or None, "val", seed=d.split_seed, val_fraction=d.val_fraction
        )
        texts = None
        if (d.source or _guess_source(d.path)).startswith("phantom"):
            texts = [self.train_src[i]["caption"] for i in range(len(self.train_src))]
        self.tokenizer = resolve_tokenizer(
            d.tokenizer or None, self.workdir, self.model_config.text.context_length, texts
        )
        self._loss = None
        self.text_buckets = text_buckets.check_buckets(
            d.get("text_buckets", ()), self.model_config.text.context_length
        )
        self._bucketed = False

    def check_config(self, config) -> None:
        """Called by `fit` before anything runs: a validation metric needs validation pairs."""
        best = str(config.checkpoint.get("best_metric", "") or "")
        if len(self.val_src) == 0 and best.startswith("val/"):
            raise ValueError(
                f"config.data.val_fraction={config.data.val_fraction} leaves no validation pairs "
                f"in {config.data.path}, but config.checkpoint.best_metric={best!r} needs them: "
                "raise the fraction or set config.checkpoint.best_metric=''"
            )

    def bind_mesh(self, mesh) -> None:
        from mzs_jax import losses

        lc = self.config.loss
        hp = losses.hparams_from_config(lc)
        if lc.global_batch and mesh.size > 1:
            from mzs_jax.train.mesh import BATCH_AXES

            self._loss = losses.make_global_loss(
                lc.name,
                mesh,
                axis=BATCH_AXES,
                form=lc.global_form,
                block_size=lc.block_size or None,
                **hp,
            )
            n = math.prod(mesh.shape[a] for a in BATCH_AXES)
            where = f"global-batch {lc.global_form} form over mesh axes {BATCH_AXES} ({n} devices)"
        else:
            self._loss = losses.loss_from_config(lc)
            where = "single-device dense form"
        if jax.process_index() == 0:
            print(f"[train-clip] loss {lc.name} {hp}: {where}")

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        from mzs_jax.models.clip import CLIP
        from mzs_jax.train.step import with_compute_dtype

        # The matmuls run in config.compute_dtype; model_config.json keeps the architecture.
        return CLIP(with_compute_dtype(self.model_config, self.config), rngs=rngs)

    def init_from(self, model) -> None:
        """Imported tower weights; τ restarts at `temperature_init` unless
        `keep_imported_temperature` (open_clip checkpoints end training at τ = 0.01)."""
        if self.config.init:
            from mzs_jax.train import checkpoint as ckpt

            pretrained, _ = ckpt.restore_model(self.config.init)
            imported_scale = float(pretrained.logit_scale[...])
            nnx.update(model, nnx.state(pretrained))
            if not self.config.keep_imported_temperature:
                model.logit_scale[...] = jnp.asarray(
                    self.model_config.logit_scale_init, model.logit_scale[...].dtype
                )
            if jax.process_index() == 0:
                print(
                    f"[train-clip] initialised from {self.config.init} (imported τ = "
                    f"{math.exp(-imported_scale):.4g})"
                )
        if jax.process_index() == 0:
            tau = math.exp(-float(model.logit_scale[...]))
            print(f"[train-clip] starting temperature τ = {tau:.4g}")

    @property
    def compiler_options(self) -> dict[str, str]:
        """XLA options the step needs to run as configured (`models.clip.compiler_options`)."""
        from mzs_jax.models import clip

        return clip.compiler_options(self.model_config)

    def prepare_batch(self, batch: dict) -> dict:
        """Host-side, before the global arrays: the text cut to its `config.data.text_buckets`
        length (`train/text_buckets.py`); the batch unchanged when no buckets are set."""
        if not self.text_buckets:
            return batch
        self._bucketed = True
        return text_buckets.bucket_batch(batch, self.text_buckets)

    def loss_fn(self, model, batch, rng):
        if self.text_buckets and not self._bucketed:
            raise RuntimeError(
                f"config.data.text_buckets={self.text_buckets} is set but the training loop did "
                "not pass the batches through ClipTask.prepare_batch"
            )
        return clip_loss(model, batch, self._loss)

    def embed(self, model, batch, rng):
        return clip_embed(model, batch)

    def batch_loss(self, model, outputs, batch):
        return clip_objective(model, outputs, batch, self._loss)

    def train_dataset(self, config) -> grain.MapDataset:
        return clip_examples(
            self.train_src, self.tokenizer, self.model_config, config.data.limit, context=True
        )

    def evaluate(self, model, epoch: int) -> dict[str, float]:
        """Retrieval on the held-out pairs; their embeddings stay in `val_embeddings`."""
        from mzs_jax.train import retrieval_scores as retrieval

        if len(self.val_src) == 0:  # config.data.val_fraction = 0: nothing held out to score
            return {}
        ex = clip_examples(
            self.val_src, self.tokenizer, self.model_config, int(self.config.eval.max_examples)
        )
        img, txt = self.val_embeddings = retrieval.embed(model, ex)
        res = retrieval.summarize(
            img, txt, batch=int(self.config.eval.batch), seeds=int(self.config.eval.seeds)
        )
        return {f"val/{k}": v[0] for k, v in res.items()}


# ------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Example: mzs train-clip --config configs/clip_cehnc.py --workdir runs/cehnc "
        "--config.data.path=/data/roco. Re-running with the same --workdir resumes."
    )


def run(args) -> int:
    from mzs_jax.train import distributed
    from mzs_jax.train.loop import fit

    if args.config is None or args.workdir is None:
        raise ValueError("train-clip needs --config configs/clip_<loss>.py and --workdir DIR")
    distributed.initialize(args.config.distributed)
    task = ClipTask(args.config, args.workdir)
    last = fit(task, args.config, args.workdir, name="train-clip")
    if jax.process_index() == 0 and last:
        print(
            "[train-clip] done: "
            + " ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith(("loss", "val/")))
        )
    return 0
