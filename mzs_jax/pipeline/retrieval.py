"""ROCO-protocol retrieval (paper §4.1, Table 1): top-1/top-2 image→text and text→image accuracy
in batches of 50 drawn from a shuffle, several seeds, mean ± std; the `mzs eval-retrieval` command.
"""

from __future__ import annotations

import argparse
import csv
import functools
import pathlib

import jax
import numpy as np

METRICS = ("i2t_top1", "i2t_top2", "t2i_top1", "t2i_top2")


def _hits(img: np.ndarray, txt: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query top-k hits (bool `(N,)`) within one batch of paired `(N, D)` embeddings."""
    sim = img @ txt.T
    target = np.arange(sim.shape[0])
    out = {}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        # Rank of the true partner: how many candidates score strictly higher.
        rank = np.sum(s > s[target, target][:, None], axis=1)
        out[f"{name}_top1"] = rank < 1
        out[f"{name}_top2"] = rank < 2
    return out


def batch_retrieval(img: np.ndarray, txt: np.ndarray) -> dict[str, float]:
    """Top-k accuracy within one batch of paired `(N, D)` embeddings (row i of each is a pair)."""
    return {k: float(np.mean(v)) for k, v in _hits(img, txt).items()}


def query_hits(
    img: np.ndarray, txt: np.ndarray, *, batch: int = 50, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per-query hits `(M,)` under the ROCO protocol: shuffle the pairs with `seed`, split into
    batches of `batch` (the last partial batch is dropped unless it is the only one); query j is
    the j-th pair of the shuffled order, so two models' hits pair up (McNemar)."""
    img, txt = np.asarray(img, np.float64), np.asarray(txt, np.float64)
    if img.shape != txt.shape or img.ndim != 2 or len(img) < 2:
        raise ValueError(
            f"retrieval needs paired (N>=2, D) embeddings, got {img.shape}, {txt.shape}"
        )
    order = np.random.default_rng(seed).permutation(len(img))
    size = min(batch, len(img))
    chunks = [order[i : i + size] for i in range(0, len(order) - size + 1, size)]
    per = [_hits(img[c], txt[c]) for c in chunks]
    return {k: np.concatenate([p[k] for p in per]) for k in METRICS}


def roco_retrieval(
    img: np.ndarray, txt: np.ndarray, *, batch: int = 50, seed: int = 0
) -> dict[str, float]:
    """Mean of the per-batch accuracies (= mean of `query_hits`, the batches being equal)."""
    return {k: float(np.mean(v)) for k, v in query_hits(img, txt, batch=batch, seed=seed).items()}


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


def embed(model, examples, *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """`(img, txt)` embeddings `(N, E)` of a sequence of examples with `image`, `input_ids`,
    `attention_mask`; runs jitted, fully replicated (works in multi-process runs)."""
    from flax import nnx

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
    def encode(state, images, ids, mask):
        m = nnx.merge(graphdef, state)
        return m.encode_image(images), m.encode_text(ids, mask)

    imgs, txts = [], []
    n = len(examples)
    for start in range(0, n, batch_size):
        rows = [examples[i] for i in range(start, min(n, start + batch_size))]
        stack = {
            k: np.stack([r[k] for r in rows]) for k in ("image", "input_ids", "attention_mask")
        }
        i, t = encode(state, stack["image"], stack["input_ids"], stack["attention_mask"])
        imgs.append(_host(i))
        txts.append(_host(t))
    return np.concatenate(imgs), np.concatenate(txts)


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
        "--data", required=True, help="caption data: a ROCO root, a MedPix index, or 'phantom:N'"
    )
    parser.add_argument(
        "--source",
        choices=("roco", "medpix", "phantom"),
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


def _embed_workdir(args, workdir, tokenizer: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Image and text embeddings of `--data` with the model in `workdir`."""
    from mzs_jax.train import checkpoint as ckpt
    from mzs_jax.train.clip_task import eval_examples

    model, model_config = ckpt.restore_model(workdir)
    examples = eval_examples(
        args.data, args.source, args.split, model_config, tokenizer=tokenizer, workdir=workdir
    )
    return embed(model, examples)


def run(args) -> int:
    if args.workdir is None:
        raise ValueError("--workdir is required (a training workdir or one made by `mzs import`)")
    img, txt = _embed_workdir(args, args.workdir, args.tokenizer or None)
    rows = [
        (args.name or str(args.workdir), summarize(img, txt, batch=args.batch, seeds=args.seeds))
    ]
    notes = ""
    if args.baseline:  # scored with its own workdir's tokenizer
        b_img, b_txt = _embed_workdir(args, args.baseline, None)
        if len(b_img) != len(img):
            raise ValueError(f"--baseline {args.baseline}: {len(b_img)} pairs, not {len(img)}")
        rows.append(
            (str(args.baseline), summarize(b_img, b_txt, batch=args.batch, seeds=args.seeds))
        )
        notes = mcnemar_table(
            query_hits(img, txt, batch=args.batch),
            query_hits(b_img, b_txt, batch=args.batch),
            rows[0][0],
            rows[1][0],
        )
    out = args.out or pathlib.Path(args.workdir) / "retrieval"
    print(write_tables(rows, out, seeds=args.seeds, batch=args.batch, notes=notes), end="")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.md')} ({len(img)} pairs)")
    return 0
