"""`mzs demo` stages 2 and 3 wired together: the zero-shot chain on the train split (pseudo-masks)
and the test split (scored with baselines), then the ResUNet (paper "Weakly-supervised
segmentation") trained on the pseudo-masks over several seeds and scored on the same test cases.
"""

from __future__ import annotations

import collections
import pathlib

import ml_collections
import numpy as np

from mzs_jax import demo_zeroshot as zs
from mzs_jax.pipeline import evaluate
from mzs_jax.pipeline.saliency import METHODS

DATASET = "xray-phantom"
ZERO_SHOT = "zero-shot chain"
WEAK = "weak ResUNet"


def zero_shot(dc, w: pathlib.Path, clip_dir, tok, train_s, test_s, sam_checkpoint):
    """Saliency → DPFEM → CRF → box → segmenter on both splits; baselines on the test split.
    Writes masks under `w/zeroshot/{train,test}/...` and the per-case CSV rows to
    `w/eval/metrics.csv`. Returns everything the report needs."""
    from mzs_jax.pipeline.segmenters import default_config, make_segmenter
    from mzs_jax.train.checkpoint import restore_model

    z = dc.zeroshot
    model, model_cfg = restore_model(clip_dir)
    text = zs.prompt_embedding(model, tok, z.prompt)
    s2 = zs.stage2_config(dc)
    raw_train = zs.saliency_maps(model, model_cfg, train_s, text, s2, w / "zeroshot")
    raw_test = zs.saliency_maps(model, model_cfg, test_s, text, s2, w / "zeroshot")
    dpfem = zs.train_dpfem(train_s, raw_train, dc, w / "zeroshot" / "dpfem")
    ref_train = zs.refine_maps(dpfem, train_s, raw_train)
    ref_test = zs.refine_maps(dpfem, test_s, raw_test)

    seg_cfg = default_config()
    if sam_checkpoint is not None:
        seg_cfg.name, seg_cfg.checkpoint = "sam", str(sam_checkpoint)
    else:
        seg_cfg.name = z.segmenter
    segmenter = make_segmenter(seg_cfg)
    pp = s2.postprocess
    out_train = [
        zs.chain(s["image"], m, segmenter, pp) for s, m in zip(train_s, ref_train, strict=True)
    ]
    out_test = [
        zs.chain(s["image"], m, segmenter, pp) for s, m in zip(test_s, ref_test, strict=True)
    ]
    zdir = w / "zeroshot"
    pseudo = zs.write_masks(zdir / "train" / "masks", train_s, [o["mask"] for o in out_train])
    zs.write_masks(
        zdir / "test" / ZERO_SHOT.replace(" ", "_"), test_s, [o["mask"] for o in out_test], ref_test
    )
    base = zs.baselines(test_s, out_test, segmenter, z.prompt, int(dc.seed))
    gt_dir = w / "data" / "xray_test" / "gt"
    rows = evaluate.evaluate_dirs(
        zdir / "test" / ZERO_SHOT.replace(" ", "_"),
        gt_dir,
        method=ZERO_SHOT,
        dataset=DATASET,
        seed=0,
    )
    for name, masks in base["masks"].items():
        # A baseline has no soft map: its AUC is that of the hard mask used as the score.
        folder = zs.write_masks(
            zdir / "test" / name.replace(" ", "_"),
            test_s,
            masks,
            [m.astype(np.float32) for m in masks],
        )
        rows += evaluate.evaluate_dirs(folder, gt_dir, method=name, dataset=DATASET, seed=0)
    gts = [s["gt"] for s in test_s]
    h, w_ = gts[0].shape
    rand_hits = [g[y, x] for (y, x), g in zip(base["points"], gts, strict=True)]
    pointing = {f"raw {z.saliency} argmax": zs.pointing_game(raw_test, gts)}
    if z.control_prompt:  # text-driven: another prompt's map should not peak on the target
        ctrl = zs.prompt_embedding(model, tok, z.control_prompt)
        maps = zs.saliency_maps(model, model_cfg, test_s, ctrl, s2, w / "zeroshot")
        pointing[f"raw {z.saliency} argmax, control prompt {z.control_prompt!r}"] = (
            zs.pointing_game(maps, gts)
        )
    for method in (m for m in METHODS if m != z.saliency):  # the other methods, same cases
        g = ml_collections.ConfigDict(s2.to_dict())
        g.saliency.method = method
        maps = zs.saliency_maps(model, model_cfg, test_s, text, g, w / "zeroshot")
        pointing[f"raw {method} argmax"] = zs.pointing_game(maps, gts)
    pointing |= {
        "DPFEM-refined argmax": zs.pointing_game(ref_test, gts),
        "random body point": float(np.mean(rand_hits)),
        "image centre": float(np.mean([g[h // 2, w_ // 2] for g in gts])),
    }
    pseudo_dice = np.mean(
        [evaluate.dice(o["mask"], s["gt"]) for o, s in zip(out_train, train_s, strict=True)]
    )
    return {
        "rows": rows,
        "segmenter": segmenter.name,
        "segmenter_is_sam": sam_checkpoint is not None,
        "pseudo_dir": pseudo,
        "pseudo_train_dice": float(pseudo_dice),
        "pointing": pointing,
        "no_box": sum(o["note"] == "no_box" for o in out_train + out_test),
        "notes": dict(
            collections.Counter(
                o["note"] for o in out_train + out_test if o["note"] not in ("", "no_box")
            )
        ),
        "test_dice": float(np.mean([r["dice"] for r in rows if r["method"] == ZERO_SHOT])),
        "overlays": [
            {
                "image": s["image"][..., 0],
                "raw": raw_test[i],
                "saliency": ref_test[i],
                "box": out_test[i]["box"],
                "mask": out_test[i]["mask"],
                "gt": s["gt"],
                "id": s["id"],
            }
            for i, s in enumerate(test_s[: int(z.n_overlays)])
        ],
        "position_prior": "position prior" in base["masks"],
    }


def weak_config(dc, w: pathlib.Path, seed: int):
    """configs/weak_phantom.py-style stage 3 config: pseudo-masks only (no ground truth)."""
    from mzs_jax.pipeline.weak import default_config

    c = default_config("phantom")
    c.seed = int(seed)
    c.model.name = dc.weak.model
    d = c.data
    d.images = str(w / "data" / "xray_train" / "images")
    d.pseudo_masks = str(w / "zeroshot" / "train" / "masks")
    d.image_size, d.in_channels, d.num_classes = int(dc.image_size), 1, 2
    d.num_threads, d.prefetch = 1, 4
    c.batch_size = int(dc.weak.batch_size)
    c.num_epochs = int(dc.weak.epochs)
    c.optimizer.lr = float(dc.weak.lr)
    c.optimizer.decay_every_epochs = max(1.0, int(dc.weak.epochs) / 2)
    c.checkpoint.every_steps = 10**6
    c.checkpoint.async_save = False
    return c


def weak_stage(dc, w: pathlib.Path, zres: dict) -> dict:
    """Train, predict and score the ResUNet per seed; appends rows to the zero-shot rows."""
    from mzs_jax.pipeline import weak

    test_images = w / "data" / "xray_test" / "images"
    gt_dir = w / "data" / "xray_test" / "gt"
    rows = []
    for seed in dc.weak.seeds:
        wd = w / "weak" / f"seed{seed}"
        weak.train(weak_config(dc, w, seed), wd)
        pred = wd / "pred"
        weak.predict_folder(wd, test_images, pred)
        rows += evaluate.evaluate_dirs(
            pred, gt_dir, method=WEAK, dataset=DATASET, seed=seed, classes=[1]
        )
    return {"rows": rows, "mean_dice": float(np.mean([r["dice"] for r in rows]))}
