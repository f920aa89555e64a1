"""Token-length distribution of the phantom captions and the IU X-ray reports (text tower input).

    python bench/caption_lengths.py [--phantoms 3000] [--vocab 30522]
Each set is tokenised with a BERT WordPiece vocabulary trained on that set (offline: PubMedBERT's
own vocabulary is not on this machine); lengths include [CLS] and [SEP], before truncation.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

BUCKETS = (32, 64, 128, 256)


def token_lengths(texts: list[str], vocab_size: int) -> np.ndarray:
    """Untruncated token counts ([CLS] + pieces + [SEP]) under a vocabulary trained on `texts`."""
    from mzs_jax.data import tokenizer as tk

    with tempfile.TemporaryDirectory(prefix="mzs_lengths_") as d:
        tok = tk.load_tokenizer(tk.build_wordpiece_tokenizer(texts, d, vocab_size), 512)
        enc = tok.hf([tk.clean_text(t) for t in texts], add_special_tokens=True)
    return np.asarray([len(ids) for ids in enc["input_ids"]])


def length_row(name: str, lengths: np.ndarray, context: int = 256) -> str:
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    over = int(np.sum(lengths > context))
    fits = " | ".join(f"{100 * np.mean(lengths <= b):.1f}" for b in BUCKETS)
    padded = 100 * np.mean(np.minimum(lengths, context)) / context
    return (
        f"| {name} | {len(lengths):,} | {lengths.mean():.1f} | {p50:.0f} | {p90:.0f} | "
        f"{p99:.0f} | {lengths.max()} | {fits} | {over} | {padded:.1f} |"
    )


def main(argv: list[str]) -> str:
    p = argparse.ArgumentParser(prog="bench/caption_lengths.py")
    p.add_argument("--phantoms", type=int, default=3000, help="phantom captions to generate")
    p.add_argument("--vocab", type=int, default=30522, help="WordPiece vocabulary size bound")
    a = p.parse_args(argv)
    from mzs_jax.data import phantom, realdata

    sets = {
        f"phantom captions (`phantom:{a.phantoms}`)": [
            s["caption"] for s in phantom.generate_captions(a.phantoms, seed=0)
        ],
        "IU X-ray reports (FINDINGS + IMPRESSION)": realdata.iu_xray_captions(),
    }
    head = " | ".join(f"≤ {b} %" for b in BUCKETS)
    lines = [
        "### Caption token lengths (text tower input, context 256)",
        "",
        f"| set | captions | mean | p50 | p90 | p99 | max | {head} | > 256 | real tokens "
        "in a 256-padded batch % |",
        "|---|---|---|---|---|---|---|" + "---|" * len(BUCKETS) + "---|---|",
    ]
    lines += [length_row(name, token_lengths(texts, a.vocab)) for name, texts in sets.items()]
    lines += [
        "",
        f"WordPiece vocabulary (≤ {a.vocab:,} pieces) trained on each set itself; lengths count "
        "[CLS] and [SEP].",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
