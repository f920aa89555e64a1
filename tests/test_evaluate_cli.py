"""`mzs evaluate`: folders of PNG / NIfTI masks (+ soft maps) -> per-case CSV, summary, t-test."""

import csv

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, roc_auc_score

from mzs_jax import cli
from mzs_jax.pipeline import evaluate


def _png(path, arr):
    Image.fromarray(arr.astype(np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    cases = {}
    for i in range(4):
        g = np.zeros((16, 16), np.uint8)
        g[3 + i : 10 + i, 4:12] = 1
        s = np.clip(g * 0.5 + rng.random(g.shape) * 0.6, 0, 1).astype(np.float32)
        p = (s > 0.5).astype(np.uint8)
        _png(gt / f"case{i}.png", g * 255)  # {0,255} binary PNG -> {0,1}
        _png(pred / f"case{i}.png", p)
        np.save(pred / f"case{i}_prob.npy", s)
        cases[f"case{i}"] = (g, p, s)
    return gt, pred, cases


def test_cli_writes_one_row_per_case_matching_sklearn(folders, tmp_path):
    gt, pred, cases = folders
    out = tmp_path / "m.csv"
    assert (
        cli.main(
            [
                "evaluate",
                "--pred",
                str(pred),
                "--gt",
                str(gt),
                "--out",
                str(out),
                "--method",
                "zs",
                "--dataset",
                "ph",
            ]
        )
        == 0
    )
    rows = evaluate.read_csv(out)
    assert len(rows) == 4
    for r in rows:
        g, p, s = cases[r["case"]]
        assert r["dice"] == pytest.approx(f1_score(g.ravel(), p.ravel()), abs=1e-6)
        assert r["auc"] == pytest.approx(roc_auc_score(g.ravel(), s.ravel()), abs=1e-6)
    with (tmp_path / "m_summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    dice_mean = [s for s in summary if s["metric"] == "dice" and s["class"] == "1"][0]
    assert float(dice_mean["case_mean"]) == pytest.approx(
        np.mean([r["dice"] for r in rows]), abs=1e-6
    )


def test_cli_compare_prints_paired_ttest(folders, tmp_path, capsys):
    gt, pred, _ = folders
    out = tmp_path / "m.csv"
    for method, d in (("A", pred), ("B", gt)):
        cli.main(
            [
                "evaluate",
                "--pred",
                str(d),
                "--gt",
                str(gt),
                "--out",
                str(out),
                "--method",
                method,
                "--dataset",
                "ph",
                "--append",
            ]
        )
    rep = tmp_path / "rep"
    assert (
        cli.main(["evaluate", "--out", str(out), "--compare", "A", "B", "--report", str(rep)]) == 0
    )
    assert "[ph] dice: A" in capsys.readouterr().out
    assert "| ph | B |" in (rep / "report.md").read_text()


def test_volumes_are_evaluated_volume_wise_from_nifti(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    g = np.zeros((8, 8, 4), np.int16)
    g[2:6, 2:6, :2], g[0:2, 0:2, 3] = 1, 2
    p = g.copy()
    p[2:6, 2:6, 1] = 0
    for d, a in ((gt_dir, g), (pred_dir, p)):
        nib.save(nib.Nifti1Image(a, np.eye(4)), d / "vol0.nii.gz")
    rows = evaluate.evaluate_dirs(
        pred_dir, gt_dir, method="m", dataset="acdc", class_names={1: "LV", 2: "RV"}
    )
    by = {r["class"]: r for r in rows}
    assert by["LV"]["dice"] == pytest.approx(2 * 16 / (16 + 32)) and by["RV"]["dice"] == 1.0


def test_missing_ground_truth_and_bad_shapes_name_the_file(folders, tmp_path, capsys):
    gt, pred, _ = folders
    (gt / "case3.png").unlink()
    assert (
        cli.main(
            ["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "x.csv")]
        )
        == 1
    )
    assert "case3" in capsys.readouterr().err
    _png(gt / "case3.png", np.zeros((5, 5)))
    with pytest.raises(ValueError, match="case3"):
        evaluate.evaluate_dirs(pred, gt, method="m", dataset="d")
    assert not (tmp_path / "x.csv").exists()
