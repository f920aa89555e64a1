"""Samples/s and MFU of the BiomedCLIP stage 1 train step (paper §3.1): JAX engine vs open_clip.

    python bench/train_step.py [--quick] [--batch 4 12] [--dtype float32 bfloat16] [--steps 3]
        [--buckets 32 64 128 256] [--profile DIR]
JAX: the engine's own jitted step (`train/loop.init_state` + `train/step.make_train_step`, loss
`train/clip_task.clip_loss`); torch: `torch_bridge.clip.build_open_clip` + `torch.optim.AdamW`.
Same random weights (the JAX init exported to open_clip), same batch, InfoNCE, same AdamW
hyperparameters, dropout off on both sides; torch runs fp32. MFU = FLOPs per step from XLA's
`cost_analysis()` of the compiled JAX step ÷ (median step time × the best matmul FLOP/s of the
same dtype measured in the same run). `--buckets` adds JAX rows on a batch with real IU X-ray
caption lengths, padded and cut to its `config.data.text_buckets` length (same losses).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # profile_tables, caption_lengths

import profile_tables  # noqa: E402

from mzs_jax import host_memory  # noqa: E402

HOST_MEMORY = host_memory.keep_freed_memory()  # before JAX starts its threads


def _config(model: str, batch: int, dtype: str = "float32"):
    from mzs_jax.train.defaults import clip_config

    c = clip_config("infonce")
    c.model = model
    c.batch_size = batch
    c.mesh.data, c.mesh.fsdp = 1, 1  # one device: the same hardware torch gets
    c.loss.global_batch = False
    c.compute_dtype = dtype
    c.model_overrides.dtype = dtype  # the towers' compute dtype (params stay fp32)
    return c


def _batch(mc, batch: int, seed: int = 0, lengths=None) -> dict:
    """Random normalised images and token ids (random lengths in [L/8, L] unless `lengths`),
    padded with 0 (the BiomedCLIP pad id)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    s, length = mc.vision.image_size, mc.text.context_length
    ids = rng.integers(1, mc.text.vocab_size, (batch, length)).astype(np.int32)
    if lengths is None:
        lengths = rng.integers(max(2, length // 8), length + 1, batch)
    mask = (np.arange(length)[None] < np.minimum(lengths, length)[:, None]).astype(np.int32)
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


def _peak_matmul(n: int, reps: int, dtype: str = "float32") -> float:
    """Best-of-`reps` FLOP/s of a jitted (n, n) @ (n, n) matmul of `dtype` operands accumulating
    in float32 (the product the towers' `mixed_einsum` runs) on the default device. Without the
    float32 accumulation, bf16 @ bf16 → bf16 runs at the fp32 rate on XLA:CPU (AVX-512 BF16,
    no AMX: 177 vs 350 GFLOP/s measured), so MFU against it read above 100 %."""
    import jax
    import jax.numpy as jnp

    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (n, n), jnp.float32).astype(dtype)
    y = jax.random.normal(ky, (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
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


def _jax_step(config, weights_path: pathlib.Path | None):
    """(compiled-step factory, initial state, parameter count) for the engine's step."""
    import jax
    from flax import nnx

    from mzs_jax import convert, losses
    from mzs_jax.models.clip import CLIP, compiler_options
    from mzs_jax.train import clip_task, loop
    from mzs_jax.train.mesh import make_mesh
    from mzs_jax.train.step import make_train_step

    mc = clip_task.clip_model_config(config)

    class _Task:
        model_config = mc

        def build_model(self, rngs):
            return CLIP(mc, rngs=rngs)

    graphdef, tx, state = loop.init_state(_Task(), config, make_mesh(config.mesh), 1000)
    model = nnx.merge(graphdef, state["params"], state["rest"])
    n_params = convert.count_params(model)
    if weights_path is not None:
        convert.save_safetensors(convert.to_open_clip(model), weights_path)
    del model
    loss = losses.loss_from_config(config.loss)

    def loss_fn(m, b, rng):
        return clip_task.clip_loss(m, b, loss)

    step = make_train_step(loss_fn, graphdef, tx, config)
    jitted = jax.jit(step, donate_argnums=0, compiler_options=compiler_options(mc) or None)
    return jitted, state, n_params


def _check_compute_dtype(compiled, dtype: str) -> None:
    """The configured compute dtype is the one the matmuls run in (operands in compiled HLO)."""
    instrs, _, _ = profile_tables.parse_hlo(compiled.as_text())
    n_bf16 = sum(
        ins["op"] == "dot" and all(instrs[o]["shape"].startswith("bf16[") for o in ops)
        for ins in instrs.values()
        if (ops := profile_tables.operands(ins)) and all(o in instrs for o in ops)
    )
    if (dtype == "bfloat16") != (n_bf16 > 0):
        raise RuntimeError(f"{dtype} step has {n_bf16} bf16 x bf16 dots in its compiled HLO")


def _time_jax(config, batch_np, warmup, steps, weights_path=None, profile_dir=None) -> dict:
    import jax

    from mzs_jax.train.input import to_global
    from mzs_jax.train.mesh import batch_sharding, make_mesh

    jitted, state, n_params = _jax_step(config, weights_path)
    batch = to_global(batch_np, batch_sharding(make_mesh(config.mesh)))
    t = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    _check_compute_dtype(compiled, config.compute_dtype)
    losses_seen, times, faults, kernel = [], [], [], []
    for i in range(warmup + steps):
        r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        if i >= warmup:
            times.append(time.perf_counter() - t)
            faults.append(r1.ru_minflt - r0.ru_minflt)  # minor page faults of the step
            kernel.append(r1.ru_stime - r0.ru_stime)  # kernel CPU seconds of the step
        losses_seen.append(float(metrics["loss"]))
    table = None
    if profile_dir is not None:
        state, table = _profile_jax(compiled, state, batch, steps, profile_dir)
    out = dict(times=times, losses=losses_seen, flops=_flops_of(compiled), compile_s=compile_s)
    out.update(faults=faults, kernel_s=kernel)
    del state, compiled
    gc.collect()
    return dict(out, params=n_params, table=table)


def _profile_jax(compiled, state, batch, steps: int, out: pathlib.Path):
    """`steps` more steps under `jax.profiler.trace(out)`; the per-op-category table from it."""
    import jax

    with jax.profiler.trace(str(out), create_perfetto_trace=True):
        for _ in range(steps):
            state, _ = compiled(state, batch)
            jax.block_until_ready(state)
    hlo = compiled.as_text()
    (out / "step.hlo.txt").write_text(hlo)
    rows = profile_tables.jax_category_rows(hlo, out, steps)
    return state, profile_tables.jax_table(rows)


def _torch_step(config, batch_np, weights_path: pathlib.Path):
    """A closure running one open_clip + AdamW step on the batch, returning the loss."""
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
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, foreach=True)
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

    return step, sum(p.numel() for p in model.parameters())


def _time_torch(config, batch_np, warmup, steps, weights_path, profile_dir=None) -> dict:
    import torch

    step, n_params = _torch_step(config, batch_np, weights_path)
    losses_seen, times = [], []
    for i in range(warmup + steps):
        t = time.perf_counter()
        losses_seen.append(step())
        if i >= warmup:
            times.append(time.perf_counter() - t)
    table = None if profile_dir is None else _profile_torch(step, steps, profile_dir)
    threads = torch.get_num_threads()
    return dict(times=times, losses=losses_seen, params=n_params, threads=threads, table=table)


def _profile_torch(step, steps: int, out: pathlib.Path) -> str:
    """`steps` more steps under `torch.profiler` (CPU); a Chrome trace and the top-op table."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    prof.export_chrome_trace(str(out / "trace.json"))
    return profile_tables.torch_table(prof, steps)


def _cpu_description() -> str:
    """`lscpu`-style model name and the matmul-relevant ISA flags of this CPU."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
    have = [f for f in wanted if f in flags]
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(have) or 'none of ' + str(wanted)}"


def _row(batch: int, name: str, r: dict, peak: float, flops: float | None = None) -> dict:
    s = statistics.median(r["times"])
    mfu = (flops or r["flops"]) / (s * peak)
    return dict(batch=batch, name=name, s=s, sps=batch / s, times=r["times"], losses=r["losses"],
                mfu=mfu)  # fmt: skip


def _real_lengths(batch: int, context: int, quick: bool, seed: int = 0):
    """`batch` caption token lengths drawn from the IU X-ray reports (phantoms with --quick)."""
    import caption_lengths
    import numpy as np

    from mzs_jax.data import phantom, realdata

    if quick:
        texts = [s["caption"] for s in phantom.generate_captions(300, seed=0)]
    else:
        texts = realdata.iu_xray_captions()
    lengths = caption_lengths.token_lengths(texts, 30522)
    return np.minimum(np.random.default_rng(seed).choice(lengths, batch), context)


def _bucket_rows(a, model_name, batch: int, peak: float) -> tuple[list[dict], str]:
    from mzs_jax.train import clip_task, text_buckets

    config = _config(model_name, batch)
    mc = clip_task.clip_model_config(config)
    buckets = text_buckets.check_buckets(a.buckets, mc.text.context_length)
    padded = _batch(
        mc, batch, seed=1, lengths=_real_lengths(batch, mc.text.context_length, a.quick)
    )
    cut = text_buckets.bucket_batch(padded, buckets)
    jp = _time_jax(config, padded, a.warmup, a.steps)
    jb = _time_jax(config, cut, a.warmup, a.steps)
    name = "IU X-ray" if not a.quick else "phantom"
    rows = [
        _row(batch, f"JAX fp32, {name} caption lengths, padded", jp, peak),
        _row(batch, "JAX fp32, same batch cut to its bucket", jb, peak, flops=jp["flops"]),
    ]
    gap = max(abs(x - y) for x, y in zip(jp["losses"], jb["losses"], strict=True))
    lengths = sorted(int(n) for n in padded["attention_mask"].sum(1))
    note = (
        f"Batch {batch}, {name} caption lengths {lengths}: text cut from "
        f"{padded['input_ids'].shape[1]} to {cut['input_ids'].shape[1]} tokens (buckets "
        f"{buckets}): **{rows[0]['s'] / rows[1]['s']:.2f}× the padded step's samples/s**, "
        f"largest loss difference {gap:.1e}. The cut row's MFU counts the padded step's FLOPs "
        "(an effective rate)."
    )
    return rows, note


def _batch_rows(a, model_name, batch: int, peaks: dict, work: pathlib.Path):
    """JAX fp32 and torch rows (and JAX bf16) at one batch size; profile tables if asked."""
    from mzs_jax.train import clip_task

    config = _config(model_name, batch)
    batch_np = _batch(clip_task.clip_model_config(config), batch)
    weights = work / f"init_b{batch}.safetensors"
    prof = (lambda name: a.profile / f"b{batch}_{name}") if a.profile else (lambda name: None)
    j = _time_jax(config, batch_np, a.warmup, a.steps, weights, prof("jax_float32"))
    t = _time_torch(config, batch_np, a.warmup, a.steps, weights, prof("torch_float32"))
    rows = [
        _row(batch, "JAX fp32 (jit, donated state)", j, peaks["float32"]),
        _row(batch, "torch fp32 (open_clip, AdamW foreach)", t, peaks["float32"], j["flops"]),
    ]
    tables = [(f"JAX fp32, batch {batch}", j["table"]), (f"torch fp32, batch {batch}", t["table"])]
    if "bfloat16" in a.dtype:
        config16 = _config(model_name, batch, "bfloat16")
        j16 = _time_jax(config16, batch_np, a.warmup, a.steps, None, prof("jax_bfloat16"))
        rows.append(_row(batch, "JAX bf16 towers (fp32 params, softmax, LN stats, loss)", j16,
                         peaks["bfloat16"]))  # fmt: skip
        tables.append((f"JAX bf16, batch {batch}", j16["table"]))
    info = dict(flops=j["flops"], compile_s=j["compile_s"], params=(j["params"], t["params"]),
                threads=t["threads"])  # fmt: skip
    return rows, [x for x in tables if x[1]], info


def _table(rows: list[dict]) -> list[str]:
    out = [
        "| batch | step | s/step (median) | samples/s | timed steps (s) | losses | MFU % |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['batch']} | {r['name']} | {r['s']:.3f} | {r['sps']:.3f} | "
            f"{', '.join(f'{x:.2f}' for x in r['times'])} | "
            f"{', '.join(f'{x:.4f}' for x in r['losses'])} | {100 * r['mfu']:.1f} |"
        )
    return out


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/train_step.py")
    p.add_argument("--quick", action="store_true", help="tiny model, 1024² matmul peak")
    p.add_argument("--model", default=None, choices=["biomedclip", "tiny"])
    p.add_argument("--batch", type=int, nargs="+", default=[4, 12])
    p.add_argument(
        "--dtype",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16"],
        help="JAX step dtypes (torch runs fp32)",
    )
    p.add_argument("--steps", type=int, default=3, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per row")
    p.add_argument("--matmul", type=int, default=None, help="peak-matmul size n (n×n @ n×n)")
    p.add_argument(
        "--buckets",
        type=int,
        nargs="*",
        default=[],
        help="also time a real-caption-length batch padded vs cut to these lengths",
    )
    p.add_argument("--profile", type=pathlib.Path, default=None, help="write traces + op tables")
    a = p.parse_args(argv)  # fmt: skip
    if min(a.batch) < 1 or a.steps < 1 or a.warmup < 0:
        raise ValueError("--batch and --steps must be >= 1, --warmup >= 0")
    if "float32" not in a.dtype:
        raise ValueError("--dtype must include float32 (the JAX vs torch comparison)")
    return a


def main(argv: list[str]) -> str:
    import jax

    a = _parse(argv)
    model_name = a.model or ("tiny" if a.quick else "biomedclip")
    n_mm = a.matmul or (1024 if a.quick else 4096)
    peaks = {d: _peak_matmul(n_mm, 5, d) for d in a.dtype}
    rows, tables, infos, notes = [], [], {}, []
    with tempfile.TemporaryDirectory(prefix="mzs_bench_") as d:
        for batch in a.batch:
            r, t, infos[batch] = _batch_rows(a, model_name, batch, peaks, pathlib.Path(d))
            rows, tables = rows + r, tables + t
            if a.buckets:
                r, note = _bucket_rows(a, model_name, batch, peaks["float32"])
                rows, notes = rows + r, notes + [note]
    after = {dt: _peak_matmul(n_mm, 5, dt) for dt in a.dtype}
    for dt in a.dtype:  # MFU against the better of the two peak measurements
        for r in rows:
            if ("bf16" in r["name"]) == (dt == "bfloat16"):
                r["mfu"] *= peaks[dt] / max(peaks[dt], after[dt])
        peaks[dt] = max(peaks[dt], after[dt])
    return _report(a, model_name, n_mm, peaks, rows, tables, infos, notes, jax)


def _report(a, model_name, n_mm, peaks, rows, tables, infos, notes, jax) -> str:
    from mzs_jax.train import clip_task

    mc = clip_task.clip_model_config(_config(model_name, a.batch[0]))
    o = _config(model_name, 1).optimizer
    dev = jax.devices()[0]
    first = infos[a.batch[0]]
    lines = [
        f"### Train step: JAX engine vs open_clip/torch, {model_name} model",
        "",
        f"CPU: {_cpu_description()}. JAX {jax.__version__} {dev.device_kind} (1 device; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); torch {first['threads']} threads. "
        f"{mc.vision.image_size}² px, {mc.text.context_length} tokens, InfoNCE, AdamW lr {o.lr} "
        f"betas ({o.b1}, {o.b2}) eps {o.eps} wd {o.weight_decay} on ≥2-D params, logit_scale "
        f"clipped to [0, ln 100]; {a.warmup} warm-up + {a.steps} timed steps per row (median). "
        f"Parameters: JAX {first['params'][0]:,}, torch {first['params'][1]:,}. {HOST_MEMORY}; "
        "the same process runs both sides.",
        "",
        *_table(rows),
        "",
    ]
    for batch, info in infos.items():
        j = next(r for r in rows if r["batch"] == batch and r["name"].startswith("JAX fp32"))
        t = next(r for r in rows if r["batch"] == batch and r["name"].startswith("torch"))
        lines.append(
            f"- batch {batch}: **JAX / torch samples/s ratio: {j['sps'] / t['sps']:.2f}×**, "
            f"**MFU: JAX {100 * j['mfu']:.1f} %** (torch at the same FLOPs "
            f"{100 * t['mfu']:.1f} %); {info['flops'] / 1e9:.1f} GFLOP/step from XLA "
            f"`cost_analysis()` (analytic matmul count {_analytic_flops(mc, batch) / 1e9:.1f}); "
            f"JAX compile {info['compile_s']:.1f} s (not timed)."
        )
    lines += [
        "",
        "Peak: best of a jitted "
        + ", ".join(f"{n_mm}² {dt} matmul {p / 1e9:.1f} GFLOP/s" for dt, p in peaks.items())
        + " (float32 accumulation)"
        + ", measured before and after the steps; each row's MFU is against its dtype's peak. "
        "Same initial weights and batch: the JAX fp32 and torch losses agree step by step.",
    ]
    lines += ["", *notes] if notes else []
    for title, table in tables:
        lines += ["", f"#### Profile: {title} (traces under `{a.profile}`)", "", table]
    if a.profile:
        (a.profile / "profile.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
