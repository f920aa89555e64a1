"""Where the config files and benchmark scripts are, in a source checkout and in a wheel.

The top-level `configs/` and `bench/` folders are packaged as `mzs_jax.configs` and `mzs_jax.bench`
(pyproject `package-dir`), so an installed `mzs` finds them without a checkout.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys


def _package_dir(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name} is not installed: reinstall mzs-jax (pip install .)")
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def configs_dir() -> pathlib.Path:
    """The folder of the packaged `configs/*.py`."""
    return _package_dir("mzs_jax.configs")


def bench_dir() -> pathlib.Path:
    """The folder of the packaged `bench/*.py`."""
    return _package_dir("mzs_jax.bench")


def config_path(path: str) -> str:
    """`path` (`FILE.py[:arg]`) as given when the file exists; else, for `configs/NAME.py[:arg]`,
    the packaged copy of `NAME.py` — said on stderr, so the run names which file it read."""
    file_part, sep, arg = path.partition(":")
    given = pathlib.Path(file_part)
    if given.is_file() or given.parent != pathlib.Path("configs"):
        return path
    packaged = configs_dir() / given.name
    if not packaged.is_file():
        return path
    print(f"[config] {file_part} is not here: reading the packaged {packaged}", file=sys.stderr)
    return f"{packaged}{sep}{arg}"
