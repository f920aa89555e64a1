"""`mzs demo`: the whole method on phantoms, offline (stage 1 → 2 → 3 → report; docs/demo.md).

Run:  mzs demo                      # full: about 6-9 minutes on 2 CPU cores
      mzs demo --quick              # smoke run: about 3 minutes, every report section filled
      mzs demo --config configs/demo.py:quick --config.weak.seeds="(0, 1)"
`get_config("full" | "quick")`; `mzs demo --quick` is `get_config("quick")`.
"""

import ml_collections

from mzs_jax.losses import PAPER_LOSSES as LOSSES


def get_config(arg=None):
    mode = arg or "full"
    if mode not in ("full", "quick"):
        raise ValueError(f"configs/demo.py: arg must be 'full' or 'quick', got {mode!r}")
    quick = mode == "quick"
    c = ml_collections.ConfigDict()
    c.mode = mode
    c.seed = 0
    c.image_size = 64  # phantom side = the tiny CLIP's input size

    # Stage 1: tiny CLIP on generated captions (X-ray / MRI / CT phantoms in turn).
    c.clip = ml_collections.ConfigDict()
    c.clip.model = "tiny"
    c.clip.n_captions = 400 if quick else 1500  # 85/15 train/val split
    c.clip.batch_size = 32
    # Only with --from-scratch (or without mzs_jax/assets/phantom_clip): infonce from random init.
    c.clip.pretrain_steps = 40 if quick else 300
    c.clip.pretrain_lr = 2e-3
    c.clip.finetune_steps = 5 if quick else 40  # per loss, from the pre-trained model
    c.clip.finetune_lr = 1e-4  # low, as the paper fine-tunes BiomedCLIP (1e-5 at batch 64)
    c.clip.losses = LOSSES
    c.clip.eval_batch = 50  # ROCO protocol: batches of 50
    c.clip.eval_seeds = 5
    c.clip.vocab_size = 1024
    # Hard-negative loss benchmark (mzs_jax/pipeline/loss_quality.py; `mzs bench --only
    # loss_quality` runs it at full size): phantom-hard captions, 64-pair blocks, each loss
    # fine-tuned from the shipped phantom CLIP for every seed.
    h = c.clip.hard = ml_collections.ConfigDict()
    h.seeds = (0, 1) if quick else (0, 1, 2)
    h.train_blocks = 2 if quick else 8
    h.val_blocks = 2 if quick else 4
    h.steps = 10 if quick else 120
    h.warmup_steps = 2 if quick else 20

    c.zeroshot = zeroshot_config(quick)

    # Stage 3: ResUNet on the pseudo-masks, 3 seeds.
    w = c.weak = ml_collections.ConfigDict()
    w.seeds = (0, 1, 2)
    w.epochs = 3 if quick else 6
    w.batch_size = 8
    w.lr = 1e-3
    w.model = "tiny"
    return c


def zeroshot_config(quick: bool) -> ml_collections.ConfigDict:
    """`config.zeroshot` (stage 2 of the demo)."""
    # Stage 2: zero-shot on chest X-ray phantoms with cardiomegaly, target = the enlarged heart:
    # the finding the phantom CLIP recognises (docs/zeroshot.md, "Which prompt does a phantom CLIP
    # localise?"), so the paper's gScoreCAM localises it from the text. The previous target
    # (both lungs, dense saliency: lungs are in every image, so a contrastive model has no reason
    # to localise them) is `--config.zeroshot.findings= --config.zeroshot.structure=lungs ...`.
    z = ml_collections.ConfigDict()
    z.kind = "xray"
    z.findings = "cardiomegaly"  # "" = all phantoms; or comma-separated data.phantom.FINDINGS
    z.structure = "heart"  # key of the phantom's `structures`
    z.prompt = "chest x-ray showing an enlarged cardiac silhouette consistent with cardiomegaly"
    z.n_train = 32 if quick else 120  # pseudo-masks for stage 3
    z.n_test = 12 if quick else 48  # held-out, scored against ground truth
    z.n_dpfem = z.n_train  # DPFEM's own unlabelled phantoms (after both), never scored
    z.data_seed = 1  # a different seed from the caption set: these images were never seen
    z.saliency = "gscorecam"  # gscorecam | gradcam | dense (the report scores all three)
    # Scored in the pointing game only: how often this prompt's map peaks on the target ("" = off)
    z.control_prompt = "frontal chest radiograph showing both lungs"
    z.topk = 16  # about a quarter of the tiny ViT's 64 channels (configs/zeroshot_phantom.py)
    z.layer, z.point = -1, "norm1"  # last block's norm2 has no gradient to patch tokens
    z.dpfem_epochs = 2 if quick else 8
    z.segmenter = "grabcut"  # --sam-checkpoint switches to sam
    z.box_mode = "union"  # union (paper) | components | largest
    z.n_overlays = 4
    return z
