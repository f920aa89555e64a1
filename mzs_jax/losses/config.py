"""`config.loss` → a bound loss function `fn(img, txt, temperature, bias=None)` (DESIGN §3)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import ml_collections

from mzs_jax.losses.contrastive import BETA_MAX
from mzs_jax.losses.registry import LOSSES, entry, get_loss

GLOBAL_FORMS = ("gather", "ring")


def default_config() -> ml_collections.ConfigDict:
    """`config.loss` defaults: CEHNC, adaptive inverse-std β, streamed global-batch ring form."""
    c = ml_collections.ConfigDict()
    c.name = "cehnc"  # one of registry.LOSS_NAMES
    c.beta = 0.5  # hn_nce
    c.beta1 = 0.5  # dhn_nce / cehnc, image→text
    c.beta2 = 0.5  # dhn_nce / cehnc, text→image
    c.adaptive = True  # cehnc: re-estimate β each batch (stop-gradient)
    c.adaptive_rule = "inverse_std"  # or "inverse_sim_std"
    c.adaptive_eps = 1e-6
    c.beta_max = BETA_MAX  # cehnc: cap on the adaptive β_eff (math.inf = no cap)
    c.global_batch = True  # trainer: use make_global_loss over the mesh's batch axes
    # gather: all-gather the other side (B×D per device); ring: its blocks travel round the
    # devices by ppermute (O(B/n × D) per device, same values and bytes sent; docs/losses.md).
    c.global_form = "ring"
    c.block_size = 0  # tile edge (rows and columns) of the streamed forms; 0 → min(B_l, 1024)
    return c


def hparams_from_config(cfg: ml_collections.ConfigDict) -> dict:
    """The hyperparameters of loss `cfg.name` taken from `cfg` (e.g. `config.loss`), validated.

    Keys the loss does not read are ignored; a key it reads but `cfg` lacks takes the function's
    default, or is an error naming it when the function has none.
    """
    e = entry(cfg.get("name"))
    hp = {key: cfg[key] for key in e.hparams if key in cfg}
    missing = [k for k in e.required if k not in hp]
    if missing:
        raise ValueError(f"loss.{missing[0]} is required by loss {e.name}")
    e.spec(**hp)  # validates the values, naming the key
    if cfg.get("global_form", "gather") not in GLOBAL_FORMS:
        raise ValueError(f"loss.global_form={cfg.global_form!r} is not one of {GLOBAL_FORMS}")
    return hp


def with_bias_check(name: str, fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """`fn(img, txt, temperature, bias=None)`: the bias is required by a loss that learns one
    (SigLIP) and refused by the others, each with an error naming the model key."""
    learned = LOSSES[name].learned_bias

    def bound(img, txt, temperature, bias=None):
        if learned and bias is None:
            raise ValueError(
                f"loss {name} learns a logit bias: the model needs model.logit_bias_init "
                f"(configs/clip_{name}.py sets {LOSSES[name].logit_bias_init})"
            )
        if not learned and bias is not None:
            raise ValueError(
                f"loss {name} takes no logit bias, but one was given (the model has "
                "model.logit_bias_init set): set it to None"
            )
        return fn(img, txt, temperature) if bias is None else fn(img, txt, temperature, bias)

    return bound


def loss_from_config(cfg: ml_collections.ConfigDict) -> Callable[..., jax.Array]:
    """`fn(img, txt, temperature, bias=None)` for `config.loss` (single-device, dense form)."""
    return with_bias_check(
        cfg.name, functools.partial(get_loss(cfg.name), **hparams_from_config(cfg))
    )
