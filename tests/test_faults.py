"""The checkpoint fault matrix of docs/reliability.md, through the CLI on the tiny config: each
fault either recovers bit-identically from the previous good step (kill -9 mid-train and
mid-save, truncated / flipped / silently changed / metadata-less newest step, full disk) or stops
with one clear error that loses nothing (NaN step, architecture or batch-size change)."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from faults import CORRUPTIONS, tree_digest

from mzs_jax.train import integrity
from mzs_jax.train.loop import final_params

pytestmark = pytest.mark.slow  # about a dozen tiny training processes

REPO = pathlib.Path(__file__).resolve().parents[1]
# 41 training pairs / batch 8 = 5 steps per epoch; 8 steps, saves at 2, 4, 5 (evaluation), 6, 8.
TINY = [
    "--config", "configs/phantom.py",
    "--config.data.path=phantom:48", "--config.batch_size=8", "--config.total_steps=8",
    "--config.checkpoint.every_steps=2", "--config.eval.max_examples=16", "--config.eval.batch=8",
    "--config.data.num_threads=1",
]  # fmt: skip
# Slows every checkpoint write (the grain iterator item) so that a kill lands mid-save.
SLOW_SAVES = (
    "import sys, time, grain.checkpoint as g\n"
    "_save = g.CheckpointHandler.save\n"
    "g.CheckpointHandler.save = lambda self, *a, **k: (_save(self, *a, **k), time.sleep(1.5))[0]\n"
    "from mzs_jax import cli\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")  # shared compiled steps: the runs start faster
    out = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache))
    out.update(
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    out.pop("XLA_FLAGS", None)  # one device, as a user runs it
    return out


def _cmd(*argv, script=None):
    head = [sys.executable, "-c", script] if script else [sys.executable, "-m", "mzs_jax.cli"]
    return [*head, *argv]


def mzs(env, *argv, timeout=600):
    return subprocess.run(
        _cmd(*argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def train(env, workdir, *extra):
    return mzs(env, "train-clip", *TINY, "--workdir", str(workdir), *extra)


def _error_line(proc) -> str:
    """The one `mzs <cmd>: error:` line (library threads may log around it on a full disk)."""
    lines = [x[x.index("mzs ") :] for x in proc.stderr.splitlines() if ": error: " in x]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[:3000] + proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    workdir = tmp_path_factory.mktemp("faults") / "ref"
    proc = train(env, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # A fresh `mzs` process sets the host allocator before JAX loads, and says so.
    assert "host malloc: freed memory kept in the process" in proc.stderr, proc.stderr[:3000]
    return workdir, final_params(workdir)


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "ckpt").iterdir() if p.name.isdigit())


def _log_lines(workdir):
    f = workdir / "metrics.jsonl"
    return len(f.read_text().splitlines()) if f.exists() else 0


def _kill_when(proc, ready, what):
    deadline = time.time() + 300
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before {what}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("when", ["mid_train", "mid_save"])
def test_kill_9_then_rerun_is_bit_identical(reference, env, tmp_path, when):
    workdir = tmp_path / "w"
    script = SLOW_SAVES if when == "mid_save" else None
    proc = subprocess.Popen(
        _cmd("train-clip", *TINY, "--workdir", str(workdir), script=script),
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ckpt = workdir / "ckpt"

    def saved():  # a complete step to resume from
        return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())

    def saving():
        return saved() and any("tmp" in p.name for p in ckpt.iterdir())

    if when == "mid_train":
        _kill_when(proc, lambda: saved() and _log_lines(workdir) >= 3, "step 3")
    else:
        _kill_when(proc, saving, "a second save")
        assert any("tmp" in p.name for p in ckpt.iterdir())  # killed while a step was written
    rerun = train(env, workdir)
    assert rerun.returncode == 0 and "resumed from" in rerun.stdout, rerun.stderr[-3000:]
    _same(final_params(workdir), reference[1])


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_newest_step_is_moved_aside_and_the_rerun_is_bit_identical(
    reference, env, tmp_path, corruption
):
    workdir = tmp_path / "w"
    shutil.copytree(reference[0], workdir)
    newest = max(_steps(workdir))
    CORRUPTIONS[corruption](workdir / "ckpt" / str(newest))
    before = tree_digest(workdir / "ckpt" / str(newest))
    proc = train(env, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rejected = workdir / integrity.REJECTED_DIR / str(newest)
    if rejected.exists():
        assert f"ckpt/{newest} is unreadable or corrupt" in proc.stdout + proc.stderr
        assert tree_digest(rejected) == before  # renamed, not deleted
    else:  # flipped bytes the compressed stream never reads: the step verified as saved
        assert corruption == "flipped_bytes" and "already trained" in proc.stdout
    _same(final_params(workdir), reference[1])


def test_nan_step_is_not_saved_and_export_gives_the_last_finite_weights(env, tmp_path):
    from flax import nnx

    from mzs_jax.train import checkpoint as ckpt

    workdir, out = tmp_path / "w", tmp_path / "m.safetensors"
    # Warm-up from lr 0 to 1e38: step 1 is finite and saved; the next updates overflow.
    diverge = [
        "--config.optimizer.name=sgd",
        "--config.optimizer.lr=1e38",
        "--config.optimizer.warmup_steps=4",
        "--config.checkpoint.every_steps=1",
    ]
    line = _error_line(train(env, workdir, *diverge))
    steps = _steps(workdir)
    assert "non-finite" in line and f"ckpt/{max(steps)}, holds the finite weights" in line
    for step in steps:  # nothing non-finite was ever saved
        model, _ = ckpt.restore_model(workdir, step=step)
        assert integrity.all_finite(nnx.state(model)), step
    proc = mzs(env, "export", "--workdir", str(workdir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.numpy import load_file

    assert all(np.isfinite(v).all() for v in load_file(str(out)).values())


def _mount_tmpfs(path: pathlib.Path, size: str) -> bool:
    path.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    return subprocess.run(mount, capture_output=True).returncode == 0


def test_full_disk_is_one_clear_error_and_the_rerun_is_bit_identical(reference, env, tmp_path):
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "6m"):  # room for two checkpoints of the tiny CLIP
        pytest.skip("cannot mount a small tmpfs here (needs root or a user namespace)")
    try:
        line = _error_line(train(env, small / "w", "--config.checkpoint.every_steps=1"))
        assert "CheckpointWriteError: could not write a checkpoint in" in line
        assert "are intact" in line
        saved = _steps(small / "w")
        shutil.copytree(small / "w", tmp_path / "w", symlinks=True)  # "free space": a bigger disk
    finally:
        subprocess.run(["umount", str(small)], check=False)
    assert saved, "no checkpoint fitted before the disk was full"
    proc = train(env, tmp_path / "w", "--config.checkpoint.every_steps=1")
    assert proc.returncode == 0 and f"resumed from {tmp_path / 'w'}/ckpt/{saved[-1]}" in proc.stdout
    ref = final_params(reference[0])
    _same(final_params(tmp_path / "w"), ref)


@pytest.mark.parametrize(
    "change,match",
    [
        ("--config.model_overrides.vision.patch_size=4", "model vision.patch_size: 8 -> 4"),
        ("--config.batch_size=16", "batch_size: 8 -> 16"),
        ("--config.data.path=phantom:64", "data.path: 'phantom:48' -> 'phantom:64'"),
    ],
)
def test_changed_config_on_resume_is_one_error_and_writes_nothing(
    reference, env, tmp_path, change, match
):
    workdir = tmp_path / "w"
    shutil.copytree(reference[0], workdir)
    before = tree_digest(workdir)
    line = _error_line(train(env, workdir, change))
    assert match in line and "allow_config_change=True" in line
    assert tree_digest(workdir) == before
