"""open_clip BiomedCLIP-architecture model built offline: the PyTorch reference (MedZeroSeg §3.1).

Same recipe as `hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`, but the text tower
comes from a locally written `BertConfig` and the timm trunk is random-init, so no hub is touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import tempfile

import numpy as np
import torch
from torch import nn

# timm's vit_base_patch16_224 dims; other dims (the tiny config) get their own timm entry.
_VIT_BASE = dict(image_size=224, patch_size=16, width=768, layers=12, heads=12, mlp_dim=3072)
_VIT_BASE_EPS = 1e-6


def open_clip_config(cfg, bert_dir: str) -> dict:
    """The `open_clip_config.json` of BiomedCLIP, with the text tower pointing at `bert_dir`."""
    bias = cfg.get("logit_bias_init")
    return {
        "model_cfg": {
            "embed_dim": cfg.embed_dim,
            **({} if bias is None else {"init_logit_bias": float(bias)}),
            "vision_cfg": {
                "timm_model_name": timm_model_name(cfg),
                "timm_model_pretrained": False,
                "timm_pool": "" if cfg.vision.get("pool", "token") == "token" else cfg.vision.pool,
                "timm_proj": "linear",
                "image_size": cfg.vision.image_size,
            },
            "text_cfg": {
                "hf_model_name": bert_dir,
                "hf_tokenizer_name": bert_dir,
                "hf_model_pretrained": False,
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": cfg.text.context_length,
            },
        },
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }


def bert_config(cfg):
    """HF `BertConfig` for the text tower (post-norm BERT, exact GELU)."""
    from transformers import BertConfig

    t = cfg.text
    return BertConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.width,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        intermediate_size=t.intermediate,
        max_position_embeddings=t.max_positions,
        type_vocab_size=t.type_vocab_size,
        layer_norm_eps=t.ln_eps,
        pad_token_id=t.pad_token_id,
        hidden_act="gelu",
    )


def write_local_dir(cfg, directory: str | os.PathLike) -> pathlib.Path:
    """Write `open_clip_config.json` and `bert/config.json`: `local-dir:<directory>` then works."""
    directory = pathlib.Path(directory)
    bert_dir = directory / "bert"
    bert_config(cfg).save_pretrained(bert_dir)
    (directory / "open_clip_config.json").write_text(
        json.dumps(open_clip_config(cfg, str(bert_dir)), indent=2)
    )
    return directory


def _model_config(config):
    return config.model if "vision" not in config and "model" in config else config


class _DropRandomInitWarnings(logging.Filter):
    """open_clip warns "no CLIP weights found" / "Model initialized randomly" for a local-dir
    architecture; here that is the plan (the weights, if any, are loaded right after)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("no CLIP weights found" in msg or "No pretrained weights loaded" in msg)


@contextlib.contextmanager
def _quiet_open_clip_init():
    root, drop = logging.getLogger(), _DropRandomInitWarnings()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def build_open_clip(config, weights: str | os.PathLike | None = None) -> nn.Module:
    """open_clip `CustomTextCLIP` with the BiomedCLIP architecture of `config`, in eval mode.

    `config`: a model config (`mzs_jax.models.clip.model_config`) or a run config with `.model`.
    `weights`: optional safetensors (or open_clip `.bin`/`.pt`) file, loaded with `strict=True`;
    without it the model keeps open_clip's random init (open_clip's own "initialized randomly"
    warnings are not printed: the architecture is always built first, then loaded).
    """
    import open_clip

    cfg = _model_config(config)
    if cfg.vision.ln_eps != _VIT_BASE_EPS:
        raise ValueError(
            f"vision.ln_eps must be {_VIT_BASE_EPS} (timm ViT), got {cfg.vision.ln_eps}"
        )
    with tempfile.TemporaryDirectory(prefix="mzs_open_clip_") as d, _quiet_open_clip_init():
        write_local_dir(cfg, d)
        model = open_clip.create_model(
            "local-dir:" + d, load_weights=False, pretrained_image=False, pretrained_text=False
        )
    hidden = (cfg.text.width + cfg.embed_dim) // 2
    if cfg.text.proj_hidden != hidden:  # open_clip derives it; honour an overridden config
        model.text.proj = nn.Sequential(
            nn.Linear(cfg.text.width, cfg.text.proj_hidden, bias=False),
            nn.GELU(),
            nn.Linear(cfg.text.proj_hidden, cfg.embed_dim, bias=False),
        )
    with torch.no_grad():
        model.logit_scale.fill_(float(cfg.logit_scale_init))
        if model.logit_bias is not None:
            model.logit_bias.fill_(float(cfg.logit_bias_init))
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def timm_model_name(cfg) -> str:
    """`vit_base_patch16_224`, or a registered variant of it with the config's ViT dims.

    open_clip's `TimmModel` passes no architecture kwargs to timm, so other dims (the tiny config)
    get their own timm entry point: `vit_base_patch16_224` with its defaults overridden, which
    keeps timm's module and parameter names.
    """
    import timm
    from timm.models import register_model

    v = cfg.vision
    if all(v[k] == val for k, val in _VIT_BASE.items()):
        return "vit_base_patch16_224"
    if v.mlp_dim % v.width:
        raise ValueError(f"vision.mlp_dim={v.mlp_dim} must be a multiple of width={v.width} (timm)")
    name = f"mzs_vit_i{v.image_size}_p{v.patch_size}_w{v.width}_d{v.layers}_h{v.heads}_m{v.mlp_dim}"
    if not timm.is_model(name):
        dims = dict(img_size=v.image_size, patch_size=v.patch_size, embed_dim=v.width,
                    depth=v.layers, num_heads=v.heads, mlp_ratio=v.mlp_dim / v.width)  # fmt: skip

        def entry(pretrained: bool = False, **kwargs):
            from timm.models.vision_transformer import vit_base_patch16_224

            return vit_base_patch16_224(pretrained=False, **dict(kwargs, **dims))

        entry.__name__ = entry.__qualname__ = name
        register_model(entry)
    return name


def load_weights(model: nn.Module, weights: str | os.PathLike) -> None:
    """Load a weights file into `model` with `strict=True` (weights-only: no pickle code runs)."""
    from mzs_jax.convert import STALE_KEYS, load_state_dict_file

    sd = load_state_dict_file(weights)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if not (k in STALE_KEYS and k not in own)}
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)


def numpy_state_dict(model: nn.Module) -> dict[str, np.ndarray]:
    """`model.state_dict()` as float32 numpy arrays (what `mzs_jax.convert` consumes)."""
    return {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
