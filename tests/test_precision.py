"""`mixed_einsum`: float32 values and gradients equal a plain einsum's; under bf16 both passes
take bf16 operands (read from the lowered HLO), run on XLA:CPU for every spec the towers use
(batched attention products included), and stay close to the float32 gradients."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mzs_jax.models.precision import mixed_einsum

SPECS = {
    "...i,io->...o": ((3, 5, 8), (8, 6)),
    "bqhd,bkhd->bhqk": ((3, 7, 2, 4), (3, 7, 2, 4)),
    "bhqk,bkhd->bqhd": ((3, 2, 7, 7), (3, 7, 2, 4)),
    "bnk,kw->bnw": ((3, 5, 12), (12, 6)),
}


def _grads(fn, spec, a, b, w):
    return jax.jit(jax.grad(lambda a, b: (fn(spec, a, b) * w).sum(), argnums=(0, 1)))(a, b)


def _plain(spec, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _inputs(spec, seed=0):
    sa, sb = SPECS[spec]
    ka, kb, kw = jax.random.split(jax.random.key(seed), 3)
    a, b = jax.random.normal(ka, sa), jax.random.normal(kb, sb)
    return a, b, jax.random.normal(kw, _plain(spec, a, b).shape)


@pytest.mark.parametrize("spec", list(SPECS))
def test_float32_values_and_gradients_equal_a_plain_einsum(spec):
    a, b, w = _inputs(spec)
    np.testing.assert_allclose(mixed_einsum(spec, a, b), _plain(spec, a, b), rtol=1e-6)
    for got, want in zip(
        _grads(mixed_einsum, spec, a, b, w), _grads(_plain, spec, a, b, w), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", list(SPECS))
def test_bfloat16_backward_runs_in_bf16_and_is_close_to_float32(spec):
    a, b, w = _inputs(spec)
    bf = jnp.bfloat16
    loss = lambda a, b: (mixed_einsum(spec, a, b) * w).sum()  # noqa: E731
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    hlo = fn.lower(a.astype(bf), b.astype(bf)).as_text()
    sigs = re.findall(
        r"stablehlo.dot_general .*: \((tensor<\S+>), (tensor<\S+>)\) -> (tensor<\S+>)", hlo
    )
    assert len(sigs) == 3, hlo  # forward and both backward products
    assert all(x.endswith("bf16>") and y.endswith("bf16>") for x, y, _ in sigs), sigs
    assert all(out.endswith("f32>") for _, _, out in sigs), sigs
    _, got = fn(a.astype(bf), b.astype(bf))  # runs: no missing XLA:CPU bf16 x bf16 = f32 kernel
    want = _grads(_plain, spec, a, b, w)
    for g, r in zip(got, want, strict=True):
        assert g.dtype == bf
        err = np.abs(np.asarray(g, np.float32) - r).max() / np.abs(r).max()
        assert err < 3e-2, (spec, err)
