"""M2IB saliency on the open_clip BiomedCLIP: the PyTorch reference `mzs_jax.pipeline.m2ib` is
tested against. MedCLIP-SAMv2 / YingWANGG/M2IB `IBAInterpreter` step by step, one image at a time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ALPHA_INIT = 5.0


class InformationBottleneck(torch.nn.Module):
    """M2IB's `InformationBottleneck`: λ = σ(α) per token and channel; forward returns
    λx + sqrt((1−λ)²)·ε and keeps the capacity KL(N(λx, (1−λ)²) ‖ N(0, 1)) of the last call."""

    def __init__(self, tokens: int, width: int):
        super().__init__()
        self.alpha = torch.nn.Parameter(torch.full((1, tokens, width), ALPHA_INIT))
        self.noise: torch.Tensor | None = None
        self.buffer_capacity: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lamb = torch.sigmoid(self.alpha).expand(x.shape[0], x.shape[1], -1)
        masked_mu = x * lamb
        masked_var = (1 - lamb) ** 2
        self.buffer_capacity = -0.5 * (1 + torch.log(masked_var) - masked_mu**2 - masked_var)
        return masked_mu + masked_var.sqrt() * self.noise


def _one_image(model, image, text, noise, *, layer, beta, lr):
    """Fit the bottleneck after `visual.trunk.blocks[layer]` for one image `(1, 3, H, W)`."""
    block = model.visual.trunk.blocks[layer]
    steps, samples, tokens, width = noise.shape
    bottleneck = InformationBottleneck(tokens, width).to(image.device)
    hook = block.register_forward_hook(lambda _m, _i, out: bottleneck(out))
    optimizer = torch.optim.Adam(lr=lr, params=bottleneck.parameters())
    batch = image.expand(samples, -1, -1, -1)
    text = text.expand(samples, -1)
    try:
        for i in range(steps):
            optimizer.zero_grad()
            bottleneck.noise = noise[i]
            image_features = model.encode_image(batch)
            compression = bottleneck.buffer_capacity.mean()
            fitting = F.cosine_similarity(text, image_features, eps=1e-6).mean()
            loss = beta * compression - fitting
            loss.backward()
            optimizer.step()
    finally:
        hook.remove()
    return bottleneck.buffer_capacity.mean(dim=0)  # (tokens, width), from the last forward


def _to_map(cap: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """M2IB's `vision_heatmap`: nansum over channels, class token dropped, bilinear upsampling,
    min–max (a constant map gives zeros)."""
    per_token = torch.nansum(cap, -1)[1:]
    g = int(round(per_token.numel() ** 0.5))
    grid = per_token.reshape(1, 1, g, g)
    up = F.interpolate(grid, size=size, mode="bilinear").squeeze().detach().cpu().numpy()
    lo, hi = up.min(), up.max()
    return ((up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)).astype(np.float32)


def m2ib(
    model,
    images,
    text,
    noise,
    *,
    layer: int = 9,
    beta: float = 1.0,
    lr: float = 1.0,
) -> np.ndarray:
    """M2IB maps `(B, H, W)` in [0, 1].

    model: open_clip CLIP with a timm ViT trunk; images `(B, H, W, 3)` CLIP-normalised NHWC;
    text `(B, E)` L2-normalised text features (row i prompts image i); noise
    `(steps, samples, 1+N, W)` standard normal, the same draw for every image (steps = its first
    axis). The model's parameters get no gradient (set back as they were afterwards).
    """
    from torch_bridge.cam import _prepare

    x, t = _prepare(model, images, text)
    noise = torch.from_numpy(np.array(noise, np.float32)).to(x.device)  # a writable copy
    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    try:
        maps = [
            _to_map(
                _one_image(model, x[i : i + 1], t[i : i + 1], noise, layer=layer, beta=beta, lr=lr),
                tuple(x.shape[-2:]),
            )
            for i in range(len(x))
        ]
    finally:
        for p, r in zip(model.parameters(), was, strict=True):
            p.requires_grad_(r)
    return np.stack(maps)
