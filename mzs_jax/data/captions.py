"""Image-caption sources for contrastive fine-tuning (paper §4.1): ROCO (captions.csv / *data.csv
or captions.txt with images/), MedPix (JSON, JSONL or CSV index), cleaned captions, 85/15 split.
"""

from __future__ import annotations

import csv
import json
import pathlib
import re
from dataclasses import dataclass, field, replace

import numpy as np

from mzs_jax.data.sources import (
    RecordSource,
    bad,
    read_png,
    require_file,
    split_indices,
    to_unit_float,
)
from mzs_jax.data.transforms import grey_to_rgb, resize_image

MIN_CAPTION_CHARS = 20
VAL_FRACTION = 0.15
METADATA_KEYS = ("modality", "body_region", "age", "sex", "history")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
# Kept: letters, digits, whitespace and sentence punctuation; everything else is removed.
_SPECIAL = re.compile(r"[^A-Za-z0-9\s.,;:%()'/+\-]")
_SPACES = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """Paper rule: special characters removed, whitespace collapsed, trimmed."""
    return _SPACES.sub(" ", _SPECIAL.sub(" ", text)).strip()


@dataclass
class CaptionRecord:
    id: str
    image: pathlib.Path
    caption: str
    metadata: dict = field(default_factory=dict)
    origin: str = ""  # "index file:row" for error messages


def _metadata(row: dict) -> dict[str, str | float | None]:
    out: dict[str, str | float | None] = {}
    for key in METADATA_KEYS:
        value = row.get(key)
        value = None if value is None or str(value).strip() == "" else str(value).strip()
        if key == "age" and value is not None:
            try:
                value = float(value)
            except ValueError:
                value = None
        out[key] = value
    return out


def _first(row: dict, names: tuple[str, ...]) -> str | None:
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    for n in names:
        if n in lowered and lowered[n] is not None:
            return str(lowered[n])
    return None


def _find_image(folder: pathlib.Path, name: str) -> pathlib.Path:
    path = folder / name
    if path.suffix.lower() in _IMAGE_EXTS or path.exists():
        return path
    for ext in _IMAGE_EXTS:
        if (folder / f"{name}{ext}").exists():
            return folder / f"{name}{ext}"
    return folder / f"{name}.jpg"


def _record(
    row: dict, rid: str, folder: pathlib.Path, name: str, origin: str, captions=("caption",)
) -> CaptionRecord:
    """The `CaptionRecord` of one index row: its image `name` under `folder`, its first
    non-empty field of `captions` as the caption, and its metadata columns."""
    caption = _first(row, captions) or ""
    return CaptionRecord(rid, _find_image(folder, name), caption, _metadata(row), origin)


def _rows_from_csv(path: pathlib.Path) -> list[tuple[int, dict]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(enumerate(csv.DictReader(f), start=2))
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from e
    except csv.Error as e:
        raise bad(path, f"not a readable CSV ({e})") from e


def _read_text(path: pathlib.Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from e


def _not_utf8(path: pathlib.Path, e: UnicodeDecodeError):
    byte = e.object[e.start]
    return bad(path, f"not UTF-8 text (byte 0x{byte:02x} at offset {e.start}); save it as UTF-8")


def read_roco_folder(folder: pathlib.Path) -> list[CaptionRecord]:
    """Records of one ROCO subset folder (`<split>/radiology`): `captions.csv` or `*data.csv`
    (id, name, caption [, metadata]) or the original `captions.txt` (`id<TAB>caption`)."""
    images = folder / "images"
    csvs = sorted(folder.glob("captions.csv")) or sorted(folder.glob("*data.csv"))
    records = []
    if csvs:
        for i, row in _rows_from_csv(csvs[0]):
            rid = _first(row, ("id", "image_id")) or f"row{i}"
            name = _first(row, ("name", "file_name", "filename", "image")) or rid
            records.append(_record(row, rid, images, name, f"{csvs[0]}:{i}"))
        return records
    txt = folder / "captions.txt"
    if not txt.is_file():
        raise FileNotFoundError(f"{folder}: no captions.csv, *data.csv or captions.txt")
    for i, line in enumerate(_read_text(txt).splitlines(), start=1):
        if not line.strip():
            continue
        rid, _, caption = line.partition("\t")
        rid = rid.strip()
        records.append(CaptionRecord(rid, _find_image(images, rid), caption, {}, f"{txt}:{i}"))
    return records


def read_medpix_index(index: pathlib.Path) -> list[CaptionRecord]:
    """MedPix-style index: a JSON list, JSON lines or CSV of {image|filename, caption, ...};
    image paths are relative to the index file's folder (or its `images/`)."""
    text = _read_text(require_file(index))
    if index.suffix.lower() == ".csv":
        rows = _rows_from_csv(index)
    elif index.suffix.lower() == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            try:
                rows += [(i, json.loads(line))] if line.strip() else []
            except json.JSONDecodeError as e:
                raise bad(index, f"line {i}: invalid JSON ({e})") from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise bad(index, f"invalid JSON ({e})") from e
        if not isinstance(data, list | dict):
            raise bad(
                index, f"expected a JSON list (or {{'items': [...]}}), got {type(data).__name__}"
            )
        rows = list(enumerate(data if isinstance(data, list) else data.get("items", []), 1))
    records = []
    for i, row in rows:
        if not isinstance(row, dict):
            raise bad(index, f"entry {i} is a {type(row).__name__}, not an object")
        name = _first(row, ("image", "filename", "file_name", "name", "image_path"))
        if name is None:
            raise bad(index, f"entry {i} has no image/filename field")
        folder = index.parent if (index.parent / name).exists() else index.parent / "images"
        rid = _first(row, ("id", "uid")) or pathlib.Path(name).stem
        captions = ("caption", "text", "description")
        records.append(_record(row, rid, folder, name, f"{index}:{i}", captions))
    return records


class CaptionSource(RecordSource):
    """Grain source of `{"image": (H, W, 3) f32 in [0, 1], "caption", "metadata", "id"}`.

    Captions are cleaned; empty captions and missing images are bad input (error naming the
    index file and row, or skipped with `skip_bad`); cleaned captions shorter than 20 characters
    are dropped as the paper does (counted in `dropped_short`). `split` in train/val/all uses a
    seeded 85/15 permutation. `image_size` resizes to a square.
    """

    def __init__(
        self,
        records: list[CaptionRecord],
        split: str = "train",
        *,
        seed: int = 0,
        val_fraction: float = VAL_FRACTION,
        image_size: int | None = None,
        skip_bad: bool = False,
        verify_images: bool | None = None,
    ):
        super().__init__()
        self.image_size = image_size

        def check(r: CaptionRecord) -> None:
            if not r.caption.strip():
                raise bad(r.origin, "empty caption")
            if not r.image.is_file():
                raise FileNotFoundError(f"{r.image}: image listed in {r.origin} not found")
            if verify_images if verify_images is not None else skip_bad:
                self._read_image(r.image)

        records = self._check_items(records, check, lambda r: str(r.origin), skip_bad)
        cleaned = [replace(r, caption=clean_caption(r.caption)) for r in records]
        kept = [r for r in cleaned if len(r.caption) >= MIN_CAPTION_CHARS]
        self.dropped_short = len(cleaned) - len(kept)
        kept.sort(key=lambda r: (r.id, str(r.image)))
        self._records = [kept[i] for i in split_indices(len(kept), val_fraction, seed, split)]

    def _read_image(self, path: pathlib.Path) -> np.ndarray:
        image = grey_to_rgb(to_unit_float(read_png(path)))
        return resize_image(image, self.image_size) if self.image_size else image

    def _load(self, r: CaptionRecord) -> dict:
        return {
            "image": self._read_image(r.image),
            "caption": r.caption,
            "metadata": dict(r.metadata),
            "id": r.id,
        }

    def _path(self, r: CaptionRecord) -> str:
        return str(r.image)


def roco_folders(root: pathlib.Path, subsets: tuple[str, ...]) -> list[pathlib.Path]:
    """All `<subset>` folders under `root` (ROCO: `data/{train,validation,test}/<subset>`)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ROCO root not found")
    found = [p for s in subsets for p in sorted(root.rglob(s)) if p.is_dir()]
    if root.name in subsets:
        found.insert(0, root)
    if not found:
        raise FileNotFoundError(f"{root}: no {'/'.join(subsets)} folder found")
    return found


class RocoCaptions(CaptionSource):
    """ROCO(-like) captions under `root`; `subsets` picks radiology and/or non-radiology."""

    def __init__(
        self,
        root: str | pathlib.Path,
        split: str = "train",
        *,
        subsets: tuple[str, ...] = ("radiology",),
        **kwargs,
    ):
        records = [
            r for f in roco_folders(pathlib.Path(root), subsets) for r in read_roco_folder(f)
        ]
        super().__init__(records, split, **kwargs)


class MedPixCaptions(CaptionSource):
    """MedPix(-like) captions from an index file (JSON/JSONL/CSV) next to the images."""

    def __init__(self, index: str | pathlib.Path, split: str = "train", **kwargs):
        super().__init__(read_medpix_index(pathlib.Path(index)), split, **kwargs)
