"""Checkpoint-ensemble uncertainty of stage 3: identical snapshots give zero variance, different
ones give variance exactly where they disagree; `mzs train-weak` keeps the last N snapshots."""

import csv
import json
import sys

import nibabel as nib
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from mzs_jax import cli
from mzs_jax.models import resunet
from mzs_jax.pipeline import ensemble, weak

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from weak_phantom_data import write_phantom_folders  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_phantom_folders(tmp_path_factory.mktemp("ph"), 16, size=SIZE)


def _model(seed):
    cfg = resunet.model_config("tiny", image_size=SIZE)
    return resunet.ResUNet(cfg, rngs=nnx.Rngs(seed)), cfg


def _predict(workdir, images, out, n):
    argv = ["train-weak", "--workdir", str(workdir), "--predict", str(images), "--out", str(out)]
    return cli.main([*argv, "--ensemble", str(n)])


def _members_probs(models, image):
    x = image.reshape(1, SIZE, SIZE, 1)
    return np.stack([np.moveaxis(weak.predict(m, x)[0], -1, 0) for m in models])


def test_mean_and_variance_are_exact():
    p = np.random.default_rng(0).random((1, 2, 5, 5)).astype(np.float32)
    mean, var = ensemble.mean_and_variance(np.repeat(p, 7, axis=0))
    assert np.all(var == 0.0) and np.array_equal(mean, p[0])
    q = p.copy()
    q[0, :, 2, 3] = 1.0 - q[0, :, 2, 3]  # one member disagrees at one pixel
    _, var = ensemble.mean_and_variance(np.concatenate([p, p, q]))
    assert np.all((var > 0) == (np.abs(p - q)[0] > 0))
    np.testing.assert_allclose(var, np.var(np.concatenate([p, p, q]), axis=0), atol=1e-7)


def test_identical_snapshots_give_zero_variance(folders, tmp_path):
    model, cfg = _model(0)
    for epoch in (1, 2, 3):
        ensemble.snapshot(tmp_path / "w", model, cfg, epoch, keep=3)
    out = tmp_path / "pred"
    assert _predict(tmp_path / "w", folders["images"], out, 3) == 0
    for png in sorted(folders["images"].glob("*.png")):
        cid = png.stem
        var = np.load(out / "variance" / f"{cid}.npy")
        assert var.shape == (2, SIZE, SIZE) and np.all(var == 0.0)
        assert np.all(np.asarray(Image.open(out / "variance" / f"{cid}.png")) == 0)
        image = np.asarray(Image.open(png), np.float32)[..., None] / 255.0
        single = _members_probs([model], image)[0]
        np.testing.assert_allclose(np.load(out / f"{cid}_prob.npy"), single, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{cid}.png")), single.argmax(0))
    assert (out / "uncertainty.png").stat().st_size > 1000


def test_different_snapshots_give_variance_where_they_disagree(folders, tmp_path):
    models = [_model(seed)[0] for seed in (0, 1, 2)]
    cfg = _model(0)[1]
    for epoch, m in enumerate(models, start=1):
        ensemble.snapshot(tmp_path / "w", m, cfg, epoch, keep=3)
    out = tmp_path / "pred"
    assert _predict(tmp_path / "w", folders["images"], out, 3) == 0
    rows = {r["case"]: r for r in csv.DictReader((out / "uncertainty.csv").open())}
    for png in sorted(folders["images"].glob("*.png")):
        image = np.asarray(Image.open(png), np.float32)[..., None] / 255.0
        probs = _members_probs(models, image)
        var = np.load(out / "variance" / f"{png.stem}.npy")
        np.testing.assert_allclose(var, probs.var(axis=0), atol=1e-6)
        disagree = probs.max(axis=0) - probs.min(axis=0) > 1e-4
        assert disagree.any() and np.all(var[disagree] > 0)
        fg = float(var[1].mean())
        assert float(rows[png.stem]["mean_variance"]) == pytest.approx(fg, rel=1e-4)
        assert rows[png.stem]["members"] == "1 2 3"


def test_too_few_snapshots_is_a_clear_error(folders, tmp_path, capsys):
    model, cfg = _model(0)
    ensemble.snapshot(tmp_path / "w", model, cfg, 1, keep=3)
    assert _predict(tmp_path / "w", folders["images"], tmp_path / "pred", 2) != 0
    assert "--ensemble 2 needs 2 snapshots, found 1" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="config.ensemble.keep ≥ 2"):
        ensemble.load_members(tmp_path / "w", 2)


def test_train_weak_keeps_the_last_n_epoch_snapshots(folders, tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    w = tmp_path / "w"
    argv = [
        "train-weak",
        "--config",
        "configs/weak_phantom.py",
        "--workdir",
        str(w),
        f"--config.data.images={folders['images']}",
        f"--config.data.pseudo_masks={folders['pseudo']}",
        f"--config.data.image_size={SIZE}",
        "--config.batch_size=8",
        "--config.num_epochs=3",
        "--config.ensemble.keep=2",
    ]
    assert cli.main(argv) == 0
    assert ensemble.snapshot_steps(w) == [2, 3]
    log = [json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()]
    assert max(r["epoch"] for r in log if "epoch" in r) == pytest.approx(3.0)
    out = tmp_path / "pred"
    assert _predict(w, folders["images"], out, 2) == 0
    assert len(list((out / "variance").glob("*.png"))) == 16


def test_acdc_ensemble_writes_nifti_variance_in_the_original_geometry(tmp_path):
    from mzs_jax.data.phantom_formats import write_acdc

    root = tmp_path / "acdc"
    write_acdc(root, 1, size=32, n_slices=4)
    cfg = resunet.model_config("tiny", num_classes=4, image_size=SIZE)
    for epoch, seed in ((1, 0), (2, 0), (3, 1)):  # two identical snapshots and a different one
        ensemble.snapshot(tmp_path / "w", resunet.ResUNet(cfg, rngs=nnx.Rngs(seed)), cfg, epoch, 3)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    argv = ["train-weak", "--workdir", str(tmp_path / "w"), "--predict-acdc", str(root)]
    argv += ["--split", "all", "--out", str(pred), "--gt-out", str(gt), "--ensemble"]
    assert cli.main([*argv, "3"]) == 0
    for f in sorted(pred.glob("*.nii.gz")):
        var, g = nib.load(str(pred / "variance" / f.name)), nib.load(str(gt / f.name))
        assert var.shape == g.shape and np.allclose(var.affine, g.affine)
        assert np.asarray(var.dataobj).max() > 0
    assert cli.main([*argv, "2"]) == 0  # the last two differ too
    assert cli.main([*argv[:-1], "--out", str(tmp_path / "p1"), "--ensemble", "1"]) == 0
    for f in sorted((tmp_path / "p1").glob("*.nii.gz")):
        assert np.all(np.asarray(nib.load(str(tmp_path / "p1" / "variance" / f.name)).dataobj) == 0)
    assert (pred / "uncertainty.png").is_file() and (pred / "uncertainty.csv").is_file()
