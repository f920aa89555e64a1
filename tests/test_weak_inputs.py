"""`mzs train-weak` inputs: a mask label outside 0..num_classes-1 and an image without a mask
are one clear error naming the file / key (not a NaN loss, a wrong class or a dropped image)."""

import shutil

import numpy as np
import pytest
from PIL import Image

from mzs_jax import cli
from mzs_jax.pipeline import weak

CONFIG = "configs/weak_phantom.py"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from weak_phantom_data import write_phantom_folders

    return write_phantom_folders(tmp_path_factory.mktemp("ph"), 12, size=32)  # 12 // 8: 1 step


def _copy(folders, tmp_path):
    out = {k: tmp_path / k for k in ("images", "pseudo")}
    for k, d in out.items():
        shutil.copytree(folders[k], d)
    return out


def _train(dirs, workdir, *extra):
    return cli.main(
        [
            "train-weak",
            "--config",
            CONFIG,
            "--workdir",
            str(workdir),
            f"--config.data.images={dirs['images']}",
            f"--config.data.pseudo_masks={dirs['pseudo']}",
            "--config.data.image_size=32",
            "--config.batch_size=8",
            "--config.total_steps=2",
            "--config.data.val_fraction=0.0",
            *extra,
        ]
    )


@pytest.mark.parametrize("label,fmt", [(5, "png"), (-1, "npy")])
def test_mask_label_outside_the_classes_is_an_error_naming_the_file(
    folders, tmp_path, capsys, monkeypatch, repo_root, label, fmt
):
    monkeypatch.chdir(repo_root)
    dirs = _copy(folders, tmp_path)
    victim = sorted(dirs["pseudo"].iterdir())[0]
    mask = np.asarray(Image.open(victim)).astype(np.int16)
    mask[0, 0] = label
    victim.unlink()
    if fmt == "png":
        Image.fromarray(mask.astype(np.uint8)).save(victim)
    else:
        victim = victim.with_suffix(".npy")
        np.save(victim, mask)
    rc = _train(dirs, tmp_path / "w", "--config.data.augment.max_rotation_deg=0")
    err = capsys.readouterr().err
    assert rc == 1 and victim.name in err and f"labels [{label}] outside 0..1" in err
    assert "num_classes=2" in err and "lower" not in err


def test_an_image_without_a_mask_is_an_error_unless_skipped(
    folders, tmp_path, capsys, monkeypatch, repo_root
):
    monkeypatch.chdir(repo_root)
    dirs = _copy(folders, tmp_path)
    dropped = sorted(dirs["pseudo"].iterdir())[3]
    dropped.unlink()
    assert _train(dirs, tmp_path / "w") == 1
    err = capsys.readouterr().err
    assert "1 of 12 images have no pseudo-mask" in err and dropped.stem in err
    assert "missing_masks=skip" in err
    assert _train(dirs, tmp_path / "w2", "--config.data.missing_masks=skip") == 0
    assert "1 image(s) without a pseudo-mask left out" in capsys.readouterr().out


def test_more_pseudo_classes_than_num_classes_is_an_error(folders):
    with pytest.raises(ValueError, match="num_classes=2 .* cannot hold the 2 pseudo_classes"):
        weak.SegmentationFolder(
            folders["images"],
            folders["pseudo"],
            size=32,
            in_channels=1,
            mask_classes=("left", "right"),
            num_classes=2,
        )
