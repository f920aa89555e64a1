"""Test set-up: 8 virtual CPU devices for the sharding tests, set before jax is imported."""

import os
import pathlib
import tempfile

_flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
# LLVM optimisation level 0 for XLA's CPU code (unless the caller chose a level): the suite is
# dominated by compiling tiny programs. It is the same computation, but not always the same float
# rounding as the default level (e.g. the quick demo's fine-tuned i2t_top1 0.578 → 0.583), so the
# tests compare runs made under the same flags, and test_reproducible_runs.py drops XLA_FLAGS to
# check reproducibility exactly as a user runs it. Measured (docs/performance.md, "Test-suite
# time"): the one-device grad-accumulation tests 89-104 s → 64 s, the full-size gScoreCAM parity
# test (compute-bound) 76 → 85 s.
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the whole session, in-process and for the `mzs`
# subprocesses (they inherit the environment): the same tiny models and steps are compiled by many
# tests, and a cache hit skips XLA's compile (same HLO, flags and devices → the same program).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mzs_test_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """`../shared/data` next to the checkout; tests that need it skip cleanly when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
