"""COVID-QU-Ex chest X-ray (paper §4.1): `Lung|Infection Segmentation Data/<Train|Val|Test>/
<COVID-19|Non-COVID|Normal>/{images, lung masks, infection masks}/*.png`, official split kept.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

from mzs_jax.data.sources import RecordSource, bad, read_png, to_unit_float

CLASSES = ("COVID-19", "Non-COVID", "Normal")
SPLITS = ("Train", "Val", "Test")
TASK_DIRS = {"lung": "Lung Segmentation Data", "infection": "Infection Segmentation Data"}
# Official image counts per split (Tahir et al. 2021, COVID-QU-Ex on Kaggle).
OFFICIAL_SPLIT_SIZES = {
    "lung": {"Train": 21715, "Val": 5417, "Test": 6788},
    "infection": {"Train": 3728, "Val": 932, "Test": 1166},
}


@dataclass(frozen=True)
class CovidRecord:
    image: pathlib.Path
    lung: pathlib.Path
    infection: pathlib.Path | None
    label: str


def task_root(root: pathlib.Path, task: str) -> pathlib.Path:
    """The folder holding Train/Val/Test for `task` (Kaggle nests the task folder twice)."""
    if task not in TASK_DIRS:
        raise ValueError(f"task must be one of {sorted(TASK_DIRS)}, got {task!r}")
    base = pathlib.Path(root) / TASK_DIRS[task]
    for cand in (base, base / TASK_DIRS[task], pathlib.Path(root)):
        if any((cand / s).is_dir() for s in SPLITS):
            return cand
    raise FileNotFoundError(f"{base}: no Train/Val/Test folders for the {task} task")


def read_mask(path: pathlib.Path, shape: tuple[int, ...]) -> np.ndarray:
    """Binary PNG mask (values 0/255 or 0/1) -> int32 {0, 1}, checked against `shape`."""
    m = read_png(path)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != tuple(shape):
        raise bad(path, f"mask size {m.shape} != image size {tuple(shape)}")
    values = set(np.unique(m).tolist())
    if not (values <= {0, 255} or values <= {0, 1}):
        raise bad(path, f"mask values {sorted(values)[:6]} outside the binary set {{0, 255}}")
    return (m > 0).astype(np.int32)


def _split_name(split: str) -> str:
    names = {s.lower(): s for s in SPLITS} | {"validation": "Val", "val": "Val"}
    if split.lower() not in names:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return names[split.lower()]


class CovidQuEx(RecordSource):
    """Grain source of `{"image": (H, W, 1) f32 in [0, 1], "mask": (H, W) int32 {0, 1}, "id",
    "label"}` (+ `"lung_mask"` for `task="infection"`, whose `mask` is the infection mask).
    When every image of the official release is present, the split sizes must match it."""

    def __init__(
        self,
        root: str | pathlib.Path,
        split: str = "Train",
        *,
        task: str = "lung",
        classes: tuple[str, ...] = CLASSES,
        skip_bad: bool = False,
    ):
        super().__init__()
        self.task, self.split = task, _split_name(split)
        base = task_root(pathlib.Path(root), task)
        counts = {s: len(list(base.glob(f"{s}/*/images/*.png"))) for s in SPLITS}
        official = OFFICIAL_SPLIT_SIZES[task]
        self.is_full = sum(counts.values()) == sum(official.values())
        if self.is_full and counts != official:
            raise bad(base, f"split sizes {counts} differ from the official {official}")
        records = []
        for cls in classes:
            folder = base / self.split / cls
            for img in sorted((folder / "images").glob("*.png")):
                inf = folder / "infection masks" / img.name if task == "infection" else None
                records.append(CovidRecord(img, folder / "lung masks" / img.name, inf, cls))
        check = self._load if skip_bad else self._check_exists
        self._records = self._check_items(records, check, lambda r: str(r.image), skip_bad)

    @staticmethod
    def _check_exists(r: CovidRecord) -> None:
        for p in (r.lung, r.infection):
            if p is not None and not p.is_file():
                raise FileNotFoundError(f"{p}: mask for {r.image} not found")

    def _load(self, r: CovidRecord) -> dict:
        image = to_unit_float(read_png(r.image))
        if image.ndim == 3:
            image = image[..., :1]  # the PNGs are grey; RGB copies keep one channel
        lung = read_mask(r.lung, image.shape[:2])
        out = {
            "image": image.reshape(*image.shape[:2], 1),
            "id": f"{r.label}/{r.image.stem}",
            "label": r.label,
        }
        if r.infection is None:
            out["mask"] = lung
        else:
            out["mask"], out["lung_mask"] = read_mask(r.infection, image.shape[:2]), lung
        return out

    def _path(self, r: CovidRecord) -> str:
        return str(r.image)
