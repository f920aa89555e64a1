"""Keep freed host memory inside the process (glibc malloc) so CPU train steps stop page-faulting.

XLA:CPU allocates a step's temporary buffers (6.2 GiB for the full-size BiomedCLIP step at batch
12) with `malloc` on its worker threads and frees them when the step ends. By default glibc gives
each thread its own arena and returns large freed blocks to the kernel, so every step faults its
whole working set back in, zero-filled: measured 2.44 M minor faults and ~10 s of kernel time in a
23 s step (docs/performance.md, "Second round", item 1). `keep_freed_memory()` sets, through
`mallopt`:

- `M_ARENA_MAX=1`: one arena for all threads, so a block one step frees is the next step's;
- `M_MMAP_MAX=0`: large blocks come from that heap, not from a fresh `mmap` each time;
- `M_TRIM_THRESHOLD=SIZE_MAX`: the heap is never shrunk back.

The process then keeps its peak resident memory until it exits (the next step reuses it). The
arena limit only binds threads that have not allocated yet, so it must run before JAX starts its
thread pools: `mzs` calls it first thing for every subcommand (the training ones print the
line), `bench/train_step.py` at start-up. `MZS_HOST_MALLOC=system` keeps the system's default;
the returned line says which path ran.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "MZS_HOST_MALLOC"
MODES = ("keep", "system")
# glibc <malloc.h> parameter numbers; M_TRIM_THRESHOLD's int -1 is stored as SIZE_MAX.
_SETTINGS = (("M_ARENA_MAX", -8, 1), ("M_MMAP_MAX", -4, 0), ("M_TRIM_THRESHOLD", -1, -1))


def keep_freed_memory() -> str:
    """Apply the settings above unless `MZS_HOST_MALLOC=system` or JAX is loaded already (an
    in-process `cli.main` call from Python, the tests); a line saying which path ran."""
    mode = os.environ.get(ENV, "keep")
    if mode not in MODES:
        raise ValueError(f"{ENV} must be one of {MODES}, got {mode!r}")
    if mode == "system":
        return f"host malloc: system default ({ENV}=system)"
    if "jaxlib" in sys.modules:  # its threads may hold arenas already: change nothing
        return "host malloc: system default (JAX was loaded before keep_freed_memory ran)"
    if not sys.platform.startswith("linux"):
        return f"host malloc: system default (glibc mallopt is Linux-only; {sys.platform})"
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError) as e:
        return f"host malloc: system default (no glibc mallopt: {e})"
    failed = [name for name, param, value in _SETTINGS if mallopt(param, value) != 1]
    if failed:
        return f"host malloc: system default for {', '.join(failed)} (mallopt refused them)"
    return (
        "host malloc: freed memory kept in the process (M_ARENA_MAX=1, M_MMAP_MAX=0, "
        f"M_TRIM_THRESHOLD=max; {ENV}=system to turn off)"
    )
