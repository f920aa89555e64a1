"""`mzs demo` stages 2 and 3 wired together: the zero-shot chain on the train split (pseudo-masks)
and the test split (scored with baselines), then the ResUNet (paper "Weakly-supervised
segmentation") trained on the pseudo-masks over several seeds and scored on the same test cases.
"""

from __future__ import annotations

import collections
import pathlib

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
    test_cfg = demo_zeroshot.stage2_config(demo_cfg, clip_dir, tok, "test", sam_checkpoint)
    segment_dataset(test_cfg, demo_dir / "zeroshot" / "test")
    train_cfg = demo_zeroshot.stage2_config(demo_cfg, clip_dir, tok, "train", sam_checkpoint)
    train_cfg.dpfem.reuse = str(demo_dir / "zeroshot" / "test")
    segment_dataset(train_cfg, demo_dir / "zeroshot" / "train")
    test = demo_zeroshot.read_run(demo_dir / "zeroshot" / "test", test_s, zeroshot_cfg.structure)
    train = demo_zeroshot.read_run(demo_dir / "zeroshot" / "train", train_s, zeroshot_cfg.structure)
    segmenter = make_segmenter(test_cfg.segmenter)
    rows, points = _scored_rows(demo_cfg, demo_dir, test_s, test, segmenter)
    records = test["records"] + train["records"]
    return {
        "rows": rows,
        "segmenter": segmenter.name,
        "segmenter_is_sam": sam_checkpoint is not None,
        "pseudo_dir": demo_dir / "zeroshot" / "train" / "masks",
        "pseudo_train_dice": float(np.mean([r["dice"] for r in train["records"]])),
        "pointing": _pointing(demo_cfg, demo_dir, test_cfg, test_s, test, points),
        "no_box": sum(bool(r["empty"]) for r in records),
        "notes": dict(collections.Counter(r["note"] for r in records if r["note"])),
        "test_dice": float(np.mean([r["dice"] for r in rows if r["method"] == ZERO_SHOT])),
        "overlays": [
            {
                "image": s["image"][..., 0],
                "raw": test["raw"][i],
                "saliency": test["refined"][i],
                "box": test["records"][i]["boxes"][0] if test["records"][i]["boxes"] else None,
                "mask": test["masks"][i],
                "gt": s["gt"],
                "id": s["id"],
            }
            for i, s in enumerate(test_s[: int(zeroshot_cfg.n_overlays)])
        ],
        "position_prior": POSITION_PRIOR in _baseline_names(zeroshot_cfg.prompt),
    }


def _baseline_names(prompt: str) -> list[str]:
    side, zone = baselines.prompt_position(prompt)
    return [baselines.WHOLE_BODY, baselines.RANDOM_POINT] + (
        [POSITION_PRIOR] if side or zone else []
    )


def _scored_rows(demo_cfg, demo_dir, test_s, test: dict, segmenter) -> tuple[list[dict], list]:
    """Per-case rows (evaluate's format) of the chain's test masks, with the DPFEM-refined map as
    the AUC score, and of each baseline's masks; the baselines' random points."""
    zdir, gt_dir = demo_dir / "zeroshot" / "test", demo_dir / "data" / "xray_test" / "gt"
    chain_dir = demo_zeroshot.write_masks(
        zdir / ZERO_SHOT.replace(" ", "_"), test_s, test["masks"], test["refined"]
    )
    rows = evaluate.evaluate_dirs(chain_dir, gt_dir, method=ZERO_SHOT, dataset=DATASET, seed=0)
    boxes = [r["boxes"][0] if r["boxes"] else None for r in test["records"]]
    images = [s["image"] for s in test_s]
    base = baselines.baseline_masks(
        images, boxes, segmenter, demo_cfg.zeroshot.prompt, int(demo_cfg.seed)
    )
    for name, masks in base["masks"].items():
        # A baseline has no soft map: its AUC is that of the hard mask used as the score.
        probs = [m.astype(np.float32) for m in masks]
        folder = demo_zeroshot.write_masks(zdir / name.replace(" ", "_"), test_s, masks, probs)
        rows += evaluate.evaluate_dirs(folder, gt_dir, method=name, dataset=DATASET, seed=0)
    return rows, base["points"]


def _pointing(demo_cfg, demo_dir, cfg, test_s, test: dict, points) -> dict:
    """Hit rate of each map's argmax in the target: the configured method's raw and refined maps,
    the control prompt's map, the other saliency methods, a random body point, the image centre."""
    from mzs_jax.pipeline.zeroshot import encode_prompts, load_clip

    zeroshot_cfg = demo_cfg.zeroshot
    gts = [s["gt"] for s in test_s]
    h, w_ = gts[0].shape
    pointing = {
        f"raw {zeroshot_cfg.saliency} argmax": demo_zeroshot.pointing_game(test["raw"], gts)
    }
    model, tok, model_cfg = load_clip(cfg)
    text = encode_prompts(
        model, tok, {"target": zeroshot_cfg.prompt, "control": zeroshot_cfg.control_prompt or "x"}
    )
    if (
        zeroshot_cfg.control_prompt
    ):  # text-driven: another prompt's map should not peak on the target
        maps = demo_zeroshot.saliency_maps(
            model, model_cfg, test_s, text["control"], cfg, demo_dir / "zeroshot"
        )
        key = f"raw {zeroshot_cfg.saliency} argmax, control prompt {zeroshot_cfg.control_prompt!r}"
        pointing[key] = demo_zeroshot.pointing_game(maps, gts)
    for method in (
        m for m in METHODS if m != zeroshot_cfg.saliency
    ):  # the other methods, same cases
        g = demo_zeroshot.other_method(cfg, method)
        maps = demo_zeroshot.saliency_maps(
            model, model_cfg, test_s, text["target"], g, demo_dir / "zeroshot"
        )
        pointing[f"raw {method} argmax"] = demo_zeroshot.pointing_game(maps, gts)
    return pointing | {
        "DPFEM-refined argmax": demo_zeroshot.pointing_game(test["refined"], gts),
        "random body point": float(
            np.mean([g[y, x] for (y, x), g in zip(points, gts, strict=True)])
        ),
        "image centre": float(np.mean([g[h // 2, w_ // 2] for g in gts])),
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
