"""The report renders (Markdown, HTML, PNGs) and every number in its tables traces to the CSV."""

import re

import numpy as np
import pytest

from mzs_jax.pipeline import evaluate, report
from mzs_jax.pipeline.stats import paired_ttest

PM = re.compile(r"(-?\d+\.\d+) ± (-?\d+\.\d+)(\**)")


@pytest.fixture
def metrics_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for method, base in (("pseudo", 0.6), ("resunet", 0.7)):
        for seed in range(3):
            for case in range(6):
                for cls in ("lung", "heart"):
                    d = float(np.clip(base + 0.05 * case / 6 + rng.normal(0, 0.03), 0, 1))
                    a = float("nan") if case == 0 else float(np.clip(d + 0.2, 0, 1))
                    rows.append(
                        {
                            "method": method,
                            "dataset": "phantom",
                            "seed": str(seed),
                            "case": f"c{case}",
                            "class": cls,
                            "iou": d / (2 - d),
                            "dice": d,
                            "auc": a,
                            "nsd": float(np.clip(d - 0.1, 0, 1)),
                            "hd95": float(20 * (1 - d)),
                            "nsd_tol": 2.0,
                            "pred_voxels": 10,
                            "gt_voxels": 10,
                            "note": "",
                        }
                    )
    path = tmp_path / "metrics.csv"
    evaluate.write_csv(rows, path)
    return path


def _table(md: str, first_header: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, s in enumerate(lines) if s.startswith(f"| {first_header} |"))
    out = []
    for s in lines[start + 2 :]:
        if not s.startswith("|"):
            break
        out.append([c.strip() for c in s.strip("|").split("|")])
    return out


def test_every_table_number_traces_to_the_csv(metrics_csv, tmp_path):
    md_path = report.write_report(metrics_csv, tmp_path / "rep", reference="pseudo")
    md = md_path.read_text()
    rows = evaluate.with_class_mean(evaluate.read_csv(metrics_csv))
    summary = {
        (s["method"], s["dataset"], s["class"], s["metric"]): s for s in evaluate.summarize(rows)
    }
    table = _table(md, "dataset | method | IoU")
    assert len(table) == 2
    for dataset, method, *cells in table:
        for metric, cell in zip(evaluate.METRICS, cells, strict=True):
            mean, std, mark = PM.fullmatch(cell).groups()
            s = summary[(method, dataset, "mean", metric)]
            scale = report.metric_scale(metric, 100)  # HD95 stays in its unit
            assert float(mean) == pytest.approx(scale * s["seed_mean"], abs=0.006)
            assert float(std) == pytest.approx(scale * s["seed_std"], abs=0.006)
            if method == "resunet":
                t = paired_ttest(rows, "resunet", "pseudo", metric, dataset=dataset, class_="mean")
                assert mark == report.significance_mark(t.pvalue)
    for dataset, method, ref, metric, n, p in _table(md, "dataset | method | vs"):
        t = paired_ttest(rows, method, ref, metric, dataset=dataset, class_="mean")
        assert int(n) == t.n and float(p) == pytest.approx(t.pvalue, rel=1e-3)
    assert report._p(float("nan")) == "n/a"
    per_class = _table(md, "dataset | method | class")
    assert len(per_class) == 2 * 2 * len(evaluate.METRICS)
    for dataset, method, cls, metric, n, n_nan, _, cell in per_class:
        s = summary[(method, dataset, cls, metric)]
        mean, std, _ = PM.fullmatch(cell).groups()
        scale = report.metric_scale(metric, 100)
        assert float(mean) == pytest.approx(scale * s["case_mean"], abs=0.006)
        assert int(n) == s["n_cases"] and int(n_nan) == s["n_nan"]
    assert "AUC" in md and int(per_class[2][5]) == 3  # auc NaN of case c0 in 3 seeds, counted
    assert "NSD at tolerance 2 " in md and "HD95" in md


def test_csv_without_surface_metrics_reads_them_as_not_measured(tmp_path):
    """A CSV written before NSD/HD95 existed still reads; those metrics are NaN (n/a), counted."""
    p = tmp_path / "old.csv"
    p.write_text(
        "method,dataset,seed,case,class,iou,dice,auc,pred_voxels,gt_voxels,note\n"
        "m,d,0,c0,1,0.5,0.666667,nan,4,4,\n"
    )
    rows = evaluate.read_csv(p)
    assert rows[0]["dice"] == pytest.approx(0.666667) and np.isnan(rows[0]["nsd"])
    s = {r["metric"]: r for r in evaluate.summarize(rows)}
    assert s["hd95"]["n_nan"] == 1 and np.isnan(s["hd95"]["case_mean"])


def test_report_writes_html_box_plots_and_overlay_grid(metrics_csv, tmp_path):
    img = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 15:45] = 1
    overlays = [
        {
            "image": img,
            "saliency": img.T,
            "box": (15, 20, 45, 40),
            "mask": mask,
            "gt": mask,
            "title": "case0",
        }
    ] * 2
    md = report.write_report(metrics_csv, tmp_path / "rep", overlays=overlays, title="Demo")
    d = md.parent
    for name in ("report.html", "box_dice.png", "box_iou.png", "overlays.png"):
        assert (d / name).stat().st_size > 1000
        assert name == "report.html" or f"({name})" in md.read_text()
    assert "<table>" in (d / "report.html").read_text()


def test_render_table_from_any_csv_keeps_its_values(tmp_path):
    p = tmp_path / "retrieval.csv"
    p.write_text("model,direction,top1,top2\nbiomedclip,i2t,0.41234567,0.6\ncehnc,t2i,0.5,0.75\n")
    header, rows = report.render_table_from_csv(p)
    assert header == ["model", "direction", "top1", "top2"]
    assert rows[0] == ["biomedclip", "i2t", "0.4123", "0.6000"]
    with pytest.raises(ValueError, match="missing columns"):
        report.render_table_from_csv(p, ["model", "top5"])
