"""Stage 1: BiomedCLIP contrastive fine-tuning with the SigLIP sigmoid loss (Zhai et al. 2023),
the large-batch baseline users compare the paper's losses against.

Run:  mzs train-clip --config configs/clip_siglip.py --workdir runs/clip_siglip \
          --config.data.path=/data/roco --config.init=runs/biomedclip_imported
τ starts at 0.1 (t' = log 10) and the learned logit bias `model.logit_bias` at -10, as in the
SigLIP paper; the bias is exported as open_clip's `logit_bias`. Re-running the same command
resumes. On one H100: about 1 h per epoch of ROCO radiology (batch 64, 224 px).
"""

from mzs_jax.train.defaults import clip_config


def get_config(arg=None):
    # clip_config takes τ0 = 0.1 and logit_bias_init = -10 from the loss table.
    return clip_config("siglip")
