"""Fault trials: `mzs export` / `mzs import` faults (six pickle variants included)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import time

import fault_trials_setup as S
import numpy as np
from fault_trials import Result, Trial, in_process
from fault_trials_runs import _damage, _export, _finite_export, _mount
from faults import CORRUPTIONS


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


def _set_new(key, value):
    return lambda sd: sd.__setitem__(key, value)


def _clip_w(ctx, d):
    return S.copy(S.random_clip(ctx), d / "w")


def _truncated_file(ctx, d):
    (d / "w.safetensors").write_bytes(S.open_clip_file(ctx).read_bytes()[:5000])


W = "w.safetensors"
# (name, setup, argv, what the error must name)
EXPORTS = [
    ("export_to_directory", lambda c, d: [_clip_w(c, d), (d / "m.safetensors").mkdir()],
     _export(), ("m.safetensors",)),
    ("export_under_a_file", lambda c, d: [_clip_w(c, d), (d / "f").write_text("x")],
     _export(out="f/m.safetensors"), ("f",)),
    ("export_wrong_suffix", _clip_w, _export(out="m.pt"), ("m.pt",)),
    ("export_without_workdir", None, lambda c, d: ["export", "--out", d / "m.safetensors"],
     ("--workdir",)),
    ("export_missing_workdir", None, _export(workdir="nowhere"), ("nowhere",)),
    ("export_resunet_workdir", lambda c, d: S.copy(S.resunet_workdir(c), d / "w"), _export(),
     ("resunet", "not a clip")),
    ("export_non_finite", lambda c, d: _raw_nan_clip(d / "w"), _export(),
     ("NaN/inf", "logit_scale")),
]  # fmt: skip
IMPORTS = [
    ("import_int32", _sd_file(_set("visual.trunk.pos_embed", lambda a: a.astype(np.int32))),
     _import(W), ("visual.trunk.pos_embed", "int32")),
    ("import_nan", _sd_file(_set("text.proj.0.weight", lambda a: a * np.nan)), _import(W),
     ("text.proj.0.weight", "non-finite")),
    ("import_inf_logit_scale", _sd_file(_set("logit_scale", lambda a: np.full_like(a, np.inf))),
     _import(W), ("logit_scale", "non-finite")),
    ("import_missing_key", _sd_file(lambda sd: sd.pop("visual.trunk.cls_token")), _import(W),
     ("visual.trunk.cls_token",)),
    ("import_unexpected_key", _sd_file(_set_new("extra.w", np.ones(2, np.float32))), _import(W),
     ("extra.w",)),
    ("import_wrong_shape", _sd_file(_set("text.proj.0.weight", lambda a: a[:, :-1])), _import(W),
     ("text.proj.0.weight", "shape")),
    ("import_truncated", _truncated_file, _import(W), (W,)),
    ("import_wrong_suffix", lambda c, d: (d / "w.txt").write_text("x"), _import("w.txt"),
     ("w.txt",)),
    ("import_missing_file", None, _import("absent.safetensors"), ("absent.safetensors",)),
]  # fmt: skip
PICKLES = ("open", "eval", "system", "torch_save", "nested_state_dict", "protocol_0_text")


def _not_pwned(ctx, d, res) -> bool:
    return not (d / "pwned").exists()


def _existing_model(ctx, d):
    S.copy(S.random_clip(ctx), d / "imported")
    shutil.copy(S.open_clip_file(ctx), d / W)


def export_import_trials() -> list[Trial]:
    out = [Trial("weights", n, "error", argv=a, setup=s, names=names)
           for n, s, a, names in EXPORTS + IMPORTS]  # fmt: skip
    for how in PICKLES:
        file = {"torch_save": "evil.pt", "nested_state_dict": "evil.pth"}.get(how, "evil.bin")
        name, setup = f"import_pickle_{how}", _pickle_file(how)
        trial = Trial("weights", name, "error", argv=_import(file), setup=setup,
                      names=(file, "refused"), check=_not_pwned)  # fmt: skip
        out.append(trial)
    return out + [
        Trial("weights", "import_over_existing_model", "error", setup=_existing_model,
              argv=_import(W), names=("--overwrite",), preserve=lambda c, d: [d / "imported"]),
        Trial("weights", "export_after_corrupt_newest_step", "recover",
              setup=_damage(lambda w, s: CORRUPTIONS["replaced_values"](s)), argv=_export(),
              check=lambda c, d, r: "moved it to" in r.err and _finite_export(c, d, r)),
        Trial("weights", "export_full_disk", "error", run=_export_full_disk,
              names=("No space left",), check=lambda c, d, r: not any((d / "small").iterdir())),
    ]  # fmt: skip


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
    return export_import_trials()
