"""Statistics and report of the hard-negative loss benchmark: mean ± 95 % CI over seeds, paired
t-tests across seeds and McNemar on pooled queries, vs the pre-trained model and vs InfoNCE."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from mzs_jax.data.phantom_hard import BLOCK
from mzs_jax.pipeline.retrieval import METRICS
from mzs_jax.pipeline.stats import mcnemar, mean_ci, paired_ttest, paired_values

PRE = "pre-trained"
BASE = "infonce"
TOP1 = ("i2t_top1", "t2i_top1")


def seed_values(result: dict) -> dict[str, dict[str, list[float]]]:
    """`{loss: {metric: [value per seed]}}`, value = mean expected hit over the queries."""
    return {
        loss: {m: [float(np.mean(runs[s]["scores"][m])) for s in sorted(runs)] for m in METRICS}
        for loss, runs in result["runs"].items()
    }


def _rows(result: dict, metric: str) -> list[dict]:
    """Rows for `stats.paired_ttest`: one case per seed; the pre-trained model (deterministic)
    has the same value for every seed, so its test is a one-sample t-test of the gains."""
    pre = float(np.mean(result["pretrained"]["scores"][metric]))
    return [
        {"method": method, "dataset": "hard", "class": "all", "case": s, metric: value}
        for loss, runs in result["runs"].items()
        for s in sorted(runs)
        for method, value in ((loss, float(np.mean(runs[s]["scores"][metric]))), (PRE, pre))
    ]


def _pooled_hits(result: dict, name: str, metric: str, seeds: list[int]) -> np.ndarray:
    if name == PRE:
        return np.tile(result["pretrained"]["hits"][metric], len(seeds))
    return np.concatenate([result["runs"][name][s]["hits"][metric] for s in seeds])


def compare(result: dict, a: str, b: str, metric: str) -> dict:
    """a vs b on `metric`: mean difference, paired t-test across seeds, McNemar on the queries
    pooled over the seeds (query j of seed s pairs with query j of seed s). The t-test is
    undefined (p NaN, shown as such) when the difference is the same on every seed."""
    seeds = sorted(result["runs"][a])
    rows = _rows(result, metric)
    t = paired_ttest(rows, a, b, metric, dataset="hard")
    diffs = np.subtract(*paired_values(rows, a, b, metric, dataset="hard"))
    t_p = t.pvalue if np.ptp(diffs) > 0 else float("nan")
    m = mcnemar(_pooled_hits(result, a, metric, seeds), _pooled_hits(result, b, metric, seeds))
    return {"diff": t.mean_a - t.mean_b, "t_p": t_p, "mcnemar_p": m.pvalue, "b": m.b, "c": m.c}


def beats(c: dict) -> bool:
    """Higher on average and p < 0.05 in both the t-test and McNemar."""
    return bool(c["diff"] > 0 and c["t_p"] < 0.05 and c["mcnemar_p"] < 0.05)


def analyse(result: dict) -> dict:
    """Per loss and metric: mean, CI half-width, per-seed values and both comparisons."""
    out = {}
    for loss, per_metric in seed_values(result).items():
        out[loss] = {}
        for m, values in per_metric.items():
            mean, half = mean_ci(values)
            entry = {
                "mean": mean,
                "ci": half,
                "seeds": values,
                "vs_pre": compare(result, loss, PRE, m),
            }
            if loss != BASE and BASE in result["runs"]:
                entry["vs_infonce"] = compare(result, loss, BASE, m)
            out[loss][m] = entry
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _p(p: float) -> str:
    return "undefined" if not np.isfinite(p) else f"{p:.2g}"


def plot(result: dict, stats: dict, out_png: pathlib.Path) -> pathlib.Path:
    """Bars per metric × loss with 95 % CI error bars; the pre-trained model as a dashed line."""
    from mzs_jax.pipeline.report import pyplot, save_figure

    losses = list(stats)
    fig, axes = pyplot().subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.4), sharey=True)
    for ax, m in zip(axes, METRICS, strict=True):
        means = [100 * stats[k][m]["mean"] for k in losses]
        cis = [100 * np.nan_to_num(stats[k][m]["ci"]) for k in losses]
        ax.bar(range(len(losses)), means, yerr=cis, capsize=3, color="tab:blue")
        ax.axhline(100 * np.mean(result["pretrained"]["scores"][m]), ls="--", c="k", label=PRE)
        k = int(m[-1])  # top-k
        ax.axhline(100 * k / BLOCK, ls=":", c="tab:red", label=f"chance (k/{BLOCK})")
        ax.set_xticks(range(len(losses)), losses, rotation=45, ha="right", fontsize=8)
        ax.set_title(m, fontsize=9)
    axes[0].set_ylabel("% (mean ± 95 % CI over seeds)")
    axes[0].legend(fontsize=7)
    return save_figure(fig, out_png, dpi=110)


def tables(result: dict, stats: dict) -> tuple[list[str], list[list[str]], list[str], list[list]]:
    """(header, rows) of the mean ± CI table and of the comparisons table."""
    n = len(next(iter(result["runs"].values())))
    head = ["model", *METRICS]
    pre = [_pct(np.mean(result["pretrained"]["scores"][m])) for m in METRICS]
    body = [[f"{PRE} (no fine-tuning)", *pre]] + [
        [
            f"{loss} ({n} seeds)",
            *(f"{_pct(per[m]['mean'])} ± {_pct(per[m]['ci'])}" for m in METRICS),
        ]
        for loss, per in stats.items()
    ]
    c_head = ["loss", "metric", "Δ vs pre-trained", "t-test p", "McNemar p", "beats pre-trained",
              "Δ vs infonce", "t-test p", "McNemar p"]  # fmt: skip
    c_body = []
    for loss, per in stats.items():
        for m in METRICS:
            v, i = per[m]["vs_pre"], per[m].get("vs_infonce")
            row = [loss, m, f"{100 * v['diff']:+.2f}", _p(v["t_p"]), _p(v["mcnemar_p"]),
                   "yes" if beats(v) else "no"]  # fmt: skip
            row += (
                ["—"] * 3
                if i is None
                else [f"{100 * i['diff']:+.2f}", _p(i["t_p"]), _p(i["mcnemar_p"])]
            )
            c_body.append(row)
    return head, body, c_head, c_body


def verdict(stats: dict) -> tuple[bool, list[str]]:
    """Whether every loss beats the pre-trained model on both top-1 metrics (`beats`), and the
    (loss, metric) pairs that do not."""
    misses = [f"{k} {m}" for k, per in stats.items() for m in TOP1 if not beats(per[m]["vs_pre"])]
    return not misses, misses


def blocks(result: dict, cfg, stats: dict, png_name: str) -> list[tuple]:
    """Report blocks (`report.to_markdown`): setup, mean ± CI, comparisons, verdict, plot."""
    head, body, c_head, c_body = tables(result, stats)
    ok, misses = verdict(stats)
    seeds = list(cfg.seeds)
    setup = (
        f"Pre-trained model: {result['init']}. Data: `phantom-hard` chest X-ray captions, six "
        f"binary attributes drawn in the image and named in the caption (side, zone, size, count, "
        f"finding, heart); {result['n_train']} training pairs, {result['n_val']} held-out pairs "
        f"in blocks of {BLOCK} (every attribute combination once; "
        f"{result['val_one_attribute_pairs']} held-out pairs differ in exactly one attribute). "
        f"Retrieval batch = one block (chance top-1 {100 / BLOCK:.2f} %, top-2 "
        f"{200 / BLOCK:.2f} %), ties broken at random. Fine-tuning per loss and seed {seeds}: "
        f"{cfg.steps} steps, "
        f"batch {cfg.batch_size} (part of one block), AdamW lr {cfg.lr} (warm-up "
        f"{cfg.warmup_steps} steps, then constant), every loss with its `config.loss` defaults."
    )
    tests = (
        "Δ in percentage points. t-test: paired over training seeds (vs the deterministic "
        "pre-trained model it is a one-sample t-test of the gains; 'undefined' when Δ is the "
        "same on every seed); McNemar: per-query hits "
        f"pooled over the {len(seeds)} seeds, ties broken by a seeded draw. 'beats' = higher and "
        "p < 0.05 in both."
    )
    line = (
        "Every loss's fine-tuned top-1 (i2t and t2i) beats the pre-trained model's: "
        + ("**yes**" if ok else f"**no** ({', '.join(misses)})")
        + f". Total time {result['seconds']:.0f} s."
    )
    return [
        ("p", setup),
        ("table", head, body),
        ("p", "Top-1/top-2 accuracy, % (mean ± 95 % CI half-width over seeds)."),
        ("table", c_head, c_body),
        ("p", tests),
        ("p", line),
        ("img", png_name, "retrieval per loss and metric, mean ± 95 % CI"),
    ]


def write(result: dict, cfg, out: pathlib.Path) -> str:
    """`out/loss_quality.{md,json,png}`; returns the Markdown (figure linked by file name)."""
    from mzs_jax.pipeline import report

    out.mkdir(parents=True, exist_ok=True)
    stats = analyse(result)
    png = plot(result, stats, out / "loss_quality.png")
    md = report.to_markdown(blocks(result, cfg, stats, png.name))
    (out / "loss_quality.md").write_text(md)
    pre = {m: float(np.mean(v)) for m, v in result["pretrained"]["scores"].items()}
    keep = {k: v for k, v in result.items() if k not in ("pretrained", "runs")}
    (out / "loss_quality.json").write_text(
        json.dumps({**keep, "config": cfg.to_dict(), "pretrained": pre, "stats": stats}, indent=1)
    )
    return md
