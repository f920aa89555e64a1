"""Which contrastive loss learns hard negatives? The shipped phantom CLIP fine-tuned with every loss
of `mzs_jax.losses.LOSSES` on `phantom-hard` captions (pairs that differ in one attribute), over
5 training seeds; top-1/top-2 retrieval with 95 % CIs, t-tests and McNemar vs the pre-trained
model and vs InfoNCE, and a plot (`mzs_jax/pipeline/loss_quality*.py`, docs/losses.md).

    python bench/loss_quality.py --out /tmp/loss_quality [--quick] [--losses infonce cehnc]

Writes OUT/loss_quality.{md,json,png}; returns the Markdown section (`mzs bench` protocol).
About 10-15 minutes on 2 CPU cores; `--quick` (3 seeds, 60 steps, smaller sets: a smoke run
with too little training to rank the losses) about 3.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile


def main(argv=None) -> str:
    """Run the benchmark; returns the Markdown section."""
    import jax

    from mzs_jax.pipeline import loss_quality, loss_quality_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=None, help="default: a temporary folder")
    ap.add_argument("--quick", action="store_true", help="smoke run (see the module docstring)")
    ap.add_argument("--losses", nargs="*", default=None, help="default: every registered loss")
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    cfg = loss_quality.default_config(quick=args.quick)
    if args.losses:
        cfg.losses = tuple(args.losses)
    if args.seeds:
        cfg.seeds = tuple(args.seeds)
    if args.steps:
        cfg.steps = args.steps
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="loss_quality_"))
    if jax.config.jax_compilation_cache_dir is None:  # seeds after the first reuse the programs
        jax.config.update("jax_compilation_cache_dir", str(out / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    result = loss_quality.run(cfg, out / "runs")
    md = loss_quality_report.write(result, cfg, out)
    png = out / "loss_quality.png"
    return (
        md.replace(f"]({png.name})", f"]({png})")
        + f"\nWritten: {out}/loss_quality.{{md,json,png}}\n"
    )


if __name__ == "__main__":
    print(main())
