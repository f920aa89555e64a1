"""`mzs demo` stage 3 (paper "Weakly-supervised segmentation"): the ResUNet trained on the
zero-shot pseudo-masks of the train split over several seeds, scored on the held-out test cases.
"""

from __future__ import annotations

import pathlib

import numpy as np

from mzs_jax.demo_zeroshot import DATASET
from mzs_jax.pipeline import evaluate
from mzs_jax.pipeline.zeroshot import slug

WEAK = "weak ResUNet"


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


def weak_stage(demo_cfg, demo_dir: pathlib.Path) -> dict:
    """Train the ResUNet per seed on the train split's pseudo-masks (`weak_config`), predict and
    score the test split: `rows` (evaluate's format) and their `mean_dice`."""
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
