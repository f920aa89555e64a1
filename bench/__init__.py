"""Benchmark scripts run by `mzs bench` (each defines `main(argv) -> str`), read by path.

Installed from a wheel they live in `mzs_jax.bench`; `mzs_jax.resources.bench_dir` finds them.
"""
