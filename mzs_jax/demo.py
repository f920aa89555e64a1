"""`mzs demo`: the whole method end to end on phantoms, offline, in minutes (DESIGN §1).

Stage 1 tiny CLIP (pre-train, fine-tune with five losses, retrieval, open_clip export) → stage 2
zero-shot chain on held-out X-ray phantoms with baselines → stage 3 ResUNet on the pseudo-masks
over 3 seeds → report. Every number in the report is produced by the run that writes it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import time

MARKER = ".mzs_demo"  # a workdir holding this file was made by `mzs demo` and may be reused
OWNED = ("data", "tokenizer", "clip", "zeroshot", "weak", "eval", "report", "timings.json")
# Rough share of the run time per stage (for the overall ETA line).
WEIGHTS = {
    "data": 2,
    "pretrain": 30,
    "finetune": 60,
    "export": 4,
    "zeroshot": 14,
    "weak": 16,
    "report": 4,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # `--workdir` is added by cli.py; the demo's default is ./workdir/demo (report: WORKDIR/report)
    parser.set_defaults(workdir=pathlib.Path("workdir") / "demo")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (about 3 min on 2 cores): fewer samples and steps",
    )
    parser.add_argument(
        "--sam-checkpoint",
        type=pathlib.Path,
        default=None,
        help="SAM ViT-B .pth: segment with SAM instead of the weight-free GrabCut",
    )
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="pre-train the phantom CLIP live instead of loading mzs_jax/assets/phantom_clip",
    )


def demo_config(args):
    """`args.config` if given (configs/demo.py + overrides), else configs/demo.py's defaults."""
    if args.config is not None:
        return args.config
    import importlib.util

    from mzs_jax.resources import configs_dir

    path = configs_dir() / "demo.py"
    if not path.is_file():
        raise FileNotFoundError(f"demo config not found: {path}")
    spec = importlib.util.spec_from_file_location("demo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("quick" if args.quick else "full")


def prepare_workdir(workdir: pathlib.Path) -> None:
    """Create `workdir`; a previous demo run there is replaced, any other content is refused."""
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise ValueError(
            f"--workdir {workdir} is not empty and was not made by `mzs demo`; "
            "choose an empty or new folder"
        )
    for name in OWNED:
        p = workdir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by mzs demo\n")


class Stages:
    """Stage timer + overall progress line with ETA (stage weights: shares of the run time)."""

    def __init__(self, weights: dict[str, int]):
        from mzs_jax.progress import Progress

        self.names, self.weights = list(weights), dict(weights)
        self.progress = Progress(sum(weights.values()), "demo", unit="%", every_s=0.0)
        self.times: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def start(self, name: str, what: str) -> None:
        self._name, self._t = name, time.perf_counter()
        i = self.names.index(name) + 1
        print(f"\n[demo] stage {i}/{len(self.names)} {name}: {what}", flush=True)

    def done(self, **metrics) -> None:
        dt = time.perf_counter() - self._t
        self.times[self._name] = dt
        self.progress.update(
            self.weights[self._name], force=True, stage=self._name, stage_s=round(dt, 1), **metrics
        )

    @property
    def total(self) -> float:
        return time.perf_counter() - self.t0


def _data(demo_cfg, demo_dir: pathlib.Path, shipped: pathlib.Path | None, st: Stages):
    """Stage "data": the tokenizer (trained, or the shipped CLIP's) and the X-ray train
    (pseudo-masks) and held-out test phantoms, written under `demo_dir/data`."""
    from mzs_jax import demo_clip, demo_zeroshot

    st.start("data", "phantom captions, tokenizer, X-ray train/test phantoms")
    if shipped is None:
        tok = demo_clip.build_tokenizer(demo_cfg, demo_dir / "tokenizer")
    else:
        tok = shutil.copytree(shipped / "tokenizer", demo_dir / "tokenizer")
    train_s = demo_zeroshot.make_split(demo_cfg, "train", demo_dir / "data" / "xray_train")
    test_s = demo_zeroshot.make_split(demo_cfg, "test", demo_dir / "data" / "xray_test")
    st.done(captions=int(demo_cfg.clip.n_captions), train=len(train_s), test=len(test_s))
    return tok, train_s, test_s


def run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import jax

    from mzs_jax import demo_clip, demo_report, demo_weak, demo_zeroshot

    demo_cfg = demo_config(args)
    demo_dir = pathlib.Path(args.workdir)
    prepare_workdir(demo_dir)
    _compilation_cache(demo_dir)
    shipped = None if args.from_scratch else demo_clip.shipped_checkpoint()
    st = Stages(WEIGHTS if shipped is None else {**WEIGHTS, "pretrain": 2})
    devices = f"{jax.device_count()}× {jax.devices()[0].device_kind}"
    facts: dict = {"mode": demo_cfg.mode, "devices": devices, "cpu_count": os.cpu_count()}

    tok, train_s, test_s = _data(demo_cfg, demo_dir, shipped, st)

    pre = demo_dir / "clip" / "pretrained"
    pretrained = _pretrain(args, demo_cfg, pre, tok, shipped, st, facts)
    retrieval = {"pre-trained (no fine-tuning)": pretrained}
    st.done(i2t_top1=pretrained["summary"]["i2t_top1"][0])

    st.start(
        "finetune",
        f"fine-tune with {', '.join(demo_cfg.clip.losses)}, then the hard-negative loss benchmark",
    )
    retrieval |= _finetune(demo_cfg, demo_dir, pre, tok)
    hard = demo_clip.hard_benchmark(demo_cfg, demo_dir / "clip" / "hard")
    st.done(cehnc_i2t_top1=retrieval[demo_cfg.clip.losses[-1]]["summary"]["i2t_top1"][0])

    st.start(
        "export", "cehnc model → open_clip safetensors → PyTorch open_clip, embeddings compared"
    )
    main_clip, export = _export(demo_cfg, demo_dir, test_s)
    st.done(max_abs_diff=export["max_abs_diff"])

    zeroshot_cfg = demo_cfg.zeroshot
    st.start(
        "zeroshot",
        f"{zeroshot_cfg.saliency} → DPFEM → CRF → box → segmenter, prompt {zeroshot_cfg.prompt!r}",
    )
    zero_shot_result = demo_zeroshot.zero_shot(
        demo_cfg, demo_dir, main_clip, tok, train_s, test_s, args.sam_checkpoint
    )
    st.done(dice=zero_shot_result["test_dice"])

    st.start("weak", f"ResUNet on the pseudo-masks, seeds {tuple(demo_cfg.weak.seeds)}")
    weak = demo_weak.weak_stage(demo_cfg, demo_dir)
    st.done(dice=weak["mean_dice"])

    st.start("report", "tables, t-tests, figures")
    facts.update(stage_seconds=dict(st.times), total_seconds=st.total)
    results = dict(retrieval=retrieval, hard=hard, export=export, weak=weak, facts=facts)
    md = demo_report.write(demo_dir, demo_cfg, zero_shot_result=zero_shot_result, **results)
    st.done()
    print(f"\n[demo] done in {st.total:.0f} s; report: {md}", flush=True)
    return 0


def _pretrain(args, demo_cfg, pre: pathlib.Path, tok, shipped, st: Stages, facts: dict) -> dict:
    """The pre-trained tiny CLIP in `pre`: the `shipped` one imported, or trained live with
    InfoNCE when `shipped` is None (`--from-scratch`, or none shipped); returns its retrieval
    scores."""
    from mzs_jax import demo_clip

    if shipped is None:
        why = "--from-scratch" if args.from_scratch else "no shipped checkpoint"
        steps = demo_cfg.clip.pretrain_steps
        st.start("pretrain", f"tiny CLIP from random init ({why}), {steps} steps")
        cfg = demo_clip.run_config(demo_cfg, "infonce", steps, demo_cfg.clip.pretrain_lr, tok, None)
        facts["clip_init"] = f"pre-trained live in this run ({steps} steps, infonce, {why})"
        return demo_clip.train(demo_cfg, cfg, pre, "pretrain")
    st.start("pretrain", f"shipped phantom CLIP {shipped} (--from-scratch retrains it)")
    facts["clip_init"] = demo_clip.import_shipped(shipped, pre)
    return demo_clip.retrieval(demo_cfg, pre, tok)


def _finetune(demo_cfg, demo_dir: pathlib.Path, pre: pathlib.Path, tok) -> dict:
    """Each configured loss fine-tunes the pre-trained model; loss → retrieval scores."""
    from mzs_jax import demo_clip

    retrieval = {}
    for loss in demo_cfg.clip.losses:
        cfg = demo_clip.run_config(
            demo_cfg, loss, demo_cfg.clip.finetune_steps, demo_cfg.clip.finetune_lr, tok, pre
        )
        retrieval[loss] = demo_clip.train(
            demo_cfg, cfg, demo_dir / "clip" / loss, f"finetune {loss}"
        )
        r = retrieval[loss]["summary"]
        print(
            f"[demo] {loss}: i2t_top1={r['i2t_top1'][0]:.3f} t2i_top1={r['t2i_top1'][0]:.3f}",
            flush=True,
        )
    return retrieval


def _export(demo_cfg, demo_dir: pathlib.Path, test_s) -> tuple[pathlib.Path, dict]:
    """The CEHNC model's workdir and its open_clip export check on 4 held-out images."""
    from mzs_jax import demo_clip
    from mzs_jax.pipeline.zeroshot import clip_inputs

    losses = demo_cfg.clip.losses
    main_clip = demo_dir / "clip" / ("cehnc" if "cehnc" in losses else losses[-1])
    _, test_inputs = clip_inputs([s["image"] for s in test_s[:4]], int(demo_cfg.image_size))
    exported = demo_dir / "clip" / "cehnc_open_clip.safetensors"
    return main_clip, demo_clip.export_check(main_clip, exported, test_inputs)


def _compilation_cache(demo_dir: pathlib.Path) -> None:
    """Re-runs reuse compiled XLA programs (the 3 ResUNet seeds share one within a run)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(demo_dir / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
