"""The one loss table: name → dense function, spec builder, hyperparameter keys, model defaults.

Hyperparameter names and defaults are those of the dense function's signature; every form (dense,
gather, ring) builds the same `LossSpec` from them through `make_spec`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import jax

from mzs_jax.losses import contrastive as c

# Arguments of a loss function that are arrays, not hyperparameters.
ARRAY_ARGS = ("img", "txt", "temperature", "bias")


@dataclasses.dataclass(frozen=True)
class LossEntry:
    """One loss. `temperature_init` / `logit_bias_init`: the model initialisation the loss is
    defined with (None: the run's `temperature_init`, and no logit bias)."""

    fn: Callable[..., jax.Array]
    spec_builder: Callable[..., c.LossSpec]
    temperature_init: float | None = None
    logit_bias_init: float | None = None

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def learned_bias(self) -> bool:
        """True when the loss takes a learnable logit bias (`fn(img, txt, temperature, bias)`)."""
        return "bias" in inspect.signature(self.fn).parameters

    @property
    def hparams(self) -> tuple[str, ...]:
        """Keyword hyperparameters, in signature order (the keys read from `config.loss`)."""
        return tuple(p for p in inspect.signature(self.fn).parameters if p not in ARRAY_ARGS)

    @property
    def required(self) -> tuple[str, ...]:
        params = inspect.signature(self.fn).parameters
        return tuple(k for k in self.hparams if params[k].default is inspect.Parameter.empty)

    def spec(self, **hparams) -> c.LossSpec:
        """The LossSpec for these hyperparameters (defaults from the signature), validated."""
        extra = sorted(set(hparams) - set(self.hparams))
        if extra:
            raise ValueError(f"loss {self.name} takes no hyperparameter(s) {extra}")
        missing = sorted(set(self.required) - set(hparams))
        if missing:
            raise ValueError(f"loss {self.name} needs hyperparameter(s) {missing}")
        params = inspect.signature(self.fn).parameters
        full = {k: hparams.get(k, params[k].default) for k in self.hparams}
        return self.spec_builder(**full)


LOSSES: dict[str, LossEntry] = {
    e.name: e
    for e in (
        LossEntry(c.infonce, c.infonce_spec),
        LossEntry(c.dcl, c.dcl_spec),
        LossEntry(c.hn_nce, c.hn_nce_spec),
        LossEntry(c.dhn_nce, c.dhn_nce_spec),
        LossEntry(c.cehnc, c.cehnc_spec),
        # SigLIP paper: t' = log 10 (τ = 0.1), b = -10.
        LossEntry(c.siglip, c.siglip_spec, temperature_init=0.1, logit_bias_init=-10.0),
    )
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)
# The paper's Table 1 comparison (MedZeroSeg): the softmax losses, without SigLIP.
PAPER_LOSSES: tuple[str, ...] = ("infonce", "dcl", "hn_nce", "dhn_nce", "cehnc")


def entry(name: str) -> LossEntry:
    if name not in LOSSES:
        raise ValueError(f"loss.name={name!r} is not one of {sorted(LOSSES)}")
    return LOSSES[name]


def get_loss(name: str) -> Callable[..., jax.Array]:
    """The single-device loss function `fn(img, txt, temperature[, bias], **hparams)`."""
    return entry(name).fn


def make_spec(name: str, **hparams) -> c.LossSpec:
    """The `LossSpec` of loss `name`; hyperparameters use the same keywords as the function."""
    return entry(name).spec(**hparams)
