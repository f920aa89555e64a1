"""Stage 3 training data: images with their (pseudo-)masks, read and checked per case (labels in
range, one mask per image); every error names the file or the config key."""

from __future__ import annotations

import pathlib

import numpy as np

from mzs_jax.data.transforms import resize_image, resize_mask
from mzs_jax.pipeline.mask_files import find_cases, load_array


def load_image(path: pathlib.Path, in_channels: int) -> np.ndarray:
    """An image file as float32 `(H, W, C)` in [0, 1] (uint8 PNGs divided by 255)."""
    arr = load_array(path, labels=False)
    if path.suffix == ".png":
        arr = arr / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{path}: image shape {arr.shape} is not (H, W[, C])")
    arr = arr[..., :3]
    if arr.shape[-1] != in_channels:
        arr = arr.mean(-1, keepdims=True) if in_channels == 1 else np.repeat(arr, 3, -1)
    return arr.astype(np.float32)


def per_class_masks(masks_dir, mask_classes=()) -> dict[str, list[pathlib.Path]]:
    """`{id: [paths]}`: one label map `<id>.*` per case, or, with `mask_classes` (the slugs `mzs
    segment` writes, in label order 1, 2, ...), the binary masks `<id>_<slug>.png` of each class."""
    files = find_cases(masks_dir)
    if not mask_classes:
        return {cid: [p] for cid, p in files.items()}
    out: dict[str, list] = {}
    for label, slug in enumerate(mask_classes):
        for stem, p in files.items():
            if stem.endswith(f"_{slug}"):
                out.setdefault(stem[: -len(slug) - 1], [None] * len(mask_classes))[label] = p
    incomplete = sorted(cid for cid, ps in out.items() if None in ps)
    if incomplete or not out:
        raise FileNotFoundError(
            f"{masks_dir}: cases {incomplete[:5]} lack a mask for one of {list(mask_classes)}"
            if incomplete
            else f"{masks_dir}: no <id>_<class>.png for classes {list(mask_classes)}"
        )
    return out


def read_label_map(paths: list[pathlib.Path]) -> np.ndarray:
    """One label map, or per-class binary masks stacked into labels 1..K (later classes win)."""
    if len(paths) == 1:
        return load_array(paths[0], labels=True)
    out = None
    for label, p in enumerate(paths, start=1):
        m = load_array(p, labels=True) > 0
        out = np.zeros(m.shape, np.int32) if out is None else out
        if m.shape != out.shape:
            raise ValueError(f"{p}: mask shape {m.shape} differs from {out.shape}")
        out[m] = label
    return out


class SegmentationFolder:
    """grain random-access source over `images/<id>.*` with label maps `masks/<id>.*` (the
    pseudo-masks written by `mzs segment`, or ground truth). Yields `{"image": (S, S, C) f32,
    "mask": (S, S) int32}` resized to `size`; `ids` selects and orders the cases."""

    def __init__(
        self,
        images_dir,
        masks_dir,
        *,
        size: int,
        in_channels: int,
        ids=None,
        mask_classes=(),
        num_classes: int | None = None,
    ):
        self.images = find_cases(images_dir)
        self.mask_classes = tuple(mask_classes)
        self.num_classes = None if num_classes is None else int(num_classes)
        if self.num_classes is not None and len(self.mask_classes) >= self.num_classes:
            raise ValueError(
                f"config.data.num_classes={self.num_classes} (background included) cannot hold "
                f"the {len(self.mask_classes)} pseudo_classes {list(self.mask_classes)}"
            )
        self.masks = per_class_masks(masks_dir, self.mask_classes)
        self.ids = sorted(self.masks) if ids is None else list(ids)
        missing = [i for i in self.ids if i not in self.images or i not in self.masks]
        if missing:
            raise FileNotFoundError(
                f"{images_dir} / {masks_dir}: no image or mask for cases {missing[:5]}"
            )
        self.size, self.in_channels = int(size), int(in_channels)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        cid = self.ids[index]
        image = load_image(self.images[cid], self.in_channels)
        mask = read_label_map(self.masks[cid])
        where = " + ".join(str(p) for p in self.masks[cid])
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{where}: mask {mask.shape} vs image {image.shape[:2]}")
        if self.num_classes is not None:
            check_label_range(mask, self.num_classes, where)
        return {
            "image": resize_image(image, self.size).reshape(self.size, self.size, -1),
            "mask": resize_mask(mask, self.size).astype(np.int32),
        }


def check_label_range(mask: np.ndarray, num_classes: int, where) -> None:
    """Labels must be 0..num_classes-1: a label outside would be a NaN loss or a wrong class."""
    bad = sorted(v for v in np.unique(mask).tolist() if not 0 <= v < num_classes)
    if bad:
        raise ValueError(
            f"{where}: mask labels {bad[:8]} outside 0..{num_classes - 1} "
            f"(config.data.num_classes={num_classes}, background included)"
        )


MISSING_MASKS = ("error", "skip")


def images_with_masks(images_dir, mask_ids, policy: str, what: str) -> list[str]:
    """The image ids that have a mask. An image without one is an error (`policy="error"`) or
    left out with a printed count (`"skip"`); a mask without an image is always an error."""
    if policy not in MISSING_MASKS:
        raise ValueError(f"config.data.missing_masks={policy!r}: expected error | skip")
    images = set(find_cases(images_dir))
    no_mask = sorted(images - set(mask_ids))
    no_image = sorted(set(mask_ids) - images)
    if no_image:
        raise FileNotFoundError(f"{images_dir}: no image for the {what} of cases {no_image[:5]}")
    if no_mask and policy == "error":
        raise FileNotFoundError(
            f"{images_dir}: {len(no_mask)} of {len(images)} images have no {what} "
            f"({no_mask[:5]}); pass --config.data.missing_masks=skip to train without them"
        )
    if no_mask:
        print(
            f"[train-weak] {len(no_mask)} image(s) without a {what} left out (missing_masks=skip)"
        )
    return sorted(images & set(mask_ids))


def split_ids(ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic held-out split: (train, val)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"config.data.val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(val_fraction * len(ids)))
    val = sorted(ids[i] for i in order[:n_val])
    return sorted(set(ids) - set(val)), val
