"""`mzs demo` stages 2 and 3 wired together: the zero-shot chain on the train split (pseudo-masks)
and the test split (scored with baselines), then the ResUNet (paper "Weakly-supervised
segmentation") trained on the pseudo-masks over several seeds and scored on the same test cases.
"""

from __future__ import annotations

import collections
import pathlib

import ml_collections
import numpy as np

from mzs_jax import demo_zeroshot
from mzs_jax.pipeline import baselines, evaluate
from mzs_jax.pipeline.baselines import POSITION_PRIOR
from mzs_jax.pipeline.saliency import METHODS
from mzs_jax.pipeline.zeroshot import slug

DATASET = demo_zeroshot.DATASET
ZERO_SHOT = "zero-shot chain"
WEAK = "weak ResUNet"


def zero_shot(demo_cfg, demo_dir: pathlib.Path, clip_dir, tok, train_s, test_s, sam_checkpoint):
    """Stage 2 as `mzs segment` runs it (`segment_dataset`): on the test split (DPFEM trained on
    its own phantoms), then on the train split reusing that DPFEM (the pseudo-masks); baselines
    and the pointing game on the test split. Workdirs `demo_dir/zeroshot/{test,train}` (each
    with its `config.json`). Returns everything the report needs, per-case rows included."""
    from mzs_jax.pipeline.segmenters import make_segmenter
    from mzs_jax.pipeline.zeroshot import segment_dataset

    zeroshot_cfg = demo_cfg.zeroshot
    test_dir, train_dir = demo_dir / "zeroshot" / "test", demo_dir / "zeroshot" / "train"
    test_cfg = demo_zeroshot.stage2_config(demo_cfg, clip_dir, tok, "test", sam_checkpoint)
    test = segment_dataset(test_cfg, test_dir)
    train_cfg = demo_zeroshot.stage2_config(demo_cfg, clip_dir, tok, "train", sam_checkpoint)
    train_cfg.dpfem.reuse = str(test_dir)
    train = segment_dataset(train_cfg, train_dir)
    records = demo_zeroshot.read_records(test_dir, test_s)
    segmenter = make_segmenter(test_cfg.segmenter)
    rows, points = _scored_rows(demo_cfg, demo_dir, test_s, records, segmenter)
    overlays = test_s[: int(zeroshot_cfg.n_overlays)]
    maps = demo_zeroshot.read_maps(test_dir, overlays, zeroshot_cfg.structure)
    return {
        "rows": rows,
        "segmenter": segmenter.name,
        "segmenter_is_sam": sam_checkpoint is not None,
        "pseudo_train_dice": train["dice"],
        "pointing": _pointing(demo_cfg, demo_dir, test_cfg, test_s, test, points),
        "no_box": test["n_empty"] + train["n_empty"],
        "notes": dict(
            collections.Counter(test["fallbacks"]) + collections.Counter(train["fallbacks"])
        ),
        "test_dice": test["dice"],
        "overlays": [
            {
                "image": s["image"][..., 0],
                "box": records[i]["boxes"][0] if records[i]["boxes"] else None,
                "gt": s["gt"],
                "id": s["id"],
            }
            | maps[i]
            for i, s in enumerate(overlays)
        ],
        "position_prior": any(r["method"] == POSITION_PRIOR for r in rows),
    }


def _scored_rows(demo_cfg, demo_dir, test_s, records, segmenter) -> tuple[list[dict], list]:
    """Per-case rows (evaluate's format) of the chain's test masks as `mzs segment` scored them
    (the DPFEM-refined map is the AUC score), and of each baseline's masks; the baselines'
    random points."""
    zdir, gt_dir = demo_dir / "zeroshot" / "test", demo_dir / "data" / "xray_test" / "gt"
    # The class as the label id of the 0/1 ground-truth PNGs the baselines and the ResUNet
    # are scored on.
    rows = [
        {**r, "method": ZERO_SHOT, "class": "1"} for r in evaluate.read_csv(zdir / "per_case.csv")
    ]
    boxes = [r["boxes"][0] if r["boxes"] else None for r in records]
    images = [s["image"] for s in test_s]
    base = baselines.baseline_masks(
        images, boxes, segmenter, demo_cfg.zeroshot.prompt, int(demo_cfg.seed)
    )
    for name, masks in base["masks"].items():
        folder = demo_zeroshot.write_masks(zdir / name.replace(" ", "_"), test_s, masks)
        rows += evaluate.evaluate_dirs(folder, gt_dir, method=name, dataset=DATASET, seed=0)
    return rows, base["points"]


def _pointing(demo_cfg, demo_dir, cfg, test_s, summary: dict, points) -> dict:
    """Hit rate of each map's argmax in the target: the configured method's raw and refined maps
    (`mzs segment`'s summary), the control prompt's map, the other saliency methods, a random
    body point, the image centre."""
    from mzs_jax.pipeline.zeroshot import compute_saliency, encode_prompts, load_clip

    zeroshot_cfg = demo_cfg.zeroshot
    gts = [s["gt"] for s in test_s]
    h, w = gts[0].shape
    images = [s["image"] for s in test_s]
    pointing = {f"raw {zeroshot_cfg.saliency} argmax": summary["hit"]}
    model, tok, model_cfg = load_clip(cfg)
    prompts = {"target": zeroshot_cfg.prompt, "control": zeroshot_cfg.control_prompt or "x"}
    text = {
        k: np.repeat(v[None], len(images), 0)
        for k, v in encode_prompts(model, tok, prompts).items()
    }
    # Text-driven: another prompt's map should not peak on the target.
    if zeroshot_cfg.control_prompt:
        maps = compute_saliency(
            model, model_cfg, images, text["control"], cfg, demo_dir / "zeroshot"
        )
        key = f"raw {zeroshot_cfg.saliency} argmax, control prompt {zeroshot_cfg.control_prompt!r}"
        pointing[key] = demo_zeroshot.pointing_game(maps, gts)
    for method in (m for m in METHODS if m != zeroshot_cfg.saliency):  # the others, same cases
        other = ml_collections.ConfigDict(cfg.to_dict())
        other.saliency.method = method
        maps = compute_saliency(
            model, model_cfg, images, text["target"], other, demo_dir / "zeroshot"
        )
        pointing[f"raw {method} argmax"] = demo_zeroshot.pointing_game(maps, gts)
    return pointing | {
        "DPFEM-refined argmax": summary["refined_hit"],
        "random body point": float(
            np.mean([g[y, x] for (y, x), g in zip(points, gts, strict=True)])
        ),
        "image centre": float(np.mean([g[h // 2, w // 2] for g in gts])),
    }


def weak_config(demo_cfg, demo_dir: pathlib.Path, seed: int):
    """configs/weak_phantom.py-style stage 3 config: pseudo-masks only (no ground truth)."""
    from mzs_jax.pipeline.weak import default_config

    c = default_config("phantom")
    c.seed = int(seed)
    c.model.name = demo_cfg.weak.model
    d = c.data
    d.images = str(demo_dir / "data" / "xray_train" / "images")
    d.pseudo_masks = str(demo_dir / "zeroshot" / "train" / "masks")
    d.pseudo_classes = (slug(demo_cfg.zeroshot.structure),)
    d.image_size, d.in_channels, d.num_classes = int(demo_cfg.image_size), 1, 2
    d.num_threads, d.prefetch = 1, 4
    c.batch_size = int(demo_cfg.weak.batch_size)
    c.num_epochs = int(demo_cfg.weak.epochs)
    c.optimizer.lr = float(demo_cfg.weak.lr)
    c.optimizer.decay_every_epochs = max(1.0, int(demo_cfg.weak.epochs) / 2)
    c.checkpoint.every_steps = 10**6
    c.checkpoint.async_save = False
    return c


def weak_stage(demo_cfg, demo_dir: pathlib.Path, zero_shot_result: dict) -> dict:
    """Train, predict and score the ResUNet per seed; appends rows to the zero-shot rows."""
    from mzs_jax.pipeline import weak

    test_images = demo_dir / "data" / "xray_test" / "images"
    gt_dir = demo_dir / "data" / "xray_test" / "gt"
    rows = []
    for seed in demo_cfg.weak.seeds:
        wd = demo_dir / "weak" / f"seed{seed}"
        weak.train(weak_config(demo_cfg, demo_dir, seed), wd)
        pred = wd / "pred"
        weak.predict_folder(wd, test_images, pred)
        rows += evaluate.evaluate_dirs(
            pred, gt_dir, method=WEAK, dataset=DATASET, seed=seed, classes=[1]
        )
    return {"rows": rows, "mean_dice": float(np.mean([r["dice"] for r in rows]))}
