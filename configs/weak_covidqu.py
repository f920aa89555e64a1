"""Stage 3 on COVID-QU-Ex chest X-rays (lungs): ResUNet at 256 px on `mzs segment` pseudo-masks.

    mzs train-weak --config configs/weak_covidqu.py --workdir W \
        --config.data.images=SEG/images --config.data.pseudo_masks=SEG/masks \
        --config.data.gt_masks=COVIDQU/Val/lung_masks --config.data.val_images=COVIDQU/Val/images
Hours on one GPU for the 16k training images (50 epochs); not meant for CPU.
"""

from mzs_jax.pipeline.weak import default_config


def get_config(arg=None):
    c = default_config("covidqu")
    c.data.image_size = 256
    c.data.num_classes = 2
    c.batch_size = 32
    return c
