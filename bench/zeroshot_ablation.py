"""What each part of stage 2 is worth: the full chain against the chain without one part, and
against the baselines, per case on the same held-out phantoms, with paired t-tests.

    python bench/zeroshot_ablation.py [--n 48] [--quick]   # or: mzs bench --only zeroshot_ablation
Arms (each one `pipeline.zeroshot.segment_dataset` run on the shipped phantom CLIP): the full
chain (gScoreCAM → DPFEM → CRF → box → GrabCut); without DPFEM; without the CRF; KMeans(2)
post-processing (MedCLIP-SAMv2) instead of the CRF chain; Grad-CAM, M2IB or dense saliency in
place of gScoreCAM (each with its own DPFEM); and the baselines of `pipeline/baselines.py`
(whole-body box, random point). Two targets: the enlarged heart on cardiomegaly phantoms, and
the lung opacity (nodule or consolidation, on one side). DPFEM trains on its own phantoms
(`dpfem.train_data`), never on the scored ones. A part helps when the full chain beats the arm
without it at p < 0.05 (paired t-test over cases); the table says so either way.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

FULL = "full chain"
# arm -> config overrides of the full chain; arms after the first reuse its saliency maps when
# their saliency method is the same, and its DPFEM when only post-processing differs.
ARMS = {
    FULL: {},
    "without DPFEM": {"dpfem.enabled": False},
    "without CRF": {"postprocess.crf.enabled": False},
    "KMeans instead of CRF": {"postprocess.method": "kmeans"},
    "Grad-CAM saliency": {"saliency.method": "gradcam"},
    "M2IB saliency": {"saliency.method": "m2ib"},
    "dense saliency": {"saliency.method": "dense"},
}
TARGETS = {  # target -> (phantom findings, prompt class = phantom structure, prompt)
    "enlarged heart": (
        "cardiomegaly",
        "heart",
        "chest x-ray showing an enlarged cardiac silhouette consistent with cardiomegaly",
    ),
    "lung opacity": (
        "nodule,consolidation",
        "opacity",
        "chest radiograph showing a pulmonary nodule or dense consolidation",
    ),
}


def arm_config(clip_wd, target: str, overrides: dict, n: int, dpfem_epochs: int):
    import ml_collections

    from mzs_jax import cli, resources

    findings, structure, prompt = TARGETS[target]
    args = [
        f"--config={resources.configs_dir() / 'zeroshot_phantom.py'}",
        f"--config.clip_workdir={clip_wd}",
        f"--config.data.n={n}",
        f"--config.data.findings={findings}",
        f"--config.dpfem.num_epochs={dpfem_epochs}",
        "--config.figures=False",
    ]
    args += [f"--config.{k}={v}" for k, v in overrides.items()]
    cfg = ml_collections.ConfigDict(cli.load_config(args).to_dict())
    cfg.prompts = {structure: prompt}
    cfg.dataset = target
    return cfg


def run_arm(cfg, workdir: pathlib.Path, full_dir: pathlib.Path | None, overrides: dict) -> list:
    """The arm's `cases.jsonl` records; reuses the full chain's saliency / DPFEM where equal."""
    from mzs_jax.pipeline.zeroshot import segment_dataset

    same_saliency = "saliency.method" not in overrides
    if full_dir is not None and same_saliency:
        shutil.copytree(full_dir / "saliency", workdir / "saliency")
        if cfg.dpfem.enabled:
            cfg.dpfem.reuse = str(full_dir)
    segment_dataset(cfg, workdir)
    return [json.loads(ln) for ln in (workdir / "cases.jsonl").read_text().splitlines()]


def baseline_rows(cfg, records: list[dict], target: str, seed: int) -> list[dict]:
    from mzs_jax.pipeline import baselines, metrics, segmenters
    from mzs_jax.pipeline.zeroshot_data import load_cases

    cases, _ = load_cases(cfg)
    (structure,) = cfg.prompts
    boxes = {r["case"]: (r["boxes"][0] if r["boxes"] else None) for r in records}
    seg = segmenters.make_segmenter(cfg.segmenter)
    images = [c["image"] for c in cases]
    out = baselines.baseline_masks(images, [boxes[c["id"]] for c in cases], seg, "", seed)
    rows = []
    for name, masks in out["masks"].items():
        for c, m in zip(cases, masks, strict=True):
            gt = c["gt"][structure]
            rows.append(_row(name, target, c["id"], metrics.dice(m, gt), metrics.iou(m, gt)))
    return rows


def _row(method, target, case, dice, iou, hit=float("nan")) -> dict:
    return {
        "method": method,
        "dataset": target,
        "class": "",
        "case": case,
        "seed": 0,
        "dice": dice,
        "iou": iou,
        "hit": hit,
    }


def table(rows: list[dict], target: str) -> list[str]:
    import numpy as np

    from mzs_jax.pipeline.stats import paired_ttest

    methods = list(dict.fromkeys(r["method"] for r in rows if r["dataset"] == target))
    lines = [
        f"#### {target}",
        "",
        "| arm | n | Dice mean ± std | IoU mean ± std | pointing hit | ΔDice vs full | p "
        "(paired t) | reading |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        sel = [r for r in rows if r["dataset"] == target and r["method"] == m]
        d, i = np.array([r["dice"] for r in sel]), np.array([r["iou"] for r in sel])
        hits = [r["hit"] for r in sel if np.isfinite(r["hit"])]
        hit = f"{np.mean(hits):.3f}" if hits else "—"
        if m == FULL:
            delta, p, reading = "—", "—", "reference"
        else:
            t = paired_ttest(rows, FULL, m, "dice", dataset=target)
            delta, p = f"{t.mean_a - t.mean_b:+.3f}", f"{t.pvalue:.3g}"
            reading = _reading(m, t)
        lines.append(
            f"| {m} | {len(sel)} | {d.mean():.3f} ± {d.std():.3f} | {i.mean():.3f} ± "
            f"{i.std():.3f} | {hit} | {delta} | {p} | {reading} |"
        )
    return lines + [""]


def _reading(arm: str, t) -> str:
    import math

    if not math.isfinite(t.pvalue) or t.pvalue >= 0.05:
        return "no difference at p < 0.05"
    better = t.mean_a > t.mean_b
    if arm.startswith("without "):
        part = arm.removeprefix("without ")
        return f"{part} helps" if better else f"{part} hurts"
    return "full chain better" if better else f"{arm} better"


def main(argv: list[str]) -> str:
    p = argparse.ArgumentParser(prog="bench/zeroshot_ablation.py")
    p.add_argument("--n", type=int, default=48, help="scored phantoms per target")
    p.add_argument("--dpfem-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="random-point baseline seed")
    p.add_argument("--quick", action="store_true", help="12 phantoms, 2 DPFEM epochs")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.dpfem_epochs = 12, 2

    from mzs_jax.pipeline.phantom_clip import import_shipped, shipped_checkpoint

    shipped = shipped_checkpoint()
    if shipped is None:
        raise FileNotFoundError("mzs_jax/assets/phantom_clip is missing: the bench scores it")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mzs_bench_ablation_"))
    clip_wd = tmp / "clip"
    import_shipped(shipped, clip_wd)
    shutil.copytree(shipped / "tokenizer", clip_wd / "tokenizer")
    rows = []
    for target in TARGETS:
        full_dir = None
        for arm, overrides in ARMS.items():
            cfg = arm_config(clip_wd, target, overrides, a.n, a.dpfem_epochs)
            wd = tmp / target.replace(" ", "_") / arm.replace(" ", "_")
            records = run_arm(cfg, wd, full_dir, overrides)
            rows += [
                _row(arm, target, r["case"], r["dice"], r["iou"], r.get("hit", float("nan")))
                for r in records
            ]
            if arm == FULL:
                full_dir, full_cfg, full_records = wd, cfg, records
        rows += baseline_rows(full_cfg, full_records, target, a.seed)
    lines = [
        f"### Stage 2 ablation on X-ray phantoms ({a.n} scored per target, shipped phantom CLIP,"
        f" DPFEM {a.dpfem_epochs} epochs on its own phantoms, GrabCut)",
        "",
    ]
    for target in TARGETS:
        lines += table(rows, target)
    (tmp / "rows.json").write_text(json.dumps(rows))
    lines.append(f"Per-case rows: {tmp / 'rows.json'}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
