"""`mzs import` / `mzs export` faults: non-float, NaN and infinite weights are refused naming the
key; an export to a directory, under a file or onto a full disk is one line and leaves no file."""

import errno

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from mzs_jax import cli, convert
from mzs_jax.models import clip
from mzs_jax.train.checkpoint import save_model


@pytest.fixture(scope="module")
def tiny_sd():
    return convert.random_state_dict(clip.model_config("tiny"))


@pytest.fixture(scope="module")
def clip_workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("clip")
    cfg = clip.model_config("tiny")
    save_model(wd, clip.CLIP(cfg, rngs=nnx.Rngs(0)), cfg)
    return wd


def _import(path, workdir):
    return cli.main(
        ["import", "--open-clip", str(path), "--model", "tiny", "--workdir", str(workdir)]
    )


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("visual.trunk.pos_embed", "int32", r"'visual.trunk.pos_embed' has dtype int32"),
        ("text.proj.0.weight", "nan", r"'text.proj.0.weight' holds 1 non-finite"),
        ("logit_scale", "inf", r"'logit_scale' holds 1 non-finite"),
    ],
)
def test_import_refuses_non_float_and_non_finite_weights(
    tiny_sd, tmp_path, capsys, key, value, match
):
    sd = dict(tiny_sd)
    if value == "int32":
        sd[key] = np.zeros(sd[key].shape, np.int32)
    else:
        bad = np.array(sd[key])
        bad.reshape(-1)[0] = np.nan if value == "nan" else np.inf
        sd[key] = bad
    f = tmp_path / "w.safetensors"
    save_file(sd, str(f))
    assert _import(f, tmp_path / "w") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "w.safetensors" in err
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "w").exists()


def test_export_to_a_directory_is_refused_before_anything_is_written(
    clip_workdir, tmp_path, capsys
):
    target = tmp_path / "out.safetensors"
    target.mkdir()
    assert cli.main(["export", "--workdir", str(clip_workdir), "--out", str(target)]) == 1
    assert "one safetensors file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [target] and not any(target.iterdir())


def test_export_under_a_file_is_one_line(clip_workdir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "m.safetensors"
    assert cli.main(["export", "--workdir", str(clip_workdir), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "file" in err


def test_export_onto_a_full_disk_leaves_no_partial_file(
    clip_workdir, tmp_path, capsys, monkeypatch
):
    import safetensors.numpy

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)
    out = tmp_path / "m.safetensors"
    assert cli.main(["export", "--workdir", str(clip_workdir), "--out", str(out)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
