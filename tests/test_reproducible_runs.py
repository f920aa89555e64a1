"""Same config + seed -> same numbers: two fresh `mzs train-clip` processes on phantom captions
(the tokenizer built from the captions in each run) export identical weights."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--config", "configs/phantom.py",
    "--config.data.path=phantom:48", "--config.batch_size=8", "--config.total_steps=2",
    "--config.eval.max_examples=16", "--config.eval.batch=8", "--config.data.num_threads=1",
]  # fmt: skip


def _mzs(*argv, hash_seed: str):
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device, as a user runs it
    subprocess.run(
        [sys.executable, "-m", "mzs_jax.cli", *argv], cwd=REPO, env=env, check=True,
        capture_output=True, timeout=900,
    )  # fmt: skip


@pytest.mark.slow  # two fresh tiny training runs
def test_two_fresh_identical_train_clip_runs_export_identical_weights(tmp_path):
    exported = []
    for i, hash_seed in enumerate(("1", "2")):
        work, out = tmp_path / f"run{i}", tmp_path / f"run{i}.safetensors"
        _mzs("train-clip", *TINY, "--workdir", str(work), hash_seed=hash_seed)
        _mzs("export", "--workdir", str(work), "--out", str(out), hash_seed=hash_seed)
        exported.append(load_file(str(out)))
    a, b = exported
    assert a.keys() == b.keys()
    diff = {k: float(np.max(np.abs(a[k] - b[k]))) for k in a if not np.array_equal(a[k], b[k])}
    assert not diff, f"weights differ: {sorted(diff.items(), key=lambda x: -x[1])[:5]}"
    toks = [(tmp_path / f"run{i}" / "tokenizer" / "vocab.txt").read_bytes() for i in (0, 1)]
    assert toks[0] == toks[1]
