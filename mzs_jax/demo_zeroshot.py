"""`mzs demo` stage 2 (paper "Zero-shot segmentation"): gScoreCAM saliency → DPFEM → dense CRF →
box → segmenter on held-out X-ray phantoms, and the baselines every figure is reported beside.
"""

from __future__ import annotations

import pathlib
import re

import ml_collections
import numpy as np
from PIL import Image

from mzs_jax.pipeline import postprocess

POSITION_WORDS = ("left", "right", "upper", "lower")


def make_split(dc, n: int, start: int, folder: pathlib.Path) -> list[dict]:
    """`n` phantoms of `dc.zeroshot.kind` (phantom generator, seed `data_seed`; only those with one
    of the comma-separated `findings`, when set), from the `start`-th on, written as
    `folder/images/<id>.png` (grey) and `folder/gt/<id>.png` (0/1 mask of the target)."""
    from mzs_jax.data import phantom
    from mzs_jax.data.phantom_formats import to_uint8

    z = dc.zeroshot
    samples = phantom.generate(
        z.kind,
        n,
        seed=int(z.data_seed),
        size=int(dc.image_size),
        start=start,
        findings=str(z.findings),
    )
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    for s in samples:
        if z.structure not in s["structures"]:
            raise ValueError(f"zeroshot.structure={z.structure!r} is not in phantom {s['id']}")
        s["gt"] = phantom.structure_mask(s, z.structure)
        Image.fromarray(to_uint8(s["image"])).save(folder / "images" / f"{s['id']}.png")
        Image.fromarray(s["gt"].astype(np.uint8)).save(folder / "gt" / f"{s['id']}.png")
    return samples


def clip_inputs(samples: list[dict], size: int) -> np.ndarray:
    """`(B, S, S, 3)` CLIP-normalised NHWC images (`data.transforms`)."""
    from mzs_jax.data.transforms import ToClipInput

    to_input = ToClipInput(size)
    return np.stack([to_input.map({"image": s["image"]})["image"] for s in samples])


def stage2_config(dc) -> ml_collections.ConfigDict:
    """`mzs segment` config (`pipeline.zeroshot.default_config`) with the demo's choices."""
    from mzs_jax.pipeline.zeroshot import default_config

    z = dc.zeroshot
    c = default_config()
    c.saliency.method, c.saliency.topk = z.saliency, int(z.topk)
    c.saliency.layer, c.saliency.point = int(z.layer), z.point
    c.postprocess.box_mode = z.box_mode
    return c


def prompt_embedding(model, tokenizer_dir: pathlib.Path, prompt: str) -> np.ndarray:
    """L2-normalised text embedding `(E,)` of `prompt` with the demo tokenizer and text tower."""
    from mzs_jax.data.tokenizer import load_tokenizer
    from mzs_jax.pipeline.zeroshot import encode_prompts

    tok = load_tokenizer(tokenizer_dir, int(model.text.context_length))
    return encode_prompts(model, tok, {"target": prompt})["target"]


def saliency_maps(model, model_cfg, samples, text: np.ndarray, cfg, workdir) -> np.ndarray:
    """Saliency `(B, S, S)` in [0, 1] with the configured backend/method, one prompt for all."""
    from mzs_jax.pipeline.zeroshot import compute_saliency

    images = [s["image"] for s in samples]
    return compute_saliency(
        model, model_cfg, images, np.repeat(text[None], len(images), 0), cfg, workdir
    )


def train_dpfem(samples, sal: np.ndarray, dc, workdir: pathlib.Path):
    """Annotation-free DPFEM on the training split's saliency; returns the trained model."""
    from mzs_jax.pipeline import dpfem_train
    from mzs_jax.train.checkpoint import restore_model

    cfg = dpfem_train.default_config()
    cfg.seed = int(dc.seed)
    cfg.num_epochs = int(dc.zeroshot.dpfem_epochs)
    cfg.checkpoint.every_steps = 10**6
    cfg.data.num_threads, cfg.data.prefetch = 1, 4
    crf = postprocess.default_config().crf
    examples = [
        {
            "image": s["image"].astype(np.float32),
            "saliency": m.astype(np.float32),
            "target": dpfem_train.crf_target(s["image"], m, crf).astype(np.float32),
        }
        for s, m in zip(samples, sal, strict=True)
    ]
    dpfem_train.train_dpfem(examples, cfg, workdir)
    model, _ = restore_model(workdir)
    return model


def refine_maps(model, samples, sal: np.ndarray) -> np.ndarray:
    from mzs_jax.pipeline.dpfem_train import refine_saliency

    images = np.stack([s["image"] for s in samples]).astype(np.float32)
    return refine_saliency(model, images, sal)


def chain(image: np.ndarray, prob: np.ndarray, segmenter, cfg) -> dict:
    """CRF → threshold → closing → box (`refine`) → segmenter. An empty map gives an empty
    mask and the note `no_box`."""
    r = postprocess.refine(image, prob, cfg)
    if r.empty:
        return {"box": None, "mask": np.zeros(prob.shape, bool), "crf": r.prob, "note": "no_box"}
    mask = segmenter.segment(image, r.boxes, init_mask=r.mask)
    return {
        "box": r.boxes[0],
        "mask": np.asarray(mask, bool),
        "crf": r.prob,
        "note": getattr(segmenter, "last_note", ""),
    }


def body_mask(image: np.ndarray) -> np.ndarray:
    """The largest non-air component (phantom air is ≈ 0.04): the 'whole body' region."""
    body = np.squeeze(image, -1) > 0.12 if image.ndim == 3 else image > 0.12
    boxes = postprocess.tightest_box(body, mode="largest")
    return postprocess.boxes_to_mask(boxes, body.shape) & body


def prompt_position(prompt: str) -> tuple[str | None, str | None]:
    """Patient side ('left'/'right') and zone ('upper'/'lower') named in a prompt, if any."""
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    side = next((w for w in ("left", "right") if w in words), None)
    zone = next((w for w in ("upper", "lower") if w in words), None)
    return side, zone


def prior_box(body: np.ndarray, side: str | None, zone: str | None) -> np.ndarray:
    """Quadrant/half of the body box named by the prompt (image left = patient right)."""
    x0, y0, x1, y1 = postprocess.tightest_box(body)[0]
    xm, ym = (x0 + x1) // 2, (y0 + y1) // 2
    if side == "right":
        x1 = xm
    elif side == "left":
        x0 = xm
    if zone == "upper":
        y1 = ym
    elif zone == "lower":
        y0 = ym
    return np.array([x0, y0, x1, y1], np.int64)


def baselines(samples, chain_out: list[dict], segmenter, prompt: str, seed: int) -> dict:
    """Baseline masks per case: `whole-body box` (the body box prompts the segmenter),
    `random point` (a box of the chain's size around a uniform random body pixel prompts the
    segmenter) and, when the prompt names a position, `position prior` (that quadrant's box)."""
    rng = np.random.default_rng(seed)
    side, zone = prompt_position(prompt)
    out: dict[str, list[np.ndarray]] = {"whole-body box": [], "random point": []}
    if side or zone:
        out["position prior"] = []
    points = []
    for s, c in zip(samples, chain_out, strict=True):
        img, body = s["image"], body_mask(s["image"])
        out["whole-body box"].append(segmenter.segment(img, postprocess.tightest_box(body)[0]))
        ys, xs = np.nonzero(body)
        j = int(rng.integers(len(ys)))
        points.append((int(ys[j]), int(xs[j])))
        h, w = body.shape
        bw, bh = (
            ((c["box"][2] - c["box"][0]), (c["box"][3] - c["box"][1]))
            if c["box"] is not None
            else (w // 2, h // 2)
        )
        x0, y0 = int(np.clip(xs[j] - bw // 2, 0, w - bw)), int(np.clip(ys[j] - bh // 2, 0, h - bh))
        out["random point"].append(segmenter.segment(img, np.array([x0, y0, x0 + bw, y0 + bh])))
        if "position prior" in out:
            out["position prior"].append(segmenter.segment(img, prior_box(body, side, zone)))
    return {
        "masks": {k: [np.asarray(m, bool) for m in v] for k, v in out.items()},
        "points": points,
    }


def pointing_game(maps: np.ndarray, gts: list[np.ndarray]) -> float:
    """Fraction of maps whose argmax lies inside the ground truth."""
    from mzs_jax.pipeline.zeroshot import peak

    hits = [g[peak(m)] for m, g in zip(maps, gts, strict=True)]
    return float(np.mean(hits))


def write_masks(folder: pathlib.Path, samples, masks, probs=None) -> pathlib.Path:
    """`<id>.png` (0/1) and, with `probs`, the soft map `<id>_prob.npy` (for AUC)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (s, m) in enumerate(zip(samples, masks, strict=True)):
        Image.fromarray(np.asarray(m, np.uint8)).save(folder / f"{s['id']}.png")
        if probs is not None:
            np.save(folder / f"{s['id']}_prob.npy", np.asarray(probs[i], np.float32))
    return folder
