"""grain input pipeline rate vs train step rate, measured in one run (stage 1, tiny CLIP).

Run: `python bench/input_pipeline.py [--quick]` or `mzs bench --only input_pipeline`.
The input side decodes phantom captions, tokenises and CLIP-normalises exactly as `mzs train-clip`
(`ClipTask.train_dataset` → `train.input.train_iterator`); the step side is the compiled train
step of `train.loop` on an already-placed batch. Ratio > 1: the input keeps the step fed.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import jax


def _config(n: int, batch: int, threads: int):
    from mzs_jax.train.defaults import clip_config

    c = clip_config("cehnc")
    c.model = "tiny"
    c.data.path = f"phantom:{n}"
    c.batch_size = batch
    c.data.num_threads = threads
    c.data.prefetch = 8
    return c


def measure(n: int, batch: int, threads: tuple[int, ...], batches: int, steps: int) -> dict:
    """Seconds per batch of the grain iterator (per thread count) and per compiled step."""
    from mzs_jax.train.clip_task import ClipTask
    from mzs_jax.train.input import steps_per_epoch, to_global, train_iterator
    from mzs_jax.train.loop import init_state
    from mzs_jax.train.mesh import batch_sharding, make_mesh
    from mzs_jax.train.step import make_train_step

    config = _config(n, batch, threads[0])
    with tempfile.TemporaryDirectory(prefix="mzs_bench_input_") as work:
        task = ClipTask(config, pathlib.Path(work))
        mesh = make_mesh(config.mesh)
        task.bind_mesh(mesh)
        ds = task.train_dataset(config)
        spe = steps_per_epoch(len(ds), batch)
        input_s = {}
        for t in threads:
            config.data.num_threads = t
            it = train_iterator(ds, config, num_epochs=batches // spe + 2)
            first = next(it)  # threads started, first batch decoded
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            input_s[t] = (time.perf_counter() - t0) / batches

        graphdef, tx, state = init_state(task, config, mesh, spe)
        step = jax.jit(make_train_step(task.loss_fn, graphdef, tx, config), donate_argnums=0)
        b = to_global(first, batch_sharding(mesh))
        t0 = time.perf_counter()
        compiled = step.lower(state, b).compile()
        compile_s = time.perf_counter() - t0
        state, m = compiled(state, b)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = compiled(state, b)
        jax.block_until_ready(m)
        step_s = (time.perf_counter() - t0) / steps
    return {"input_s": input_s, "step_s": step_s, "compile_s": compile_s}


def main(argv: list[str]) -> str:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    n, batch, batches, steps = (240, 32, 12, 5) if args.quick else (1200, 64, 40, 20)
    r = measure(n, batch, (1, 2), batches, steps)
    rows = [
        f"| {t} | {batch} | {batch / s:.0f} | {batch / r['step_s']:.0f} | "
        f"{r['step_s'] / s:.2f} | {r['compile_s']:.1f} |"
        for t, s in r["input_s"].items()
    ]
    return "\n".join(
        [
            f"Tiny CLIP on `phantom:{n}`, {len(jax.devices())}× {jax.devices()[0].device_kind}; "
            f"input over {batches} batches, step over {steps} steps"
            + (" (--quick: smaller set and fewer batches)." if args.quick else "."),
            "",
            "| grain threads | batch | input samples/s | step samples/s | input/step ratio "
            "| step compile s |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )


if __name__ == "__main__":
    import sys

    print(main(sys.argv[1:]))
