"""Gather form of the global loss: each device all-gathers the other side (B, D) and sweeps it.

Column statistics are partial over the device's rows and combined across devices (pmax + psum);
the gradient of the gathered side is reduce-scattered home. Memory O(B × D) per device.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mzs_jax.losses import streaming as st
from mzs_jax.losses.contrastive import acc_dtype

ds, dus = st.ds, st.dus


def prepare(txt, plan: st.Plan):
    """The column side every device sweeps: the whole gathered batch."""
    return jax.lax.all_gather(txt, plan.axis, tiled=True)


def forward(img, other, kernel: st.Kernel, plan: st.Plan):
    """(row stats of the local rows, complete column stats of the local columns, local scalars)."""
    dt, n_cols = acc_dtype(img), other.shape[0]
    tile = min(plan.tile, n_cols)
    init = (
        st.identity_stats(kernel.n_row, img.shape[0], dt, plan),
        st.identity_stats(kernel.n_col, n_cols, dt, plan),
        tuple(plan.varying(jnp.zeros((), dt)) for _ in range(kernel.n_scalar)),
    )

    def body(j, carry):
        row_state, col_state, scalars = carry
        start, fresh = st.clamped_tile(j, tile, n_cols)
        cols = start + jnp.arange(tile, dtype=jnp.int32)
        col_acc = tuple((ds(m, start, tile), ds(a, start, tile)) for m, a in col_state)
        row_state, col_acc, scalars = st.sweep_fwd(
            img, ds(other, start, tile), cols, fresh, (row_state, col_acc, scalars), kernel, plan
        )
        col_state = tuple(
            (dus(m, cm, start, 0), dus(a, ca, start, 0))
            for (m, a), (cm, ca) in zip(col_state, col_acc, strict=True)
        )
        return row_state, col_state, scalars

    row_state, col_state, scalars = jax.lax.fori_loop(0, math.ceil(n_cols / tile), body, init)
    row0 = plan.row0()
    col_local = tuple(
        (ds(m, row0, plan.local), ds(a, row0, plan.local))
        for m, a in (st.lse_across(p, plan.axis) for p in col_state)
    )
    return row_state, col_local, scalars


def backward(img, other, tau, row_res, col_res, grad_tile, plan: st.Plan):
    """(d_img, d_txt of the local rows, local d_tau, local d_bias)."""
    dt, n_cols, d = acc_dtype(img), other.shape[0], img.shape[1]
    tile = min(plan.tile, n_cols)
    col_res = tuple(jax.lax.all_gather(r, plan.axis, tiled=True) for r in col_res)
    zero = plan.varying(jnp.zeros((), dt))
    init = (plan.varying(jnp.zeros(img.shape, dt)), plan.varying(jnp.zeros((n_cols, d), dt)))

    def body(j, carry):
        d_img, d_all, d_tau, d_bias = carry
        start, fresh = st.clamped_tile(j, tile, n_cols)
        cols = start + jnp.arange(tile, dtype=jnp.int32)
        blk_res = tuple(ds(r, start, tile) for r in col_res)
        d_img, d_blk, d_tau, d_bias = st.sweep_bwd(
            img, ds(other, start, tile), cols, fresh, blk_res, row_res,
            (d_img, plan.varying(jnp.zeros((tile, d), dt)), d_tau, d_bias), grad_tile, tau, plan,
        )  # fmt: skip
        return d_img, dus(d_all, ds(d_all, start, tile) + d_blk, start, 0), d_tau, d_bias

    d_img, d_all, d_tau, d_bias = jax.lax.fori_loop(
        0, math.ceil(n_cols / tile), body, (*init, zero, zero)
    )
    d_txt = jax.lax.psum_scatter(d_all, plan.axis, scatter_dimension=0, tiled=True)
    return d_img, d_txt, d_tau, d_bias
