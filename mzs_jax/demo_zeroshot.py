"""`mzs demo` stage 2 (paper "Zero-shot segmentation"): the demo's choices as a `mzs segment`
config, run by `pipeline.zeroshot.segment_dataset` (the same code as `mzs segment`), and the
held-out phantoms the report scores it and the baselines on.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from mzs_jax.pipeline.zeroshot import file_id, read_jsonl, slug

DATASET = "xray-phantom"


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
