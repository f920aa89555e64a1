"""open_clip BiomedCLIP state dict ⇄ Flax NNX `CLIP` parameters, through one mapping table.

Files on disk are safetensors in open_clip key names (DESIGN §3); open_clip `.bin`/`.pt` files are
read with `torch.load(weights_only=True)` only, so no pickled code ever runs.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mzs_jax.models import clip as clip_lib

# How a torch tensor becomes a Flax array: Linear weight [out, in] → kernel [in, out];
# Conv2d weight OIHW → HWIO; everything else (biases, LayerNorm, embeddings, tokens) unchanged.
# timm's fused `qkv` Linear stays fused in Flax (`Attention.qkv`), so it is a plain LINEAR.
LINEAR, CONV, SAME = "linear", "conv", "same"

_TO_FLAX = {
    LINEAR: lambda w: w.T,
    CONV: lambda w: w.transpose(2, 3, 1, 0),
    SAME: lambda w: w,
}
_TO_TORCH = {
    LINEAR: lambda w: w.T,
    CONV: lambda w: w.transpose(3, 2, 0, 1),
    SAME: lambda w: w,
}

# Keys that older transformers versions saved as buffers; accepted and dropped.
STALE_KEYS = ("text.transformer.embeddings.position_ids",)


def _linear(torch_name: str, flax_name: str, bias: bool = True) -> list[tuple[str, str, str]]:
    rows = [(f"{torch_name}.weight", f"{flax_name}.kernel", LINEAR)]
    return rows + ([(f"{torch_name}.bias", f"{flax_name}.bias", SAME)] if bias else [])


def _norm(torch_name: str, flax_name: str) -> list[tuple[str, str, str]]:
    return [(f"{torch_name}.weight", f"{flax_name}.scale", SAME),
            (f"{torch_name}.bias", f"{flax_name}.bias", SAME)]  # fmt: skip


_VT, _VB = "visual.trunk", "visual.trunk.blocks.{i}"
_TT, _TL = "text.transformer", "text.transformer.encoder.layer.{i}"

# THE mapping table: (open_clip key, Flax parameter path, transform). `{i}` = block/layer index.
MAPPING: tuple[tuple[str, str, str], ...] = tuple(
    [
        ("logit_scale", "logit_scale", SAME),
        (f"{_VT}.cls_token", "visual.cls_token", SAME),
        (f"{_VT}.pos_embed", "visual.pos_embed", SAME),
        (f"{_VT}.patch_embed.proj.weight", "visual.patch_embed.kernel", CONV),
        (f"{_VT}.patch_embed.proj.bias", "visual.patch_embed.bias", SAME),
        *_norm(f"{_VB}.norm1", "visual.blocks.{i}.norm1"),
        *_linear(f"{_VB}.attn.qkv", "visual.blocks.{i}.attn.qkv"),
        *_linear(f"{_VB}.attn.proj", "visual.blocks.{i}.attn.proj"),
        *_norm(f"{_VB}.norm2", "visual.blocks.{i}.norm2"),
        *_linear(f"{_VB}.mlp.fc1", "visual.blocks.{i}.mlp.fc1"),
        *_linear(f"{_VB}.mlp.fc2", "visual.blocks.{i}.mlp.fc2"),
        *_norm(f"{_VT}.norm", "visual.norm"),
        *_linear("visual.head.proj", "visual.head_proj", bias=False),
        (f"{_TT}.embeddings.word_embeddings.weight", "text.embeddings.word_embeddings.embedding",
         SAME),
        (f"{_TT}.embeddings.position_embeddings.weight",
         "text.embeddings.position_embeddings.embedding", SAME),
        (f"{_TT}.embeddings.token_type_embeddings.weight",
         "text.embeddings.token_type_embeddings.embedding", SAME),
        *_norm(f"{_TT}.embeddings.LayerNorm", "text.embeddings.LayerNorm"),
        *_linear(f"{_TL}.attention.self.query", "text.layers.{i}.query"),
        *_linear(f"{_TL}.attention.self.key", "text.layers.{i}.key"),
        *_linear(f"{_TL}.attention.self.value", "text.layers.{i}.value"),
        *_linear(f"{_TL}.attention.output.dense", "text.layers.{i}.attention_output"),
        *_norm(f"{_TL}.attention.output.LayerNorm", "text.layers.{i}.attention_LayerNorm"),
        *_linear(f"{_TL}.intermediate.dense", "text.layers.{i}.intermediate"),
        *_linear(f"{_TL}.output.dense", "text.layers.{i}.output"),
        *_norm(f"{_TL}.output.LayerNorm", "text.layers.{i}.output_LayerNorm"),
        *_linear("text.proj.0", "text.proj_0", bias=False),
        *_linear("text.proj.2", "text.proj_2", bias=False),
    ]
)  # fmt: skip


# open_clip's learned logit bias (SigLIP-style models), present only when the model has one.
LOGIT_BIAS_ROW = ("logit_bias", "logit_bias", SAME)


def expand_mapping(
    vision_layers: int, text_layers: int, logit_bias: bool = False
) -> list[tuple[str, str, str]]:
    """The table with `{i}` filled in: one row per tensor, in open_clip order."""
    rows = [LOGIT_BIAS_ROW] if logit_bias else []
    for torch_key, flax_path, kind in MAPPING:
        if "{i}" not in torch_key:
            rows.append((torch_key, flax_path, kind))
            continue
        n = vision_layers if torch_key.startswith("visual.") else text_layers
        rows += [(torch_key.format(i=i), flax_path.format(i=i), kind) for i in range(n)]
    return rows


def flax_params(model: nnx.Module) -> dict[str, nnx.Variable]:
    """`{"visual.blocks.0.attn.qkv.kernel": Param, ...}` for every `nnx.Param` of `model`."""
    flat = nnx.state(model, nnx.Param).flat_state()
    return {".".join(str(p) for p in path): var for path, var in flat}


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; bf16 → f32 is exact
        value = value.detach().cpu()
        value = value.float() if str(value.dtype) == "torch.bfloat16" else value
        return value.numpy()
    return np.asarray(value)


def _model_config(config):
    """Accept a model config or a run config holding one under `.model`."""
    return config.model if "vision" not in config and "model" in config else config


def from_open_clip(state_dict: Mapping[str, object], config) -> clip_lib.CLIP:
    """open_clip BiomedCLIP state dict (numpy or torch values) → Flax `CLIP` built from `config`.

    Raises ValueError naming the key for a missing, unexpected or mis-shaped tensor. The metadata
    context encoder (when `config.context.enabled`) is not in open_clip weights: it keeps its
    fresh initialisation.
    """
    cfg = _model_config(config)
    sd = {k: v for k, v in state_dict.items() if k not in STALE_KEYS}
    has_bias = cfg.get("logit_bias_init") is not None
    rows = expand_mapping(cfg.vision.layers, cfg.text.layers, has_bias)
    if "logit_bias" in sd and not has_bias:
        raise ValueError(
            "unexpected key 'logit_bias' in the open_clip state dict: the weights have a learned "
            "logit bias (SigLIP-style); set model.logit_bias_init to build the model with one"
        )
    known = {r[0] for r in rows}
    for key, _, _ in rows:
        if key not in sd:
            raise ValueError(f"missing key {key!r} in the open_clip state dict")
    for key in sd:
        if key not in known:
            raise ValueError(f"unexpected key {key!r} in the open_clip state dict")

    def build():
        return clip_lib.CLIP(cfg, rngs=nnx.Rngs(0))

    # Without a context encoder every parameter comes from the state dict: skip random init.
    model = build() if cfg.context.enabled else nnx.eval_shape(build)
    params = flax_params(model)
    covered = set()
    for key, path, kind in rows:
        var = params[path]
        value = _TO_FLAX[kind](_checked_tensor(key, sd[key]))
        expected = tuple(var.get_value().shape)
        if value.shape != expected:
            torch_shape = _TO_TORCH[kind](np.empty(expected, np.uint8)).shape
            raise ValueError(
                f"key {key!r} has shape {tuple(_to_numpy(sd[key]).shape)}, but model "
                f"{cfg.name!r} expects {tuple(torch_shape)}"
            )
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
        covered.add(path)
    left = [p for p in params if p not in covered and not p.startswith("context.")]
    if left:  # a programming error: the table does not cover the Flax model
        raise RuntimeError(f"Flax parameters not in the mapping table: {left}")
    return model


FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _checked_tensor(key: str, value) -> np.ndarray:
    """A weight must be a floating-point tensor of finite values (no silent int casts, no NaN)."""
    dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"key {key!r} has dtype {dtype or type(value).__name__}; weights must be floating "
            f"point ({', '.join(FLOAT_DTYPES)})"
        )
    array = _to_numpy(value)
    if not np.isfinite(array).all():
        n = int(array.size - np.isfinite(array).sum())
        raise ValueError(f"key {key!r} holds {n} non-finite value(s) (NaN/inf)")
    return array


def to_open_clip(model: clip_lib.CLIP) -> dict[str, np.ndarray]:
    """Flax `CLIP` → open_clip state dict of float32 numpy arrays (context encoder excluded)."""
    params = flax_params(model)
    has_bias = getattr(model, "logit_bias", None) is not None
    rows = expand_mapping(len(model.visual.blocks), len(model.text.layers), has_bias)
    out = {}
    for key, path, kind in rows:
        value = np.asarray(params[path].get_value(), dtype=np.float32)
        if not np.isfinite(value).all():
            raise ValueError(f"parameter {path} ({key}) holds NaN/inf; refusing to export it")
        out[key] = np.array(_TO_TORCH[kind](value), order="C")  # keeps 0-d arrays 0-d
    return out


def random_state_dict(config, seed: int = 0) -> dict[str, np.ndarray]:
    """open_clip-keyed float32 N(0, 0.02) tensors shaped for `config` (tests, benches; no torch).

    Built from shapes only (no Flax initialisation), so it is fast even for the full-size model.
    """
    cfg = _model_config(config)
    params = flax_params(nnx.eval_shape(lambda: clip_lib.CLIP(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    out = {}
    has_bias = cfg.get("logit_bias_init") is not None
    for key, path, kind in expand_mapping(cfg.vision.layers, cfg.text.layers, has_bias):
        shape = _TO_TORCH[kind](np.empty(params[path].get_value().shape, np.uint8)).shape
        out[key] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    out["logit_scale"] = np.asarray(cfg.logit_scale_init, np.float32)
    if has_bias:
        out["logit_bias"] = np.asarray(cfg.logit_bias_init, np.float32)
    return out


def count_params(model: nnx.Module, *, exclude_context: bool = True) -> int:
    """Number of scalar parameters (the metadata context encoder excluded by default)."""
    return sum(
        int(np.prod(v.get_value().shape))
        for p, v in flax_params(model).items()
        if not (exclude_context and p.startswith("context."))
    )


def save_safetensors(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write a state dict as safetensors, atomically (a failed write leaves `path` untouched)."""
    from safetensors.numpy import save_file

    path = pathlib.Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name ending in .safetensors")
    tmp = path.with_name(path.name + ".partial")
    tensors = {k: np.array(v, order="C") for k, v in state_dict.items()}
    from safetensors import SafetensorError

    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # our own temporary file; `path` is untouched
        if isinstance(e, SafetensorError):  # e.g. a full disk, reported by the Rust writer
            raise OSError(f"cannot write {path}: {e}") from e
        raise


TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read open_clip weights: safetensors, or `.bin`/`.pt`/`.pth` via torch weights-only loading.

    open_clip_train checkpoints nest the weights under `state_dict` with a `module.` prefix; both
    are unwrapped. Pickles are never executed: torch's weights-only unpickler refuses any object
    that is not a tensor or plain container, and we report that as a ValueError naming the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    if suffix not in TORCH_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported weights format {suffix or '(no suffix)'!r}; give a .safetensors "
            f"file, or an open_clip checkpoint ending in {', '.join(TORCH_SUFFIXES)}"
        )
    try:
        import torch
    except ImportError as e:
        raise ValueError(f"{path}: reading a torch checkpoint needs torch (mzs-jax[torch])") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for forbidden globals, RuntimeError for corrupt zips
        raise ValueError(
            f"{path}: refused to load with torch.load(weights_only=True): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return unwrap_checkpoint(obj, path)


def unwrap_checkpoint(obj: object, source: object = "checkpoint") -> dict[str, np.ndarray]:
    """`{"state_dict": {"module.x": t}}` / `{"module.x": t}` / `{"x": t}` → `{"x": array}`."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{source}: no state dict found (got {type(obj).__name__})")
    out = {}
    for key, value in obj.items():
        if not hasattr(value, "shape"):
            raise ValueError(f"{source}: entry {key!r} is not a tensor ({type(value).__name__})")
        out[key.removeprefix("module.")] = _to_numpy(value)
    return out


def load_open_clip(path: str | os.PathLike, config) -> clip_lib.CLIP:
    """An open_clip weights file (`load_state_dict_file`) as a Flax `CLIP` built from `config`:
    the one import path of `mzs import` and the shipped phantom CLIP; errors name the file."""
    state_dict = load_state_dict_file(path)
    try:
        return from_open_clip(state_dict, config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
