"""Flax BiomedCLIP vs open_clip (built offline, random weights): embeddings, parameter counts,
and bit-exact state-dict round trips (issue 3, "Must show")."""

import numpy as np
import open_clip  # noqa: F401  (imported here so its import time is not billed to the first test)
import pytest
import torch
from flax import nnx

from mzs_jax import convert
from mzs_jax.models import clip
from torch_bridge.clip import build_open_clip, numpy_state_dict

PARITY_ATOL = 1e-4  # the issue's bound; measured figures are ~1e-7 (docs/models.md)


def _inputs(cfg, seed=0):
    """Batch 2 of NHWC images and token ids padded with pad id 0 at different lengths."""
    rng = np.random.default_rng(seed)
    size, length = cfg.vision.image_size, cfg.text.context_length
    images = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    ids = rng.integers(5, cfg.text.vocab_size, (2, length)).astype(np.int64)
    ids[:, 0] = 2
    ids[0, 7:] = 0
    ids[1, length // 2 :] = 0
    return images, ids


def _compare(cfg):
    torch.manual_seed(0)
    torch_model = build_open_clip(cfg)
    sd = numpy_state_dict(torch_model)
    flax_model = convert.from_open_clip(sd, cfg)
    images, ids = _inputs(cfg)
    with torch.no_grad():
        t_img = torch_model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), True)
        t_txt = torch_model.encode_text(torch.from_numpy(ids), normalize=True)
    f_img = nnx.jit(lambda m, x: m.encode_image(x))(flax_model, images)
    f_txt = nnx.jit(lambda m, i, a: m.encode_text(i, a))(
        flax_model, ids.astype(np.int32), (ids != 0).astype(np.int32)
    )
    return {
        "img_diff": float(np.abs(t_img.numpy() - np.asarray(f_img)).max()),
        "txt_diff": float(np.abs(t_txt.numpy() - np.asarray(f_txt)).max()),
        "torch_params": sum(p.numel() for p in torch_model.parameters()),
        "flax_params": convert.count_params(flax_model),
        "sd": sd,
        "roundtrip": convert.to_open_clip(flax_model),
    }


def _assert_bit_exact(original, back):
    assert sorted(back) == sorted(original)
    for key, value in original.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        assert np.array_equal(back[key], value), key


def test_tiny_flax_embeddings_match_open_clip_and_round_trip_bit_exactly():
    r = _compare(clip.model_config("tiny"))
    print(f"tiny parity: image {r['img_diff']:.3g}, text {r['txt_diff']:.3g}")
    assert r["img_diff"] <= PARITY_ATOL
    assert r["txt_diff"] <= PARITY_ATOL
    assert r["flax_params"] == r["torch_params"]
    _assert_bit_exact(r["sd"], r["roundtrip"])


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_patch_pooling_matches_open_clip_timm_pool(pool):
    """`vision.pool` is open_clip's `timm_pool` ("avg", "max"): same weights, other pooling."""
    cfg = clip.model_config("tiny")
    cfg.vision.pool = pool
    r = _compare(cfg)
    assert r["img_diff"] <= PARITY_ATOL
    token = convert.from_open_clip(r["sd"], clip.model_config("tiny"))
    images, _ = _inputs(cfg)
    avg = convert.from_open_clip(r["sd"], cfg)
    assert np.abs(np.asarray(avg.encode_image(images) - token.encode_image(images))).max() > 1e-3


@pytest.mark.slow
def test_biomedclip_full_size_embeddings_match_open_clip_and_round_trip_bit_exactly():
    cfg = clip.model_config("biomedclip")
    r = _compare(cfg)
    print(f"biomedclip parity: image {r['img_diff']:.3g}, text {r['txt_diff']:.3g}")
    assert r["img_diff"] <= PARITY_ATOL
    assert r["txt_diff"] <= PARITY_ATOL
    assert r["flax_params"] == r["torch_params"] == 195_902_721
    _assert_bit_exact(r["sd"], r["roundtrip"])


def test_open_clip_loads_an_exported_flax_model_strictly_and_agrees(tmp_path):
    cfg = clip.model_config("tiny")
    flax_model = convert.from_open_clip(convert.random_state_dict(cfg, seed=3), cfg)
    path = tmp_path / "model.safetensors"
    convert.save_safetensors(convert.to_open_clip(flax_model), path)
    torch_model = build_open_clip(cfg, weights=path)  # load_state_dict(strict=True)
    images, ids = _inputs(cfg, seed=1)
    with torch.no_grad():
        t_img = torch_model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), True)
    np.testing.assert_allclose(
        t_img.numpy(),
        np.asarray(nnx.jit(lambda m, x: m.encode_image(x))(flax_model, images)),
        atol=PARITY_ATOL,
    )
