"""Default configs for the training engine (shared by stages 1-3) and for stage 1 CLIP (paper §3.1).

Config files in `configs/` are executed by path, so they import their base from here.
"""

from __future__ import annotations

import math

import ml_collections

from mzs_jax import losses
from mzs_jax.losses import default_config as losses_default_config


def train_config() -> ml_collections.ConfigDict:
    """Engine keys read by `loop.fit`, with their defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 64  # global, over all processes and devices
    c.num_epochs = 10
    c.total_steps = -1  # > 0 overrides num_epochs
    c.grad_accum = 1  # micro-batches per step; batch_size must divide by it
    # "exact": a contrastive task's loss still sees the whole batch (GradCache, train/step.py);
    # "independent": one loss per micro-batch (B/grad_accum negatives: a different objective).
    c.accumulation = "exact"
    # Matmul dtype of the model ("float32" | "bfloat16"); parameters stay float32 master copies
    # and the loss reductions float32.
    c.compute_dtype = "float32"

    c.optimizer = optimizer_config()

    # Regex over parameter paths ("visual.blocks.0.attn.qkv.kernel"); matching params get no update.
    c.freeze = ()
    # (regex, lo, hi): matching params are clipped after each update.
    c.clamp = ()

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices left over
    c.mesh.fsdp = 1
    # (regex, spec): spec is "fsdp" (shard the largest dim divisible by the fsdp axis) or a tuple of
    # mesh axis names / None per dimension. First match wins; unmatched -> replicated.
    c.sharding_rules = ((".*", "fsdp"),)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 3
    c.checkpoint.best_metric = ""  # e.g. "val/i2t_top1"; "" = keep the latest only
    c.checkpoint.best_mode = "max"
    c.checkpoint.async_save = True

    # Resuming a workdir whose model or data-order config (seed, batch_size, data.*) differs from
    # the saved one is an error unless this is True (train/resume.py).
    c.allow_config_change = False

    c.log_every_steps = 10
    c.eval_every_epochs = 1
    c.data = ml_collections.ConfigDict()
    c.data.num_threads = 2  # grain read threads per process
    c.data.prefetch = 16

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # "" = from the environment (or single process)
    c.distributed.num_processes = -1
    c.distributed.process_id = -1
    return c


def clip_config(loss: str = "cehnc") -> ml_collections.ConfigDict:
    """Stage 1 defaults (paper): batch 64, 224 px, CLIP normalisation, low lr halved each epoch,
    temperature 0.07 (logit_scale = ln(1/0.07), clipped at ln 100 like open_clip)."""
    c = train_config()
    c.model = "biomedclip"  # mzs_jax.models.clip.model_config(name); "tiny" for tests
    c.model_overrides = ml_collections.ConfigDict()  # merged into the model config
    c.init = ""  # "" = random init; a workdir to start from (e.g. made by `mzs import`)
    c.temperature_init = 0.07
    # With `init`: keep the imported checkpoint's τ instead of restarting at temperature_init.
    c.keep_imported_temperature = False
    c.clamp = (("logit_scale", 0.0, math.log(100.0)),)

    c.loss = losses_default_config()  # name, betas, adaptive, global_batch, global_form, ...
    c.loss.name = loss  # a name of mzs_jax.losses.LOSSES
    # The initialisation a loss is defined with (SigLIP: τ = 0.1 and a learned logit bias -10).
    entry = losses.registry.entry(loss)
    if entry.temperature_init is not None:
        c.temperature_init = entry.temperature_init
    if entry.logit_bias_init is not None:
        c.model_overrides.logit_bias_init = entry.logit_bias_init

    c.data.source = ""  # roco | medpix | phantom; "" = guessed from data.path
    c.data.path = "phantom:300"  # ROCO root, MedPix index file, or "phantom:N" (generated)
    c.data.tokenizer = ""  # dir or hub id; "" = WORKDIR/tokenizer, built from phantom captions
    c.data.image_size = 0  # 0 = the model's (224 for biomedclip)
    c.data.val_fraction = 0.15
    c.data.split_seed = 0
    c.data.limit = 0  # > 0: use only the first N examples (smoke runs)
    # Text lengths a batch may be cut to, e.g. (32, 64, 128): the smallest that holds every
    # attended token (train/text_buckets.py; same loss as the padded batch). () = always pad.
    c.data.text_buckets = ()

    c.eval = ml_collections.ConfigDict()
    c.eval.batch = 50  # ROCO protocol: retrieval in batches of 50
    c.eval.seeds = 1  # seeds per epoch-end evaluation (eval-retrieval uses 5)
    c.eval.max_examples = 1000  # validation pairs embedded at each epoch end
    c.checkpoint.best_metric = "val/i2t_top1"
    return c


def optimizer_config() -> ml_collections.ConfigDict:
    """`config.optimizer` defaults (read by `train.step.make_optimizer`)."""
    o = ml_collections.ConfigDict()
    o.name = "adamw"  # adamw | sgd
    o.lr = 1e-5
    o.b1 = 0.9
    o.b2 = 0.98
    o.eps = 1e-6
    o.weight_decay = 0.2  # applied to >= 2-D parameters only
    o.grad_clip_norm = 0.0  # 0 = off
    o.warmup_steps = 0
    o.decay_every_epochs = 1.0  # step decay: lr *= decay_factor every N epochs
    o.decay_factor = 0.5
    return o
