"""TFDS builder for image-caption sets (ROCO/MedPix/phantom captions) -> ArrayRecord files that
grain reads through `tfds.data_source`; works without TensorFlow installed.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from mzs_jax.data.captions import METADATA_KEYS, CaptionSource, RocoCaptions


def _to_example(item: dict) -> dict:
    md = item["metadata"]
    return {
        "image": np.round(np.clip(item["image"], 0, 1) * 255).astype(np.uint8),
        "caption": item["caption"],
        "id": item["id"],
        **{k: "" if md.get(k) is None else str(md[k]) for k in METADATA_KEYS},
    }


class MzsCaptions(tfds.core.GeneratorBasedBuilder):
    """Caption pairs from a ROCO-layout folder (`source_dir`), cleaned and split 85/15 by
    `captions.RocoCaptions`; images as zlib-encoded uint8 tensors, metadata as strings ('' when
    missing)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "ROCO-layout captions with metadata columns."}

    def __init__(self, *, source_dir: str | pathlib.Path, image_size: int | None = None, **kwargs):
        self._source_dir = pathlib.Path(source_dir)
        self._image_size = image_size
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    # Tensor, not Image: Image encoding (PNG) needs TensorFlow, Tensor does not.
                    "image": tfds.features.Tensor(
                        shape=(None, None, 3), dtype=np.uint8, encoding="zlib"
                    ),
                    "caption": tfds.features.Text(),
                    "id": tfds.features.Text(),
                    **{k: tfds.features.Text() for k in METADATA_KEYS},
                }
            ),
            description="Medical image-caption pairs (ROCO layout), cleaned as in MedZeroSeg.",
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in ("train", "val")}

    def _generate_examples(self, split: str):
        src: CaptionSource = RocoCaptions(self._source_dir, split, image_size=self._image_size)
        for i in range(len(src)):
            item = src[i]
            yield item["id"], _to_example(item)


def build_caption_tfds(
    source_dir: str | pathlib.Path, data_dir: str | pathlib.Path, image_size: int | None = None
) -> MzsCaptions:
    """Prepare the ArrayRecord dataset under `data_dir`; returns the builder
    (`builder.as_data_source(split)` gives a grain random-access source)."""
    builder = MzsCaptions(source_dir=source_dir, image_size=image_size, data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder
