"""Fault trials, part 2: interrupted runs, corrupted checkpoints, resume-config changes, NaN
steps, full disks, and `mzs export` / `mzs import` faults (pickles included)."""

from __future__ import annotations

import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import time

import fault_trials_setup as S
import numpy as np
from fault_trials import REPO, Result, Trial, in_process, run_cli, subprocess_env
from faults import CORRUPTIONS

# ----------------------------------------------------------------------------- helpers


def _params_equal(workdir, ref) -> bool:
    from mzs_jax.train.loop import final_params

    got = final_params(workdir)
    return got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)


def _ref_copy(ctx, d) -> pathlib.Path:
    return S.copy(S.trained_clip(ctx)[0], d / "w")


def _newest(workdir) -> int:
    return max(int(p.name) for p in (workdir / "ckpt").iterdir() if p.name.isdigit())


def _train(*extra):
    return lambda c, d: ["train-clip", *S.CLIP_TINY, "--workdir", d / "w", *extra]


def _identical(ctx, d, res) -> bool:
    return _params_equal(d / "w", S.trained_clip(ctx)[1])


def _moved_and_identical(ctx, d, res) -> bool:
    return any((d / "w" / "ckpt_rejected").glob("*")) and _identical(ctx, d, res)


# ----------------------------------------------------------------------------- interrupts

SLOW_SAVES = (
    "import sys, time, grain.checkpoint as g\n"
    "_save = g.CheckpointHandler.save\n"
    "g.CheckpointHandler.save = lambda self, *a, **k: (_save(self, *a, **k), time.sleep(1.5))[0]\n"
    "from mzs_jax import cli\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


def _lines(workdir) -> int:
    f = workdir / "metrics.jsonl"
    return len(f.read_text().splitlines()) if f.exists() else 0


def _saved(workdir) -> bool:
    ck = workdir / "ckpt"
    return ck.is_dir() and any(p.name.isdigit() for p in ck.iterdir())


def _saving(workdir) -> bool:
    ck = workdir / "ckpt"
    return _saved(workdir) and any("tmp" in p.name for p in ck.iterdir())


def _interrupt(sig: int, slow_saves: bool):
    def run(ctx, d) -> Result:
        S.trained_clip(ctx)  # the reference first (and the compile cache)
        w = d / "w"
        head = ["-c", SLOW_SAVES] if slow_saves else ["-m", "mzs_jax.cli"]
        argv = [str(a) for a in ["train-clip", *S.CLIP_TINY, "--workdir", w]]
        proc = subprocess.Popen(
            [sys.executable, *head, *argv],
            cwd=REPO,
            env=subprocess_env(ctx),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = (lambda: _saving(w)) if slow_saves else (lambda: _saved(w) and _lines(w) >= 3)
        deadline = time.time() + 600
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if proc.poll() is not None:
            raise RuntimeError("the run ended before it could be interrupted")
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=300)
        if sig == signal.SIGINT and "Traceback (most recent call last)" in err.split("error")[-1]:
            return Result(1, "", err)  # Ctrl-C must be one line too
        return run_cli(ctx, argv)

    return run


def interrupt_trials() -> list[Trial]:
    return [
        Trial(
            "interrupt",
            "kill_9_mid_train",
            "recover",
            run=_interrupt(signal.SIGKILL, False),
            check=_identical,
        ),
        Trial(
            "interrupt",
            "kill_9_mid_save",
            "recover",
            run=_interrupt(signal.SIGKILL, True),
            check=_identical,
        ),
        Trial(
            "interrupt",
            "sigterm_mid_train",
            "recover",
            run=_interrupt(signal.SIGTERM, False),
            check=_identical,
        ),
        Trial(
            "interrupt",
            "ctrl_c_mid_train",
            "recover",
            run=_interrupt(signal.SIGINT, False),
            check=_identical,
        ),
    ]


# ----------------------------------------------------------------------------- checkpoints


def _damage(fn):
    def setup(ctx, d):
        w = _ref_copy(ctx, d)
        fn(w, w / "ckpt" / str(_newest(w)))

    return setup


def _corrupt_checksums(w, step):
    (step / "checksums" / "metadata").write_text("{ not json")


def _corrupt_data_item(w, step):
    for f in (step / "data").glob("*.json"):
        f.write_text("{ garbage")


def _all_steps(w, step):
    for p in (w / "ckpt").iterdir():
        if p.name.isdigit():
            CORRUPTIONS["truncated"](p)


def checkpoint_trials() -> list[Trial]:
    out = []
    for name, fn in sorted(CORRUPTIONS.items()):
        check = _identical if name == "flipped_bytes" else _moved_and_identical
        out.append(
            Trial(
                "checkpoint",
                f"newest_{name}",
                "recover",
                argv=_train(),
                setup=_damage(lambda w, s, fn=fn: fn(s)),
                check=check,
            )
        )
    more = [
        ("newest_checksums_corrupt", _corrupt_checksums, _moved_and_identical),
        ("newest_data_item_corrupt", _corrupt_data_item, _moved_and_identical),
        (
            "newest_checksums_deleted",
            lambda w, s: shutil.rmtree(s / "checksums"),
            lambda c, d, r: "not verified" in r.out + r.err and _identical(c, d, r),
        ),
        (
            "newest_step_metadata_deleted",
            lambda w, s: (s / "_CHECKPOINT_METADATA").unlink(),
            _identical,
        ),
        (
            "run_config_deleted",
            lambda w, s: (w / "run_config.json").unlink(),
            lambda c, d, r: "no run_config.json" in r.out and _identical(c, d, r),
        ),
        ("model_config_deleted", lambda w, s: (w / "model_config.json").unlink(), _identical),
    ]
    out += [
        Trial("checkpoint", n, "recover", argv=_train(), setup=_damage(f), check=c)
        for n, f, c in more
    ]
    keep = lambda c, d: [d / "w"]  # noqa: E731
    errors = [
        ("all_steps_corrupt", _all_steps, (), ("no intact checkpoint",)),
        (
            "model_config_corrupt",
            lambda w, s: (w / "model_config.json").write_text("{"),
            (),
            ("model_config.json",),
        ),
        (
            "architecture_change",
            lambda w, s: None,
            ("--config.model_overrides.vision.patch_size=4",),
            ("vision.patch_size", "allow_config_change"),
        ),
        ("batch_size_change", lambda w, s: None, ("--config.batch_size=16",), ("batch_size",)),
        ("seed_change", lambda w, s: None, ("--config.seed=3",), ("seed",)),
        ("data_path_change", lambda w, s: None, ("--config.data.path=phantom:64",), ("data.path",)),
        (
            "tokenizer_change",
            lambda w, s: None,
            (f"--config.data.tokenizer={REPO / 'mzs_jax/assets/phantom_clip/tokenizer'}",),
            ("data.tokenizer",),
        ),
    ]
    out += [
        Trial(
            "checkpoint",
            n,
            "error",
            argv=_train(*extra),
            setup=_damage(f),
            names=names,
            preserve=keep,
        )
        for n, f, extra, names in errors
    ]
    out += [
        Trial(
            "checkpoint",
            "allowed_batch_size_change",
            "recover",
            argv=_train(
                "--config.batch_size=16",
                "--config.total_steps=10",
                "--config.allow_config_change=True",
            ),
            setup=_damage(lambda w, s: None),
            check=lambda c, d, r: "allow_config_change=True: resuming" in r.out,
        ),
        Trial(
            "checkpoint",
            "lr_change_is_logged",
            "recover",
            argv=_train("--config.optimizer.lr=0.0005", "--config.total_steps=10"),
            setup=_damage(lambda w, s: None),
            check=lambda c, d, r: "optimizer.lr: 0.001 -> 0.0005" in r.out,
        ),
        Trial(
            "checkpoint",
            "train_into_import_workdir",
            "error",
            setup=lambda c, d: S.copy(S.random_clip(c), d / "w"),
            argv=_train(),
            names=("--config.init",),
            preserve=keep,
        ),
        Trial(
            "checkpoint",
            "ckpt_is_a_file",
            "error",
            setup=lambda c, d: [(d / "w").mkdir(), (d / "w" / "ckpt").write_text("x")],
            argv=_train(),
            names=("ckpt",),
        ),
        Trial(
            "checkpoint",
            "nan_step",
            "error",
            argv=_train(*DIVERGE),
            names=("non-finite parameters", "ckpt/1,"),
        ),
        Trial(
            "checkpoint",
            "export_after_nan_step",
            "recover",
            setup=_nan_run,
            argv=_export(),
            check=_finite_export,
        ),
        Trial("checkpoint", "full_disk_then_rerun", "recover", run=_full_disk, check=_identical),
    ]
    return out


DIVERGE = (
    "--config.optimizer.name=sgd",
    "--config.optimizer.lr=1e38",
    "--config.optimizer.warmup_steps=4",
    "--config.checkpoint.every_steps=1",
)


def _nan_run(ctx, d):
    in_process(_train(*DIVERGE)(ctx, d))


def _export(workdir="w", out="m.safetensors"):
    return lambda c, d: ["export", "--workdir", d / workdir, "--out", d / out]


def _finite_export(ctx, d, res) -> bool:
    from safetensors.numpy import load_file

    return all(np.isfinite(v).all() for v in load_file(str(d / "m.safetensors")).values())


def _mount(path: pathlib.Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    if subprocess.run(cmd, capture_output=True).returncode:
        raise RuntimeError("cannot mount a small tmpfs here (needs root)")


def _full_disk(ctx, d) -> Result:
    """Train on a 6 MB disk (two tiny checkpoints fit), expect one clear error, then rerun on a
    bigger disk (a copy) and resume."""
    S.trained_clip(ctx)
    small = d / "small"
    _mount(small, "6m")
    try:
        first = run_cli(ctx, _train("--config.checkpoint.every_steps=1")(ctx, small))
        shutil.copytree(small / "w", d / "w", symlinks=True)
    finally:
        subprocess.run(["umount", str(small)], check=False)
    line = [x for x in first.err.splitlines() if x.startswith("mzs ")]
    if first.rc == 0 or not line or "CheckpointWriteError" not in line[-1]:
        return Result(first.rc or 1, first.out, first.err)  # judged on the first run
    return run_cli(ctx, _train("--config.checkpoint.every_steps=1")(ctx, d))


# ----------------------------------------------------------------------------- export / import


class _Evil:
    def __init__(self, marker, how):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "eval":
            return (eval, (f"open({self.marker!r}, 'w')",))
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        return (open, (self.marker, "w"))


def _pickle_file(how: str):
    def setup(ctx, d):
        import torch

        marker, sd = d / "pwned", {"logit_scale": torch.zeros(())}
        if how == "torch_save":
            torch.save({**sd, "x": _Evil(marker, "open")}, d / "evil.pt")
        elif how == "nested_state_dict":
            torch.save({"state_dict": {**sd, "x": _Evil(marker, "open")}}, d / "evil.pth")
        elif how == "protocol_0_text":
            (d / "evil.bin").write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
        else:  # raw pickles: open / eval / os.system
            (d / "evil.bin").write_bytes(pickle.dumps({**sd, "x": _Evil(marker, how)}))

    return setup


def _import(file: str, *extra):
    return lambda c, d: [
        "import",
        "--open-clip",
        d / file,
        "--model",
        "tiny",
        "--workdir",
        d / "imported",
        *extra,
    ]


def _sd_file(change):
    def setup(ctx, d):
        from safetensors.numpy import load_file, save_file

        sd = load_file(str(S.open_clip_file(ctx)))
        change(sd)
        save_file(sd, str(d / "w.safetensors"))

    return setup


def _set(key, fn):
    return lambda sd: sd.__setitem__(key, fn(sd[key]))


def export_import_trials() -> list[Trial]:
    clip_w = lambda c, d: S.copy(S.random_clip(c), d / "w")  # noqa: E731
    nan_w = lambda c, d: _raw_nan_clip(d / "w")  # noqa: E731
    t = [
        (
            "export_to_directory",
            lambda c, d: [clip_w(c, d), (d / "m.safetensors").mkdir()],
            _export(),
            ("m.safetensors",),
        ),
        (
            "export_under_a_file",
            lambda c, d: [clip_w(c, d), (d / "f").write_text("x")],
            _export(out="f/m.safetensors"),
            ("f",),
        ),
        ("export_wrong_suffix", clip_w, _export(out="m.pt"), ("m.pt",)),
        (
            "export_without_workdir",
            None,
            lambda c, d: ["export", "--out", d / "m.safetensors"],
            ("--workdir",),
        ),
        ("export_missing_workdir", None, _export(workdir="nowhere"), ("nowhere",)),
        (
            "export_resunet_workdir",
            lambda c, d: S.copy(S.resunet_workdir(c), d / "w"),
            _export(),
            ("resunet", "not a clip"),
        ),
        ("export_non_finite", nan_w, _export(), ("NaN/inf", "logit_scale")),
        (
            "import_int32",
            _sd_file(_set("visual.trunk.pos_embed", lambda a: a.astype(np.int32))),
            _import("w.safetensors"),
            ("visual.trunk.pos_embed", "int32"),
        ),
        (
            "import_nan",
            _sd_file(_set("text.proj.0.weight", lambda a: a * np.nan)),
            _import("w.safetensors"),
            ("text.proj.0.weight", "non-finite"),
        ),
        (
            "import_inf_logit_scale",
            _sd_file(_set("logit_scale", lambda a: np.full_like(a, np.inf))),
            _import("w.safetensors"),
            ("logit_scale", "non-finite"),
        ),
        (
            "import_missing_key",
            _sd_file(lambda sd: sd.pop("visual.trunk.cls_token")),
            _import("w.safetensors"),
            ("visual.trunk.cls_token",),
        ),
        (
            "import_unexpected_key",
            _sd_file(lambda sd: sd.__setitem__("extra.w", np.ones(2, np.float32))),
            _import("w.safetensors"),
            ("extra.w",),
        ),
        (
            "import_wrong_shape",
            _sd_file(_set("text.proj.0.weight", lambda a: a[:, :-1])),
            _import("w.safetensors"),
            ("text.proj.0.weight", "shape"),
        ),
        (
            "import_truncated",
            lambda c, d: (d / "w.safetensors").write_bytes(S.open_clip_file(c).read_bytes()[:5000]),
            _import("w.safetensors"),
            ("w.safetensors",),
        ),
        (
            "import_wrong_suffix",
            lambda c, d: (d / "w.txt").write_text("x"),
            _import("w.txt"),
            ("w.txt",),
        ),
        ("import_missing_file", None, _import("absent.safetensors"), ("absent.safetensors",)),
    ]
    out = [Trial("weights", n, "error", argv=a, setup=s, names=names) for n, s, a, names in t]
    for how in ("open", "eval", "system", "torch_save", "nested_state_dict", "protocol_0_text"):
        file = {"torch_save": "evil.pt", "nested_state_dict": "evil.pth"}.get(how, "evil.bin")
        out.append(
            Trial(
                "weights",
                f"import_pickle_{how}",
                "error",
                argv=_import(file),
                setup=_pickle_file(how),
                names=(file, "refused"),
                check=lambda c, d, r: not (d / "pwned").exists(),
            )
        )
    out += [
        Trial(
            "weights",
            "import_over_existing_model",
            "error",
            setup=lambda c, d: [
                S.copy(S.random_clip(c), d / "imported"),
                shutil.copy(S.open_clip_file(c), d / "w.safetensors"),
            ],
            argv=_import("w.safetensors"),
            names=("--overwrite",),
            preserve=lambda c, d: [d / "imported"],
        ),
        Trial(
            "weights",
            "export_after_corrupt_newest_step",
            "recover",
            setup=_damage(lambda w, s: CORRUPTIONS["replaced_values"](s)),
            argv=_export(),
            check=lambda c, d, r: "moved it to" in r.err and _finite_export(c, d, r),
        ),
        Trial(
            "weights",
            "export_full_disk",
            "error",
            run=_export_full_disk,
            names=("No space left",),
            check=lambda c, d, r: not any((d / "small").iterdir()),
        ),
    ]
    return out


def _raw_nan_clip(workdir):
    import orbax.checkpoint as ocp
    from flax import nnx

    from mzs_jax.models import clip
    from mzs_jax.train import checkpoint as ckpt

    cfg = clip.model_config("tiny")
    model = clip.CLIP(cfg, rngs=nnx.Rngs(0))
    model.logit_scale[...] = np.float32(np.inf)
    ckpt.write_model_config(workdir, cfg)
    with ckpt.make_manager(workdir, async_save=False) as m:  # as an older version wrote it
        m.save(
            0, args=ocp.args.Composite(model=ocp.args.StandardSave(ckpt.flatten(nnx.state(model))))
        )


def _export_full_disk(ctx, d) -> Result:
    S.copy(S.random_clip(ctx), d / "w")
    _mount(d / "small", "512k")
    try:
        return in_process(_export(out="small/m.safetensors")(ctx, d))
    finally:
        time.sleep(0.1)
        leftovers = list((d / "small").iterdir())
        subprocess.run(["umount", str(d / "small")], check=False)
        for p in leftovers:  # recorded on the real folder so the check can see them
            (d / "small" / p.name).write_text("left behind")


def trials() -> list[Trial]:
    return [*interrupt_trials(), *checkpoint_trials(), *export_import_trials()]
