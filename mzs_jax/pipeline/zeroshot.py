"""`mzs segment`: stage 2 over a dataset — text prompt → saliency → DPFEM → CRF → box → mask.

Paper §"Zero-shot segmentation guided by DPFEM-enhanced textual cues". Writes masks (PNG), overlay
figures, per-case Dice/IoU (evaluate's CSV format) and localisation figures; resumable.
"""

from __future__ import annotations

import collections
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from mzs_jax.data import transforms
from mzs_jax.pipeline import dpfem_train, m2ib, postprocess, saliency, segmenters, zeroshot_dpfem
from mzs_jax.pipeline.zeroshot_data import load_cases, write_volumes
from mzs_jax.pipeline.zeroshot_outputs import localisation, peak, save_figure, save_png
from mzs_jax.progress import Progress

SALIENCY_METHODS = (*saliency.METHODS, "m2ib")


def default_config() -> ml_collections.ConfigDict:
    """Keys of `configs/zeroshot_*.py`."""
    c = ml_collections.ConfigDict()
    c.dataset = "xray-phantom"
    c.clip_workdir = ""  # a `mzs train-clip` / `mzs import` workdir (model_config.json + ckpt)
    c.tokenizer = ""  # "" = CLIP_WORKDIR/tokenizer
    # source: phantom (kind, n, seed, size, findings: "" = all, or comma-separated finding names
    # such as "cardiomegaly", see data.phantom.FINDINGS) | covidqu (path, split, task)
    # | acdc (path, split) | synapse (path: the test_vol_h5 volumes);
    # n > 0 limits the images (2D) or volumes (3D).
    c.data = ml_collections.ConfigDict(
        {
            "source": "phantom",
            "kind": "xray",
            "n": 32,
            "seed": 1000,
            "size": 64,
            "start": 0,
            "findings": "",
            "path": "",
            "split": "test",
            "task": "lung",
        }
    )
    # class name -> label ids in the dataset's masks (not needed for phantoms: structure names).
    c.labels = ml_collections.ConfigDict()
    # class name -> text prompt; the class name is also the phantom structure / label name.
    c.prompts = ml_collections.ConfigDict({"heart": "chest radiograph showing the heart"})
    c.saliency = ml_collections.ConfigDict(
        {
            "backend": "jax",  # jax | torch (torch_bridge.cam on the exported weights)
            "method": "gscorecam",  # gscorecam | gradcam | dense | m2ib
            "topk": 60,
            "layer": -1,
            "point": "norm1",
            "chunk": 32,
            "batch_size": 16,
            "m2ib": m2ib.default_config(),  # method "m2ib" only (pipeline/m2ib.py)
        }
    )
    c.dpfem = dpfem_train.default_config()
    # The split DPFEM trains on: each key set here overrides `data` (None keeps it), e.g.
    # `start` for phantoms or `split="train"`; never the scored cases (pipeline/zeroshot_dpfem.py).
    c.dpfem.train_data = {k: placeholder(type(v)) for k, v in c.data.items()}
    c.dpfem.reuse = ""  # a finished `mzs segment` workdir whose DPFEM to use instead of training
    c.postprocess = postprocess.default_config()
    c.segmenter = segmenters.default_config()
    c.figures = True
    return c


# ----------------------------------------------------------------------------- inputs


def load_clip(cfg: ml_collections.ConfigDict):
    """`(model, tokenizer)` from `clip_workdir` (Orbax checkpoint + tokenizer directory)."""
    from mzs_jax.data.tokenizer import load_tokenizer
    from mzs_jax.train.checkpoint import restore_model

    if not cfg.clip_workdir:
        raise ValueError(
            "clip_workdir is required: a workdir written by `mzs train-clip` or `mzs import`"
        )
    model, model_cfg = restore_model(cfg.clip_workdir, kind="clip")
    tok_path = cfg.tokenizer or str(pathlib.Path(cfg.clip_workdir) / "tokenizer")
    return model, load_tokenizer(tok_path, int(model_cfg.text.context_length)), model_cfg


def encode_prompts(model, tokenizer, prompts: dict[str, str]) -> dict[str, np.ndarray]:
    """class → L2-normalised text embedding `(E,)`."""
    for name, text in prompts.items():
        if not str(text).strip():
            raise ValueError(f"prompts.{name} is empty")
    tok = tokenizer(list(prompts.values()))
    emb = model.encode_text(jnp.asarray(tok["input_ids"]), jnp.asarray(tok["attention_mask"]))
    return dict(zip(prompts, np.asarray(emb), strict=True))


def clip_inputs(images: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1] → (RGB `(B, S, S, 3)` in [0, 1], CLIP-normalised copy)."""
    rgb = [transforms.resize_image(transforms.grey_to_rgb(np.float32(im)), size) for im in images]
    rgb = np.clip(np.stack(rgb), 0, 1)
    return rgb, transforms.clip_normalize(rgb)


def compute_saliency(model, model_cfg, images01, text, cfg, workdir) -> np.ndarray:
    """Saliency `(B, S, S)` at the CLIP resolution with the configured backend and method."""
    s = cfg.saliency
    if s.method not in SALIENCY_METHODS:
        raise ValueError(f"saliency.method must be one of {SALIENCY_METHODS}, got {s.method!r}")
    _, x = clip_inputs(images01, int(model_cfg.vision.image_size))
    if s.method == "m2ib":
        return m2ib.from_config(model, x, text, s, lambda: _torch_clip(model, model_cfg, workdir))
    kw = dict(layer=int(s.layer), point=s.point)
    if s.backend == "jax":
        out = [
            np.asarray(
                saliency.saliency(
                    model,
                    x[i : i + s.batch_size],
                    text[i : i + s.batch_size],
                    s.method,
                    topk=int(s.topk),
                    chunk=int(s.chunk),
                    **kw,
                )
            )
            for i in range(0, len(x), int(s.batch_size))
        ]
        return np.concatenate(out)
    if s.backend != "torch":
        raise ValueError(f"saliency.backend must be jax or torch, got {s.backend!r}")
    from torch_bridge import cam

    tmodel = _torch_clip(model, model_cfg, workdir)
    if s.method == "gscorecam":
        return cam.gscorecam(tmodel, x, text, int(s.topk), batch_size=int(s.chunk), **kw)
    if s.method == "gradcam":
        return cam.gradcam(tmodel, x, text, **kw)
    return cam.dense_similarity(tmodel, x, text)


def _torch_clip(model, model_cfg, workdir):
    from mzs_jax import convert
    from torch_bridge.clip import build_open_clip

    path = pathlib.Path(workdir) / "clip_open_clip.safetensors"
    if not path.exists():
        convert.save_safetensors(convert.to_open_clip(model), path)
    return build_open_clip(model_cfg, weights=path)


# ----------------------------------------------------------------------------- the stage


def segment_dataset(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Run stage 2 over `load_cases(cfg)`; returns summary numbers (also in summary.json).

    Steps: saliency per (case, prompt) → DPFEM (trained on its own split) → one record per
    (case, prompt) from `segment_case` → volumes (3D sources) → summary."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, workdir)
    cases, volumes = load_cases(cfg)
    if not cases:
        raise ValueError(f"data: no cases to segment ({cfg.data.to_dict()})")
    model, tok, model_cfg = load_clip(cfg)
    text = encode_prompts(model, tok, dict(cfg.prompts))
    size = int(model_cfg.vision.image_size)
    t0 = time.perf_counter()
    sal, n_new = saliency_step(model, model_cfg, cfg, workdir, cases, text, workdir / "saliency")
    sal_s = (time.perf_counter() - t0) / max(1, n_new)
    refined_sal = refine_step(model, model_cfg, cfg, workdir, cases, text, sal)
    write_images(workdir, cases)

    seg = segmenters.make_segmenter(cfg.segmenter)
    grid = size // int(model_cfg.vision.patch_size)
    done_path = workdir / "cases.jsonl"
    done = {(r["case"], r["class"]) for r in read_jsonl(done_path)}
    items = [(c, n) for c in cases for n in cfg.prompts if (c["id"], n) not in done]
    progress = Progress(len(items), "segment", unit="mask")
    for c, n in items:
        record = segment_case(cfg, workdir, c, n, sal, refined_sal, seg, grid)
        with open(done_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        progress.update(1)
    if volumes:
        write_volumes(
            cfg,
            workdir,
            volumes,
            lambda cid, n: workdir / "masks" / f"{file_id(cid)}_{slug(n)}.png",
        )
    summary = summarize(read_jsonl(done_path))
    summary["saliency_s_per_map"] = sal_s
    (workdir / "summary.json").write_text(json.dumps(_nan_to_null(summary), indent=1))
    return summary


def saliency_step(model, model_cfg, cfg, workdir, cases, text, folder) -> tuple[dict, int]:
    """`({(case id, class): map (S, S)}, number computed now)`: maps cached as
    `folder/<case>_<class>.npy`, so a re-run computes only the missing ones."""
    folder.mkdir(parents=True, exist_ok=True)

    def path(c, n):
        return folder / f"{file_id(c['id'])}_{slug(n)}.npy"

    items = [(c, n) for c in cases for n in cfg.prompts]
    todo = [(c, n) for c, n in items if not path(c, n).exists()]
    progress = Progress(len(todo), "saliency", unit="map")
    bs = int(cfg.saliency.batch_size)
    for i in range(0, len(todo), bs):
        chunk = todo[i : i + bs]
        images = [c["image"] for c, _ in chunk]
        texts = np.stack([text[n] for _, n in chunk])
        maps = compute_saliency(model, model_cfg, images, texts, cfg, workdir)
        for (c, n), m in zip(chunk, maps, strict=True):
            np.save(path(c, n), m.astype(np.float32))
        progress.update(len(chunk))
    return {(c["id"], n): np.load(path(c, n)) for c, n in items}, len(todo)


def clip_rgb(cases: list[dict], size: int) -> dict[str, np.ndarray]:
    """Case id → the RGB image `(S, S, 3)` in [0, 1] at the CLIP resolution (DPFEM's input)."""
    return {c["id"]: clip_inputs([c["image"]], size)[0][0] for c in cases}


def refine_step(model, model_cfg, cfg, workdir, cases, text, sal) -> dict:
    """Refined saliency per `(case, class)`: DPFEM trained without labels on `dpfem.train_data`
    (or reused from `dpfem.reuse`), never on the scored cases; `sal` itself when disabled."""
    if not cfg.dpfem.enabled:
        return dict(sal)
    size = int(model_cfg.vision.image_size)

    def train_examples(split_cfg):
        split_cases, _ = load_cases(split_cfg)
        folder = workdir / "dpfem" / "saliency"
        maps, _ = saliency_step(model, model_cfg, split_cfg, workdir, split_cases, text, folder)
        keys = [zeroshot_dpfem.case_key(split_cfg.data, c["id"]) for c in split_cases]
        return keys, zeroshot_dpfem.examples(clip_rgb(split_cases, size), maps, cfg.postprocess.crf)

    scored = [zeroshot_dpfem.case_key(cfg.data, c["id"]) for c in cases]
    dpfem = zeroshot_dpfem.trained_model(cfg, workdir, scored, train_examples)
    refined = zeroshot_dpfem.refine(dpfem, clip_rgb(cases, size), sal)
    (workdir / "refined").mkdir(exist_ok=True)
    for (cid, n), m in refined.items():
        np.save(workdir / "refined" / f"{file_id(cid)}_{slug(n)}.npy", m.astype(np.float32))
    return refined


def write_config(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """`WORKDIR/config.json`, the resolved config (`configs/replay.py` runs it again); a workdir
    with results from another config is refused rather than resumed with mixed settings."""
    path = workdir / "config.json"
    text = cfg.to_json_best_effort(indent=1, sort_keys=True)
    if path.is_file() and (workdir / "cases.jsonl").is_file() and path.read_text() != text:
        raise ValueError(
            f"{workdir} holds results of another config ({path}): use a new --workdir, or "
            f"--config configs/replay.py:{path} to resume it"
        )
    path.write_text(text)


def write_images(workdir: pathlib.Path, cases: list[dict]) -> None:
    """The segmented images beside their pseudo-masks, so `mzs train-weak` can read this workdir
    as its training set (images/<id>.npy + masks/<id>_<class>.png)."""
    (workdir / "images").mkdir(exist_ok=True)
    for c in cases:
        image_path = workdir / "images" / f"{file_id(c['id'])}.npy"
        if not image_path.exists():
            np.save(image_path, np.asarray(c["image"], np.float32))


def segment_case(cfg, workdir, case, name, sal, refined_sal, seg, grid) -> dict:
    """One (case, class): CRF → threshold → closing → box → segmenter; writes the mask, the
    per-case metrics row (with ground truth) and the figure; returns the `cases.jsonl` record."""
    from mzs_jax.pipeline import evaluate

    cid = case["id"]
    h, w = case["image"].shape[:2]
    s = postprocess.minmax(transforms.resize_image(sal[(cid, name)], (h, w)))
    r_s = postprocess.minmax(transforms.resize_image(refined_sal[(cid, name)], (h, w)))
    refined = postprocess.refine(case["image"], r_s, cfg.postprocess)
    if refined.empty:
        mask, seg_name, note = np.zeros((h, w), bool), "none(empty map)", ""
    else:
        mask = seg.segment(case["image"], refined.boxes, init_mask=refined.mask)
        seg_name, note = seg.name, getattr(seg, "last_note", "")
    save_png(mask, workdir / "masks" / f"{file_id(cid)}_{slug(name)}.png")
    record = {
        "case": cid,
        "class": name,
        "segmenter": seg_name,
        "postprocess": refined.chain,
        "empty": refined.empty,
        "boxes": refined.boxes.tolist(),
        "note": note,
    }
    if case["gt"] is not None:
        gt = case["gt"][name]
        m = evaluate.case_metrics(mask, gt, score=r_s)
        rows = evaluate.make_rows(
            {0: m}, method="zeroshot", dataset=cfg.dataset, seed=0, case=cid, class_names={0: name}
        )
        evaluate.write_csv(rows, workdir / "per_case.csv", append=True)
        others = [transforms.resize_image(sal[(cid, o)], (h, w)) for o in cfg.prompts if o != name]
        record.update(iou=m["iou"], dice=m["dice"], **localisation(s, refined, gt, grid, others))
        record["refined_hit"] = float(gt[peak(r_s)])
    if cfg.figures:
        figure = workdir / "figures" / f"{file_id(cid)}_{slug(name)}.png"
        save_figure(figure, case["image"], s, r_s, refined, mask, f"{cid} · {name} · {seg_name}")
    return record


SUMMARY_KEYS = (
    "iou",
    "dice",
    "hit",
    "refined_hit",
    "random_hit",
    "other_hit",
    "cell_hit",
    "random_cell",
    "other_cell",
    "box_iou_raw",
    "box_iou",
)


def _means(records: list[dict]) -> dict:
    out = {}
    for k in SUMMARY_KEYS:
        vals = [r[k] for r in records if k in r]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def summarize(records: list[dict]) -> dict:
    """Means over records with ground truth (IoU, Dice, pointing game vs a random point and vs the
    other prompts, box IoUs), over all prompt classes and in `per_class` (with each class's
    `n`, the records whose GT is non-empty)."""
    per_class = {}
    for name in sorted({r["class"] for r in records}):
        sel = [r for r in records if r["class"] == name]
        per_class[name] = _means(sel) | {"n": sum("hit" in r for r in sel)}
    return _means(records) | {
        "n": len(records),
        "n_empty": sum(bool(r["empty"]) for r in records),
        # The segmenter's fallbacks (GrabCut: seed mask used), counted by note.
        "n_fallback": sum(bool(r.get("note")) for r in records),
        "fallbacks": dict(collections.Counter(r["note"] for r in records if r.get("note"))),
        "segmenters": sorted({r["segmenter"] for r in records}),
        "postprocess": sorted({r.get("postprocess", "") for r in records}),
        "per_class": per_class,
    }


def _nan_to_null(x):
    """Strict JSON: NaN (a mean over no cases) is written as null."""
    if isinstance(x, dict):
        return {k: _nan_to_null(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_null(v) for v in x]
    return None if isinstance(x, float) and np.isnan(x) else x


def file_id(case_id: str) -> str:
    """A case id as a flat file name: COVID-QU-Ex ids hold their class folder
    (`COVID-19/covid_10` -> `COVID-19__covid_10`)."""
    return case_id.replace("/", "__")


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name)


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """The records of a `cases.jsonl` (none when it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def add_arguments(parser) -> None:
    parser.add_argument(
        "--clip-workdir",
        default=None,
        help="overrides config.clip_workdir (trained / imported CLIP)",
    )


def run(args) -> int:
    if args.config is None or args.workdir is None:
        raise ValueError("mzs segment needs --config configs/zeroshot_<dataset>.py and --workdir")
    cfg = args.config
    if args.clip_workdir:
        cfg = ml_collections.ConfigDict(cfg.to_dict())
        cfg.clip_workdir = args.clip_workdir
    jax.config.update("jax_default_matmul_precision", "highest")
    summary = segment_dataset(cfg, args.workdir)
    print(json.dumps(summary))
    return 0
