"""One `mzs demo --quick` per session, shared by test_demo_quick.py and test_readme_commands.py.

Runs the real command in a subprocess on one CPU device (the 8 virtual devices of conftest.py
are for the sharding tests), so it is exactly what a user runs.
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]


def mzs_env() -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f
    )
    env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def run_mzs(*args: str, cwd: pathlib.Path | None = None, timeout: int = 900):
    """`mzs ARGS...` as a subprocess; returns the CompletedProcess (stdout+stderr in .stdout)."""
    return subprocess.run(
        [sys.executable, "-m", "mzs_jax.cli", *args],
        cwd=cwd or REPO,
        env=mzs_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


@functools.cache
def quick_demo() -> tuple[pathlib.Path, str]:
    """Workdir and output of one `mzs demo --quick` run (raises if it fails)."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="mzs_demo_quick_")) / "demo"
    proc = run_mzs("demo", "--quick", "--workdir", str(work))
    if proc.returncode != 0:
        raise AssertionError(f"mzs demo --quick failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return work, proc.stdout
