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
    distance_sums,
    make_spec,
    moments_from_sums,
    negative_logits,
    row_loss,
    similarity,
)

Array = jax.Array
DEFAULT_BLOCK = 1024


def _online_lse(m: Array, acc: Array, x: Array) -> tuple[Array, Array]:
    """One step of a streaming log-sum-exp over axis 1 of x (R, C); -inf entries are masked.

    The running max m is a shift only (stop-gradient): LSE does not depend on it, so gradients
    flow through `acc` alone and stay exact.
    """
    m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(x, axis=1)))
    shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    acc = acc * jnp.exp(m - shift) + jnp.sum(jnp.exp(x - shift[:, None]), axis=1)
    return m_new, acc


def _finish_lse(m: Array, acc: Array) -> Array:
    return jnp.log(acc) + jnp.where(jnp.isfinite(m), m, 0.0)


def _blocks(other: Array, block: int, n_blocks: int) -> tuple[Array, Array]:
    """Pad the gathered (B, D) side to n_blocks*block rows and split it into (n, block, D)."""
    pad = n_blocks * block - other.shape[0]
    other = jnp.pad(other, ((0, pad), (0, 0)))
    starts = jnp.arange(n_blocks, dtype=jnp.int32) * block
    return other.reshape(n_blocks, block, other.shape[1]), starts


def _valid(rows: Array, starts: Array, block: int, batch: int) -> Array:
    cols = starts + jnp.arange(block, dtype=jnp.int32)
    return (cols[None, :] < batch) & (cols[None, :] != rows[:, None])


def _distance_moments(anchor, other_blocks, starts, rows, spec, batch, axis):
    """First streaming pass: mean/std of all anchor–negative distances of the global batch."""

    def body(carry, xs):
        blk, start = xs
        s = jax.lax.stop_gradient(similarity(anchor, blk))
        s1, s2 = distance_sums(s, _valid(rows, start, blk.shape[0], batch), spec.dist_eps)
        return (carry[0] + s1, carry[1] + s2), None

    dt = acc_dtype(anchor)
    zero = jnp.zeros((), dt) + 0.0 * jnp.sum(rows).astype(dt)
    (s1, s2), _ = jax.lax.scan(body, (zero, zero), (other_blocks, starts))
    s1, s2 = jax.lax.psum((s1, s2), axis)
    return moments_from_sums(batch * (batch - 1), s1, s2)


def _direction_sum(anchor, other_blocks, starts, rows, tau, beta, spec, batch):
    """Σ over the local anchor rows of the directional loss, streaming over column blocks."""
    block = other_blocks.shape[1]

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def body(carry, xs):
        m1, a1, m2, a2 = carry
        blk, start = xs
        valid = _valid(rows, start, block, batch)
        x1, x2 = negative_logits(similarity(anchor, blk), tau, spec, beta)
        m1, a1 = _online_lse(m1, a1, jnp.where(valid, x1, -jnp.inf))
        if x2 is not None:
            m2, a2 = _online_lse(m2, a2, jnp.where(valid, x2, -jnp.inf))
        return (m1, a1, m2, a2), None

    # Carries derived from `anchor` so that they vary over the mesh axis like the body's output.
    zeros = jnp.zeros_like(anchor[:, 0], dtype=acc_dtype(anchor))
    init = (zeros - jnp.inf, zeros, zeros - jnp.inf, zeros)
    (m1, a1, m2, a2), _ = jax.lax.scan(body, init, (other_blocks, starts))
    l1 = _finish_lse(m1, a1)
    l2 = _finish_lse(m2, a2) if spec.weighted else None
    return l1, l2


def _local_loss(img, txt, tau, *, spec: LossSpec, batch: int, block: int, axis: str):
    """Per-device body: returns the global loss (psum over `axis`), same on every device."""
    b_local = img.shape[0]
    rows = jax.lax.axis_index(axis) * b_local + jnp.arange(b_local, dtype=jnp.int32)
    dt = acc_dtype(img)
    tau = tau.astype(dt)
    z_pos = jnp.sum(img.astype(dt) * txt.astype(dt), axis=1) / tau
    if batch == 1:
        return jax.lax.psum(jnp.sum(-z_pos + z_pos), axis)
    n_blocks = math.ceil(batch / block)
    txt_blocks, starts = _blocks(jax.lax.all_gather(txt, axis, tiled=True), block, n_blocks)
    img_blocks, _ = _blocks(jax.lax.all_gather(img, axis, tiled=True), block, n_blocks)
    beta1, beta2 = spec.beta_i2t, spec.beta_t2i
    if spec.weighting == "distance" and spec.adaptive:
        mean_d, std_d = _distance_moments(img, txt_blocks, starts, rows, spec, batch, axis)
        beta1 = adaptive_beta(beta1, mean_d, std_d, spec)
        beta2 = adaptive_beta(beta2, mean_d, std_d, spec)
    total = 0.0
    for anchor, other, beta in ((img, txt_blocks, beta1), (txt, img_blocks, beta2)):
        l1, l2 = _direction_sum(anchor, other, starts, rows, tau, beta, spec, batch)
        total = total + jnp.sum(row_loss(z_pos, l1, l2, batch - 1, spec))
    return jax.lax.psum(total, axis) / (2.0 * batch)


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
