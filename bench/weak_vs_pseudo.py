"""Stage 3 "Must show": does a ResUNet trained on pseudo-masks beat the pseudo-masks themselves?

Chest X-ray phantoms (lungs). Pseudo-masks: dark pixels (Otsu) inside one box per lung whose
sides are jittered by ±30% (`crf` box segmenter with an intensity mask: a stand-in for
saliency → CRF → box, since no CLIP/SAM weights exist offline; GrabCut returned empty masks on
these phantoms). A tiny ResUNet is trained on the training pseudo-masks (`mzs train-weak`,
shared engine) for each seed; it and the pseudo-masks are scored against ground truth on
held-out phantoms (whose pseudo-masks are made the same way) and compared by a paired t-test.

    python bench/weak_vs_pseudo.py --out /tmp/weak_vs_pseudo [--seeds 0 1 2] [--n-train 96]

Writes OUT/metrics.csv (per case, per seed), OUT/report/report.md (+ HTML, figures) and prints the
Table-3 section with the t-tests (`main(argv) -> str`, the `mzs bench` script protocol).
About 10-15 minutes on 2 shared CPU cores (`--quick`: about 3).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import numpy as np
from PIL import Image
from skimage.filters import threshold_otsu

from mzs_jax import cli, resources
from mzs_jax.data import phantom
from mzs_jax.pipeline import evaluate, report
from mzs_jax.pipeline.segmenters import CRFMaskSegmenter
from mzs_jax.pipeline.stats import paired_ttest


def jittered_boxes(lung_labels: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """One XYXY box per lung label, each side moved by up to ±`jitter` of the box size."""
    boxes = []
    h, w = lung_labels.shape
    for lab in (1, 2):
        ys, xs = np.nonzero(lung_labels == lab)
        if ys.size == 0:
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        bw, bh = x1 - x0, y1 - y0
        d = rng.uniform(-jitter, jitter, 4) * np.array([bw, bh, bw, bh])
        box = np.round([x0 + d[0], y0 + d[1], x1 + d[2], y1 + d[3]]).astype(int)
        boxes.append(np.clip(box, 0, [w, h, w, h]))
    return np.array(boxes)


def write_split(root: pathlib.Path, n: int, seed: int, size: int, jitter: float) -> dict:
    dirs = {k: root / k for k in ("images", "gt", "pseudo")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    seg, rng = CRFMaskSegmenter(), np.random.default_rng(seed + 1000)
    for i, s in enumerate(phantom.generate("xray", n, seed=seed, size=size)):
        cid = f"xr{seed}_{i:04d}"
        image = s["image"][..., 0]
        lungs = np.where(np.isin(s["mask"], (1, 2)), s["mask"], 0)
        dark = image < threshold_otsu(image)  # lungs are dark on a radiograph
        pseudo = seg.segment(image, jittered_boxes(lungs, rng, jitter), init_mask=dark)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(dirs["images"] / f"{cid}.png")
        Image.fromarray((lungs > 0).astype(np.uint8)).save(dirs["gt"] / f"{cid}.png")
        Image.fromarray(pseudo.astype(np.uint8)).save(dirs["pseudo"] / f"{cid}.png")
    return dirs


def main(argv=None) -> str:
    """Run the experiment; returns the Markdown section (`mzs bench` protocol)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=None, help="default: a temporary folder")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 32 train / 16 test images, 5 epochs (too little training to compare)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--jitter", type=float, default=0.3)
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_test, args.epochs = 32, 16, 5
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="weak_vs_pseudo_"))
    train = write_split(out / "train", args.n_train, seed=1, size=args.size, jitter=args.jitter)
    test = write_split(out / "test", args.n_test, seed=2, size=args.size, jitter=args.jitter)
    csv_path = out / "metrics.csv"
    csv_path.unlink(missing_ok=True)
    # The pseudo-masks have no soft map: their AUC is NaN (`no_soft_map`), reported as n/a.
    for seed in args.seeds:
        _run_seed(args, seed, train, test, out, csv_path)
    rows = evaluate.with_class_mean(evaluate.read_csv(csv_path))
    tests = [
        evaluate.format_ttest(
            paired_ttest(rows, "resunet-weak", "pseudo-mask", metric, class_="mean"),
            "resunet-weak",
            "pseudo-mask",
            "[xray-phantom]",
        )
        for metric in ("dice", "iou")
    ]
    overlays = _overlays(test, out / f"pred_seed{args.seeds[0]}")
    md = report.write_report(
        csv_path,
        out / "report",
        title="ResUNet vs pseudo-masks (phantoms)",
        reference="pseudo-mask",
        overlays=overlays,
    )
    header, body, _, caption = report.metrics_table(rows, reference="pseudo-mask")
    section = report.to_markdown([("table", header, body), ("p", caption)])
    section += "\n" + "\n".join(f"- {t}" for t in tests)
    section += f"\n\nPer-case CSV: `{csv_path}`; full report: `{md}`.\n"
    return section


def _run_seed(args, seed: int, train: dict, test: dict, out: pathlib.Path, csv_path) -> None:
    """Score the pseudo-masks, train one ResUNet on them, predict the test split, score it."""
    rows = evaluate.evaluate_dirs(
        test["pseudo"],
        test["gt"],
        method="pseudo-mask",
        dataset="xray-phantom",
        seed=seed,
        classes=[1],
    )
    evaluate.write_csv(rows, csv_path, append=True)
    w, pred = out / f"weak_seed{seed}", out / f"pred_seed{seed}"
    config = str(resources.configs_dir() / "weak_phantom.py")
    train_argv = ["train-weak", "--config", config, "--workdir", str(w), f"--config.seed={seed}",
                  f"--config.num_epochs={args.epochs}", f"--config.data.image_size={args.size}",
                  f"--config.data.images={train['images']}",
                  f"--config.data.pseudo_masks={train['pseudo']}"]  # fmt: skip
    predict_argv = ["train-weak", "--workdir", str(w), "--predict", str(test["images"]),
                    "--out", str(pred)]  # fmt: skip
    for what, argv in (("train-weak", train_argv), ("train-weak --predict", predict_argv)):
        rc = cli.main(argv)
        if rc:
            raise RuntimeError(f"mzs {what} failed for seed {seed} (exit {rc})")
    rows = evaluate.evaluate_dirs(
        pred, test["gt"], method="resunet-weak", dataset="xray-phantom", seed=seed, classes=[1]
    )
    evaluate.write_csv(rows, csv_path, append=True)


def _overlays(test: dict, pred: pathlib.Path) -> list[dict]:
    """Two test cases with their pseudo-mask, and the same two with the ResUNet's prediction."""
    ids = sorted(evaluate.find_cases(test["gt"]))[:4]
    overlays = [
        {
            "image": test["images"] / f"{c}.png",
            "mask": test["pseudo"] / f"{c}.png",
            "gt": test["gt"] / f"{c}.png",
            "title": f"{c} pseudo",
        }
        for c in ids[:2]
    ]
    overlays += [
        {
            "image": test["images"] / f"{c}.png",
            "mask": pred / f"{c}.png",
            "gt": test["gt"] / f"{c}.png",
            "title": f"{c} resunet",
        }
        for c in ids[:2]
    ]
    return overlays


if __name__ == "__main__":
    print(main(sys.argv[1:]))
