"""Stage 1 smoke run on generated phantom captions with the tiny CLIP (CPU, about 1-2 minutes).

Run:  mzs train-clip --config configs/phantom.py --workdir runs/phantom
      mzs eval-retrieval --workdir runs/phantom --data phantom:300
`--config configs/phantom.py:infonce` picks another loss (default cehnc).
"""

import ml_collections

from mzs_jax.train.defaults import clip_config


def get_config(arg=None):
    c = clip_config(arg or "cehnc")
    c.model = "tiny"
    # Image-tower pooling and patch size, overridable from the command line
    # (`--config.model_overrides.vision.pool=avg --config.model_overrides.vision.patch_size=4`:
    # the localising variant measured in docs/zeroshot.md).
    c.model_overrides.vision = ml_collections.ConfigDict({"pool": "token", "patch_size": 8})
    c.data.path = "phantom:300"
    c.batch_size = 32
    c.num_epochs = 4
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 0.0
    c.optimizer.decay_every_epochs = 2.0
    c.checkpoint.every_steps = 20
    c.eval.batch = 25
    return c
