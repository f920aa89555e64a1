"""Subprocess entry for the engine tests: `python train_toy_run.py WORKDIR [key=int ...]`.

Multi-process runs set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
`slow_ms=N` makes each example take N ms to load, so that a run can be killed mid-way.
"""

import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mzs_jax.train import distributed  # noqa: E402


def main(argv):
    workdir, *pairs = argv
    kw = {k: int(v) for k, v in (p.split("=", 1) for p in pairs)}
    slow_ms = kw.pop("slow_ms", 0)
    distributed.initialize()
    from train_toy import ToyTask, toy_config

    from mzs_jax.train.loop import fit

    task = ToyTask(dropout=0.2)
    if slow_ms:
        base = task.train_dataset
        task.train_dataset = lambda c: base(c).map(lambda e: (time.sleep(slow_ms / 1e3), e)[1])
    fit(task, toy_config(**kw), workdir)


if __name__ == "__main__":
    main(sys.argv[1:])
