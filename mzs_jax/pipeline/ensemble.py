"""Stage 3 checkpoint ensembles (MedCLIP-SAMv2's snapshot averaging): the last N per-epoch
snapshots of a `mzs train-weak` run, their mean soft map and per-pixel variance (uncertainty).
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mzs_jax.models import resunet
from mzs_jax.train import checkpoint as ckpt

SNAPSHOT_DIR = "ensemble"  # WORKDIR/ensemble/{model_config.json, ckpt/<epoch>}
VARIANCE_DIR = "variance"  # OUT/variance/<id>.png|.nii.gz (+ <id>.npy): beside, not among, masks
PNG_VARIANCE_SCALE = 4.0  # a probability's variance is ≤ 0.25: PNG = 255·min(1, 4·variance)


def snapshot(workdir, model, model_config, epoch: int, keep: int) -> None:
    """Save the model variables as snapshot `epoch` in `workdir/ensemble`, keeping the last
    `keep` (a plain keep-last-N Orbax manager, separate from the training checkpoints)."""
    import jax

    directory = pathlib.Path(workdir) / SNAPSHOT_DIR
    if jax.process_index() == 0:
        ckpt.write_model_config(directory, model_config)
    with ckpt.make_manager(directory, max_to_keep=int(keep), async_save=False) as manager:
        if int(epoch) in manager.all_steps():  # re-run after a resume, or a last partial epoch
            manager.delete(int(epoch))
        manager.save(
            int(epoch),
            args=ocp.args.Composite(model=ocp.args.StandardSave(ckpt.flatten(nnx.state(model)))),
            force=True,
        )
        manager.wait_until_finished()


def snapshot_steps(workdir, folder: str = SNAPSHOT_DIR) -> list[int]:
    """Saved snapshot epochs, oldest first (`folder=""`: the training checkpoints' steps)."""
    d = pathlib.Path(workdir) / folder / ckpt.CKPT_DIR
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def load_members(workdir, n: int) -> tuple[list[resunet.ResUNet], list[int], int]:
    """The last `n` snapshots of `workdir` as ResUNets, their epochs and the model's input size."""
    steps = snapshot_steps(workdir)
    if n < 1:
        raise ValueError(f"--ensemble must be ≥ 1, got {n}")
    if len(steps) < n:
        raise FileNotFoundError(
            f"{pathlib.Path(workdir) / SNAPSHOT_DIR}: --ensemble {n} needs {n} snapshots, found "
            f"{len(steps)} (epochs {steps}); train with config.ensemble.keep ≥ {n}"
        )
    members, size = [], None
    for step in steps[-n:]:
        model, cfg = ckpt.restore_model(pathlib.Path(workdir) / SNAPSHOT_DIR, step=step)
        if not isinstance(model, resunet.ResUNet):
            raise ValueError(f"{workdir}/{SNAPSHOT_DIR}: holds a {type(model).__name__}")
        members.append(model)
        size = int(cfg.image_size)
    return members, steps[-n:], size


def mean_and_variance(member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population variance over axis 0 (members), computed in float64 (identical
    members give exactly zero variance), returned as float32."""
    p = np.asarray(member_probs, np.float64)
    mean = p.mean(axis=0)
    return mean.astype(np.float32), ((p - mean) ** 2).mean(axis=0).astype(np.float32)


def foreground_variance(var: np.ndarray) -> np.ndarray:
    """The scalar uncertainty map of per-class variances `(C, ...)`: summed over the
    foreground classes 1..C-1 (the foreground probability's variance for a binary task)."""
    return np.asarray(var)[1:].sum(axis=0)


def variance_png(var_map: np.ndarray) -> np.ndarray:
    """uint8 image of a variance map: 255·min(1, 4·variance)."""
    return np.round(255 * np.clip(PNG_VARIANCE_SCALE * var_map, 0, 1)).astype(np.uint8)


def predict_folder(workdir, images_dir, out_dir, n: int) -> list[pathlib.Path]:
    """`mzs train-weak --predict IMAGES --ensemble N`: per image, the label map of the mean soft
    map `<id>.png`, the mean `<id>_prob.npy` `(C, H, W)`, the per-class variance
    `variance/<id>.npy` `(C, H, W)` and its foreground sum as `variance/<id>.png`; plus
    `uncertainty.csv` (per-case mean / max variance) and the figure `uncertainty.png`."""
    from PIL import Image

    from mzs_jax.pipeline.evaluate import find_cases
    from mzs_jax.pipeline.weak_data import load_image
    from mzs_jax.pipeline.weak_inference import predict_image

    members, epochs, size = load_members(workdir, n)
    in_channels = int(ckpt.read_model_config(pathlib.Path(workdir) / SNAPSHOT_DIR).in_channels)
    out_dir = pathlib.Path(out_dir)
    (out_dir / VARIANCE_DIR).mkdir(parents=True, exist_ok=True)
    written, summary, shown = [], [], []
    for cid, path in find_cases(images_dir).items():
        image = load_image(path, in_channels)
        mean, var = mean_and_variance(np.stack([predict_image(m, image, size) for m in members]))
        fg_var = foreground_variance(var)
        Image.fromarray(mean.argmax(0).astype(np.uint8)).save(out_dir / f"{cid}.png")
        np.save(out_dir / f"{cid}_prob.npy", mean)
        np.save(out_dir / VARIANCE_DIR / f"{cid}.npy", var)
        Image.fromarray(variance_png(fg_var)).save(out_dir / VARIANCE_DIR / f"{cid}.png")
        summary.append((cid, float(fg_var.mean()), float(fg_var.max())))
        shown.append((cid, image[..., 0], 1.0 - mean[0], fg_var))
        written.append(out_dir / f"{cid}.png")
    write_summary(out_dir / "uncertainty.csv", summary, epochs)
    uncertainty_figure(out_dir / "uncertainty.png", shown, epochs)
    return written


def acdc_volumes(members, size: int, source, out_dir, gt_dir=None):
    """Per volume of `data.acdc.AcdcSlices` `source` (resampled, z-scored grid), from the mean of
    the `members`' slice-wise class probabilities: the label volume `<name>.nii.gz` in the
    original geometry and `<name>_prob.npy` `(C, H, W, Z)` float16 on the original grid (each
    member resampled to it linearly first); with `gt_dir`, the ground truth copied there under
    the same name. Yields `(name, label path, original NIfTI, mean, variance)` per volume."""
    import shutil

    import nibabel as nib

    from mzs_jax.data.volumes import resample
    from mzs_jax.pipeline.weak_inference import predict_slices

    out_dir = pathlib.Path(out_dir)
    for k, v in enumerate(source.volumes):
        image, _ = source.volume(k)  # (H, W, Z) on the resampled grid
        grid = [predict_slices(m, np.moveaxis(image, -1, 0), size)[1] for m in members]
        labels = mean_and_variance(np.stack(grid))[0].argmax(0)  # (Z, H, W)
        name = pathlib.Path(v.image).name.removesuffix(".gz").removesuffix(".nii")
        path = source.write_prediction(k, np.moveaxis(labels, 0, -1), out_dir / f"{name}.nii.gz")
        original = nib.load(str(v.image))
        shape = tuple(int(d) for d in original.shape[:3])
        on_original = [[resample(np.moveaxis(p, 0, -1), shape, order=1) for p in g] for g in grid]
        mean, var = mean_and_variance(np.asarray(on_original))
        np.save(out_dir / f"{name}_prob.npy", mean.astype(np.float16))
        if gt_dir is not None:
            pathlib.Path(gt_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(v.label, pathlib.Path(gt_dir) / f"{name}.nii.gz")
        yield name, path, original, mean, var


def predict_acdc(workdir, source, out_dir, n: int, gt_dir=None) -> list[pathlib.Path]:
    """`mzs train-weak --predict-acdc ROOT --ensemble N`: `acdc_volumes` of the last N snapshots,
    and `variance/<name>.nii.gz`: the foreground variance, float32, in the original geometry."""
    import nibabel as nib

    members, epochs, size = load_members(workdir, n)
    out_dir = pathlib.Path(out_dir)
    (out_dir / VARIANCE_DIR).mkdir(parents=True, exist_ok=True)
    written, summary, shown = [], [], []
    for name, path, original, mean, var in acdc_volumes(members, size, source, out_dir, gt_dir):
        written.append(path)
        fg_var = foreground_variance(var)
        header = original.header.copy()
        header.set_data_dtype(np.float32)
        nib.save(
            nib.Nifti1Image(fg_var.astype(np.float32), original.affine, header),
            out_dir / VARIANCE_DIR / f"{name}.nii.gz",
        )
        summary.append((name, float(fg_var.mean()), float(fg_var.max())))
        z = original.shape[2] // 2  # the middle slice of each volume in the figure
        slice_ = np.asarray(original.dataobj, np.float32)[..., z]
        shown.append((name, slice_, 1.0 - mean[0][..., z], fg_var[..., z]))
    write_summary(out_dir / "uncertainty.csv", summary, epochs)
    uncertainty_figure(out_dir / "uncertainty.png", shown, epochs)
    return written


def write_summary(path, rows, epochs) -> None:
    """`case, mean_variance, max_variance, members` per case."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "mean_variance", "max_variance", "members"])
        members = " ".join(str(e) for e in epochs)
        for cid, mean, peak in rows:
            w.writerow([cid, f"{mean:.6g}", f"{peak:.6g}", members])


def uncertainty_figure(path, shown, epochs, max_rows: int = 6) -> pathlib.Path:
    """Image | mean foreground probability | variance, for the `max_rows` most uncertain cases."""
    from mzs_jax.pipeline.report import pyplot

    plt = pyplot()

    shown = sorted(shown, key=lambda s: -float(s[3].mean()))[:max_rows]
    fig, axes = plt.subplots(len(shown), 3, figsize=(7.5, 2.5 * len(shown)), squeeze=False)
    vmax = max(1e-6, max(float(s[3].max()) for s in shown))
    for ax, (cid, image, fg, var) in zip(axes, shown, strict=True):
        ax[0].imshow(image, cmap="gray")
        ax[1].imshow(fg, cmap="magma", vmin=0, vmax=1)
        im = ax[2].imshow(var, cmap="viridis", vmin=0, vmax=vmax)
        for a, title in zip(ax, (cid, "mean foreground p", "variance"), strict=True):
            a.set_title(title, fontsize=8)
            a.axis("off")
    fig.colorbar(im, ax=axes[:, 2].tolist(), shrink=0.8)
    fig.suptitle(f"{len(epochs)}-snapshot ensemble (epochs {epochs[0]}–{epochs[-1]})", fontsize=9)
    path = pathlib.Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
