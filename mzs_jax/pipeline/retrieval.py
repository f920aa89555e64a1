"""ROCO-protocol retrieval (paper §4.1, Table 1): top-1/top-2 image→text and text→image accuracy
in batches of 50 drawn from a shuffle, several seeds, mean ± std, ties broken at random (a constant
model scores chance); the `mzs eval-retrieval` command.
"""

from __future__ import annotations

import argparse
import csv
import pathlib

import numpy as np

from mzs_jax.train.retrieval_scores import (  # noqa: F401 - re-exported: the public names
    METRICS,
    _hits,
    batch_retrieval,
    embed,
    has_metadata,
    query_hits,
    query_scores,
    roco_retrieval,
    summarize,
)


def mcnemar_table(
    hits_a: dict[str, np.ndarray], hits_b: dict[str, np.ndarray], name_a: str, name_b: str
) -> str:
    """Markdown: per metric, McNemar of paired per-query hits of model a vs model b."""
    from mzs_jax.pipeline.report import to_markdown
    from mzs_jax.pipeline.stats import mcnemar

    title = (
        f"McNemar, {name_a} vs {name_b} (paired per-query hits, seed-0 shuffle, "
        f"{len(hits_a[METRICS[0]])} queries; b = only {name_a} right, c = only {name_b} right)"
    )
    body = []
    for m in METRICS:
        r = mcnemar(hits_a[m], hits_b[m])
        body.append([m, str(r.b), str(r.c), f"{r.statistic:.3f}", f"{r.pvalue:.3g}", r.method])
    header = ["metric", "b", "c", "statistic", "p", "test"]
    return to_markdown([("p", title), ("table", header, body)])


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
    from mzs_jax.pipeline.report import to_markdown

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")])
        for name, res in rows:
            w.writerow([name] + [f"{v:.6f}" for m in METRICS for v in res[m]])
    title = (
        f"Retrieval (ROCO protocol: batches of {batch} from a shuffle, {seeds} seeds, "
        "mean ± std, %)"
    )
    body = [
        [name, *(f"{100 * res[m][0]:.2f} ± {100 * res[m][1]:.2f}" for m in METRICS)]
        for name, res in rows
    ]
    text = to_markdown([("p", title), ("table", ["model", *METRICS], body)])
    text += f"\n{notes}" if notes else ""
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
    note = (
        f"{workdir}: context encoder fuses the metadata into the text side; rows without "
        "(the exported towers) and with context"
    )
    return *embed(model, examples, with_context=True), note


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
