"""ACDC cardiac cine-MRI (paper §4.1): patientXXX folders with ED/ES NIfTI + `_gt` and Info.cfg;
resampled to 1 mm isotropic (linear images, nearest labels), z-scored, served as 2D slices.
"""

from __future__ import annotations

import collections
import pathlib
from dataclasses import dataclass

import numpy as np

from mzs_jax.data.sources import RecordSource, bad, check_labels, split_indices
from mzs_jax.data.volumes import (
    load_nifti,
    nifti_header,
    resampled_shape,
    to_isotropic,
    write_prediction,
    zscore,
)

ACDC_LABELS = {"background": 0, "right ventricle": 1, "myocardium": 2, "left ventricle": 3}
VAL_FRACTION = 0.2  # patient-level 80/20 split


@dataclass(frozen=True)
class AcdcVolume:
    patient: str
    phase: str  # "ED" or "ES"
    image: pathlib.Path
    label: pathlib.Path
    group: str


def read_info(path: pathlib.Path) -> dict[str, str]:
    """`Info.cfg` (`Key: value` lines) -> dict; needs ED and ES."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    info = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if key not in info or not info[key].isdigit():
            raise bad(path, f"missing or non-integer {key} frame")
    return info


def find_patients(root: pathlib.Path) -> list[pathlib.Path]:
    """`patientXXX` folders under `root` (also under `training/`, `testing/`), sorted by name."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ACDC root not found")
    found = sorted({p for p in root.rglob("patient*") if p.is_dir()}, key=lambda p: p.name)
    if not found:
        raise FileNotFoundError(f"{root}: no patientXXX folders")
    return found


def patient_volumes(folder: pathlib.Path) -> list[AcdcVolume]:
    info = read_info(folder / "Info.cfg")
    out = []
    for phase in ("ED", "ES"):
        stem = f"{folder.name}_frame{int(info[phase]):02d}"
        image, label = folder / f"{stem}.nii.gz", folder / f"{stem}_gt.nii.gz"
        out.append(AcdcVolume(folder.name, phase, image, label, info.get("Group", "")))
    return out


def load_pair(v: AcdcVolume) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Image (float32) and label (int32) volumes of `v`, checked for size and label set."""
    image, _, spacing = load_nifti(v.image)
    label, _, _ = load_nifti(v.label, dtype=np.float32)
    if image.shape != label.shape:
        raise bad(v.label, f"label shape {label.shape} != image shape {image.shape} ({v.image})")
    label = check_labels(v.label, label, ACDC_LABELS.values(), "ACDC set {0, 1, 2, 3}")
    return image, label, spacing


class AcdcSlices(RecordSource):
    """Grain source of 2D slices `{"image": (H, W, 1) f32 z-scored, "mask": (H, W) int32,
    "id", "patient", "phase", "group", "slice"}` from resampled volumes (slices along axis 2).

    `target_spacing=None` keeps the native grid. `split` in train/val/all over patients.
    """

    def __init__(
        self,
        root: str | pathlib.Path,
        split: str = "train",
        *,
        seed: int = 0,
        val_fraction: float = VAL_FRACTION,
        phases: tuple[str, ...] = ("ED", "ES"),
        target_spacing: float | None = 1.0,
        skip_bad: bool = False,
        cache: int = 4,
    ):
        super().__init__()
        self.target_spacing = target_spacing
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_size = cache
        patients = find_patients(pathlib.Path(root))
        chosen = [patients[i] for i in split_indices(len(patients), val_fraction, seed, split)]
        info_of = lambda p: str(p / "Info.cfg")
        ok_patients = self._check_items(chosen, patient_volumes, info_of, skip_bad)
        vols = [v for p in ok_patients for v in patient_volumes(p) if v.phase in phases]
        check = load_pair if skip_bad else self._check_headers
        self.volumes = self._check_items(vols, check, lambda v: str(v.image), skip_bad)
        self._records = [
            (k, z) for k, v in enumerate(self.volumes) for z in range(self.grid_shape(v)[2])
        ]

    @staticmethod
    def _check_headers(v: AcdcVolume) -> None:
        shape, _ = nifti_header(v.image)
        label_shape, _ = nifti_header(v.label)
        if shape[:3] != label_shape[:3]:
            raise bad(v.label, f"label shape {label_shape} != image shape {shape} ({v.image})")

    def grid_shape(self, v: AcdcVolume) -> tuple[int, int, int]:
        shape, spacing = nifti_header(v.image)
        if self.target_spacing is None:
            return shape[:3]
        return resampled_shape(shape[:3], spacing[:3], self.target_spacing)

    def volume(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Resampled, z-scored image and label volumes of `self.volumes[k]` (cached)."""
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        image, label, spacing = load_pair(self.volumes[k])
        if self.target_spacing is not None:
            image = to_isotropic(image, spacing, self.target_spacing, order=1)
            label = to_isotropic(label, spacing, self.target_spacing, order=0)
        self._cache[k] = (zscore(image), label.astype(np.int32))
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return self._cache[k]

    def _load(self, record: tuple[int, int]) -> dict:
        k, z = record
        image, label = self.volume(k)
        v = self.volumes[k]
        return {
            "image": image[:, :, z, None],
            "mask": label[:, :, z],
            "id": f"{v.patient}_{v.phase}_z{z:03d}",
            "patient": v.patient,
            "phase": v.phase,
            "group": v.group,
            "slice": z,
        }

    def _path(self, record: tuple[int, int]) -> str:
        return str(self.volumes[record[0]].image)

    def write_prediction(
        self, k: int, prediction: np.ndarray, out_path: str | pathlib.Path
    ) -> pathlib.Path:
        """Write a label volume predicted on this source's grid back in the original geometry
        and affine of `self.volumes[k]` (NIfTI)."""
        return write_prediction(prediction, self.volumes[k].image, out_path)
