"""Ablation of the CPU train-step changes of docs/performance.md, one JAX fp32 step per arm.

    python bench/train_step_ablation.py [--batch 12] [--steps 3] [--arm all]

Each arm runs in its own process (the host-malloc setting is per process and must precede JAX):
`all` (as shipped), `system-malloc` (`MZS_HOST_MALLOC=system`), `3d-linear` (Linear layers on
`(B, L, W)` activations, as before the flattening), `full-last-layer` (both towers' last layer
over every token). Prints s/step (median of the timed steps), minor page faults and kernel CPU
seconds per step, and the step's FLOPs, as one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

ARMS = ("all", "system-malloc", "3d-linear", "full-last-layer")


def _undo(arm: str) -> None:
    """Put back the pre-change code path for `arm` (the others stay as shipped)."""
    from mzs_jax.models import bert, precision, vit

    if arm == "3d-linear":
        three_d = lambda x, k: precision.mixed_einsum("...i,io->...o", x, k)  # noqa: E731
        precision.flat_matmul = vit.flat_matmul = three_d
    if arm == "full-last-layer":
        vit.VisionTransformer.__call__ = lambda self, x: self.project(
            self.forward_features(x)[0][:, 0]
        )
        bert.TextTower.__call__ = lambda self, i, a: self.proj_2(
            vit.gelu(self.proj_0(self.hidden_states(i, a)[:, 0]))
        )


def _child(arm: str, batch: int, steps: int) -> dict:
    from mzs_jax import host_memory

    said = host_memory.keep_freed_memory()  # before JAX loads
    import train_step as ts

    from mzs_jax.train import clip_task

    _undo(arm)
    config = ts._config("biomedclip", batch)
    r = ts._time_jax(config, ts._batch(clip_task.clip_model_config(config), batch), 1, steps)
    return dict(
        arm=arm,
        malloc=said,
        s=r["times"],
        faults=r["faults"],
        kernel=r["kernel_s"],
        flops=r["flops"],
    )


def main(argv: list[str]) -> str:
    p = argparse.ArgumentParser(prog="bench/train_step_ablation.py")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--arm", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return json.dumps(_child(a.child, a.batch, a.steps))
    lines = [
        f"| arm (batch {a.batch}, JAX fp32) | s/step (median) | timed steps (s) "
        "| minor faults/step | kernel CPU s/step | GFLOP/step |",
        "|---|---|---|---|---|---|",
    ]
    for arm in a.arm:
        env = dict(os.environ, MZS_HOST_MALLOC="system" if arm == "system-malloc" else "keep")
        cmd = [sys.executable, __file__, "--batch", str(a.batch), "--steps", str(a.steps)]
        out = subprocess.run([*cmd, "--child", arm], env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"arm {arm} failed (rc {out.returncode}):\n{out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        lines.append(
            f"| {arm} | {statistics.median(r['s']):.2f} | {', '.join(f'{t:.2f}' for t in r['s'])} "
            f"| {statistics.median(r['faults']):,.0f} | {statistics.median(r['kernel']):.2f} "
            f"| {r['flops'] / 1e9:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
