"""`mzs_jax.host_memory`: freed blocks stay in the process (no page faults on reuse), the opt-out
and a bad value are said, and the training commands print which path ran."""

import os
import subprocess
import sys

import pytest

from mzs_jax import host_memory

# A process that mallocs, touches and frees a 256 MiB block twice (as XLA:CPU does a step's
# temporary buffers, on a worker thread) and prints the minor faults of the second time.
_CHILD = """
import ctypes, resource, sys, threading
from mzs_jax import host_memory
print(host_memory.keep_freed_memory(), file=sys.stderr)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def step():
    block = libc.malloc(1 << 28)
    ctypes.memset(block, 1, 1 << 28)  # touches every page
    libc.free(block)

for i in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = threading.Thread(target=step)
    t.start()
    t.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_step_faults(mode: str) -> tuple[int, str]:
    env = dict(os.environ, **{host_memory.ENV: mode})
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1]), out.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_a_freed_block_is_reused_without_page_faults_and_the_system_default_is_said():
    kept, said = _second_step_faults("keep")
    assert "freed memory kept in the process" in said, said
    system, said_system = _second_step_faults("system")
    assert "system default (MZS_HOST_MALLOC=system)" in said_system, said_system
    pages = (1 << 28) // 4096
    assert system > pages // 2, system  # the kernel zero-fills the block again each time
    assert kept < pages // 20, kept


def test_a_bad_mode_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "fast")
    with pytest.raises(ValueError, match="MZS_HOST_MALLOC must be one of"):
        host_memory.keep_freed_memory()
    from mzs_jax import cli

    assert cli.main(["train-clip", "--help"]) == 2


def test_nothing_changes_once_jax_is_loaded(monkeypatch):
    import jax  # noqa: F401  (this test process has JAX's threads running)

    monkeypatch.delenv(host_memory.ENV, raising=False)
    assert "JAX was loaded before" in host_memory.keep_freed_memory()
