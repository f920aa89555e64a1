"""Transforms (CLIP normalisation, resizing, paired augmentation) and the phantom generator."""

import numpy as np
import pytest

from mzs_jax.cli import main
from mzs_jax.data import phantom, phantom_text
from mzs_jax.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    PairedAugment,
    ToClipInput,
    affine_pair,
    clip_normalize,
    grey_to_rgb,
    resize_image,
    resize_mask,
)


def test_clip_normalize_matches_open_clip_mean_std():
    x = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
    y = clip_normalize(x)
    np.testing.assert_allclose(y * np.array(CLIP_STD) + np.array(CLIP_MEAN), x, atol=1e-6)
    assert y.dtype == np.float32


def test_grey_to_rgb_repeats_channel_and_rejects_bad_shape():
    g = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(grey_to_rgb(g), np.stack([g] * 3, -1))
    with pytest.raises(ValueError, match="grey or RGB"):
        grey_to_rgb(np.zeros((2, 3, 2)))


def test_resize_mask_keeps_label_ids_and_resize_image_keeps_range():
    mask = np.random.default_rng(0).integers(0, 9, (37, 41)).astype(np.int32)
    out = resize_mask(mask, (64, 50))
    assert out.shape == (64, 50) and set(np.unique(out)) <= set(np.unique(mask))
    img = resize_image(np.random.default_rng(1).random((37, 41, 3)), 16)
    assert img.shape == (16, 16, 3) and 0 <= img.min() and img.max() <= 1


def test_affine_pair_applies_same_geometry_to_image_and_mask():
    mask = phantom.generate_mri(1, seed=3, size=64)[0]["mask"]
    image = mask.astype(np.float32)[..., None]
    img2, mask2 = affine_pair(image, mask, angle_deg=90.0, flip=False)
    np.testing.assert_array_equal(mask2, np.rot90(mask))  # 90 degrees counter-clockwise
    img3, mask3 = affine_pair(image, mask, angle_deg=23.0, scale=1.1, flip=True)
    assert set(np.unique(mask3)) <= set(np.unique(mask))  # nearest: no new labels
    assert (np.round(img3[..., 0]) == mask3).mean() > 0.97  # image follows the mask


def test_affine_pair_rejects_size_mismatch():
    with pytest.raises(ValueError, match="size mismatch"):
        affine_pair(np.zeros((8, 8)), np.zeros((8, 9), np.int32))


def test_paired_augment_and_to_clip_input_in_grain_pipeline():
    import grain

    samples = phantom.generate_xray(4, seed=0, size=48)
    ds = grain.MapDataset.source(samples).random_map(PairedAugment(), seed=1).map(ToClipInput(32))
    a, b = ds[2], ds[2]
    np.testing.assert_array_equal(a["image"], b["image"])  # deterministic per index and seed
    assert a["image"].shape == (32, 32, 3) and a["mask"].shape == (32, 32)
    assert set(np.unique(a["mask"])) <= set(np.unique(samples[2]["mask"]))


@pytest.mark.parametrize("kind", phantom.KINDS)
def test_phantoms_are_deterministic_per_seed_and_index(kind):
    a = phantom.generate(kind, 3, seed=5, size=48)
    b = phantom.generate(kind, 5, seed=5, size=48)
    c = phantom.generate(kind, 3, seed=6, size=48)
    for x, y in zip(a, b[:3], strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        assert x["caption"] == y["caption"] and x["metadata"] == y["metadata"]
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    s = a[0]
    assert s["image"].shape == (48, 48, 1) and s["image"].dtype == np.float32
    assert s["mask"].shape == (48, 48) and 0 <= s["image"].min() and s["image"].max() <= 1
    for name in s["structures"]:
        assert phantom.structure_mask(s, name).any(), name


def test_generate_findings_keeps_the_index_order_and_ids_of_generate():
    picked = phantom.generate_findings("xray", 3, ["cardiomegaly"], seed=4, size=32)
    assert [s["finding"] for s in picked] == ["cardiomegaly"] * 3
    last = int(picked[-1]["id"].split("_")[1])
    everything = {s["id"]: s for s in phantom.generate("xray", last + 1, seed=4, size=32)}
    assert [s["id"] for s in everything.values() if s["finding"] == "cardiomegaly"] == [
        s["id"] for s in picked
    ]
    np.testing.assert_array_equal(picked[0]["image"], everything[picked[0]["id"]]["image"])
    assert "enlarged cardiac silhouette" in picked[0]["caption"]
    later = phantom.generate_findings("xray", 2, ["cardiomegaly"], seed=4, size=32, start=1)
    assert [s["id"] for s in later] == [s["id"] for s in picked[1:]]
    # `generate(findings=...)` (comma-separated, as configs give it) is the same selection
    same = phantom.generate("xray", 3, seed=4, size=32, findings=" cardiomegaly, ")
    assert [s["id"] for s in same] == [s["id"] for s in picked]
    with pytest.raises(ValueError, match="only 0 of 1"):
        phantom.generate_findings("ct", 1, ["lesion"], size=32, max_draws=0)


def test_captions_follow_content_and_some_omit_position_words():
    samples = phantom.generate_captions(300, seed=0, size=48)
    assert all(len(s["caption"]) >= 20 for s in samples)
    xr = [s for s in samples if s["metadata"]["modality"] == "X-ray"]
    for s in xr:
        has_lesion = (s["mask"] == 4).any()
        assert has_lesion == (s["finding"] in ("consolidation", "covid", "nodule"))
        assert ("nodule" in s["caption"]) == (s["finding"] == "nodule")
    ct = [s for s in samples if s["metadata"]["modality"] == "CT"]
    for s in ct:
        assert ("hypodense lesion" in s["caption"]) == (s["mask"] == phantom.CT_LESION_LABEL).any()
    positional = [
        any(w in s["caption"] for w in (" left ", " right ", " upper ", " lower "))
        for s in xr
        if s["finding"] in ("nodule", "consolidation")
    ]
    assert 0.2 < np.mean(positional) < 0.8  # about phantom_text.POSITION_PROB
    assert phantom_text.POSITION_PROB == 0.5


def test_metadata_correlates_with_finding():
    samples = phantom.generate_xray(400, seed=1, size=32)
    age = {
        f: np.mean([s["metadata"]["age"] for s in samples if s["finding"] == f])
        for f in ("normal", "cardiomegaly")
    }
    assert age["cardiomegaly"] > age["normal"] + 15
    hist = {s["metadata"]["history"] for s in samples if s["finding"] == "nodule"}
    assert all("smok" in h or "incidental" in h for h in hist)


def test_cardiac_volume_is_anisotropic_with_acdc_labels():
    v = phantom.cardiac_volume(0, 0, size=48, n_slices=6)
    img, mask = v["ED"]
    assert img.shape == mask.shape == (48, 48, 6)
    assert v["spacing"][2] > 3 * v["spacing"][0]
    assert set(np.unique(mask)) <= {0, 1, 2, 3} and (mask == 3).any()
    assert (v["ES"][1] == 3).sum() < (mask == 3).sum()  # the LV contracts at end-systole


def test_make_phantoms_cli_writes_each_format(tmp_path, capsys):
    for kind, probe in (
        ("captions", "radiology/captions.csv"),
        ("mri", "patient001/Info.cfg"),
        ("ct", "lists/lists_Synapse/train.txt"),
        ("xray", "Lung Segmentation Data"),
    ):
        assert (
            main(
                [
                    "make-phantoms",
                    "--out",
                    str(tmp_path / kind),
                    "--kind",
                    kind,
                    "--n",
                    "3",
                    "--size",
                    "32",
                    "--slices",
                    "3",
                ]
            )
            == 0
        )
        assert (tmp_path / kind / probe).exists()
    assert "wrote 3 xray phantoms" in capsys.readouterr().out
    assert main(["make-phantoms", "--out", str(tmp_path / "x"), "--kind", "xray", "--n", "0"]) == 1
