"""DICOM slices and series -> arrays in the usual viewing orientation (axial: image rows run
anterior->posterior, columns patient right->left), HU via rescale, MONOCHROME1 inverted.
"""

from __future__ import annotations

import gzip
import io
import pathlib
from dataclasses import dataclass

import numpy as np
import pydicom

from mzs_jax.data.sources import FILE_ERRORS, bad, require_file

# Wanted direction of increasing index along each patient axis (LPS): x to the patient's left,
# y to posterior, z downwards on screen (head at the top for coronal/sagittal views).
_WANTED_SIGN = np.array([1.0, 1.0, -1.0])


@dataclass
class DicomVolume:
    array: np.ndarray  # (Z, H, W) float32, rescaled (HU for CT), display orientation
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    modality: str
    photometric: str
    paths: list[pathlib.Path]


def read_dicom(path: str | pathlib.Path) -> pydicom.Dataset:
    """Read one DICOM file (`.dcm` or gzipped `.dcm.gz`); errors name the file."""
    path = require_file(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        return pydicom.dcmread(io.BytesIO(raw))
    except (*FILE_ERRORS, pydicom.errors.InvalidDicomError) as e:
        raise bad(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e


def pixels(ds: pydicom.Dataset, path: str | pathlib.Path = "<dataset>") -> np.ndarray:
    """Stored pixels -> float32 `(rows, cols)`: RescaleSlope/Intercept applied, MONOCHROME1
    inverted (`min + max - x`) so that higher always means brighter."""
    try:
        arr = ds.pixel_array.astype(np.float32)
    except (*FILE_ERRORS, RuntimeError, NotImplementedError) as e:
        raise bad(path, f"cannot decode pixel data ({type(e).__name__}: {e})") from e
    if arr.ndim != 2:
        raise bad(path, f"expected a single 2D frame, got pixel array of shape {arr.shape}")
    arr = arr * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.min() + arr.max() - arr
    return arr


def _orientation(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    v = np.asarray([float(x) for x in iop])
    return v[:3], v[3:]


def to_display(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Transpose/flip a slice so columns follow the lower patient axis (x before y before z)
    in its wanted direction and rows the other one (projection images are left as stored)."""
    ori = _orientation(ds)
    if ori is None:
        return arr
    row_dir, col_dir = ori  # direction of increasing column index, of increasing row index
    a_r, a_c = int(np.argmax(np.abs(row_dir))), int(np.argmax(np.abs(col_dir)))
    if a_r > a_c:
        arr, row_dir, col_dir, a_r, a_c = arr.T, col_dir, row_dir, a_c, a_r
    if np.sign(row_dir[a_r]) != _WANTED_SIGN[a_r]:
        arr = arr[:, ::-1]
    if np.sign(col_dir[a_c]) != _WANTED_SIGN[a_c]:
        arr = arr[::-1, :]
    return np.ascontiguousarray(arr)


def read_dicom_image(path: str | pathlib.Path) -> tuple[np.ndarray, pydicom.Dataset]:
    """One DICOM image -> `(array (H, W) float32 in display orientation, dataset)`."""
    ds = read_dicom(path)
    return to_display(pixels(ds, path), ds), ds


def read_dicom_series(paths) -> DicomVolume:
    """A directory or list of DICOM slices of one series -> `DicomVolume` sorted along the
    slice normal (inferior -> superior for axial), spacing from positions."""
    if isinstance(paths, str | pathlib.Path) and pathlib.Path(paths).is_dir():
        paths = sorted(
            p
            for p in pathlib.Path(paths).iterdir()
            if p.is_file() and p.name.lower().endswith((".dcm", ".dcm.gz", ".ima"))
        )
    paths = [pathlib.Path(p) for p in paths]
    if not paths:
        raise FileNotFoundError("read_dicom_series: no DICOM files given")
    slices = [(p, read_dicom(p)) for p in paths]
    first = slices[0][1]
    ori = _orientation(first)
    normal = np.cross(*ori) if ori is not None else np.array([0.0, 0.0, 1.0])

    def position(item) -> float:
        p, ds = item
        ipp = ds.get("ImagePositionPatient")
        if ipp is None:
            raise bad(p, "no ImagePositionPatient: cannot order the series")
        return float(np.dot(normal, [float(v) for v in ipp]))

    if len(slices) > 1:
        slices.sort(key=position)
    arrays = []
    for p, ds in slices:
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise bad(p, f"size {ds.Rows}x{ds.Columns} differs from {first.Rows}x{first.Columns}")
        arrays.append(to_display(pixels(ds, p), ds))
    if len(slices) > 1:
        gaps = np.diff([position(s) for s in slices])
        if np.any(gaps <= 1e-6):
            raise bad(slices[int(np.argmin(gaps)) + 1][0], "duplicate slice position in series")
        dz = float(np.median(gaps))
    else:
        dz = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
    ps = first.get("PixelSpacing") or first.get("ImagerPixelSpacing") or (1.0, 1.0)
    dy, dx = float(ps[0]), float(ps[1])
    if ori is not None and np.argmax(np.abs(ori[0])) > np.argmax(np.abs(ori[1])):
        dy, dx = dx, dy  # the slice was transposed
    return DicomVolume(
        np.stack(arrays),
        (dz, dy, dx),
        str(first.get("Modality", "")),
        str(first.get("PhotometricInterpretation", "")),
        [p for p, _ in slices],
    )
