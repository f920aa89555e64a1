"""Optimizer, schedule, freezing and the one jitted train step (engine for stages 1-3).

The train state is a plain pytree `{"params", "rest", "opt", "step", "rng"}` so it can be
donated, sharded and checkpointed as is; `params` are the NNX `Param`s (fp32 master copy),
`rest` every other model variable (e.g. batch statistics).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from .checkpoint import path_str


def _labels(params, regexes, yes: str, no: str):
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: yes if any(re.search(r, path_str(kp)) for r in regexes) else no, params
    )


def make_schedule(opt: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Step decay: `lr * decay_factor ** floor(step / (decay_every_epochs * steps_per_epoch))`,
    after an optional linear warm-up."""
    # Capped below int32's range: optax counts steps in int32, and "never decay" is often written
    # as a huge epoch count.
    every = min(2**30, max(1, round(float(opt.decay_every_epochs) * steps_per_epoch)))
    decay = optax.exponential_decay(
        opt.lr, transition_steps=every, decay_rate=opt.decay_factor, staircase=True
    )
    if opt.warmup_steps <= 0:
        return decay
    warm = optax.linear_schedule(0.0, opt.lr, opt.warmup_steps)
    return optax.join_schedules([warm, decay], [opt.warmup_steps])


def make_optimizer(
    config: ml_collections.ConfigDict, params, steps_per_epoch: int
) -> optax.GradientTransformation:
    """AdamW (decay on >= 2-D params) or SGD, optional clipping; `config.freeze` regexes -> zero."""
    opt = config.optimizer
    schedule = make_schedule(opt, steps_per_epoch)
    if opt.name == "adamw":
        decay_mask = jax.tree.map(lambda p: p.ndim >= 2, params)
        tx = optax.adamw(
            schedule,
            b1=opt.b1,
            b2=opt.b2,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            mask=decay_mask,
        )
    elif opt.name == "sgd":
        tx = optax.sgd(schedule)
    else:
        raise ValueError(f"config.optimizer.name: unknown optimizer {opt.name!r} (adamw | sgd)")
    if opt.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    freeze = tuple(config.freeze)
    if freeze:
        labels = _labels(params, freeze, "frozen", "train")
        if all(v == "frozen" for v in jax.tree.leaves(labels)):
            raise ValueError(f"config.freeze {freeze} freezes every parameter")
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def _clamp(params, rules):
    if not rules:
        return params

    def one(kp, p):
        for pattern, lo, hi in rules:
            if re.search(pattern, path_str(kp)):
                return jnp.clip(p, lo, hi)
        return p

    return jax.tree_util.tree_map_with_path(one, params)


def _micro_batches(batch, k: int):
    """(B, ...) -> (k, B/k, ...) taking every k-th example so each device keeps its own rows."""
    if k == 1:
        return jax.tree.map(lambda x: x[None], batch)

    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"config.grad_accum={k} does not divide the batch {x.shape[0]}")
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(
    loss_fn: Callable,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
) -> Callable:
    """`step(state, batch) -> (state, metrics)`; jit it with `donate_argnums=0`.

    Gradients are averaged over `config.grad_accum` micro-batches (a `lax.scan`); with
    `compute_dtype="bfloat16"` the float params are cast for the forward/backward pass and the
    gradients applied to the fp32 master copy.
    """
    k = int(config.grad_accum)
    cdtype = jnp.dtype(config.compute_dtype)
    clamp_rules = tuple(tuple(r) for r in config.clamp)

    def cast(tree):
        return jax.tree.map(
            lambda x: x.astype(cdtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
        )

    def micro_loss(params_c, rest, batch, rng):
        model = nnx.merge(graphdef, params_c, rest)
        loss, metrics = loss_fn(model, batch, rng)
        new_rest = nnx.state(model, nnx.Not(nnx.Param))
        return loss.astype(jnp.float32), (metrics, new_rest)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state, batch):
        rng, step_rng = jax.random.split(state["rng"])
        params_c = cast(state["params"])
        micro = _micro_batches(batch, k)

        def body(carry, xs):
            grads_acc, rest = carry
            mb, j = xs
            (loss, (metrics, rest)), g = grad_fn(
                params_c, rest, mb, jax.random.fold_in(step_rng, j)
            )
            grads_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads_acc, g)
            return (grads_acc, rest), (loss, metrics)

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"])
        (grads, rest), (losses, metrics) = jax.lax.scan(
            body, (zeros, state["rest"]), (micro, jnp.arange(k))
        )
        grads = jax.tree.map(lambda g: g / k, grads)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = _clamp(optax.apply_updates(state["params"], updates), clamp_rules)
        metrics = jax.tree.map(jnp.mean, metrics)
        metrics = {**metrics, "loss": jnp.mean(losses), "grad_norm": optax.tree.norm(grads)}
        new = {"params": params, "rest": rest, "opt": opt, "step": state["step"] + 1, "rng": rng}
        return new, metrics

    return step
