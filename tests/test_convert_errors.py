"""Bad weights input: missing/unexpected/mis-shaped keys are named; pickles never execute."""

import pathlib
import pickle

import numpy as np
import pytest
import torch

from mzs_jax import convert
from mzs_jax.models import clip


@pytest.fixture(scope="module")
def tiny_sd():
    return convert.random_state_dict(clip.model_config("tiny"))


def test_missing_key_error_names_the_key(tiny_sd):
    sd = dict(tiny_sd)
    del sd["visual.trunk.blocks.1.attn.qkv.weight"]
    with pytest.raises(
        ValueError, match=r"missing key 'visual\.trunk\.blocks\.1\.attn\.qkv\.weight'"
    ):
        convert.from_open_clip(sd, clip.model_config("tiny"))


def test_misshaped_key_error_names_the_key_and_both_shapes(tiny_sd):
    sd = dict(tiny_sd, **{"text.proj.0.weight": np.zeros((80, 63), np.float32)})
    with pytest.raises(
        ValueError, match=r"'text\.proj\.0\.weight' has shape \(80, 63\).*\(80, 64\)"
    ):
        convert.from_open_clip(sd, clip.model_config("tiny"))


def test_unexpected_key_error_names_the_key(tiny_sd):
    sd = dict(tiny_sd, **{"visual.trunk.fc_norm.weight": np.ones(64, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected key 'visual\.trunk\.fc_norm\.weight'"):
        convert.from_open_clip(sd, clip.model_config("tiny"))


def test_layer_count_mismatch_names_the_first_missing_layer(tiny_sd):
    cfg = clip.model_config("tiny")
    cfg.text.layers = 3
    with pytest.raises(ValueError, match=r"text\.transformer\.encoder\.layer\.2\."):
        convert.from_open_clip(tiny_sd, cfg)


def test_stale_position_ids_are_accepted_and_dropped(tiny_sd):
    sd = dict(tiny_sd)
    sd["text.transformer.embeddings.position_ids"] = np.arange(64)[None]
    model = convert.from_open_clip(sd, clip.model_config("tiny"))
    assert "text.transformer.embeddings.position_ids" not in convert.to_open_clip(model)


class _WritesMarker:
    """Unpickling this would call open(marker, "w"), creating the file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_a_malicious_pickle_is_refused_and_never_executed(tmp_path, tiny_sd, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    payload = {"state_dict": {"logit_scale": torch.zeros(()), "x": _WritesMarker(marker)}}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(
        ValueError, match=r"evil\.bin: refused to load with torch\.load\(weights_only"
    ):
        convert.load_state_dict_file(path)
    assert not marker.exists()


def test_unknown_formats_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match=r"weights\.pkl: unsupported weights format '\.pkl'"):
        convert.load_state_dict_file(path)
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        convert.load_state_dict_file(tmp_path / "absent.safetensors")


def test_a_corrupt_safetensors_file_is_reported_by_name(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=r"broken\.safetensors: not a readable safetensors"):
        convert.load_state_dict_file(path)


def test_open_clip_train_checkpoints_are_unwrapped(tmp_path, tiny_sd):
    nested = {
        "epoch": 3,
        "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in tiny_sd.items()},
    }
    torch.save(nested, tmp_path / "epoch_3.pt")
    loaded = convert.load_state_dict_file(tmp_path / "epoch_3.pt")
    assert sorted(loaded) == sorted(tiny_sd)
    model = convert.from_open_clip(loaded, clip.model_config("tiny"))
    assert np.array_equal(convert.to_open_clip(model)["logit_scale"], tiny_sd["logit_scale"])


def test_save_safetensors_then_load_is_bit_exact(tmp_path, tiny_sd):
    convert.save_safetensors(tiny_sd, tmp_path / "m.safetensors")
    back = convert.load_state_dict_file(tmp_path / "m.safetensors")
    assert all(np.array_equal(back[k], v) and back[k].shape == v.shape for k, v in tiny_sd.items())
