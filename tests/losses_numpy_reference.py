"""Float64 NumPy references of the contrastive losses, written straight from docs/losses.md."""

from __future__ import annotations

import numpy as np

KINDS = {  # name -> (keep positive in the denominator, weighting)
    "infonce": (True, "none"),
    "dcl": (False, "none"),
    "hn_nce": (True, "similarity"),
    "dhn_nce": (False, "similarity"),
    "cehnc": (True, "distance"),
}


def offdiag_moments(s: np.ndarray) -> tuple[float, float]:
    """Mean and population std of the off-diagonal entries of s (float64, NumPy's two-pass)."""
    off = np.asarray(s, np.float64)[~np.eye(len(s), dtype=bool)]
    return float(off.mean()), float(off.std())


def adaptive_beta(
    s: np.ndarray, beta: float, rule: str = "inverse_std", eps: float = 1e-6, beta_max=50.0
):
    """β_eff from the mean/std of the off-diagonal similarities, clipped to ±beta_max."""
    mu, sd = offdiag_moments(s)
    if rule == "inverse_std":
        b = beta * np.sqrt(max(2 - 2 * mu, 0) + 1e-12) / (sd + eps)
    else:
        b = beta / (sd + eps)
    return float(np.clip(b, -beta_max, beta_max))


def weights(s: np.ndarray, tau: float, kind: str, beta: float) -> np.ndarray:
    """w_ij for anchor rows of s (diagonal entries unused), each row's negatives averaging 1."""
    b = len(s)
    if kind == "none":
        logw = np.zeros_like(s)
    elif kind == "similarity":
        logw = beta * s / tau
    else:
        logw = -beta * np.sqrt(np.maximum(2 - 2 * s, 0) + 1e-12)
    w = np.zeros_like(s)
    for i in range(b):
        neg = [j for j in range(b) if j != i]
        e = np.exp(logw[i, neg])
        w[i, neg] = (b - 1) * e / e.sum()
    return w


def direction(s, tau, keep_pos, w) -> float:
    """Mean over anchors i of -log(e^{z_ii} / (P e^{z_ii} + Σ_{j≠i} w_ij e^{z_ij}))."""
    b = len(s)
    z = s / tau
    out = []
    for i in range(b):
        neg = [j for j in range(b) if j != i]
        num = np.exp(z[i, i])
        den = (num if keep_pos else 0.0) + np.sum(w[i, neg] * np.exp(z[i, neg]))
        out.append(-np.log(num / den))
    return float(np.mean(out))


def loss(
    name,
    img,
    txt,
    tau,
    beta1=0.0,
    beta2=0.0,
    adaptive=False,
    rule="inverse_std",
    frozen=None,
    beta_max=50.0,
):
    """The loss `name`; `frozen=(w_i2t, w_t2i)` holds the weights fixed (stop-gradient)."""
    keep_pos, kind = KINDS[name]
    s = img @ txt.T
    if frozen is None:
        frozen = frozen_weights(name, img, txt, tau, beta1, beta2, adaptive, rule, beta_max)
    return 0.5 * (direction(s, tau, keep_pos, frozen[0]) + direction(s.T, tau, keep_pos, frozen[1]))


def frozen_weights(
    name, img, txt, tau, beta1, beta2, adaptive=False, rule="inverse_std", beta_max=50.0
):
    _, kind = KINDS[name]
    s = img @ txt.T
    if adaptive:
        beta1 = adaptive_beta(s, beta1, rule, beta_max=beta_max)
        beta2 = adaptive_beta(s, beta2, rule, beta_max=beta_max)
    return weights(s, tau, kind, beta1), weights(s.T, tau, kind, beta2)


def siglip(img, txt, tau, bias) -> float:
    """-(1/B) Σ_ij log σ(y_ij (s_ij/τ + b)), y = +1 on the diagonal, -1 elsewhere."""
    s = img @ txt.T
    y = 2 * np.eye(len(s)) - 1
    return float(np.sum(np.logaddexp(0.0, -y * (s / tau + bias))) / len(s))


def numeric_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of scalar f at x (float64)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
