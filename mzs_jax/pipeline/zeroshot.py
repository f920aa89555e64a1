"""`mzs segment`: stage 2 over a dataset — text prompt → saliency → DPFEM → CRF → box → mask.

Paper §"Zero-shot segmentation guided by DPFEM-enhanced textual cues". Writes masks (PNG), overlay
figures, per-case Dice/IoU (evaluate's CSV format) and localisation figures; resumable.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from mzs_jax.data import transforms
from mzs_jax.pipeline import dpfem_train, m2ib, postprocess, saliency, segmenters
from mzs_jax.pipeline.zeroshot_data import load_cases, write_volumes
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
    rgb = []
    for im in images:
        im = np.asarray(im, np.float32)
        im = np.repeat(im[..., :1], 3, -1) if im.ndim == 3 and im.shape[-1] == 1 else im
        im = np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im
        rgb.append(transforms.resize_image(im, size))
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


# ----------------------------------------------------------------------------- outputs


def token_cells(gt: np.ndarray, grid: int) -> np.ndarray:
    """Bool `(grid, grid)`: which cells of the image tower's token grid touch the mask `gt`."""
    h, w = gt.shape
    cy, cx = np.arange(h) * grid // h, np.arange(w) * grid // w
    cells = np.zeros((grid, grid), bool)
    np.logical_or.at(cells, (cy[:, None].repeat(w, 1), cx[None, :].repeat(h, 0)), gt)
    return cells


def peak(sal: np.ndarray) -> tuple[int, int]:
    """Pixel `(row, col)` of the argmax of a map `(H, W)` (the pointing game's point)."""
    iy, ix = np.unravel_index(int(np.argmax(sal)), sal.shape)
    return int(iy), int(ix)


def peak_cell(sal: np.ndarray, grid: int) -> tuple[int, int]:
    """Token-grid cell `(row, col)` of the argmax of a map `(H, W)` (cells as `token_cells`)."""
    iy, ix = peak(sal)
    return iy * grid // sal.shape[0], ix * grid // sal.shape[1]


def localisation(
    sal: np.ndarray,
    refined: postprocess.Refined,
    gt: np.ndarray,
    grid: int | None = None,
    others: Sequence[np.ndarray] = (),
) -> dict:
    """Pointing game and box IoU of one map against a GT mask (all `(H, W)`).

    `hit`: the saliency argmax lies in the GT; `random_hit`: the chance a uniform random point
    does (GT area fraction); with `grid` (the CLIP's token grid side), `cell_hit`: the argmax's
    token cell touches the GT, and `random_cell`: the fraction of cells that do (the pointing game
    at the resolution the model sees; a tolerance as in Zhang et al.'s pointing game);
    `box_iou_raw`: tightest box of min–max saliency > 0.5 (no CRF, no closing) vs the GT box;
    `box_iou`: the pipeline's box vs the GT box (0 when either is empty).
    `others`: the other prompts' maps of the same image (the control): `other_hit` /
    `other_cell` is how often their argmax lands in this GT; text-driven localisation needs
    `hit` / `cell_hit` well above it, not only above chance.
    """
    if not gt.any():
        return {}
    gt_box = postprocess.tightest_box(gt)
    raw_box = postprocess.tightest_box(postprocess.minmax(sal) > 0.5)

    def biou(b):
        return postprocess.box_iou(b[0], gt_box[0]) if len(b) and len(gt_box) else 0.0

    out = {
        "hit": float(gt[peak(sal)]),
        "random_hit": float(gt.mean()),
        "box_iou_raw": biou(raw_box),
        "box_iou": biou(refined.boxes),
    }
    if len(others):
        out["other_hit"] = float(np.mean([gt[peak(o)] for o in others]))
    if grid:
        cells = token_cells(gt, grid)
        out.update(cell_hit=float(cells[peak_cell(sal, grid)]), random_cell=float(cells.mean()))
        if len(others):
            out["other_cell"] = float(np.mean([cells[peak_cell(o, grid)] for o in others]))
    return out


def save_png(mask: np.ndarray, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mask, np.uint8) * 255).save(path)


def save_figure(path, image, sal, refined_sal, refined, mask, title: str) -> None:
    """Overlay figure: image | saliency | refined saliency + box | mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    img = np.asarray(image)[..., 0] if np.asarray(image).ndim == 3 else image
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
    panels = [(img, "image"), (sal, "saliency"), (refined_sal, "refined + box"), (mask, "mask")]
    for ax, (arr, name) in zip(axes, panels, strict=True):
        ax.imshow(img, cmap="gray")
        if name != "image":
            ax.imshow(arr, cmap="jet" if name != "mask" else "Reds", alpha=0.5)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    for x0, y0, x1, y1 in refined.boxes:
        axes[2].add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5
            )
        )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------- the stage


def segment_dataset(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Run stage 2 over `load_cases(cfg)`; returns summary numbers (also in summary.json)."""
    from mzs_jax.pipeline import evaluate

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cases, volumes = load_cases(cfg)
    model, tok, model_cfg = load_clip(cfg)
    text = encode_prompts(model, tok, dict(cfg.prompts))
    size = int(model_cfg.vision.image_size)
    items = [(c, name) for c in cases for name in cfg.prompts]
    sal_dir = workdir / "saliency"
    sal_dir.mkdir(exist_ok=True)
    todo = [
        (c, n) for c, n in items if not (sal_dir / f"{_file_id(c['id'])}_{_slug(n)}.npy").exists()
    ]
    t0 = time.perf_counter()
    progress = Progress(len(todo), "saliency", unit="map")
    bs = int(cfg.saliency.batch_size)
    for i in range(0, len(todo), bs):
        chunk = todo[i : i + bs]
        maps = compute_saliency(
            model,
            model_cfg,
            [c["image"] for c, _ in chunk],
            np.stack([text[n] for _, n in chunk]),
            cfg,
            workdir,
        )
        for (c, n), m in zip(chunk, maps, strict=True):
            np.save(sal_dir / f"{_file_id(c['id'])}_{_slug(n)}.npy", m.astype(np.float32))
        progress.update(len(chunk))
    sal_s = (time.perf_counter() - t0) / max(1, len(todo))

    sal = {(c["id"], n): np.load(sal_dir / f"{_file_id(c['id'])}_{_slug(n)}.npy") for c, n in items}
    rgb = {c["id"]: clip_inputs([c["image"]], size)[0][0] for c in cases}
    refined_sal = _dpfem(cfg, workdir, items, sal, rgb)

    # The segmented images beside their pseudo-masks, so `mzs train-weak` can read this workdir
    # as its training set (images/<id>.npy + masks/<id>_<class>.png).
    (workdir / "images").mkdir(exist_ok=True)
    for c in cases:
        image_path = workdir / "images" / f"{_file_id(c['id'])}.npy"
        if not image_path.exists():
            np.save(image_path, np.asarray(c["image"], np.float32))

    seg = segmenters.make_segmenter(cfg.segmenter)
    done_path = workdir / "cases.jsonl"
    done = {(r["case"], r["class"]) for r in _read_jsonl(done_path)}
    progress = Progress(len(items) - len(done), "segment", unit="mask")
    for c, n in items:
        if (c["id"], n) in done:
            continue
        h, w = c["image"].shape[:2]
        s = postprocess.minmax(transforms.resize_image(sal[(c["id"], n)], (h, w)))
        r_s = postprocess.minmax(transforms.resize_image(refined_sal[(c["id"], n)], (h, w)))
        refined = postprocess.refine(c["image"], r_s, cfg.postprocess)
        if refined.empty:
            mask, seg_name = np.zeros((h, w), bool), "none(empty map)"
        else:
            mask = seg.segment(c["image"], refined.boxes, init_mask=refined.mask)
            seg_name = seg.name
        save_png(mask, workdir / "masks" / f"{_file_id(c['id'])}_{_slug(n)}.png")
        record = {
            "case": c["id"],
            "class": n,
            "segmenter": seg_name,
            "postprocess": refined.chain,
            "empty": refined.empty,
            "boxes": refined.boxes.tolist(),
            "note": getattr(seg, "last_note", ""),
        }
        if c["gt"] is not None:
            gt = c["gt"][n]
            m = evaluate.case_metrics(mask, gt, score=r_s)
            evaluate.write_csv(
                evaluate.make_rows(
                    {0: m},
                    method="zeroshot",
                    dataset=cfg.dataset,
                    seed=0,
                    case=c["id"],
                    class_names={0: n},
                ),
                workdir / "per_case.csv",
                append=True,
            )
            grid = size // int(model_cfg.vision.patch_size)
            others = [
                transforms.resize_image(sal[(c["id"], o)], (h, w)) for o in cfg.prompts if o != n
            ]
            record.update(
                iou=m["iou"], dice=m["dice"], **localisation(s, refined, gt, grid, others)
            )
        if cfg.figures:
            save_figure(
                workdir / "figures" / f"{_file_id(c['id'])}_{_slug(n)}.png",
                c["image"],
                s,
                r_s,
                refined,
                mask,
                f"{c['id']} · {n} · {seg_name}",
            )
        with open(done_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        progress.update(1)
    if volumes:
        write_volumes(
            cfg,
            workdir,
            volumes,
            lambda cid, n: workdir / "masks" / f"{_file_id(cid)}_{_slug(n)}.png",
        )
    summary = summarize(_read_jsonl(done_path))
    summary["saliency_s_per_map"] = sal_s
    (workdir / "summary.json").write_text(json.dumps(_nan_to_null(summary), indent=1))
    return summary


def _dpfem(cfg, workdir, items, sal, rgb) -> dict:
    """Refined saliency per item: DPFEM trained here without labels (or bypassed)."""
    if not cfg.dpfem.enabled:
        return dict(sal)
    examples = [
        {
            "image": rgb[cid],
            "saliency": postprocess.minmax(sal[(cid, n)]),
            "target": dpfem_train.crf_target(rgb[cid], sal[(cid, n)], cfg.postprocess.crf).astype(
                np.float32
            ),
        }
        for (cid, n) in sal
    ]
    dpfem_train.train_dpfem(examples, cfg.dpfem, workdir / "dpfem")
    from mzs_jax.train.checkpoint import restore_model

    model, _ = restore_model(workdir / "dpfem", kind="dpfem")
    keys = list(sal)
    out = dpfem_train.refine_saliency(
        model, np.stack([e["image"] for e in examples]), np.stack([e["saliency"] for e in examples])
    )
    return dict(zip(keys, out, strict=True))


SUMMARY_KEYS = (
    "iou",
    "dice",
    "hit",
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


def _file_id(case_id: str) -> str:
    """A case id as a flat file name: COVID-QU-Ex ids hold their class folder
    (`COVID-19/covid_10` -> `COVID-19__covid_10`)."""
    return case_id.replace("/", "__")


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name)


def _read_jsonl(path: pathlib.Path) -> list[dict]:
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
