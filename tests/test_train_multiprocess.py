"""2 JAX processes x 4 CPU devices (gloo collectives) follow the same loss trajectory as 1 x 8."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from test_train_resume import RUN, _env
from train_toy import ToyTask, toy_config

from mzs_jax.train.loop import fit

ARGS = ["num_epochs=2", "batch_size=16"]


def _losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_4_devices_match_one_process_of_8(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    fit(ToyTask(dropout=0.2), toy_config(num_epochs=2, batch_size=16), one)  # 1 x 8 in-process
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(
            _env(4),
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, RUN, two, *ARGS],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 8
    np.testing.assert_allclose(b, a, atol=1e-5)
    assert "[train]" in outs[0] and "[train]" not in outs[1]  # only process 0 logs
    assert os.path.exists(two / "ckpt" / "8" / "data" / "process_1-of-2.json")
