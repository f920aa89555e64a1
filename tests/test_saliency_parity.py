"""JAX saliency (mzs_jax.pipeline.saliency) agrees with the PyTorch reference (torch_bridge.cam)
on the same weights: Pearson r ≥ 0.99 per map and the same top-k channels up to ties ≤ 1e-6."""

import numpy as np
import pytest
from clip_pairs import model_pair, random_inputs

from mzs_jax.pipeline import saliency

torch = pytest.importorskip("torch")
cam = pytest.importorskip("torch_bridge.cam")
pytest.importorskip("torch_bridge.clip")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg, jmodel, tmodel = model_pair("tiny", tmp_path_factory.mktemp("tiny"))
    images, text = random_inputs(cfg, 3)
    return cfg, jmodel, tmodel, images, text


def _pearson(a, b):
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _assert_same_topk_up_to_ties(top_j, top_t, importance, k):
    for tj, tt, imp in zip(top_j, top_t, importance, strict=True):
        kth = np.sort(imp)[::-1][k - 1]
        for ch in set(tj.tolist()) ^ set(tt.tolist()):
            assert abs(imp[ch] - kth) <= 1e-6, (ch, imp[ch], kth)


@pytest.mark.parametrize("tap", [(-1, "norm1"), (-2, "norm2")])
def test_gscorecam_jax_matches_torch_on_tiny_model(tiny, tap):
    cfg, jmodel, tmodel, images, text = tiny
    k = 16
    maps_j, top_j, imp_j = saliency.saliency(
        jmodel, images, text, "gscorecam", topk=k, layer=tap[0], point=tap[1], return_channels=True
    )
    maps_t, top_t, imp_t = cam.gscorecam(
        tmodel, images, text, topk=k, layer=tap[0], point=tap[1], return_channels=True
    )
    assert maps_j.shape == maps_t.shape == (3, 64, 64)
    np.testing.assert_allclose(np.asarray(imp_j), imp_t, atol=1e-5, rtol=1e-3)
    _assert_same_topk_up_to_ties(np.asarray(top_j), top_t, imp_t, k)
    for mj, mt in zip(np.asarray(maps_j), maps_t, strict=True):
        assert 0.0 <= mj.min() and mj.max() <= 1.0 + 1e-6
        assert _pearson(mj, mt) >= 0.99


def test_gradcam_and_dense_similarity_jax_match_torch_on_tiny_model(tiny):
    cfg, jmodel, tmodel, images, text = tiny
    gj = np.asarray(saliency.saliency(jmodel, images, text, "gradcam", layer=-1, point="norm1"))
    gt = cam.gradcam(tmodel, images, text, layer=-1, point="norm1")
    dj = np.asarray(saliency.saliency(jmodel, images, text, "dense"))
    dt = cam.dense_similarity(tmodel, images, text)
    for a, b in [*zip(gj, gt, strict=True), *zip(dj, dt, strict=True)]:
        assert _pearson(a, b) >= 0.99


def test_single_image_call_returns_one_map(tiny):
    cfg, _, tmodel, images, text = tiny
    m = cam.gscorecam(tmodel, images[0], text[0], topk=4)
    assert m.shape == (64, 64) and m.dtype == np.float32


def test_last_block_norm2_patch_gradients_are_exactly_zero_with_class_token_pooling(tiny):
    """The reference's layer (last block's norm2) cannot rank channels when the embedding is the
    class token: patch tokens' MLP outputs never reach it. Both backends see the same zeros."""
    cfg, jmodel, tmodel, images, text = tiny
    _, top_j, imp_j = saliency.saliency(
        jmodel, images, text, "gscorecam", topk=8, return_channels=True
    )
    _, top_t, imp_t = cam.gscorecam(tmodel, images, text, topk=8, return_channels=True)
    assert np.all(np.asarray(imp_j) == 0) and np.all(imp_t == 0)
    np.testing.assert_array_equal(np.asarray(top_j), top_t)  # both break ties by lower index


def test_bad_method_and_topk_are_clear_errors(tiny):
    cfg, jmodel, _, images, text = tiny
    with pytest.raises(ValueError, match="saliency.method"):
        saliency.saliency(jmodel, images, text, "scorecam")
    with pytest.raises(ValueError, match="saliency.topk"):
        saliency.saliency(jmodel, images, text, "gscorecam", topk=1000)


@pytest.mark.slow
def test_gscorecam_jax_matches_torch_on_full_size_random_biomedclip(tmp_path):
    cfg, jmodel, tmodel = model_pair("biomedclip", tmp_path)
    images, text = random_inputs(cfg, 1)
    k = 60
    maps_j, top_j, _ = saliency.saliency(
        jmodel, images, text, "gscorecam", topk=k, layer=-1, point="norm1", return_channels=True
    )
    maps_t, top_t, imp_t = cam.gscorecam(
        tmodel, images, text, topk=k, layer=-1, point="norm1", return_channels=True
    )
    _assert_same_topk_up_to_ties(np.asarray(top_j), top_t, imp_t, k)
    assert _pearson(np.asarray(maps_j)[0], maps_t[0]) >= 0.99
