"""Retrieval ranks with ties broken at random: a collapsed model scores chance, duplicate captions
share the hit, and the seeded binary hits average to the expected hits."""

import numpy as np
import pytest

from mzs_jax.pipeline import retrieval


def test_a_collapsed_model_scores_chance_top1_and_top2():
    n = 50
    same = np.ones((n, 8))  # every embedding equal: every score ties
    r = retrieval.batch_retrieval(same, same)
    for d in ("i2t", "t2i"):
        assert r[f"{d}_top1"] == pytest.approx(1 / n)
        assert r[f"{d}_top2"] == pytest.approx(2 / n)
    roco = retrieval.roco_retrieval(np.ones((130, 4)), np.ones((130, 4)), batch=50, seed=1)
    assert roco["i2t_top1"] == pytest.approx(1 / 50) and roco["t2i_top2"] == pytest.approx(2 / 50)
    # Drawn (McNemar) hits of the collapsed model: a uniform position among the 50 tied.
    hits = retrieval.query_hits(np.ones((5000, 4)), np.ones((5000, 4)), batch=50)
    assert hits["i2t_top1"].dtype == bool
    assert abs(hits["i2t_top1"].mean() - 1 / 50) < 4 * np.sqrt(0.02 * 0.98 / 5000)
    assert np.all(hits["t2i_top1"] <= hits["t2i_top2"])


def test_duplicate_captions_share_the_hit():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(6, 5))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = img.copy()
    txt[1] = txt[0]  # pairs 0 and 1 have the same caption embedding
    img[1] = img[0] + 1e-3 * rng.normal(size=5)
    r = retrieval._hits(img, txt)
    # image 0 ties its caption with caption 1: half a top-1 hit, a full top-2 hit.
    assert r["i2t_top1"][0] == pytest.approx(0.5) and r["i2t_top2"][0] == 1.0
    assert r["i2t_top1"][2:].tolist() == [1.0] * 4


def test_expected_hits_match_the_average_of_seeded_tie_draws():
    """The closed form clip((k - r)/(t + 1), 0, 1) against many random tie-breaks on a coarse
    (heavily tied) similarity matrix."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 2, size=(40, 3)).astype(float)
    txt = rng.integers(0, 2, size=(40, 3)).astype(float)
    want = retrieval.query_scores(img, txt, batch=40)
    draws = [retrieval.query_hits(img, txt, batch=40, tie_seed=s) for s in range(400)]
    for m in retrieval.METRICS:
        got = np.mean([d[m] for d in draws], axis=0)
        np.testing.assert_allclose(got, want[m], atol=0.1)
    again = retrieval.query_hits(img, txt, batch=40, tie_seed=3)
    assert all(np.array_equal(again[m], draws[3][m]) for m in retrieval.METRICS)


def test_non_finite_embeddings_are_refused():
    bad = np.ones((4, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval.batch_retrieval(bad, np.ones((4, 3)))
