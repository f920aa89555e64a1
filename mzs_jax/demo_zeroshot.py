"""`mzs demo` stage 2 (paper "Zero-shot segmentation"): the demo's choices as a `mzs segment`
config, run by `pipeline.zeroshot.segment_dataset` (the same code as `mzs segment`) on the train
split (pseudo-masks) and the held-out test split, scored there beside the baselines and in the
pointing game.
"""

from __future__ import annotations

import collections
import pathlib

import ml_collections
import numpy as np
from PIL import Image

from mzs_jax.pipeline import baselines, evaluate
from mzs_jax.pipeline.baselines import POSITION_PRIOR
from mzs_jax.pipeline.saliency import METHODS
from mzs_jax.pipeline.zeroshot import file_id, read_jsonl, slug

DATASET = "xray-phantom"
ZERO_SHOT = "zero-shot chain"


def make_split(demo_cfg, split: str, folder: pathlib.Path) -> list[dict]:
    """The `split` phantoms (`stage2_config`) as `mzs segment` loads them (`load_cases`), written
    as `folder/images/<id>.png` (grey) and `folder/gt/<id>.png` (0/1 mask of the target); each
    `{"id", "image", "gt"}` with `gt` the target's bool mask."""
    from mzs_jax.data.phantom_formats import to_uint8
    from mzs_jax.pipeline.zeroshot_data import load_cases

    structure = demo_cfg.zeroshot.structure
    cases, _ = load_cases(stage2_config(demo_cfg, "", "", split))
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    for c in cases:
        c["gt"] = c["gt"][structure]
        if not c["gt"].any():
            raise ValueError(f"zeroshot.structure={structure!r} is not in phantom {c['id']}")
        Image.fromarray(to_uint8(c["image"])).save(folder / "images" / f"{c['id']}.png")
        Image.fromarray(c["gt"].astype(np.uint8)).save(folder / "gt" / f"{c['id']}.png")
    return cases


def stage2_config(demo_cfg, clip_dir, tokenizer_dir, split: str, sam_checkpoint=None):
    """The `mzs segment` config (`pipeline.zeroshot.default_config`) of the demo's `split`
    (`train`: phantoms 0..n_train-1, pseudo-masks for stage 3; `test`: the next n_test, scored).
    DPFEM trains on its own n_dpfem phantoms after both (`dpfem.train_data`)."""
    from mzs_jax.pipeline.zeroshot import default_config

    zeroshot_cfg = demo_cfg.zeroshot
    c = default_config()
    c.dataset = DATASET
    c.clip_workdir, c.tokenizer = str(clip_dir), str(tokenizer_dir)
    n_train = int(zeroshot_cfg.n_train)
    start, n = (0, n_train) if split == "train" else (n_train, int(zeroshot_cfg.n_test))
    c.data.update(
        {
            "source": "phantom",
            "kind": zeroshot_cfg.kind,
            "n": n,
            "seed": int(zeroshot_cfg.data_seed),
            "size": int(demo_cfg.image_size),
            "start": start,
            "findings": str(zeroshot_cfg.findings),
        }
    )
    c.prompts = {zeroshot_cfg.structure: zeroshot_cfg.prompt}
    c.saliency.method, c.saliency.topk = zeroshot_cfg.saliency, int(zeroshot_cfg.topk)
    c.saliency.layer, c.saliency.point = int(zeroshot_cfg.layer), zeroshot_cfg.point
    c.postprocess.box_mode = zeroshot_cfg.box_mode
    c.dpfem.seed, c.dpfem.num_epochs = int(demo_cfg.seed), int(zeroshot_cfg.dpfem_epochs)
    c.dpfem.checkpoint.every_steps = 10**6
    c.dpfem.data.num_threads, c.dpfem.data.prefetch = 1, 4
    c.dpfem.train_data.start = int(zeroshot_cfg.n_train) + int(zeroshot_cfg.n_test)
    c.dpfem.train_data.n = int(zeroshot_cfg.n_dpfem)
    if sam_checkpoint is not None:
        c.segmenter.name, c.segmenter.checkpoint = "sam", str(sam_checkpoint)
    else:
        c.segmenter.name = zeroshot_cfg.segmenter
    c.figures = False  # the report draws its own overlays
    return c


def read_records(workdir: pathlib.Path, samples: list[dict]) -> list[dict]:
    """The `cases.jsonl` records of a finished `segment_dataset` run, in the order of `samples`."""
    by_case = {r["case"]: r for r in read_jsonl(workdir / "cases.jsonl")}
    return [by_case[s["id"]] for s in samples]


def read_maps(workdir: pathlib.Path, samples: list[dict], structure: str) -> list[dict]:
    """Per sample of a finished run: `mask` (bool) and `saliency` (the DPFEM-refined map, the
    raw one when DPFEM is off) at the CLIP resolution."""
    refined_dir = workdir / "refined" if (workdir / "refined").is_dir() else workdir / "saliency"
    names = [f"{file_id(s['id'])}_{slug(structure)}" for s in samples]
    return [
        {
            "mask": np.asarray(Image.open(workdir / "masks" / f"{n}.png")) > 0,
            "saliency": np.load(refined_dir / f"{n}.npy"),
        }
        for n in names
    ]


def pointing_game(maps: np.ndarray, gts: list[np.ndarray]) -> float:
    """Fraction of maps whose argmax lies inside the ground truth (`zeroshot_outputs.peak`)."""
    from mzs_jax.pipeline.zeroshot_outputs import peak

    hits = [g[peak(m)] for m, g in zip(maps, gts, strict=True)]
    return float(np.mean(hits))


def write_masks(folder: pathlib.Path, samples, masks) -> pathlib.Path:
    """`<id>.png` (0/1) and the mask as its own soft map `<id>_prob.npy`: a baseline has no
    soft map, so its AUC is that of the hard mask used as the score."""
    folder.mkdir(parents=True, exist_ok=True)
    for s, m in zip(samples, masks, strict=True):
        Image.fromarray(np.asarray(m, np.uint8)).save(folder / f"{s['id']}.png")
        np.save(folder / f"{s['id']}_prob.npy", np.asarray(m, np.float32))
    return folder


def zero_shot(demo_cfg, demo_dir: pathlib.Path, clip_dir, tok, train_s, test_s, sam_checkpoint):
    """Stage 2 as `mzs segment` runs it (`segment_dataset`): on the test split (DPFEM trained on
    its own phantoms), then on the train split reusing that DPFEM (the pseudo-masks); baselines
    and the pointing game on the test split. Workdirs `demo_dir/zeroshot/{test,train}` (each
    with its `config.json`). Returns everything the report needs, per-case rows included."""
    from mzs_jax.pipeline.segmenters import make_segmenter
    from mzs_jax.pipeline.zeroshot import segment_dataset

    zeroshot_cfg = demo_cfg.zeroshot
    test_dir, train_dir = demo_dir / "zeroshot" / "test", demo_dir / "zeroshot" / "train"
    test_cfg = stage2_config(demo_cfg, clip_dir, tok, "test", sam_checkpoint)
    test = segment_dataset(test_cfg, test_dir)
    train_cfg = stage2_config(demo_cfg, clip_dir, tok, "train", sam_checkpoint)
    train_cfg.dpfem.reuse = str(test_dir)
    train = segment_dataset(train_cfg, train_dir)
    records = read_records(test_dir, test_s)
    segmenter = make_segmenter(test_cfg.segmenter)
    rows, points = _scored_rows(demo_cfg, demo_dir, test_s, records, segmenter)
    overlays = test_s[: int(zeroshot_cfg.n_overlays)]
    maps = read_maps(test_dir, overlays, zeroshot_cfg.structure)
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
        folder = write_masks(zdir / name.replace(" ", "_"), test_s, masks)
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
    prompts = {"target": zeroshot_cfg.prompt}
    if zeroshot_cfg.control_prompt:
        prompts["control"] = zeroshot_cfg.control_prompt
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
        pointing[key] = pointing_game(maps, gts)
    for method in (m for m in METHODS if m != zeroshot_cfg.saliency):  # the others, same cases
        other = ml_collections.ConfigDict(cfg.to_dict())
        other.saliency.method = method
        maps = compute_saliency(
            model, model_cfg, images, text["target"], other, demo_dir / "zeroshot"
        )
        pointing[f"raw {method} argmax"] = pointing_game(maps, gts)
    return pointing | {
        "DPFEM-refined argmax": summary["refined_hit"],
        "random body point": float(
            np.mean([g[y, x] for (y, x), g in zip(points, gts, strict=True)])
        ),
        "image centre": float(np.mean([g[h // 2, w // 2] for g in gts])),
    }
