"""Synapse multi-organ CT in the TransUNet preprocessing (paper §4.1): `train_npz/caseXXXX_sliceYYY
.npz` (image, label) for the 18 training cases, `test_vol_h5/caseXXXX.npy.h5` for the 12 test cases.
"""

from __future__ import annotations

import pathlib
import re

import h5py
import numpy as np

from mzs_jax.data.sources import RecordSource, bad, check_labels, require_file

# The 8 organs of the TransUNet Synapse protocol and their label ids.
SYNAPSE_LABELS = {
    "aorta": 1,
    "gallbladder": 2,
    "left kidney": 3,
    "right kidney": 4,
    "liver": 5,
    "pancreas": 6,
    "spleen": 7,
    "stomach": 8,
}
OFFICIAL_SPLIT = (18, 12)  # train / test cases
_SLICE = re.compile(r"^(case\d+)_slice(\d+)$")


def _read_pair(path: pathlib.Path, open_file, what: str) -> tuple[np.ndarray, np.ndarray]:
    """`(image float32, label int32)` from the `image` and `label` entries of an npz/h5 file."""
    with open_file(require_file(path)) as data:
        if "image" not in data or "label" not in data:
            raise bad(path, f"expected {what} 'image' and 'label', found {sorted(data.keys())}")
        image, label = np.asarray(data["image"], np.float32), np.asarray(data["label"])
    if image.shape != label.shape:
        raise bad(path, f"image shape {image.shape} != label shape {label.shape}")
    return image, check_labels(path, label, {0, *SYNAPSE_LABELS.values()}, "Synapse set 0..8")


def load_npz_slice(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """`(image (H, W) float32, label (H, W) int32)` from a TransUNet training slice."""
    return _read_pair(path, lambda p: np.load(p, allow_pickle=False), "arrays")


def load_h5_volume(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """`(image (Z, H, W) float32, label (Z, H, W) int32)` from a TransUNet test volume."""
    return _read_pair(path, lambda p: h5py.File(p, "r"), "datasets")


def _h5_depth(path: pathlib.Path) -> int:
    with h5py.File(path, "r") as f:
        if "image" not in f:
            raise bad(path, "no 'image' dataset")
        return int(f["image"].shape[0])


def _check_slice_name(path: pathlib.Path) -> None:
    if not _SLICE.match(path.stem):
        raise bad(path, "name is not caseXXXX_sliceYYY.npz")


def check_case_split(n_train: int, n_test: int, root: pathlib.Path) -> None:
    """With all 30 cases present the split must be the official 18/12."""
    if n_train + n_test == sum(OFFICIAL_SPLIT) and (n_train, n_test) != OFFICIAL_SPLIT:
        raise bad(root, f"{n_train}/{n_test} train/test cases; the Synapse split is 18/12")


class SynapseSlices(RecordSource):
    """Grain source of 2D slices `{"image": (H, W, 1) f32 in [0, 1], "mask": (H, W) int32, "id",
    "case", "slice"}`: `split="train"` reads `train_npz`, `split="test"` the slices of the
    `test_vol_h5` volumes (whole volumes: `load_h5_volume`)."""

    def __init__(self, root: str | pathlib.Path, split: str = "train", *, skip_bad: bool = False):
        super().__init__()
        self.root = pathlib.Path(root)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        train = sorted((self.root / "train_npz").glob("*.npz"))
        test = sorted((self.root / "test_vol_h5").glob("*.npy.h5"))
        if not train and not test:
            raise FileNotFoundError(f"{self.root}: no train_npz/*.npz or test_vol_h5/*.npy.h5")
        train_cases = {_SLICE.match(p.stem).group(1) for p in train if _SLICE.match(p.stem)}
        check_case_split(len(train_cases), len(test), self.root)
        self.split = split
        if split == "train":
            check = load_npz_slice if skip_bad else _check_slice_name
            self.files = self._check_items(train, check, str, skip_bad)
            self._records = [(k, 0) for k in range(len(self.files))]
        else:
            check = load_h5_volume if skip_bad else _h5_depth
            self.files = self._check_items(test, check, str, skip_bad)
            self._records = [(k, z) for k, p in enumerate(self.files) for z in range(_h5_depth(p))]
        self._volume_cache: tuple[int, tuple] | None = None

    @property
    def cases(self) -> list[str]:
        return sorted({self._case(p) for p in self.files})

    @staticmethod
    def _case(path: pathlib.Path) -> str:
        return path.name.split("_")[0].split(".")[0]

    def _load(self, record: tuple[int, int]) -> dict:
        k, z = record
        path = self.files[k]
        if self.split == "train":
            image, label = load_npz_slice(path)
            z = int(_SLICE.match(path.stem).group(2)) if _SLICE.match(path.stem) else 0
        else:
            if self._volume_cache is None or self._volume_cache[0] != k:
                self._volume_cache = (k, load_h5_volume(path))
            image, label = self._volume_cache[1][0][z], self._volume_cache[1][1][z]
        case = self._case(path)
        return {
            "image": image[..., None],
            "mask": label,
            "id": f"{case}_slice{z:03d}",
            "case": case,
            "slice": z,
        }

    def _path(self, record: tuple[int, int]) -> str:
        return str(self.files[record[0]])
