"""KMeans(2) + largest-component post-processing (MedCLIP-SAMv2) beside the CRF chain."""

import numpy as np
import pytest
from sklearn.cluster import KMeans

from mzs_jax.pipeline import postprocess as pp


def _disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _cfg(**kw):
    c = pp.default_config()
    c.method = "kmeans"
    for k, v in kw.items():
        c.kmeans[k] = v
    return c


def test_kmeans_keeps_the_bright_cluster_and_only_its_largest_component():
    rng = np.random.default_rng(0)
    big, small = _disk(64, 80, 30, 25, 12), _disk(64, 80, 10, 70, 4)
    sal = 0.15 + 0.05 * rng.random((64, 80))
    sal[big] = 0.85 + 0.05 * rng.random(big.sum())
    sal[small] = 0.8
    out = pp.refine(np.zeros((64, 80, 3)), sal, _cfg())
    np.testing.assert_array_equal(out.mask, big)  # the small bright blob is a second component
    ys, xs = np.nonzero(big)
    np.testing.assert_array_equal(out.boxes, [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]])
    assert out.chain == "kmeans>largest1"
    two = pp.refine(np.zeros((64, 80, 3)), sal, _cfg(components=2))
    np.testing.assert_array_equal(two.mask, big | small)


def test_kmeans_foreground_is_sklearns_higher_centre_cluster():
    """The mask is exactly scikit-learn's clustering of the min–maxed intensities (no hand-made
    threshold); on a bimodal map that is not the 0.5 threshold of the CRF chain."""
    rng = np.random.default_rng(1)
    sal = np.concatenate([rng.normal(0.1, 0.03, 900), rng.normal(0.35, 0.03, 300)])
    sal = np.clip(sal, 0, 1).reshape(30, 40)
    sal[0, 0] = 1.0  # one hot pixel: after min–max the bright mode sits below 0.5
    prob = pp.minmax(sal)
    km = KMeans(n_clusters=2, n_init=10, random_state=10).fit(prob.reshape(-1, 1))
    expected = (km.labels_ == np.argmax(km.cluster_centers_[:, 0])).reshape(prob.shape)
    got = pp.kmeans_mask(prob, components=10**6)  # components: keep all, compare clustering only
    np.testing.assert_array_equal(got, expected)
    assert got.sum() > 250 and (prob > 0.5).sum() < 10


def test_kmeans_is_deterministic_for_a_seed():
    sal = np.random.default_rng(2).random((40, 40))
    a, b = pp.kmeans_mask(sal, seed=3), pp.kmeans_mask(sal, seed=3)
    np.testing.assert_array_equal(a, b)


def test_kmeans_on_constant_maps_follows_the_crf_chain_conventions():
    img = np.zeros((20, 30, 3))
    assert pp.refine(img, np.zeros((20, 30)), _cfg()).empty
    full = pp.refine(img, np.ones((20, 30)), _cfg())
    np.testing.assert_array_equal(full.boxes, [[0, 0, 30, 20]])


def test_largest_components_uses_8_connectivity_and_breaks_ties_by_raster_order():
    m = np.zeros((10, 10), bool)
    m[1, 1] = m[2, 2] = True  # diagonal neighbours: one 8-connected component of 2
    m[6, 6] = m[6, 7] = True  # another component of 2 (a tie)
    m[8, 0] = True
    keep = pp.largest_components(m, 1)
    assert keep.sum() == 2 and keep[1, 1] and keep[2, 2]
    assert pp.largest_components(m, 2).sum() == 4


def test_crf_chain_is_unchanged_and_named():
    sal = np.zeros((20, 20))
    sal[5:10, 5:10] = 1.0
    c = pp.default_config()
    c.crf.enabled = False
    out = pp.refine(np.zeros((20, 20, 3)), sal, c)
    assert out.chain == "threshold>closing"
    np.testing.assert_array_equal(out.boxes, [[5, 5, 10, 10]])


def test_bad_method_and_components_are_clear_errors():
    c = pp.default_config()
    c.method = "otsu"
    with pytest.raises(ValueError, match="postprocess.method"):
        pp.refine(np.zeros((4, 4, 3)), np.eye(4), c)
    with pytest.raises(ValueError, match="postprocess.kmeans.components"):
        pp.refine(np.zeros((4, 4, 3)), np.eye(4), _cfg(components=0))
