"""Phantom generator speed: time to generate (and write as PNG/CSV) 1,000 2D samples.

Run: python bench/phantom_speed.py [--n 1000] [--size 64]   (goal: < 30 s on 2 cores)
"""

import argparse
import pathlib
import tempfile
import time

from mzs_jax.data import phantom, phantom_formats


def main(argv: list[str] | None = None) -> str:
    """Markdown table of generation rates (`--quick`: 100 samples)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    n = 100 if a.quick else a.n
    rows = ["| what | n | size | seconds | samples/s |", "|---|---|---|---|---|"]
    for kind in phantom.KINDS:
        t0 = time.perf_counter()
        phantom.generate(kind, n, seed=0, size=a.size)
        dt = time.perf_counter() - t0
        rows.append(f"| generate {kind} | {n} | {a.size} | {dt:.2f} | {n / dt:.1f} |")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        phantom_formats.write_roco(pathlib.Path(tmp), phantom.generate_captions(n, 0, a.size))
        dt = time.perf_counter() - t0
    rows.append(f"| captions generate + write ROCO | {n} | {a.size} | {dt:.2f} | {n / dt:.1f} |")
    rows.append(
        f"\nCaption set time / 30 s goal, scaled to 1,000 samples: {dt * 1000 / n / 30:.3f}"
    )
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
