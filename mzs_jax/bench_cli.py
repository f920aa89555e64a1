"""`mzs bench`: run the `bench/` scripts and write one Markdown file with the machine description.

Each script defines `main(argv: list[str]) -> str` returning its Markdown section; every figure in
it is measured in that run. Scripts live in `bench/` (packaged as `mzs_jax.bench`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import platform
import time

SCRIPTS = {
    "loss_memory": "global-batch loss memory, gather vs ring form, every loss (8 virtual devices)",
    "large_batch": "large-batch train step: exact accumulation (± remat) vs plain, memory, FLOPs",
    "train_step": "full-size BiomedCLIP train step, JAX vs PyTorch, and MFU",
    "saliency": "batched JAX gScoreCAM vs torch gScoreCAM",
    "input_pipeline": "grain input pipeline rate vs train step rate",
    "phantom_speed": "procedural phantom generation rate",
    "zeroshot_phantom": "phantom pointing game and box IoU per saliency method, with baselines",
    "zeroshot_ablation": "stage 2 without each part, other saliency methods, baselines; t-tests",
    "weak_vs_pseudo": "ResUNet on pseudo-masks vs the pseudo-masks, 3 seeds, paired t-test",
    "loss_quality": "every loss fine-tuned on hard-negative phantom captions, 5 seeds, CIs, tests",
}


def bench_dir() -> pathlib.Path:
    from mzs_jax.resources import bench_dir as packaged

    here = packaged()
    if not here.is_dir():
        raise FileNotFoundError(f"bench scripts not found at {here}: reinstall mzs-jax")
    return here


def machine_description() -> str:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    devices = jax.devices()
    return (
        f"{platform.node()} · {cpu} · {os.cpu_count()} cores · "
        f"{len(devices)}× {devices[0].device_kind} ({jax.default_backend()}) · "
        f"jax {jax.__version__} · Python {platform.python_version()}"
    )


def run_script(name: str, argv: list[str]) -> str:
    path = bench_dir() / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark script missing: {path}")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        nargs="*",
        choices=sorted(SCRIPTS),
        help="run only these scripts (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes for a smoke run (each script says what it shrank)",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        help="Markdown file to write (default: WORKDIR/bench.md or ./bench.md)",
    )


def run(args) -> int:
    names = args.only or list(SCRIPTS)
    out = args.out or (args.workdir or pathlib.Path(".")) / "bench.md"
    sections = [f"# mzs bench\n\nMachine: {machine_description()}\n"]
    for name in names:
        print(f"[bench] {name}: {SCRIPTS[name]}", flush=True)
        t0 = time.perf_counter()
        body = run_script(name, ["--quick"] if args.quick else [])
        sections.append(
            f"## {name}\n\n{SCRIPTS[name]} ({time.perf_counter() - t0:.0f} s)\n\n{body}\n"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(sections))
    print(f"[bench] wrote {out}")
    return 0
