"""Stage 3 on 3D data: slice-wise ResUNet predictions restacked into NIfTI volumes in the original
geometry, then scored volume-wise by `mzs evaluate` (paper: ACDC/Synapse evaluated per volume)."""

import nibabel as nib
import numpy as np
from flax import nnx

from mzs_jax import cli
from mzs_jax.data.phantom_formats import write_acdc, write_synapse
from mzs_jax.models import resunet
from mzs_jax.pipeline import evaluate
from mzs_jax.train.checkpoint import save_model


def _predict(tmp_path, num_classes: int, *flags: str):
    """A random tiny ResUNet workdir, then `mzs train-weak` with `flags` → (PRED, GT) folders."""
    cfg = resunet.model_config("tiny", num_classes=num_classes, image_size=32)
    save_model(tmp_path / "w", resunet.ResUNet(cfg, rngs=nnx.Rngs(0)), cfg)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    argv = ["train-weak", "--workdir", str(tmp_path / "w"), *flags]
    assert cli.main([*argv, "--out", str(pred), "--gt-out", str(gt)]) == 0
    return pred, gt


def test_acdc_volumes_are_predicted_in_original_geometry_and_scored_volume_wise(tmp_path):
    root = tmp_path / "acdc"
    write_acdc(root, 2, size=32, n_slices=4)
    pred, gt = _predict(tmp_path, 4, "--predict-acdc", str(root), "--split", "all")
    files = sorted(pred.glob("*.nii.gz"))
    assert len(files) == 4  # 2 patients x (ED, ES)
    for f in files:
        p, g = nib.load(str(f)), nib.load(str(gt / f.name))
        assert p.shape == g.shape
        np.testing.assert_allclose(p.affine, g.affine)
        soft = np.load(f.with_name(f.name.removesuffix(".nii.gz") + "_prob.npy"))
        assert soft.shape == (4, *g.shape) and soft.dtype == np.float16
        np.testing.assert_allclose(soft.astype(np.float32).sum(0), 1.0, atol=1e-2)
        # The soft maps and the labels agree where the argmax is clear.
        clear = np.sort(soft, 0)[-1] - np.sort(soft, 0)[-2] > 0.2
        assert (soft.argmax(0) == np.asarray(p.dataobj))[clear].mean() > 0.95
    rows = evaluate.evaluate_dirs(pred, gt, method="resunet", dataset="acdc", classes=[1, 2, 3])
    assert len(rows) == 4 * 3  # one row per volume and class: volume-wise
    assert any(np.isfinite(r["auc"]) for r in rows)  # soft maps found and scored
    assert {r["case"] for r in rows} == {f.name.removesuffix(".nii.gz") for f in files}


def test_synapse_test_volumes_are_predicted_and_scored_volume_wise(tmp_path):
    root = tmp_path / "synapse"
    write_synapse(root, 5, size=32, n_slices=4)
    pred, gt = _predict(tmp_path, 9, "--predict-synapse", str(root), "--soft-maps")
    files = sorted(f for f in pred.glob("*.npy") if not f.name.endswith("_prob.npy"))
    assert files and all(np.load(f).shape == np.load(gt / f.name).shape for f in files)
    for f in files:
        soft = np.load(f.with_name(f.stem + "_prob.npy"))
        assert soft.shape == (9, *np.load(f).shape) and soft.dtype == np.float16
    rows = evaluate.evaluate_dirs(
        pred, gt, method="resunet", dataset="synapse", classes=list(range(1, 9))
    )
    assert len(rows) == len(files) * 8
    assert any(np.isfinite(r["auc"]) for r in rows)
