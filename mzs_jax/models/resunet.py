"""Residual UNet (Flax NNX) for stage 3: weakly-supervised segmentation on pseudo-masks.

Paper "Weakly-supervised segmentation" (ResUNet, ref. [23]): pre-activation residual blocks in
encoder and decoder, stride-2 downsampling, transposed-conv upsampling, skip connections, and a
1×1 head giving per-class logits. `model_config(name)` gives the architecture; `ResUNet(cfg, rngs=)`
builds it; `load(workdir)` restores a trained one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

NORMS = ("group", "layer", "none")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_config(name: str = "default", **overrides) -> ConfigDict:
    """`"default"` (width 32, depth 4, 2 blocks/level) or `"tiny"` (width 8, depth 3; CPU tests).

    Fields: `kind`, `name`, `in_channels`, `num_classes` (background included), `width` (channels of
    level 0, doubled per level), `depth` (resolution levels; input sides must divide by
    2**(depth-1)), `blocks` (residual blocks per level), `norm` in {group, layer, none},
    `groups` (GroupNorm), `dtype`/`param_dtype`.
    """
    sizes = {"default": dict(width=32, depth=4, blocks=2), "tiny": dict(width=8, depth=3, blocks=1)}
    if name not in sizes:
        raise ValueError(f"resunet model name must be one of {sorted(sizes)}, got {name!r}")
    c = ConfigDict(
        dict(
            kind="resunet",
            name=name,
            in_channels=1,
            num_classes=2,
            norm="group",
            groups=8,
            dtype="float32",
            param_dtype="float32",
            **sizes[name],
        )
    )
    c.update(overrides)
    validate_config(c)
    return c


def validate_config(c: ConfigDict) -> None:
    """One clear error naming the bad key."""
    for key in ("in_channels", "num_classes", "width", "depth", "blocks", "groups"):
        if int(c[key]) < 1:
            raise ValueError(f"resunet config: {key} must be >= 1, got {c[key]}")
    if c.num_classes < 2:
        raise ValueError(
            f"resunet config: num_classes counts background, must be >= 2, got {c.num_classes}"
        )
    if c.norm not in NORMS:
        raise ValueError(f"resunet config: norm must be one of {NORMS}, got {c.norm!r}")
    for key in ("dtype", "param_dtype"):
        if c[key] not in DTYPES:
            raise ValueError(
                f"resunet config: {key} must be one of {sorted(DTYPES)}, got {c[key]!r}"
            )


def _groups(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


def _norm(channels: int, cfg: ConfigDict, rngs: nnx.Rngs):
    kw = dict(dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype], rngs=rngs)
    if cfg.norm == "group":
        return nnx.GroupNorm(channels, num_groups=_groups(channels, cfg.groups), **kw)
    if cfg.norm == "layer":
        return nnx.LayerNorm(channels, **kw)
    return None


class ResBlock(nnx.Module):
    """Pre-activation residual block: shortcut(x) + conv(act(norm(conv(act(norm(x)))))); the
    shortcut is a 1×1 (strided) conv when channels or resolution change, else the identity.
    `(B, H, W, Cin) -> (B, H/s, W/s, Cout)`.
    """

    def __init__(self, cin: int, cout: int, stride: int, cfg: ConfigDict, *, rngs: nnx.Rngs):
        kw = dict(dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype], rngs=rngs)
        self.norm1 = _norm(cin, cfg, rngs)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME", **kw)
        self.norm2 = _norm(cout, cfg, rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding="SAME", **kw)
        self.shortcut = (
            nnx.Conv(cin, cout, (1, 1), strides=stride, **kw)
            if (cin != cout or stride != 1)
            else None
        )

    def residual(self, x: jax.Array) -> jax.Array:
        h = x if self.norm1 is None else self.norm1(x)
        h = self.conv1(nnx.relu(h))
        h = h if self.norm2 is None else self.norm2(h)
        return self.conv2(nnx.relu(h))

    def __call__(self, x: jax.Array) -> jax.Array:
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + self.residual(x)


class ResUNet(nnx.Module):
    """`ResUNet(cfg, rngs=)`; `model(images (B, H, W, in_channels))` -> logits
    `(B, H, W, num_classes)` in float32."""

    def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
        validate_config(cfg)
        self.depth, self.in_channels = int(cfg.depth), int(cfg.in_channels)
        self.compute_dtype = DTYPES[cfg.dtype]
        kw = dict(dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype], rngs=rngs)
        widths = [cfg.width * 2**i for i in range(cfg.depth)]
        self.stem = nnx.Conv(cfg.in_channels, widths[0], (3, 3), padding="SAME", **kw)

        def level(cin: int, cout: int, stride: int) -> nnx.List:
            """`cfg.blocks` residual blocks to `cout` channels; the first takes `cin`, `stride`."""
            return nnx.List(
                [
                    ResBlock(cout if b else cin, cout, 1 if b else stride, cfg, rngs=rngs)
                    for b in range(cfg.blocks)
                ]
            )

        self.encoder = nnx.List(
            [level(widths[max(i - 1, 0)], widths[i], 2 if i > 0 else 1) for i in range(cfg.depth)]
        )
        self.up = nnx.List(
            [
                nnx.ConvTranspose(widths[i + 1], widths[i], (2, 2), strides=(2, 2), **kw)
                for i in reversed(range(cfg.depth - 1))
            ]
        )
        self.decoder = nnx.List(
            [level(2 * widths[i], widths[i], 1) for i in reversed(range(cfg.depth - 1))]
        )
        self.out_norm = _norm(widths[0], cfg, rngs)
        self.head = nnx.Conv(widths[0], cfg.num_classes, (1, 1), **kw)

    def __call__(self, images: jax.Array) -> jax.Array:
        factor = 2 ** (self.depth - 1)
        b, h, w, c = images.shape
        if h % factor or w % factor or c != self.in_channels:
            raise ValueError(
                f"ResUNet input {images.shape}: need sides divisible by {factor} (depth "
                f"{self.depth}) and {self.in_channels} channels"
            )
        x = self.stem(images.astype(self.compute_dtype))
        skips = []
        for level in self.encoder:
            for block in level:
                x = block(x)
            skips.append(x)
        for up, level, skip in zip(self.up, self.decoder, reversed(skips[:-1]), strict=True):
            x = jnp.concatenate([up(x), skip], axis=-1)
            for block in level:
                x = block(x)
        x = x if self.out_norm is None else self.out_norm(x)
        return self.head(nnx.relu(x)).astype(jnp.float32)
