"""Write the procedural phantoms in the real on-disk layouts: ROCO-like captions, ACDC NIfTI
folders, Synapse (TransUNet npz/h5) and the COVID-QU-Ex PNG tree (docs/data.md)."""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Callable

import h5py
import nibabel as nib
import numpy as np
from PIL import Image

from mzs_jax.data import phantom

METADATA_KEYS = ("modality", "body_region", "age", "sex", "history")
ACDC_INTENSITY_SCALE = 1000.0  # phantom [0, 1] intensities are stored as int16 * 1000
_COVID_PREFIX = {"COVID-19": "covid", "Non-COVID": "non_COVID", "Normal": "Normal"}

Tick = Callable[[int], None] | None


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float `(H, W[, 1])` -> uint8 `(H, W)` (what a PNG stores)."""
    return np.round(
        np.clip(np.squeeze(image, -1) if image.ndim == 3 else image, 0, 1) * 255
    ).astype(np.uint8)


def write_roco(
    out: str | pathlib.Path, samples: list[dict], subset: str = "radiology", tick: Tick = None
) -> pathlib.Path:
    """ROCO-like folder: `out/<subset>/images/<id>.png` + `out/<subset>/captions.csv` with columns
    id, name, caption and the metadata columns. Returns the CSV path."""
    folder = pathlib.Path(out) / subset
    (folder / "images").mkdir(parents=True, exist_ok=True)
    csv_path = folder / "captions.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "caption", *METADATA_KEYS])
        for i, s in enumerate(samples):
            rid = f"ROCO_PH_{i:05d}"
            name = f"{rid}.png"
            Image.fromarray(to_uint8(s["image"])).save(folder / "images" / name)
            w.writerow([rid, name, s["caption"], *(s["metadata"][k] for k in METADATA_KEYS)])
            if tick:
                tick(1)
    return csv_path


def _nifti(array: np.ndarray, spacing, dtype) -> nib.Nifti1Image:
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS voxel order, RAS world
    affine[:3, 3] = [spacing[0] * array.shape[0] / 2, spacing[1] * array.shape[1] / 2, 0.0]
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.header.set_zooms(tuple(float(s) for s in spacing))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def write_acdc(
    out: str | pathlib.Path,
    n: int,
    seed: int = 0,
    size: int = 64,
    n_slices: int = 8,
    spacing=None,
    tick: Tick = None,
) -> list[dict]:
    """ACDC-like `out/patientXXX/patientXXX_frameYY.nii.gz` (+ `_gt`) and `Info.cfg` for ED and
    ES. Returns the generated volumes (for round-trip tests)."""
    out = pathlib.Path(out)
    made = []
    for i in range(n):
        vol = phantom.cardiac_volume(seed, i, size, n_slices, spacing)
        pid = f"patient{i + 1:03d}"
        pdir = out / pid
        pdir.mkdir(parents=True, exist_ok=True)
        for phase in ("ED", "ES"):
            image, mask = vol[phase]
            stem = pdir / f"{pid}_frame{vol['info'][phase]:02d}"
            nib.save(
                _nifti(np.round(image * ACDC_INTENSITY_SCALE), vol["spacing"], np.int16),
                f"{stem}.nii.gz",
            )
            nib.save(_nifti(mask, vol["spacing"], np.uint8), f"{stem}_gt.nii.gz")
        (pdir / "Info.cfg").write_text("".join(f"{k}: {v}\n" for k, v in vol["info"].items()))
        made.append({"patient": pid, **vol})
        if tick:
            tick(1)
    return made


def synapse_split_counts(n_cases: int) -> tuple[int, int]:
    """Train/test case counts in the 18/12 proportion of the TransUNet Synapse split."""
    n_train = int(round(n_cases * 18 / 30))
    return n_train, n_cases - n_train


def write_synapse(
    out: str | pathlib.Path,
    n_cases: int,
    seed: int = 0,
    size: int = 64,
    n_slices: int = 12,
    tick: Tick = None,
) -> list[dict]:
    """TransUNet layout: `train_npz/caseXXXX_sliceYYY.npz` (image in [0, 1], label) for the
    training cases, `test_vol_h5/caseXXXX.npy.h5` (image, label `(Z, H, W)`) for the test cases,
    and `lists/lists_Synapse/{train,test_vol}.txt`. The phantom liver lesion is folded into the
    liver label, as in Synapse."""
    out = pathlib.Path(out)
    for sub in ("train_npz", "test_vol_h5", "lists/lists_Synapse"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    n_train, _ = synapse_split_counts(n_cases)
    lists, made = {"train": [], "test_vol": []}, []  # list file -> its lines
    for i in range(n_cases):
        vol = phantom.ct_volume(seed, i, size, n_slices)
        case, split = f"case{i + 1:04d}", "train" if i < n_train else "test"
        image = phantom.ct_window(vol["hu"])
        label = np.where(vol["mask"] == phantom.CT_LESION_LABEL, 5, vol["mask"]).astype(np.uint8)
        if split == "train":
            for z in range(image.shape[0]):
                name = f"{case}_slice{z:03d}"
                np.savez(out / "train_npz" / f"{name}.npz", image=image[z], label=label[z])
                lists["train"].append(name)
        else:
            with h5py.File(out / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
                f.create_dataset("image", data=image)
                f.create_dataset("label", data=label)
            lists["test_vol"].append(case)
        made.append(dict(case=case, image=image, label=label, spacing=vol["spacing"], split=split))
        if tick:
            tick(1)
    for lst, lines in lists.items():
        (out / f"lists/lists_Synapse/{lst}.txt").write_text("".join(f"{n}\n" for n in lines))
    return made


def covidqu_split(index: int, seed: int) -> str:
    """Train/Val/Test in the official 64/16/20 proportion, fixed per (seed, index)."""
    u = np.random.default_rng([seed, 77, index]).random()
    return "Train" if u < 0.64 else ("Val" if u < 0.80 else "Test")


def write_covidqu(
    out: str | pathlib.Path, samples: list[dict], seed: int = 0, tick: Tick = None
) -> list[dict]:
    """COVID-QU-Ex tree: `Lung Segmentation Data/<split>/<class>/{images,lung masks}` and
    `Infection Segmentation Data/<split>/<class>/{images,lung masks,infection masks}`, PNG,
    masks 0/255. Every phantom goes to both tasks; non-COVID images get empty infection masks."""
    out = pathlib.Path(out)
    index = []
    for i, s in enumerate(samples):
        cls, split = s["covid_class"], covidqu_split(i, seed)
        name = f"{_COVID_PREFIX[cls]}_{i + 1}.png"
        lung = np.isin(s["mask"], (1, 2, 4)).astype(np.uint8) * 255  # opacities lie in the lungs
        infection = ((s["mask"] == 4) & (cls == "COVID-19")).astype(np.uint8) * 255
        for task in ("Lung Segmentation Data", "Infection Segmentation Data"):
            base = out / task / split / cls
            parts = {"images": to_uint8(s["image"]), "lung masks": lung}
            if task.startswith("Infection"):
                parts["infection masks"] = infection
            for sub, arr in parts.items():
                (base / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(base / sub / name)
        index.append(
            {
                "name": name,
                "class": cls,
                "split": split,
                "lung": lung > 0,
                "infection": infection > 0,
                "image": to_uint8(s["image"]),
            }
        )
        if tick:
            tick(1)
    return index
