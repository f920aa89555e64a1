"""Large-batch stage 1 on 8 virtual CPU devices, compiled, never run: memory per device and FLOPs.

Run: `python bench/large_batch.py` (full-size BiomedCLIP; about 30-60 min on 2 CPU cores, mostly
XLA compiles; `--quick`: the tiny CLIP, a few minutes). For global batches 4,096 / 16,384 / 65,536
with a fixed per-device micro-batch (64), the train step is lowered on `ShapeDtypeStruct`s for:
exact accumulation (GradCache) with and without remat, the old independent accumulation (one loss
per micro-batch), and no accumulation. XLA `memory_analysis()` gives bytes per device; FLOPs per
step: the towers' from `cost_analysis()` of the same step with its micro-batch loops unrolled (XLA
counts a loop body once), at 1-3 micro-batches, extrapolated linearly (exact: they are linear in
the number of micro-batches), plus the loss's from the cost analysis of its dense form on the whole
batch (the streamed form does one more B×B pass, to recompute). Then the loss alone
(gather vs ring) at B = 65,536 / 262,144 / 1,048,576 from `bench/loss_memory.py`.
"""

from __future__ import annotations

import os
import sys

if "jax" not in sys.modules:  # 8 virtual CPU devices before jax is imported
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from flax import nnx  # noqa: E402

from mzs_jax import losses  # noqa: E402
from mzs_jax.models import clip  # noqa: E402
from mzs_jax.train import clip_task, defaults  # noqa: E402
from mzs_jax.train.mesh import batch_sharding, make_mesh, replicated, tree_shardings  # noqa: E402
from mzs_jax.train.step import make_gradient_fn, make_optimizer, with_compute_dtype  # noqa: E402

GIB = 1024**3
PER_DEVICE_MICRO = 64
VARIANTS = {  # name -> (accumulation, model.remat, micro-batches?)
    "exact": ("exact", "none", True),
    "exact + remat": ("exact", "full", True),
    "independent": ("independent", "none", True),
    "no accumulation": ("exact", "none", False),
}


def _config(model: str, loss: str, batch: int, k: int, accumulation: str, remat: str, mesh):
    c = defaults.clip_config(loss)
    c.model, c.batch_size, c.grad_accum, c.accumulation = model, batch, k, accumulation
    c.mesh.data, c.mesh.fsdp = mesh
    c.model_overrides = ml_collections.ConfigDict({"remat": remat})
    return c


def _linear_loss(img, txt, temperature):
    """Stands in for the contrastive loss when counting the towers' FLOPs (linear in the batch)."""
    return -jnp.mean(jnp.sum(img * txt, axis=-1)) / temperature


def _abstract_step(cfg, *, unroll: bool = False, towers_only: bool = False):
    """(jitted train step, abstract args) with the engine's shardings."""
    mesh = make_mesh(cfg.mesh)
    mc = clip_task.clip_model_config(cfg)
    model = nnx.eval_shape(lambda: clip.CLIP(with_compute_dtype(mc, cfg), rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rules = tuple(tuple(r) for r in cfg.sharding_rules)

    def sds(tree, shardings):
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
        )

    params = sds(params, tree_shardings(params, rules, mesh))
    rest = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), rest)
    tx = make_optimizer(cfg, params, 100)
    opt = jax.eval_shape(tx.init, params)
    opt = sds(opt, tree_shardings(opt, rules, mesh))
    b, size, length = int(cfg.batch_size), mc.vision.image_size, mc.text.context_length
    bs = batch_sharding(mesh)
    batch = {
        "image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32, sharding=bs),
        "input_ids": jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=bs),
        "attention_mask": jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=bs),
    }
    hp = losses.hparams_from_config(cfg.loss)
    loss = _linear_loss if towers_only else losses.make_global_loss(cfg.loss.name, mesh, **hp)
    gradients = make_gradient_fn(
        lambda m, x, r: clip_task.clip_loss(m, x, loss),
        graphdef,
        cfg,
        embed_fn=lambda m, x, r: clip_task.clip_embed(m, x),
        batch_loss_fn=lambda m, out, x: clip_task.clip_objective(m, out, x, loss),
        unroll=unroll,
    )
    rep = replicated(mesh)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)

    def step(params, rest, opt, batch, rng):
        loss_value, _, rest, grads = gradients(params, rest, batch, rng)
        updates, opt = tx.update(grads, opt, params)
        return loss_value, jax.tree.map(jnp.add, params, updates), opt

    args = (params, rest, opt, batch, key)
    options = clip.compiler_options(clip_task.clip_model_config(cfg)) or None
    return jax.jit(step, donate_argnums=(0, 2), compiler_options=options), args


def _memory(cfg) -> dict:
    step, args = _abstract_step(cfg)
    t0 = time.perf_counter()
    m = step.lower(*args).compile().memory_analysis()
    return {
        "argument GiB": m.argument_size_in_bytes / GIB,
        "temp GiB": m.temp_size_in_bytes / GIB,
        "total GiB": (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            + m.temp_size_in_bytes
            - m.alias_size_in_bytes
        )
        / GIB,
        "compile s": time.perf_counter() - t0,
    }


def _flops(cfg) -> float:
    """Towers + optimizer FLOPs of the step, micro-batch loops unrolled."""
    step, args = _abstract_step(cfg, unroll=True, towers_only=True)
    return float(step.lower(*args).compile().cost_analysis()["flops"])


@functools.cache
def _loss_flops(loss: str, batch: int, dim: int) -> float:
    """FLOPs of the loss's value and gradient in its dense form (no loops: XLA counts them all)."""
    hp = losses.hparams_from_config(defaults.clip_config(loss).loss)
    fn = jax.value_and_grad(lambda a, b, t: losses.get_loss(loss)(a, b, t, **hp), argnums=(0, 1, 2))
    x = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    t = jax.ShapeDtypeStruct((), jnp.float32)
    return float(jax.jit(fn).lower(x, x, t).compile().cost_analysis()["flops"])


@functools.cache
def _unrolled_flops(model, loss, accumulation, mesh, micro, k) -> float:
    return _flops(_config(model, loss, k * micro, k, accumulation, "none", mesh))


def _step_flops(model, loss, variant, batch, mesh, micro, dim) -> float:
    """FLOPs of one step on `batch`: the towers' (linear in the number of micro-batches, from
    unrolled steps of 1-3 micro-batches) plus the loss's on the whole batch (or per micro-batch)."""
    accumulation, _, accumulate = VARIANTS[variant]
    k = batch // micro
    if not accumulate:
        towers = k * _unrolled_flops(model, loss, accumulation, mesh, micro, 1)
    else:
        f2, f3 = (_unrolled_flops(model, loss, accumulation, mesh, micro, n) for n in (2, 3))
        towers = f2 + (k - 2) * (f3 - f2)
    if accumulation == "independent" and accumulate:
        return towers + k * _loss_flops(loss, micro, dim)
    return towers + _loss_flops(loss, batch, dim)


def tower_rows(model: str, loss: str, batches, mesh, variants=tuple(VARIANTS)) -> list[dict]:
    micro = PER_DEVICE_MICRO * 8
    rows = []
    for batch in batches:
        for variant in variants:
            accumulation, remat, accumulate = VARIANTS[variant]
            k = batch // micro if accumulate else 1
            cfg = _config(model, loss, batch, k, accumulation, remat, mesh)
            row = {"batch": batch, "variant": variant, "micro-batches": k}
            try:
                row.update(_memory(cfg))
            except Exception as e:  # a size XLA refuses to compile is a result, not a crash
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
            dim = clip.model_config(model).embed_dim
            row["TFLOP/step"] = _step_flops(model, loss, variant, batch, mesh, micro, dim) / 1e12
            rows.append(row)
            print(row, flush=True)
    return rows


def _table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny CLIP, smaller batches")
    parser.add_argument("--loss", default="cehnc")
    parser.add_argument("--mesh", default="1,8", help="data,fsdp (8 devices)")
    parser.add_argument("--batches", default="", help="comma-separated global batches")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}"
    )
    parser.add_argument("--no-loss-table", action="store_true", help="skip the loss-alone table")
    args = parser.parse_args(argv)
    mesh = tuple(int(x) for x in args.mesh.split(","))
    model = "tiny" if args.quick else "biomedclip"
    batches = (1024, 4096) if args.quick else (4096, 16384, 65536)
    if args.batches:
        batches = tuple(int(x) for x in args.batches.split(","))
    variants = tuple(v.strip() for v in args.variants.split(","))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    rows = tower_rows(model, args.loss, batches, mesh, variants)
    plain = {r["batch"]: r["TFLOP/step"] for r in rows if r["variant"] == "no accumulation"}
    for r in rows:
        if r["batch"] in plain:
            r["FLOPs vs plain"] = r["TFLOP/step"] / plain[r["batch"]]
    keys = ["batch", "variant", "micro-batches", "argument GiB", "temp GiB", "total GiB"]
    keys += ["TFLOP/step", "FLOPs vs plain", "compile s", "error"]
    out = [
        f"{model} train step ({args.loss}, AdamW), 8 virtual CPU devices, mesh data×fsdp = "
        f"{mesh[0]}×{mesh[1]}, {PER_DEVICE_MICRO} rows per device per micro-batch; memory per "
        "device from XLA `memory_analysis()`, never run.",
        "",
        _table(rows, keys),
    ]
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).with_name("loss_memory.py")
    spec = importlib.util.spec_from_file_location("bench_loss_memory", path)
    loss_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loss_memory)
    if hasattr(loss_memory, "loss_memory_rows") and not args.no_loss_table:
        big = (65536, 262144) if args.quick else (65536, 262144, 1048576)
        loss_rows = loss_memory.loss_memory_rows(big, ("gather", "ring"), tuple(losses.LOSSES))
        out += ["", "The loss alone (value and gradient, D = 512):", "", _table(loss_rows, list(
            loss_rows[0]))]  # fmt: skip
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
