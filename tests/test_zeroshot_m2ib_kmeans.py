"""`mzs segment` runs M2IB saliency and KMeans post-processing when the config says so."""

import json
import runpy

import numpy as np
import pytest
from flax import nnx

from mzs_jax import cli
from mzs_jax.data import phantom
from mzs_jax.data.tokenizer import build_wordpiece_tokenizer
from mzs_jax.models import clip
from mzs_jax.pipeline import m2ib, zeroshot
from mzs_jax.train.checkpoint import save_model


@pytest.fixture(scope="module")
def clip_workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("clip")
    cfg = clip.model_config("tiny")
    save_model(wd, clip.CLIP(cfg, rngs=nnx.Rngs(0)), cfg)
    build_wordpiece_tokenizer(
        [s["caption"] for s in phantom.generate("xray", 40)], wd / "tokenizer", vocab_size=512
    )
    return wd


def test_segment_with_m2ib_and_kmeans(clip_workdir, tmp_path, monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)
    out = tmp_path / "seg"
    overrides = {"data.n": 3, "saliency.m2ib.steps": 3, "saliency.m2ib.samples": 2}
    argv = [
        "segment",
        "--config",
        "configs/zeroshot_phantom.py:m2ib,kmeans",
        "--workdir",
        str(out),
        f"--config.clip_workdir={clip_workdir}",
        "--config.dpfem.enabled=False",
        "--config.figures=False",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["postprocess"] for r in records} == {"kmeans>largest1"}
    assert json.loads((out / "summary.json").read_text())["postprocess"] == ["kmeans>largest1"]
    per_case = (out / "per_case.csv").read_text().splitlines()
    assert per_case[0].split(",")[5:11] == ["iou", "dice", "auc", "nsd", "hd95", "nsd_tol"]

    # The saved maps are the configured M2IB's: layer 0 of the tiny ViT, seed 12, 3 steps, 2 copies.
    cfg = runpy.run_path(str(repo_root / "configs" / "zeroshot_phantom.py"))["get_config"](
        "m2ib,kmeans"
    )
    cfg.clip_workdir = str(clip_workdir)
    model, tok, model_cfg = zeroshot.load_clip(cfg)
    text = zeroshot.encode_prompts(model, tok, dict(cfg.prompts))
    r = records[0]
    image = np.load(out / "images" / f"{r['case']}.npy")
    _, x = zeroshot.clip_inputs([image], 64)
    expected = m2ib.m2ib(model, x, text[r["class"]][None], layer=0, steps=3, samples=2, seed=12)
    saved = np.load(out / "saliency" / f"{r['case']}_{r['class']}.npy")
    np.testing.assert_allclose(saved, np.asarray(expected)[0], atol=1e-5)


def test_unknown_saliency_method_is_one_error_for_both_backends():
    cfg = zeroshot.default_config()
    for backend in ("jax", "torch"):
        cfg.saliency.backend, cfg.saliency.method = backend, "scorecam"
        with pytest.raises(ValueError, match="saliency.method must be one of .*'m2ib'"):
            zeroshot.compute_saliency(None, None, [], None, cfg, None)
