"""Global-batch losses on a device mesh: the dense loss's values and gradients on the whole batch,
streamed in tiles (never B×B), in the gather or the ring form (docs/losses.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mzs_jax.losses import gather, ring
from mzs_jax.losses import streaming as st
from mzs_jax.losses.config import with_bias_check
from mzs_jax.losses.contrastive import LossSpec, acc_dtype, centred_moments, check_pairs, spec_betas
from mzs_jax.losses.registry import make_spec

Array = jax.Array
FORMS = {"gather": gather, "ring": ring}


@dataclasses.dataclass(frozen=True)
class _Ctx:
    spec: LossSpec
    plan: st.Plan
    ops: object  # the form's module, `gather` or `ring` (a value of FORMS)


def _positives(img, txt, tau):
    dt = acc_dtype(img)
    return jnp.sum(img.astype(dt) * txt.astype(dt), axis=1) / tau


def _split(z_pos, neg, spec):
    """(row loss, q = ∂loss/∂neg, ∂loss/∂z_pos) of loss = -z + log(P e^z + e^neg)."""
    if spec.keep_positive:
        p_pos = jax.nn.sigmoid(z_pos - neg)
        return -z_pos + jnp.logaddexp(z_pos, neg), 1.0 - p_pos, p_pos - 1.0
    return neg - z_pos, jnp.ones_like(z_pos), -jnp.ones_like(z_pos)


def _moments(img, txt, src, ctx: _Ctx):
    """Mean and std of all off-diagonal s_ij (stop-gradient): a provisional mean from the
    column sums (Σ_ij s_ij = Σimg · Σtxt − Σ_i s_ii), then one streamed centred pass."""
    img, txt, src = jax.lax.stop_gradient((img, txt, src))
    plan, dt = ctx.plan, acc_dtype(img)
    diag = jnp.sum(img.astype(dt) * txt.astype(dt), axis=1)
    s_img, s_txt, d1 = jax.lax.psum(
        (jnp.sum(img, axis=0, dtype=dt), jnp.sum(txt, axis=0, dtype=dt), jnp.sum(diag)), plan.axis
    )
    n = plan.batch * (plan.batch - 1)
    m0 = (jnp.dot(s_img, s_txt) - d1) / float(n)
    _, _, sums = ctx.ops.forward(img, src, st.moments_kernel(m0), plan)
    e1, e2 = jax.lax.psum(sums, plan.axis)
    return centred_moments(n, m0, e1, e2)


def _softmax_fwd(img, txt, tau, ctx: _Ctx):
    spec, plan = ctx.spec, ctx.plan
    src = ctx.ops.prepare(txt, plan)
    b1, b2 = spec_betas(spec, acc_dtype(img), lambda: _moments(img, txt, src, ctx))
    rows, cols, _ = ctx.ops.forward(img, src, st.softmax_kernel(spec, tau, b1, b2), plan)
    z_pos = _positives(img, txt, tau)
    total, residuals, dz_pos = 0.0, [], 0.0
    for stats in (rows, cols):  # image→text anchors (rows), text→image anchors (columns)
        l1 = st.lse_value(stats[0])
        l2 = st.lse_value(stats[1]) if spec.weighted else l1
        neg = l1 + (math.log(plan.batch - 1) - l2 if spec.weighted else 0.0)
        loss, q, dz = _split(z_pos, neg, spec)
        total, dz_pos = total + jnp.sum(loss), dz_pos + dz
        residuals.append((l1, l2, q))
    total = jax.lax.psum(total, plan.axis) / (2.0 * plan.batch)
    return total, (b1, b2, *residuals, dz_pos, z_pos)


def _softmax_bwd(img, txt, tau, res, ct, ctx: _Ctx):
    b1, b2, row_res, col_res, dz_pos, z_pos = res
    spec, plan, dt = ctx.spec, ctx.plan, acc_dtype(img)
    scale = ct / (2.0 * plan.batch)
    grad_tile = st.softmax_grad(spec, tau, b1, b2, scale)
    src = ctx.ops.prepare(txt, plan)
    d_img, d_txt, d_tau, _ = ctx.ops.backward(img, src, tau, row_res, col_res, grad_tile, plan)
    g_pos = dz_pos * scale / tau  # the positives s_ii, from both directions
    d_img = d_img + g_pos[:, None] * txt.astype(dt)
    d_txt = d_txt + g_pos[:, None] * img.astype(dt)
    return d_img, d_txt, d_tau - jnp.sum(g_pos * z_pos)


def _loss_fwd(img, txt, tau, bias, ctx: _Ctx):
    if ctx.spec.learned_bias:
        src = ctx.ops.prepare(txt, ctx.plan)
        _, _, (nll,) = ctx.ops.forward(img, src, st.sigmoid_kernel(tau, bias), ctx.plan)
        total, res = jax.lax.psum(nll, ctx.plan.axis) / ctx.plan.batch, ()
    else:
        total, res = _softmax_fwd(img, txt, tau, ctx)
    return total, (img, txt, tau, bias, res)


def _loss_bwd(ctx: _Ctx, residuals, ct):
    img, txt, tau, bias, res = residuals
    axis = ctx.plan.axis
    if ctx.spec.learned_bias:
        grad_tile = st.sigmoid_grad(tau, bias, ct / ctx.plan.batch)
        src = ctx.ops.prepare(txt, ctx.plan)
        d_img, d_txt, d_tau, d_bias = ctx.ops.backward(img, src, tau, (), (), grad_tile, ctx.plan)
        d_bias = jax.lax.psum(d_bias, axis)
    else:
        d_img, d_txt, d_tau = _softmax_bwd(img, txt, tau, res, ct, ctx)
        d_bias = jnp.zeros_like(bias)
    return (
        d_img.astype(img.dtype),
        d_txt.astype(txt.dtype),
        jax.lax.psum(d_tau, axis).astype(tau.dtype),
        d_bias.astype(bias.dtype),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _global_loss(img, txt, tau, bias, ctx: _Ctx):
    """The loss (psum'd, the same on every device); hand-written VJP below."""
    return _loss_fwd(img, txt, tau, bias, ctx)[0]


_global_loss.defvjp(_loss_fwd, _loss_bwd)


def _local_loss(img, txt, tau, bias, *, ctx: _Ctx):
    """Per-device body under shard_map."""
    if ctx.plan.batch == 1 and not ctx.spec.learned_bias:  # positive kept, no negatives: 0
        z_pos = _positives(img, txt, tau)
        return jax.lax.psum(jnp.sum(-z_pos + z_pos), ctx.plan.axis)
    return _global_loss(img, txt, tau, bias, ctx)


# --------------------------------------------------------------------------- mesh plumbing
def _explicitly_typed(x: Array) -> bool:
    """True when x carries an Explicit-mesh sharding in its type (jax.sharding explicit mode)."""
    m = jax.typeof(x).sharding.mesh
    return not m.empty and AxisType.Explicit in m.axis_types


def _on_mesh(mesh: Mesh, axes, body, out_specs, img, txt, *scalars):
    """Run `body(img, txt, *scalars)` under shard_map, rows of img/txt sharded over `axes`.

    Explicit-typed inputs are resharded on `mesh`; others are constrained on an Auto copy of it.
    """
    rows = P(axes[0] if len(axes) == 1 else axes)
    if _explicitly_typed(img) or _explicitly_typed(txt):
        use = mesh
        img, txt = (jax.sharding.reshard(x, NamedSharding(mesh, rows)) for x in (img, txt))
        scalars = [jax.sharding.reshard(s, NamedSharding(mesh, P())) for s in scalars]
    else:
        auto = (AxisType.Auto,) * len(mesh.axis_names)
        use = Mesh(mesh.devices, mesh.axis_names, axis_types=auto)
        img, txt = (
            jax.lax.with_sharding_constraint(x, NamedSharding(use, rows)) for x in (img, txt)
        )
    in_specs = (rows, rows) + (P(),) * len(scalars)
    return jax.shard_map(body, mesh=use, in_specs=in_specs, out_specs=out_specs)(img, txt, *scalars)


def _plan(spec, img, txt, axes, n_dev, block_size) -> st.Plan:
    check_pairs(img, txt, spec)
    batch = img.shape[0]
    if batch % n_dev:
        raise ValueError(
            f"{spec.name}: global batch {batch} is not a multiple of mesh axis {axes} size {n_dev}"
        )
    return st.Plan(axes, n_dev, batch, int(block_size) if block_size else st.DEFAULT_TILE)


def _checked(mesh, axis, form, block_size):
    """(batch axes, their device count), the arguments validated."""
    axes = (axis,) if isinstance(axis, str) else tuple(axis)
    if not axes:
        raise ValueError("axis must name at least one mesh axis")
    for a in axes:
        if a not in mesh.shape:
            raise ValueError(f"mesh has no axis {a!r} (axes: {tuple(mesh.shape)})")
    if form not in FORMS:
        raise ValueError(f"loss.global_form={form!r} is not one of {tuple(FORMS)}")
    if block_size is not None and int(block_size) < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    return axes, math.prod(mesh.shape[a] for a in axes)


def make_global_loss(
    name: str,
    mesh: Mesh,
    *,
    axis: str | tuple[str, ...] = "data",
    form: str = "ring",
    block_size: int | None = None,
    **hparams,
):
    """`fn(img, txt, temperature, bias=None) -> scalar` for (B, D) embeddings whose rows are
    sharded over the mesh axis `axis` (a name, or a tuple of names: P(("data", "fsdp"))).

    Equal in value and gradient (img, txt, temperature, and SigLIP's bias) to
    `get_loss(name)(img, txt, temperature[, bias], **hparams)` on the whole batch. `form`:
    "gather" (all-gather the other side, O(B×D) per device) or "ring" (its blocks travel round
    the devices by ppermute, O(B/n × D)). `block_size`: tile edge, rows and columns (None →
    1024, cut to the rows available); any B works if it is a multiple of the axes' size.
    """
    spec = make_spec(name, **hparams)
    axes, n_dev = _checked(mesh, axis, form, block_size)

    @jax.jit
    def inner(img, txt, temperature, bias):
        ctx = _Ctx(spec, _plan(spec, img, txt, axes, n_dev, block_size), FORMS[form])
        dt = acc_dtype(img)
        tau, b = jnp.asarray(temperature).astype(dt), jnp.asarray(bias).astype(dt)
        body = functools.partial(_local_loss, ctx=ctx)
        return _on_mesh(mesh, axes, body, P(), img, txt, tau, b)

    return with_bias_check(name, lambda img, txt, tau, bias=0.0: inner(img, txt, tau, bias))


def make_global_moments(
    mesh: Mesh, *, axis="data", form: str = "ring", block_size: int | None = None
):
    """`fn(img, txt) -> (mean, std)` of the off-diagonal similarities s_ij, i ≠ j, computed as the
    global forms compute them for CEHNC's adaptive β (for tests and logging)."""
    axes, n_dev = _checked(mesh, axis, form, block_size)
    spec = LossSpec("moments")  # names the errors; the moments read no loss parameter

    @jax.jit
    def inner(img, txt):
        ctx = _Ctx(spec, _plan(spec, img, txt, axes, n_dev, block_size), FORMS[form])
        body = lambda img, txt: _moments(img, txt, ctx.ops.prepare(txt, ctx.plan), ctx)
        return _on_mesh(mesh, axes, body, (P(), P()), img, txt)

    return inner
