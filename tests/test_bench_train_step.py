"""`bench/train_step.py --quick` (tiny CLIP): per batch size a finite JAX/torch ratio and MFU, the
same losses on both sides from the same weights and batch, a bf16 row, and bucketing rows whose
losses equal the padded batch's."""

import math
import re

from mzs_jax import bench_cli


def _rows(md: str) -> dict[tuple[int, str], list[float]]:
    out = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 7 and cells[0].isdigit():
            out[(int(cells[0]), cells[1])] = [float(x) for x in cells[5].split(",")]
    return out


def test_quick_train_step_bench_reports_ratio_mfu_bf16_and_bucketing():
    md = bench_cli.run_script(
        "train_step", ["--quick", "--steps", "2", "--batch", "4", "6", "--buckets", "16", "24"]
    )
    ratios = [float(x) for x in re.findall(r"JAX / torch samples/s ratio: ([0-9.]+)×", md)]
    mfus = [float(x) for x in re.findall(r"MFU: JAX ([0-9.]+) %", md)]
    assert len(ratios) == len(mfus) == 2, md
    assert all(math.isfinite(r) and r > 0 for r in ratios), md
    assert all(0 < m <= 100 for m in mfus), md
    rows = _rows(md)
    for batch in (4, 6):
        jax_fp32 = next(
            v for (b, n), v in rows.items() if b == batch and n.startswith("JAX fp32 (")
        )
        torch = next(v for (b, n), v in rows.items() if b == batch and n.startswith("torch"))
        bf16 = next(v for (b, n), v in rows.items() if b == batch and n.startswith("JAX bf16"))
        # Same weights and batch: the same loss trajectory on both sides; bf16 close to fp32.
        assert len(jax_fp32) == len(torch) == 3, md
        assert all(abs(a - b) < 2e-3 for a, b in zip(jax_fp32, torch, strict=True)), md
        assert all(abs(a - b) < 2e-2 * abs(b) for a, b in zip(bf16, jax_fp32, strict=True)), md
        padded = next(v for (b, n), v in rows.items() if b == batch and n.endswith("padded"))
        cut = next(v for (b, n), v in rows.items() if b == batch and "bucket" in n)
        assert all(abs(a - b) < 1e-5 for a, b in zip(padded, cut, strict=True)), md
    assert "MFU" in md and "bfloat16 matmul" in md, md
