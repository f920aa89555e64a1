"""Stage 2 (zero-shot masks) on chest X-ray phantoms with the tiny CLIP of configs/phantom.py.

    mzs train-clip --config configs/phantom.py --workdir runs/phantom
    mzs segment --config configs/zeroshot_phantom.py --workdir runs/segment \
        --config.clip_workdir=runs/phantom [--config.saliency.method=dense]
About 1-2 minutes on 2 CPU cores for 32 images (saliency, DPFEM training, CRF, GrabCut).
The config argument is a comma-separated list: a saliency method (`gscorecam` by default,
`dense`, `gradcam`, `m2ib`), `kmeans` (MedCLIP-SAMv2's post-processing instead of the CRF chain)
and/or `cardiomegaly`, which keeps only phantoms with that finding and adds
the prompt "heart" for the enlarged cardiac silhouette: the structure a phantom CLIP localises
from the text (docs/zeroshot.md, "Which prompt does a phantom CLIP localise?"); the other two
prompts are then its controls. E.g. `configs/zeroshot_phantom.py:cardiomegaly,dense`.
"""

from mzs_jax.pipeline.zeroshot import SALIENCY_METHODS as METHODS
from mzs_jax.pipeline.zeroshot import default_config


def get_config(arg=None):
    words = [w for w in (arg or "").split(",") if w]
    unknown = [w for w in words if w not in (*METHODS, "kmeans", "cardiomegaly")]
    if unknown:
        raise ValueError(f"configs/zeroshot_phantom.py: unknown argument(s) {unknown}")
    c = default_config()
    c.dataset = "xray-phantom"
    c.data.kind, c.data.n, c.data.seed, c.data.size = "xray", 32, 1000, 64
    c.prompts = {
        "opacity": "chest radiograph showing a pulmonary nodule or dense consolidation",
        "lungs": "frontal chest radiograph showing both lungs",
    }
    if "cardiomegaly" in words:
        c.dataset = "xray-phantom-cardiomegaly"
        c.data.findings = "cardiomegaly"
        c.prompts.heart = (
            "chest x-ray showing an enlarged cardiac silhouette consistent with cardiomegaly"
        )
    c.saliency.method = next((w for w in words if w in METHODS), "gscorecam")
    c.saliency.topk = 16  # about a quarter of the tiny ViT's 64 channels
    c.saliency.layer, c.saliency.point = -1, "norm1"  # see docs/zeroshot.md (norm2 has no gradient)
    c.saliency.m2ib.layer = 0  # the tiny ViT has 2 blocks: the bottleneck after the first
    c.postprocess.method = "kmeans" if "kmeans" in words else "crf"
    c.dpfem.width, c.dpfem.stem_stride, c.dpfem.num_epochs = 16, 4, 10
    # DPFEM's own phantoms: another generator seed, so never the scored ones (whatever data.n).
    c.dpfem.train_data.seed = 2000
    c.dpfem.data.num_threads, c.dpfem.data.prefetch = 1, 2
    c.segmenter.name = "grabcut"
    return c
