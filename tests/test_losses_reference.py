"""Every loss against its float64 NumPy reference: values and gradients (atol 1e-5)."""

import jax
import losses_numpy_reference as ref
import numpy as np
import pytest

from mzs_jax import losses

CASES = [
    ("infonce", {}, {}),
    ("dcl", {}, {}),
    ("hn_nce", {"beta": 0.7}, {"beta1": 0.7, "beta2": 0.7}),
    ("dhn_nce", {"beta1": 0.4, "beta2": 1.1}, {"beta1": 0.4, "beta2": 1.1}),
    ("cehnc", {"beta1": 0.6, "beta2": 1.3, "adaptive": False}, {"beta1": 0.6, "beta2": 1.3}),
    (
        "cehnc",
        {"beta1": 0.6, "beta2": 1.3, "adaptive": True},
        {"beta1": 0.6, "beta2": 1.3, "adaptive": True},
    ),
    (  # the cap binds: β_eff = 2.48 and 5.38 uncapped
        "cehnc",
        {"beta1": 0.6, "beta2": 1.3, "adaptive": True, "beta_max": 1.5},
        {"beta1": 0.6, "beta2": 1.3, "adaptive": True, "beta_max": 1.5},
    ),
    (
        "cehnc",
        {"beta1": 0.3, "beta2": 0.2, "adaptive": True, "adaptive_rule": "inverse_sim_std"},
        {"beta1": 0.3, "beta2": 0.2, "adaptive": True, "rule": "inverse_sim_std"},
    ),
]


def _batch(seed=0, b=6, d=5):
    rng = np.random.default_rng(seed)
    img = ref.unit(rng.normal(size=(b, d)))
    txt = ref.unit(img + 0.8 * rng.normal(size=(b, d)))
    return img, txt, 0.3


@pytest.mark.parametrize(("name", "hp", "ref_hp"), CASES, ids=lambda c: str(c))
def test_loss_value_and_gradient_match_numpy_float64_reference(name, hp, ref_hp):
    img, txt, tau = _batch()
    # CEHNC weights (and its adaptive β) are stop-gradient: differentiate with them held fixed.
    frozen = ref.frozen_weights(name, img, txt, tau, **ref_hp) if name == "cehnc" else None

    def f_ref(i, t, ta):
        return ref.loss(name, i, t, ta, **ref_hp, frozen=frozen)

    want = ref.loss(name, img, txt, tau, **ref_hp)
    g_img = ref.numeric_grad(lambda x: f_ref(x, txt, tau), img)
    g_txt = ref.numeric_grad(lambda x: f_ref(img, x, tau), txt)
    g_tau = ref.numeric_grad(lambda x: f_ref(img, txt, float(x)), np.array(tau))
    with jax.enable_x64(True):
        fn = losses.get_loss(name)
        val, grads = jax.value_and_grad(lambda i, t, ta: fn(i, t, ta, **hp), argnums=(0, 1, 2))(
            img, txt, np.float64(tau)
        )
    np.testing.assert_allclose(float(val), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grads[0]), g_img, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grads[1]), g_txt, atol=1e-5)
    np.testing.assert_allclose(float(grads[2]), g_tau, atol=1e-5)


def test_bf16_inputs_accumulate_in_float32_and_stay_close():
    img, txt, tau = _batch(1, b=8, d=16)
    for name, hp, ref_hp in CASES:
        got = losses.get_loss(name)(
            img.astype(jax.numpy.bfloat16), txt.astype("bfloat16"), tau, **hp
        )
        assert got.dtype == np.float32
        want = ref.loss(name, img, txt, tau, **ref_hp)
        np.testing.assert_allclose(float(got), want, rtol=3e-2)


def test_config_helper_binds_hyperparameters_and_names_bad_keys():
    cfg = losses.default_config()
    cfg.name = "dhn_nce"
    img, txt, tau = _batch()
    fn = losses.loss_from_config(cfg)
    want = losses.dhn_nce(img, txt, tau, cfg.beta1, cfg.beta2)
    np.testing.assert_allclose(float(fn(img, txt, tau)), float(want), rtol=1e-6)
    cfg.name = "nope"
    with pytest.raises(ValueError, match="loss.name"):
        losses.loss_from_config(cfg)
    cfg.name = "cehnc"
    cfg.adaptive_rule = "bogus"
    with pytest.raises(ValueError, match="adaptive_rule"):
        losses.loss_from_config(cfg)
