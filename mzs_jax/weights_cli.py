"""`mzs export` / `mzs import`: workdir checkpoint ⇄ open_clip BiomedCLIP safetensors (DESIGN §3).

Exports load with `open_clip.create_model(...)` + `load_state_dict(strict=True)`; imports accept
safetensors, or an open_clip `.bin`/`.pt` read with `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil

import ml_collections

from mzs_jax import convert
from mzs_jax.models import clip as clip_lib
from mzs_jax.progress import Progress


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=pathlib.Path, required=True,
                        help="output .safetensors file in open_clip key names")  # fmt: skip


def run_export(args) -> int:
    from mzs_jax.train.checkpoint import restore_model

    if args.workdir is None:
        raise ValueError("--workdir is required (the checkpoint to export)")
    if args.out.suffix != ".safetensors" or args.out.is_dir():
        raise ValueError(
            f"--out {args.out}: the export is one safetensors file; name it *.safetensors"
        )
    progress = Progress(3, "export", unit="step")
    model, model_config = restore_model(args.workdir, kind="clip")
    if model_config.get("name") not in clip_lib.MODEL_NAMES:
        raise ValueError(
            f"{args.workdir}: holds a {model_config.get('name')!r} model, not a CLIP "
            f"({', '.join(clip_lib.MODEL_NAMES)})"
        )
    progress.update(1, force=True, loaded=str(args.workdir))
    state_dict = convert.to_open_clip(model)
    progress.update(1, force=True, tensors=len(state_dict))
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"--out {args.out}: cannot create its folder ({e.strerror})") from e
    convert.save_safetensors(state_dict, args.out)
    progress.close(wrote=str(args.out))
    note = (
        "; context: not exported (the model's metadata encoder fuses into its text side during "
        "training; the exported towers embed images and text without context)"
        if model_config.context.enabled
        else "; context: none (the model has no metadata encoder)"
    )
    print(f"exported {model_config.name} ({convert.count_params(model)} parameters) "
          f"to {args.out}{note}")  # fmt: skip
    return 0


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--open-clip",
        dest="open_clip",
        type=pathlib.Path,
        required=True,
        help="open_clip weights: .safetensors, or .bin/.pt (weights-only load)",
    )
    parser.add_argument(
        "--model",
        choices=clip_lib.MODEL_NAMES,
        help="architecture (default: --config's model.name, else biomedclip)",
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the workdir's checkpoints, then write this model")  # fmt: skip


def merge_config(base: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """Apply `overrides` (dict-like, nested) onto a copy of `base`; unknown keys are errors."""
    out = ml_collections.ConfigDict(base.to_dict())
    for key, value in overrides.items():
        if hasattr(value, "items") and isinstance(out.get(key), ml_collections.ConfigDict):
            out[key] = merge_config(out[key], value)
        elif key in out or key == "context":
            out[key] = value
        else:
            raise ValueError(f"--config: unknown model key {key!r}")
    return out


def import_model_config(name: str | None, config) -> ml_collections.ConfigDict:
    """`clip.model_config(name)` with the overrides of `config.model` (or `config`) applied."""
    overrides = None if config is None else config.model if "model" in config else config
    name = name or (overrides.get("name") if overrides is not None else None) or "biomedclip"
    model_config = clip_lib.model_config(name)
    if overrides is not None:
        model_config = merge_config(model_config, overrides)
        model_config.name = name
    return model_config


def run_import(args) -> int:
    from mzs_jax.train.checkpoint import CKPT_DIR, MODEL_CONFIG_FILE, save_model

    if args.workdir is None:
        raise ValueError("--workdir is required (where the checkpoint is written)")
    if (args.workdir / MODEL_CONFIG_FILE).exists() and not args.overwrite:
        raise ValueError(
            f"{args.workdir} already holds a model ({MODEL_CONFIG_FILE}); pass --overwrite "
            "to replace it"
        )
    model_config = import_model_config(args.model, args.config)
    progress = Progress(3, "import", unit="step")
    progress.update(1, force=True, reading=str(args.open_clip))
    model = convert.load_open_clip(args.open_clip, model_config)
    progress.update(1, force=True, model=model_config.name)
    if args.overwrite and (args.workdir / CKPT_DIR).exists():  # only now that the import is valid
        shutil.rmtree(args.workdir / CKPT_DIR)
    path = save_model(args.workdir, model, model_config, step=0)
    progress.close(wrote=str(path))
    print(f"imported {args.open_clip} as {model_config.name} "
          f"({convert.count_params(model)} parameters) into {args.workdir}")  # fmt: skip
    return 0
