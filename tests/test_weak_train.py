"""`mzs train-weak` on tiny phantoms: trains through the shared engine, loss falls, validation
Dice is logged, predictions feed `mzs evaluate`, and an interrupted run resumes exactly."""

import json
import sys

import numpy as np
import pytest

from mzs_jax import cli
from mzs_jax.pipeline import evaluate, weak
from mzs_jax.train.loop import final_params

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from weak_phantom_data import write_phantom_folders  # noqa: E402

CONFIG = "configs/weak_phantom.py"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_phantom_folders(tmp_path_factory.mktemp("ph"), 24)


def _args(folders, workdir, *extra):
    return [
        "train-weak",
        "--config",
        CONFIG,
        "--workdir",
        str(workdir),
        f"--config.data.images={folders['images']}",
        f"--config.data.pseudo_masks={folders['pseudo']}",
        "--config.data.image_size=32",
        "--config.batch_size=8",
        *extra,
    ]


def _log(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # ~20 s on an idle 2-core CPU (6 epochs, per-epoch validation, predict)
def test_train_weak_loss_falls_and_validates_against_gt(folders, tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    w = tmp_path / "w"
    assert (
        cli.main(
            _args(
                folders,
                w,
                f"--config.data.gt_masks={folders['gt']}",
                "--config.num_epochs=6",
                "--config.optimizer.lr=0.003",
            )
        )
        == 0
    )
    log = _log(w)
    losses = [r["loss"] for r in log if "loss" in r]
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3])
    evals = [r for r in log if "val/dice" in r]
    assert len(evals) == 6 and all(r["val/against_gt"] == 1.0 for r in evals)
    assert evals[-1]["val/dice"] > max(0.5, evals[0]["val/dice"] + 0.2)
    best = weak.best_step(w)
    assert best == max(evals, key=lambda r: (r["val/dice"], r["step"]))["step"]
    out = tmp_path / "pred"
    assert (
        cli.main(
            [
                "train-weak",
                "--workdir",
                str(w),
                "--predict",
                str(folders["images"]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = evaluate.evaluate_dirs(out, folders["gt"], method="resunet", dataset="ph")
    assert len(rows) == 24 and all(not np.isnan(r["auc"]) for r in rows)
    assert np.mean([r["dice"] for r in rows]) == pytest.approx(
        max(r["val/dice"] for r in evals), abs=0.1
    )


def test_without_gt_validation_uses_held_out_pseudo_masks(
    folders, tmp_path, repo_root, monkeypatch
):
    monkeypatch.chdir(repo_root)
    task = weak.WeakTask(
        cli.load_config(
            [
                f"--config={repo_root / CONFIG}",
                f"--config.data.images={folders['images']}",
                f"--config.data.pseudo_masks={folders['pseudo']}",
            ]
        )
    )
    assert task.val_target == "pseudo" and len(task.val) == round(0.15 * 24)
    held_out = set(task.val_source_ids)
    assert not held_out & set(task.train_ids) and len(held_out | set(task.train_ids)) == 24


@pytest.mark.slow  # three short runs of the engine
def test_interrupted_then_resumed_run_equals_uninterrupted(
    folders, tmp_path, repo_root, monkeypatch
):
    """The engine's kill -9 equality is tested in test_train_resume.py; here: the ResUNet task
    (augmentation via grain random_map included) resumes bit-identically through it."""
    monkeypatch.chdir(repo_root)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    common = [
        "--config.checkpoint.every_steps=2",
        "--config.checkpoint.async_save=False",
        "--config.data.val_fraction=0.0",
        "--config.mesh.data=2",  # still sharded, fewer virtual devices to run on 2 cores
    ]  # no per-epoch evaluation: faster
    assert cli.main(_args(folders, ref, "--config.total_steps=8", *common)) == 0
    assert cli.main(_args(folders, cut, "--config.total_steps=4", *common)) == 0
    assert cli.main(_args(folders, cut, "--config.total_steps=8", *common)) == 0
    a, b = final_params(ref), final_params(cut)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_missing_pseudo_mask_folder_is_one_clear_error(
    folders, tmp_path, repo_root, monkeypatch, capsys
):
    monkeypatch.chdir(repo_root)
    args = _args(folders, tmp_path / "x")
    args[args.index(f"--config.data.pseudo_masks={folders['pseudo']}")] = (
        f"--config.data.pseudo_masks={tmp_path / 'nope'}"
    )
    assert cli.main(args) == 1
    assert "nope" in capsys.readouterr().err


def test_per_class_masks_of_mzs_segment_stack_into_label_maps(tmp_path):
    from PIL import Image

    a = np.zeros((4, 4), np.uint8)
    a[:2] = 1
    b = np.zeros((4, 4), np.uint8)
    b[1:3] = 1
    for name, m in (("c1_right_lung", a), ("c1_left_lung", b)):
        Image.fromarray(m * 255).save(tmp_path / f"{name}.png")
    paths = weak.per_class_masks(tmp_path, ("right_lung", "left_lung"))
    label = weak.read_label_map(paths["c1"])
    np.testing.assert_array_equal(label, np.where(b > 0, 2, np.where(a > 0, 1, 0)))
    (tmp_path / "c2_right_lung.png").write_bytes((tmp_path / "c1_right_lung.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="c2"):
        weak.per_class_masks(tmp_path, ("right_lung", "left_lung"))
