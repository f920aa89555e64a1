"""Volume geometry (DESIGN §4): NIfTI reading with file-named errors, resampling to isotropic
spacing with the physical extent kept, z-scoring, and writing predictions back in the original
grid and affine.
"""

from __future__ import annotations

import pathlib

import nibabel as nib
import numpy as np
from scipy import ndimage

from mzs_jax.data.sources import FILE_ERRORS, bad, require_file


def nifti_header(path: str | pathlib.Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(shape, voxel spacing in mm) from the header only (cheap; the data is not read)."""
    path = require_file(path)
    try:
        img = nib.load(str(path))
        return tuple(int(s) for s in img.shape), tuple(float(z) for z in img.header.get_zooms())
    except FILE_ERRORS as e:
        raise bad(path, f"unreadable NIfTI header ({type(e).__name__}: {e})") from e


def load_nifti(path: str | pathlib.Path, dtype=np.float32) -> tuple[np.ndarray, np.ndarray, tuple]:
    """`(array, affine (4, 4), spacing)`; a missing/truncated/corrupt file raises naming it."""
    path = require_file(path)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=dtype)
        return data, img.affine.copy(), tuple(float(z) for z in img.header.get_zooms()[:3])
    except FILE_ERRORS as e:
        raise bad(path, f"unreadable or truncated NIfTI ({type(e).__name__}: {e})") from e


def resampled_shape(shape, spacing, target: float = 1.0) -> tuple[int, ...]:
    """Grid size that keeps the physical extent `shape * spacing` at `target` mm spacing."""
    return tuple(max(1, int(round(n * s / target))) for n, s in zip(shape, spacing, strict=True))


def resample(volume: np.ndarray, new_shape, *, order: int) -> np.ndarray:
    """Resample `volume` onto `new_shape` over the same physical extent (voxel edges aligned,
    `grid_mode`): `order=1` linear for images, `order=0` nearest for label maps."""
    volume = np.asarray(volume)
    if tuple(new_shape) == volume.shape:
        return volume.copy()
    zoom = [n / o for n, o in zip(new_shape, volume.shape, strict=True)]
    out = ndimage.zoom(
        volume.astype(np.float32) if order else volume,
        zoom,
        order=order,
        grid_mode=True,
        mode="nearest",
        prefilter=False,
    )
    if out.shape != tuple(new_shape):  # guard against rounding in scipy's shape computation
        raise ValueError(f"resample produced {out.shape}, expected {tuple(new_shape)}")
    return out


def to_isotropic(volume: np.ndarray, spacing, target: float = 1.0, *, order: int) -> np.ndarray:
    """Resample `volume` with voxel `spacing` (mm) to `target` mm isotropic."""
    return resample(volume, resampled_shape(volume.shape, spacing, target), order=order)


def zscore(volume: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Zero mean, unit variance (float32) over the whole volume."""
    volume = np.asarray(volume, np.float32)
    return (volume - volume.mean()) / max(float(volume.std()), eps)


def write_prediction(
    prediction: np.ndarray, reference: str | pathlib.Path, out_path: str | pathlib.Path
) -> pathlib.Path:
    """Write a label map predicted on the resampled grid back in the geometry of the NIfTI
    `reference`: nearest-neighbour resampling to its shape, its affine and header kept."""
    ref = nib.load(str(reference))
    ref_shape = tuple(int(s) for s in ref.shape[:3])
    labels = resample(np.asarray(prediction).astype(np.int16), ref_shape, order=0)
    header = ref.header.copy()
    header.set_data_dtype(np.uint8 if labels.min() >= 0 and labels.max() < 256 else np.int16)
    out = nib.Nifti1Image(labels.astype(header.get_data_dtype()), ref.affine, header)
    out.set_qform(ref.affine, code=int(ref.header["qform_code"]) or 1)
    out.set_sform(ref.affine, code=int(ref.header["sform_code"]) or 1)
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(out_path))
    return out_path
