"""Flax NNX models: BiomedCLIP (vit, bert, clip), DPFEM, ResUNet, metadata context encoder."""
