"""Stage 3 on ACDC short-axis slices (RV, MYO, LV): ResUNet at 224 px, slice-wise.

    mzs train-weak --config configs/weak_acdc.py --workdir W \
        --config.data.images=SEG/images --config.data.pseudo_masks=SEG/masks
Images and masks are the 2D slices (`<id>.png|.npy`) written by `mzs segment`; predictions are
restacked to volumes and evaluated volume-wise by `mzs evaluate`. About 1 h on one GPU.
"""

from mzs_jax.pipeline.weak import default_config


def get_config(arg=None):
    c = default_config("acdc")
    c.data.image_size = 224
    c.data.num_classes = 4  # background, RV, MYO, LV
    c.batch_size = 32
    return c
