"""Ring form of the global loss: the other side's blocks travel round the devices (ppermute).

Each device keeps its B_l rows of both sides. A block of C text rows leaves home, visits every
device (which sweeps its rows against it) and comes home; its column statistics (forward) and
its gradient (backward) travel with it. No device holds more than B_l × D of either side.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mzs_jax.losses import streaming as st
from mzs_jax.losses.contrastive import acc_dtype

ds, dus = st.ds, st.dus


def prepare(txt, plan: st.Plan):
    """The column side: the device's own rows (they travel during the sweep)."""
    return txt


def _shift(x, plan: st.Plan):
    """Send to the next device on the ring (device k receives from k - 1)."""
    if not jax.tree.leaves(x):
        return x
    n = plan.n_dev
    return jax.lax.ppermute(x, plan.axis, perm=[(k, (k + 1) % n) for k in range(n)])


def _visit_cols(t, start, tile, plan: st.Plan):
    """Global column indices of the block that started at `start` on device (me - t)."""
    owner = (jax.lax.axis_index(plan.axis) - t) % plan.n_dev
    return owner * plan.local + start + jnp.arange(tile, dtype=jnp.int32)


def forward(img, txt, kernel: st.Kernel, plan: st.Plan):
    """(row stats of the local rows, complete column stats of the local columns, local scalars)."""
    dt, tile = acc_dtype(img), min(plan.tile, plan.local)
    init = (
        st.identity_stats(kernel.n_row, plan.local, dt, plan),
        st.identity_stats(kernel.n_col, plan.local, dt, plan),
        tuple(plan.varying(jnp.zeros((), dt)) for _ in range(kernel.n_scalar)),
    )

    def chunk(j, carry):
        row_state, col_state, scalars = carry
        start, fresh = st.clamped_tile(j, tile, plan.local)

        def visit(t, blk, col_acc, row_state, scalars):
            cols = _visit_cols(t, start, tile, plan)
            return st.sweep_fwd(img, blk, cols, fresh, (row_state, col_acc, scalars), kernel, plan)

        def step(t, c):
            blk, col_acc, row_state, scalars = c
            row_state, col_acc, scalars = visit(t, blk, col_acc, row_state, scalars)
            blk, col_acc = _shift((blk, col_acc), plan)
            return blk, col_acc, row_state, scalars

        c = (ds(txt, start, tile), st.identity_stats(kernel.n_col, tile, dt, plan))
        blk, col_acc, row_state, scalars = jax.lax.fori_loop(
            0, plan.n_dev - 1, step, (*c, row_state, scalars)
        )
        row_state, col_acc, scalars = visit(plan.n_dev - 1, blk, col_acc, row_state, scalars)
        col_acc = _shift(col_acc, plan)  # the block's statistics come home; the block is here
        return row_state, st.merge_at(col_state, col_acc, start), scalars

    return jax.lax.fori_loop(0, math.ceil(plan.local / tile), chunk, init)


def backward(img, txt, tau, row_res, col_res, grad_tile, plan: st.Plan):
    """(d_img, d_txt of the local rows, local d_tau, local d_bias)."""
    dt, tile, d = acc_dtype(img), min(plan.tile, plan.local), img.shape[1]
    zero = plan.varying(jnp.zeros((), dt))
    init = (plan.varying(jnp.zeros(img.shape, dt)), plan.varying(jnp.zeros(img.shape, dt)))

    def chunk(j, carry):
        d_img, d_txt, d_tau, d_bias = carry
        start, fresh = st.clamped_tile(j, tile, plan.local)

        def visit(t, blk, blk_res, acc):
            cols = _visit_cols(t, start, tile, plan)
            return st.sweep_bwd(img, blk, cols, fresh, blk_res, row_res, acc, grad_tile, tau, plan)

        def step(t, c):
            blk, blk_res, acc = c
            acc = visit(t, blk, blk_res, acc)
            blk, blk_res, d_blk = _shift((blk, blk_res, acc[1]), plan)
            return blk, blk_res, (acc[0], d_blk, acc[2], acc[3])

        blk_res = tuple(ds(r, start, tile) for r in col_res)
        acc = (d_img, plan.varying(jnp.zeros((tile, d), dt)), d_tau, d_bias)
        blk, blk_res, acc = jax.lax.fori_loop(
            0, plan.n_dev - 1, step, (ds(txt, start, tile), blk_res, acc)
        )
        d_img, d_blk, d_tau, d_bias = visit(plan.n_dev - 1, blk, blk_res, acc)
        d_blk = _shift(d_blk, plan)  # the block's gradient is delivered home
        return d_img, dus(d_txt, ds(d_txt, start, tile) + d_blk, start, 0), d_tau, d_bias

    return jax.lax.fori_loop(0, math.ceil(plan.local / tile), chunk, (*init, zero, zero))
