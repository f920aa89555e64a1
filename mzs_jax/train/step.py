"""Optimizer, schedule, freezing and the one jitted train step (engine for stages 1-3).

The train state is a plain pytree `{"params", "rest", "opt", "step", "rng"}` so it can be
donated, sharded and checkpointed as is; `params` are the NNX `Param`s (fp32 master copy),
`rest` every other model variable (e.g. batch statistics).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from .checkpoint import path_str

COMPUTE_DTYPES = ("float32", "bfloat16")


def with_compute_dtype(
    model_config: ml_collections.ConfigDict, config: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """A copy of `model_config` whose `dtype` (the modules' matmul dtype) is
    `config.compute_dtype`; what a task builds its training model from."""
    dtype = str(config.compute_dtype)
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"config.compute_dtype={dtype!r} is not one of {COMPUTE_DTYPES}")
    out = ml_collections.ConfigDict(model_config.to_dict())
    out.dtype = dtype
    return out


_MATMUL = re.compile(
    r"stablehlo\.(?:dot_general|convolution).*?: "
    r"\(tensor<(?:[^>]*x)?(\w+)>, tensor<(?:[^>]*x)?(\w+)>\).*?loc\((#loc\d+)\)"
)
_LOC = re.compile(r'^(#loc\d+) = loc\("([^"]*)"')


def matmul_operand_dtypes(lowered) -> list[tuple[str, str, str]]:
    """`(op name with its named scopes, lhs dtype, rhs dtype)` of every dot/convolution of a lowered
    computation, read from its StableHLO (before XLA's own passes, which may upcast on CPU)."""
    text = lowered.as_text(debug_info=True)
    names = dict(m.groups() for line in text.splitlines() if (m := _LOC.match(line)))
    return [
        (names.get(loc, loc), lhs, rhs)
        for lhs, rhs, loc in (m.groups() for m in _MATMUL.finditer(text))
    ]


def check_compute_dtype(lowered, config: ml_collections.ConfigDict) -> None:
    """Refuse a bfloat16 run whose lowered step has no bfloat16 matmul (a task that ignored
    `config.compute_dtype` would otherwise train in float32 under a bfloat16 flag)."""
    if str(config.compute_dtype) == "bfloat16" and not any(
        "bf16" in (lhs, rhs) for _, lhs, rhs in matmul_operand_dtypes(lowered)
    ):
        raise ValueError(
            "config.compute_dtype='bfloat16' but the compiled step has no bfloat16 matmul: the "
            "task builds its model without `step.with_compute_dtype`"
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
        labels = jax.tree_util.tree_map_with_path(
            lambda kp, _: "frozen" if any(re.search(r, path_str(kp)) for r in freeze) else "train",
            params,
        )
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

    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"config.grad_accum={k} does not divide the batch {x.shape[0]}")
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def _whole_batch(micro):
    """Inverse of `_micro_batches`: (k, B/k, ...) -> (B, ...) in the original row order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), micro)


def _tree_add(a, b):
    return jax.tree.map(lambda x, y: x + y.astype(x.dtype), a, b)


ACCUMULATION = ("exact", "independent")


def make_gradient_fn(
    loss_fn: Callable,
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    *,
    embed_fn: Callable | None = None,
    batch_loss_fn: Callable | None = None,
    unroll: bool = False,
) -> Callable:
    """`fn(params, rest, batch, rng) -> (loss, metrics, rest, grads)` for the global batch.

    `loss_fn(model, batch, rng) -> (loss, metrics)` is the objective on the whole batch. With
    `config.grad_accum = k > 1` the batch is processed in k micro-batches (every k-th row):

    - `config.accumulation="exact"` with a two-phase objective (`embed_fn(model, batch, rng) ->
      per-example outputs`, `batch_loss_fn(model, outputs, batch) -> (loss, metrics)`, and
      `loss_fn == batch_loss_fn ∘ embed_fn`): GradCache. (a) embed every micro-batch without keeping
      activations, (b) the loss and its gradient w.r.t. the whole batch's outputs and the params
      the loss itself reads (temperature, context encoder), (c) per micro-batch, re-run the towers
      with the same RNG and back-propagate that micro-batch's slice of the output gradient. Loss,
      gradients and update equal the k = 1 step; peak memory is one micro-batch's activations.
    - without a two-phase objective: the mean of the per-micro-batch gradients, which is the same
      objective only when `loss_fn` is a mean of per-example terms (engine contract, train/task.py).
    - `config.accumulation="independent"`: that mean even for a two-phase objective — a contrastive
      loss then sees B/k negatives per micro-batch, a different experiment (named, not the default).

    Parameters stay float32; the model's compute dtype (`config.compute_dtype`) is set by the task
    when it builds the model (`with_compute_dtype`), so the matmuls run in it. `unroll=True`
    unrolls the micro-batch loops (for FLOP counts: XLA's cost analysis counts a loop body once).
    """
    k = int(config.grad_accum)
    scan = functools.partial(jax.lax.scan, unroll=True) if unroll else jax.lax.scan
    mode = str(config.get("accumulation", "exact"))
    if k < 1:
        raise ValueError(f"config.grad_accum={k} must be >= 1")
    if mode not in ACCUMULATION:
        raise ValueError(f"config.accumulation={mode!r} is not one of {ACCUMULATION}")
    two_phase = embed_fn is not None and batch_loss_fn is not None and mode == "exact"

    def whole_loss(params, rest, batch, rng):
        model = nnx.merge(graphdef, params, rest)
        loss, metrics = loss_fn(model, batch, rng)
        return loss.astype(jnp.float32), (metrics, nnx.state(model, nnx.Not(nnx.Param)))

    grad_fn = jax.value_and_grad(whole_loss, has_aux=True)

    def plain(params, rest, batch, rng):
        (loss, (metrics, rest)), grads = grad_fn(params, rest, batch, rng)
        return loss, metrics, rest, grads

    if k == 1:
        return plain
    if two_phase:
        return _grad_cache(graphdef, embed_fn, batch_loss_fn, k, scan)
    return _independent(grad_fn, k, scan)


def _independent(grad_fn: Callable, k: int, scan: Callable) -> Callable:
    """The mean of k per-micro-batch gradients (`grad_fn` = value_and_grad of the whole loss)."""

    def independent(params, rest, batch, rng):
        def body(carry, xs):
            grads_acc, rest = carry
            mb, j = xs
            (loss, (metrics, rest)), g = grad_fn(params, rest, mb, jax.random.fold_in(rng, j))
            return (_tree_add(grads_acc, g), rest), (loss, metrics)

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        (grads, rest), (losses, metrics) = scan(
            body, (zeros, rest), (_micro_batches(batch, k), jnp.arange(k))
        )
        grads = jax.tree.map(lambda g: g / k, grads)
        return jnp.mean(losses), jax.tree.map(jnp.mean, metrics), rest, grads

    return independent


def _grad_cache(
    graphdef: nnx.GraphDef, embed_fn: Callable, batch_loss_fn: Callable, k: int, scan: Callable
) -> Callable:
    """GradCache over k micro-batches: the steps (a)-(c) of `make_gradient_fn`'s docstring."""

    def embed(params, rest, mb, rng):
        model = nnx.merge(graphdef, params, rest)
        return embed_fn(model, mb, rng), nnx.state(model, nnx.Not(nnx.Param))

    def grad_cache(params, rest, batch, rng):
        micro = _micro_batches(batch, k)
        idx = jnp.arange(k)

        def forward(rest, xs):  # (a) outputs only: nothing is kept for a backward pass
            mb, j = xs
            out, _ = embed(params, rest, mb, jax.random.fold_in(rng, j))
            return rest, jax.lax.stop_gradient(out)

        _, outputs = scan(forward, rest, (micro, idx))

        def objective(params, outputs):  # (b) the loss on the whole batch
            model = nnx.merge(graphdef, params, rest)
            loss, metrics = batch_loss_fn(model, outputs, batch)
            return loss.astype(jnp.float32), metrics

        (loss, metrics), (grads, d_outputs) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True
        )(params, _whole_batch(outputs))

        def backward(carry, xs):  # (c) towers again, with the same RNG, then their VJP
            grads_acc, rest = carry
            mb, j, ct = xs
            fn = lambda p: embed(p, rest, mb, jax.random.fold_in(rng, j))  # noqa: B023
            _, vjp, rest = jax.vjp(fn, params, has_aux=True)
            return (_tree_add(grads_acc, vjp(ct)[0]), rest), None

        init = (jax.tree.map(lambda g: g.astype(jnp.float32), grads), rest)
        (grads, rest), _ = scan(backward, init, (micro, idx, _micro_batches(d_outputs, k)))
        return loss, metrics, rest, grads

    return grad_cache


def make_train_step(
    loss_fn: Callable,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    *,
    embed_fn: Callable | None = None,
    batch_loss_fn: Callable | None = None,
) -> Callable:
    """`step(state, batch) -> (state, metrics)`; jit it with `donate_argnums=0`.

    Gradients from `make_gradient_fn` (exact or independent accumulation, see there), then the
    optimizer update on the float32 master parameters and `config.clamp`.
    """
    clamp_rules = tuple(tuple(r) for r in config.clamp)
    gradients = make_gradient_fn(
        loss_fn, graphdef, config, embed_fn=embed_fn, batch_loss_fn=batch_loss_fn
    )

    def step(state, batch):
        rng, step_rng = jax.random.split(state["rng"])
        loss, metrics, rest, grads = gradients(state["params"], state["rest"], batch, step_rng)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = _clamp(optax.apply_updates(state["params"], updates), clamp_rules)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        new = {"params": params, "rest": rest, "opt": opt, "step": state["step"] + 1, "rng": rng}
        return new, metrics

    return step


def make_task_step(task, graphdef, tx, config) -> Callable:
    """`make_train_step` for a `Task`, with its two-phase objective when it has one."""
    return make_train_step(
        task.loss_fn,
        graphdef,
        tx,
        config,
        embed_fn=getattr(task, "embed", None),
        batch_loss_fn=getattr(task, "batch_loss", None),
    )
