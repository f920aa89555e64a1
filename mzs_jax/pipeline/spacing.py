"""Voxel spacing of evaluated cases (NIfTI headers or `--spacing`), for NSD and HD95 in mm."""

from __future__ import annotations

import pathlib

import numpy as np


def voxel_spacing(path: str | pathlib.Path) -> tuple[float, ...] | None:
    """Voxel size per array axis (mm) from a NIfTI header; None for PNG / .npy (no geometry)."""
    path = pathlib.Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    return tuple(float(z) for z in img.header.get_zooms()[: len(img.shape)])


def case_spacing(pred_path, gt_path, spacing=None) -> tuple[float, ...] | None:
    """Spacing of one case for NSD / HD95: `spacing` if given, else the NIfTI headers' (the ground
    truth's and the prediction's must agree), else None (1 per pixel)."""
    if spacing is not None:
        return tuple(spacing)
    sg, sp = voxel_spacing(gt_path), voxel_spacing(pred_path)
    if sg is not None and sp is not None and not np.allclose(sg, sp, rtol=1e-3):
        raise ValueError(f"voxel spacing differs: {pred_path} {sp} vs {gt_path} {sg}")
    return sg if sg is not None else sp


def parse_spacing(spec: str | None) -> tuple[float, ...] | None:
    """`"1.5,0.7,0.7"` -> (1.5, 0.7, 0.7); None or "" -> None."""
    if not spec:
        return None
    try:
        return tuple(float(v) for v in spec.split(","))
    except ValueError as e:
        raise ValueError(f"--spacing: expected comma-separated numbers, got {spec!r}") from e
