"""Tiny chest X-ray phantom folders for the stage 3 tests: images, lung GT and pseudo-masks."""

import pathlib

import numpy as np
from PIL import Image
from scipy import ndimage

from mzs_jax.data import phantom


def write_phantom_folders(root: pathlib.Path, n: int, *, seed: int = 0, size: int = 64) -> dict:
    """`root/{images,gt,pseudo}/<id>.png`; pseudo-masks are the lungs eroded by 1 px (a cheap
    imperfect label, enough to exercise training)."""
    dirs = {k: root / k for k in ("images", "gt", "pseudo")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(phantom.generate("xray", n, seed=seed, size=size)):
        lungs = np.isin(s["mask"], (1, 2))
        cid = f"xr{i:03d}"
        Image.fromarray(np.round(s["image"][..., 0] * 255).astype(np.uint8)).save(
            dirs["images"] / f"{cid}.png"
        )
        Image.fromarray(lungs.astype(np.uint8)).save(dirs["gt"] / f"{cid}.png")
        pseudo = ndimage.binary_erosion(lungs, iterations=1)
        Image.fromarray(pseudo.astype(np.uint8)).save(dirs["pseudo"] / f"{cid}.png")
    return dirs
