"""gScoreCAM, Grad-CAM and dense-similarity saliency on the open_clip BiomedCLIP (paper §"Zero-shot
segmentation…"); the PyTorch reference the JAX version (`mzs_jax.pipeline.saliency`) is tested
against. Built on pytorch-grad-cam's `BaseCAM` / `GradCAM` (hooks, weighting, normalisation).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


class ImageTextScorer(torch.nn.Module):
    """`images (B, 3, H, W)` → `logit_scale · cos(image, text_t)` `(B, T)`: the CAM target model."""

    def __init__(self, clip_model: torch.nn.Module, text_features: torch.Tensor):
        super().__init__()
        self.clip = clip_model
        self.register_buffer("text", F.normalize(text_features.float(), dim=-1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(self.clip.encode_image(images), dim=-1)
        return self.clip.logit_scale.exp() * emb @ self.text.T


def token_grid(tokens: torch.Tensor) -> torch.Tensor:
    """timm ViT tokens `(B, 1+N, C)` (class token first) → `(B, C, g, g)`, class token dropped."""
    b, n, c = tokens.shape
    g = int(round((n - 1) ** 0.5))
    if g * g != n - 1:
        raise ValueError(f"patch tokens do not form a square grid: {n - 1}")
    return tokens[:, 1:].reshape(b, g, g, c).permute(0, 3, 1, 2)


def target_layer(clip_model: torch.nn.Module, layer: int = -1, point: str = "norm2"):
    """`visual.trunk.blocks[layer].<point>` (point: norm1 | norm2) of an open_clip timm ViT."""
    if point not in ("norm1", "norm2"):
        raise ValueError(f"saliency.point must be norm1 or norm2, got {point!r}")
    return getattr(clip_model.visual.trunk.blocks[layer], point)


def select_channels(importance: np.ndarray, topk: int) -> np.ndarray:
    """Top-k channel indices by importance, ties broken by the lower index (as `jax.lax.top_k`)."""
    return np.argsort(-importance, kind="stable")[:topk]


class GScoreCAM(BaseCAM):
    """gScoreCAM (Chen et al. 2022, anguyen8/gScoreCAM): ScoreCAM restricted to the k channels
    with the largest signed mean gradient; softmax over all C channels (unselected score 0)."""

    def __init__(
        self, model, target_layers, reshape_transform=None, topk: int = 60, batch_size: int = 32
    ):
        super().__init__(
            model, target_layers, reshape_transform=reshape_transform, uses_gradients=True
        )
        self.topk, self.batch_size = topk, batch_size
        self.selected: list[np.ndarray] = []
        self.importance: list[np.ndarray] = []

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        b, c = activations.shape[:2]
        importance = grads.mean(axis=(2, 3))  # signed, as the reference
        self.importance = list(importance)
        self.selected = [select_channels(imp, self.topk) for imp in importance]
        up = torch.nn.UpsamplingBilinear2d(size=input_tensor.shape[-2:])  # align_corners=True
        weights = np.zeros((b, c), np.float32)
        with torch.no_grad():
            for i, (target, top) in enumerate(zip(targets, self.selected, strict=True)):
                act = torch.from_numpy(activations[i : i + 1, top]).to(self.device)
                masks = up(act)[0]  # (k, H, W)
                lo = masks.amin(dim=(1, 2), keepdim=True)
                hi = masks.amax(dim=(1, 2), keepdim=True)
                masks = (masks - lo) / (hi - lo + 1e-8)
                masked = input_tensor[i][None] * masks[:, None]  # (k, 3, H, W)
                scores = []
                for j in range(0, len(top), self.batch_size):
                    out = self.model(masked[j : j + self.batch_size])
                    scores.extend(float(target(o)) for o in out)
                full = torch.zeros(c)
                full[torch.as_tensor(top)] = torch.nan_to_num(torch.tensor(scores))
                weights[i] = torch.softmax(full, dim=-1).numpy()
        return weights


def _prepare(clip_model, images, text_features):
    x = torch.as_tensor(np.asarray(images, np.float32))
    if x.ndim == 3:
        x = x[None]
    t = torch.as_tensor(np.asarray(text_features, np.float32))
    if t.ndim == 1:
        t = t[None]
    if x.ndim != 4 or x.shape[-1] != 3 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"images (B, H, W, 3) and text (B, E) expected, got {tuple(x.shape)} "
            f"and {tuple(t.shape)}"
        )
    device = next(clip_model.parameters()).device
    return x.permute(0, 3, 1, 2).contiguous().to(device), t.to(device)


def _squeeze(maps: np.ndarray, images) -> np.ndarray:
    return maps[0] if np.asarray(images).ndim == 3 else maps


def gscorecam(
    model,
    image,
    text,
    topk: int = 60,
    *,
    layer: int = -1,
    point: str = "norm2",
    batch_size: int = 32,
    return_channels: bool = False,
):
    """gScoreCAM saliency `(H, W)` (or `(B, H, W)`) in [0, 1].

    model: open_clip CLIP with a timm ViT trunk; image: `(H, W, 3)` / `(B, H, W, 3)` float,
    CLIP-normalised (NHWC, converted here); text: L2-normalised text features `(E,)` / `(B, E)`
    (`model.encode_text` output; row i prompts image i). Masked inputs are scored `batch_size` at
    a time. `return_channels=True` also returns top-k indices `(B, k)` and importances `(B, C)`.
    """
    x, t = _prepare(model, image, text)
    scorer = ImageTextScorer(model, t).eval()
    cam = GScoreCAM(
        scorer,
        [target_layer(model, layer, point)],
        reshape_transform=token_grid,
        topk=topk,
        batch_size=batch_size,
    )
    targets = [ClassifierOutputTarget(i) for i in range(len(x))]
    maps = _squeeze(cam(x, targets), image)
    if return_channels:
        return maps, np.stack(cam.selected), np.stack(cam.importance)
    return maps


def gradcam(model, image, text, *, layer: int = -1, point: str = "norm2") -> np.ndarray:
    """Grad-CAM (the paper's ablation) with pytorch-grad-cam's `GradCAM`; same conventions."""
    x, t = _prepare(model, image, text)
    scorer = ImageTextScorer(model, t).eval()
    cam = GradCAM(scorer, [target_layer(model, layer, point)], reshape_transform=token_grid)
    return _squeeze(cam(x, [ClassifierOutputTarget(i) for i in range(len(x))]), image)


@torch.no_grad()
def dense_similarity(model, image, text) -> np.ndarray:
    """MaskCLIP-style map: cosine of each final-norm patch token, projected by `visual.head`,
    with the text; min–max, bilinear resize, min–max (as the CAMs). Same conventions."""
    x, t = _prepare(model, image, text)
    tokens = model.visual.trunk.forward_features(x)  # (B, 1+N, W), final norm applied
    emb = F.normalize(model.visual.head(tokens), dim=-1)
    sim = torch.einsum("bne,be->bn", emb, F.normalize(t, dim=-1))[:, :, None]
    grid = token_grid(sim)[:, 0].cpu().numpy()
    maps = scale_cam_image(scale_cam_image(grid, (x.shape[-1], x.shape[-2])))
    return _squeeze(maps, image)
