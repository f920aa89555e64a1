"""ml_collections config files (`get_config(arg)`), read by path: `mzs CMD --config configs/X.py`.

Installed from a wheel they live in `mzs_jax.configs`; `mzs_jax.resources.config_path` finds them.
"""
