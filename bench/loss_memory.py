"""Per-device temporary memory of every loss alone (value and gradient), gather vs ring form.

Run: `python bench/loss_memory.py` (≈3–6 min on 2 CPU cores; 8 virtual CPU devices). The loss and
its gradient w.r.t. img, txt, τ (and SigLIP's bias) are compiled on `jax.ShapeDtypeStruct`s, never
run, at B = 65,536 / 262,144 / 1,048,576, D = 512; XLA's `memory_analysis` gives the figures.
`--time-batch N` also times both forms at B = N in the same run (a quiet machine only).
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

GIB = 1024**3
GOAL_GIB = 1.25  # ring form at B = 1,048,576 on 8 devices, every loss
BATCHES = (65_536, 262_144, 1_048_576)
FORMS = ("dense", "gather", "ring")  # dense: the B×B loss under jit on the same sharded inputs


def _mesh():
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _value_and_grad(name: str, form: str, mesh, block_size: int | None):
    """jit(value_and_grad) of loss `name` (config.loss defaults) w.r.t. img, txt, τ[, bias]."""
    cfg = losses.default_config()
    cfg.name = name
    hp = losses.hparams_from_config(cfg)
    if form == "dense":
        fn = losses.loss_from_config(cfg)
    else:
        fn = losses.make_global_loss(name, mesh, form=form, block_size=block_size, **hp)
    n_args = 4 if losses.LOSSES[name].learned_bias else 3
    return jax.jit(jax.value_and_grad(fn, argnums=tuple(range(n_args)))), n_args


def _arg_specs(mesh, batch: int, dim: int, n_args: int):
    rows, scalar = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    x = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=rows)
    t = jax.ShapeDtypeStruct((), jnp.float32, sharding=scalar)
    return (x, x) + (t,) * (n_args - 2)


def loss_memory_rows(
    batches=BATCHES,
    forms=("gather", "ring"),
    loss_names=losses.LOSS_NAMES,
    *,
    dim: int = 512,
    block_size: int | None = None,
) -> list[dict]:
    """One dict per (loss, form, batch): XLA's per-device memory of the compiled loss+gradient
    (`temp_bytes`, `argument_bytes`, `output_bytes`) on all devices of this process (1-D mesh)."""
    mesh = _mesh()
    rows = []
    for name in loss_names:
        for form in forms:
            fn, n_args = _value_and_grad(name, form, mesh, block_size)
            for batch in batches:
                t0 = time.perf_counter()
                mem = fn.lower(*_arg_specs(mesh, batch, dim, n_args)).compile().memory_analysis()
                rows.append(
                    dict(
                        loss=name, form=form, batch=batch, dim=dim, devices=mesh.size,
                        temp_bytes=mem.temp_size_in_bytes,
                        argument_bytes=mem.argument_size_in_bytes,
                        output_bytes=mem.output_size_in_bytes,
                        compile_s=time.perf_counter() - t0,
                    )
                )  # fmt: skip
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Loss × (batch, form) table of temp GiB per device."""
    cols = sorted({(r["batch"], FORMS.index(r["form"]), r["form"]) for r in rows})
    cell = {(r["loss"], r["batch"], r["form"]): r["temp_bytes"] / GIB for r in rows}
    names = list(dict.fromkeys(r["loss"] for r in rows))
    lines = [
        "| loss | " + " | ".join(f"B={b:,} {f}" for b, _, f in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name in names:
        lines.append(
            f"| {name} | " + " | ".join(f"{cell[name, b, f]:.3f}" for b, _, f in cols) + " |"
        )
    return "\n".join(lines)


def goal_line(rows: list[dict]) -> str:
    top = max(r["batch"] for r in rows)
    ring = [r for r in rows if r["form"] == "ring" and r["batch"] == top]
    if not ring or top != BATCHES[-1]:
        return f"(goal not evaluated: it is stated for the ring form at B = {BATCHES[-1]:,})"
    worst = max(r["temp_bytes"] for r in ring) / GIB
    verdict = "met" if worst <= GOAL_GIB else "NOT met"
    return (
        f"Goal (ring form, B = {top:,}, {ring[0]['devices']} devices: ≤ {GOAL_GIB} GiB temp per "
        f"device for every loss): {verdict}, largest {worst:.3f} GiB."
    )


def step_times(batch: int, loss_names, dim: int, reps: int, block_size=None) -> str:
    """Median seconds of loss+gradient per form at B = `batch`, measured here, and ring/gather."""
    mesh, rng = _mesh(), np.random.default_rng(0)
    rows_sh, sc = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    emb = [jax.device_put(unit(rng.normal(size=(batch, dim))).astype(np.float32), rows_sh)]
    emb.append(jax.device_put(unit(rng.normal(size=(batch, dim))).astype(np.float32), rows_sh))
    lines = ["| loss | gather (s) | ring (s) | ring/gather |", "|---|---|---|---|"]
    for name in loss_names:
        t = {}
        for form in ("gather", "ring"):
            fn, n_args = _value_and_grad(name, form, mesh, block_size)
            args = (
                *emb,
                *(jax.device_put(jnp.float32(v), sc) for v in (0.07, -10.0)[: n_args - 2]),
            )
            jax.block_until_ready(fn(*args))
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times.append(time.perf_counter() - t0)
            t[form] = float(np.median(times))
        lines.append(
            f"| {name} | {t['gather']:.4f} | {t['ring']:.4f} | {t['ring'] / t['gather']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--forms", nargs="+", default=["gather", "ring"], choices=FORMS)
    p.add_argument(
        "--losses", nargs="+", default=list(losses.LOSS_NAMES), choices=losses.LOSS_NAMES
    )
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--block-size", type=int, default=0, help="0 → library default (1024)")
    p.add_argument("--time-batch", type=int, default=0, help="also time both forms at this B")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="B = 4,096 / 16,384 only")
    args = p.parse_args(argv)
    sizes = [4096, 16384] if args.quick else args.sizes
    rows = loss_memory_rows(
        sizes, args.forms, args.losses, dim=args.dim, block_size=args.block_size or None
    )
    dev = jax.devices()[0].platform
    out = [
        f"Per-device temporary memory of loss + gradient (GiB; XLA memory_analysis, compiled, not "
        f"run), D = {args.dim}, {rows[0]['devices']} {dev} devices, tile "
        f"{args.block_size or 'default'}; arguments and outputs (the sharded embeddings and their "
        "gradients) are extra.",
        "",
        markdown_table(rows),
        "",
        goal_line(rows),
    ]
    if args.time_batch:
        out += ["", f"Step time of loss+gradient at B = {args.time_batch:,} (median of "
                f"{args.reps}, s; meaningful only on a quiet machine):", "",
                step_times(args.time_batch, args.losses, args.dim, args.reps,
                           args.block_size or None)]  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
