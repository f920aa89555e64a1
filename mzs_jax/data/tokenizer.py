"""BERT WordPiece tokenizer for the BiomedCLIP text tower (PubMedBERT vocabulary, MedZeroSeg §3.1).

Wraps HF `BertTokenizerFast` with open_clip's `HFTokenizer` behaviour (ftfy + whitespace cleaning,
pad/truncate to the context length), and trains small offline vocabularies for phantom captions.
"""

from __future__ import annotations

import html
import os
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
# open_clip's BiomedCLIP config names this repo as its `hf_tokenizer_name` (PubMedBERT, renamed).
BIOMEDCLIP_TOKENIZER_IDS = (
    "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
    "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract",
)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def clean_text(text: str) -> str:
    """open_clip's `whitespace` cleaning: ftfy fix, double HTML unescape, collapse whitespace."""
    import ftfy

    return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split())


class Tokenizer:
    """`tok(texts) -> {"input_ids": int32 (B, L), "attention_mask": int32 (B, L)}`, L = context."""

    def __init__(self, hf_tokenizer, context_length: int, source: str):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 ([CLS] and [SEP]), got {context_length}")
        self.hf = hf_tokenizer
        self.context_length = context_length
        self.source = source
        self.vocab_size = len(hf_tokenizer)
        self.pad_token_id = hf_tokenizer.pad_token_id

    def __call__(self, texts: Sequence[str] | str) -> dict[str, np.ndarray]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.hf(
            [clean_text(t) for t in texts],
            max_length=self.context_length,
            padding="max_length",
            truncation=True,
            return_attention_mask=True,
            return_token_type_ids=False,
            return_tensors="np",
        )
        return {
            "input_ids": enc["input_ids"].astype(np.int32),
            "attention_mask": enc["attention_mask"].astype(np.int32),
        }


def load_tokenizer(path_or_hub_id: str | os.PathLike, context_length: int) -> Tokenizer:
    """A local tokenizer directory, or a hub id already in the local HF cache (never downloads).

    For the BiomedCLIP hub id the PubMedBERT tokenizer repos it points at are tried as well.
    Raises FileNotFoundError naming everything tried when no vocabulary is available offline.
    """
    source = str(path_or_hub_id)
    local = pathlib.Path(source).expanduser()
    if local.is_dir():
        if not any((local / f).is_file() for f in VOCAB_FILES):
            raise ValueError(f"{local}: no {' or '.join(VOCAB_FILES)} in this tokenizer directory")
        return Tokenizer(_from_dir(local), context_length, str(local))
    if local.exists() or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"tokenizer directory not found: {local}")
    candidates = [source] + (list(BIOMEDCLIP_TOKENIZER_IDS) if source == BIOMEDCLIP_HUB_ID else [])
    for repo in candidates:
        snapshot = _cached_snapshot(repo)
        if snapshot is not None:
            return Tokenizer(_from_dir(snapshot), context_length, repo)
    raise FileNotFoundError(
        f"no tokenizer vocabulary available offline for {source!r}: no local directory "
        f"{str(local)!r}, and no {' or '.join(VOCAB_FILES)} in the HF cache for "
        f"{', '.join(candidates)}. Give a tokenizer directory, or build one with "
        "build_wordpiece_tokenizer(texts, out_dir)."
    )


# transformers 5 builds an empty-vocabulary BERT tokenizer when files are missing, so the files
# are looked for explicitly rather than trusting from_pretrained to fail.
VOCAB_FILES = ("tokenizer.json", "vocab.txt")


def _cached_snapshot(repo: str) -> pathlib.Path | None:
    """The HF-cache snapshot folder holding `repo`'s vocabulary, or None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    for name in VOCAB_FILES:
        try:
            found = try_to_load_from_cache(repo, name)
        except ValueError:  # not a valid repo id
            return None
        if isinstance(found, str):
            return pathlib.Path(found).parent
    return None


def _from_dir(directory: pathlib.Path):
    from transformers import BertTokenizerFast

    try:
        return BertTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{directory}: not a readable BERT tokenizer ({e})") from e


def build_wordpiece_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 1024
) -> pathlib.Path:
    """Train an uncased BERT WordPiece vocabulary on `texts` offline; save a BertTokenizerFast dir.

    Used for phantom captions, whose words PubMedBERT is not needed for. `vocab_size` is an upper
    bound (a small corpus yields fewer tokens); keep it ≤ the text tower's `text.vocab_size`.
    Deterministic: the vocabulary comes from `wordpiece.train_vocab` (ties broken by the tokens,
    not by hash-map order as in the tokenizers trainer, huggingface/tokenizers#1794), so the same
    texts give the same files, byte for byte.
    """
    from transformers import BertTokenizerFast

    from mzs_jax.data import wordpiece

    texts = [clean_text(t) for t in texts]
    if not any(texts):
        raise ValueError("build_wordpiece_tokenizer needs at least one non-empty text")
    tokens = wordpiece.train_vocab(wordpiece.count_words(texts), vocab_size, SPECIAL_TOKENS)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # transformers 5 takes the vocabulary itself (`vocab=`); `vocab_file=` is silently ignored.
    hf = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    hf.save_pretrained(str(out_dir))
    # vocab.txt (id order), for tools that read a plain BERT vocabulary.
    (out_dir / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return out_dir
