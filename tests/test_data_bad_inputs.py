"""Bad input: one bad file among good ones stops the default run naming it, `skip_bad` finishes
and lists it; corrupt PNG, truncated NIfTI, unknown labels, size mismatch, empty caption."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mzs_jax.data import phantom, phantom_formats
from mzs_jax.data.acdc import AcdcSlices
from mzs_jax.data.captions import MedPixCaptions, RocoCaptions, clean_caption
from mzs_jax.data.covidqu import CovidQuEx
from mzs_jax.data.synapse import SynapseSlices


def _iterate(src):
    return [src[i] for i in range(len(src))]


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_nifti_among_good_ones_default_errors_skip_bad_lists_it(tmp_path):
    phantom_formats.write_acdc(tmp_path, 3, seed=0, size=32, n_slices=3)
    victim = tmp_path / "patient002" / "patient002_frame01.nii.gz"
    _truncate(victim)
    src = AcdcSlices(tmp_path, "all", target_spacing=None)
    with pytest.raises(ValueError, match="patient002_frame01.nii.gz"):
        _iterate(src)
    ok = AcdcSlices(tmp_path, "all", target_spacing=None, skip_bad=True)
    assert [p for p, _ in ok.skipped] == [str(victim)]
    assert len(_iterate(ok)) == 5 * 3  # 3 patients x 2 phases - 1 bad volume, 3 slices each
    assert "patient002_frame01.nii.gz" in ok.skipped_report()


def test_corrupt_png_among_good_ones_in_covidqu_and_roco(tmp_path):
    index = phantom_formats.write_covidqu(tmp_path / "cq", phantom.generate_xray(12, 0, 32), 0)
    r = next(r for r in index if r["split"] == "Train")
    victim = tmp_path / "cq/Lung Segmentation Data/Train" / r["class"] / "images" / r["name"]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match=r["name"]):
        _iterate(CovidQuEx(tmp_path / "cq", "Train"))
    ok = CovidQuEx(tmp_path / "cq", "Train", skip_bad=True)
    assert [p for p, _ in ok.skipped] == [str(victim)] and len(_iterate(ok)) == len(ok)

    phantom_formats.write_roco(tmp_path / "roco", phantom.generate_captions(8, 0, 32))
    bad_png = tmp_path / "roco/radiology/images/ROCO_PH_00003.png"
    _truncate(bad_png, 0.3)
    with pytest.raises(ValueError, match="ROCO_PH_00003.png"):
        _iterate(RocoCaptions(tmp_path / "roco", "all"))
    ok = RocoCaptions(tmp_path / "roco", "all", skip_bad=True)
    assert len(ok) == 7 and "ROCO_PH_00003.png" in ok.skipped_report()


def test_acdc_label_outside_known_set_and_size_mismatch_name_the_file(tmp_path):
    phantom_formats.write_acdc(tmp_path, 2, seed=0, size=32, n_slices=2)
    gt = tmp_path / "patient001" / "patient001_frame01_gt.nii.gz"
    img = nib.load(gt)
    lab = np.asarray(img.dataobj).copy()
    lab[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(lab, img.affine, img.header), gt)
    with pytest.raises(ValueError, match=r"patient001_frame01_gt.nii.gz.*\[7\] outside"):
        _iterate(AcdcSlices(tmp_path, "all", target_spacing=None))
    nib.save(nib.Nifti1Image(lab[:30], img.affine, img.header), gt)
    with pytest.raises(ValueError, match="patient001_frame01_gt.nii.gz.*shape"):
        AcdcSlices(tmp_path, "all", target_spacing=None)


def test_acdc_missing_info_cfg_names_it(tmp_path):
    phantom_formats.write_acdc(tmp_path, 2, seed=0, size=32, n_slices=2)
    (tmp_path / "patient002" / "Info.cfg").unlink()
    with pytest.raises(FileNotFoundError, match="patient002/Info.cfg"):
        AcdcSlices(tmp_path, "all")
    ok = AcdcSlices(tmp_path, "all", target_spacing=None, skip_bad=True)
    assert len(ok.volumes) == 2 and "Info.cfg" in ok.skipped[0][0]


def test_covidqu_mask_size_mismatch_and_non_binary_mask(tmp_path):
    index = phantom_formats.write_covidqu(tmp_path, phantom.generate_xray(6, 0, 32), 0)
    r = index[0]
    mdir = tmp_path / "Lung Segmentation Data" / r["split"] / r["class"] / "lung masks"
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(mdir / r["name"])
    with pytest.raises(ValueError, match=f"{r['name']}.*mask size"):
        _iterate(CovidQuEx(tmp_path, r["split"]))
    Image.fromarray(np.full((32, 32), 3, np.uint8)).save(mdir / r["name"])
    with pytest.raises(ValueError, match="outside the binary set"):
        _iterate(CovidQuEx(tmp_path, r["split"]))


def test_synapse_bad_label_wrong_keys_and_case_split(tmp_path):
    phantom_formats.write_synapse(tmp_path, 3, seed=0, size=32, n_slices=2)
    victim = tmp_path / "train_npz" / "case0001_slice001.npz"
    np.savez(victim, image=np.zeros((32, 32), np.float32), label=np.full((32, 32), 13.0))
    with pytest.raises(ValueError, match=r"case0001_slice001.npz.*\[13\] outside"):
        _iterate(SynapseSlices(tmp_path, "train"))
    ok = SynapseSlices(tmp_path, "train", skip_bad=True)
    assert [p for p, _ in ok.skipped] == [str(victim)] and len(ok) == 3
    np.savez(victim, img=np.zeros((32, 32)))
    with pytest.raises(ValueError, match="expected arrays 'image' and 'label'"):
        _iterate(SynapseSlices(tmp_path, "train"))


def test_synapse_full_set_must_be_18_12(tmp_path):
    from mzs_jax.data.synapse import check_case_split

    check_case_split(18, 12, tmp_path)
    check_case_split(3, 2, tmp_path)  # a subset is fine
    with pytest.raises(ValueError, match="18/12"):
        check_case_split(20, 10, tmp_path)


def test_caption_cleaning_rules():
    assert (
        clean_caption("  CT  scan\t<b>showing</b> a mass ★ (3 cm)…  ")
        == "CT scan b showing /b a mass (3 cm)"
    )
    assert clean_caption("«»©®™") == ""


def test_empty_caption_errors_naming_row_and_short_captions_are_dropped(tmp_path):
    folder = tmp_path / "train" / "radiology"
    (folder / "images").mkdir(parents=True)
    rows = {
        "R1": "A long enough caption about a chest CT.",
        "R2": "",
        "R3": "Too short ###",
        "R4": "Axial MRI showing a liver lesion.",
    }
    for rid in rows:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "images" / f"{rid}.jpg")
    (folder / "captions.txt").write_text("".join(f"{k}\t {v}\n" for k, v in rows.items()))
    with pytest.raises(ValueError, match=r"captions.txt:2: empty caption"):
        RocoCaptions(tmp_path, "all")
    src = RocoCaptions(tmp_path, "all", skip_bad=True)
    assert sorted(r.id for r in src._records) == ["R1", "R4"]
    assert src.dropped_short == 1 and src.skipped[0][0].endswith("captions.txt:2")
    assert src[0]["image"].shape == (8, 8, 3)


def test_missing_image_names_it_and_medpix_json(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "a.png")
    items = [
        {
            "image": "a.png",
            "caption": "Sagittal T2 MRI of the lumbar spine, disc bulge.",
            "modality": "MRI",
            "age": "44",
        },
        {"image": "missing.png", "caption": "Axial CT showing a pancreatic head mass."},
    ]
    (tmp_path / "medpix.json").write_text(json.dumps(items))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        MedPixCaptions(tmp_path / "medpix.json", "all")
    src = MedPixCaptions(tmp_path / "medpix.json", "all", skip_bad=True)
    assert len(src) == 1 and src[0]["metadata"]["age"] == 44.0
    assert src[0]["metadata"]["modality"] == "MRI" and src[0]["metadata"]["sex"] is None
