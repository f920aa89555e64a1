"""Contrastive losses on L2-normalised image/text pairs (MedZeroSeg §"Loss function formulation").

InfoNCE, DCL, HN-NCE, DHN-NCE and CEHNC written as one row formula (see `docs/losses.md`):
for an anchor row i, ``loss_i = -z_ii + LSE([z_ii if positive kept] + [log(B-1) + L1_i - L2_i])``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

ADAPTIVE_RULES = ("inverse_std", "inverse_sim_std")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What distinguishes the five losses; shared by the dense and the cross-device forms.

    weighting: "none" (uniform negatives), "similarity" (HN-NCE weights ∝ exp(β s/τ)) or
    "distance" (CEHNC weights ∝ exp(-β d), d the Euclidean distance in the joint space).
    """

    name: str
    keep_positive: bool
    weighting: str = "none"
    beta_i2t: float = 0.0
    beta_t2i: float = 0.0
    adaptive: bool = False
    adaptive_rule: str = "inverse_std"
    adaptive_eps: float = 1e-6
    dist_eps: float = 1e-12

    def __post_init__(self):
        if self.weighting not in ("none", "similarity", "distance"):
            raise ValueError(f"loss {self.name}: unknown weighting {self.weighting!r}")
        if self.adaptive and self.adaptive_rule not in ADAPTIVE_RULES:
            raise ValueError(
                f"loss.adaptive_rule={self.adaptive_rule!r} is not one of {ADAPTIVE_RULES}"
            )
        for key, val in (("beta1", self.beta_i2t), ("beta2", self.beta_t2i)):
            if not math.isfinite(val):
                raise ValueError(f"loss.{key} must be finite, got {val}")

    @property
    def weighted(self) -> bool:
        return self.weighting != "none"

    def check_batch(self, batch: int) -> None:
        if batch < 1:
            raise ValueError(f"{self.name}: empty batch")
        if batch == 1 and not self.keep_positive:
            raise ValueError(
                f"{self.name} is undefined for batch size 1: the positive is removed from the "
                "denominator and there are no negatives left"
            )


# --------------------------------------------------------------------------- shared pieces
def acc_dtype(x: Array) -> jnp.dtype:
    """Accumulation dtype: float32 for bf16/f16/f32 inputs, float64 for float64 inputs."""
    return jax.dtypes.canonicalize_dtype(jnp.promote_types(x.dtype, jnp.float32))


def similarity(a: Array, b: Array) -> Array:
    """(R, D) x (C, D) -> (R, C) cosine similarities, accumulated in at least float32."""
    dt = acc_dtype(a)
    return jnp.einsum("rd,cd->rc", a, b, preferred_element_type=dt).astype(dt)


def distance(s: Array, eps: float) -> Array:
    """Euclidean distance of unit vectors from their cosine similarity: sqrt(2 - 2s)."""
    return jnp.sqrt(jnp.maximum(2.0 - 2.0 * s, 0.0) + eps)


def negative_logits(
    s: Array, tau: Array, spec: LossSpec, beta: Array | float
) -> tuple[Array, Array | None]:
    """Per-pair terms of the two log-sum-exps: x1 = z + g (for L1) and x2 = g (for L2).

    z = s/τ; g is the log of the unnormalised hardness weight: β s/τ (similarity weighting,
    differentiable, as HN-NCE is written) or -β_eff d (distance weighting; CEHNC weights are
    importance weights and carry no gradient, see docs/losses.md). Masking is the caller's job.
    """
    z = s / tau
    if spec.weighting == "none":
        return z, None
    if spec.weighting == "similarity":
        g = beta * z
    else:
        g = jax.lax.stop_gradient(-beta * distance(s, spec.dist_eps))
    return z + g, g


def row_loss(z_pos: Array, l1: Array, l2: Array | None, n_neg: int, spec: LossSpec) -> Array:
    """loss_i = -z_ii + log(P e^{z_ii} + (B-1) e^{L1_i - L2_i}), P = 1 if the positive is kept.

    Unweighted losses have no L2 and no (B-1) factor: the negative term is e^{L1_i}.
    """
    neg = l1 if l2 is None else math.log(n_neg) + l1 - l2
    if spec.keep_positive:
        return -z_pos + jnp.logaddexp(z_pos, neg)
    return neg - z_pos


def adaptive_beta(beta: float, mean_s: Array, std_s: Array, spec: LossSpec) -> Array:
    """β_eff from the batch's anchor–negative similarity statistics (stop-gradient).

    inverse_std: β·d̄/(σ_s + eps) with d̄ = sqrt(2 - 2 μ_s): β divided by the std of the
    anchor–negative distances to first order (δd ≈ -δs/d̄), so β counts hardness in standard
    deviations of the batch (a negative one σ_d closer than another weighs e^β more).
    inverse_sim_std: β/(σ_s + eps).
    """
    if not spec.adaptive:
        return jnp.asarray(beta, mean_s.dtype)
    scale = std_s + spec.adaptive_eps
    if spec.adaptive_rule == "inverse_std":
        scale = scale / jnp.sqrt(jnp.maximum(2.0 - 2.0 * mean_s, 0.0) + spec.dist_eps)
    return jax.lax.stop_gradient(beta / scale)


def moments_from_sums(n: int, s1: Array, s2: Array) -> tuple[Array, Array]:
    """Mean and std of n anchor–negative similarities from their sum s1 and sum of squares s2."""
    m = s1 / float(n)  # float: B(B-1) overflows int32 at B = 65,536
    return m, jnp.sqrt(jnp.maximum(s2 / float(n) - m * m, 0.0))


# --------------------------------------------------------------------------- dense form
def dense_loss(img: Array, txt: Array, temperature: Array | float, spec: LossSpec) -> Array:
    """The loss of one (B, D) batch with the full (B, B) similarity matrix in memory."""
    if img.ndim != 2 or img.shape != txt.shape:
        raise ValueError(
            f"{spec.name}: img and txt must both be (B, D), got {img.shape}, {txt.shape}"
        )
    b = img.shape[0]
    spec.check_batch(b)
    s = similarity(img, txt)
    tau = jnp.asarray(temperature).astype(s.dtype)
    z_pos = jnp.diagonal(s) / tau
    if b == 1:  # positive kept, no negatives: loss is exactly 0 (and finite gradients)
        return jnp.mean(-z_pos + z_pos)
    off = ~jnp.eye(b, dtype=bool)
    beta1, beta2 = spec.beta_i2t, spec.beta_t2i
    if spec.weighting == "distance" and spec.adaptive:
        s_off = jnp.where(off, jax.lax.stop_gradient(s), 0.0)
        mean_s, std_s = moments_from_sums(b * (b - 1), jnp.sum(s_off), jnp.sum(s_off**2))
        beta1 = adaptive_beta(beta1, mean_s, std_s, spec)
        beta2 = adaptive_beta(beta2, mean_s, std_s, spec)
    total = 0.0
    for mat, beta in ((s, beta1), (s.T, beta2)):
        x1, x2 = negative_logits(mat, tau, spec, beta)
        l1 = jax.nn.logsumexp(jnp.where(off, x1, -jnp.inf), axis=1)
        l2 = None if x2 is None else jax.nn.logsumexp(jnp.where(off, x2, -jnp.inf), axis=1)
        total = total + jnp.mean(row_loss(z_pos, l1, l2, b - 1, spec))
    return total / 2.0


# --------------------------------------------------------------------------- public losses
def infonce(img: Array, txt: Array, temperature: Array | float) -> Array:
    """Symmetric CLIP loss: mean over rows of -log(e^{z_ii} / Σ_j e^{z_ij}), both directions."""
    return dense_loss(img, txt, temperature, LossSpec("infonce", keep_positive=True))


def dcl(img: Array, txt: Array, temperature: Array | float) -> Array:
    """Decoupled contrastive loss (Yeh et al. 2022): -log(e^{z_ii} / Σ_{j≠i} e^{z_ij})."""
    return dense_loss(img, txt, temperature, LossSpec("dcl", keep_positive=False))


def hn_nce(img: Array, txt: Array, temperature: Array | float, beta: float) -> Array:
    """HN-NCE (Radenovic et al. 2023): -log(e^{z_ii} / (e^{z_ii} + Σ_{j≠i} w_ij e^{z_ij})),

    w_ij = (B-1) e^{β z_ij} / Σ_{k≠i} e^{β z_ik}, z = s/τ; the same β in both directions.
    """
    spec = LossSpec("hn_nce", True, "similarity", beta, beta)
    return dense_loss(img, txt, temperature, spec)


def dhn_nce(
    img: Array, txt: Array, temperature: Array | float, beta1: float, beta2: float
) -> Array:
    """DHN-NCE (MedCLIP-SAMv2, paper form): HN-NCE weights, positive removed from the denominator;

    β1 for image→text, β2 for text→image.
    """
    spec = LossSpec("dhn_nce", False, "similarity", beta1, beta2)
    return dense_loss(img, txt, temperature, spec)


def cehnc(
    img: Array,
    txt: Array,
    temperature: Array | float,
    beta1: float,
    beta2: float,
    adaptive: bool = True,
    adaptive_rule: str = "inverse_std",
    adaptive_eps: float = 1e-6,
) -> Array:
    """CEHNC (MedZeroSeg): distance-weighted hard negatives, positive kept in the denominator.

    Image→text, anchor i, negatives j≠i, s = img @ txtᵀ, z = s/τ:
      d_ij = sqrt(max(2 - 2 s_ij, 0) + eps)                      (Euclidean, unit vectors)
      w_ij = (B-1) e^{-β1 d_ij} / Σ_{k≠i} e^{-β1 d_ik}           (mean 1; β=0 → uniform)
      loss_i = -log(e^{z_ii} / (e^{z_ii} + Σ_{j≠i} w_ij e^{z_ij}))
    text→image: the same on sᵀ with β2; the two directions are averaged. The weights are
    importance weights (stop-gradient). With `adaptive`, β_k is replaced every batch (under
    stop-gradient) from the mean μ_s and std σ_s of all anchor–negative similarities s_ij, i≠j:
    "inverse_std": β_k·sqrt(2 - 2μ_s)/(σ_s + eps) (= β_k/σ_d to first order, σ_d the std of the
    distances), or "inverse_sim_std": β_k/(σ_s + eps).
    """
    spec = LossSpec("cehnc", True, "distance", beta1, beta2, adaptive, adaptive_rule, adaptive_eps)
    return dense_loss(img, txt, temperature, spec)


LOSSES: dict[str, Callable[..., Array]] = {
    "infonce": infonce,
    "dcl": dcl,
    "hn_nce": hn_nce,
    "dhn_nce": dhn_nce,
    "cehnc": cehnc,
}


def make_spec(name: str, **hparams) -> LossSpec:
    """The `LossSpec` of loss `name`; hyperparameters use the same keywords as the function."""
    if name not in LOSSES:
        raise ValueError(f"loss.name={name!r} is not one of {sorted(LOSSES)}")
    allowed = {
        "infonce": set(),
        "dcl": set(),
        "hn_nce": {"beta"},
        "dhn_nce": {"beta1", "beta2"},
        "cehnc": {"beta1", "beta2", "adaptive", "adaptive_rule", "adaptive_eps"},
    }[name]
    extra = set(hparams) - allowed
    if extra:
        raise ValueError(f"loss {name} takes no hyperparameter(s) {sorted(extra)}")
    required = {"hn_nce": {"beta"}, "dhn_nce": {"beta1", "beta2"}, "cehnc": {"beta1", "beta2"}}
    missing = required.get(name, set()) - set(hparams)
    if missing:
        raise ValueError(f"loss {name} needs hyperparameter(s) {sorted(missing)}")
    if name == "infonce":
        return LossSpec(name, True)
    if name == "dcl":
        return LossSpec(name, False)
    if name == "hn_nce":
        b = float(hparams["beta"])
        return LossSpec(name, True, "similarity", b, b)
    if name == "dhn_nce":
        return LossSpec(name, False, "similarity", float(hparams["beta1"]), float(hparams["beta2"]))
    return LossSpec(
        name,
        True,
        "distance",
        float(hparams["beta1"]),
        float(hparams["beta2"]),
        bool(hparams.get("adaptive", True)),
        str(hparams.get("adaptive_rule", "inverse_std")),
        float(hparams.get("adaptive_eps", 1e-6)),
    )
