"""The small real samples in `../shared/data` (see its README): IU chest X-ray reports parsed at
run time into cleaned captions, the 3-slice CT with liver/spine/heart masks as a tiny real
segmentation set, and the DICOM samples (CR, CT, MR with a lesion mask) in display orientation.
"""

from __future__ import annotations

import os
import pathlib
import re
import tarfile
import xml.etree.ElementTree as ET

import numpy as np

from mzs_jax.data.captions import MIN_CAPTION_CHARS, clean_caption
from mzs_jax.data.dicom import read_dicom_image, read_dicom_series
from mzs_jax.data.sources import RecordSource, read_png, require_file
from mzs_jax.data.volumes import load_nifti

CT3_STRUCTURES = {"liver": (1,), "spine": (2,), "heart": (3,)}
ABDOMEN_WINDOW = (40.0, 400.0)  # level, width (HU)
_DEID = re.compile(r"X{3,}")  # IU de-identification placeholders ("XXXX")


def shared_data_dir(path: str | pathlib.Path | None = None) -> pathlib.Path:
    """`path`, else `$MZS_SHARED_DATA`, else `../shared/data` next to the checkout."""
    if path is None:
        path = (
            os.environ.get("MZS_SHARED_DATA")
            or pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
        )
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: shared data folder not found")
    return path


def window(hu: np.ndarray, level: float = ABDOMEN_WINDOW[0], width: float = ABDOMEN_WINDOW[1]):
    """HU -> float32 [0, 1] with a window (default abdomen W400/L40)."""
    return np.clip((np.asarray(hu, np.float32) - (level - width / 2)) / width, 0, 1)


def _section(root: ET.Element, label: str) -> str:
    for node in root.iter("AbstractText"):
        if node.get("Label", "").upper() == label:
            return (node.text or "").strip()
    return ""


def iu_xray_reports(tgz: str | pathlib.Path | None = None) -> list[dict]:
    """Parse `NLMCXR_reports.tgz` in memory (nothing derived is written): one dict per report
    with `id`, `findings`, `impression`, `tags`, `images` and `caption` = cleaned
    FINDINGS + IMPRESSION with the 'XXXX' placeholders removed ('' if shorter than 20 chars)."""
    tgz = require_file(tgz or shared_data_dir() / "iu_xray_reports" / "NLMCXR_reports.tgz")
    reports = []
    with tarfile.open(tgz, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            findings, impression = _section(root, "FINDINGS"), _section(root, "IMPRESSION")
            caption = clean_caption(_DEID.sub(" ", f"{findings} {impression}"))
            reports.append(
                {
                    "id": pathlib.Path(member.name).stem,
                    "findings": findings,
                    "impression": impression,
                    "tags": [t.text for t in root.iter("major") if t.text],
                    "images": [n.get("id") for n in root.iter("parentImage")],
                    "caption": caption if len(caption) >= MIN_CAPTION_CHARS else "",
                }
            )
    return reports


def iu_xray_captions(tgz: str | pathlib.Path | None = None) -> list[str]:
    """The cleaned, non-empty IU X-ray captions (real radiology text for tokenizer tests)."""
    return [r["caption"] for r in iu_xray_reports(tgz) if r["caption"]]


class CtThreeSlice(RecordSource):
    """The 3 real abdominal CT slices with liver (1) / spine (2) / heart (3) masks as a grain
    source: `{"image": (512, 512, 1) f32 W400/L40, "hu", "mask": int32, "id", "structures"}`,
    rows anterior->posterior, columns patient right->left (as the folder's PNGs)."""

    def __init__(self, root: str | pathlib.Path | None = None):
        super().__init__()
        self.folder = (
            shared_data_dir(root) / "ct_abdomen_3slice_dcmqi"
            if root is None or not (pathlib.Path(root) / "ct.nii.gz").exists()
            else pathlib.Path(root)
        )
        self.reference = self.folder / "ct.nii.gz"  # NIfTI geometry for writing results back
        hu, self.affine, self.spacing = load_nifti(self.reference)
        labels, _, _ = load_nifti(self.folder / "labels.nii.gz", dtype=np.float32)
        self._hu = np.transpose(hu, (2, 1, 0))  # (x, y, z) -> (z, rows=y, cols=x)
        self._labels = np.transpose(labels, (2, 1, 0)).astype(np.int32)
        self._records = list(range(self._hu.shape[0]))

    def _load(self, k: int) -> dict:
        return {
            "image": window(self._hu[k])[..., None],
            "hu": self._hu[k],
            "mask": self._labels[k],
            "id": f"ct3_slice{k}",
            "structures": CT3_STRUCTURES,
        }

    def _path(self, k: int) -> str:
        return str(self.reference)

    def to_nifti_grid(self, masks: np.ndarray) -> np.ndarray:
        """`(3, H, W)` per-slice results -> `(x, y, z)` on the grid of `ct.nii.gz`."""
        return np.transpose(np.asarray(masks), (2, 1, 0))


def dicom_samples(root: str | pathlib.Path | None = None) -> dict[str, np.ndarray]:
    """The real DICOM samples in display orientation: `chest_cr` (MONOCHROME1 inverted),
    `pancreas_ct` (HU, rows flipped to anterior-up), `mr_liver` and its `mr_lesion_mask`, and
    `ct3_series` (the 3-slice CT series as `(Z, H, W)` HU)."""
    base = shared_data_dir(root)
    d = base / "dicom_samples_pydicom_data"
    return {
        "chest_cr": read_dicom_image(d / "RG1_UNCR.dcm.gz")[0],
        "pancreas_ct": read_dicom_image(d / "explicit_VR-UN.dcm")[0],
        "mr_liver": read_dicom_image(d / "MR-SIEMENS-DICOM-WithOverlays.dcm")[0],
        "mr_lesion_mask": read_png(d / "mr_abdomen_lesion_mask.png") > 0,
        "ct3_series": read_dicom_series(base / "ct_abdomen_3slice_dcmqi" / "source").array,
    }
