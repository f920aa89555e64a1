"""A deterministic WordPiece vocabulary trainer: same texts → same vocabulary, byte for byte.

The merge procedure of the tokenizers WordPiece trainer (BPE merges over `##`-continued
characters, counted per word), with every tie broken by the tokens themselves instead of hash-map
order (huggingface/tokenizers#1794).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence

PREFIX = "##"


def count_words(texts: Iterable[str], *, lowercase: bool = True) -> Counter:
    """Word counts after BERT's normaliser (clean text, strip accents, lower case) and
    pre-tokeniser (split on whitespace and punctuation): the words the tokenizer will see."""
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer = BertNormalizer(clean_text=True, strip_accents=True, lowercase=lowercase)
    pre = BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def _symbols(word: str) -> list[str]:
    return [word[0]] + [PREFIX + ch for ch in word[1:]]


def _merged(a: str, b: str) -> str:
    return a + b[len(PREFIX) :]


def _pairs(symbols: Sequence[str]) -> Counter:
    return Counter(zip(symbols, symbols[1:], strict=False))


def train_vocab(
    counts: Counter, vocab_size: int, special_tokens: Sequence[str], min_frequency: int = 1
) -> list[str]:
    """Tokens in id order: special tokens, every character (plain and `##`-continued, sorted),
    then merges, most frequent pair first (ties: the smaller `(left, right)` pair), until
    `vocab_size` tokens or no pair occurs `min_frequency` times."""
    words = sorted(counts)
    freq = [counts[w] for w in words]
    chars = sorted({ch for w in words for ch in w})
    vocab = list(dict.fromkeys([*special_tokens, *chars, *(PREFIX + ch for ch in chars)]))
    seen = set(vocab)
    symbols = [_symbols(w) for w in words]
    pair_count: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, syms in enumerate(symbols):
        for pair, n in _pairs(syms).items():
            pair_count[pair] += n * freq[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-n, pair) for pair, n in pair_count.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:  # stale entry: re-push its current count
            if pair_count.get(pair, 0) > 0:
                heapq.heappush(heap, (-pair_count[pair], pair))
            continue
        if -neg < min_frequency:
            break
        token = _merged(*pair)
        if token not in seen:
            vocab.append(token)
            seen.add(token)
        for i in sorted(where.pop(pair, ())):
            _apply_merge(i, pair, token, symbols, freq, pair_count, where, heap)
        pair_count.pop(pair, None)
    return vocab


def _apply_merge(i, pair, token, symbols, freq, pair_count, where, heap) -> None:
    """Merge `pair` into `token` inside word `i`, updating the pair counts incrementally."""
    old = symbols[i]
    new, j = [], 0
    while j < len(old):
        if j + 1 < len(old) and (old[j], old[j + 1]) == pair:
            new.append(token)
            j += 2
        else:
            new.append(old[j])
            j += 1
    for p, n in _pairs(old).items():
        pair_count[p] -= n * freq[i]
    for p, n in _pairs(new).items():
        pair_count[p] += n * freq[i]
        where.setdefault(p, set()).add(i)
        heapq.heappush(heap, (-pair_count[p], p))
    symbols[i] = new
