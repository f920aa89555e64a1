"""`mzs segment` on a COVID-QU-Ex tree (phantom layout): case ids hold their class folder
(`COVID-19/covid_1`); every file is written flat (`COVID-19__covid_1_lungs.png`) and stage 3
reads the result as its training set."""

import json

import numpy as np
from flax import nnx

from mzs_jax import cli
from mzs_jax.data import phantom, phantom_formats
from mzs_jax.data.tokenizer import build_wordpiece_tokenizer
from mzs_jax.models import clip
from mzs_jax.pipeline import weak
from mzs_jax.train.checkpoint import save_model


def test_segment_runs_on_a_covidqu_tree_with_class_folders_in_the_ids(
    tmp_path, monkeypatch, repo_root
):
    monkeypatch.chdir(repo_root)
    cw = tmp_path / "clip"
    cfg = clip.model_config("tiny")
    save_model(cw, clip.CLIP(cfg, rngs=nnx.Rngs(0)), cfg)
    build_wordpiece_tokenizer(["frontal chest radiograph showing both lungs"], cw / "tokenizer")
    root = tmp_path / "cq"
    index = phantom_formats.write_covidqu(root, phantom.generate_xray(12, 0, 64), 0)
    n_train = sum(r["split"] == "Train" for r in index)
    out = tmp_path / "seg"
    argv = ["segment", "--config", "configs/zeroshot_covidqu.py", "--workdir", str(out),
            f"--config.clip_workdir={cw}", f"--config.data.path={root}",
            "--config.data.split=train", "--config.dpfem.enabled=False",
            "--config.saliency.topk=8", "--config.figures=False"]  # fmt: skip
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(records) == n_train and all("/" in r["case"] for r in records)
    for r in records:
        flat = r["case"].replace("/", "__")
        assert (out / "masks" / f"{flat}_lungs.png").is_file()
        assert (out / "images" / f"{flat}.npy").is_file()
    assert not any(p.is_dir() for p in (out / "masks").iterdir())
    pseudo = weak.SegmentationFolder(
        out / "images", out / "masks", size=32, in_channels=1, mask_classes=("lungs",)
    )
    assert len(pseudo) == n_train and set(np.unique(pseudo[0]["mask"])) <= {0, 1}
