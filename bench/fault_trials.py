"""Fault trials through the CLI, each outcome classified: bad input files of every loader, bad
config values and keys, interrupted runs, corrupted checkpoints, export/import faults and
evaluation gaps (the trial lists: `bench/fault_trials_{loaders,inputs,runs,weights}.py`).

    python bench/fault_trials.py [--only KIND,...] [--list] [--out trials.md] [--keep DIR]

Outcomes: `clear` (exit != 0, one `mzs <cmd>: error:` line naming the file or key),
`unclear` (an error that does not name them), `traceback` (an uncaught exception), `silent`
(exit 0 with a wrong or unreported result), `recovered` (exit 0 and the right result after the
fault), `lost` (something already written is gone). `noisy`: library log tracebacks printed
before a clean final error line (counted beside the outcome).
Not registered in `mzs bench`: 4-9 minutes on 2 CPU cores (a few dozen tiny training runs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]  # trial lists; tests/faults.py corruptions

OUTCOMES = ("clear", "unclear", "traceback", "silent", "recovered", "lost")


@dataclasses.dataclass
class Result:
    rc: int
    out: str
    err: str
    exc: str = ""  # the uncaught exception (in-process runs)
    seconds: float = 0.0


@dataclasses.dataclass
class Trial:
    """One fault. `argv(ctx, d)` is run in-process through `cli.main` unless `run(ctx, d)` is
    given (subprocesses: kills, full disks). `expect`: "error" (a clear error is right) or
    "recover" (exit 0 and `check(ctx, d, result)` true). `names`: what the error line must name.
    `preserve(ctx, d)`: paths whose files must be intact afterwards (else `lost`)."""

    kind: str
    name: str
    expect: str
    argv: Callable | None = None
    names: tuple[str, ...] = ()
    setup: Callable | None = None
    check: Callable | None = None
    preserve: Callable | None = None
    run: Callable | None = None


def in_process(argv: list[str]) -> Result:
    from mzs_jax import cli

    out, err = io.StringIO(), io.StringIO()
    t0, exc, rc = time.perf_counter(), "", 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = int(cli.main([str(a) for a in argv]) or 0)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # noqa: BLE001 - this is what the trial measures
            exc, rc = "".join(traceback.format_exception(e))[-2000:], 1
    return Result(rc, out.getvalue(), err.getvalue(), exc, time.perf_counter() - t0)


def subprocess_env(ctx) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(ctx.cache))
    env.update(
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.pop("XLA_FLAGS", None)
    env.pop("MZS_TRACEBACK", None)
    return env


def run_cli(ctx, argv: list[str], timeout: float = 900) -> Result:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "mzs_jax.cli", *map(str, argv)]
    p = subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(ctx), capture_output=True, text=True, timeout=timeout
    )
    return Result(p.returncode, p.stdout, p.stderr, "", time.perf_counter() - t0)


def error_line(res: Result) -> str:
    lines = [x[x.index("mzs ") :] for x in res.err.splitlines() if "mzs " in x and ": error" in x]
    return lines[-1] if lines else ""


def _holds(trial: Trial, ctx, d: pathlib.Path, res: Result) -> bool:
    """The trial's own check of the result; a check that cannot even run counts as failed."""
    try:
        return trial.check is None or bool(trial.check(ctx, d, res))
    except Exception:  # noqa: BLE001 - e.g. no readable checkpoint left to compare
        return False


def classify(trial: Trial, ctx, d: pathlib.Path, res: Result, lost: bool) -> tuple[str, bool]:
    """`(outcome, noisy)` of one trial."""
    line = error_line(res)
    after = res.err.split(line)[-1] if line else res.err
    noisy = "Traceback (most recent call last)" in res.err and bool(line)
    if lost:
        return "lost", noisy
    if res.exc or (res.rc != 0 and not line and "Traceback" in after):
        return "traceback", noisy
    if res.rc == 0:
        if trial.expect == "error":
            return "silent", noisy
        return ("recovered" if _holds(trial, ctx, d, res) else "silent"), noisy
    if not line:  # exit != 0 without our error line (argparse's usage error is one)
        line = next((x for x in res.err.splitlines() if ": error:" in x), "")
    if trial.expect == "error" and not _holds(trial, ctx, d, res):
        return "silent", noisy  # stopped, but did harm first (ran a pickle, left a file)
    named = line and all(n in line for n in trial.names)
    return ("clear" if named else "unclear"), noisy


def snapshot(paths: list[pathlib.Path]) -> dict[str, str]:
    from faults import tree_digest

    out = {}
    for p in paths:
        if p.is_dir():
            out.update({f"{p}/{k}": v for k, v in tree_digest(p).items()})
        elif p.is_file():
            out[str(p)] = tree_digest(p.parent).get(p.name, "")
    return out


def content_kept(before: dict[str, str], root: pathlib.Path) -> bool:
    """Every file content recorded before is still somewhere under `root` (a moved-aside step
    counts as kept)."""
    from faults import tree_digest

    now = set(tree_digest(root).values())
    return all(v in now for v in before.values())


def run_trial(trial: Trial, ctx) -> dict:
    d = ctx.base / "trials" / trial.kind / trial.name
    d.mkdir(parents=True, exist_ok=True)
    try:
        if trial.setup is not None:
            trial.setup(ctx, d)
        before = snapshot(trial.preserve(ctx, d)) if trial.preserve else {}
        res = trial.run(ctx, d) if trial.run else in_process(trial.argv(ctx, d))
    except Exception:  # noqa: BLE001 - a broken trial set-up is reported, not counted
        return {
            "trial": trial,
            "outcome": "setup-failed",
            "noisy": False,
            "detail": traceback.format_exc()[-600:],
            "seconds": 0.0,
        }
    lost = bool(before) and not content_kept(before, d)
    outcome, noisy = classify(trial, ctx, d, res, lost)
    detail = (res.exc.strip().splitlines() or [""])[-1] if res.exc else error_line(res)
    if not detail and res.rc == 0:
        detail = (res.out.strip().splitlines() or ["(exit 0)"])[-1][:200]
    return {
        "trial": trial,
        "outcome": outcome,
        "noisy": noisy,
        "detail": detail[:300],
        "seconds": res.seconds,
    }


def table(results: list[dict]) -> str:
    kinds = sorted({r["trial"].kind for r in results})
    head = ["kind", "tried", *OUTCOMES, "noisy"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in [*kinds, "all"]:
        sel = [r for r in results if kind in ("all", r["trial"].kind)]
        c = Counter(r["outcome"] for r in sel)
        cells = [kind, len(sel), *(c[o] for o in OUTCOMES), sum(r["noisy"] for r in sel)]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    other = Counter(r["outcome"] for r in results if r["outcome"] not in OUTCOMES)
    if other:
        rows.append(f"\nNot counted (trial set-up failed): {dict(other)}")
    return "\n".join(rows)


def details(results: list[dict]) -> str:
    lines = [
        "| kind | trial | expected | outcome | s | what the user saw |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["trial"]
        seen = r["detail"].replace("|", "\\|").replace("\n", " ")
        noisy = " (noisy)" if r["noisy"] else ""
        lines.append(
            f"| {t.kind} | {t.name} | {t.expect} | {r['outcome']}{noisy} | "
            f"{r['seconds']:.1f} | {seen} |"
        )
    return "\n".join(lines)


class Context:
    """Shared set-up, built once and reused by every trial that needs it (see the trial lists)."""

    def __init__(self, base: pathlib.Path):
        self.base = base
        self.cache = base / "jax_cache"
        self._made: dict[str, object] = {}

    def once(self, key: str, make: Callable[[pathlib.Path], object]):
        if key not in self._made:
            path = self.base / "shared" / key
            path.mkdir(parents=True, exist_ok=True)
            self._made[key] = make(path)
        return self._made[key]


def all_trials() -> list[Trial]:
    import fault_trials_inputs
    import fault_trials_loaders
    import fault_trials_runs
    import fault_trials_weights

    modules = (fault_trials_loaders, fault_trials_inputs, fault_trials_runs, fault_trials_weights)
    return [t for m in modules for t in m.trials()]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated kinds or trial names")
    parser.add_argument("--list", action="store_true", help="list the trials and exit")
    parser.add_argument("--out", type=pathlib.Path, help="write the Markdown here")
    parser.add_argument("--keep", type=pathlib.Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    trials = all_trials()
    if args.only:
        wanted = set(args.only.split(","))
        trials = [t for t in trials if t.kind in wanted or t.name in wanted]
    if args.list:
        return "\n".join(f"{t.kind:>10}  {t.name}  ({t.expect})" for t in trials)
    base = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="mzs_fault_trials_"))
    base.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_compilation_cache_dir", str(base / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    ctx, results, t0 = Context(base), [], time.perf_counter()
    for i, trial in enumerate(trials, 1):
        r = run_trial(trial, ctx)
        results.append(r)
        print(
            f"[{i}/{len(trials)}] {trial.kind}/{trial.name}: {r['outcome']}"
            f"{' (noisy)' if r['noisy'] else ''}  {r['detail'][:160]}",
            file=sys.stderr,
            flush=True,
        )
    md = (
        f"## Fault trials ({len(results)} trials, {time.perf_counter() - t0:.0f} s)\n\n"
        f"{table(results)}\n\n<details><summary>Every trial</summary>\n\n{details(results)}\n\n"
        "</details>\n"
    )
    if args.out:
        args.out.write_text(md)
    return md


if __name__ == "__main__":
    print(main())
