"""Stage 3 on chest X-ray phantoms: tiny ResUNet (64 px) on pseudo-masks of the lungs.

    mzs train-weak --config configs/weak_phantom.py --workdir /tmp/weak \
        --config.data.images=PH/images --config.data.pseudo_masks=SEG/masks \
        [--config.data.gt_masks=PH/gt]
About 1-2 minutes on 2 CPU cores for 64 images and 20 epochs.
"""

from mzs_jax.pipeline.weak import default_config


def get_config(arg=None):
    c = default_config("phantom")
    c.model.name = "tiny"
    c.data.image_size = 64
    c.data.num_classes = 2  # background, lungs
    c.batch_size = 8
    c.num_epochs = 20
    c.optimizer.lr = 1e-3  # tiny model, few steps; the paper's 1e-4 is for full-size data
    c.optimizer.decay_every_epochs = 5.0
    c.checkpoint.every_steps = 50
    c.data.num_threads = 1
    c.data.prefetch = 2
    return c
