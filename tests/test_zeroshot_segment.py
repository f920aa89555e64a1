"""`mzs segment` end to end on phantoms with a random tiny CLIP: outputs, resume, clear errors.

Random weights: this checks the plumbing (files, records, resumability), not mask quality.
"""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from mzs_jax import cli
from mzs_jax.data import phantom
from mzs_jax.data.tokenizer import build_wordpiece_tokenizer
from mzs_jax.models import clip
from mzs_jax.pipeline import weak, zeroshot
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


def _argv(clip_workdir, workdir, *extra):
    return [
        "segment",
        "--config",
        "configs/zeroshot_phantom.py",
        "--workdir",
        str(workdir),
        f"--config.clip_workdir={clip_workdir}",
        "--config.data.n=4",
        "--config.dpfem.total_steps=2",
        "--config.dpfem.batch_size=8",
        "--config.saliency.topk=8",
        *extra,
    ]


@pytest.mark.parametrize(
    "dpfem", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["no_dpfem", "dpfem"]
)
def test_segment_writes_masks_figures_metrics_and_resumes(
    clip_workdir, tmp_path, capsys, monkeypatch, repo_root, dpfem
):
    monkeypatch.chdir(repo_root)
    out = tmp_path / "seg"
    argv = _argv(clip_workdir, out, f"--config.dpfem.enabled={dpfem}")
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(records) == 8  # 4 cases × 2 prompts
    for r in records:
        mask = np.asarray(Image.open(out / "masks" / f"{r['case']}_{r['class']}.png"))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert (out / "figures" / f"{r['case']}_{r['class']}.png").is_file()
        assert r["segmenter"].startswith(("grabcut", "none(empty map)"))
        assert r["empty"] == (r["segmenter"] == "none(empty map)") and 0 <= r["iou"] <= 1
    csv_rows = (out / "per_case.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 8 and 0 <= summary["random_hit"] <= 1
    assert summary["random_hit"] <= summary["random_cell"] <= 1  # a cell is coarser than a pixel
    assert (out / "dpfem" / "ckpt").is_dir() == dpfem
    # Stage 3 reads this workdir as its training set: images/<id>.npy + masks/<id>_<class>.png.
    classes = sorted({r["class"] for r in records})
    pseudo = weak.SegmentationFolder(
        out / "images", out / "masks", size=32, in_channels=1, mask_classes=classes
    )
    assert len(pseudo) == 4 and pseudo[0]["image"].shape == (32, 32, 1)
    assert set(np.unique(pseudo[0]["mask"])) <= set(range(len(classes) + 1))

    capsys.readouterr()
    assert cli.main(argv) == 0  # resumed: nothing recomputed
    printed = capsys.readouterr().out
    assert "[segment]" not in printed and "[saliency]" not in printed and "[dpfem]" not in printed
    assert len((out / "cases.jsonl").read_text().splitlines()) == 8
    if dpfem:
        _check_dpfem_split(clip_workdir, tmp_path, out, records, capsys)


def _check_dpfem_split(clip_workdir, tmp_path, out, records, capsys):
    """DPFEM trained on its own phantoms (seed 2000), recorded, disjoint from the scored ones;
    another run reuses it; scoring its training cases is refused, with or without reuse."""
    from mzs_jax.pipeline.zeroshot_dpfem import case_key

    cfg = cli.load_config(["--config=configs/zeroshot_phantom.py", "--config.data.n=4"])
    trained = json.loads((out / "dpfem" / "train_cases.json").read_text())
    assert trained["data"]["seed"] == 2000 and len(trained["cases"]) == 4
    scored = {case_key(cfg.data, r["case"]) for r in records}
    assert len(scored) == 4 and not scored & set(trained["cases"])

    reused = tmp_path / "reused"
    argv = _argv(clip_workdir, reused, "--config.data.start=4", f"--config.dpfem.reuse={out}")
    assert cli.main(argv) == 0
    assert not (reused / "dpfem").exists()  # nothing trained: the DPFEM of `out` was used
    assert len((reused / "cases.jsonl").read_text().splitlines()) == 8

    capsys.readouterr()
    argv = _argv(
        clip_workdir,
        tmp_path / "x",
        "--config.data.seed=2000",
        "--config.data.start=2",
        f"--config.dpfem.reuse={out}",
    )
    assert cli.main(argv) == 1
    assert "2 scored case(s) are among the cases DPFEM was trained on" in capsys.readouterr().err
    argv = _argv(
        clip_workdir,
        tmp_path / "y",
        "--config.dpfem.train_data.seed=1000",
        "--config.dpfem.train_data.start=2",
    )
    assert cli.main(argv) == 1
    assert "2 scored case(s) are among the cases DPFEM was trained on" in capsys.readouterr().err
    assert not (tmp_path / "y" / "dpfem" / "ckpt").exists()  # refused before training


def test_dpfem_without_a_training_split_is_a_clear_error(tmp_path):
    from mzs_jax.pipeline import zeroshot_dpfem

    cfg = zeroshot.default_config()  # dpfem.train_data: every key None
    with pytest.raises(ValueError, match="dpfem.train_data is empty"):
        zeroshot_dpfem.trained_model(cfg, tmp_path, [], lambda split: ([], []))
    cfg.dpfem.reuse = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no train_cases.json"):
        zeroshot_dpfem.trained_model(cfg, tmp_path, [], lambda split: ([], []))


def test_dpfem_bypass_and_crf_segmenter_and_dense_method(
    clip_workdir, tmp_path, monkeypatch, repo_root
):
    monkeypatch.chdir(repo_root)
    out = tmp_path / "seg"
    argv = _argv(
        clip_workdir,
        out,
        "--config.dpfem.enabled=False",
        "--config.segmenter.name=crf",
        "--config.saliency.method=dense",
        "--config.figures=False",
    )
    assert cli.main(argv) == 0
    assert not (out / "dpfem").exists() and not (out / "figures").exists()
    records = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert {r["segmenter"] for r in records} <= {"crf-mask", "none(empty map)"}


def test_sam_without_checkpoint_fails_with_one_clear_line(
    clip_workdir, tmp_path, capsys, monkeypatch, repo_root
):
    monkeypatch.chdir(repo_root)
    argv = _argv(
        clip_workdir,
        tmp_path / "seg",
        "--config.segmenter.name=sam",
        "--config.dpfem.enabled=False",
    )
    assert cli.main(argv) == 1
    assert "segmenter.checkpoint is required" in capsys.readouterr().err


def test_missing_clip_workdir_and_unknown_structure_are_clear_errors(
    tmp_path, capsys, monkeypatch, repo_root
):
    monkeypatch.chdir(repo_root)
    base = ["segment", "--config", "configs/zeroshot_phantom.py", "--workdir", str(tmp_path)]
    assert cli.main(base) == 1
    assert "clip_workdir is required" in capsys.readouterr().err
    cfg = zeroshot.default_config()
    cfg.prompts = {"spleen": "a spleen"}
    with pytest.raises(ValueError, match="prompts.spleen"):
        zeroshot.load_cases(cfg)
    cfg = zeroshot.default_config()
    cfg.data.findings = "cardiomegaly,fracture"
    with pytest.raises(ValueError, match="data.findings.*fracture"):
        zeroshot.load_cases(cfg)


def test_acdc_volumes_are_segmented_slice_by_slice_and_written_in_original_geometry(
    clip_workdir, tmp_path, monkeypatch, repo_root
):
    import nibabel as nib

    from mzs_jax.data.phantom_cli import make

    monkeypatch.chdir(repo_root)
    data = make(tmp_path / "acdc", "mri", n=1, size=48, slices=3, progress=False)
    out = tmp_path / "seg"
    argv = [
        "segment",
        "--config",
        "configs/zeroshot_acdc.py",
        "--workdir",
        str(out),
        f"--config.clip_workdir={clip_workdir}",
        f"--config.data.path={data}",
        "--config.data.split=all",  # one patient; no DPFEM, so nothing is trained on them
        "--config.dpfem.enabled=False",
        "--config.figures=False",
        "--config.segmenter.name=crf",
        "--config.saliency.topk=8",
    ]
    assert cli.main(argv) == 0
    written = sorted((out / "volumes").glob("*.nii.gz"))
    assert written
    refs = {p.name.split(".")[0]: p for p in data.rglob("*_frame[0-9][0-9].nii.gz")}
    for path in written:
        pred, ref = nib.load(str(path)), nib.load(str(refs[path.name.split(".")[0]]))
        assert pred.shape == ref.shape[:3]
        np.testing.assert_allclose(pred.affine, ref.affine)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 3}


def test_synapse_test_volumes_are_segmented_and_scored_volume_wise(
    clip_workdir, tmp_path, monkeypatch, repo_root
):
    from mzs_jax.data.phantom_formats import write_synapse
    from mzs_jax.pipeline import evaluate
    from mzs_jax.pipeline.zeroshot import slug

    monkeypatch.chdir(repo_root)
    write_synapse(tmp_path / "synapse", 5, size=32, n_slices=3)
    out = tmp_path / "seg"
    argv = [
        "segment",
        "--config",
        "configs/zeroshot_synapse.py:dense",
        "--workdir",
        str(out),
        f"--config.clip_workdir={clip_workdir}",
        f"--config.data.path={tmp_path / 'synapse'}",
        "--config.data.n=1",
        "--config.dpfem.enabled=False",
        "--config.figures=False",
        "--config.segmenter.name=crf",
    ]
    assert cli.main(argv) == 0
    (pred,) = sorted((out / "volumes").glob("*.npy"))
    labels, gt = np.load(pred), np.load(out / "volumes_gt" / pred.name)
    assert labels.shape == gt.shape and labels.shape[0] == 3  # (Z, H, W)
    assert set(np.unique(labels).tolist()) <= set(range(9))
    # Each slice's masks land in its own plane; the last prompt (stomach, 8) is written last.
    for z in range(3):
        masks = {
            name: np.asarray(Image.open(out / "masks" / f"{pred.stem}_z{z:03d}_{slug(name)}.png"))
            > 0
            for name in ("aorta", "gallbladder", "left kidney", "right kidney", "liver",
                         "pancreas", "spleen", "stomach")
        }  # fmt: skip
        np.testing.assert_array_equal(labels[z] > 0, np.any(list(masks.values()), axis=0))
        assert np.all(labels[z][masks["stomach"]] == 8)
    assert (labels > 0).any()
    rows = evaluate.evaluate_dirs(
        out / "volumes", out / "volumes_gt", method="zeroshot", dataset="synapse",
        classes=list(range(1, 9)),
    )  # fmt: skip
    assert len(rows) == 8


@pytest.mark.slow
def test_torch_and_jax_saliency_backends_give_the_same_maps_in_the_pipeline(
    clip_workdir, tmp_path, monkeypatch, repo_root
):
    monkeypatch.chdir(repo_root)
    maps = {}
    for backend in ("jax", "torch"):
        out = tmp_path / backend
        argv = _argv(
            clip_workdir,
            out,
            f"--config.saliency.backend={backend}",
            "--config.dpfem.enabled=False",
            "--config.figures=False",
            "--config.segmenter.name=crf",
            "--config.data.n=2",
        )
        assert cli.main(argv) == 0
        maps[backend] = {p.name: np.load(p) for p in sorted((out / "saliency").glob("*.npy"))}
    assert maps["jax"].keys() == maps["torch"].keys() and len(maps["jax"]) == 4
    for name, a in maps["jax"].items():
        b = maps["torch"][name]
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99, name


def test_token_cells_and_the_cell_pointing_game_on_a_non_square_image():
    from mzs_jax.pipeline import postprocess
    from mzs_jax.pipeline.zeroshot_outputs import localisation, token_cells

    gt = np.zeros((12, 20), bool)
    gt[5, 9] = True  # rows 0-2|3-5|6-8|9-11 and columns 0-4|5-9|10-14|15-19 on a 4×4 grid
    cells = token_cells(gt, 4)
    assert cells.sum() == 1 and cells[1, 1]
    sal = np.zeros((12, 20), np.float32)
    sal[3, 5] = 1.0  # same cell as the structure, but not on it
    refined = postprocess.refine(np.zeros((12, 20)), sal, postprocess.default_config())
    r = localisation(sal, refined, gt, grid=4)
    assert r["hit"] == 0.0 and r["cell_hit"] == 1.0
    assert r["random_hit"] == 1 / 240 and r["random_cell"] == 1 / 16
    sal[3, 5], sal[11, 19] = 0.0, 1.0
    assert localisation(sal, refined, gt, grid=4)["cell_hit"] == 0.0
    assert "cell_hit" not in localisation(sal, refined, gt)
    # Other prompts' maps of the same image: one peaks on the structure, one in its cell only.
    on, near = np.zeros((12, 20)), np.zeros((12, 20))
    on[5, 9], near[3, 5] = 1.0, 1.0
    r = localisation(sal, refined, gt, grid=4, others=[on, near])
    assert r["other_hit"] == 0.5 and r["other_cell"] == 1.0
    assert "other_hit" not in localisation(sal, refined, gt, grid=4)  # no other prompts


def test_summary_has_per_class_means_and_counts_only_cases_with_a_structure():
    records = [
        {"class": "heart", "empty": False, "segmenter": "crf", "hit": 1.0, "iou": 0.5},
        {"class": "heart", "empty": False, "segmenter": "crf", "hit": 0.0, "iou": 0.3},
        {"class": "opacity", "empty": True, "segmenter": "none(empty map)", "iou": 0.0},
    ]
    s = zeroshot.summarize(records)
    assert s["n"] == 3 and s["n_empty"] == 1 and s["hit"] == 0.5
    assert s["per_class"]["heart"]["n"] == 2 and s["per_class"]["heart"]["iou"] == 0.4
    assert s["per_class"]["opacity"]["n"] == 0 and np.isnan(s["per_class"]["opacity"]["hit"])
