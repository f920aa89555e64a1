"""Progress lines with rate and ETA, printed by every long-running `mzs` subcommand.

Written here rather than with tqdm on purpose: runs are read from log files and from pod job
logs, where a redrawn bar (carriage returns, terminal width) turns into noise, whereas these are
whole lines at most every few seconds, each with the step's metrics, and only process 0 prints.
tqdm is therefore not a dependency of the project (libraries such as transformers may still
install it for themselves).
"""

from __future__ import annotations

import sys
import time


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """`Progress(total, stage)`; `.update(n, **metrics)` prints at most every `every_s` seconds.

    Only process 0 should print in multi-host runs: pass `enabled=jax.process_index() == 0`.
    """

    def __init__(
        self,
        total: int,
        stage: str,
        *,
        unit: str = "it",
        every_s: float = 2.0,
        enabled: bool = True,
        stream=None,
    ):
        self.total, self.stage, self.unit = int(total), stage, unit
        self.every_s, self.enabled = every_s, enabled
        self.stream = stream or sys.stdout
        self.done = 0
        self.start = time.perf_counter()
        self._last = -1e9

    def eta_seconds(self) -> float:
        elapsed = time.perf_counter() - self.start
        if self.done == 0:
            return float("nan")
        return elapsed / self.done * max(0, self.total - self.done)

    def update(self, n: int = 1, *, force: bool = False, **metrics) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.enabled or (
            not force and now - self._last < self.every_s and self.done < self.total
        ):
            return
        self._last = now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = self.eta_seconds()
        extra = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
        )
        eta_s = _fmt(eta) if eta == eta else "--:--"
        print(
            f"[{self.stage}] {self.done}/{self.total} {self.unit} "
            f"{rate:.2f} {self.unit}/s elapsed {_fmt(elapsed)} ETA {eta_s} {extra}".rstrip(),
            file=self.stream,
            flush=True,
        )

    def close(self, **metrics) -> None:
        if self.done < self.total:
            self.done = self.total - 1
            self.update(1, force=True, **metrics)
