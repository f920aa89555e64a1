"""Loss registry and config plumbing: `config.loss` → a bound loss function (DESIGN §3)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import ml_collections

from mzs_jax.losses.contrastive import LOSSES, make_spec

# Hyperparameters each loss reads from `config.loss` (other keys there are ignored).
HPARAM_KEYS: dict[str, tuple[str, ...]] = {
    "infonce": (),
    "dcl": (),
    "hn_nce": ("beta",),
    "dhn_nce": ("beta1", "beta2"),
    "cehnc": ("beta1", "beta2", "adaptive", "adaptive_rule", "adaptive_eps"),
}


def default_config() -> ml_collections.ConfigDict:
    """`config.loss` defaults: CEHNC, adaptive inverse-std β, streamed global-batch form."""
    c = ml_collections.ConfigDict()
    c.name = "cehnc"
    c.beta = 0.5  # hn_nce
    c.beta1 = 0.5  # dhn_nce / cehnc, image→text
    c.beta2 = 0.5  # dhn_nce / cehnc, text→image
    c.adaptive = True  # cehnc: re-estimate β each batch (stop-gradient)
    c.adaptive_rule = "inverse_std"  # or "inverse_mean"
    c.adaptive_eps = 1e-6
    c.global_batch = True  # trainer: use make_global_loss over the data axis
    c.block_size = 0  # 0 → automatic (min(B, 1024))
    return c


def get_loss(name: str) -> Callable[..., jax.Array]:
    """The single-device loss function `fn(img, txt, temperature, **hparams)` named `name`."""
    if name not in LOSSES:
        raise ValueError(f"loss.name={name!r} is not one of {sorted(LOSSES)}")
    return LOSSES[name]


def hparams_from_config(cfg: ml_collections.ConfigDict) -> dict:
    """The hyperparameters of `cfg.name` taken from `cfg` (e.g. `config.loss`), validated."""
    name = cfg.get("name")
    if name not in HPARAM_KEYS:
        raise ValueError(f"loss.name={name!r} is not one of {sorted(HPARAM_KEYS)}")
    hp = {}
    for key in HPARAM_KEYS[name]:
        if key not in cfg:
            if key in ("adaptive", "adaptive_rule", "adaptive_eps"):
                continue
            raise ValueError(f"loss.{key} is required by loss {name}")
        hp[key] = cfg[key]
    make_spec(name, **hp)  # validates values, naming the key
    return hp


def loss_from_config(cfg: ml_collections.ConfigDict) -> Callable[..., jax.Array]:
    """`fn(img, txt, temperature)` for `config.loss` (single-device, dense form)."""
    return functools.partial(get_loss(cfg.name), **hparams_from_config(cfg))
