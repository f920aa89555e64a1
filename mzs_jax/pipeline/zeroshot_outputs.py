"""`mzs segment` outputs: the pointing game and box IoU of one map, mask PNGs, overlay figures.

The pointing game (`peak`, `localisation`) is the one `mzs demo` and the benchmarks score too.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mzs_jax.pipeline import postprocess


def token_cells(gt: np.ndarray, grid: int) -> np.ndarray:
    """Bool `(grid, grid)`: which cells of the image tower's token grid touch the mask `gt`."""
    h, w = gt.shape
    cy, cx = np.arange(h) * grid // h, np.arange(w) * grid // w
    cells = np.zeros((grid, grid), bool)
    np.logical_or.at(cells, (cy[:, None].repeat(w, 1), cx[None, :].repeat(h, 0)), gt)
    return cells


def peak(sal: np.ndarray) -> tuple[int, int]:
    """Pixel `(row, col)` of the argmax of a map `(H, W)` (the pointing game's point)."""
    iy, ix = np.unravel_index(int(np.argmax(sal)), sal.shape)
    return int(iy), int(ix)


def peak_cell(sal: np.ndarray, grid: int) -> tuple[int, int]:
    """Token-grid cell `(row, col)` of the argmax of a map `(H, W)` (cells as `token_cells`)."""
    iy, ix = peak(sal)
    return iy * grid // sal.shape[0], ix * grid // sal.shape[1]


def localisation(
    sal: np.ndarray,
    refined: postprocess.Refined,
    gt: np.ndarray,
    grid: int | None = None,
    others: Sequence[np.ndarray] = (),
) -> dict:
    """Pointing game and box IoU of one map against a GT mask (all `(H, W)`).

    `hit`: the saliency argmax lies in the GT; `random_hit`: the chance a uniform random point
    does (GT area fraction); with `grid` (the CLIP's token grid side), `cell_hit`: the argmax's
    token cell touches the GT, and `random_cell`: the fraction of cells that do (the pointing game
    at the resolution the model sees; a tolerance as in Zhang et al.'s pointing game);
    `box_iou_raw`: tightest box of min–max saliency > 0.5 (no CRF, no closing) vs the GT box;
    `box_iou`: the pipeline's box vs the GT box (0 when either is empty).
    `others`: the other prompts' maps of the same image (the control): `other_hit` /
    `other_cell` is how often their argmax lands in this GT; text-driven localisation needs
    `hit` / `cell_hit` well above it, not only above chance.
    """
    if not gt.any():
        return {}
    gt_box = postprocess.tightest_box(gt)
    raw_box = postprocess.tightest_box(postprocess.minmax(sal) > 0.5)

    def biou(b):
        return postprocess.box_iou(b[0], gt_box[0]) if len(b) and len(gt_box) else 0.0

    out = {
        "hit": float(gt[peak(sal)]),
        "random_hit": float(gt.mean()),
        "box_iou_raw": biou(raw_box),
        "box_iou": biou(refined.boxes),
    }
    if len(others):
        out["other_hit"] = float(np.mean([gt[peak(o)] for o in others]))
    if grid:
        cells = token_cells(gt, grid)
        out.update(cell_hit=float(cells[peak_cell(sal, grid)]), random_cell=float(cells.mean()))
        if len(others):
            out["other_cell"] = float(np.mean([cells[peak_cell(o, grid)] for o in others]))
    return out


def save_png(mask: np.ndarray, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mask, np.uint8) * 255).save(path)


def save_figure(path, image, sal, refined_sal, refined, mask, title: str) -> None:
    """Overlay figure: image | saliency | refined saliency + box | mask."""
    from matplotlib.patches import Rectangle

    from mzs_jax.pipeline import report

    img = np.asarray(image)[..., 0] if np.asarray(image).ndim == 3 else image
    fig, axes = report.pyplot().subplots(1, 4, figsize=(10, 2.8))
    panels = [(img, "image"), (sal, "saliency"), (refined_sal, "refined + box"), (mask, "mask")]
    for ax, (arr, name) in zip(axes, panels, strict=True):
        ax.imshow(img, cmap="gray")
        if name != "image":
            ax.imshow(arr, cmap="jet" if name != "mask" else "Reds", alpha=0.5)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    for x0, y0, x1, y1 in refined.boxes:
        axes[2].add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5
            )
        )
    fig.suptitle(title, fontsize=9)
    report.save_figure(fig, path, dpi=80)
