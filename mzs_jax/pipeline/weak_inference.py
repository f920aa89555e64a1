"""Stage-3 inference: ResUNet class probabilities of image batches and of slice stacks.

Used by `mzs train-weak --predict` (`pipeline/weak.py`) and the checkpoint ensemble
(`pipeline/ensemble.py`), so neither imports the other for it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mzs_jax.data.transforms import resize_image
from mzs_jax.models import resunet


@nnx.jit
def _probs(model: resunet.ResUNet, images: jax.Array) -> jax.Array:
    return jax.nn.softmax(model(images), axis=-1)


def predict(model: resunet.ResUNet, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Class probabilities `(N, S, S, num_classes)` of images `(N, S, S, C)`."""
    out = [
        np.asarray(_probs(model, jnp.asarray(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def predict_image(model, image: np.ndarray, size: int) -> np.ndarray:
    """Class probabilities `(C, H, W)` of one image `(H, W, C_in)`: predicted at the model's
    `size`, each class resized back to `(H, W)`, renormalised to sum to 1 per pixel."""
    h, w = image.shape[:2]
    p = predict(model, resize_image(image, size).reshape(1, size, size, -1))[0]
    p = np.stack([resize_image(p[..., c], (h, w)) for c in range(p.shape[-1])])
    return p / p.sum(0, keepdims=True)


def predict_slices(model, slices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Label maps `(Z, H, W)` int16 and class probabilities `(C, Z, H, W)` float32 of a stack of
    slices `(Z, H, W)`: each slice resized to the model's `size`, its probabilities resized back
    before the argmax."""
    z, h, w = slices.shape
    x = np.stack([resize_image(s[..., None], size).reshape(size, size, -1) for s in slices])
    probs = np.stack([resize_image(p, (h, w)).reshape(h, w, -1) for p in predict(model, x)])
    return probs.argmax(-1).astype(np.int16), np.moveaxis(probs, -1, 0).astype(np.float32)
