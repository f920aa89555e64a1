"""Tokenizer: an offline WordPiece vocabulary gives the same ids through ours and open_clip's."""

import pathlib
import shutil

import numpy as np
import pytest

from mzs_jax.data import tokenizer as tok_lib
from mzs_jax.models import clip

CAPTIONS = [
    "Axial CT of the abdomen showing a hypodense lesion in the right hepatic lobe.",
    "Chest X-ray: bilateral patchy opacities, more prominent in the lower zones.",
    "Cardiac MRI short-axis view with a dilated left ventricle and thin myocardium.",
    "Coronal   T2-weighted MRI &amp; contrast — a round mass in the left kidney.",
]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("wordpiece")
    return tok_lib.build_wordpiece_tokenizer(CAPTIONS * 5, out, vocab_size=300)


def test_ids_match_open_clip_hf_tokenizer_on_the_same_vocabulary(vocab_dir, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from torch_bridge.clip import write_local_dir

    cfg = clip.model_config("tiny")
    local = write_local_dir(cfg, tmp_path / "oc")
    for f in vocab_dir.iterdir():  # open_clip reads the tokenizer from the local dir itself
        shutil.copy(f, local / f.name)
    theirs = open_clip.get_tokenizer(f"local-dir:{local}")
    ours = tok_lib.load_tokenizer(vocab_dir, cfg.text.context_length)
    texts = [*CAPTIONS, "a rare word: pneumonoultramicroscopic " * 10, "  short  "]
    out = ours(texts)
    expected = theirs(texts).numpy()
    assert out["input_ids"].dtype == out["attention_mask"].dtype == np.int32
    assert out["input_ids"].shape == (len(texts), cfg.text.context_length)
    np.testing.assert_array_equal(out["input_ids"], expected)
    np.testing.assert_array_equal(out["attention_mask"], (expected != 0).astype(np.int32))
    assert len(np.unique(expected[expected > 4])) > 30  # real word pieces, not [UNK]s


def test_built_vocabulary_fits_the_tiny_text_tower_and_truncates_to_context(vocab_dir):
    cfg = clip.model_config("tiny")
    tok = tok_lib.load_tokenizer(vocab_dir, 8)
    assert tok.vocab_size <= cfg.text.vocab_size and tok.pad_token_id == cfg.text.pad_token_id
    out = tok([CAPTIONS[0]])
    assert out["input_ids"].shape == (1, 8) and out["attention_mask"].all()
    assert (
        out["input_ids"][0, 0] == tok.hf.cls_token_id
        and out["input_ids"][0, -1] == tok.hf.sep_token_id
    )
    assert tok.hf.unk_token_id not in out["input_ids"]


def test_missing_offline_vocabulary_error_names_what_was_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nobody/no-such-tokenizer"):
        tok_lib.load_tokenizer("nobody/no-such-tokenizer", 16)
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
        tok_lib.load_tokenizer(tmp_path / "absent", 16)
    with pytest.raises(ValueError, match="no tokenizer.json or vocab.txt"):
        tok_lib.load_tokenizer(tmp_path, 16)
    try:
        tok = tok_lib.load_tokenizer(tok_lib.BIOMEDCLIP_HUB_ID, 256)
    except FileNotFoundError as e:
        for repo in (tok_lib.BIOMEDCLIP_HUB_ID, *tok_lib.BIOMEDCLIP_TOKENIZER_IDS):
            assert repo in str(e)
    else:  # cached on this machine: it must tokenize to the context length
        assert tok(["chest x-ray"])["input_ids"].shape == (1, 256)


def test_empty_corpus_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        tok_lib.build_wordpiece_tokenizer(["   ", ""], tmp_path / "v")


_BUILD = """
import sys
from mzs_jax.data import phantom, tokenizer
caps = [s["caption"] for s in phantom.generate_captions(300, seed=0)]
tokenizer.build_wordpiece_tokenizer(caps, sys.argv[1], vocab_size=int(sys.argv[2]))
"""


@pytest.mark.parametrize("vocab_size", [120, 1024])
def test_building_twice_in_fresh_processes_gives_identical_files(tmp_path, vocab_size):
    """Same captions -> same vocabulary, byte for byte (hash seeds differ between processes)."""
    import os
    import subprocess
    import sys

    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"tok{seed}"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run(
            [sys.executable, "-c", _BUILD, str(out), str(vocab_size)],
            env=env,
            cwd=pathlib.Path(__file__).resolve().parents[1],  # this checkout's mzs_jax
            check=True,
            timeout=300,
        )
        outs.append(out)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir())
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    tok = tok_lib.load_tokenizer(outs[0], 64)
    assert tok.vocab_size <= max(vocab_size, 120)


def test_train_vocab_merges_the_most_frequent_pair_and_breaks_ties_by_the_tokens():
    from collections import Counter

    from mzs_jax.data import wordpiece

    counts = Counter({"abab": 3, "ba": 1, "cd": 1})
    vocab = wordpiece.train_vocab(counts, 100, ["[UNK]"])
    # the alphabet sorted; then three pairs occur 3 times each ("a ##b ##a ##b" x 3): the tie
    # goes to the smallest pair, ("##a", "##b")
    assert vocab[:9] == ["[UNK]", "a", "b", "c", "d", "##a", "##b", "##c", "##d"]
    assert vocab[9] == "##ab" and "abab" in vocab and vocab.index("abab") > 9
    assert vocab == wordpiece.train_vocab(Counter(dict(reversed(counts.items()))), 100, ["[UNK]"])
    assert len(wordpiece.train_vocab(counts, 10, ["[UNK]"])) == 10
