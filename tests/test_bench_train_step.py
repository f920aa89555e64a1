"""`bench/train_step.py --quick` (tiny CLIP): the Markdown holds a finite JAX/torch ratio and MFU,
and both backends report the same losses from the same weights and batch."""

import math
import re

from mzs_jax import bench_cli


def test_quick_train_step_bench_reports_finite_ratio_and_mfu():
    md = bench_cli.run_script("train_step", ["--quick", "--steps", "2"])
    ratio = float(re.search(r"JAX / torch samples/s ratio: ([0-9.]+)×", md).group(1))
    mfu = float(re.search(r"MFU: JAX ([0-9.]+) %", md).group(1))
    assert math.isfinite(ratio) and ratio > 0, md
    assert math.isfinite(mfu) and 0 < mfu <= 100, md
    rows = {
        r.split("|")[1].split()[0]: [float(x) for x in r.split("|")[5].split(",")]
        for r in md.splitlines()
        if r.startswith("| JAX") or r.startswith("| torch")
    }
    # Same weights and batch: the same loss trajectory on both sides.
    assert len(rows["JAX"]) == len(rows["torch"]) == 3, md
    assert all(abs(a - b) < 2e-3 for a, b in zip(rows["JAX"], rows["torch"], strict=True)), md
