"""Retrieval scores of a CLIP on held-out pairs, ROCO protocol (paper §4.1, Table 1): top-1/top-2
image→text and text→image accuracy in batches of 50 drawn from a shuffle, several seeds, ties
broken at random (a constant model scores chance). Used by `ClipTask.evaluate` during training;
`pipeline/retrieval.py` (the `mzs eval-retrieval` command) re-exports these names.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

METRICS = ("i2t_top1", "i2t_top2", "t2i_top1", "t2i_top2")


def _rank_counts(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query (row of `s`, true partner on the diagonal): how many candidates score strictly
    higher than the partner (r) and how many others tie with it exactly (t)."""
    pos = np.diagonal(s)[:, None]
    return np.sum(s > pos, axis=1), np.sum(s == pos, axis=1) - 1


def _hits(
    img: np.ndarray, txt: np.ndarray, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """Per-query top-k hits `(N,)` within one batch of paired `(N, D)` embeddings, ties broken
    uniformly at random: the partner's rank is r + U, U uniform on {0..t}.

    `rng=None`: the expected hit, float P(r + U < k) = clip((k − r)/(t + 1), 0, 1), so a
    collapsed model (every score tied) scores k/N, chance. With `rng`: bool hits with U drawn
    (one draw per query and direction, shared by top-1 and top-2), for McNemar."""
    sim = img @ txt.T
    out = {}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        higher, tied = _rank_counts(s)
        if rng is None:
            for k in (1, 2):
                out[f"{name}_top{k}"] = np.clip((k - higher) / (tied + 1), 0.0, 1.0)
        else:
            rank = higher + rng.integers(0, tied + 1)
            for k in (1, 2):
                out[f"{name}_top{k}"] = rank < k
    return out


def batch_retrieval(img: np.ndarray, txt: np.ndarray) -> dict[str, float]:
    """Expected top-k accuracy (ties broken at random) within one batch of paired `(N, D)`
    embeddings (row i of each is a pair)."""
    img, txt = _check_pairs(img, txt)
    return {k: float(np.mean(v)) for k, v in _hits(img, txt).items()}


def _check_pairs(img, txt) -> tuple[np.ndarray, np.ndarray]:
    img, txt = np.asarray(img, np.float64), np.asarray(txt, np.float64)
    if img.shape != txt.shape or img.ndim != 2 or len(img) < 2:
        raise ValueError(
            f"retrieval needs paired (N>=2, D) embeddings, got {img.shape}, {txt.shape}"
        )
    if not (np.isfinite(img).all() and np.isfinite(txt).all()):
        raise ValueError("retrieval: the embeddings contain NaN or inf")
    return img, txt


def _chunks(n: int, batch: int, seed: int) -> list[np.ndarray]:
    """The ROCO protocol's batches: a `seed` shuffle cut into batches of `batch` (the last
    partial batch is dropped unless it is the only one)."""
    order = np.random.default_rng(seed).permutation(n)
    size = min(batch, n)
    return [order[i : i + size] for i in range(0, n - size + 1, size)]


def query_scores(
    img: np.ndarray, txt: np.ndarray, *, batch: int = 50, seed: int = 0, chunks=None
) -> dict[str, np.ndarray]:
    """Per-query expected hits `(M,)` float under the ROCO protocol (`_chunks`); query j is the
    j-th pair of the shuffled order. `chunks` (a list of index arrays) replaces the shuffled
    batches, e.g. the 64-pair blocks of `phantom-hard`."""
    return _per_query(img, txt, batch, seed, chunks, None)


def query_hits(
    img: np.ndarray,
    txt: np.ndarray,
    *,
    batch: int = 50,
    seed: int = 0,
    tie_seed: int = 0,
    chunks=None,
) -> dict[str, np.ndarray]:
    """Per-query bool hits `(M,)` in the order of `query_scores`, exact ties broken by a draw
    seeded with `(tie_seed, seed)`, so two models' hits pair up (McNemar) and reruns agree."""
    return _per_query(img, txt, batch, seed, chunks, [tie_seed, seed])


def _per_query(img, txt, batch: int, seed: int, chunks, tie_seeds) -> dict[str, np.ndarray]:
    """`_hits` of every chunk, concatenated; ties drawn from `tie_seeds` (None: expected hits)."""
    img, txt = _check_pairs(img, txt)
    rng = None if tie_seeds is None else np.random.default_rng(tie_seeds)
    chunks = _chunks(len(img), batch, seed) if chunks is None else chunks
    per = [_hits(img[c], txt[c], rng) for c in chunks]
    return {k: np.concatenate([p[k] for p in per]) for k in METRICS}


def roco_retrieval(
    img: np.ndarray, txt: np.ndarray, *, batch: int = 50, seed: int = 0
) -> dict[str, float]:
    """Mean of the per-batch expected accuracies (= mean of `query_scores`)."""
    return {k: float(np.mean(v)) for k, v in query_scores(img, txt, batch=batch, seed=seed).items()}


def summarize(
    img: np.ndarray, txt: np.ndarray, *, batch: int = 50, seeds: int = 5
) -> dict[str, tuple[float, float]]:
    """`{metric: (mean, std)}` over `seeds` shuffles (std with ddof=0; 0 for one seed)."""
    runs = [roco_retrieval(img, txt, batch=batch, seed=s) for s in range(seeds)]
    return {
        k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs])))
        for k in METRICS
    }


def embed(
    model, examples, *, batch_size: int = 64, with_context: bool = False
) -> tuple[np.ndarray, ...]:
    """`(img, txt)` embeddings `(N, E)` of a sequence of examples with `image`, `input_ids`,
    `attention_mask`; runs jitted, fully replicated (works in multi-process runs).

    `with_context=True` (a model with a context encoder; examples with `"context"` arrays):
    `(img, txt, txt_with_context)`, the last with the metadata fused into the text side."""
    from flax import nnx

    from mzs_jax.train.clip_context import encoded_metadata

    if with_context and getattr(model, "context", None) is None:
        raise ValueError("embed(with_context=True): the model has no context encoder")
    graphdef, state = nnx.split(model)
    # Parameters sharded over `fsdp` across hosts would leave the outputs sharded (not fetchable
    # on one host): ask for replicated outputs on the parameters' mesh.
    sharding = jax.tree.leaves(state)[0].sharding
    out = (
        jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        if isinstance(sharding, jax.sharding.NamedSharding)
        else None
    )

    @functools.partial(jax.jit, out_shardings=out)
    def encode(state, batch):
        m = nnx.merge(graphdef, state)
        img = m.encode_image(batch["image"])
        txt = m.encode_text(batch["input_ids"], batch["attention_mask"])
        if not with_context:
            return img, txt
        return img, txt, m.context.fuse_text(txt, encoded_metadata(m, batch["context"]))

    keys = ("image", "input_ids", "attention_mask") + (("context",) if with_context else ())
    parts = []
    n = len(examples)
    for start in range(0, n, batch_size):
        rows = [examples[i] for i in range(start, min(n, start + batch_size))]
        if with_context and any("context" not in r for r in rows):
            raise ValueError("embed(with_context=True): examples have no 'context' metadata")
        stack = jax.tree.map(lambda *xs: np.stack(xs), *[{k: r[k] for k in keys} for r in rows])
        parts.append([_host(x) for x in encode(state, stack)])
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


def has_metadata(examples) -> bool:
    """Whether any example's `"context"` arrays hold a present value (a category id > 0 or a
    `*_present` flag set)."""
    for i in range(len(examples)):
        for k, v in (examples[i].get("context") or {}).items():
            if k.endswith("_present") and bool(v):
                return True
            if not k.endswith(("_present", "_ids", "_mask")) and np.asarray(v).dtype.kind == "i":
                if int(v) > 0:
                    return True
    return False


def _host(x: jax.Array) -> np.ndarray:
    return np.asarray(x.addressable_data(0)) if x.is_fully_replicated else np.asarray(x)
