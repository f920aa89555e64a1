"""The shipped tiny phantom CLIP (`mzs_jax/assets/phantom_clip`): the pre-trained starting point of
`mzs demo` and of the hard-negative loss benchmark, imported into a workdir as `mzs import` does.
"""

from __future__ import annotations

import pathlib

SHIPPED = pathlib.Path(__file__).resolve().parents[1] / "assets" / "phantom_clip"


def shipped_checkpoint() -> pathlib.Path | None:
    """`mzs_jax/assets/phantom_clip` (model.safetensors + tokenizer/ + README.md) if present."""
    ok = (SHIPPED / "model.safetensors").is_file() and (SHIPPED / "tokenizer").is_dir()
    return SHIPPED if ok else None


def import_shipped(folder: pathlib.Path, workdir: pathlib.Path) -> str:
    """Load the shipped open_clip safetensors into a tiny CLIP workdir (as `mzs import` does);
    returns a one-line description naming the file and how it was trained."""
    from mzs_jax import convert
    from mzs_jax.models import clip
    from mzs_jax.train.checkpoint import save_model

    path = folder / "model.safetensors"
    mc = clip.model_config("tiny")
    model = convert.load_open_clip(path, mc)
    save_model(workdir, model, mc, step=0)
    info, cmd = folder / "README.md", "README.md missing"
    if info.is_file():
        lines = (ln.strip() for ln in info.read_text().splitlines() if "mzs train-clip" in ln)
        cmd = next(lines, "see README.md")
    return f"shipped checkpoint {path.name} ({path.stat().st_size} bytes), trained by: {cmd}"
