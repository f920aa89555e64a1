"""Stage 2 on Synapse (or its phantom layout from `mzs make-phantoms --kind ct`): the 12 test
volumes of the TransUNet preprocessing, segmented slice by slice, one prompt per organ; label
volumes in W/volumes and the ground truth in W/volumes_gt for `mzs evaluate`.

    mzs segment --config configs/zeroshot_synapse.py --workdir runs/seg_synapse \
        --config.clip_workdir=runs/clip --config.data.path=DATA/Synapse
    mzs evaluate --pred runs/seg_synapse/volumes --gt runs/seg_synapse/volumes_gt \
        --method zeroshot --dataset synapse
"""

from mzs_jax.data.synapse import SYNAPSE_LABELS
from mzs_jax.pipeline.zeroshot import default_config


def get_config(arg=None):
    c = default_config()
    c.dataset = "synapse"
    c.data.source, c.data.split, c.data.n = "synapse", "test", 0
    # DPFEM trains on unlabelled maps of 500 train_npz slices, never on the scored test volumes.
    c.dpfem.train_data.split, c.dpfem.train_data.n = "train", 500
    c.prompts = {name: f"axial abdominal CT slice showing the {name}" for name in SYNAPSE_LABELS}
    c.labels = dict(SYNAPSE_LABELS)
    c.saliency.method = arg or "gscorecam"
    c.saliency.layer, c.saliency.point = -1, "norm1"  # see docs/zeroshot.md (norm2 has no gradient)
    c.dpfem.data.num_threads, c.dpfem.data.prefetch = 1, 2
    c.segmenter.name = "grabcut"
    return c
