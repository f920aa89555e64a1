"""Stage 1: BiomedCLIP contrastive fine-tuning with the cehnc loss (paper §3.1, Table 1), with the
clinical-metadata context encoder fused into the text embedding
(`model.context`, models/context.py).

Run:  mzs train-clip --config configs/clip_cehnc.py --workdir runs/clip_cehnc \
          --config.data.path=/data/roco --config.init=runs/biomedclip_imported
(`--config.init`: a workdir made by `mzs import` from the released BiomedCLIP weights; the context
encoder is new and starts as the identity.) `--config.model_overrides.context.enabled=False`
trains without metadata. Re-running the same command resumes. On one H100: about 1 h per epoch of
ROCO radiology (batch 64, 224 px); on CPU use configs/phantom.py instead.
"""

import ml_collections

from mzs_jax.train.defaults import clip_config


def get_config(arg=None):
    c = clip_config("cehnc")
    # Merged into model.context (models/context.py defaults: modality/body_region/sex tables, age,
    # free-text history through the text tower); vocabularies from train/clip_context.py.
    c.model_overrides.context = ml_collections.ConfigDict({"enabled": True})
    return c
