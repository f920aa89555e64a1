"""`mzs demo` report: retrieval per loss (Table 1 style), zero-shot vs baselines vs weakly
supervised IoU/Dice/AUC with t-tests (Table 3 style), pointing game, export check, timings, figures.
Built from `pipeline/report.py` pieces; every number is read from this run's results or CSVs.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from mzs_jax.demo_weak import WEAK
from mzs_jax.demo_zeroshot import ZERO_SHOT
from mzs_jax.pipeline import evaluate, report
from mzs_jax.pipeline import retrieval as ret
from mzs_jax.pipeline.stats import paired_ttest

SECTIONS = (
    "Run",
    "Stage 1: retrieval per loss",
    "Stage 1: hard-negative loss benchmark",
    "Export to PyTorch",
    "Stage 2: pointing game",
    "Segmentation: zero-shot vs baselines vs weakly supervised",
    "Paired t-tests",
    "Goals, as measured",
    "Figures",
    "Timings",
)


def _blend(image: np.ndarray, sal: np.ndarray) -> np.ndarray:
    """Saliency (jet) over the grey image, RGB float `(H, W, 3)`."""
    from matplotlib import colormaps

    g = np.repeat(np.clip(image, 0, 1)[..., None], 3, -1)
    return np.clip(0.45 * g + 0.55 * colormaps["jet"](np.clip(sal, 0, 1))[..., :3], 0, 1)


def _overlays(zero_shot_result: dict) -> list[dict]:
    items = []
    for o in zero_shot_result["overlays"]:
        it = {
            "image": o["image"],
            "saliency": _blend(o["image"], o["saliency"]),
            "mask": o["mask"],
            "gt": o["gt"],
            "title": o["id"],
        }
        if o["box"] is not None:
            it["box"] = tuple(int(v) for v in o["box"])
        items.append(it)
    return items


def _met(t) -> str:
    """A goal "A beats B" is met when A's mean is higher and the paired t-test gives p < 0.05."""
    if t.mean_a <= t.mean_b:
        return "no"
    return "yes" if t.pvalue < 0.05 else "no (higher, but not significant at p < 0.05)"


def _mean(rows, method, metric) -> float:
    """Mean over cases (and seeds) of the per-case class mean."""
    return float(
        np.nanmean(
            [r[metric] for r in rows if r["method"] == method and r["class"] == evaluate.CLASS_MEAN]
        )
    )


def _vs_pretrained(sig: dict) -> tuple[str, str]:
    """(Δ and McNemar p per top-1 metric, whether fine-tuning changed retrieval)."""
    text = "; ".join(
        f"{m.split('_')[0]} {100 * v['diff']:+.1f} pp, p={v['p']:.2g}" for m, v in sig.items()
    )
    moved = [
        f"{m.split('_')[0]} {'higher' if v['diff'] > 0 else 'lower'}"
        for m, v in sig.items()
        if v["changed"]
    ]
    return text, (f"yes ({', '.join(moved)})" if moved else "no")


def _stage1_blocks(demo_cfg, retrieval: dict, ret_md: str) -> list:
    """The stage 1 table: retrieval per model and whether fine-tuning changed it (McNemar on the
    seed-0 shuffle's per-query top-1 hits vs the pre-trained model, p < 0.05)."""
    from mzs_jax.demo_clip import significance

    names = list(retrieval)
    pre = retrieval[names[0]]
    rows, changed = [], 0
    for name, r in retrieval.items():
        cells = [
            f"{100 * r['summary'][m][0]:.2f} ± {100 * r['summary'][m][1]:.2f}" for m in ret.METRICS
        ]
        if name == names[0]:
            rows.append([name, *cells, "reference", "—"])
            continue
        text, moved = _vs_pretrained(significance(r, pre))
        changed += moved != "no"
        rows.append([name, *cells, text, moved])
    n_q = len(pre["hits"]["i2t_top1"])
    return [
        ("p", ret_md.splitlines()[0]),
        (
            "table",
            ["model", *ret.METRICS, "top-1 Δ vs pre-trained, McNemar p", "changed retrieval"],
            rows,
        ),
        (
            "p",
            f"Chance top-1 is {100 / min(demo_cfg.clip.eval_batch, 1e9):.0f} %. Each loss "
            f"fine-tunes the same pre-trained model for {demo_cfg.clip.finetune_steps} steps on "
            "the easy caption "
            f"set. 'changed' = McNemar p < 0.05 on a top-1 metric ({n_q} paired queries of the "
            f"seed-0 shuffle): fine-tuning changed retrieval for {changed} of {len(names) - 1} "
            "losses; the hard-negative benchmark below is the comparison with power.",
        ),
    ]


def _hard_blocks(hard, out: pathlib.Path) -> list:
    """The hard-negative loss benchmark section (pipeline/loss_quality_report.py)."""
    from mzs_jax.pipeline import loss_quality_report as lqr
    from mzs_jax.pipeline.loss_quality import default_config

    result, cfg = hard
    full = default_config()
    stats = lqr.analyse(result)
    png = lqr.plot(result, stats, out / "loss_quality.png")
    note = (
        f"At the demo's sizes (`clip.hard`: {len(cfg.seeds)} seeds, {cfg.steps} steps, "
        f"{cfg.train_blocks} + {cfg.val_blocks} blocks). The full benchmark ({len(full.seeds)} "
        f"seeds, {full.steps} steps, {full.train_blocks} + {full.val_blocks} blocks) is "
        "`mzs bench --only loss_quality`; docs/losses.md has its measured result."
    )
    return [("p", note), *lqr.blocks(result, cfg, stats, png.name)]


def write(
    demo_dir: pathlib.Path, demo_cfg, *, retrieval, hard, export, zero_shot_result, weak, facts
) -> pathlib.Path:
    """Write `demo_dir/report/report.md` + `.html` + PNG figures; returns the Markdown path."""
    out = demo_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    csv_path = demo_dir / "eval" / "metrics.csv"
    evaluate.write_csv(zero_shot_result["rows"] + weak["rows"], csv_path)
    rows = evaluate.with_class_mean(evaluate.read_csv(csv_path))
    evaluate.write_summary(evaluate.summarize(rows), demo_dir / "eval" / "metrics_summary.csv")
    ret_md = ret.write_tables(
        [(k, v["summary"]) for k, v in retrieval.items()],
        demo_dir / "eval" / "retrieval",
        seeds=int(demo_cfg.clip.eval_seeds),
        batch=int(demo_cfg.clip.eval_batch),
    )
    blocks = [
        ("h", 1, f"mzs demo report ({demo_cfg.mode})"),
        ("h", 2, SECTIONS[0]),
        _run_table(demo_cfg, zero_shot_result, facts),
        ("h", 2, SECTIONS[1]),
        *_stage1_blocks(demo_cfg, retrieval, ret_md),
        ("h", 2, SECTIONS[2]),
        *_hard_blocks(hard, out),
        ("h", 2, SECTIONS[3]),
        _export_table(export),
        ("h", 2, SECTIONS[4]),
        ("p", "Fraction of held-out cases whose map's maximum lies inside the target."),
        (
            "table",
            ["map", "hit rate"],
            [[k, f"{v:.3f}"] for k, v in zero_shot_result["pointing"].items()],
        ),
        *_segmentation_blocks(rows, zero_shot_result),
        ("h", 2, SECTIONS[7]),
        _goals_table(rows),
        *_figure_blocks(rows, zero_shot_result, out),
        ("h", 2, SECTIONS[9]),
        (
            "table",
            ["stage", "seconds"],
            [[k, f"{v:.1f}"] for k, v in facts["stage_seconds"].items()]
            + [["total (before report)", f"{facts['total_seconds']:.1f}"]],
        ),
    ]
    md = out / "report.md"
    md.write_text(report.to_markdown(blocks))
    (out / "report.html").write_text(report.to_html(blocks, f"mzs demo report ({demo_cfg.mode})"))
    (demo_dir / "timings.json").write_text(json.dumps(facts, indent=1))
    return md


def _run_table(demo_cfg, zero_shot_result, facts) -> tuple:
    zeroshot_cfg = demo_cfg.zeroshot
    topk = f", top-k {zeroshot_cfg.topk}" if zeroshot_cfg.saliency == "gscorecam" else ""
    with_findings = f" with {zeroshot_cfg.findings}" if zeroshot_cfg.findings else ""
    seg = zero_shot_result["segmenter"] + (
        " (SAM checkpoint given)"
        if zero_shot_result["segmenter_is_sam"]
        else " (weight-free; pass --sam-checkpoint for SAM)"
    )
    notes = zero_shot_result["notes"]
    return (
        "table",
        ["item", "value"],
        [
            ["CLIP", f"{demo_cfg.clip.model}; {facts['clip_init']}"],
            [
                "caption set",
                f"phantom:{demo_cfg.clip.n_captions} (85/15 split, seed {demo_cfg.seed})",
            ],
            [
                "zero-shot data",
                f"{zeroshot_cfg.kind} phantoms{with_findings}, "
                f"target `{zeroshot_cfg.structure}`, {zeroshot_cfg.n_train} train "
                f"(pseudo-masks) / {zeroshot_cfg.n_test} held-out test (ground truth)",
            ],
            ["prompt", repr(zeroshot_cfg.prompt)],
            [
                "saliency",
                f"{zeroshot_cfg.saliency} (JAX{topk}) → DPFEM ({zeroshot_cfg.dpfem_epochs} "
                f"epochs, annotation-free, on its own {zeroshot_cfg.n_dpfem} phantoms) → "
                f"dense CRF → threshold → closing → box ({zeroshot_cfg.box_mode})",
            ],
            ["segmenter", seg],
            ["empty boxes", str(zero_shot_result["no_box"])],
            ["segmenter notes", "; ".join(f"{n}× {k}" for k, n in notes.items()) or "none"],
            ["machine", f"{facts['devices']}, {facts['cpu_count']} CPU cores"],
            ["total time", f"{facts['total_seconds']:.0f} s"],
        ],
    )


def _export_table(export) -> tuple:
    return (
        "table",
        ["file", "bytes", "images compared", "max abs diff (JAX vs torch embedding)"],
        [
            [
                pathlib.Path(export["file"]).name,
                str(export["bytes"]),
                str(export["n_images"]),
                f"{export['max_abs_diff']:.3g}",
            ]
        ],
    )


def _segmentation_blocks(rows, zero_shot_result) -> list:
    header, body, pvals, caption = report.metrics_table(rows, reference=ZERO_SHOT)
    prior = (
        "The prompt names no side or zone, so the position prior does not apply."
        if not zero_shot_result["position_prior"]
        else "The position prior boxes the named quadrant."
    )
    return [
        ("h", 2, SECTIONS[5]),
        ("table", header, body),
        (
            "p",
            caption + " Baselines prompt the same segmenter: `whole-body box` with the body's "
            "box, `random point` with a box of the chain's size around a random body pixel; their "
            "AUC scores the hard mask. " + prior,
        ),
        (
            "p",
            f"Pseudo-mask Dice on the training split (what the ResUNet learns from): "
            f"{100 * zero_shot_result['pseudo_train_dice']:.2f}.",
        ),
        ("h", 2, SECTIONS[6]),
        ("table", ["dataset", "method", "vs", "metric", "n", "p"], pvals),
    ]


def _goals_table(rows) -> tuple:
    """The stated goals: the chain beats each baseline; the ResUNet beats its pseudo-masks."""
    zs_dice = _mean(rows, ZERO_SHOT, "dice")
    base = [m for m in {r["method"] for r in rows} if m not in (ZERO_SHOT, WEAK)]
    tests = {m: paired_ttest(rows, ZERO_SHOT, m, "dice", class_="mean") for m in sorted(base)}
    t = paired_ttest(rows, WEAK, ZERO_SHOT, "dice", class_="mean")
    chain_rows = [
        [
            f"chain beats `{m}` on Dice",
            f"{100 * zs_dice:.2f} vs {100 * _mean(rows, m, 'dice'):.2f} "
            f"(p={bt.pvalue:.3g}, n={bt.n})",
            _met(bt),
        ]
        for m, bt in tests.items()
    ]
    weak_row = [
        "ResUNet improves on its pseudo-masks (test Dice)",
        f"{100 * t.mean_a:.2f} vs {100 * t.mean_b:.2f} (p={t.pvalue:.3g}, n={t.n})",
        _met(t),
    ]
    return ("table", ["goal", "measured", "met"], [*chain_rows, weak_row])


def _figure_blocks(rows, zero_shot_result, out: pathlib.Path) -> list:
    per_class = [r for r in rows if r["class"] != evaluate.CLASS_MEAN]
    box_png = report.box_plots(per_class, out / "box_dice.png", "dice")
    grid_png = report.overlay_grid(_overlays(zero_shot_result), out / "overlays.png")
    return [
        ("h", 2, SECTIONS[8]),
        (
            "p",
            "Held-out cases: image | saliency (DPFEM-refined, over the image) | box from the "
            "saliency | mask (red) with the ground-truth contour (green).",
        ),
        ("img", grid_png.name, "saliency, box and mask over the image"),
        ("img", box_png.name, "per-case Dice per method"),
    ]
