"""Text-prompted saliency localises on phantoms after a short tiny-CLIP fine-tune (slow).

The tiny CLIP is trained for 100 steps on 1,500 phantom captions with F3's `mzs train-clip`;
the prompt names a structure present only in some images (focal opacity), and the pointing-game
hit rate of the saliency argmax is compared with a uniform random point (the GT area fraction).
"""

import json

import pytest

from mzs_jax import cli


@pytest.mark.slow
def test_phantom_saliency_points_into_the_prompted_structure_above_chance(
    tmp_path, monkeypatch, repo_root
):
    monkeypatch.chdir(repo_root)
    clip_wd = tmp_path / "clip"
    assert (
        cli.main(
            [
                "train-clip",
                "--config",
                "configs/phantom.py",
                "--workdir",
                str(clip_wd),
                "--config.data.path=phantom:1500",
                "--config.batch_size=64",
                "--config.total_steps=100",
                "--config.checkpoint.every_steps=100",
            ]
        )
        == 0
    )
    results = {}
    for method in ("dense", "gscorecam"):
        out = tmp_path / method
        assert (
            cli.main(
                [
                    "segment",
                    "--config",
                    f"configs/zeroshot_phantom.py:{method}",
                    "--workdir",
                    str(out),
                    f"--config.clip_workdir={clip_wd}",
                    "--config.data.n=48",
                    "--config.dpfem.enabled=False",
                    "--config.figures=False",
                    "--config.segmenter.name=crf",
                ]
            )
            == 0
        )
        rows = [json.loads(x) for x in (out / "cases.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r["class"] == "opacity" and "hit" in r]
        assert len(rows) >= 15
        hit = sum(r["hit"] for r in rows) / len(rows)
        chance = sum(r["random_hit"] for r in rows) / len(rows)
        results[method] = (hit, chance)
    print(json.dumps(results))
    hit, chance = results["dense"]
    assert hit >= 2.0 * chance, results
