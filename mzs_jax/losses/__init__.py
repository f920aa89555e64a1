"""Contrastive losses (InfoNCE, DCL, HN-NCE, DHN-NCE, CEHNC) and their cross-device forms."""

from mzs_jax.losses.config import default_config, get_loss, hparams_from_config, loss_from_config
from mzs_jax.losses.contrastive import LOSSES, cehnc, dcl, dhn_nce, hn_nce, infonce
from mzs_jax.losses.global_batch import make_global_loss

__all__ = [
    "LOSSES",
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
]
