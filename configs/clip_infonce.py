"""Stage 1: BiomedCLIP contrastive fine-tuning with the infonce loss (paper §3.1, Table 1).

Run:  mzs train-clip --config configs/clip_infonce.py --workdir runs/clip_infonce \
          --config.data.path=/data/roco --config.init=runs/biomedclip_imported
(`--config.init`: a workdir made by `mzs import` from the released BiomedCLIP weights.)
Re-running the same command resumes. On one H100: about 1 h per epoch of ROCO radiology
(batch 64, 224 px); on CPU use configs/phantom.py instead.
"""

from mzs_jax.train.defaults import clip_config


def get_config(arg=None):
    return clip_config("infonce")
