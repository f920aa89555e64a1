"""Stage 3 on Synapse abdominal CT slices (8 organs): ResUNet at 224 px, slice-wise.

    mzs train-weak --config configs/weak_synapse.py --workdir W \
        --config.data.images=SEG/images --config.data.pseudo_masks=SEG/masks
About 1-2 h on one GPU (18 training volumes).
"""

from mzs_jax.pipeline.weak import default_config


def get_config(arg=None):
    c = default_config("synapse")
    c.data.image_size = 224
    c.data.num_classes = 9  # background + 8 organs
    c.batch_size = 32
    return c
