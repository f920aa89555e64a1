"""Tile kernels and row sweeps shared by the gather and ring global forms (docs/losses.md).

A sweep runs the device's rows, in tiles, against one block of the other side; a kernel says what
each (rows × block) similarity tile adds to the row statistics, column statistics and scalars.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mzs_jax.losses.contrastive import LossSpec, negative_logits, similarity

Array = jax.Array
DEFAULT_TILE = 1024
ds, dus = jax.lax.dynamic_slice_in_dim, jax.lax.dynamic_update_slice_in_dim


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static layout of one global loss: batch axes, devices, global batch, tile edge."""

    axis: tuple[str, ...]
    n_dev: int
    batch: int
    tile: int

    @property
    def local(self) -> int:
        return self.batch // self.n_dev

    @property
    def row_tile(self) -> int:
        return min(self.tile, self.local)

    def varying(self, x: Array) -> Array:
        """A freshly built constant typed as device-varying over the batch axes (scan carries)."""
        return jax.lax.pcast(x, self.axis, to="varying")

    def row0(self) -> Array:
        """Global index of this device's first row."""
        return jax.lax.axis_index(self.axis) * self.local


@dataclasses.dataclass(frozen=True)
class Kernel:
    """`tile(s, rows, cols, valid) -> (row_parts, col_parts, scalars)` for one (R, C) tile:
    row/col parts are (max, Σexp) pairs of log-sum-exps over the valid entries; `n_*` count them."""

    tile: Callable
    n_row: int
    n_col: int
    n_scalar: int


def clamped_tile(k, size: int, total: int) -> tuple[Array, Array]:
    """Start of tile k of `size` in `total`, clamped in bounds, and which of its rows are new
    (not in an earlier tile): no padding copy, the last tile overlaps and masks the overlap."""
    nominal = k * size
    start = jnp.minimum(nominal, total - size)
    return start, start + jnp.arange(size, dtype=jnp.int32) >= nominal


def lse_part(x: Array, axis: int) -> tuple[Array, Array]:
    """(max, Σ exp(x - max)) along `axis`; an all -inf line gives (-inf, 0)."""
    m = jnp.max(x, axis=axis)
    shift = jnp.where(jnp.isfinite(m), m, 0.0)
    return m, jnp.sum(jnp.exp(x - jnp.expand_dims(shift, axis)), axis=axis)


def lse_merge(p, q):
    """Combine two (max, Σexp) partials of the same log-sum-exp."""
    (m1, a1), (m2, a2) = p, q
    m = jnp.maximum(m1, m2)
    shift = jnp.where(jnp.isfinite(m), m, 0.0)
    return m, a1 * jnp.exp(m1 - shift) + a2 * jnp.exp(m2 - shift)


def lse_value(p) -> Array:
    m, a = p
    return jnp.log(a) + jnp.where(jnp.isfinite(m), m, 0.0)


def lse_across(p, axis):
    """A partial per device → the log-sum-exp over the devices of `axis` (pmax + psum)."""
    m, a = p
    gm = jax.lax.pmax(m, axis)
    shift = jnp.where(jnp.isfinite(gm), gm, 0.0)
    return gm, jax.lax.psum(a * jnp.exp(m - shift), axis)


def identity_stats(n_pairs: int, size: int, dtype, plan: Plan):
    """`n_pairs` empty (max, Σexp) partials of length `size`: (-inf, 0)."""
    z = plan.varying(jnp.zeros((size,), dtype))
    return tuple((z - jnp.inf, z) for _ in range(n_pairs))


def merge_at(state, parts, start):
    """Merge per-tile partials into `state` (tuples of (max, Σexp) pairs) at offset `start`."""
    out = []
    for (m, a), part in zip(state, parts, strict=True):
        size = part[0].shape[0]
        nm, na = lse_merge((ds(m, start, size), ds(a, start, size)), part)
        out.append((dus(m, nm, start, 0), dus(a, na, start, 0)))
    return tuple(out)


def _tile_rows(img, k, plan: Plan, col_fresh):
    """Rows of tile k: (start, (R, D) slice, global row indices, (R, C) validity)."""
    start, fresh = clamped_tile(k, plan.row_tile, img.shape[0])
    rows = plan.row0() + start + jnp.arange(plan.row_tile, dtype=jnp.int32)
    return start, ds(img, start, plan.row_tile), rows, fresh[:, None] & col_fresh[None, :]


def sweep_fwd(img, blk, cols, col_fresh, carry, kernel: Kernel, plan: Plan):
    """All row tiles of `img` (B_l, D) against one column block `blk` (C, D), global column
    indices `cols`; carry = (row stats (B_l,), column stats (C,), scalars)."""

    def body(k, carry):
        row_state, col_acc, scalars = carry
        start, x, rows, valid = _tile_rows(img, k, plan, col_fresh)
        r, c, sc = kernel.tile(similarity(x, blk), rows, cols, valid)
        row_state = merge_at(row_state, r, start)
        col_acc = tuple(lse_merge(a, b) for a, b in zip(col_acc, c, strict=True))
        return row_state, col_acc, tuple(a + b for a, b in zip(scalars, sc, strict=True))

    return jax.lax.fori_loop(0, math.ceil(img.shape[0] / plan.row_tile), body, carry)


def sweep_bwd(img, blk, cols, col_fresh, col_res, row_res, carry, grad_tile, tau, plan: Plan):
    """Gradient sweep: carry = (d_img (B_l, D), d_blk (C, D), d_tau, d_bias). `grad_tile` gives
    ∂loss/∂s on a tile (zero where invalid) and that tile's ∂loss/∂bias."""

    def body(k, carry):
        d_img, d_blk, d_tau, d_bias = carry
        start, x, rows, valid = _tile_rows(img, k, plan, col_fresh)
        s = similarity(x, blk)
        res = tuple(ds(r, start, plan.row_tile) for r in row_res)
        g, db = grad_tile(s, rows, cols, valid, res, col_res)
        d_rows = ds(d_img, start, plan.row_tile) + jnp.einsum("rc,cd->rd", g, blk.astype(g.dtype))
        d_blk = d_blk + jnp.einsum("rc,rd->cd", g, x.astype(g.dtype))
        return dus(d_img, d_rows, start, 0), d_blk, d_tau - jnp.sum(g * s) / tau, d_bias + db

    return jax.lax.fori_loop(0, math.ceil(img.shape[0] / plan.row_tile), body, carry)


# --------------------------------------------------------------------------- kernels
def _negatives(rows, cols, valid):
    return valid & (rows[:, None] != cols[None, :])


def softmax_kernel(spec: LossSpec, tau, b1, b2) -> Kernel:
    """Row LSEs L1 (and L2 when weighted) of image→text and column LSEs of text→image."""
    n = 2 if spec.weighted else 1

    def tile(s, rows, cols, valid):
        neg = _negatives(rows, cols, valid)
        xr = negative_logits(s, tau, spec, b1)
        xc = xr if spec.weighting == "none" else negative_logits(s, tau, spec, b2)
        r = tuple(lse_part(jnp.where(neg, x, -jnp.inf), 1) for x in xr[:n])
        c = tuple(lse_part(jnp.where(neg, x, -jnp.inf), 0) for x in xc[:n])
        return r, c, ()

    return Kernel(tile, n, n, 0)


def softmax_grad(spec: LossSpec, tau, b1, b2, scale):
    """∂loss/∂s of both directions from the final LSEs; residuals (L1, L2, q) per row/column,
    q = ∂loss/∂(negative term) of that anchor."""

    def tile(s, rows, cols, valid, row_res, col_res):
        neg = _negatives(rows, cols, valid)
        g = 0.0
        for (l1, l2, q), beta, ax in ((row_res, b1, 1), (col_res, b2, 0)):
            x1, x2 = negative_logits(s, tau, spec, beta)
            p1 = jnp.exp(jnp.where(neg, x1, -jnp.inf) - jnp.expand_dims(l1, ax))
            d = p1
            if spec.weighting == "similarity":  # x1 = (1+β)s/τ, x2 = βs/τ: weights differentiable
                p2 = jnp.exp(jnp.where(neg, x2, -jnp.inf) - jnp.expand_dims(l2, ax))
                d = (1.0 + beta) * p1 - beta * p2
            g = g + jnp.expand_dims(q, ax) * d
        return g * (scale / tau), 0.0

    return tile


def _labels(rows, cols, dtype):
    return jnp.where(rows[:, None] == cols[None, :], 1.0, -1.0).astype(dtype)


def sigmoid_kernel(tau, bias) -> Kernel:
    """Σ over valid pairs of -log σ(y (s/τ + b)), y = +1 on the diagonal."""

    def tile(s, rows, cols, valid):
        y = _labels(rows, cols, s.dtype)
        nll = jax.nn.softplus(-y * (s / tau + bias))
        return (), (), (jnp.sum(jnp.where(valid, nll, 0.0)),)

    return Kernel(tile, 0, 0, 1)


def sigmoid_grad(tau, bias, scale):
    def tile(s, rows, cols, valid, row_res, col_res):
        y = _labels(rows, cols, s.dtype)
        dx = jnp.where(valid, -y * jax.nn.sigmoid(-y * (s / tau + bias)), 0.0) * scale
        return dx / tau, jnp.sum(dx)

    return tile


def moments_kernel(m0) -> Kernel:
    """Σ(s - m0) and Σ(s - m0)² over the off-diagonal pairs (the centred β statistics)."""

    def tile(s, rows, cols, valid):
        dev = jnp.where(_negatives(rows, cols, valid), s - m0, 0.0)
        return (), (), (jnp.sum(dev), jnp.sum(dev * dev))

    return Kernel(tile, 0, 0, 2)
