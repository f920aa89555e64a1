"""Smoke tests on the real samples in ../shared/data (skipped when absent): DICOM orientation and
intensity, IU X-ray reports parsed into cleaned captions, the 3-slice CT segmentation set."""

import nibabel as nib
import numpy as np
import pytest

from mzs_jax.data import realdata
from mzs_jax.data.dicom import read_dicom, read_dicom_image, read_dicom_series
from mzs_jax.data.sources import read_png


def test_ct_series_matches_nifti_copy_in_hu_and_orientation(shared_data):
    folder = shared_data / "ct_abdomen_3slice_dcmqi"
    vol = read_dicom_series(sorted((folder / "source").glob("*.dcm"))[::-1])  # order-independent
    ct = np.asarray(nib.load(folder / "ct.nii.gz").dataobj)
    assert vol.array.shape == (3, 512, 512) and vol.modality == "CT"
    np.testing.assert_allclose(vol.spacing, (1.0, 0.810547, 0.810547), atol=1e-5)
    for k in range(3):  # inferior -> superior, rows = y (anterior->posterior)
        np.testing.assert_array_equal(vol.array[k], ct[:, :, k].T)
    in_fov = vol.array[vol.array > -2000]  # -3024 pads outside the reconstruction circle
    assert -1100 < in_fov.min() < -900 and 900 < in_fov.max()  # air and bone in HU


def test_flipped_ct_is_shown_anterior_up(shared_data):
    d = shared_data / "dicom_samples_pydicom_data"
    image, ds = read_dicom_image(d / "explicit_VR-UN.dcm")
    stored = np.load(d / "pancreas_ct_slice_hu.npy")
    assert list(map(float, ds.ImageOrientationPatient)) == [1, 0, 0, 0, -1, 0]
    np.testing.assert_array_equal(image, np.flipud(stored))
    body = image > -300  # the table and spine are posterior: more body in the lower half
    spine = image > 300
    assert np.nonzero(spine)[0].mean() > np.nonzero(body)[0].mean()


def test_monochrome1_radiograph_is_inverted_so_air_is_dark(shared_data):
    d = shared_data / "dicom_samples_pydicom_data"
    image, ds = read_dicom_image(d / "RG1_UNCR.dcm.gz")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    ref = read_png(d / "rg1_chest_cr.png").astype(np.float32)
    assert np.corrcoef(image.ravel()[::97], ref.ravel()[::97])[0, 1] > 0.99
    raw = ds.pixel_array.astype(np.float32)
    assert np.corrcoef(raw.ravel()[::97], ref.ravel()[::97])[0, 1] < -0.99


def test_mr_slice_and_lesion_mask_align(shared_data):
    s = realdata.dicom_samples(shared_data)
    assert s["mr_liver"].shape == s["mr_lesion_mask"].shape == (484, 484)
    assert s["mr_lesion_mask"].sum() == 920


def test_corrupt_dicom_names_file(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(ValueError, match="x.dcm"):
        read_dicom(bad)


def test_iu_reports_parse_into_cleaned_captions(shared_data):
    reports = realdata.iu_xray_reports(shared_data / "iu_xray_reports" / "NLMCXR_reports.tgz")
    assert len(reports) == 3955
    captions = [r["caption"] for r in reports if r["caption"]]
    assert len(captions) > 3800
    assert all(len(c) >= 20 and c == c.strip() and "XXXX" not in c for c in captions)
    assert all("  " not in c and not set(c) & set("<>[]{}#*&@") for c in captions)
    assert sum("pneumothorax" in c.lower() for c in captions) > 500
    assert sum(len(r["images"]) for r in reports) == 7470


def test_ct_three_slices_as_segmentation_set(shared_data):
    src = realdata.CtThreeSlice(shared_data / "ct_abdomen_3slice_dcmqi")
    assert len(src) == 3
    counts = {
        name: sum(int((src[k]["mask"] == ids[0]).sum()) for k in range(3))
        for name, ids in realdata.CT3_STRUCTURES.items()
    }
    assert counts == {"liver": 106576, "spine": 12439, "heart": 41449}
    png = read_png(shared_data / "ct_abdomen_3slice_dcmqi" / "slice1_labels.png")
    np.testing.assert_array_equal(src[1]["mask"], png)
    item = src[1]
    assert item["image"].shape == (512, 512, 1) and 0 <= item["image"].min() <= 1
    back = src.to_nifti_grid(np.stack([src[k]["mask"] for k in range(3)]))
    labels = np.asarray(nib.load(shared_data / "ct_abdomen_3slice_dcmqi/labels.nii.gz").dataobj)
    np.testing.assert_array_equal(back, labels)
