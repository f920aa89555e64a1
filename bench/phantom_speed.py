"""Phantom generator speed: time to generate (and write as PNG/CSV) 1,000 2D samples.

Run: python bench/phantom_speed.py [--n 1000] [--size 64]   (goal: < 30 s on 2 cores)
"""

import argparse
import pathlib
import tempfile
import time

from mzs_jax.data import phantom, phantom_formats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    for kind in phantom.KINDS:
        t0 = time.perf_counter()
        phantom.generate(kind, a.n, seed=0, size=a.size)
        dt = time.perf_counter() - t0
        print(f"generate {kind:5s} n={a.n} size={a.size}: {dt:6.2f} s ({a.n / dt:7.1f} /s)")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        phantom_formats.write_roco(pathlib.Path(tmp), phantom.generate_captions(a.n, 0, a.size))
        dt = time.perf_counter() - t0
    print(
        f"captions generate+write ROCO n={a.n} size={a.size}: {dt:6.2f} s "
        f"(ratio to the 30 s goal: {dt / 30:.3f})"
    )


if __name__ == "__main__":
    main()
