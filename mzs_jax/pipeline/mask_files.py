"""Mask and soft-map files for `mzs evaluate` and stage 3: PNG, NIfTI or .npy, one case per file;
every read error names the file."""

from __future__ import annotations

import pathlib
import zlib

import numpy as np
from nibabel.filebasedimages import ImageFileError

MASK_EXTS = (".png", ".nii.gz", ".nii", ".npy")
SOFT_SUFFIX = "_prob"  # `<id>_prob.npy` / `<id>_prob.nii.gz`: the soft map of case <id>


def _split_ext(path: pathlib.Path) -> tuple[str, str]:
    name = path.name
    for ext in MASK_EXTS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def load_array(path: str | pathlib.Path, *, labels: bool) -> np.ndarray:
    """A mask (`labels=True`: integer label map; 2D PNGs with values {0, 255} become {0, 1}) or a
    soft map (float) from PNG, NIfTI or .npy. Errors name the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"not found: {path}")
    _, ext = _split_ext(path)
    try:
        if ext == ".png":
            from PIL import Image

            arr = np.asarray(Image.open(path))
            if arr.ndim == 3:
                if not (arr[..., :3] == arr[..., :1]).all():
                    raise ValueError("a colour PNG is not a label map")
                arr = arr[..., 0]
            if labels and arr.max(initial=0) == 255 and np.isin(arr, (0, 255)).all():
                arr = arr // 255
        elif ext in (".nii", ".nii.gz"):
            import nibabel as nib

            arr = np.asarray(nib.load(str(path)).dataobj)
        elif ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            raise ValueError(f"unsupported extension (expected one of {MASK_EXTS})")
    except (OSError, ValueError, EOFError, zlib.error, ImageFileError) as e:
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if labels:
        if not np.allclose(arr, np.round(arr)):
            raise ValueError(f"{path}: a label map must hold integers")
        return np.round(arr).astype(np.int32)
    return arr.astype(np.float32)


def find_cases(directory: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """`{case_id: mask_path}` for every mask file in a directory (soft maps excluded)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"directory not found: {directory}")
    cases = {}
    for p in sorted(directory.iterdir()):
        stem, ext = _split_ext(p)
        if ext and not stem.endswith(SOFT_SUFFIX):
            if stem in cases:
                raise ValueError(f"{directory}: case {stem!r} has two mask files")
            cases[stem] = p
    if not cases:
        raise ValueError(f"{directory}: no mask files ({', '.join(MASK_EXTS)})")
    return cases


def soft_map_path(pred_path: pathlib.Path) -> pathlib.Path | None:
    stem, _ = _split_ext(pred_path)
    for ext in (".npy", ".nii.gz", ".nii"):
        p = pred_path.with_name(stem + SOFT_SUFFIX + ext)
        if p.is_file():
            return p
    return None
