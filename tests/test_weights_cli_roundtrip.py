"""`mzs import` / `mzs export`: open_clip accepts exports strictly; import→export is bit-exact."""

import numpy as np
import pytest
import torch

from mzs_jax import cli, convert
from mzs_jax.models import clip
from torch_bridge.clip import build_open_clip, numpy_state_dict


@pytest.fixture(scope="module")
def open_clip_tiny(tmp_path_factory):
    """A random open_clip tiny model and its weights as safetensors."""
    torch.manual_seed(5)
    model = build_open_clip(clip.model_config("tiny"))
    path = tmp_path_factory.mktemp("oc") / "tiny.safetensors"
    convert.save_safetensors(numpy_state_dict(model), path)
    return model, path


def test_import_then_export_is_bit_exact_and_open_clip_loads_it_strictly(open_clip_tiny, tmp_path):
    model, weights = open_clip_tiny
    work, out = tmp_path / "w", tmp_path / "export.safetensors"
    assert (
        cli.main(["import", "--open-clip", str(weights), "--workdir", str(work), "--model", "tiny"])
        == 0
    )
    assert cli.main(["export", "--workdir", str(work), "--out", str(out)]) == 0
    original, exported = convert.load_state_dict_file(weights), convert.load_state_dict_file(out)
    assert sorted(exported) == sorted(original)
    assert all(np.array_equal(exported[k], v) for k, v in original.items())
    reloaded = build_open_clip(clip.model_config("tiny"), weights=out)  # strict=True inside
    ids = torch.tensor([[2, 40, 41, 42, 3] + [0] * 27])
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded.encode_text(ids), model.encode_text(ids))


def test_import_accepts_a_nested_open_clip_train_checkpoint(open_clip_tiny, tmp_path):
    model, _ = open_clip_tiny
    ckpt = tmp_path / "epoch_1.pt"
    torch.save(
        {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt
    )
    work = tmp_path / "w"
    assert (
        cli.main(["import", "--open-clip", str(ckpt), "--workdir", str(work), "--model", "tiny"])
        == 0
    )
    assert (work / "model_config.json").is_file()


def test_import_refuses_a_pickle_with_code_and_writes_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": Evil()}}, evil)
    work = tmp_path / "w"
    assert (
        cli.main(["import", "--open-clip", str(evil), "--workdir", str(work), "--model", "tiny"])
        == 1
    )
    assert "evil.pt: refused to load with torch.load(weights_only=True)" in capsys.readouterr().err
    assert not marker.exists() and not work.exists()


def test_import_with_the_wrong_architecture_names_the_key_and_keeps_the_workdir(
    open_clip_tiny, tmp_path, capsys
):
    _, weights = open_clip_tiny
    work = tmp_path / "w"
    argv = ["import", "--open-clip", str(weights), "--workdir", str(work), "--model", "biomedclip"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "tiny.safetensors: missing key 'visual.trunk.blocks.2.norm1.weight'" in err
    assert not work.exists()


def test_import_does_not_overwrite_an_existing_model_without_overwrite(
    open_clip_tiny, tmp_path, capsys
):
    _, weights = open_clip_tiny
    work = tmp_path / "w"
    argv = ["import", "--open-clip", str(weights), "--workdir", str(work), "--model", "tiny"]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 1
    assert "already holds a model" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite"]) == 0


def test_import_applies_config_overrides_to_the_named_model(tmp_path):
    config_file = tmp_path / "model.py"
    config_file.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    return ml_collections.ConfigDict({'model': {'text': {'vocab_size': 1024}}})\n"
    )
    cfg = clip.model_config("tiny")
    cfg.text.vocab_size = 512
    sd = convert.random_state_dict(cfg)
    weights = tmp_path / "w.safetensors"
    convert.save_safetensors(sd, weights)
    argv = ["import", "--open-clip", str(weights), "--workdir", str(tmp_path / "w"),
            "--model", "tiny", "--config", str(config_file),
            "--config.model.text.vocab_size=512"]  # fmt: skip
    assert cli.main(argv) == 0
