"""Hard-negative loss benchmark: training batches hold distinct combinations, the statistics are
the stats helpers' (checked against scipy on a hand-made result), the loss list is the registry,
and a tiny real run is reproducible (same config + seed -> same numbers)."""

import numpy as np
import pytest
from scipy import stats as sps

from mzs_jax import losses
from mzs_jax.data.phantom_hard import BLOCK
from mzs_jax.pipeline import loss_quality as lq
from mzs_jax.pipeline import loss_quality_report as lqr
from mzs_jax.pipeline.retrieval import METRICS
from mzs_jax.pipeline.stats import mean_ci


def test_block_batches_are_parts_of_one_block_and_follow_the_seed():
    blocks = np.repeat(np.arange(3), BLOCK)
    got = lq.block_batches(blocks, 32, 10, seed=0)
    assert len(got) == 10 and all(len(b) == 32 and len(set(blocks[b])) == 1 for b in got)
    epoch = np.concatenate(got[:6])
    assert sorted(epoch) == list(range(3 * BLOCK))  # each pair once per epoch
    other = lq.block_batches(blocks, 32, 10, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(got, other, strict=True))
    cfg = lq.default_config()
    cfg.batch_size = 24
    with pytest.raises(ValueError, match="batch_size"):
        lq._check(cfg)


def test_the_benchmark_iterates_over_the_loss_registry():
    cfg = lq.default_config()
    assert lq.loss_names(cfg) == tuple(losses.LOSSES)
    cfg.losses = ("infonce", "nope")
    with pytest.raises(ValueError, match="nope"):
        lq.loss_names(cfg)


def _result(rng, n_q=128, seeds=(0, 1, 2, 3, 4)):
    """A hand-made benchmark result: 'good' hits far more often than the pre-trained model."""
    pre = rng.random(n_q) < 0.05

    def run(p):
        hits = {m: rng.random(n_q) < p for m in METRICS}
        return {"scores": {m: h.astype(float) for m, h in hits.items()}, "hits": hits}

    return {
        "pretrained": {
            "scores": {m: pre.astype(float) for m in METRICS},
            "hits": {m: pre for m in METRICS},
        },
        "runs": {
            "infonce": {s: run(0.3) for s in seeds},
            "flat": {s: run(0.05) for s in seeds},
        },
    }


def test_statistics_match_scipy_on_a_hand_made_result():
    res = _result(np.random.default_rng(0))
    st = lqr.analyse(res)
    m = "i2t_top1"
    pre = res["pretrained"]["scores"][m].mean()
    vals = [res["runs"]["infonce"][s]["scores"][m].mean() for s in range(5)]
    assert st["infonce"][m]["mean"] == pytest.approx(np.mean(vals))
    assert st["infonce"][m]["ci"] == pytest.approx(
        sps.t.ppf(0.975, 4) * np.std(vals, ddof=1) / np.sqrt(5)
    )
    assert mean_ci(vals) == pytest.approx((st["infonce"][m]["mean"], st["infonce"][m]["ci"]))
    vs = st["infonce"][m]["vs_pre"]
    assert vs["t_p"] == pytest.approx(sps.ttest_1samp(np.array(vals) - pre, 0).pvalue)
    pooled = np.concatenate([res["runs"]["infonce"][s]["hits"][m] for s in range(5)])
    tiled = np.tile(res["pretrained"]["hits"][m], 5)
    assert (vs["b"], vs["c"]) == (int((pooled & ~tiled).sum()), int((~pooled & tiled).sum()))
    assert lqr.beats(vs) and "vs_infonce" not in st["infonce"][m]
    flat = st["flat"][m]
    assert flat["vs_infonce"]["diff"] < 0 and flat["vs_infonce"]["mcnemar_p"] < 0.05
    ok, misses = lqr.verdict(st)
    assert not ok and misses == ["flat i2t_top1", "flat t2i_top1"]


@pytest.mark.slow
def test_a_tiny_run_is_reproducible_and_reports(tmp_path):
    cfg = lq.default_config(quick=True)
    cfg.update(
        {"losses": ("infonce", "cehnc"), "seeds": (0, 1), "train_blocks": 1, "val_blocks": 1}
    )
    cfg.update({"steps": 3, "warmup_steps": 1})
    res = lq.run(cfg, tmp_path / "a")
    again = lq.Runner(cfg, tmp_path / "a" / "pretrained", res_tok(), tmp_path / "b")
    rerun = again.finetune("cehnc", log=lambda *_: None)
    for s in (0, 1):
        for m in METRICS:
            np.testing.assert_array_equal(
                rerun[s]["scores"][m], res["runs"]["cehnc"][s]["scores"][m]
            )
        assert rerun[s]["final_loss"] == res["runs"]["cehnc"][s]["final_loss"]
    assert res["n_val"] == 64 and res["val_one_attribute_pairs"] == 192
    md = lqr.write(res, cfg, tmp_path / "out")
    assert "| infonce (2 seeds) |" in md and "| cehnc | t2i_top2 |" in md
    assert (tmp_path / "out" / "loss_quality.png").stat().st_size > 1000
    assert (tmp_path / "out" / "loss_quality.json").is_file()


def res_tok():
    from mzs_jax.pipeline.phantom_clip import shipped_checkpoint

    folder = shipped_checkpoint()
    if folder is None:
        pytest.skip("mzs_jax/assets/phantom_clip is not in this checkout")
    return folder / "tokenizer"
