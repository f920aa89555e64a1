"""Per-op-category time tables of one compiled JAX step (jax.profiler trace × optimised HLO) and of
a torch step (`torch.profiler`), for `bench/train_step.py --profile DIR` and docs/performance.md.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import pathlib
import re

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_SHAPE = re.compile(r"^[a-z0-9]+\[([0-9,]*)\]")
# Thunks that only run other thunks (their time is the children's).
_CONTROL = {"while", "conditional", "call", "async-start", "async-done"}
# First stage whose file is anywhere on the op's stack (the text tower calls vit.py's attention
# and GELU, so bert.py outranks vit.py; the towers outrank the loss code that calls them).
_STAGES = (
    ("/optax/", "optimizer"),
    ("models/bert.py", "text tower"),
    ("models/vit.py", "image tower"),
    ("/losses/", "loss"),
    ("models/clip.py", "L2 norm"),
    ("train/clip_task.py", "loss"),
    ("train/step.py", "step"),
)
_MOVES = {"transpose", "copy", "bitcast", "reshape", "broadcast", "parameter", "constant", "slice"}
_MOVES |= {"concatenate", "dynamic-slice", "dynamic-update-slice", "pad", "tuple"}
_MOVES |= {"get-tuple-element", "iota", "convert", "reverse"}


def _dims(shape_text: str) -> list[int]:
    m = _SHAPE.match(shape_text.strip())
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _attr(rest: str, key: str) -> str | None:
    m = re.search(rf"{key}=\{{([0-9,]*)\}}", rest)
    return m.group(1) if m else None


def parse_hlo(text: str) -> tuple[dict, dict, dict[int, str]]:
    """Optimised HLO text → (instructions by name, computations → their instructions, frame files).

    Each instruction: `{"op", "shape", "rest", "comp"}`; frame files map a stack-frame id to its
    chain of file names (innermost first), from the module's StackFrames table.
    """
    files, locs, frames, section = {}, {}, {}, None
    instrs, comps, comp = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        head = line.strip()
        if head in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = head
            continue
        if section and head and head[0].isdigit():
            num, body = head.split(" ", 1)
            if section == "FileNames":
                files[int(num)] = body.strip('"')
            elif section == "FileLocations":
                locs[int(num)] = int(re.search(r"file_name_id=(\d+)", body).group(1))
            elif section == "StackFrames":
                loc = int(re.search(r"file_location_id=(\d+)", body).group(1))
                parent = int(re.search(r"parent_frame_id=(\d+)", body).group(1))
                frames[int(num)] = (loc, parent)
            continue
        section = None if not head else section
        m = _COMP.match(line)
        if m:
            comp = m.group(1)
            continue
        m = _INSTR.match(line)
        if m:
            name, shape, op, rest = m.groups()
            instrs[name] = {"op": op, "shape": shape, "rest": rest, "comp": comp}
            comps[comp].append(name)
    # jaxlib 0.10 prints each parent as its id + 1 (0 = none), so a frame can appear to be its
    # own parent; real ids never loop, so a self-parent means the shifted form.
    shift = int(any(fid == parent for fid, (_, parent) in frames.items()))
    chains = {fid: _chain(fid, frames, locs, files, shift) for fid in frames}
    return instrs, comps, chains


def _chain(fid: int, frames, locs, files, shift: int) -> list[str]:
    """File names from the innermost frame outwards."""
    chain, seen = [], set()
    while fid in frames and fid not in seen:
        seen.add(fid)
        loc, parent = frames[fid]
        chain.append(files.get(locs.get(loc, -1), "?"))
        fid = parent - shift
    return chain


def _called(instr: dict, comps: dict, instrs: dict) -> list[str]:
    """Names of the instructions inside a fusion (recursively), else the instruction itself."""
    m = re.search(r"calls=%([\w.\-]+)", instr["rest"])
    if not m or instr["op"] != "fusion":
        return []
    out = []
    for name in comps.get(m.group(1), []):
        out.append(name)
        out.extend(_called(instrs[name], comps, instrs))
    return out


def operands(ins: dict) -> list[str]:
    """Names of an instruction's operands."""
    return re.findall(r"%([\w.\-]+)", ins["rest"].split(")", 1)[0])


def _dot_flops(name: str, instrs: dict) -> float:
    """2·|out|·|contracted| for a dot; 2·|out|·|kernel|/out_features for a convolution."""
    ins = instrs[name]
    out = math.prod(_dims(ins["shape"]))
    operands_ = operands(ins)
    if ins["op"] == "dot":
        lhs = _dims(instrs[operands_[0]]["shape"]) if operands_[0] in instrs else []
        contract = _attr(ins["rest"], "lhs_contracting_dims") or ""
        k = math.prod(lhs[int(d)] for d in contract.split(",") if d) if lhs else 0
        return 2.0 * out * k
    kernel = _dims(instrs[operands_[1]]["shape"]) if operands_[1] in instrs else []
    labels = re.search(r"dim_labels=\w+_(\w+)->", ins["rest"])
    if not kernel or not labels:
        return 0.0
    return 2.0 * out * math.prod(kernel) / kernel[labels.group(1).index("o")]


def _kind(ops: set[str], main: dict) -> str:
    if "convolution" in ops:
        return "conv (patch embed)"
    if "dot" in ops:
        batched = "lhs_batch_dims" in main["rest"]
        return "matmul, batched (attention)" if batched else "matmul, dense"
    if "custom-call" in ops:
        return "custom-call"
    if "erf" in ops:
        return "GELU (erf) + elementwise"
    if "exponential" in ops and "reduce" in ops:
        return "softmax"
    if "reduce" in ops:
        return "reduce (LayerNorm, sums)"
    if "gather" in ops or "scatter" in ops:
        return "gather/scatter (embeddings)"
    if ops <= _MOVES:
        return "transpose/copy"
    return "elementwise"


def _stage(main: dict, chains: dict) -> str:
    fid = re.search(r"stack_frame_id=(\d+)", main["rest"])
    chain = chains.get(int(fid.group(1)), []) if fid else []
    for needle, stage in _STAGES:
        if any(needle in path for path in chain):
            return stage
    return "other"


def classify(name: str, instrs: dict, comps: dict, chains: dict) -> dict | None:
    """`{"stage", "kind", "dir", "flops"}` of one thunk; None for control-flow thunks."""
    ins = instrs.get(name)
    if ins is None or ins["op"] in _CONTROL:
        return None
    inner = _called(ins, comps, instrs) or [name]
    ops = {instrs[n]["op"] for n in inner}
    heavy = [n for n in inner if instrs[n]["op"] in ("dot", "convolution")]
    main = instrs[heavy[0]] if heavy else ins
    op_name = re.search(r'op_name="([^"]*)"', main["rest"])
    backward = bool(op_name) and "transpose(" in op_name.group(1)
    stage = _stage(main, chains)
    return {
        "stage": stage,
        "kind": _kind(ops, main),
        "dir": "" if stage in ("optimizer", "step") else "bwd" if backward else "fwd",
        "flops": sum(_dot_flops(n, instrs) for n in heavy),
    }


def trace_events(trace_dir: str | pathlib.Path) -> list[tuple[str, float, float]]:
    """`(name, start µs, duration µs)` of every complete event in the newest perfetto trace
    (`*.trace.json.gz`) under `trace_dir`."""
    found = pathlib.Path(trace_dir).rglob("*.trace.json.gz")
    paths = sorted(found, key=lambda p: p.stat().st_mtime)
    if not paths:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: was the trace written?")
    with gzip.open(paths[-1]) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [
        (e["name"], float(e["ts"]), float(e.get("dur", 0.0)))
        for e in events
        if e.get("ph") == "X" and "ts" in e
    ]


HOST = "(host: between steps)"


def attributed_time(events, step_starts: list[float] = ()) -> dict[str, float]:
    """µs per name with overlaps shared: while n thunks run at once, each is billed 1/n.

    XLA:CPU runs independent thunks (e.g. the two towers' forward passes) side by side on the
    cores, so raw durations double-count. A gap with no thunk running goes to the thunk that
    ended last (library matmuls finish asynchronously after their thunk returns), or to `HOST`
    when a step starts inside it; the billed times sum to the traced wall time.
    """
    edges = sorted((t, d, i) for i, (_, t0, dur) in enumerate(events)
                   for t, d in ((t0, 1), (t0 + dur, -1)))  # fmt: skip
    starts = sorted(step_starts)
    billed, running, last, ended = collections.Counter(), set(), None, None
    for t, delta, i in edges:
        if last is not None and t > last:
            if running:
                for j in running:
                    billed[events[j][0]] += (t - last) / len(running)
            elif ended is not None:
                host = any(last <= s < t for s in starts)
                billed[HOST if host else events[ended][0]] += t - last
        if delta > 0:
            running.add(i)
        else:
            running.discard(i)
            ended = i
        last = t
    return dict(billed)


def jax_category_rows(hlo_text: str, trace_dir, steps: int) -> list[dict]:
    """One row per (stage, kind, fwd/bwd): wall ms per step (overlaps shared), thunk count,
    GFLOP and GFLOP/s of the dots in it."""
    instrs, comps, chains = parse_hlo(hlo_text)
    events = trace_events(trace_dir)
    leaves = [e for e in events if classify(e[0], instrs, comps, chains)]
    step_starts = [t for name, t, _ in events if name.startswith("PjitFunction")]
    rows = collections.defaultdict(lambda: {"us": 0.0, "n": 0, "flops": 0.0})
    for name, us in attributed_time(leaves, step_starts).items():
        c = {"stage": "host", "kind": "dispatch", "dir": "", "flops": 0.0} if name == HOST else None
        c = c or classify(name, instrs, comps, chains)
        if c is None:
            continue
        r = rows[(c["stage"], c["kind"], c["dir"])]
        r["us"] += us / steps
        r["n"] += 1
        r["flops"] += c["flops"]
    out = [{"key": k, **v} for k, v in rows.items()]
    return sorted(out, key=lambda r: -r["us"])


def jax_table(rows: list[dict], top: int = 10) -> str:
    """Markdown: the `top` categories by time, then the rest summed."""
    total = sum(r["us"] for r in rows) or 1.0
    lines = [
        "| # | stage | op kind | pass | ms/step | % | thunks | GFLOP | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows[:top], 1):
        stage, kind, direction = r["key"]
        rate = f"{r['flops'] / r['us'] / 1e3:.0f}" if r["flops"] else ""
        gf = f"{r['flops'] / 1e9:.1f}" if r["flops"] else ""
        lines.append(
            f"| {i} | {stage} | {kind} | {direction} | {r['us'] / 1e3:.1f} | "
            f"{100 * r['us'] / total:.1f} | {r['n']} | {gf} | {rate} |"
        )
    rest = rows[top:]
    if rest:
        us = sum(r["us"] for r in rest)
        lines.append(
            f"| | rest ({len(rest)} categories) | | | {us / 1e3:.1f} | {100 * us / total:.1f} | "
            f"{sum(r['n'] for r in rest)} | | |"
        )
    lines.append(f"| | **traced wall time** | | | **{total / 1e3:.1f}** | 100 | | | |")
    return "\n".join(lines)


def torch_table(prof, steps: int, top: int = 10) -> str:
    """Markdown of `torch.profiler`'s key averages: the `top` ops by self CPU time, per step."""
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    lines = ["| # | torch op | ms/step (self) | % | calls/step |", "|---|---|---|---|---|"]
    for i, e in enumerate(events[:top], 1):
        lines.append(
            f"| {i} | `{e.key}` | {e.self_cpu_time_total / 1e3 / steps:.1f} | "
            f"{100 * e.self_cpu_time_total / total:.1f} | {e.count / steps:g} |"
        )
    lines.append(f"| | **all ops (self)** | **{total / 1e3 / steps:.1f}** | 100 | |")
    return "\n".join(lines)
