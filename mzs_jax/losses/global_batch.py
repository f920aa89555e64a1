"""Global-batch contrastive losses on a device mesh, streamed without a B×B matrix (docs/losses.md).

Each device keeps its B_local anchors, all-gathers the other side (B, D) and scans column blocks
with an online log-sum-exp; the scan body is rematerialised, so memory is O(B_local × block + B×D).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mzs_jax.losses.contrastive import (
    LossSpec,
    acc_dtype,
    adaptive_beta,
    make_spec,
    moments_from_sums,
    negative_logits,
    similarity,
)

Array = jax.Array
DEFAULT_BLOCK = 1024


def _blocks(other: Array, block: int, n_blocks: int) -> tuple[Array, Array]:
    """Pad the gathered (B, D) side to n_blocks*block rows and split it into (n, block, D)."""
    pad = n_blocks * block - other.shape[0]
    other = jnp.pad(other, ((0, pad), (0, 0)))
    starts = jnp.arange(n_blocks, dtype=jnp.int32) * block
    return other.reshape(n_blocks, block, other.shape[1]), starts


def _masked_terms(s, rows, start, tau, spec, beta1, beta2, batch):
    """Masked x1/x2 of both directions for one (B_local, block) similarity block."""
    cols = start + jnp.arange(s.shape[1], dtype=jnp.int32)
    valid = (cols[None, :] < batch) & (cols[None, :] != rows[:, None])
    out = []
    for beta in (beta1, beta2):
        x1, x2 = negative_logits(s, tau, spec, beta)
        out.append(jnp.where(valid, x1, -jnp.inf))
        out.append(None if x2 is None else jnp.where(valid, x2, -jnp.inf))
    return out  # [x1_i2t, x2_i2t, x1_t2i, x2_t2i]


def _row_update(m, acc, x):
    """One step of a streaming row log-sum-exp (the running max m is only a shift)."""
    m_new = jnp.maximum(m, jnp.max(x, axis=1))
    shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    return m_new, acc * jnp.exp(m - shift) + jnp.sum(jnp.exp(x - shift[:, None]), axis=1)


def _col_partial(x):
    """Per-column (max, Σ exp(x - max)) over the local rows of a block."""
    m = jnp.max(x, axis=0)
    shift = jnp.where(jnp.isfinite(m), m, 0.0)
    return m, jnp.sum(jnp.exp(x - shift[None, :]), axis=0)


def _lse(m, acc):
    return jnp.log(acc) + jnp.where(jnp.isfinite(m), m, 0.0)


def _col_lse(m, acc, axis):
    """Combine per-device partial column LSEs (B_pad,) into the global one."""
    gm = jax.lax.pmax(m, axis)
    shift = jnp.where(jnp.isfinite(gm), gm, 0.0)
    return _lse(gm, jax.lax.psum(acc * jnp.exp(m - shift), axis))


def _neg_term(l1, l2, n_neg):
    return l1 if l2 is None else math.log(n_neg) + l1 - l2


def _stats(img, txt_blocks, starts, rows, tau, b1, b2, spec, batch, axis):
    """Streaming pass over column blocks: row LSEs (image→text) and column LSEs (text→image)."""
    weighted = spec.weighted

    def body(carry, xs):
        blk, start = xs
        x = _masked_terms(similarity(img, blk), rows, start, tau, spec, b1, b2, batch)
        r1 = _row_update(carry[0], carry[1], x[0])
        r2 = _row_update(carry[2], carry[3], x[1]) if weighted else carry[2:]
        c1 = _col_partial(x[2])
        c2 = _col_partial(x[3]) if weighted else c1
        return (*r1, *r2), (*c1, *c2)

    zeros = jnp.zeros_like(img[:, 0], dtype=acc_dtype(img))
    init = (zeros - jnp.inf, zeros, zeros - jnp.inf, zeros)
    (m1, a1, m2, a2), cols = jax.lax.scan(body, init, (txt_blocks, starts))
    cols = [c.reshape(-1)[:batch] for c in cols]
    row = (_lse(m1, a1), _lse(m2, a2) if weighted else None)
    col = (_col_lse(cols[0], cols[1], axis), _col_lse(cols[2], cols[3], axis) if weighted else None)
    return row, col


def _split(z_pos, neg, spec):
    """(row loss, q = ∂loss/∂neg, ∂loss/∂z_pos) of loss = -z + log(P e^z + e^neg)."""
    if spec.keep_positive:
        p_pos = jax.nn.sigmoid(z_pos - neg)
        return -z_pos + jnp.logaddexp(z_pos, neg), 1.0 - p_pos, p_pos - 1.0
    return neg - z_pos, jnp.ones_like(z_pos), -jnp.ones_like(z_pos)


def _block_grad(s, x, row_l, col_l, q_r, q_c, tau, spec, b1, b2):
    """∂loss/∂s on one block from both directions, given the final LSEs (masked entries give 0)."""
    g = 0.0
    for (x1, x2), (l1, l2), q, beta, ax in (
        ((x[0], x[1]), row_l, q_r, b1, 1),
        ((x[2], x[3]), col_l, q_c, b2, 0),
    ):
        expand = (lambda v: v[:, None]) if ax == 1 else (lambda v: v[None, :])  # noqa: B023
        p1 = jnp.exp(x1 - expand(l1))
        if spec.weighting == "similarity":  # x1 = (1+β)s/τ, x2 = βs/τ (weights differentiable)
            d = (1.0 + beta) * p1 - beta * jnp.exp(x2 - expand(l2))
        else:  # x1 = s/τ (+ stop-gradient distance term)
            d = p1
        g = g + expand(q) * d / tau
    return g


def _global_sum(img, txt, tau, b1, b2, spec, batch, block, axis):
    """Σ over local rows of both directions' row losses, psum'd, / 2B; custom VJP below."""
    return _global_fwd(img, txt, tau, b1, b2, spec, batch, block, axis)[0]


def _prepare(img, txt, axis, block, batch):
    rows = jax.lax.axis_index(axis) * img.shape[0] + jnp.arange(img.shape[0], dtype=jnp.int32)
    n_blocks = math.ceil(batch / block)
    txt_blocks, starts = _blocks(jax.lax.all_gather(txt, axis, tiled=True), block, n_blocks)
    return rows, txt_blocks, starts


def _global_fwd(img, txt, tau, b1, b2, spec, batch, block, axis):
    rows, txt_blocks, starts = _prepare(img, txt, axis, block, batch)
    dt = acc_dtype(img)
    z_pos = jnp.sum(img.astype(dt) * txt.astype(dt), axis=1) / tau
    row_l, col_l = _stats(img, txt_blocks, starts, rows, tau, b1, b2, spec, batch, axis)
    local_col = tuple(
        None if c is None else jax.lax.dynamic_slice_in_dim(c, rows[0], img.shape[0]) for c in col_l
    )
    loss_r, q_r, dz_r = _split(z_pos, _neg_term(*row_l, batch - 1), spec)
    loss_c, q_c_local, dz_c = _split(z_pos, _neg_term(*local_col, batch - 1), spec)
    total = jax.lax.psum(jnp.sum(loss_r + loss_c), axis) / (2.0 * batch)
    # q of every column anchor (text→image) is needed by every device's backward.
    q_c = jax.lax.all_gather(q_c_local, axis, tiled=True)
    return total, (img, txt, tau, b1, b2, row_l, col_l, q_r, q_c, dz_r + dz_c, z_pos)


def _global_bwd(spec, batch, block, axis, res, ct):
    img, txt, tau, b1, b2, row_l, col_l, q_r, q_c, dz_pos, z_pos = res
    rows, txt_blocks, starts = _prepare(img, txt, axis, block, batch)
    scale = ct / (2.0 * batch)
    q_c = jnp.pad(q_c, (0, starts.shape[0] * block - batch)).reshape(-1, block)
    col_blocks = [
        None if c is None else jnp.pad(c, (0, q_c.size - batch)).reshape(-1, block) for c in col_l
    ]

    def body(carry, xs):
        d_img, d_tau = carry
        blk, start, qc, lc1, lc2 = xs
        s = similarity(img, blk)
        x = _masked_terms(s, rows, start, tau, spec, b1, b2, batch)
        g = _block_grad(s, x, row_l, (lc1, lc2), q_r, qc, tau, spec, b1, b2) * scale
        d_img = d_img + jnp.einsum("rc,cd->rd", g, blk.astype(g.dtype))
        d_tau = d_tau - jnp.sum(g * s) / tau
        return (d_img, d_tau), jnp.einsum("rc,rd->cd", g, img.astype(g.dtype))

    dt = acc_dtype(img)
    init = (jnp.zeros_like(img, dtype=dt), jnp.zeros((), dt) * q_r[0])
    xs = (txt_blocks, starts, q_c, col_blocks[0], col_blocks[1])
    (d_img, d_tau), d_txt_all = jax.lax.scan(body, init, xs)
    d_txt_all = d_txt_all.reshape(-1, img.shape[1])[:batch]
    d_txt = jax.lax.psum_scatter(d_txt_all, axis, scatter_dimension=0, tiled=True)
    g_pos = dz_pos / tau * scale  # the positives s_ii, from both directions
    d_img = d_img + g_pos[:, None] * txt.astype(dt)
    d_txt = d_txt + g_pos[:, None] * img.astype(dt)
    d_tau = jax.lax.psum(d_tau - jnp.sum(g_pos * z_pos), axis)
    zb = jnp.zeros_like(b1), jnp.zeros_like(b2)
    return (d_img.astype(img.dtype), d_txt.astype(txt.dtype), d_tau.astype(tau.dtype), *zb)


_global_sum = jax.custom_vjp(_global_sum, nondiff_argnums=(5, 6, 7, 8))
_global_sum.defvjp(_global_fwd, _global_bwd)


def _local_loss(img, txt, tau, *, spec: LossSpec, batch: int, block: int, axis: str):
    """Per-device body: returns the global loss (psum over `axis`), the same on every device."""
    dt = acc_dtype(img)
    tau = tau.astype(dt)
    if batch == 1:
        z_pos = jnp.sum(img.astype(dt) * txt.astype(dt), axis=1) / tau
        return jax.lax.psum(jnp.sum(-z_pos + z_pos), axis)
    b1 = jnp.asarray(spec.beta_i2t, dt)
    b2 = jnp.asarray(spec.beta_t2i, dt)
    if spec.weighting == "distance" and spec.adaptive:
        mean_s, std_s = _similarity_moments(img, txt, batch, axis)
        b1 = adaptive_beta(spec.beta_i2t, mean_s, std_s, spec)
        b2 = adaptive_beta(spec.beta_t2i, mean_s, std_s, spec)
    return _global_sum(img, txt, tau, b1, b2, spec, batch, block, axis)


def _similarity_moments(img, txt, batch, axis):
    """Mean/std of all off-diagonal s_ij from D×D Gram sums, O(B·D²) instead of O(B²·D):

    Σ_ij s_ij = (Σ_i img_i)·(Σ_j txt_j), Σ_ij s_ij² = ||img txtᵀ||_F² = <imgᵀimg, txtᵀtxt>_F;
    the diagonal is subtracted.
    """
    img, txt = jax.lax.stop_gradient(img), jax.lax.stop_gradient(txt)
    dt = acc_dtype(img)
    diag = jnp.sum(img.astype(dt) * txt.astype(dt), axis=1)
    grams = tuple(jnp.einsum("bd,be->de", x, x, preferred_element_type=dt) for x in (img, txt))
    sums = jnp.sum(img, axis=0, dtype=dt), jnp.sum(txt, axis=0, dtype=dt)
    g_img, g_txt, s_img, s_txt, d1, d2 = jax.lax.psum(
        (*grams, *sums, jnp.sum(diag), jnp.sum(diag * diag)), axis
    )
    s1 = jnp.dot(s_img, s_txt) - d1
    s2 = jnp.sum(g_img * g_txt) - d2
    return moments_from_sums(batch * (batch - 1), s1, s2)


def _auto_mesh(mesh: Mesh) -> Mesh:
    """The same devices and axis names with Auto axis types (for inputs not typed on a mesh)."""
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _explicitly_typed(x: Array) -> bool:
    """True when x carries an Explicit-mesh sharding in its type (jax.sharding explicit mode)."""
    m = jax.typeof(x).sharding.mesh
    return not m.empty and AxisType.Explicit in m.axis_types


def make_global_loss(
    name: str, mesh: Mesh, *, axis: str = "data", block_size: int | None = None, **hparams
):
    """`fn(img, txt, temperature) -> scalar` for (B, D) embeddings sharded on B over `axis`.

    Equal in value and gradient to `get_loss(name)(img, txt, temperature, **hparams)` on the
    gathered batch. No device holds more than a (B/n, block) slice of the similarity matrix.
    B need not be a multiple of `block_size` (the last block is padded and masked), but it must
    be a multiple of the mesh axis size. `block_size=None` → min(B, 1024).
    """
    spec = make_spec(name, **hparams)
    if axis not in mesh.shape:
        raise ValueError(f"mesh has no axis {axis!r} (axes: {tuple(mesh.shape)})")
    if block_size is not None and int(block_size) < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    n_dev = mesh.shape[axis]

    auto_mesh = _auto_mesh(mesh)

    @jax.jit
    def inner(img: Array, txt: Array, temperature: Array) -> Array:
        if img.ndim != 2 or img.shape != txt.shape:
            raise ValueError(
                f"{name}: img and txt must both be (B, D), got {img.shape}, {txt.shape}"
            )
        batch = img.shape[0]
        spec.check_batch(batch)
        if batch % n_dev:
            raise ValueError(
                f"{name}: global batch {batch} is not a multiple of mesh axis {axis!r} size {n_dev}"
            )
        block = min(batch, int(block_size) if block_size else DEFAULT_BLOCK)
        body = functools.partial(_local_loss, spec=spec, batch=batch, block=block, axis=axis)
        tau = jnp.asarray(temperature).astype(acc_dtype(img))
        if _explicitly_typed(img) or _explicitly_typed(txt):
            # Explicit sharding mode: the arrays' types must carry the batch sharding.
            use_mesh = mesh
            img, txt = (jax.sharding.reshard(x, NamedSharding(mesh, P(axis))) for x in (img, txt))
            tau = jax.sharding.reshard(tau, NamedSharding(mesh, P()))
        else:
            use_mesh = auto_mesh
            img, txt = (
                jax.lax.with_sharding_constraint(x, NamedSharding(auto_mesh, P(axis)))
                for x in (img, txt)
            )
        sharded = jax.shard_map(
            body, mesh=use_mesh, in_specs=(P(axis), P(axis), P()), out_specs=P()
        )
        return sharded(img, txt, tau)

    return inner
