"""Stages 2–3 and evaluation: saliency, post-processing, zero-shot masks, weak supervision."""
