"""Hypothesis properties of the contrastive losses: reductions, invariances, edge cases."""

import functools

import jax
import jax.numpy as jnp
import losses_numpy_reference as ref
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mzs_jax import losses

ALL = {
    "infonce": {},
    "dcl": {},
    "hn_nce": {"beta": 0.5},
    "dhn_nce": {"beta1": 0.3, "beta2": 0.8},
    "cehnc": {"beta1": 0.5, "beta2": 1.0, "adaptive": True},
    "cehnc_fixed": {"beta1": 0.5, "beta2": 1.0, "adaptive": False},
    "siglip": {"bias": -3.0},  # the bias bound like a hyperparameter (not differentiated here)
}


def _fn(key, **hp):
    """The loss `key` with hyperparameters `hp` bound, jitted (compiles once per shape)."""
    return _jitted(key, tuple(sorted(hp.items())))


def _value_and_grad(key, **hp):
    """Jitted value and gradient w.r.t. (img, txt, temperature) of the loss `key`."""
    return _jitted_vg(key, tuple(sorted(hp.items())))


@functools.cache
def _jitted_vg(key, hp_items):
    fn = functools.partial(losses.get_loss(key.removesuffix("_fixed")), **dict(hp_items))
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))


@functools.cache
def _jitted(key, hp_items):
    return jax.jit(functools.partial(losses.get_loss(key.removesuffix("_fixed")), **dict(hp_items)))


def _pairs(seed, b, d=4):
    rng = np.random.default_rng(seed)
    img = ref.unit(rng.normal(size=(b, d))).astype(np.float32)
    txt = ref.unit(img + rng.uniform(0.2, 2.0) * rng.normal(size=(b, d))).astype(np.float32)
    return img, txt


SETTINGS = settings(max_examples=8, deadline=None)
batch = st.integers(2, 4)
seed = st.integers(0, 2**31 - 1)
tau = st.floats(0.05, 1.0)


@SETTINGS
@given(seed=seed, b=batch, tau=tau)
def test_jointly_permuting_the_pairs_leaves_every_loss_unchanged(seed, b, tau):
    img, txt = _pairs(seed, b)
    perm = np.random.default_rng(seed + 1).permutation(b)
    for key, hp in ALL.items():
        a = _fn(key, **hp)(img, txt, tau)
        p = _fn(key, **hp)(img[perm], txt[perm], tau)
        np.testing.assert_allclose(float(p), float(a), rtol=1e-5, atol=1e-5, err_msg=key)


@SETTINGS
@given(seed=seed, b=batch, tau=tau)
def test_losses_reduce_to_infonce_and_dcl_when_beta_is_zero(seed, b, tau):
    img, txt = _pairs(seed, b)
    info, dcl = losses.infonce(img, txt, tau), losses.dcl(img, txt, tau)
    close = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(losses.hn_nce(img, txt, tau, beta=0.0), info, **close)
    np.testing.assert_allclose(losses.dhn_nce(img, txt, tau, 0.0, 0.0), dcl, **close)
    np.testing.assert_allclose(losses.cehnc(img, txt, tau, 0.0, 0.0, adaptive=False), info, **close)
    np.testing.assert_allclose(losses.cehnc(img, txt, tau, 0.0, 0.0, adaptive=True), info, **close)


@SETTINGS
@given(b=batch, seed=seed)
def test_gradients_are_finite_for_identical_embeddings(b, seed):
    d = 4
    v = ref.unit(np.random.default_rng(seed).normal(size=(1, d))).astype(np.float32)
    img = np.repeat(v, b, axis=0)
    for key, hp in ALL.items():
        val, grads = _value_and_grad(key, **hp)(img, img, 0.07)
        assert np.isfinite(float(val)), key
        assert all(np.all(np.isfinite(np.asarray(g))) for g in grads), key


def test_batch_of_one_is_finite_with_the_positive_kept_and_an_error_without():
    img, txt = _pairs(0, 1)
    for key in ("infonce", "hn_nce", "cehnc", "cehnc_fixed"):
        val, grads = _value_and_grad(key, **ALL[key])(img, txt, 0.1)
        assert float(val) == 0.0
        assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    for key in ("dcl", "dhn_nce"):
        with pytest.raises(ValueError, match="batch size 1"):
            _fn(key, **ALL[key])(img, txt, 0.1)


@SETTINGS
@given(seed=seed, b=batch, tau=tau)
def test_the_temperature_receives_a_finite_nonzero_gradient(seed, b, tau):
    img, txt = _pairs(seed, b)
    for key, hp in ALL.items():
        g = _value_and_grad(key, **hp)(img, txt, jnp.float32(tau))[1][2]
        assert np.isfinite(float(g)) and float(g) != 0.0, key


@pytest.mark.parametrize(
    ("key", "hp"),
    [
        ("hn_nce", {"beta": 0.15}),
        ("dhn_nce", {"beta1": 0.15, "beta2": 0.15}),
        ("cehnc", {"beta1": 0.5, "beta2": 0.5, "adaptive": True}),
        ("cehnc_fixed", {"beta1": 2.0, "beta2": 2.0, "adaptive": False}),
        ("siglip", {"bias": -2.0}),  # ∂/∂s_ij = σ(s_ij/τ + b)/(Bτ): positive, rising with s
    ],
)
def test_planted_hard_negative_gets_the_largest_positive_gradient(key, hp):
    """medclip-samv2.md §2.3: B=16, τ=0.6, random unit features, s_01 = s_00 - 0.01; the
    gradient is taken w.r.t. s itself: with img = I (one-hot rows), s = img @ txtᵀ = txtᵀ, so
    ∂loss/∂txt[j, i] = ∂loss/∂s_ij.
    """
    feats = ref.unit(np.random.default_rng(0).normal(size=(16, 32)))
    s = feats @ feats.T
    s[0, 1] = s[0, 0] - 0.01
    eye = np.eye(16, dtype=np.float32)
    g = jax.grad(lambda t: _fn(key, **hp)(eye, t, 0.6), argnums=0)(s.T.astype(np.float32))
    g_s = np.asarray(g).T
    off = g_s[~np.eye(16, dtype=bool)]
    assert g_s[0, 1] > 0
    assert g_s[0, 1] == off.max()
    assert np.all(off > 0), "every negative is pushed away"
