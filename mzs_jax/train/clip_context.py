"""Caption metadata → the context encoder's batch arrays (MedZeroSeg, contextual information).

Per example, `MetadataArrays` turns the source's `metadata` dict (modality, body_region, sex, age,
history; `data/captions.py`) into fixed-shape arrays that grain batches and `clip_loss` fuses:
categorical field → int32 id (0 = missing, 1.. = position in `model.context.vocab.<field>`),
numeric field → float32 value + bool `<field>_present`, history → token ids/mask for the text tower
+ bool `history_present`. A value outside the vocabulary counts as missing (documented, by design:
open-vocabulary sources such as ROCO carry free-form modality strings).
"""

from __future__ import annotations

import re
from typing import Any

import ml_collections
import numpy as np

# Vocabularies of normalised values (lower case, letters and digits only); id = position + 1.
DEFAULT_VOCAB = {
    "modality": (
        "xray", "ct", "mri", "ultrasound", "pet", "spect", "mammography", "angiography",
        "fluoroscopy", "nuclearmedicine", "endoscopy", "oct", "fundus", "dermoscopy", "histology",
    ),
    "body_region": (
        "head", "brain", "neck", "chest", "lung", "heart", "breast", "abdomen", "liver", "kidney",
        "pelvis", "spine", "upperlimb", "lowerlimb", "shoulder", "hip", "knee", "hand", "foot",
        "eye", "skin", "colon", "stomach", "prostate", "bladder", "pancreas", "vascular",
        "wholebody", "dental", "face",
    ),
    "sex": ("f", "m"),
}  # fmt: skip
SYNONYMS = {
    "radiograph": "xray", "cxr": "xray", "mr": "mri", "us": "ultrasound",
    "sonography": "ultrasound", "female": "f", "woman": "f", "male": "m", "man": "m",
    "thorax": "chest", "cardiac": "heart",
}  # fmt: skip


def normalise(value: Any) -> str:
    """'X-ray' → 'xray', 'Whole body' → 'wholebody', synonyms mapped ('Male' → 'm')."""
    key = re.sub(r"[^a-z0-9]", "", str(value).lower())
    return SYNONYMS.get(key, key)


def with_default_vocab(context_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds `vocab.<field>` (the vocabulary) for every categorical field lacking one; checks that
    each vocabulary fits its embedding table (`categorical.<field>` ids, 0 reserved)."""
    if "vocab" not in context_cfg:
        context_cfg.vocab = ml_collections.ConfigDict()
    for field, size in context_cfg.categorical.items():
        if field not in context_cfg.vocab:
            if field not in DEFAULT_VOCAB:
                raise ValueError(
                    f"model.context.vocab.{field}: no default vocabulary for categorical field "
                    f"{field!r}; give one (a tuple of values)"
                )
            context_cfg.vocab[field] = DEFAULT_VOCAB[field]
        n = len(context_cfg.vocab[field])
        if n + 1 > int(size):
            raise ValueError(
                f"model.context.vocab.{field} has {n} values but model.context.categorical."
                f"{field}={size} ids (id 0 is 'missing'): raise categorical.{field} to >= {n + 1}"
            )
    return context_cfg


class MetadataArrays:
    """`metadata` dict → `{field: int32 (), <num>: float32 (), <num>_present: bool (),
    history_ids/history_mask: int32 (L,), history_present: bool ()}` for one example."""

    def __init__(self, context_cfg: ml_collections.ConfigDict, tokenizer):
        cfg = with_default_vocab(context_cfg)
        self.ids = {
            f: {normalise(v): i + 1 for i, v in enumerate(cfg.vocab[f])} for f in cfg.categorical
        }
        self.numeric = tuple(cfg.numeric.keys())
        self.tokenizer = tokenizer if cfg.history else None

    def __call__(self, metadata: dict[str, Any] | None) -> dict[str, np.ndarray]:
        md = metadata or {}
        out: dict[str, np.ndarray] = {}
        for field, ids in self.ids.items():
            value = md.get(field)
            out[field] = np.int32(0 if value is None else ids.get(normalise(value), 0))
        for field in self.numeric:
            value = md.get(field)
            ok = value is not None and np.isfinite(float(value))
            out[field] = np.float32(float(value) if ok else 0.0)
            out[f"{field}_present"] = np.bool_(ok)
        if self.tokenizer is not None:
            history = str(md.get("history") or "").strip()
            # An empty history is still tokenised ([CLS] [SEP]) so the text tower sees a valid
            # mask; `history_present=False` then zeroes its contribution.
            tokens = self.tokenizer([history])
            out["history_ids"] = np.asarray(tokens["input_ids"][0], np.int32)
            out["history_mask"] = np.asarray(tokens["attention_mask"][0], np.int32)
            out["history_present"] = np.bool_(bool(history))
        return out


def encode_history(model, context: dict) -> dict:
    """`{"history_emb": (B, E)}`: the metadata history through `model.encode_text` (gradients flow
    into the text tower), or `{}` without a history field. Part of the towers' per-example work."""
    if "history_ids" not in context:
        return {}
    return {"history_emb": model.encode_text(context["history_ids"], context["history_mask"])}


def encoded_metadata(model, context: dict, outputs: dict | None = None) -> dict:
    """The batched `MetadataArrays` output with the history embedding in place of its tokens;
    taken from `outputs` (the towers' outputs, `encode_history`) when given, else encoded here."""
    meta = {k: v for k, v in context.items() if k not in ("history_ids", "history_mask")}
    history = (outputs or {}).get("history_emb")
    if history is None:
        history = encode_history(model, context).get("history_emb")
    if history is not None:
        meta["history_emb"] = history
    return meta


def fuse_batch(model, img, txt, context: dict, outputs: dict | None = None) -> tuple:
    """`model.context.fuse` on `(B, E)` unit img/txt: the image side is returned unchanged, the
    text side gets the context (docs/losses.md, "Context encoder"). `context`: the batched
    `MetadataArrays` output (leading axis B)."""
    return model.context.fuse(img, txt, encoded_metadata(model, context, outputs))
