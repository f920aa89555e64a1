"""ContextEncoder: identity at initialisation and for missing metadata; once gated it changes the
text side only (the image embedding is never touched)."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mzs_jax.models import context

E = 8


def _encoder():
    cfg = context.default_config()
    cfg.hidden = 16
    return context.ContextEncoder(cfg, E, rngs=nnx.Rngs(0))


def _pairs(b=4):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, b, E)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x[0], x[1]


def _metadata(b=4):
    return {
        "modality": np.array([1, 0, 3, 0], np.int32)[:b],
        "sex": np.array([2, 0, 1, 0], np.int32)[:b],
        "age": np.array([61.0, 0.0, 30.0, 45.0], np.float32)[:b],
        "age_present": np.array([True, False, True, False])[:b],
        "history_emb": np.ones((b, E), np.float32) / np.sqrt(E),
        "history_present": np.array([True, False, False, False])[:b],
    }


def test_context_encoder_is_the_identity_at_initialisation():
    enc, (img, txt) = _encoder(), _pairs()
    fi, ft = enc.fuse(img, txt, _metadata())
    np.testing.assert_allclose(np.asarray(fi), img, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ft), txt, atol=1e-6)


def test_rows_without_metadata_are_returned_unchanged_even_with_an_open_gate():
    enc, (img, txt) = _encoder(), _pairs()
    enc.gate_txt[...] = jnp.float32(1.0)
    fi, ft = enc.fuse(img, txt, _metadata())
    # row 1 has nothing; row 3 has only missing values
    for r in (1, 3):
        np.testing.assert_array_equal(np.asarray(fi)[r], img[r])
        np.testing.assert_array_equal(np.asarray(ft)[r], txt[r])
    fi, ft = enc.fuse(img, txt, {})
    np.testing.assert_array_equal(np.asarray(fi), img)


def test_an_open_gate_changes_text_rows_with_metadata_and_never_the_image():
    enc, (img, txt) = _encoder(), _pairs()
    enc.gate_txt[...] = jnp.float32(-0.5)
    fi, ft = (np.asarray(a) for a in enc.fuse(img, txt, _metadata()))
    np.testing.assert_array_equal(fi, img)
    for r in (0, 2):
        assert np.abs(ft[r] - txt[r]).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(ft, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(enc.fuse_text(txt, _metadata())), ft)


def test_the_gate_receives_a_gradient_at_initialisation():
    enc, (img, txt) = _encoder(), _pairs()

    def loss(m):
        fi, ft = m.fuse(img, txt, _metadata())
        return jnp.sum(fi * ft[::-1])

    grads = nnx.grad(loss)(enc)
    assert float(jnp.abs(grads["gate_txt"][...])) > 0
