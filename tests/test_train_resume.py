"""Resume: kill -9 then rerun gives bit-identical params; corrupt checkpoints are moved aside."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from train_toy import ToyTask, toy_config

from mzs_jax.train import checkpoint as ckpt
from mzs_jax.train.loop import final_params, fit

RUN = pathlib.Path(__file__).with_name("train_toy_run.py")
ARGS = ["num_epochs=4", "batch_size=8", "checkpoint.every_steps=3"]  # 32 steps


def _env(devices=8):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def _steps_logged(workdir):
    f = workdir / "metrics.jsonl"
    return len(f.read_text().splitlines()) if f.exists() else 0


def test_kill_9_then_rerun_gives_bit_identical_params(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(
        [sys.executable, RUN, ref, *ARGS], env=_env(), check=True, capture_output=True, timeout=120
    )
    proc = subprocess.Popen(
        [sys.executable, RUN, killed, *ARGS, "slow_ms=25"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 90
    while _steps_logged(killed) < 10 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _steps_logged(killed)
    assert 10 <= done < 32
    out = subprocess.run(
        [sys.executable, RUN, killed, *ARGS],
        env=_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "resumed from" in out.stdout
    a, b = final_params(ref), final_params(killed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 32


def _corrupt(step_dir: pathlib.Path):
    for f in (step_dir / "model").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])


def test_corrupted_latest_checkpoint_is_reported_and_previous_used(tmp_path, capsys):
    cfg = toy_config(
        num_epochs=1, batch_size=8, **{"checkpoint.every_steps": 3, "checkpoint.async_save": False}
    )
    fit(ToyTask(), cfg, tmp_path)  # 8 steps: checkpoints 3, 6, 8
    good = final_params(tmp_path)
    _corrupt(tmp_path / "ckpt" / "8")
    capsys.readouterr()
    model, _ = ckpt.restore_model(tmp_path)  # falls back to step 6, moving 8 aside
    err = capsys.readouterr().err
    assert "ckpt/8 is unreadable" in err and (tmp_path / "ckpt_rejected" / "8").is_dir()
    assert not np.array_equal(np.asarray(model.l1.kernel[...]), good["l1.kernel"])
    fit(ToyTask(), cfg, tmp_path)  # resumes from 6, redoes 7-8
    out = capsys.readouterr()
    assert "resumed from" in out.out and "/6" in out.out
    redone = final_params(tmp_path)
    for k in good:
        np.testing.assert_array_equal(redone[k], good[k], err_msg=k)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = toy_config(
        num_epochs=4, batch_size=8, **{"checkpoint.every_steps": 2, "checkpoint.async_save": False}
    )
    cfg.optimizer.lr = 1e6  # diverges within a few steps
    cfg.optimizer.name = "sgd"
    with pytest.raises(
        ValueError, match="non-finite .* The last checkpoint, .* holds the finite weights"
    ):
        fit(ToyTask(), cfg, tmp_path)
    params = final_params(tmp_path)
    assert all(np.isfinite(v).all() for v in params.values())
