"""`phantom-hard:N`: blocks of all 64 attribute combinations, captions that name the attributes,
images that show them, and a split by whole blocks."""

import numpy as np
import pytest
from scipy import ndimage

from mzs_jax.data import phantom_hard as ph
from mzs_jax.data.phantom import XRAY_LABELS
from mzs_jax.train.clip_task import caption_source


@pytest.fixture(scope="module")
def block():
    return ph.generate_hard(64, seed=3)


def test_a_block_holds_every_combination_once_and_no_duplicate_caption(block):
    assert sorted(s["combo"] for s in block) == list(range(64))
    bodies = [s["caption"].split(" showing ", 1)[1] for s in block]
    assert len(set(bodies)) == 64
    # every pair has its 6 one-attribute neighbours in the block: 64 * 6 / 2 pairs
    assert ph.one_attribute_pairs(block) == 192
    assert all(s["block"] == 0 for s in block)


def test_sample_i_does_not_depend_on_n(block):
    more = ph.generate_hard(70, seed=3)
    for a, b in zip(block, more[:64], strict=True):
        assert a["caption"] == b["caption"]
        np.testing.assert_array_equal(a["image"], b["image"])
    assert more[64]["block"] == 1


def test_captions_name_the_attributes(block):
    for s in block:
        a, c = s["attributes"], s["caption"]
        assert f"in the {a['side']} {a['zone']} lung zone" in c
        assert ("a single" in c) == (a["count"] == "one") and ("two " in c) == (a["count"] == "two")
        assert (" small " in c) == (a["size"] == "small")
        assert ("consolidation" in c) == (a["finding"] == "consolidation")
        assert ("ground-glass" in c) == (a["finding"] == "ground-glass opacity")
        assert ("enlarged cardiac silhouette" in c) == (a["heart"] == "enlarged")


def _lesion_stats(s):
    lesion = s["mask"] == XRAY_LABELS["opacity"]
    ys, xs = np.nonzero(lesion)
    lung = s["mask"] == XRAY_LABELS[f"{s['attributes']['side']} lung"]
    return {
        "image_left": xs.mean() < s["mask"].shape[1] / 2,
        "area": lesion.sum(),
        "components": ndimage.label(lesion)[1],
        "delta": s["image"][..., 0][lesion].mean() - s["image"][..., 0][lung].mean(),
        "heart": (s["mask"] == XRAY_LABELS["heart"]).sum(),
    }


def test_images_show_the_attributes(block):
    st = [(_lesion_stats(s), s["attributes"]) for s in block]
    assert all(s["area"] > 0 for s, _ in st)
    # patient right = image left (radiological view)
    assert all(s["image_left"] == (a["side"] == "right") for s, a in st)

    def mean(key, attr, value):
        return np.mean([s[key] for s, a in st if a[attr] == value])

    assert mean("area", "size", "large") > 2.5 * mean("area", "size", "small")
    assert mean("heart", "heart", "enlarged") > 1.4 * mean("heart", "heart", "normal")
    assert mean("delta", "finding", "consolidation") > 1.5 * mean(
        "delta", "finding", "ground-glass opacity"
    )
    two = [s["components"] for s, a in st if a["count"] == "two"]
    one = [s["components"] for s, a in st if a["count"] == "one"]
    assert np.mean(np.array(two) >= 2) > 0.9 and np.mean(np.array(one) == 1) > 0.9


def test_caption_source_splits_by_whole_blocks():
    train = caption_source("phantom-hard:640", None, "train", seed=1, val_fraction=0.2)
    val = caption_source("phantom-hard:640", None, "val", seed=1, val_fraction=0.2)
    assert len(train) == 512 and len(val) == 128
    assert not {s["block"] for s in train} & {s["block"] for s in val}
    for b in {s["block"] for s in val}:
        assert sorted(s["combo"] for s in val if s["block"] == b) == list(range(64))
    with pytest.raises(ValueError, match="phantom-hard:N"):
        caption_source("phantom-hard:x", None, "train")
