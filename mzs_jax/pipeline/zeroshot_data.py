"""Cases for `mzs segment` (stage 2): phantoms, COVID-QU-Ex (2D), ACDC (volumes, slice by slice,
written back as NIfTI in the original geometry) and Synapse test volumes (slice by slice, written
as `(Z, H, W)` label volumes like `mzs train-weak --predict-synapse`) through the `data` loaders."""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np
from PIL import Image

SOURCES = ("phantom", "covidqu", "acdc", "synapse")


def load_cases(cfg: ml_collections.ConfigDict) -> tuple[list[dict], dict]:
    """`(cases, volumes)`. A case: `{"id", "image" (H, W, C) in [0, 1], "gt": {class: bool (H, W)}
    | None}`; volumes: `{volume_id: {"reference": NIfTI path, "slices": [case ids in z order]}}`
    (empty for 2D sources)."""
    source = cfg.data.source
    if source == "phantom":
        return _phantom(cfg), {}
    if source == "covidqu":
        return _covidqu(cfg), {}
    if source == "acdc":
        return _acdc(cfg)
    if source == "synapse":
        return _synapse(cfg)
    raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")


def _labels(cfg, name: str) -> tuple[int, ...]:
    if name not in cfg.labels:
        raise ValueError(
            f"labels.{name}: no label ids for prompt class {name!r} (labels has "
            f"{sorted(cfg.labels)})"
        )
    ids = cfg.labels[name]
    return tuple(ids) if isinstance(ids, list | tuple) else (int(ids),)


def _phantom(cfg) -> list[dict]:
    from mzs_jax.data import phantom

    d = cfg.data
    samples = phantom.generate(
        d.kind, int(d.n), int(d.seed), int(d.size), start=int(d.start), findings=str(d.findings)
    )
    known = phantom.STRUCTURES[d.kind]
    for name in cfg.prompts:
        if name not in known:
            raise ValueError(
                f"prompts.{name}: no such structure in {d.kind} phantoms (have {known})"
            )
    cases = []
    for s in samples:  # a structure absent from an image has an empty GT mask
        gt = {
            name: phantom.structure_mask(s, name)
            if name in s["structures"]
            else np.zeros(s["mask"].shape, bool)
            for name in cfg.prompts
        }
        cases.append({"id": s["id"], "image": s["image"], "gt": gt})
    return cases


def _limit(n, cfg) -> int:
    return n if int(cfg.data.n) <= 0 else min(n, int(cfg.data.n))


def _covidqu(cfg) -> list[dict]:
    from mzs_jax.data.covidqu import CovidQuEx

    d = cfg.data
    src = CovidQuEx(d.path, d.split, task=d.task)
    cases = []
    for i in range(_limit(len(src), cfg)):
        ex = src[i]
        gt = {name: np.isin(ex["mask"], _labels(cfg, name)) for name in cfg.prompts}
        cases.append({"id": ex["id"], "image": ex["image"], "gt": gt})
    return cases


def to_unit_range(volume: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """z-scored volume → [0, 1] by clipping to its percentiles (for CLIP, CRF and figures)."""
    lo, hi = np.percentile(volume, [lo_pct, hi_pct])
    return np.clip((volume - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _acdc(cfg) -> tuple[list[dict], dict]:
    from mzs_jax.data.acdc import AcdcSlices

    d = cfg.data
    src = AcdcSlices(d.path, d.split, target_spacing=1.0)
    cases, volumes = [], {}
    for k in range(_limit(len(src.volumes), cfg)):
        v = src.volumes[k]
        image, label = src.volume(k)
        image = to_unit_range(image)
        vid = pathlib.Path(v.image).name.split(".")[0]  # e.g. patient001_frame01
        volumes[vid] = {"reference": str(v.image), "slices": [], "shape": image.shape, "axis": 2}
        for z in range(image.shape[2]):
            cid = f"{vid}_z{z:03d}"
            gt = {name: np.isin(label[:, :, z], _labels(cfg, name)) for name in cfg.prompts}
            cases.append({"id": cid, "image": image[:, :, z, None], "gt": gt})
            volumes[vid]["slices"].append(cid)
    return cases, volumes


def _synapse(cfg) -> tuple[list[dict], dict]:
    """Test volumes `test_vol_h5/<case>.npy.h5` (TransUNet preprocessing: CT clipped to
    [-125, 275] HU and scaled to [0, 1]), one case per axial slice; `split="train"`: the
    `train_npz` slices, one case each (`data.n` of them)."""
    from mzs_jax.data.synapse import SynapseSlices, load_h5_volume

    if cfg.data.split == "train":  # the train_npz slices (DPFEM's split): 2D cases, no volumes
        src = SynapseSlices(cfg.data.path, split="train")
        cases = []
        for i in range(_limit(len(src), cfg)):
            ex = src[i]
            gt = {name: np.isin(ex["mask"], _labels(cfg, name)) for name in cfg.prompts}
            cases.append({"id": ex["id"], "image": np.clip(ex["image"], 0, 1), "gt": gt})
        return cases, {}
    if cfg.data.split != "test":
        raise ValueError(f"data.split must be 'train' or 'test' for synapse: {cfg.data.split!r}")
    src = SynapseSlices(cfg.data.path, split="test")
    cases, volumes = [], {}
    for path in src.files[: _limit(len(src.files), cfg)]:
        image, label = load_h5_volume(path)
        vid = src._case(path)
        gt_volume = label.astype(np.int16)  # kept until the volumes are written (ids 0..8)
        volumes[vid] = {"slices": [], "shape": image.shape, "axis": 0, "gt": gt_volume}
        for z in range(image.shape[0]):
            cid = f"{vid}_z{z:03d}"
            gt = {name: np.isin(label[z], _labels(cfg, name)) for name in cfg.prompts}
            cases.append({"id": cid, "image": np.clip(image[z], 0, 1)[..., None], "gt": gt})
            volumes[vid]["slices"].append(cid)
    return cases, volumes


def write_volumes(cfg, workdir: pathlib.Path, volumes: dict, mask_path) -> list[pathlib.Path]:
    """Stack each volume's slice masks into a label map (label id of each prompt class). With a
    `reference` NIfTI (ACDC), write it in the geometry of the original image; otherwise (Synapse)
    save `volumes/<id>.npy` `(Z, H, W)` and the ground truth as `volumes_gt/<id>.npy`, the pair
    `mzs evaluate --pred W/volumes --gt W/volumes_gt` scores volume-wise."""
    from mzs_jax.data.volumes import write_prediction

    written = []
    for vid, v in volumes.items():
        labels = np.zeros(v["shape"], np.int16)
        for z, cid in enumerate(v["slices"]):
            plane = np.moveaxis(labels, v["axis"], 0)[z]  # a view: writes go into `labels`
            for name in cfg.prompts:
                mask = np.asarray(Image.open(mask_path(cid, name))) > 0
                plane[mask] = _labels(cfg, name)[0]
        if "reference" in v:
            out = workdir / "volumes" / f"{vid}.nii.gz"
            written.append(write_prediction(labels, v["reference"], out))
            continue
        (workdir / "volumes").mkdir(parents=True, exist_ok=True)
        (workdir / "volumes_gt").mkdir(parents=True, exist_ok=True)
        np.save(workdir / "volumes" / f"{vid}.npy", labels)
        np.save(workdir / "volumes_gt" / f"{vid}.npy", v["gt"])
        written.append(workdir / "volumes" / f"{vid}.npy")
    return written
