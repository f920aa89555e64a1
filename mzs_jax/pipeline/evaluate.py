"""Segmentation metrics (IoU, Dice, AUC: paper Eqs. 10-12; NSD, HD95), per-case CSVs, statistics.

Implements the paper's evaluation protocol (Results, "validation metrics"): per case and per class,
mean ± std across cases and across seeds, paired t-test between methods, McNemar for retrieval.
The conventions for empty masks are in `docs/evaluation.md` and in `case_metrics`.
"""

from __future__ import annotations

import csv
import math
import pathlib
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from mzs_jax.pipeline.mask_files import (
    find_cases,
    load_array,
    soft_map_path,
)
from mzs_jax.pipeline.metrics import (
    NSD_TOLERANCE,
    auc,
    case_metrics,
    dice,
    iou,
    multiclass_case_metrics,
)
from mzs_jax.pipeline.metrics import nanmean as _nanmean
from mzs_jax.pipeline.spacing import case_spacing
from mzs_jax.pipeline.stats import TTest, mcnemar, paired_ttest

__all__ = [
    "auc",
    "case_metrics",
    "dice",
    "iou",
    "multiclass_case_metrics",
    "mcnemar",
    "paired_ttest",
    "summarize",
    "evaluate_dirs",
    "find_cases",
    "load_array",
    "read_csv",
    "write_csv",
]

METRICS = ("iou", "dice", "auc", "nsd", "hd95")
# Columns a CSV written before NSD/HD95 existed lacks; read (and written, when a row producer
# does not compute them) as NaN, i.e. "not measured", counted as `n_nan` in summaries.
SURFACE_FIELDS = ("nsd", "hd95", "nsd_tol")
CSV_FIELDS = (
    *("method", "dataset", "seed", "case", "class"),
    *METRICS,
    *("nsd_tol", "pred_voxels", "gt_voxels", "note"),
)
CLASS_MEAN = "mean"  # the `class` label of the per-case mean over foreground classes
# A ground-truth case without a prediction: `--missing=error` (default) | `zero` | `skip`.
MISSING = ("error", "zero", "skip")
MISSING_ZERO_NOTE = "missing_pred_as_empty"  # --missing=zero: scored as an empty mask
SKIPPED_NOTE = "skipped_no_pred"  # --missing=skip: a row with NaN metrics, counted in n_skipped


# ----------------------------------------------------------------------------- CSV rows


def make_rows(
    per_class: dict[int, dict],
    *,
    method: str,
    dataset: str,
    seed: int | str,
    case: str,
    class_names: dict[int, str] | None = None,
) -> list[dict]:
    """CSV rows (one per class) of one case, in `CSV_FIELDS` order."""
    names = class_names or {}
    return [
        {
            "method": method,
            "dataset": dataset,
            "seed": str(seed),
            "case": case,
            "class": names.get(c, str(c)),
            **m,
        }
        for c, m in per_class.items()
    ]


def write_csv(rows: Iterable[dict], path: str | pathlib.Path, *, append: bool = False) -> None:
    """Write (or append) per-case rows; the header is written once. Floats with 6 decimals."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not (append and path.exists())
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header is not None and tuple(header) != CSV_FIELDS:
            raise ValueError(f"{path}: existing header {header} differs from {list(CSV_FIELDS)}")
    with path.open("w" if new else "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            r = {k: float("nan") for k in SURFACE_FIELDS} | dict(r)
            w.writerow(
                {k: (f"{r[k]:.6f}" if isinstance(r[k], float) else r[k]) for k in CSV_FIELDS}
            )


def read_csv(path: str | pathlib.Path) -> list[dict]:
    """Rows of a per-case CSV with metrics parsed as floats (NaN kept)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics CSV not found: {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(CSV_FIELDS) - set(SURFACE_FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        rows = list(reader)
    for i, r in enumerate(rows):
        try:
            for k in METRICS:
                r[k] = float(r[k] if k not in SURFACE_FIELDS else (r.get(k) or "nan"))
        except ValueError as e:
            raise ValueError(f"{path}: row {i + 2}: {e}") from e
    return rows


def with_class_mean(rows: list[dict]) -> list[dict]:
    """Add, per (method, dataset, seed, case), a row `class == "mean"` averaging its classes
    (NaN-aware; the dataset-level figure of Table 3 for multi-organ datasets)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["class"] != CLASS_MEAN:
            groups[(r["method"], r["dataset"], r["seed"], r["case"])].append(r)
    out = [r for r in rows if r["class"] != CLASS_MEAN]
    for key, rs in groups.items():
        mean = {k: _nanmean([r.get(k, float("nan")) for r in rs]) for k in METRICS}
        skipped = all(_skipped(r) for r in rs)
        out.append(
            {
                **dict(zip(("method", "dataset", "seed", "case"), key, strict=True)),
                "class": CLASS_MEAN,
                **mean,
                "nsd_tol": rs[0].get("nsd_tol", ""),
                "pred_voxels": "",
                "gt_voxels": "",
                "note": SKIPPED_NOTE if skipped else "",
            }
        )
    return out


def _skipped(row: dict) -> bool:
    return SKIPPED_NOTE in (row.get("note") or "")


def _mean_std(groups: dict[str, list[float]]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for a single value) of the groups' NaN-aware means,
    all-NaN groups left out; NaN for both when none is left."""
    a = np.array([_nanmean(v) for v in groups.values()])
    a = a[~np.isnan(a)]
    if not a.size:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


# ----------------------------------------------------------------------------- summaries


SUMMARY_FIELDS = (
    *("method", "dataset", "class", "metric"),
    *("n_cases", "n_skipped", "n_seeds", "n_nan", "n_both_empty"),
    *("case_mean", "case_std", "seed_mean", "seed_std"),
)


def summarize(rows: list[dict]) -> list[dict]:
    """Mean ± std per (method, dataset, class, metric), computed from per-case rows.

    - `case_mean ± case_std`: across cases of the per-case value averaged over seeds.
    - `seed_mean ± seed_std`: across seeds of each seed's mean over cases (the paper's
      "mean ± std over three independent runs"). Std is the sample std (ddof=1).
    NaN values (undefined AUC) are excluded and counted in `n_nan`; cases left out by
    `--missing=skip` are not in `n_cases` but counted in `n_skipped` (per case and seed).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["dataset"], r["class"])].append(r)
    out = []
    for (m, d, c), all_rows in groups.items():
        rs = [r for r in all_rows if not _skipped(r)]
        n_skipped = len({(r["case"], r["seed"]) for r in all_rows if _skipped(r)})
        both_empty = sum("both_empty" in (r.get("note") or "") for r in rs)
        for k in METRICS:
            per_case: dict[str, list[float]] = defaultdict(list)
            per_seed: dict[str, list[float]] = defaultdict(list)
            for r in rs:
                v = r.get(k, float("nan"))  # rows made without NSD/HD95: not measured
                per_case[r["case"]].append(v)
                per_seed[r["seed"]].append(v)
            (case_mean, case_std), (seed_mean, seed_std) = _mean_std(per_case), _mean_std(per_seed)
            out.append(
                {
                    "method": m,
                    "dataset": d,
                    "class": c,
                    "metric": k,
                    "n_cases": len(per_case),
                    "n_skipped": n_skipped,
                    "n_seeds": len(per_seed),
                    "n_nan": int(sum(math.isnan(r.get(k, float("nan"))) for r in rs)),
                    "n_both_empty": both_empty,
                    "case_mean": case_mean,
                    "case_std": case_std,
                    "seed_mean": seed_mean,
                    "seed_std": seed_std,
                }
            )
    return out


def write_summary(summary: list[dict], path: str | pathlib.Path) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        for r in summary:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


# ----------------------------------------------------------------------------- files and CLI


def check_labels(arr: np.ndarray, classes: Sequence[int], path) -> None:
    """A label map may hold only 0 (background) and `classes`; anything else names the file."""
    extra = sorted(set(np.unique(arr).tolist()) - {0, *map(int, classes)})
    if extra:
        raise ValueError(
            f"{path}: labels {extra[:8]} are outside the classes {sorted(map(int, classes))} "
            "(and background 0); give --classes with every label, or fix the mask"
        )


def _missing_predictions(preds, gts, pred_dir, missing: str) -> list[str]:
    if missing not in MISSING:
        raise ValueError(f"--missing={missing!r}: expected one of {', '.join(MISSING)}")
    no_pred = sorted(set(gts) - set(preds))
    if no_pred and missing == "error":
        raise FileNotFoundError(
            f"{pred_dir}: no prediction for {len(no_pred)} of {len(gts)} ground-truth cases "
            f"{no_pred[:5]}; a method that writes nothing for hard cases would look better. "
            "Pass --missing=zero to score them as empty masks, or --missing=skip to leave them "
            "out (counted as skipped in the summary)"
        )
    return no_pred


def evaluate_dirs(
    pred_dir: str | pathlib.Path,
    gt_dir: str | pathlib.Path,
    *,
    method: str,
    dataset: str,
    seed: int | str = 0,
    classes: Sequence[int] | None = None,
    class_names: dict[int, str] | None = None,
    tolerance: float = NSD_TOLERANCE,
    spacing: Sequence[float] | None = None,
    missing: str = "error",
) -> list[dict]:
    """Per-case, per-class rows for every ground truth in `gt_dir` against `pred_dir/<id>.*`.

    One file is one case: a 2D image (slice-wise datasets) or a 3D volume (volume-wise ACDC /
    Synapse). `classes` defaults to the sorted non-zero labels found in the ground truth; labels
    outside `classes` are errors. A case without a prediction is an error (`missing="error"`),
    scored as an empty mask (`"zero"`), or written with NaN metrics and note `skipped_no_pred`
    (`"skip"`, counted in the summary's `n_skipped`). NSD (at `tolerance`) and HD95 are in mm
    with NIfTI spacing (`case_spacing`), in pixels otherwise; `spacing` overrides the files'.
    """
    from mzs_jax.progress import Progress

    preds, gts = find_cases(pred_dir), find_cases(gt_dir)
    no_gt = sorted(set(preds) - set(gts))
    if no_gt:
        raise FileNotFoundError(f"{gt_dir}: no ground truth for cases {no_gt[:5]}")
    no_pred = set(_missing_predictions(preds, gts, pred_dir, missing))
    gt_arrays = {cid: load_array(gts[cid], labels=True) for cid in sorted(gts)}
    if classes is None:
        classes = sorted({int(v) for a in gt_arrays.values() for v in np.unique(a)} - {0}) or [1]
    rows, prog = [], Progress(len(gts), f"evaluate {method}", unit="case")
    for cid, gt in gt_arrays.items():
        check_labels(gt, classes, gts[cid])
        per_class = _case_rows(
            cid, preds.get(cid), gt, gts[cid], classes, missing, tolerance, spacing
        )
        rows += make_rows(
            per_class, method=method, dataset=dataset, seed=seed, case=cid, class_names=class_names
        )
        prog.update(1)
    if no_pred:
        print(
            f"evaluate {method}: {len(no_pred)} case(s) without a prediction (--missing={missing})"
        )
    return rows


def _case_rows(cid, ppath, gt, gt_path, classes, missing, tolerance, spacing) -> dict[int, dict]:
    if ppath is None and missing == "skip":
        nan = float("nan")
        skipped = {k: nan for k in METRICS}
        skipped.update(pred_voxels="", note=SKIPPED_NOTE, nsd_tol=tolerance)
        return {c: {**skipped, "gt_voxels": int((gt == c).sum())} for c in classes}
    if ppath is None:  # missing == "zero"
        pred, soft = np.zeros_like(gt), None
    else:
        pred = load_array(ppath, labels=True)
        check_labels(pred, classes, ppath)
        soft_path = soft_map_path(ppath)
        soft = None if soft_path is None else load_array(soft_path, labels=False)
    try:
        sp = case_spacing(ppath or gt_path, gt_path, spacing)
        per_class = multiclass_case_metrics(
            pred, gt, classes, soft, spacing=sp, tolerance=tolerance
        )
    except ValueError as e:
        raise ValueError(f"case {cid} ({ppath} vs {gt_path}): {e}") from e
    if ppath is None:
        for m in per_class.values():
            m["note"] = ";".join(n for n in (m.get("note", ""), MISSING_ZERO_NOTE) if n)
    return per_class


def parse_classes(spec: str | None) -> tuple[list[int] | None, dict[int, str]]:
    """`"1,2,3"` or `"1=RV,2=MYO,3=LV"` -> ([1, 2, 3], {1: "RV", ...})."""
    if not spec:
        return None, {}
    ids, names = [], {}
    for part in spec.split(","):
        k, _, name = part.partition("=")
        try:
            ids.append(int(k))
        except ValueError as e:
            raise ValueError(f"--classes: bad class id {k!r} in {spec!r}") from e
        if name:
            names[ids[-1]] = name
    return ids, names


def format_ttest(t: TTest, method_a: str, method_b: str, scope: str) -> str:
    return (
        f"{scope} {t.metric}: {method_a} {t.mean_a:.4f} vs {method_b} {t.mean_b:.4f} "
        f"(n={t.n}) t={t.statistic:.3f} p={t.pvalue:.4g}"
    )


def compare(rows: list[dict], a: str, b: str, *, source) -> None:
    """Print the paired t-test of methods `a` vs `b` per dataset and metric; a method absent
    from `rows` is an error (not a NaN line)."""
    methods = sorted({r["method"] for r in rows})
    unknown = [m for m in (a, b) if m not in methods]
    if unknown:
        raise ValueError(
            f"--compare: no rows for method(s) {unknown} in {source}; its methods: {methods}"
        )
    if a == b:
        raise ValueError(f"--compare: give two different methods, got {a!r} twice")
    for d in sorted({r["dataset"] for r in rows}):
        present = {r["method"] for r in rows if r["dataset"] == d}
        if not {a, b} <= present:
            print(f"[{d}] not compared: only {sorted(present & {a, b})} has rows for this dataset")
            continue
        for k in METRICS:
            t = paired_ttest(rows, a, b, k, dataset=d, class_=CLASS_MEAN)
            print(format_ttest(t, a, b, f"[{d}]") + ("  (fewer than 2 pairs)" if t.n < 2 else ""))
