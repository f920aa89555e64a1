"""Mixed-precision matmuls: operands in the compute dtype, float32 accumulation, both passes.

`jnp.einsum(..., preferred_element_type=float32)` on bf16 operands accumulates in float32, but
its autodiff transpose multiplies the float32 cotangent with the bf16 operand, which JAX
promotes to a float32 × float32 dot: under `compute_dtype="bfloat16"` the whole backward pass
would run in fp32. `mixed_einsum` casts the cotangent to the operands' dtype first, so the
backward dots take bf16 operands and accumulate in float32, as the forward ones do (the form
XLA:CPU runs as a bf16 matmul; GPU/TPU accumulate bf16 products in float32 natively). In
float32 it is a plain einsum with plain gradients.

Its output is named `DOT_NAME` for `jax.checkpoint` policies: a custom-VJP op is not a
`dot_general` to `dots_saveable`, so `model.remat="dots_saveable"` saves these names as well.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

DOT_NAME = "mixed_dot"
f32 = jnp.float32


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_f32(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=f32)


def _fwd(spec, a, b):
    return _einsum_f32(spec, a, b), (a, b)


def _batch_leading(spec: str, other: str, out: str) -> bool:
    batch = [c for c in spec if c in other and c in out and c != "."]
    return list(spec[: len(batch)]) == batch


def _product(x_spec: str, x, y_spec: str, y, out: str) -> jax.Array:
    """`einsum(x, y -> out)` accumulating in float32, the operand whose batch indices lead its
    spec first: XLA:CPU has no bf16 x bf16 = f32 kernel for some operand orders
    ("bqhd,bhqk->bkhd" fails at run time, "bhqk,bqhd->bkhd" runs)."""
    if _batch_leading(y_spec, x_spec, out) and not _batch_leading(x_spec, y_spec, out):
        x_spec, x, y_spec, y = y_spec, y, x_spec, x
    return jnp.einsum(f"{x_spec},{y_spec}->{out}", x, y, preferred_element_type=f32)


def _bwd(spec, res, g):
    # "A,B->C": dA = einsum("C,B->A"), dB = einsum("C,A->B"); valid when every index of an
    # operand is kept in C or contracted with the other operand (all matmul-like specs here).
    a, b = res
    (sa, sb), sc = spec.split("->")[0].split(","), spec.split("->")[1]
    g = g.astype(jnp.promote_types(a.dtype, b.dtype))
    return _product(sc, g, sb, b, sa).astype(a.dtype), _product(sc, g, sa, a, sb).astype(b.dtype)


_einsum_f32.defvjp(_fwd, _bwd)


def mixed_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """Two-operand `jnp.einsum` (`"A,B->C"`, explicit output) with a float32 result and
    float32 accumulation in the forward and both backward products, operands as given."""
    return checkpoint_name(_einsum_f32(spec.replace(" ", ""), a, b), DOT_NAME)


def _linear_dot_general(lhs, rhs, dimension_numbers, precision=None, **kw):
    """`dot_general` for `nnx.Linear` (contract the inputs' last axis with the kernel's first).
    A per-layer `precision` or `out_sharding` is refused rather than dropped (the global
    `jax_default_matmul_precision` applies)."""
    unsupported = precision is not None or kw.get("out_sharding") is not None
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or unsupported:
        raise ValueError(
            f"linear: unsupported dot_general {dimension_numbers}, precision={precision}, {kw}"
        )
    return flat_matmul(lhs, rhs)


def flat_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`x (..., I) @ kernel (I, O)` as one `(N, I) @ (I, O)` product: on 3-D inputs the weight
    gradient contracts two axes, and XLA:CPU materialises a transposed copy of the activation
    for it (fused into the producing elementwise op: 60–140 ms per f32[3072, 3072] copy in the
    batch-12 step, docs/performance.md); on the flattened 2-D form it reads the activation as
    it is."""
    y = mixed_einsum("ni,io->no", x.reshape(-1, x.shape[-1]), kernel)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


def linear(in_features: int, out_features: int, **kw) -> nnx.Linear:
    """`nnx.Linear` whose matmul is `mixed_einsum`: with a bf16 `dtype` its operands are bf16
    (params cast inside) in both passes and it returns float32. Same values as a plain Linear
    in float32 (the kernel layout and initialisers are nnx.Linear's)."""
    return nnx.Linear(in_features, out_features, dot_general=_linear_dot_general, **kw)


def linear_columns(layer: nnx.Linear, x: jax.Array, start: int, stop: int) -> jax.Array:
    """`layer(x)[..., start:stop]` computing only those output columns (a `linear` layer: the
    same dtype handling, kernel and bias sliced before the product)."""
    bias = None if layer.bias is None else layer.bias[...][start:stop]
    x, kernel, bias = layer.promote_dtype(
        (x, layer.kernel[...][:, start:stop], bias), dtype=layer.dtype
    )
    y = flat_matmul(x, kernel)
    return y if bias is None else y + bias
