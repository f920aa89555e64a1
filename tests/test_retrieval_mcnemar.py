"""`mzs eval-retrieval --baseline`: per-query hits pair up across models and McNemar's counts
are the discordant pairs of those hits."""

import shutil

import numpy as np
from flax import nnx

from mzs_jax import cli
from mzs_jax.data import phantom
from mzs_jax.data.tokenizer import build_wordpiece_tokenizer
from mzs_jax.models import clip
from mzs_jax.pipeline import retrieval
from mzs_jax.train.checkpoint import restore_model, save_model
from mzs_jax.train.clip_task import eval_examples


def test_query_hits_average_to_the_roco_metric_and_follow_the_shuffle():
    rs = np.random.RandomState(3)
    img = rs.randn(130, 6)
    txt = img + rs.randn(130, 6)
    hits = retrieval.query_hits(img, txt, batch=50, seed=2)
    assert all(v.shape == (100,) and v.dtype == bool for v in hits.values())  # 30 dropped
    metric = retrieval.roco_retrieval(img, txt, batch=50, seed=2)
    assert {k: float(np.mean(v)) for k, v in hits.items()} == metric
    assert np.all(hits["i2t_top1"] <= hits["i2t_top2"])


def test_mcnemar_table_counts_discordant_queries():
    a = {m: np.array([1, 1, 1, 0, 0, 1], bool) for m in retrieval.METRICS}
    b = {m: np.array([0, 0, 1, 0, 1, 1], bool) for m in retrieval.METRICS}
    text = retrieval.mcnemar_table(a, b, "A", "B")
    rows = [
        r.split("|")[1:-1]
        for r in text.splitlines()
        if r.startswith("| i2t") or r.startswith("| t2i")
    ]
    assert len(rows) == 4
    for r in rows:
        assert (int(r[1]), int(r[2])) == (2, 1)  # only A right twice, only B right once
        assert float(r[4]) == 1.0 and r[5].strip() == "exact"


def test_eval_retrieval_with_a_baseline_writes_the_mcnemar_table(tmp_path):
    cfg = clip.model_config("tiny")
    wds = [tmp_path / "a", tmp_path / "b"]
    build_wordpiece_tokenizer(
        [s["caption"] for s in phantom.generate("xray", 40)], tmp_path / "tok", vocab_size=512
    )
    for seed, wd in enumerate(wds):
        save_model(wd, clip.CLIP(cfg, rngs=nnx.Rngs(seed)), cfg)
        shutil.copytree(tmp_path / "tok", wd / "tokenizer")
    argv = ["eval-retrieval", "--workdir", str(wds[0]), "--data", "phantom:60", "--split", "all"]
    assert cli.main([*argv, "--seeds", "2", "--baseline", str(wds[1])]) == 0
    text = (wds[0] / "retrieval.md").read_text()
    assert "McNemar" in text and str(wds[1]) in text
    rows = [r for r in text.splitlines() if r.startswith("| i2t_top1 |")]
    assert len(rows) == 1
    hits = []
    for wd in wds:  # the same per-query hits, computed here from the saved models
        model, mc = restore_model(wd)
        ex = eval_examples("phantom:60", None, "all", mc, workdir=wd)
        hits.append(retrieval.query_hits(*retrieval.embed(model, ex), batch=50)["i2t_top1"])
    expected = (int((hits[0] & ~hits[1]).sum()), int((~hits[0] & hits[1]).sum()))
    assert tuple(int(x) for x in rows[0].split("|")[2:4]) == expected
    assert len(hits[0]) == 50  # one batch of 50 queries from 60 pairs
    csv_rows = (wds[0] / "retrieval.csv").read_text().splitlines()
    assert len(csv_rows) == 3  # header + model + baseline
