"""Per-device temporary memory of every contrastive loss, naive (B×B) vs streamed global form.

Run: `python bench/loss_memory.py` (≈3–6 min on 2 CPU cores; 8 virtual CPU devices).
Loss+gradient is compiled on `jax.ShapeDtypeStruct`s (never run) for B ∈ {1024, 4096, 16384,
65536}, D = 512; step time global/naive is measured at B = 4096 in the same run.
"""

from __future__ import annotations

import os
import sys

if "jax" not in sys.modules:  # set 8 virtual CPU devices before jax is imported
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from mzs_jax import losses  # noqa: E402

HPARAMS = {
    "infonce": {},
    "dcl": {},
    "hn_nce": {"beta": 0.5},
    "dhn_nce": {"beta1": 0.5, "beta2": 0.5},
    "cehnc": {"beta1": 0.5, "beta2": 0.5, "adaptive": True},
}
GIB = 1024**3


def _loss_fns(name: str, mesh, block_size: int | None):
    hp = HPARAMS[name]
    naive = jax.jit(
        jax.value_and_grad(lambda a, b, t: losses.get_loss(name)(a, b, t, **hp), argnums=(0, 1, 2))
    )
    glob = jax.jit(
        jax.value_and_grad(
            losses.make_global_loss(name, mesh, block_size=block_size, **hp), argnums=(0, 1, 2)
        )
    )
    return naive, glob


def _temp_bytes(fn, batch: int, dim: int, sharding, scalar) -> int:
    x = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=sharding)
    t = jax.ShapeDtypeStruct((), jnp.float32, sharding=scalar)
    return fn.lower(x, x, t).compile().memory_analysis().temp_size_in_bytes


def _unit(rng, batch, dim):
    x = rng.normal(size=(batch, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _step_time(fn, args, reps: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> str:
    """Compile every loss at every size, time B = --time-batch, return the Markdown report."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--block-size", type=int, default=0, help="0 → library default")
    p.add_argument("--time-batch", type=int, default=4096)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--losses", nargs="+", default=list(HPARAMS), choices=list(HPARAMS))
    args = p.parse_args(argv)
    n_dev = jax.device_count()
    mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows_sh, scalar_sh = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    block = args.block_size or None

    lines = [
        f"Per-device temporary memory of loss+grad (GiB), D={args.dim}, {n_dev} "
        f"{jax.devices()[0].platform} devices, block_size={block or 'default'}; "
        "naive = dense B×B loss under jit on the same sharded inputs.",
        "",
        "| loss | " + " | ".join(f"B={b} naive | B={b} global" for b in args.sizes) + " |",
        "|---|" + "---|---|" * len(args.sizes),
    ]
    worst = 0.0
    for name in args.losses:
        naive, glob = _loss_fns(name, mesh, block)
        cells = []
        for b in args.sizes:
            nb = _temp_bytes(naive, b, args.dim, rows_sh, scalar_sh) / GIB
            gb = _temp_bytes(glob, b, args.dim, rows_sh, scalar_sh) / GIB
            if b == max(args.sizes):
                worst = max(worst, gb)
            cells += [f"{nb:.3f}", f"{gb:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Largest global-form figure at B={max(args.sizes)}: {worst:.3f} GiB/device.", ""]

    rng = np.random.default_rng(0)
    tb = args.time_batch
    img = jax.device_put(_unit(rng, tb, args.dim), rows_sh)
    txt = jax.device_put(_unit(rng, tb, args.dim), rows_sh)
    tau = jax.device_put(jnp.float32(0.07), scalar_sh)
    lines += [
        f"Step time of loss+grad at B={tb} (median of {args.reps}, s):",
        "",
        "| loss | naive | global | global/naive |",
        "|---|---|---|---|",
    ]
    for name in args.losses:
        naive, glob = _loss_fns(name, mesh, block)
        tn = _step_time(naive, (img, txt, tau), args.reps)
        tg = _step_time(glob, (img, txt, tau), args.reps)
        lines.append(f"| {name} | {tn:.4f} | {tg:.4f} | {tg / tn:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
