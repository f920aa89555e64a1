"""Significance tests of the paper's evaluation: paired t-test (Table 3) and McNemar (Table 1).

`paired_ttest` pairs two methods' per-case values read from a metrics CSV; `mcnemar` compares
paired per-query retrieval correctness.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from mzs_jax.pipeline.metrics import nanmean as _nanmean


@dataclasses.dataclass(frozen=True)
class TTest:
    metric: str
    n: int
    mean_a: float
    mean_b: float
    statistic: float
    pvalue: float


def paired_values(
    rows: list[dict],
    method_a: str,
    method_b: str,
    metric: str,
    *,
    dataset: str | None = None,
    class_: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Values of two methods paired by (dataset, class, case), each averaged over its seeds;
    pairs where either value is NaN are dropped."""
    vals = {
        method_a: defaultdict(list),
        method_b: defaultdict(list),
    }  # method -> (dataset, class, case) -> values
    for r in rows:
        if (
            r["method"] in vals
            and (dataset is None or r["dataset"] == dataset)
            and (class_ is None or r["class"] == class_)
        ):
            vals[r["method"]][(r["dataset"], r["class"], r["case"])].append(r[metric])
    keys = sorted(set(vals[method_a]) & set(vals[method_b]))
    a, b = (np.array([_nanmean(vals[m][k]) for k in keys]) for m in (method_a, method_b))
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def paired_ttest(
    rows: list[dict],
    method_a: str,
    method_b: str,
    metric: str = "dice",
    *,
    dataset: str | None = None,
    class_: str | None = None,
) -> TTest:
    """Paired-samples t-test (`scipy.stats.ttest_rel`) of method A vs B on the same cases.

    p-value is NaN when fewer than 2 pairs or all differences are zero-variance."""
    from scipy.stats import ttest_rel

    a, b = paired_values(rows, method_a, method_b, metric, dataset=dataset, class_=class_)
    stat, p = (float("nan"),) * 2 if a.size < 2 else map(float, ttest_rel(a, b))
    return TTest(metric, int(a.size), _nanmean(a), _nanmean(b), stat, p)


@dataclasses.dataclass(frozen=True)
class McNemar:
    b: int  # A correct, B wrong
    c: int  # A wrong, B correct
    statistic: float
    pvalue: float
    method: str  # "exact" (binomial) or "chi2" (continuity-corrected)


def mcnemar(
    correct_a: Sequence[bool], correct_b: Sequence[bool], *, exact: bool | None = None
) -> McNemar:
    """McNemar test of paired correctness (e.g. per-query retrieval hits of two models).

    Exact two-sided binomial test on the discordant pairs when `b + c < 25` (or `exact=True`),
    else the continuity-corrected chi-square (|b−c|−1)²/(b+c) with 1 degree of freedom.
    """
    from scipy.stats import binomtest, chi2

    a, bb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != bb.shape or a.ndim != 1:
        raise ValueError(f"mcnemar needs two equal-length 1-D arrays, got {a.shape}, {bb.shape}")
    b, c = int((a & ~bb).sum()), int((~a & bb).sum())
    n = b + c
    if exact is None:
        exact = n < 25
    if n == 0:
        return McNemar(b, c, 0.0, 1.0, "exact" if exact else "chi2")
    if exact:
        return McNemar(b, c, float(min(b, c)), float(binomtest(min(b, c), n, 0.5).pvalue), "exact")
    stat = (abs(b - c) - 1.0) ** 2 / n
    return McNemar(b, c, float(stat), float(chi2.sf(stat, 1)), "chi2")


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval at `level` (e.g. over training
    seeds); the half-width is NaN for fewer than 2 values and 0 when all are equal."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size < 2:
        return float(v.mean()), float("nan")
    sem = v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(t.ppf(0.5 + level / 2, v.size - 1) * sem)
