"""ROCO-protocol retrieval (paper §4.1, Table 1): top-1/top-2 image→text and text→image accuracy
in batches of 50 drawn from a shuffle, several seeds, mean ± std, ties broken at random (a constant
model scores chance); the `mzs eval-retrieval` command.
"""

from __future__ import annotations

import argparse
import csv
import functools
import pathlib

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
    img, txt = _check_pairs(img, txt)
    chunks = _chunks(len(img), batch, seed) if chunks is None else chunks
    per = [_hits(img[c], txt[c]) for c in chunks]
    return {k: np.concatenate([p[k] for p in per]) for k in METRICS}


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
    img, txt = _check_pairs(img, txt)
    rng = np.random.default_rng([tie_seed, seed])
    chunks = _chunks(len(img), batch, seed) if chunks is None else chunks
    per = [_hits(img[c], txt[c], rng) for c in chunks]
    return {k: np.concatenate([p[k] for p in per]) for k in METRICS}


def roco_retrieval(
    img: np.ndarray, txt: np.ndarray, *, batch: int = 50, seed: int = 0
) -> dict[str, float]:
    """Mean of the per-batch expected accuracies (= mean of `query_scores`)."""
    return {k: float(np.mean(v)) for k, v in query_scores(img, txt, batch=batch, seed=seed).items()}


def mcnemar_table(
    hits_a: dict[str, np.ndarray], hits_b: dict[str, np.ndarray], name_a: str, name_b: str
) -> str:
    """Markdown: per metric, McNemar of paired per-query hits of model a vs model b."""
    from mzs_jax.pipeline.stats import mcnemar

    lines = [
        f"McNemar, {name_a} vs {name_b} (paired per-query hits, seed-0 shuffle, "
        f"{len(hits_a[METRICS[0]])} queries; b = only {name_a} right, c = only {name_b} right)",
        "",
        "| metric | b | c | statistic | p | test |",
        "|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        r = mcnemar(hits_a[m], hits_b[m])
        lines.append(f"| {m} | {r.b} | {r.c} | {r.statistic:.3f} | {r.pvalue:.3g} | {r.method} |")
    return "\n".join(lines) + "\n"


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
        ctx = examples[i].get("context") or {}
        for k, v in ctx.items():
            if k.endswith("_present") and bool(v):
                return True
            if not k.endswith(("_present", "_ids", "_mask")) and np.asarray(v).dtype.kind == "i":
                if int(v) > 0:
                    return True
    return False


def _host(x: jax.Array) -> np.ndarray:
    return np.asarray(x.addressable_data(0)) if x.is_fully_replicated else np.asarray(x)


def write_tables(
    rows: list[tuple[str, dict[str, tuple[float, float]]]],
    out: pathlib.Path,
    *,
    seeds: int,
    batch: int,
    notes: str = "",
) -> str:
    """`out.csv` (one row per model, mean and std columns) and `out.md` (the table, then `notes`
    after a blank line if given); returns the Markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")])
        for name, res in rows:
            w.writerow([name] + [f"{v:.6f}" for m in METRICS for v in res[m]])
    md = [
        f"Retrieval (ROCO protocol: batches of {batch} from a shuffle, {seeds} seeds, "
        "mean ± std, %)",
        "",
        "| model | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for name, res in rows:
        md.append(
            f"| {name} | "
            + " | ".join(f"{100 * res[m][0]:.2f} ± {100 * res[m][1]:.2f}" for m in METRICS)
            + " |"
        )
    text = "\n".join(md) + "\n" + (f"\n{notes}" if notes else "")
    out.with_suffix(".md").write_text(text)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="caption data: a ROCO root, a MedPix index, 'phantom:N' or 'phantom-hard:N'",
    )
    parser.add_argument(
        "--source",
        choices=("roco", "medpix", "phantom", "phantom-hard"),
        default=None,
        help="data kind (default: phantom for 'phantom:N', roco for a folder, medpix for a file)",
    )
    parser.add_argument("--split", default="val", help="train | val | all (85/15 split)")
    parser.add_argument(
        "--tokenizer",
        default="",
        help="tokenizer dir or hub id (default: WORKDIR/tokenizer if present)",
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--name", default="", help="row name in the table (default: workdir)")
    parser.add_argument(
        "--baseline",
        default="",
        help="a second workdir: also scored, and compared per query with McNemar's test",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help="output stem (default: WORKDIR/retrieval -> .csv and .md)",
    )


def _embed_workdir(args, workdir, tokenizer: str | None) -> tuple:
    """`(img, txt, txt_with_context or None, note)` of `--data` with the model in `workdir`; the
    note says whether and how the metadata context was used."""
    from mzs_jax.train import checkpoint as ckpt
    from mzs_jax.train.clip_task import eval_examples

    model, model_config = ckpt.restore_model(workdir)
    ctx = getattr(model, "context", None) is not None
    examples = eval_examples(
        args.data,
        args.source,
        args.split,
        model_config,
        tokenizer=tokenizer,
        workdir=workdir,
        context=ctx,
    )
    if not ctx:
        return *embed(model, examples), None, f"{workdir}: no context encoder (images and text)"
    if not has_metadata(examples):
        note = f"{workdir}: context encoder present, but --data has no metadata: not used"
        return *embed(model, examples), None, note
    img, txt, txt_ctx = embed(model, examples, with_context=True)
    note = (
        f"{workdir}: context encoder fuses the metadata into the text side; rows without "
        "(the exported towers) and with context"
    )
    return img, txt, txt_ctx, note


def run(args) -> int:
    if args.workdir is None:
        raise ValueError("--workdir is required (a training workdir or one made by `mzs import`)")
    img, txt, txt_ctx, note = _embed_workdir(args, args.workdir, args.tokenizer or None)
    name = args.name or str(args.workdir)

    def score(i, t):
        return summarize(i, t, batch=args.batch, seeds=args.seeds)

    if txt_ctx is None:
        rows = [(name, score(img, txt))]
    else:
        rows = [(f"{name} (without context)", score(img, txt))]
        rows.append((f"{name} (with context)", score(img, txt_ctx)))
    notes = [f"Context: {note}."]
    if args.baseline:  # scored with its own workdir's tokenizer, without context
        b_img, b_txt, _, b_note = _embed_workdir(args, args.baseline, None)
        if len(b_img) != len(img):
            raise ValueError(f"--baseline {args.baseline}: {len(b_img)} pairs, not {len(img)}")
        rows.append((str(args.baseline), score(b_img, b_txt)))
        notes.append(f"Context: {b_note}; compared without context.")
        notes.append(
            mcnemar_table(
                query_hits(img, txt, batch=args.batch),
                query_hits(b_img, b_txt, batch=args.batch),
                rows[0][0],
                str(args.baseline),
            )
        )
    out = args.out or pathlib.Path(args.workdir) / "retrieval"
    text = write_tables(
        rows, out, seeds=args.seeds, batch=args.batch, notes="\n\n".join(notes).rstrip("\n") + "\n"
    )
    print(text, end="")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.md')} ({len(img)} pairs)")
    return 0
