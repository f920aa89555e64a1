"""Contrastive losses (InfoNCE, DCL, HN-NCE, DHN-NCE, CEHNC, SigLIP) and their global forms."""

from mzs_jax.losses.config import default_config, hparams_from_config, loss_from_config
from mzs_jax.losses.contrastive import cehnc, dcl, dhn_nce, hn_nce, infonce, siglip
from mzs_jax.losses.global_batch import make_global_loss, make_global_moments
from mzs_jax.losses.registry import LOSS_NAMES, LOSSES, PAPER_LOSSES, get_loss, make_spec

__all__ = [
    "LOSSES",
    "LOSS_NAMES",
    "PAPER_LOSSES",
    "cehnc",
    "dcl",
    "default_config",
    "dhn_nce",
    "get_loss",
    "hn_nce",
    "hparams_from_config",
    "infonce",
    "loss_from_config",
    "make_global_loss",
    "make_global_moments",
    "make_spec",
    "siglip",
]
