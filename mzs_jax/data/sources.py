"""Shared machinery for the grain random-access data sources: file checks with an opt-in
`skip_bad` that records what it skipped, errors that name the file, per-process sharding.
"""

from __future__ import annotations

import pathlib
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
from nibabel.filebasedimages import ImageFileError
from PIL import Image

T = TypeVar("T")

# Errors that mean "this file is missing, truncated or not what it claims to be".
FILE_ERRORS = (OSError, ValueError, KeyError, EOFError, zlib.error, IndexError, ImageFileError)


class BadFileError(ValueError):
    """A missing, corrupt or inconsistent input file; the message starts with the path."""


def bad(path: str | pathlib.Path, why: str) -> BadFileError:
    return BadFileError(f"{path}: {why}")


def require_file(path: str | pathlib.Path) -> pathlib.Path:
    """`path` as a `Path`; FileNotFoundError naming it when it is not a file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def check_labels(path: str | pathlib.Path, label: np.ndarray, allowed, name: str) -> np.ndarray:
    """`label` as int32, after checking that its values are integers in `allowed`; `name` is
    the label set named in the error."""
    if np.any(label != np.round(label)):
        raise bad(path, "non-integer label values")
    unknown = set(np.unique(label).astype(int).tolist()) - set(allowed)
    if unknown:
        raise bad(path, f"labels {sorted(unknown)} outside the {name}")
    return label.astype(np.int32)


class RecordSource:
    """A grain random-access source (`__len__`, `__getitem__`) over a list of records.

    Subclasses set `self._records` and implement `_load(record) -> dict` and
    `_path(record) -> str`. Any file error while loading is re-raised naming the file.
    `skipped` lists `(path, reason)` for inputs left out under `skip_bad=True`.
    """

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []
        self._records: Sequence[Any] = []

    def __len__(self) -> int:
        return len(self._records)

    def _check_items(
        self, items: Iterable[T], check: Callable[[T], Any], path_of: Callable[[T], str], skip_bad
    ) -> list[T]:
        """Run `check(item)` on each item. A failing item raises (default) or, with `skip_bad`,
        is appended to `self.skipped` as `(path, reason)` and left out of the returned list."""
        good = []
        for item in items:
            try:
                check(item)
            except FILE_ERRORS as e:
                if not skip_bad:
                    if isinstance(e, BadFileError | FileNotFoundError):
                        raise
                    raise bad(path_of(item), f"{type(e).__name__}: {e}") from e
                self.skipped.append((path_of(item), str(e)))
                continue
            good.append(item)
        return good

    def __getitem__(self, index: int) -> dict:
        record = self._records[index]
        try:
            return self._load(record)
        except (BadFileError, FileNotFoundError):
            raise
        except FILE_ERRORS as e:
            raise bad(self._path(record), f"{type(e).__name__}: {e}") from e

    def _load(self, record: Any) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _path(self, record: Any) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def skipped_report(self) -> str:
        """Human-readable list of skipped inputs for the run's report ('' when none)."""
        if not self.skipped:
            return ""
        lines = [f"{type(self).__name__}: skipped {len(self.skipped)} bad input(s):"]
        lines += [f"  {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(len={len(self)}, skipped={len(self.skipped)})"


def shard_for_process(source: Any):
    """`grain.MapDataset` over this process's share of `source` (element i goes to process
    i mod process_count), for multi-host input pipelines."""
    import grain
    import jax

    return grain.MapDataset.source(source)[jax.process_index() :: jax.process_count()]


def read_png(path: str | pathlib.Path) -> np.ndarray:
    """Decode an image file to a NumPy array (uint8/uint16; `(H, W)` or `(H, W, C)`)."""
    path = require_file(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise bad(path, f"cannot decode image ({e})") from e


def to_unit_float(array: np.ndarray) -> np.ndarray:
    """uint8/uint16 pixels -> float32 in [0, 1]; RGBA/LA drop their alpha channel."""
    scale = 65535.0 if array.dtype == np.uint16 else 255.0
    out = array.astype(np.float32) / scale
    if out.ndim == 3 and out.shape[-1] in (2, 4):
        out = out[..., :-1]
    return out


def split_indices(n: int, val_fraction: float, seed: int, split: str) -> np.ndarray:
    """Deterministic train/val split of `range(n)` by a seeded permutation; returns the sorted
    indices of `split` in {'train', 'val', 'all'}."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"config.data.val_fraction={val_fraction}: must be in [0, 1)")
    if split == "all":
        return np.arange(n)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    chosen = perm[:n_val] if split == "val" else perm[n_val:]
    return np.sort(chosen)
