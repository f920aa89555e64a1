"""Stage 1 across processes: 2 JAX processes × 4 CPU devices with the contrastive batch sharded
over all 8 devices (so the global loss's collectives cross the process boundary) follow the same
loss trajectory as 1 process × 8 devices, for data=8 (ring form: tiles passed device to device)
and for data=4 × fsdp=2 (gather form)."""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_train_resume import _env

STEPS = 3


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(repo_root, workdir, mesh, extra):
    return [
        sys.executable, "-m", "mzs_jax.cli", "train-clip",
        "--config", str(repo_root / "configs" / "phantom.py"), "--workdir", str(workdir),
        f"--config.data.tokenizer={repo_root / 'mzs_jax/assets/phantom_clip/tokenizer'}",
        "--config.data.path=phantom:64",
        "--config.batch_size=16", f"--config.total_steps={STEPS}",
        f"--config.mesh.data={mesh[0]}", f"--config.mesh.fsdp={mesh[1]}",
        "--config.checkpoint.best_metric=", "--config.checkpoint.every_steps=1000", *extra,
    ]  # fmt: skip


def _losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r])


def _run(cmds_envs, cwd):
    procs = [
        subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for cmd, env in cmds_envs
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    return outs


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh,form", [((8, 1), "ring"), ((4, 2), "gather")], ids=["data8-ring", "data4-fsdp2-gather"]
)
def test_two_processes_match_one_process_with_the_batch_on_all_8_devices(
    tmp_path, repo_root, mesh, form
):
    extra = [f"--config.loss.global_form={form}"]
    one, two = tmp_path / "one", tmp_path / "two"
    out_one = _run([(_command(repo_root, one, mesh, extra), _env(8))], repo_root)[0]
    assert f"global-batch {form} form" in out_one, out_one[-2000:]
    port = _free_port()
    runs = []
    for pid in range(2):
        env = dict(
            _env(4),
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
        )
        runs.append((_command(repo_root, two, mesh, extra), env))
    _run(runs, repo_root)
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == STEPS
    assert np.all(np.isfinite(a)) and np.ptp(a) > 0
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
