"""Stage 2 on ACDC (or its phantom layout from `mzs make-phantoms --kind mri`): volumes resampled
to 1 mm, segmented slice by slice, masks written back as NIfTI in the original geometry.

    mzs segment --config configs/zeroshot_acdc.py --workdir runs/seg_acdc \
        --config.clip_workdir=runs/clip --config.data.path=DATA/ACDC
Phantom layout (8 slices of 64 px per volume): about 10 s per volume on 2 CPU cores.
"""

from mzs_jax.pipeline.zeroshot import default_config


def get_config(arg=None):
    c = default_config()
    c.dataset = "acdc"
    c.data.source, c.data.split, c.data.n = "acdc", "val", 0
    # DPFEM trains on unlabelled maps of 40 training-split volumes, never on the scored val ones.
    c.dpfem.train_data.split, c.dpfem.train_data.n = "train", 40
    c.prompts = {
        "left ventricle": "cardiac MRI short-axis slice showing the left ventricle",
        "myocardium": "cardiac MRI short-axis slice showing the myocardium",
        "right ventricle": "cardiac MRI short-axis slice showing the right ventricle",
    }
    c.labels = {"right ventricle": 1, "myocardium": 2, "left ventricle": 3}
    c.saliency.method = arg or "gscorecam"
    c.saliency.layer, c.saliency.point = -1, "norm1"  # see docs/zeroshot.md (norm2 has no gradient)
    c.dpfem.data.num_threads, c.dpfem.data.prefetch = 1, 2
    c.segmenter.name = "grabcut"
    return c
