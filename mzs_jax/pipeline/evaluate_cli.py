"""`mzs evaluate`: score a prediction folder against ground truth, summarise, optionally report.

Lives apart from `evaluate` so that the metrics module does not import the report that reads it.
"""

from __future__ import annotations

import pathlib

from mzs_jax.pipeline import report
from mzs_jax.pipeline.evaluate import (
    MISSING,
    compare,
    evaluate_dirs,
    parse_classes,
    read_csv,
    summarize,
    with_class_mean,
    write_csv,
    write_summary,
)
from mzs_jax.pipeline.metrics import NSD_TOLERANCE
from mzs_jax.pipeline.spacing import parse_spacing


def add_arguments(parser) -> None:
    parser.add_argument(
        "--pred",
        type=pathlib.Path,
        help="predicted masks: <id>.png|.nii.gz|.npy, optional soft maps <id>_prob.npy",
    )
    parser.add_argument("--gt", type=pathlib.Path, help="ground-truth label maps <id>.*")
    parser.add_argument(
        "--out", type=pathlib.Path, help="per-case CSV (default WORKDIR/metrics.csv)"
    )
    parser.add_argument("--append", action="store_true", help="append rows to an existing CSV")
    parser.add_argument("--method", default="method", help="method name written in the CSV")
    parser.add_argument("--dataset", default="dataset", help="dataset name written in the CSV")
    parser.add_argument("--seed", default="0", help="seed / run id written in the CSV")
    parser.add_argument("--classes", help='"1,2,3" or "1=RV,2=MYO,3=LV" (default: GT labels)')
    parser.add_argument(
        "--nsd-tolerance",
        type=float,
        default=NSD_TOLERANCE,
        help="NSD tolerance in mm (NIfTI spacing) or pixels (PNG/.npy); default %(default)s",
    )
    parser.add_argument(
        "--spacing",
        help='voxel size per array axis for NSD/HD95, e.g. "1.5,0.7,0.7" (default: NIfTI header)',
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="paired t-test of method A vs B on the CSV's shared cases",
    )
    parser.add_argument("--report", type=pathlib.Path, help="render a report into this folder")
    parser.add_argument(
        "--missing",
        choices=MISSING,
        default="error",
        help="a GT case without a prediction: error (default); zero = scored as an empty mask; "
        "skip = left out, counted as skipped in the summary",
    )


def run(args) -> int:
    out = args.out or (args.workdir / "metrics.csv" if args.workdir else None)
    if out is None:
        raise ValueError("--out (or --workdir) is required")
    if args.pred is not None or args.gt is not None:
        if args.pred is None or args.gt is None:
            raise ValueError("--pred and --gt go together")
        classes, names = parse_classes(args.classes)
        rows = evaluate_dirs(
            args.pred,
            args.gt,
            method=args.method,
            dataset=args.dataset,
            seed=args.seed,
            classes=classes,
            class_names=names,
            tolerance=args.nsd_tolerance,
            spacing=parse_spacing(args.spacing),
            missing=args.missing,
        )
        write_csv(rows, out, append=args.append)
        print(f"wrote {len(rows)} rows to {out}")
    rows = with_class_mean(read_csv(out))
    summary = summarize(rows)
    summary_path = out.with_name(out.stem + "_summary.csv")
    write_summary(summary, summary_path)
    for s in summary:
        print(
            f"{s['method']:>16} {s['dataset']:>10} {s['class']:>8} {s['metric']:>5}: "
            f"cases {s['case_mean']:.4f} ± {s['case_std']:.4f} (n={s['n_cases']}, "
            f"skipped {s['n_skipped']}, NaN {s['n_nan']})  "
            f"seeds {s['seed_mean']:.4f} ± {s['seed_std']:.4f} (n={s['n_seeds']})"
        )
    print(f"wrote {summary_path}")
    if args.compare:
        compare(rows, *args.compare, source=out)
    if args.report:
        path = report.write_report(out, args.report, title=f"Evaluation of {out.name}")
        print(f"wrote {path}")
    return 0
