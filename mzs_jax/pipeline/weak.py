"""Stage 3 (paper "Weakly-supervised segmentation"): ResUNet trained on zero-shot pseudo-masks.

`mzs train-weak --config configs/weak_<dataset>.py --workdir W`: cross-entropy, Adam lr 1e-4 with
step decay, paired rotation/flip/scale augmentation, all through the one engine
(`mzs_jax.train.loop.fit`: sharded jit steps, Orbax checkpoints, exact resume, grain input).
"""

from __future__ import annotations

import pathlib

import grain
import ml_collections
import numpy as np
import optax
from flax import nnx

from mzs_jax.data.transforms import PairedAugment
from mzs_jax.models import resunet
from mzs_jax.pipeline.evaluate import find_cases
from mzs_jax.pipeline.metrics import dice, nanmean
from mzs_jax.pipeline.weak_data import (
    SegmentationFolder,
    images_with_masks,
    load_image,
    per_class_masks,
    read_label_map,
    split_ids,
)
from mzs_jax.pipeline.weak_inference import predict, predict_image, predict_slices
from mzs_jax.train.step import with_compute_dtype

# The data side lives in weak_data; these names stay importable from here.
__all__ = [
    "SegmentationFolder",
    "WeakTask",
    "default_config",
    "load_image",
    "per_class_masks",
    "predict",
    "predict_folder",
    "read_label_map",
    "split_ids",
    "train",
]


def mean_dice(probs: np.ndarray, masks: np.ndarray, classes) -> float:
    """Mean over cases and foreground classes of Dice(argmax, mask); absent-in-both skipped."""
    pred = probs.argmax(-1)
    vals = [
        dice(p == c, m == c) if ((p == c).any() or (m == c).any()) else float("nan")
        for p, m in zip(pred, masks, strict=True)
        for c in classes
    ]
    return nanmean(vals)


class WeakTask:
    """`loop.Task` for the ResUNet: cross-entropy on pseudo-masks, per-epoch validation Dice."""

    def __init__(self, config: ml_collections.ConfigDict):
        d = config.data
        self.model_config = resunet.model_config(
            config.model.name,
            in_channels=d.in_channels,
            num_classes=d.num_classes,
            image_size=d.image_size,
            **config.model.overrides.to_dict(),
        )
        classes = tuple(d.pseudo_classes)
        all_ids = images_with_masks(
            d.images, per_class_masks(d.pseudo_masks, classes), d.missing_masks, "pseudo-mask"
        )
        self.train_ids, held_out = split_ids(all_ids, float(d.val_fraction), int(d.split_seed))
        kw = dict(size=d.image_size, in_channels=d.in_channels, num_classes=d.num_classes)
        self.train_source = SegmentationFolder(
            d.images, d.pseudo_masks, ids=self.train_ids, mask_classes=classes, **kw
        )
        val = self._validation_source(d, held_out, classes, kw)
        self.val_source_ids = [] if val is None else list(val.ids)
        self.val = None if val is None or not len(val) else [val[i] for i in range(len(val))]
        self.augment = PairedAugment(
            max_rotation_deg=d.augment.max_rotation_deg,
            scale_range=tuple(d.augment.scale_range),
            flip_prob=d.augment.flip_prob,
        )
        self.seed = int(config.seed)
        self.classes = list(range(1, int(d.num_classes)))
        self.train_model_config = with_compute_dtype(self.model_config, config)
        self.ensemble_keep = int(config.ensemble.keep)
        self.workdir = None  # set by `train`: where the ensemble snapshots go

    def _validation_source(self, d, held_out, classes, kw) -> SegmentationFolder | None:
        """Against ground truth when present, else against the held-out pseudo-masks."""
        if d.gt_masks:
            self.val_target = "gt"
            if d.val_images:  # a validation set of its own: every image needs its GT
                ids = images_with_masks(d.val_images, find_cases(d.gt_masks), d.missing_masks, "GT")
            else:  # GT for some of the training images
                ids = sorted(set(find_cases(d.gt_masks)) & set(find_cases(d.images)))
            return SegmentationFolder(d.val_images or d.images, d.gt_masks, ids=ids, **kw)
        self.val_target = "pseudo"
        if not held_out:
            return None
        return SegmentationFolder(
            d.images, d.pseudo_masks, ids=held_out, mask_classes=classes, **kw
        )

    def build_model(self, rngs: nnx.Rngs) -> resunet.ResUNet:
        return resunet.ResUNet(self.train_model_config, rngs=rngs)

    def loss_fn(self, model, batch, rng):
        del rng  # no dropout; augmentation is on the host (grain random_map)
        logits = model(batch["image"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["mask"]).mean()
        acc = (logits.argmax(-1) == batch["mask"]).mean()
        return loss, {"pixel_acc": acc}

    def train_dataset(self, config) -> grain.MapDataset:
        # random_map sees the engine's epoch-offset index, so each epoch draws new augmentations.
        return grain.MapDataset.source(self.train_source).random_map(self.augment, seed=self.seed)

    def evaluate(self, model, epoch: int) -> dict[str, float]:
        # The engine calls this once per evaluation epoch with the current model: the snapshot
        # hook of the checkpoint ensemble (`pipeline/ensemble.py`, config.ensemble.keep).
        if self.ensemble_keep > 0 and self.workdir is not None:
            from mzs_jax.pipeline import ensemble

            ensemble.snapshot(self.workdir, model, self.model_config, epoch, self.ensemble_keep)
        if self.val is None:
            return {}
        images = np.stack([e["image"] for e in self.val])
        masks = np.stack([e["mask"] for e in self.val])
        return {
            "val/dice": mean_dice(predict(model, images), masks, self.classes),
            "val/against_gt": float(self.val_target == "gt"),
        }


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Train per `config` (configs/weak_*.py) into `workdir`; resumes if checkpoints exist."""
    from mzs_jax.train.loop import fit

    task = WeakTask(config)
    task.workdir = pathlib.Path(workdir)
    if task.val is None and config.checkpoint.best_metric:
        print(
            f"[train-weak] no validation cases (data.val_fraction={config.data.val_fraction}, "
            "no data.gt_masks): keeping the latest checkpoints, not the best",
            flush=True,
        )
        config = config.copy_and_resolve_references()
        config.checkpoint.best_metric = ""
    return fit(task, config, workdir, name="train-weak")


def best_step(workdir, metric: str = "val/dice") -> int | None:
    """Checkpointed step with the highest `metric` in `workdir/metrics.jsonl` (None if no eval)."""
    import json

    from mzs_jax.pipeline.ensemble import snapshot_steps

    log = pathlib.Path(workdir) / "metrics.jsonl"
    saved = set(snapshot_steps(workdir, folder=""))
    scores = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if metric in rec and rec["step"] in saved:
                scores[rec["step"]] = rec[metric]
    return max(scores, key=lambda k: (scores[k], k)) if scores else None


def predict_folder(workdir, images_dir, out_dir) -> list[pathlib.Path]:
    """Masks `<id>.png` and soft maps `<id>_prob.npy` (`(C, H, W)`, original size) for every image,
    from the best-validation checkpoint in `workdir` (else the latest) — input of `mzs evaluate`."""
    from PIL import Image

    model, cfg = _restore_resunet(workdir)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for cid, path in find_cases(images_dir).items():
        p = predict_image(model, load_image(path, cfg.in_channels), int(cfg.image_size))
        Image.fromarray(p.argmax(0).astype(np.uint8)).save(out_dir / f"{cid}.png")
        np.save(out_dir / f"{cid}_prob.npy", p.astype(np.float32))
        written.append(out_dir / f"{cid}.png")
    return written


def _restore_resunet(workdir):
    from mzs_jax.train.checkpoint import restore_model

    model, cfg = restore_model(workdir, step=best_step(workdir))
    if not isinstance(model, resunet.ResUNet):
        raise ValueError(f"{workdir}: holds a {type(model).__name__}, not a ResUNet")
    return model, cfg


def predict_acdc(workdir, source, out_dir, gt_dir=None) -> list[pathlib.Path]:
    """Slice-wise prediction of every volume of `data.acdc.AcdcSlices` (resampled, z-scored
    grid), written back as NIfTI `<name>.nii.gz` in the original geometry; with `gt_dir`, the
    matching ground-truth files are copied there under the same names, so `mzs evaluate` scores
    them volume-wise (the paper). Beside each volume, `<name>_prob.npy`: class probabilities
    `(C, H, W, Z)` float16 on the original grid (linear resampling), for AUC. The
    one-member case of `ensemble.acdc_volumes`."""
    from mzs_jax.pipeline.ensemble import acdc_volumes

    model, cfg = _restore_resunet(workdir)
    volumes = acdc_volumes([model], int(cfg.image_size), source, out_dir, gt_dir)
    return [path for _, path, *_ in volumes]


def predict_synapse(
    workdir, root, out_dir, gt_dir=None, soft_maps: bool = False
) -> list[pathlib.Path]:
    """Slice-wise prediction of every Synapse test volume (`test_vol_h5/<case>.npy.h5`), saved
    as `<case>.npy` label volumes `(Z, H, W)` (and the ground truth likewise in `gt_dir`).
    `soft_maps`: also `<case>_prob.npy`, `(9, Z, H, W)` float16 (about 0.5 GB per 512² volume of
    100 slices, hence opt-in), for AUC."""
    from mzs_jax.data.synapse import SynapseSlices, load_h5_volume

    model, cfg = _restore_resunet(workdir)
    source = SynapseSlices(root, split="test")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in source.files:
        image, label = load_h5_volume(path)
        case = source._case(path)
        labels, probs = predict_slices(model, image, int(cfg.image_size))
        np.save(out_dir / f"{case}.npy", labels)
        if soft_maps:
            np.save(out_dir / f"{case}_prob.npy", probs.astype(np.float16))
        written.append(out_dir / f"{case}.npy")
        if gt_dir is not None:
            pathlib.Path(gt_dir).mkdir(parents=True, exist_ok=True)
            np.save(pathlib.Path(gt_dir) / f"{case}.npy", label.astype(np.int16))
    return written


def add_arguments(parser) -> None:
    parser.add_argument(
        "--predict",
        type=pathlib.Path,
        metavar="IMAGES",
        help="skip training; predict every image in this folder",
    )
    parser.add_argument(
        "--predict-acdc",
        type=pathlib.Path,
        metavar="ACDC_ROOT",
        help="skip training; predict the ACDC volumes of --split as NIfTI",
    )
    parser.add_argument(
        "--predict-synapse",
        type=pathlib.Path,
        metavar="SYNAPSE_ROOT",
        help="skip training; predict the Synapse test volumes as <case>.npy",
    )
    parser.add_argument("--split", default="val", help="ACDC split for --predict-acdc")
    parser.add_argument(
        "--soft-maps",
        action="store_true",
        help="with --predict-synapse: also write <case>_prob.npy (float16; large) for AUC",
    )
    parser.add_argument(
        "--gt-out",
        type=pathlib.Path,
        help="with --predict-acdc/--predict-synapse: write the matching ground truth here",
    )
    parser.add_argument("--out", type=pathlib.Path, help="output folder for --predict*")
    parser.add_argument(
        "--ensemble",
        type=int,
        default=0,
        metavar="N",
        help="with --predict/--predict-acdc: average the last N epoch snapshots "
        "(config.ensemble.keep) and write the per-pixel variance under OUT/variance",
    )


def run(args) -> int:
    if args.workdir is None:
        raise ValueError("--workdir is required")
    modes = ("predict", "predict_acdc", "predict_synapse")  # the first one given wins
    mode = next((m for m in modes if getattr(args, m) is not None), None)
    if args.ensemble and mode in (None, "predict_synapse"):
        raise ValueError(
            "--ensemble works with --predict and --predict-acdc, not Synapse"
            if mode
            else "--ensemble goes with --predict or --predict-acdc"
        )
    if mode is None:
        if args.config is None:
            raise ValueError("--config configs/weak_<dataset>.py is required")
        last = train(args.config, args.workdir)
        print("final: " + " ".join(f"{k}={v:.4g}" for k, v in last.items()))
        return 0
    if args.out is None:
        raise ValueError(f"--{mode.replace('_', '-')} needs --out")
    from mzs_jax.pipeline import ensemble

    if mode == "predict" and args.ensemble:
        written = ensemble.predict_folder(args.workdir, args.predict, args.out, args.ensemble)
        print(
            f"wrote {len(written)} masks, mean soft maps and variance maps of a "
            f"{args.ensemble}-snapshot ensemble to {args.out} (figure: uncertainty.png)"
        )
    elif mode == "predict":
        written = predict_folder(args.workdir, args.predict, args.out)
        print(f"wrote {len(written)} masks and soft maps to {args.out}")
    elif mode == "predict_acdc":
        from mzs_jax.data.acdc import AcdcSlices

        source = AcdcSlices(args.predict_acdc, split=args.split)
        if args.ensemble:
            written = ensemble.predict_acdc(
                args.workdir, source, args.out, args.ensemble, args.gt_out
            )
            print(f"wrote {len(written)} volumes and variance maps to {args.out}")
        else:
            written = predict_acdc(args.workdir, source, args.out, args.gt_out)
            print(f"wrote {len(written)} volumes to {args.out}")
    else:
        written = predict_synapse(
            args.workdir, args.predict_synapse, args.out, args.gt_out, args.soft_maps
        )
        print(f"wrote {len(written)} volumes to {args.out}")
    return 0


def default_config(dataset: str = "phantom") -> ml_collections.ConfigDict:
    """Stage 3 defaults (paper): Adam lr 1e-4 with step decay, cross-entropy, rotation / flip /
    scale augmentation; `data.*` paths point at `mzs segment` output and the dataset's images."""
    from mzs_jax.train.defaults import train_config

    c = train_config()
    c.batch_size = 16
    c.num_epochs = 50
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-4
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.0  # plain Adam, as in the paper
    c.optimizer.decay_every_epochs = 10.0
    c.optimizer.decay_factor = 0.5
    c.checkpoint.best_metric = "val/dice"
    c.checkpoint.every_steps = 200
    # Snapshots of the last `keep` evaluation epochs in WORKDIR/ensemble (0 = none) for
    # `--predict ... --ensemble N`; MedCLIP-SAMv2 averages ~19 (its last 10 epochs + 9 others).
    c.ensemble = ml_collections.ConfigDict({"keep": 10})
    c.model = ml_collections.ConfigDict({"name": "default", "overrides": {}})
    d = c.data
    d.dataset = dataset
    d.images = ""  # folder of <id>.png|.npy images
    d.pseudo_masks = ""  # `mzs segment` WORKDIR/masks: <id>.png label maps, or see pseudo_classes
    d.pseudo_classes = ()  # class slugs in label order: read <id>_<slug>.png binary masks
    d.gt_masks = ""  # optional ground truth for validation ("" = held-out pseudo-masks)
    d.val_images = ""  # images of the GT validation cases ("" = d.images)
    d.val_fraction = 0.15  # held-out pseudo-masks when there is no GT
    d.missing_masks = "error"  # an image without a (pseudo-)mask: error | skip (count printed)
    d.split_seed = 0
    d.image_size = 224
    d.in_channels = 1
    d.num_classes = 2  # background included
    d.augment = ml_collections.ConfigDict(
        {"max_rotation_deg": 15.0, "scale_range": (0.9, 1.1), "flip_prob": 0.5}
    )
    return c
