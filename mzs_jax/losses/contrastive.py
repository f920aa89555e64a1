"""Contrastive losses on L2-normalised image/text pairs (MedZeroSeg §"Loss function formulation").

InfoNCE, DCL, HN-NCE, DHN-NCE and CEHNC are one row formula (see `docs/losses.md`):
``loss_i = -z_ii + LSE([z_ii if positive kept] + [log(B-1) + L1_i - L2_i])``; SigLIP is a sigmoid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

ADAPTIVE_RULES = ("inverse_std", "inverse_sim_std")
# Cap on CEHNC's adaptive β_eff (docs/losses.md, "Adaptive rule"): at 50 a negative 0.1 closer
# in distance weighs e^5 ≈ 150× more; a collapsed batch (σ → 0) would otherwise give ~β/eps.
BETA_MAX = 50.0


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What distinguishes the losses; shared by the dense and the cross-device forms.

    family: "softmax" (the five row-LSE losses) or "sigmoid" (SigLIP: every pair a binary
    logistic term, a learned bias). weighting (softmax only): "none" (uniform negatives),
    "similarity" (HN-NCE weights ∝ exp(β s/τ)) or "distance" (CEHNC weights ∝ exp(-β d)).
    """

    name: str
    keep_positive: bool = True
    weighting: str = "none"
    beta_i2t: float = 0.0
    beta_t2i: float = 0.0
    adaptive: bool = False
    adaptive_rule: str = "inverse_std"
    adaptive_eps: float = 1e-6
    beta_max: float = BETA_MAX
    dist_eps: float = 1e-12
    family: str = "softmax"

    def __post_init__(self):
        if self.family not in ("softmax", "sigmoid"):
            raise ValueError(f"loss {self.name}: unknown family {self.family!r}")
        if self.weighting not in ("none", "similarity", "distance"):
            raise ValueError(f"loss {self.name}: unknown weighting {self.weighting!r}")
        if self.adaptive and self.adaptive_rule not in ADAPTIVE_RULES:
            raise ValueError(
                f"loss.adaptive_rule={self.adaptive_rule!r} is not one of {ADAPTIVE_RULES}"
            )
        for key, val in (("beta1", self.beta_i2t), ("beta2", self.beta_t2i)):
            if not math.isfinite(val):
                raise ValueError(f"loss.{key} must be finite, got {val}")
        if not self.beta_max > 0:
            raise ValueError(f"loss.beta_max must be > 0 (math.inf = no cap), got {self.beta_max}")
        if not self.adaptive_eps > 0:
            raise ValueError(f"loss.adaptive_eps must be > 0, got {self.adaptive_eps}")

    @property
    def weighted(self) -> bool:
        return self.weighting != "none"

    @property
    def learned_bias(self) -> bool:
        """True when the loss takes a learnable logit bias (SigLIP)."""
        return self.family == "sigmoid"

    @property
    def adaptive_distance(self) -> bool:
        """True when β is re-estimated from the batch (CEHNC with `adaptive`)."""
        return self.weighting == "distance" and self.adaptive

    def check_batch(self, batch: int) -> None:
        if batch < 1:
            raise ValueError(f"{self.name}: empty batch")
        if batch == 1 and not self.keep_positive:
            raise ValueError(
                f"{self.name} is undefined for batch size 1: the positive is removed from the "
                "denominator and there are no negatives left"
            )


# --------------------------------------------------------------------------- spec builders
# One per loss: the hyperparameters of the public function (same names, no defaults here:
# the public function's signature holds them) → the LossSpec every form uses.
def infonce_spec() -> LossSpec:
    return LossSpec("infonce", keep_positive=True)


def dcl_spec() -> LossSpec:
    return LossSpec("dcl", keep_positive=False)


def hn_nce_spec(beta: float) -> LossSpec:
    return LossSpec("hn_nce", True, "similarity", float(beta), float(beta))


def dhn_nce_spec(beta1: float, beta2: float) -> LossSpec:
    return LossSpec("dhn_nce", False, "similarity", float(beta1), float(beta2))


def cehnc_spec(beta1, beta2, adaptive, adaptive_rule, adaptive_eps, beta_max) -> LossSpec:
    return LossSpec(
        "cehnc", True, "distance", float(beta1), float(beta2), bool(adaptive),
        str(adaptive_rule), float(adaptive_eps), float(beta_max),
    )  # fmt: skip


def siglip_spec() -> LossSpec:
    return LossSpec("siglip", family="sigmoid")


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
    """β_eff from the batch's anchor–negative similarity statistics (stop-gradient), |β_eff| ≤
    `spec.beta_max`.

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
    cap = jnp.asarray(spec.beta_max, mean_s.dtype)
    return jax.lax.stop_gradient(jnp.clip(beta / scale, -cap, cap))


def centred_moments(n: int, m0: Array, e1: Array, e2: Array) -> tuple[Array, Array]:
    """Mean and std of n values x from e1 = Σ(x - m0), e2 = Σ(x - m0)² about a provisional m0.

    The corrected two-pass formula var = (e2 - e1²/n)/n: exact for any m0, and with m0 near the
    mean (e1 ≈ 0) free of the cancellation of E[x²] - E[x]². n is a float: B(B-1) overflows int32.
    """
    n = float(n)
    var = jnp.maximum(e2 - e1 * e1 / n, 0.0) / n
    return m0 + e1 / n, jnp.sqrt(var)


def offdiag_moments(s: Array) -> tuple[Array, Array]:
    """Mean and std of the off-diagonal entries of a (B, B) similarity matrix (stop-gradient)."""
    b = s.shape[0]
    s = jax.lax.stop_gradient(s)
    off = ~jnp.eye(b, dtype=bool)
    n = b * (b - 1)
    m0 = jnp.sum(jnp.where(off, s, 0.0)) / float(n)
    dev = jnp.where(off, s - m0, 0.0)
    return centred_moments(n, m0, jnp.sum(dev), jnp.sum(dev * dev))


def effective_betas(s: Array, spec: LossSpec) -> tuple[Array, Array]:
    """(β_i2t, β_t2i) the dense loss uses on the (B, B) similarity matrix s."""
    return spec_betas(spec, s.dtype, lambda: offdiag_moments(s))


def spec_betas(spec: LossSpec, dtype, moments: Callable[[], tuple[Array, Array]]):
    """(β_i2t, β_t2i): the spec's, or with CEHNC's adaptive rule `adaptive_beta` of `moments()`
    (mean, std of the anchor–negative similarities; computed only then)."""
    if not spec.adaptive_distance:
        return jnp.asarray(spec.beta_i2t, dtype), jnp.asarray(spec.beta_t2i, dtype)
    mean_s, std_s = moments()
    return tuple(adaptive_beta(b, mean_s, std_s, spec) for b in (spec.beta_i2t, spec.beta_t2i))


# --------------------------------------------------------------------------- dense form
def check_pairs(img: Array, txt: Array, spec: LossSpec) -> None:
    """Both `(B, D)` of the same shape, and a batch the loss is defined for."""
    if img.ndim != 2 or img.shape != txt.shape:
        raise ValueError(
            f"{spec.name}: img and txt must both be (B, D), got {img.shape}, {txt.shape}"
        )
    spec.check_batch(img.shape[0])


def dense_loss(img: Array, txt: Array, temperature: Array | float, spec: LossSpec) -> Array:
    """The loss of one (B, D) batch with the full (B, B) similarity matrix in memory."""
    check_pairs(img, txt, spec)
    b = img.shape[0]
    s = similarity(img, txt)
    tau = jnp.asarray(temperature).astype(s.dtype)
    z_pos = jnp.diagonal(s) / tau
    if b == 1:  # positive kept, no negatives: loss is exactly 0 (and finite gradients)
        return jnp.mean(-z_pos + z_pos)
    off = ~jnp.eye(b, dtype=bool)
    total = 0.0
    for mat, beta in zip((s, s.T), effective_betas(s, spec), strict=True):
        x1, x2 = negative_logits(mat, tau, spec, beta)
        l1 = jax.nn.logsumexp(jnp.where(off, x1, -jnp.inf), axis=1)
        l2 = None if x2 is None else jax.nn.logsumexp(jnp.where(off, x2, -jnp.inf), axis=1)
        total = total + jnp.mean(row_loss(z_pos, l1, l2, b - 1, spec))
    return total / 2.0


# --------------------------------------------------------------------------- public losses
def infonce(img: Array, txt: Array, temperature: Array | float) -> Array:
    """Symmetric CLIP loss: mean over rows of -log(e^{z_ii} / Σ_j e^{z_ij}), both directions."""
    return dense_loss(img, txt, temperature, infonce_spec())


def dcl(img: Array, txt: Array, temperature: Array | float) -> Array:
    """Decoupled contrastive loss (Yeh et al. 2022): -log(e^{z_ii} / Σ_{j≠i} e^{z_ij})."""
    return dense_loss(img, txt, temperature, dcl_spec())


def hn_nce(img: Array, txt: Array, temperature: Array | float, beta: float) -> Array:
    """HN-NCE (Radenovic et al. 2023): -log(e^{z_ii} / (e^{z_ii} + Σ_{j≠i} w_ij e^{z_ij})),

    w_ij = (B-1) e^{β z_ij} / Σ_{k≠i} e^{β z_ik}, z = s/τ; the same β in both directions.
    """
    return dense_loss(img, txt, temperature, hn_nce_spec(beta))


def dhn_nce(
    img: Array, txt: Array, temperature: Array | float, beta1: float, beta2: float
) -> Array:
    """DHN-NCE (MedCLIP-SAMv2, paper form): HN-NCE weights, positive removed from the denominator;

    β1 for image→text, β2 for text→image.
    """
    return dense_loss(img, txt, temperature, dhn_nce_spec(beta1, beta2))


def cehnc(
    img: Array,
    txt: Array,
    temperature: Array | float,
    beta1: float,
    beta2: float,
    adaptive: bool = True,
    adaptive_rule: str = "inverse_std",
    adaptive_eps: float = 1e-6,
    beta_max: float = BETA_MAX,
) -> Array:
    """CEHNC (MedZeroSeg): distance-weighted hard negatives, positive kept in the denominator.

    Image→text, anchor i, negatives j≠i, s = img @ txtᵀ, z = s/τ:
      d_ij = sqrt(max(2 - 2 s_ij, 0) + eps)                      (Euclidean, unit vectors)
      w_ij = (B-1) e^{-β1 d_ij} / Σ_{k≠i} e^{-β1 d_ik}           (mean 1; β=0 → uniform)
      loss_i = -log(e^{z_ii} / (e^{z_ii} + Σ_{j≠i} w_ij e^{z_ij}))
    text→image: the same on sᵀ with β2; the two directions are averaged. The weights are
    importance weights (stop-gradient). With `adaptive`, β_k is replaced every batch (under
    stop-gradient) from the mean μ_s and std σ_s (centred two-pass) of all anchor–negative
    similarities s_ij, i≠j: "inverse_std": β_k·sqrt(2 - 2μ_s)/(σ_s + eps) (= β_k/σ_d to first
    order, σ_d the std of the distances), or "inverse_sim_std": β_k/(σ_s + eps); then clipped to
    [-beta_max, beta_max] (a fixed β is used as given).
    """
    spec = cehnc_spec(beta1, beta2, adaptive, adaptive_rule, adaptive_eps, beta_max)
    return dense_loss(img, txt, temperature, spec)


def siglip(img: Array, txt: Array, temperature: Array | float, bias: Array | float) -> Array:
    """SigLIP (Zhai et al. 2023; open_clip `SigLipLoss`): -(1/B) Σ_i Σ_j log σ(y_ij (s_ij/τ + b)),

    y = +1 on the diagonal (the B positives), -1 elsewhere; τ and b are learned (init 0.1, -10).
    """
    spec = siglip_spec()
    check_pairs(img, txt, spec)
    s = similarity(img, txt)
    logits = s / jnp.asarray(temperature).astype(s.dtype) + jnp.asarray(bias).astype(s.dtype)
    labels = 2.0 * jnp.eye(s.shape[0], dtype=s.dtype) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / s.shape[0]
