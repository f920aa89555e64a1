"""Length bucketing for the text tower: a batch's token arrays are cut to the smallest configured
length that still holds every attended token, so short captions skip the padded 256-token work.

The cut removes only masked positions: the text tower ignores masked keys, keeps absolute
positions from 0 and pools the class token, so embeddings and loss equal the padded batch's.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

TEXT_KEYS = ("input_ids", "attention_mask")


def check_buckets(buckets: Sequence[int], context_length: int) -> tuple[int, ...]:
    """Sorted, validated `config.data.text_buckets` (each in [1, context_length])."""
    out = tuple(sorted(int(b) for b in buckets))
    if any(b < 1 or b > context_length for b in out):
        raise ValueError(
            f"config.data.text_buckets={tuple(buckets)}: every length must be in "
            f"[1, text.context_length={context_length}]"
        )
    return out


def needed_length(attention_mask: np.ndarray) -> int:
    """Last attended position + 1 over the batch `(B, L)` (1 when nothing is attended)."""
    attended = np.flatnonzero(np.asarray(attention_mask).any(axis=0))
    return int(attended[-1]) + 1 if attended.size else 1


def bucket_length(need: int, buckets: Sequence[int], full: int) -> int:
    """Smallest bucket ≥ `need`; the full context length when no bucket is long enough."""
    return next((b for b in sorted(buckets) if b >= need), full)


def bucket_batch(batch: dict, buckets: Sequence[int]) -> dict:
    """Host batch with `input_ids`/`attention_mask` cut to their bucket; every process of a
    multi-process run cuts to the same (largest) length, so the global arrays agree."""
    full = batch["attention_mask"].shape[1]
    length = bucket_length(needed_length(batch["attention_mask"]), buckets, full)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        length = int(np.max(multihost_utils.process_allgather(np.int32(length))))
    return {k: (v[:, :length] if k in TEXT_KEYS else v) for k, v in batch.items()}
