"""Samples/s of the BiomedCLIP stage 1 train step (paper §3.1): JAX engine vs open_clip + torch.

    python bench/train_step.py [--quick] [--model biomedclip|tiny] [--batch 4] [--steps 3]
JAX: the engine's own jitted step (`train/loop.init_state` + `train/step.make_train_step`, loss
`train/clip_task.clip_loss`); torch: `torch_bridge.clip.build_open_clip` + `torch.optim.AdamW`.
Same random weights (the JAX init exported to open_clip), same batch, InfoNCE, fp32, same AdamW
hyperparameters, dropout off on both sides. MFU = FLOPs per step from XLA's `cost_analysis()` of
the compiled JAX step ÷ (median step time × peak f32 matmul FLOP/s measured in the same run).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # profile_tables


def _config(model: str, batch: int):
    from mzs_jax.train.defaults import clip_config

    c = clip_config("infonce")
    c.model = model
    c.batch_size = batch
    c.mesh.data, c.mesh.fsdp = 1, 1  # one device: the same hardware torch gets
    c.loss.global_batch = False
    return c


def _batch(mc, batch: int, seed: int = 0) -> dict:
    """Random normalised images and token ids of random lengths, padded with 0 (BiomedCLIP pad)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    s, length = mc.vision.image_size, mc.text.context_length
    ids = rng.integers(1, mc.text.vocab_size, (batch, length)).astype(np.int32)
    lengths = rng.integers(max(2, length // 8), length + 1, batch)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return {
        "image": rng.standard_normal((batch, s, s, 3)).astype(np.float32),
        "input_ids": ids * mask,
        "attention_mask": mask,
    }


def _analytic_flops(mc, batch: int) -> float:
    """Matmul FLOPs of one train step: 3 × forward (2·m·n·k per matmul, attention included)."""
    v, t = mc.vision, mc.text
    tv = 1 + (v.image_size // v.patch_size) ** 2
    vit = 2 * (tv - 1) * v.patch_size**2 * 3 * v.width + 2 * v.width * mc.embed_dim
    vit += v.layers * (2 * tv * (4 * v.width**2 + 2 * v.width * v.mlp_dim) + 4 * tv**2 * v.width)
    tl = t.context_length
    per_layer = 2 * tl * (4 * t.width**2 + 2 * t.width * t.intermediate) + 4 * tl**2 * t.width
    txt = t.layers * per_layer
    txt += 2 * (t.width * t.proj_hidden + t.proj_hidden * mc.embed_dim)
    return 3.0 * batch * (vit + txt)


def _peak_matmul(n: int, reps: int) -> float:
    """Best-of-`reps` FLOP/s of a jitted (n, n) @ (n, n) float32 matmul on the default device."""
    import jax
    import jax.numpy as jnp

    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (n, n), jnp.float32)
    y = jax.random.normal(ky, (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(x, y).block_until_ready()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        f(x, y).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def _flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    flops = float((cost or {}).get("flops", float("nan")))
    if not flops > 0:
        raise RuntimeError(f"XLA cost_analysis() gave no FLOP count: {cost}")
    return flops


def _time_jax(config, batch_np, warmup, steps, weights_path: pathlib.Path, profile_dir=None):
    import jax
    from flax import nnx

    from mzs_jax import convert, losses
    from mzs_jax.models.clip import CLIP
    from mzs_jax.train import clip_task, loop
    from mzs_jax.train.input import to_global
    from mzs_jax.train.mesh import batch_sharding, make_mesh
    from mzs_jax.train.step import make_train_step

    mc = clip_task.clip_model_config(config)

    class _Task:
        model_config = mc

        def build_model(self, rngs):
            return CLIP(mc, rngs=rngs)

    mesh = make_mesh(config.mesh)
    graphdef, tx, state = loop.init_state(_Task(), config, mesh, 1000)
    model = nnx.merge(graphdef, state["params"], state["rest"])
    n_params = convert.count_params(model)
    convert.save_safetensors(convert.to_open_clip(model), weights_path)
    del model
    loss = losses.loss_from_config(config.loss)

    def loss_fn(m, b, rng):
        return clip_task.clip_loss(m, b, loss)

    step_fn = jax.jit(make_train_step(loss_fn, graphdef, tx, config), donate_argnums=0)
    batch = to_global(batch_np, batch_sharding(mesh))
    t = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    flops = _flops_of(compiled)
    losses_seen, times = [], []
    for i in range(warmup + steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        if i >= warmup:
            times.append(time.perf_counter() - t)
        losses_seen.append(float(metrics["loss"]))
    table = None
    if profile_dir is not None:
        state, table = _profile_jax(compiled, state, batch, steps, profile_dir / "jax")
    del state, compiled
    gc.collect()
    return dict(
        times=times,
        losses=losses_seen,
        flops=flops,
        compile_s=compile_s,
        params=n_params,
        table=table,
    )


def _profile_jax(compiled, state, batch, steps: int, out: pathlib.Path):
    """`steps` more steps under `jax.profiler.trace(out)`; the per-op-category table from it."""
    import jax
    import profile_tables

    with jax.profiler.trace(str(out), create_perfetto_trace=True):
        for _ in range(steps):
            state, _ = compiled(state, batch)
            jax.block_until_ready(state)
    hlo = compiled.as_text()
    (out / "step.hlo.txt").write_text(hlo)
    rows = profile_tables.jax_category_rows(hlo, profile_tables.trace_durations(out), steps)
    return state, profile_tables.jax_table(rows)


def _time_torch(config, batch_np, warmup, steps, weights_path: pathlib.Path, profile_dir=None):
    import torch
    import torch.nn.functional as F

    from mzs_jax.train import clip_task
    from torch_bridge.clip import build_open_clip

    mc = clip_task.clip_model_config(config)
    model = build_open_clip(mc, weights=weights_path).train()
    for m in model.modules():  # the Flax towers have no dropout
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    o = config.optimizer
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=o.lr,
        betas=(o.b1, o.b2),
        eps=o.eps,
        foreach=True,
    )
    images = torch.from_numpy(batch_np["image"]).permute(0, 3, 1, 2).contiguous()
    ids = torch.from_numpy(batch_np["input_ids"]).long()  # open_clip masks ids == pad (0)
    labels = torch.arange(images.shape[0])
    max_scale = math.log(100.0)

    def step() -> float:
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(ids), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_scale)
        return float(loss.detach())

    losses_seen, times = [], []
    for i in range(warmup + steps):
        t = time.perf_counter()
        losses_seen.append(step())
        if i >= warmup:
            times.append(time.perf_counter() - t)
    n_params = sum(p.numel() for p in model.parameters())
    table = None if profile_dir is None else _profile_torch(step, steps, profile_dir / "torch")
    threads = torch.get_num_threads()
    return dict(times=times, losses=losses_seen, params=n_params, threads=threads, table=table)


def _profile_torch(step, steps: int, out: pathlib.Path) -> str:
    """`steps` more steps under `torch.profiler` (CPU); a Chrome trace and the top-op table."""
    import profile_tables
    import torch

    out.mkdir(parents=True, exist_ok=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    prof.export_chrome_trace(str(out / "trace.json"))
    return profile_tables.torch_table(prof, steps)


def main(argv: list[str]) -> str:
    p = argparse.ArgumentParser(prog="bench/train_step.py")
    p.add_argument("--quick", action="store_true", help="tiny model, 1024² matmul peak")
    p.add_argument("--model", default=None, choices=["biomedclip", "tiny"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed steps per backend")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per backend")
    p.add_argument("--matmul", type=int, default=None, help="peak-matmul size n (n×n @ n×n)")
    p.add_argument("--profile", type=pathlib.Path, default=None, help="write traces + op tables")
    a = p.parse_args(argv)
    model_name = a.model or ("tiny" if a.quick else "biomedclip")
    n_mm = a.matmul or (1024 if a.quick else 4096)
    if a.batch < 1 or a.steps < 1 or a.warmup < 0:
        raise ValueError("--batch and --steps must be >= 1, --warmup >= 0")

    import jax

    from mzs_jax.train import clip_task

    config = _config(model_name, a.batch)
    mc = clip_task.clip_model_config(config)
    batch_np = _batch(mc, a.batch)
    peak_before = _peak_matmul(n_mm, 5)
    with tempfile.TemporaryDirectory(prefix="mzs_bench_") as d:
        weights = pathlib.Path(d) / "init.safetensors"
        j = _time_jax(config, batch_np, a.warmup, a.steps, weights, a.profile)
        t = _time_torch(config, batch_np, a.warmup, a.steps, weights, a.profile)
    peak = max(peak_before, _peak_matmul(n_mm, 5))

    j_s, t_s = statistics.median(j["times"]), statistics.median(t["times"])
    j_sps, t_sps = a.batch / j_s, a.batch / t_s
    mfu_j = j["flops"] / (j_s * peak)
    mfu_t = j["flops"] / (t_s * peak)
    analytic = _analytic_flops(mc, a.batch)
    o = config.optimizer
    dev = jax.devices()[0]
    return "\n".join(
        [
            f"### Train step: JAX engine vs open_clip/torch, {model_name} model, fp32",
            "",
            f"Device: JAX {dev.device_kind} ({jax.default_backend()}, 1 device of "
            f"{jax.device_count()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}), torch CPU "
            f"{t['threads']} threads, {os.cpu_count()} cores. Batch {a.batch} "
            f"({mc.vision.image_size}² px, {mc.text.context_length} tokens), InfoNCE, "
            f"AdamW lr {o.lr} betas ({o.b1}, {o.b2}) eps {o.eps} wd {o.weight_decay} on ≥2-D "
            f"params, logit_scale clipped to [0, ln 100]; {a.warmup} warm-up + {a.steps} timed "
            f"steps each (median). Parameters: JAX {j['params']:,}, torch {t['params']:,}.",
            "",
            "| backend | s/step (median) | samples/s | steps timed (s) | losses |",
            "|---|---|---|---|---|",
            f"| JAX (jit, donated state) | {j_s:.3f} | {j_sps:.3f} | "
            f"{', '.join(f'{x:.2f}' for x in j['times'])} | "
            f"{', '.join(f'{x:.4f}' for x in j['losses'])} |",
            f"| torch (open_clip, AdamW foreach) | {t_s:.3f} | {t_sps:.3f} | "
            f"{', '.join(f'{x:.2f}' for x in t['times'])} | "
            f"{', '.join(f'{x:.4f}' for x in t['losses'])} |",
            "",
            f"**JAX / torch samples/s ratio: {j_sps / t_sps:.2f}×** (JAX compile "
            f"{j['compile_s']:.1f} s, not counted; same initial weights and batch, so the loss "
            f"columns should agree step by step).",
            "",
            f"FLOPs per step: {j['flops'] / 1e9:.1f} GFLOP from XLA `cost_analysis()` of the "
            f"compiled JAX step (analytic matmul count 3× forward: {analytic / 1e9:.1f} GFLOP). "
            f"Peak: {peak / 1e9:.1f} GFLOP/s, best of a jitted {n_mm}×{n_mm} f32 matmul measured "
            f"before and after the steps.",
            "",
            f"**MFU: JAX {100 * mfu_j:.1f} %** of the measured matmul peak "
            f"(torch at the same FLOP count: {100 * mfu_t:.1f} %).",
            *_profile_section(a.profile, j["table"], t["table"]),
        ]
    )


def _profile_section(out, jax_table, torch_table) -> list[str]:
    if out is None:
        return []
    text = [
        "",
        f"#### Profile (traces under `{out}`)",
        "",
        "JAX: thunk time per (stage, op kind, pass) from the `jax.profiler` trace joined with the "
        "compiled step's HLO (stage from each op's source file; GFLOP/s for the dots in it):",
        "",
        jax_table,
        "",
        "torch: `torch.profiler` key averages, top ops by self CPU time:",
        "",
        torch_table,
    ]
    (out / "profile.md").write_text("\n".join(text[3:]) + "\n")
    return text


if __name__ == "__main__":
    print(main(sys.argv[1:]))
