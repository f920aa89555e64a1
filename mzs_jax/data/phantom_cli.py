"""`mzs make-phantoms`: write procedural phantoms in the real dataset layouts (docs/data.md)."""

from __future__ import annotations

import argparse
import pathlib
import time

from mzs_jax.data import phantom, phantom_formats
from mzs_jax.progress import Progress

FORMAT_OF_KIND = {
    "xray": "COVID-QU-Ex PNG tree",
    "mri": "ACDC NIfTI folders",
    "ct": "Synapse (TransUNet npz/h5)",
    "captions": "ROCO-like images + captions.csv",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=pathlib.Path, required=True, help="output directory")
    parser.add_argument(
        "--kind",
        choices=sorted(FORMAT_OF_KIND),
        required=True,
        help="; ".join(f"{k}: {v}" for k, v in FORMAT_OF_KIND.items()),
    )
    parser.add_argument(
        "--n", type=int, default=100, help="images (xray, captions) or patients/cases (mri, ct)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument(
        "--slices", type=int, help="slices per volume (mri default 8, ct default 12)"
    )


def make(
    out: pathlib.Path,
    kind: str,
    n: int,
    seed: int = 0,
    size: int = 64,
    slices: int | None = None,
    progress: bool = True,
) -> pathlib.Path:
    """Write `n` phantoms of `kind` under `out`; returns `out`."""
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if size < 32:
        raise ValueError(f"--size must be >= 32 pixels, got {size}")
    if slices is not None and slices < 1:
        raise ValueError(f"--slices must be >= 1, got {slices}")
    out.mkdir(parents=True, exist_ok=True)
    bar = Progress(n, f"make-phantoms {kind}", enabled=progress)
    if kind == "captions":
        phantom_formats.write_roco(out, phantom.generate_captions(n, seed, size), tick=bar.update)
    elif kind == "xray":
        phantom_formats.write_covidqu(
            out, phantom.generate_xray(n, seed, size), seed, tick=bar.update
        )
    elif kind == "mri":
        phantom_formats.write_acdc(out, n, seed, size, slices or 8, tick=bar.update)  # None: 8
    elif kind == "ct":
        phantom_formats.write_synapse(out, n, seed, size, slices or 12, tick=bar.update)  # None: 12
    else:
        raise ValueError(f"--kind must be one of {sorted(FORMAT_OF_KIND)}, got {kind!r}")
    return out


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    make(args.out, args.kind, args.n, args.seed, args.size, args.slices)
    dt = time.perf_counter() - t0
    print(
        f"wrote {args.n} {args.kind} phantoms ({FORMAT_OF_KIND[args.kind]}) to {args.out} "
        f"in {dt:.1f} s"
    )
    return 0
