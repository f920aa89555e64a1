"""Round trip per real format: phantom written -> loader -> the generated arrays (Must show),
plus the resampling / write-back geometry test and split sizes."""

import nibabel as nib
import numpy as np
import pytest

from mzs_jax.data import phantom, phantom_formats
from mzs_jax.data.acdc import AcdcSlices
from mzs_jax.data.captions import RocoCaptions, clean_caption
from mzs_jax.data.covidqu import CovidQuEx
from mzs_jax.data.sources import shard_for_process
from mzs_jax.data.synapse import SynapseSlices
from mzs_jax.data.volumes import resample, resampled_shape, to_isotropic, write_prediction, zscore


def test_roco_round_trip_returns_generated_images_captions_metadata(tmp_path):
    samples = phantom.generate_captions(12, seed=2, size=40)
    phantom_formats.write_roco(tmp_path, samples)
    src = RocoCaptions(tmp_path, "all")
    assert len(src) == 12 and src.skipped == [] and src.dropped_short == 0
    by_id = {src[i]["id"]: src[i] for i in range(len(src))}
    for i, s in enumerate(samples):
        item = by_id[f"ROCO_PH_{i:05d}"]
        expected = phantom_formats.to_uint8(s["image"]).astype(np.float32) / 255
        assert item["image"].shape == (40, 40, 3)
        np.testing.assert_array_equal(item["image"][..., 0], expected)
        assert item["caption"] == clean_caption(s["caption"])
        assert item["metadata"] == s["metadata"]


def test_roco_split_is_85_15_disjoint_and_fixed_by_seed(tmp_path):
    phantom_formats.write_roco(tmp_path, phantom.generate_captions(40, seed=0, size=32))
    train, val = RocoCaptions(tmp_path, "train"), RocoCaptions(tmp_path, "val")
    ids = lambda s: {r.id for r in s._records}
    assert (len(train), len(val)) == (34, 6) and not ids(train) & ids(val)
    assert ids(RocoCaptions(tmp_path, "val")) == ids(val)
    assert ids(RocoCaptions(tmp_path, "val", seed=1)) != ids(val)


def test_acdc_round_trip_native_grid_and_1mm_grid(tmp_path):
    made = phantom_formats.write_acdc(
        tmp_path, 3, seed=1, size=40, n_slices=4, spacing=(1.5, 1.5, 10.0)
    )
    native = AcdcSlices(tmp_path, "all", target_spacing=None, phases=("ED",))
    iso = AcdcSlices(tmp_path, "all", phases=("ED",))
    assert len(native) == 3 * 4 and len(iso) == 3 * 40
    for k, m in enumerate(made):
        image, mask = m["ED"]
        stored = np.round(image * phantom_formats.ACDC_INTENSITY_SCALE).astype(np.float32)
        vol_img, vol_lab = native.volume(k)
        np.testing.assert_allclose(vol_img, zscore(stored), atol=1e-5)
        np.testing.assert_array_equal(vol_lab, mask)
        iso_img, iso_lab = iso.volume(k)
        assert iso_lab.shape == (60, 60, 40)
        np.testing.assert_array_equal(iso_lab, to_isotropic(mask, (1.5, 1.5, 10.0), order=0))
        np.testing.assert_allclose(
            iso_img, zscore(to_isotropic(stored, (1.5, 1.5, 10.0), order=1)), atol=1e-4
        )
    item = iso[5]
    assert item["image"].shape == (60, 60, 1) and item["mask"].dtype == np.int32
    assert item["id"] == "patient001_ED_z005" and set(np.unique(item["mask"])) <= {0, 1, 2, 3}


def test_acdc_patient_split_is_80_20_at_patient_level(tmp_path):
    phantom_formats.write_acdc(tmp_path, 10, seed=0, size=32, n_slices=2)
    tr = AcdcSlices(tmp_path, "train", target_spacing=None)
    va = AcdcSlices(tmp_path, "val", target_spacing=None)
    pt = lambda s: {v.patient for v in s.volumes}
    assert len(pt(tr)) == 8 and len(pt(va)) == 2 and not pt(tr) & pt(va)


def test_resampling_to_1mm_keeps_extent_and_prediction_goes_back_to_original_grid(tmp_path):
    spacing = (1.5, 1.5, 10.0)
    made = phantom_formats.write_acdc(tmp_path, 1, seed=4, size=40, n_slices=5, spacing=spacing)
    src = AcdcSlices(tmp_path, "all", phases=("ES",))
    image, label = src.volume(0)
    assert image.shape == (60, 60, 50)  # 40 * 1.5 mm = 60 mm; 5 * 10 mm = 50 mm
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1) < 1e-3
    extent_in = np.array([40, 40, 5]) * np.array(spacing)
    assert np.allclose(np.array(image.shape) * 1.0, extent_in)
    # a "prediction" on the 1 mm grid is written back onto the original grid and affine
    ref = nib.load(src.volumes[0].image)
    out = src.write_prediction(0, label, tmp_path / "pred.nii.gz")
    back = nib.load(out)
    assert back.shape == ref.shape == (40, 40, 5)
    np.testing.assert_allclose(back.affine, ref.affine)
    np.testing.assert_allclose(back.header.get_zooms(), spacing)
    np.testing.assert_array_equal(np.asarray(back.dataobj), made[0]["ES"][1])


def test_resample_linear_preserves_mean_of_a_smooth_volume():
    x = np.linspace(0, 1, 20)[:, None, None] * np.ones((20, 10, 4))
    out = resample(x, resampled_shape(x.shape, (1.5, 1.0, 10.0)), order=1)
    assert out.shape == (30, 10, 40) and abs(out.mean() - x.mean()) < 1e-3


def test_write_prediction_rejects_prediction_of_wrong_rank(tmp_path):
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)), ref)
    with pytest.raises(ValueError):
        write_prediction(np.zeros((4, 4), np.int16), ref, tmp_path / "p.nii.gz")


def test_synapse_round_trip_train_npz_and_test_h5(tmp_path):
    made = phantom_formats.write_synapse(tmp_path, 5, seed=3, size=32, n_slices=3)
    train, test = SynapseSlices(tmp_path, "train"), SynapseSlices(tmp_path, "test")
    assert phantom_formats.synapse_split_counts(30) == (18, 12)
    assert train.cases == ["case0001", "case0002", "case0003"] and len(train) == 9
    assert test.cases == ["case0004", "case0005"] and len(test) == 6
    for m in made:
        src = train if m["split"] == "train" else test
        items = [src[i] for i in range(len(src)) if src[i]["case"] == m["case"]]
        for it in items:
            np.testing.assert_array_equal(it["image"][..., 0], m["image"][it["slice"]])
            np.testing.assert_array_equal(it["mask"], m["label"][it["slice"]])
    assert set(np.unique(np.concatenate([m["label"].ravel() for m in made]))) <= set(range(9))


def test_covidqu_round_trip_images_lung_and_infection_masks(tmp_path):
    samples = phantom.generate_xray(20, seed=0, size=32)
    index = phantom_formats.write_covidqu(tmp_path, samples, seed=0)
    for split in ("Train", "Val", "Test"):
        lung = CovidQuEx(tmp_path, split)
        inf = CovidQuEx(tmp_path, split, task="infection")
        expected = {f"{r['class']}/{r['name'][:-4]}": r for r in index if r["split"] == split}
        assert len(lung) == len(inf) == len(expected)
        for i in range(len(lung)):
            a, b = lung[i], inf[i]
            r = expected[a["id"]]
            np.testing.assert_array_equal(a["image"][..., 0], r["image"] / np.float32(255))
            np.testing.assert_array_equal(a["mask"], r["lung"])
            np.testing.assert_array_equal(b["mask"], r["infection"])
            np.testing.assert_array_equal(b["lung_mask"], r["lung"])
            assert a["label"] == r["class"]


def test_covidqu_official_split_sizes_enforced_when_full(tmp_path, monkeypatch):
    from mzs_jax.data import covidqu

    index = phantom_formats.write_covidqu(tmp_path, phantom.generate_xray(10, 0, 32), seed=0)
    counts = {s: sum(r["split"] == s for r in index) for s in ("Train", "Val", "Test")}
    monkeypatch.setitem(covidqu.OFFICIAL_SPLIT_SIZES, "lung", counts)
    assert CovidQuEx(tmp_path, "Train").is_full
    wrong = {"Train": counts["Train"] - 1, "Val": counts["Val"] + 1, "Test": counts["Test"]}
    monkeypatch.setitem(covidqu.OFFICIAL_SPLIT_SIZES, "lung", wrong)
    with pytest.raises(ValueError, match="official"):
        CovidQuEx(tmp_path, "Train")


def test_shard_for_process_covers_source_on_single_process(tmp_path):
    phantom_formats.write_roco(tmp_path, phantom.generate_captions(6, seed=0, size=32))
    src = RocoCaptions(tmp_path, "all")
    ds = shard_for_process(src)
    assert len(ds) == len(src) and ds[3]["id"] == src[3]["id"]
