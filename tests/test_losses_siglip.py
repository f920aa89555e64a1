"""SigLIP against its float64 NumPy reference and against open_clip's `SigLipLoss` (PyTorch)."""

import jax
import jax.numpy as jnp
import losses_numpy_reference as ref
import numpy as np
import pytest

from mzs_jax import losses


def _batch(seed=0, b=6, d=5):
    rng = np.random.default_rng(seed)
    img = ref.unit(rng.normal(size=(b, d)))
    return img, ref.unit(img + 0.8 * rng.normal(size=(b, d)))


@pytest.mark.parametrize(("tau", "bias"), [(0.1, -10.0), (0.3, -1.0), (1.0, 2.0)])
def test_siglip_value_and_gradients_match_numpy_float64_reference(tau, bias):
    img, txt = _batch()
    want = ref.siglip(img, txt, tau, bias)
    g_img = ref.numeric_grad(lambda x: ref.siglip(x, txt, tau, bias), img)
    g_txt = ref.numeric_grad(lambda x: ref.siglip(img, x, tau, bias), txt)
    g_tau = ref.numeric_grad(lambda x: ref.siglip(img, txt, float(x), bias), np.array(tau))
    g_b = ref.numeric_grad(lambda x: ref.siglip(img, txt, tau, float(x)), np.array(bias))
    with jax.enable_x64(True):
        val, grads = jax.value_and_grad(losses.siglip, argnums=(0, 1, 2, 3))(
            img, txt, np.float64(tau), np.float64(bias)
        )
    np.testing.assert_allclose(float(val), want, rtol=1e-12)
    wants = (g_img, g_txt, g_tau, g_b)
    for got, w, what in zip(grads, wants, ("img", "txt", "tau", "bias"), strict=True):
        np.testing.assert_allclose(np.asarray(got), w, atol=1e-6, err_msg=what)


def test_siglip_matches_open_clip_siglip_loss_forward_and_backward():
    torch = pytest.importorskip("torch")
    open_clip_loss = pytest.importorskip("open_clip.loss")
    img, txt = (x.astype(np.float32) for x in _batch(1, b=16, d=32))
    tau, bias = 0.1, -10.0

    ti, tt = (torch.tensor(x, requires_grad=True) for x in (img, txt))
    scale = torch.tensor(1.0 / tau, requires_grad=True)  # open_clip takes exp(t') = 1/τ
    tb = torch.tensor(bias, requires_grad=True)
    want = open_clip_loss.SigLipLoss()(ti, tt, scale, tb)
    want.backward()

    val, (g_img, g_txt, g_tau, g_b) = jax.value_and_grad(losses.siglip, argnums=(0, 1, 2, 3))(
        img, txt, jnp.float32(tau), jnp.float32(bias)
    )
    np.testing.assert_allclose(float(val), want.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_img), ti.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(g_txt), tt.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(float(g_b), tb.grad.item(), rtol=1e-5)
    # dL/dτ = dL/dscale · dscale/dτ = -dL/dscale / τ²
    np.testing.assert_allclose(float(g_tau), -scale.grad.item() / tau**2, rtol=1e-4)


def test_siglip_refuses_mismatched_shapes():
    img, txt = _batch()
    with pytest.raises(ValueError, match="must both be"):
        losses.siglip(img, txt[:3], 0.1, -10.0)
