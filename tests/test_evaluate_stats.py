"""Summaries (mean ± std across cases and seeds), paired t-test and McNemar from CSV rows."""

import math

import numpy as np
import pytest
from scipy.stats import chi2, ttest_rel

from mzs_jax.pipeline import evaluate
from mzs_jax.pipeline.stats import mcnemar, paired_ttest


def _rows(method, values_by_seed, cls="1", auc=None):
    rows = []
    for seed, vals in values_by_seed.items():
        for i, v in enumerate(vals):
            rows.append(
                {
                    "method": method,
                    "dataset": "ph",
                    "seed": str(seed),
                    "case": f"c{i}",
                    "class": cls,
                    "iou": v / (2 - v),
                    "dice": v,
                    "auc": float("nan") if auc is None else auc[i],
                    "nsd": v,
                    "hd95": 10 * (1 - v),
                    "pred_voxels": 1,
                    "gt_voxels": 1,
                    "note": "",
                }
            )
    return rows


def test_summary_is_case_and_seed_mean_and_sample_std():
    rows = _rows("m", {0: [0.2, 0.4, 0.6], 1: [0.4, 0.6, 0.8]})
    s = {r["metric"]: r for r in evaluate.summarize(rows)}["dice"]
    # per-case means over seeds: 0.3, 0.5, 0.7 ; per-seed means: 0.4, 0.6
    assert s["case_mean"] == pytest.approx(0.5) and s["case_std"] == pytest.approx(0.2)
    assert s["seed_mean"] == pytest.approx(0.5)
    assert s["seed_std"] == pytest.approx(np.std([0.4, 0.6], ddof=1))
    assert (s["n_cases"], s["n_seeds"]) == (3, 2)


def test_undefined_auc_is_excluded_from_means_and_counted():
    rows = _rows("m", {0: [0.5, 0.5, 0.5]}, auc=[0.9, float("nan"), 0.7])
    s = {r["metric"]: r for r in evaluate.summarize(rows)}["auc"]
    assert s["case_mean"] == pytest.approx(0.8) and s["n_nan"] == 1


def test_csv_roundtrip_keeps_values_and_summary_matches(tmp_path):
    rows = _rows("m", {0: [0.25, 0.5], 1: [0.75, 1.0]}, auc=[0.6, float("nan")])
    evaluate.write_csv(rows[:2], tmp_path / "m.csv")
    evaluate.write_csv(rows[2:], tmp_path / "m.csv", append=True)
    back = evaluate.read_csv(tmp_path / "m.csv")
    assert [r["dice"] for r in back] == [0.25, 0.5, 0.75, 1.0]
    assert math.isnan(back[1]["auc"])
    assert evaluate.summarize(back) == evaluate.summarize(
        [{**r, "dice": round(r["dice"], 6), "iou": round(r["iou"], 6)} for r in rows]
    )


def test_class_mean_row_averages_classes_of_each_case():
    rows = _rows("m", {0: [0.2, 0.4]}, cls="1") + _rows("m", {0: [0.6, 0.8]}, cls="2")
    means = [r for r in evaluate.with_class_mean(rows) if r["class"] == evaluate.CLASS_MEAN]
    assert sorted(r["dice"] for r in means) == pytest.approx([0.4, 0.6])


def test_paired_ttest_matches_scipy_on_seed_averaged_cases():
    a = {0: [0.5, 0.6, 0.7, 0.9], 1: [0.7, 0.6, 0.9, 0.9]}
    b = {0: [0.4, 0.6, 0.5, 0.6]}
    rows = _rows("A", a) + _rows("B", b)
    t = paired_ttest(rows, "A", "B", "dice")
    ref = ttest_rel([0.6, 0.6, 0.8, 0.9], [0.4, 0.6, 0.5, 0.6])
    assert t.n == 4 and t.pvalue == pytest.approx(ref.pvalue)
    assert t.statistic == pytest.approx(ref.statistic)


def test_paired_ttest_drops_unpaired_and_nan_cases():
    rows = _rows("A", {0: [0.5, 0.6, 0.7]}, auc=[0.9, float("nan"), 0.8])
    rows += _rows("B", {0: [0.4, 0.45]}, auc=[0.7, 0.6])
    assert paired_ttest(rows, "A", "B", "auc").n == 1
    assert paired_ttest(rows, "A", "B", "dice").n == 2


def test_mcnemar_exact_matches_binomial_by_hand():
    a = np.array([True] * 9 + [False] * 1 + [True] * 5)
    b = np.array([False] * 9 + [True] * 1 + [True] * 5)
    r = mcnemar(a, b)
    assert (r.b, r.c, r.method) == (9, 1, "exact")
    assert r.pvalue == pytest.approx(2 * (1 + 10) / 2**10)


def test_mcnemar_chi2_with_continuity_for_many_discordant_pairs():
    a = np.array([True] * 30 + [False] * 10)
    r = mcnemar(a, ~a)
    assert (r.b, r.c, r.method) == (30, 10, "chi2")
    assert r.statistic == pytest.approx((20 - 1) ** 2 / 40)
    assert r.pvalue == pytest.approx(chi2.sf(9.025, 1))


def test_mcnemar_with_no_discordant_pairs_is_p_one():
    assert mcnemar([True, False], [True, False]).pvalue == 1.0
