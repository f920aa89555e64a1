"""Datasets (paper §4.1) in their real on-disk formats, procedural phantoms, and transforms.

Modules are imported directly (`from mzs_jax.data.acdc import AcdcSlices`); see docs/data.md.
"""
