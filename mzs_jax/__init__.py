"""mzs_jax: MedZeroSeg in JAX/Flax NNX (CEHNC fine-tuning, zero-shot masks, weak supervision)."""

__version__ = "0.1.0"
