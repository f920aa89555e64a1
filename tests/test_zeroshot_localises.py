"""Stage 2 localises from the text: the shipped phantom CLIP (a tiny CLIP fine-tuned
on phantom captions, `mzs_jax/assets/phantom_clip/README.md`), gScoreCAM at the configured layer,
on held-out chest X-ray phantoms with cardiomegaly, prompted for the enlarged cardiac silhouette.

Three baselines: a uniform random point (the GT's area fraction), the other prompts' maps on the
same images (a map that peaks on the heart whatever the prompt is not text-driven) and the same
architecture untrained (a hit rate reached without training is image statistics). Measured over
three training seeds and untrained towers in docs/zeroshot.md ("Which prompt does a phantom CLIP
localise?"); this asserts it on the shipped model.
"""

import json

import pytest
from flax import nnx

from mzs_jax import cli, demo_clip
from mzs_jax.models import clip
from mzs_jax.train.checkpoint import save_model

N = 32


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    folder = demo_clip.shipped_checkpoint()
    if folder is None:
        pytest.skip("mzs_jax/assets/phantom_clip is not in this checkout")
    wd = tmp_path_factory.mktemp("shipped")
    demo_clip.import_shipped(folder, wd)
    return wd, folder / "tokenizer"


def _heart(clip_wd, tokenizer, out, repo_root, monkeypatch) -> dict:
    monkeypatch.chdir(repo_root)
    argv = [
        "segment",
        "--config",
        "configs/zeroshot_phantom.py:cardiomegaly,gscorecam",
        "--workdir",
        str(out),
        f"--config.clip_workdir={clip_wd}",
        f"--config.tokenizer={tokenizer}",
        f"--config.data.n={N}",
        "--config.dpfem.enabled=False",
        "--config.figures=False",
        "--config.segmenter.name=crf",
    ]
    assert cli.main(argv) == 0
    return json.loads((out / "summary.json").read_text())["per_class"]


def test_gscorecam_points_at_the_prompted_heart_and_crf_box_beats_raw_thresholding(
    shipped, tmp_path, repo_root, monkeypatch
):
    per_class = _heart(*shipped, tmp_path / "seg", repo_root, monkeypatch)
    heart = per_class["heart"]
    assert heart["n"] == N  # every case has cardiomegaly, so a heart
    # Pointing game: well above a random point, pixel-exact and at the token grid's resolution.
    assert heart["hit"] >= 0.8 and heart["hit"] >= 4 * heart["random_hit"], heart
    assert heart["cell_hit"] >= 3 * heart["random_cell"], heart
    # Text-driven: the other prompts' maps of the same images rarely peak on the heart.
    assert heart["other_hit"] <= 0.2 and heart["hit"] - heart["other_hit"] >= 0.6, heart
    # CRF + closing + tightest box gives a better heart box than thresholding the raw map.
    assert heart["box_iou"] >= heart["box_iou_raw"] + 0.05, heart
    opacity = per_class["opacity"]  # no opacity in cardiomegaly phantoms: no GT, no score
    assert opacity["n"] == 0 and opacity["hit"] is None  # strict JSON: null, not NaN


def test_the_same_tower_untrained_does_not_point_at_the_heart(
    shipped, tmp_path, repo_root, monkeypatch
):
    mc = clip.model_config("tiny")
    wd = tmp_path / "untrained"
    save_model(wd, clip.CLIP(mc, rngs=nnx.Rngs(0)), mc, step=0)
    heart = _heart(wd, shipped[1], tmp_path / "seg", repo_root, monkeypatch)["heart"]
    assert heart["hit"] <= 2 * heart["random_hit"], heart
