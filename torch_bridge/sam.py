"""Box-prompted SAM / MedSAM segmentation (paper step (5): the box prompts SAM for the mask).

Checkpoints are loaded with `torch.load(weights_only=True)` (no pickled code runs). The image
embedding is cached per image, so several boxes on one image cost one encoder pass.
"""

from __future__ import annotations

import collections
import hashlib
import pathlib
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

# Encoder shapes of the released SAM v1 models (segment_anything/build_sam.py); MedSAM is vit_b.
SAM_ENCODERS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


def build_sam(model_type: str = "vit_b", image_size: int = 1024):
    """Random-initialised `segment_anything.modeling.Sam` (eval mode).

    `image_size=1024` is the released architecture (what `sam_model_registry` builds); a smaller
    size (multiple of 16) shrinks the encoder grid and relative positions — for tests only, since
    released checkpoints expect 1024.
    """
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    if model_type not in SAM_ENCODERS:
        raise ValueError(
            f"segmenter.model_type must be one of {sorted(SAM_ENCODERS)}, got {model_type!r}"
        )
    if image_size % 16:
        raise ValueError(f"segmenter.image_size must be a multiple of 16, got {image_size}")
    enc = SAM_ENCODERS[model_type]
    prompt_dim, grid = 256, image_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=enc["depth"],
            embed_dim=enc["embed_dim"],
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=enc["num_heads"],
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=enc["global_attn_indexes"],
            window_size=14,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam_checkpoint(sam, checkpoint: str | pathlib.Path) -> None:
    """Load a SAM / MedSAM `.pth` state dict into `sam`, never unpickling code."""
    path = pathlib.Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file or a pickle with code objects
        raise ValueError(f"cannot read SAM checkpoint {path} with weights_only=True: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # training checkpoints nest the weights
    try:
        sam.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"SAM checkpoint {path} does not match the architecture: {e}") from e


def _image_key(image: np.ndarray) -> str:
    data = np.ascontiguousarray(image).tobytes() + str(image.shape).encode()
    return hashlib.sha1(data).hexdigest()


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    from mzs_jax.pipeline.postprocess import to_uint8_rgb

    return to_uint8_rgb(image)


class BoxSegmenter:
    """`BoxSegmenter(checkpoint, model_type="vit_b")` → `.segment(image, box) -> (H, W) bool`.

    `box`: `(4,)` or `(K, 4)` half-open XYXY pixel boxes; several boxes are segmented in one
    decoder call on the cached embedding and their masks united. `medsam=True` uses MedSAM's
    preprocessing (resize to the encoder size without padding, per-image min–max to [0, 1], no
    mean/std) and its decoding (sigmoid > 0.5 of the upsampled low-res logits).
    `multimask_output=True` keeps, per box, the mask with the highest predicted IoU.
    `checkpoint=None` is refused unless `allow_random_init=True` (plumbing tests only).
    The image embeddings of the last `cache_images` images are kept (about 4 MB each for
    ViT-B at 1024 px), so prompting an image again does not re-run the encoder.
    """

    def __init__(
        self,
        checkpoint: str | pathlib.Path | None,
        model_type: str = "vit_b",
        *,
        medsam: bool = False,
        multimask_output: bool = False,
        image_size: int = 1024,
        device: str = "cpu",
        allow_random_init: bool = False,
        cache_images: int = 64,
    ):
        if checkpoint is None and not allow_random_init:
            raise ValueError(
                "segmenter.checkpoint is required for SAM/MedSAM (no weights are "
                "bundled or downloaded); set segmenter.name='grabcut' for the "
                "weight-free segmenter"
            )
        from segment_anything import SamPredictor

        self.sam = build_sam(model_type, image_size).to(device)
        if checkpoint is not None:
            load_sam_checkpoint(self.sam, checkpoint)
        self.medsam, self.multimask_output = medsam, multimask_output
        self.device = device
        self.predictor = SamPredictor(self.sam)
        weights = "random-init" if checkpoint is None else pathlib.Path(checkpoint).name
        self.name = f"{'medsam' if medsam else 'sam'}_{model_type}({weights})"
        self._medsam_embedding: torch.Tensor | None = None
        # image key -> encoder output (and the predictor's sizes): the chain and the box baselines
        # prompt the same images one after another, so each image is encoded once.
        self._cache: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self.cache_images = int(cache_images)
        self.encoder_calls = 0

    def _set_image(self, rgb: np.ndarray) -> None:
        key = _image_key(rgb)
        if key not in self._cache:
            self.encoder_calls += 1
            self._cache[key] = self._encode(rgb)
            while len(self._cache) > max(self.cache_images, 1):
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        features, original_size, input_size = self._cache[key]
        if self.medsam:
            self._medsam_embedding = features
        else:
            p = self.predictor
            p.features, p.original_size, p.input_size = features, original_size, input_size
            p.is_image_set = True

    @torch.no_grad()
    def _encode(self, rgb: np.ndarray) -> tuple:
        if self.medsam:
            size = self.sam.image_encoder.img_size
            x = torch.as_tensor(rgb, dtype=torch.float32).permute(2, 0, 1)[None]
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
            x = (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8)
            return self.sam.image_encoder(x.to(self.device)), None, None
        self.predictor.set_image(rgb, image_format="RGB")
        p = self.predictor
        return p.features, p.original_size, p.input_size

    @torch.no_grad()
    def segment(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        rgb = _as_rgb_uint8(image)
        h, w = rgb.shape[:2]
        boxes = np.asarray(box, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((h, w), bool)
        self._set_image(rgb)
        if self.medsam:
            logits = self._medsam_logits(boxes, h, w)
            masks = torch.sigmoid(logits) > 0.5
        else:
            tb = self.predictor.transform.apply_boxes_torch(
                torch.as_tensor(boxes, device=self.device), (h, w)
            )
            masks, scores, _ = self.predictor.predict_torch(
                None, None, boxes=tb, multimask_output=self.multimask_output
            )
            masks = masks[torch.arange(len(boxes)), scores.argmax(dim=1)]
        return masks.reshape(-1, h, w).any(dim=0).cpu().numpy().astype(bool)

    def _medsam_logits(self, boxes: np.ndarray, h: int, w: int) -> torch.Tensor:
        size = self.sam.image_encoder.img_size
        scaled = torch.as_tensor(
            boxes / np.array([w, h, w, h], np.float32) * size, device=self.device
        )
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=scaled[:, None, :], masks=None)
        low_res, scores = self.sam.mask_decoder(
            image_embeddings=self._medsam_embedding,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask_output,
        )
        low_res = low_res[torch.arange(len(boxes)), scores.argmax(dim=1)][:, None]
        return F.interpolate(low_res, size=(h, w), mode="bilinear", align_corners=False)
