"""The TFDS caption builder writes ArrayRecord files that grain reads back without TensorFlow."""

import importlib.util

import numpy as np
import pytest

from mzs_jax.data import phantom, phantom_formats
from mzs_jax.data.captions import RocoCaptions

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_datasets") is None,
    reason="tensorflow-datasets not installed",
)


def test_tfds_builder_round_trips_phantom_captions_through_grain(tmp_path):
    import grain
    import tensorflow_datasets as tfds

    from mzs_jax.data.tfds_captions import build_caption_tfds

    phantom_formats.write_roco(tmp_path / "roco", phantom.generate_captions(20, 0, 32))
    builder = build_caption_tfds(tmp_path / "roco", tmp_path / "tfds")
    assert list((tmp_path / "tfds").rglob("*.array_record*"))
    src = tfds.data_source(
        builder.name,
        split="train",
        data_dir=str(tmp_path / "tfds"),
        builder_kwargs={"source_dir": tmp_path / "roco"},
    )
    ref = RocoCaptions(tmp_path / "roco", "train")
    assert len(src) == len(ref) == 17
    ds = grain.MapDataset.source(src)
    got = {ds[i]["id"].decode(): ds[i] for i in range(len(ds))}
    for i in range(len(ref)):
        item = ref[i]
        ex = got[item["id"]]
        assert ex["caption"].decode() == item["caption"]
        np.testing.assert_array_equal(ex["image"], np.round(item["image"] * 255).astype(np.uint8))
        assert ex["modality"].decode() == item["metadata"]["modality"]
