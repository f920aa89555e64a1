"""Fault trials: interrupted runs, corrupted checkpoints, resume-config changes, NaN steps and
full disks (subprocesses for the kills and the disk)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import fault_trials_setup as S
import numpy as np
from fault_trials import REPO, Result, Trial, error_line, in_process, run_cli, subprocess_env
from faults import CORRUPTIONS

# ----------------------------------------------------------------------------- helpers


def _params_equal(workdir, ref) -> bool:
    from mzs_jax.train.loop import final_params

    got = final_params(workdir)
    return got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)


def _ref_copy(ctx, d) -> pathlib.Path:
    return S.copy(S.trained_clip(ctx)[0], d / "w")


def _newest(workdir) -> int:
    return max(int(p.name) for p in (workdir / "ckpt").iterdir() if p.name.isdigit())


def _train(*extra):
    return lambda c, d: ["train-clip", *S.CLIP_TINY, "--workdir", d / "w", *extra]


def _identical(ctx, d, res) -> bool:
    return _params_equal(d / "w", S.trained_clip(ctx)[1])


def _moved_and_identical(ctx, d, res) -> bool:
    return any((d / "w" / "ckpt_rejected").glob("*")) and _identical(ctx, d, res)


# ----------------------------------------------------------------------------- interrupts

SLOW_SAVES = (
    "import sys, time, grain.checkpoint as g\n"
    "_save = g.CheckpointHandler.save\n"
    "g.CheckpointHandler.save = lambda self, *a, **k: (_save(self, *a, **k), time.sleep(1.5))[0]\n"
    "from mzs_jax import cli\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


def _lines(workdir) -> int:
    f = workdir / "metrics.jsonl"
    return len(f.read_text().splitlines()) if f.exists() else 0


def _saved(workdir) -> bool:
    ck = workdir / "ckpt"
    return ck.is_dir() and any(p.name.isdigit() for p in ck.iterdir())


def _saving(workdir) -> bool:
    ck = workdir / "ckpt"
    return _saved(workdir) and any("tmp" in p.name for p in ck.iterdir())


def _interrupt(sig: int, slow_saves: bool):
    def run(ctx, d) -> Result:
        S.trained_clip(ctx)  # the reference first (and the compile cache)
        w = d / "w"
        head = ["-c", SLOW_SAVES] if slow_saves else ["-m", "mzs_jax.cli"]
        argv = [str(a) for a in ["train-clip", *S.CLIP_TINY, "--workdir", w]]
        proc = subprocess.Popen(
            [sys.executable, *head, *argv],
            cwd=REPO,
            env=subprocess_env(ctx),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = (lambda: _saving(w)) if slow_saves else (lambda: _saved(w) and _lines(w) >= 3)
        deadline = time.time() + 600
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if proc.poll() is not None:
            raise RuntimeError("the run ended before it could be interrupted")
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=300)
        if sig == signal.SIGINT and "Traceback (most recent call last)" in err.split("error")[-1]:
            return Result(1, "", err)  # Ctrl-C must be one line too
        return run_cli(ctx, argv)

    return run


def interrupt_trials() -> list[Trial]:
    return [
        Trial(
            "interrupt",
            "kill_9_mid_train",
            "recover",
            run=_interrupt(signal.SIGKILL, False),
            check=_identical,
        ),
        Trial(
            "interrupt",
            "kill_9_mid_save",
            "recover",
            run=_interrupt(signal.SIGKILL, True),
            check=_identical,
        ),
        Trial(
            "interrupt",
            "sigterm_mid_train",
            "recover",
            run=_interrupt(signal.SIGTERM, False),
            check=_identical,
        ),
        Trial(
            "interrupt",
            "ctrl_c_mid_train",
            "recover",
            run=_interrupt(signal.SIGINT, False),
            check=_identical,
        ),
    ]


# ----------------------------------------------------------------------------- checkpoints


def _damage(fn):
    def setup(ctx, d):
        w = _ref_copy(ctx, d)
        fn(w, w / "ckpt" / str(_newest(w)))

    return setup


def _corrupt_checksums(w, step):
    (step / "checksums" / "metadata").write_text("{ not json")


def _corrupt_data_item(w, step):
    for f in (step / "data").glob("*.json"):
        f.write_text("{ garbage")


def _all_steps(w, step):
    for p in (w / "ckpt").iterdir():
        if p.name.isdigit():
            CORRUPTIONS["truncated"](p)


def _unverified_ok(ctx, d, res) -> bool:
    return "not verified" in res.out + res.err and _identical(ctx, d, res)


def _no_run_config_ok(ctx, d, res) -> bool:
    return "no run_config.json" in res.out and _identical(ctx, d, res)


# (name, damage(workdir, newest step dir), check): the rerun must recover
RECOVERABLE = [
    ("newest_checksums_corrupt", _corrupt_checksums, _moved_and_identical),
    ("newest_data_item_corrupt", _corrupt_data_item, _moved_and_identical),
    ("newest_checksums_deleted", lambda w, s: shutil.rmtree(s / "checksums"), _unverified_ok),
    ("newest_step_metadata_deleted", lambda w, s: (s / "_CHECKPOINT_METADATA").unlink(),
     _identical),
    ("run_config_deleted", lambda w, s: (w / "run_config.json").unlink(), _no_run_config_ok),
    ("model_config_deleted", lambda w, s: (w / "model_config.json").unlink(), _identical),
]  # fmt: skip
TOKENIZER = REPO / "mzs_jax/assets/phantom_clip/tokenizer"
# (name, damage, rerun overrides, what the error must name): one error, the workdir untouched
STOPS = [
    ("all_steps_corrupt", _all_steps, (), ("no intact checkpoint",)),
    ("model_config_corrupt", lambda w, s: (w / "model_config.json").write_text("{"), (),
     ("model_config.json",)),
    ("architecture_change", None, ("--config.model_overrides.vision.patch_size=4",),
     ("vision.patch_size", "allow_config_change")),
    ("batch_size_change", None, ("--config.batch_size=16",), ("batch_size",)),
    ("seed_change", None, ("--config.seed=3",), ("seed",)),
    ("data_path_change", None, ("--config.data.path=phantom:64",), ("data.path",)),
    ("tokenizer_change", None, (f"--config.data.tokenizer={TOKENIZER}",), ("data.tokenizer",)),
]  # fmt: skip


def _whole_workdir(ctx, d):
    return [d / "w"]


def checkpoint_trials() -> list[Trial]:
    out = [
        Trial("checkpoint", f"newest_{name}", "recover", argv=_train(),
              setup=_damage(lambda w, s, fn=fn: fn(s)),
              check=_identical if name == "flipped_bytes" else _moved_and_identical)
        for name, fn in sorted(CORRUPTIONS.items())
    ]  # fmt: skip
    out += [
        Trial("checkpoint", n, "recover", argv=_train(), setup=_damage(f), check=c)
        for n, f, c in RECOVERABLE
    ]
    out += [
        Trial("checkpoint", n, "error", argv=_train(*extra), setup=_damage(f or _untouched),
              names=names, preserve=_whole_workdir)
        for n, f, extra, names in STOPS
    ]  # fmt: skip
    return out + _other_checkpoint_trials()


def _untouched(w, s):
    return None


def _other_checkpoint_trials() -> list[Trial]:
    allowed = ("--config.batch_size=16", "--config.total_steps=10",
               "--config.allow_config_change=True")  # fmt: skip
    ckpt_file = lambda c, d: [(d / "w").mkdir(), (d / "w" / "ckpt").write_text("x")]  # noqa: E731
    return [
        Trial("checkpoint", "allowed_batch_size_change", "recover", argv=_train(*allowed),
              setup=_damage(_untouched),
              check=lambda c, d, r: "allow_config_change=True: resuming" in r.out),
        Trial("checkpoint", "lr_change_is_logged", "recover",
              argv=_train("--config.optimizer.lr=0.0005", "--config.total_steps=10"),
              setup=_damage(_untouched),
              check=lambda c, d, r: "optimizer.lr: 0.001 -> 0.0005" in r.out),
        Trial("checkpoint", "train_into_import_workdir", "error", argv=_train(),
              setup=lambda c, d: S.copy(S.random_clip(c), d / "w"), names=("--config.init",),
              preserve=_whole_workdir),
        Trial("checkpoint", "ckpt_is_a_file", "error", setup=ckpt_file, argv=_train(),
              names=("ckpt",)),
        Trial("checkpoint", "nan_step", "error", argv=_train(*DIVERGE), check=_all_saved_finite,
              names=("non-finite", "holds the finite weights of step")),
        Trial("checkpoint", "export_after_nan_step", "recover", setup=_nan_run, argv=_export(),
              check=_finite_export),
        Trial("checkpoint", "full_disk_then_rerun", "recover", run=_full_disk, check=_identical),
    ]  # fmt: skip


DIVERGE = (
    "--config.optimizer.name=sgd",
    "--config.optimizer.lr=1e38",
    "--config.optimizer.warmup_steps=4",
    "--config.checkpoint.every_steps=1",
)


def _all_saved_finite(ctx, d, res) -> bool:
    from flax import nnx

    from mzs_jax.train import checkpoint as ckpt
    from mzs_jax.train import integrity

    steps = [int(p.name) for p in (d / "w" / "ckpt").iterdir() if p.name.isdigit()]
    named = f"ckpt/{max(steps)}," in error_line(res)
    return named and all(
        integrity.all_finite(nnx.state(ckpt.restore_model(d / "w", step=s)[0])) for s in steps
    )


def _nan_run(ctx, d):
    in_process(_train(*DIVERGE)(ctx, d))


def _export(workdir="w", out="m.safetensors"):
    return lambda c, d: ["export", "--workdir", d / workdir, "--out", d / out]


def _finite_export(ctx, d, res) -> bool:
    from safetensors.numpy import load_file

    return all(np.isfinite(v).all() for v in load_file(str(d / "m.safetensors")).values())


def _mount(path: pathlib.Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    if subprocess.run(cmd, capture_output=True).returncode:
        raise RuntimeError("cannot mount a small tmpfs here (needs root)")


def _full_disk(ctx, d) -> Result:
    """Train on a 6 MB disk (two tiny checkpoints fit), expect one clear error, then rerun on a
    bigger disk (a copy) and resume."""
    S.trained_clip(ctx)
    small = d / "small"
    _mount(small, "6m")
    try:
        first = run_cli(ctx, _train("--config.checkpoint.every_steps=1")(ctx, small))
        shutil.copytree(small / "w", d / "w", symlinks=True)
    finally:
        subprocess.run(["umount", str(small)], check=False)
    line = [x for x in first.err.splitlines() if x.startswith("mzs ")]
    if first.rc == 0 or not line or "CheckpointWriteError" not in line[-1]:
        return Result(first.rc or 1, first.out, first.err)  # judged on the first run
    return run_cli(ctx, _train("--config.checkpoint.every_steps=1")(ctx, d))


# ----------------------------------------------------------------------------- export / import


def trials() -> list[Trial]:
    return [*interrupt_trials(), *checkpoint_trials()]
