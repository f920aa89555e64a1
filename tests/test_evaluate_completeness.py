"""`mzs evaluate` cannot flatter a method: a case without a prediction is an error by default
(`--missing=zero|skip` are explicit and reported), labels outside the classes are errors, and
`--compare` with an unknown method is an error instead of a NaN line."""

import csv

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mzs_jax import cli
from mzs_jax.pipeline import evaluate


def _png(path, arr):
    Image.fromarray(arr.astype(np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path):
    """24 GT cases; the method predicts all but `case23`, its hardest (an empty prediction
    there would score 0)."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    for i in range(24):
        g = np.zeros((16, 16), np.uint8)
        g[2:10, 3 : 6 + i % 8] = 1
        _png(gt / f"case{i:02d}.png", g * 255)
        if i != 23:
            _png(pred / f"case{i:02d}.png", g)  # perfect where it predicts
    return gt, pred


def _evaluate(gt, pred, out, *extra):
    argv = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out), *extra]
    return cli.main(argv + ["--method", "m", "--dataset", "d"])


def _summary(out):
    with out.with_name(out.stem + "_summary.csv").open() as f:
        return {(r["class"], r["metric"]): r for r in csv.DictReader(f)}


def test_a_missing_prediction_is_an_error_by_default_naming_the_case(folders, tmp_path, capsys):
    gt, pred = folders
    out = tmp_path / "m.csv"
    assert _evaluate(gt, pred, out) == 1
    err = capsys.readouterr().err
    assert "no prediction for 1 of 24" in err and "case23" in err and "--missing" in err
    assert not out.exists()


def test_missing_zero_scores_the_case_as_an_empty_mask(folders, tmp_path):
    gt, pred = folders
    out = tmp_path / "m.csv"
    assert _evaluate(gt, pred, out, "--missing=zero") == 0
    rows = evaluate.read_csv(out)
    assert len(rows) == 24
    by_case = {r["case"]: r for r in rows}
    assert by_case["case23"]["dice"] == 0.0 and "missing_pred_as_empty" in by_case["case23"]["note"]
    s = _summary(out)[("1", "dice")]
    assert int(s["n_cases"]) == 24 and int(s["n_skipped"]) == 0
    assert float(s["case_mean"]) == pytest.approx(23 / 24)


def test_missing_skip_is_reported_with_n(folders, tmp_path, capsys):
    gt, pred = folders
    out = tmp_path / "m.csv"
    assert _evaluate(gt, pred, out, "--missing=skip") == 0
    printed = capsys.readouterr().out
    assert "(n=23, skipped 1," in printed
    s = _summary(out)[("1", "dice")]
    assert int(s["n_cases"]) == 23 and int(s["n_skipped"]) == 1
    assert float(s["case_mean"]) == pytest.approx(1.0)
    mean = _summary(out)[("mean", "dice")]
    assert int(mean["n_cases"]) == 23 and int(mean["n_skipped"]) == 1


def test_prediction_label_outside_the_classes_is_an_error(folders, tmp_path, capsys):
    gt, pred = folders
    bad = np.zeros((16, 16), np.uint8)
    bad[0, 0] = 5
    _png(pred / "case23.png", bad)
    assert _evaluate(gt, pred, tmp_path / "m.csv") == 1
    err = capsys.readouterr().err
    assert "case23.png" in err and "labels [5] are outside the classes [1]" in err


def test_gt_label_outside_the_given_classes_is_an_error(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    g = np.zeros((4, 4, 2), np.int16)
    g[0, 0, 0], g[1, 1, 1] = 1, 3
    for d in (gt, pred):
        nib.save(nib.Nifti1Image(g, np.eye(4)), d / "vol.nii.gz")
    with pytest.raises(ValueError, match=r"vol.nii.gz: labels \[3\] are outside the classes"):
        evaluate.evaluate_dirs(pred, gt, method="m", dataset="d", classes=[1, 2])


def test_compare_with_an_unknown_method_is_an_error(folders, tmp_path, capsys):
    gt, pred = folders
    out = tmp_path / "m.csv"
    assert _evaluate(gt, pred, out, "--missing=zero") == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--out", str(out), "--compare", "m", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no rows for method(s) ['nope']" in err and "['m']" in err


def test_missing_mode_is_checked_in_the_api(folders):
    gt, pred = folders
    with pytest.raises(ValueError, match="--missing='drop'"):
        evaluate.evaluate_dirs(pred, gt, method="m", dataset="d", missing="drop")


def test_garbage_nifti_is_one_clear_error(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    (gt / "vol.nii.gz").write_bytes(b"this is not a NIfTI file at all" * 20)
    (pred / "vol.nii.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 50)  # a gzip magic, then junk
    with pytest.raises(ValueError, match="cannot read .*vol.nii.gz"):
        evaluate.evaluate_dirs(pred, gt, method="m", dataset="d")
