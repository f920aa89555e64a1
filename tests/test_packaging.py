"""The wheel ships every package, and `configs/` and `bench/` as `mzs_jax.configs`/`mzs_jax.bench`.

`.ci/run` also installs the built wheel into a second venv and runs `mzs demo --quick` from an
empty folder; these tests check the pieces that step relies on, in the source install.
"""

from __future__ import annotations

import os
import pathlib
import tomllib

import pytest

from mzs_jax import cli, resources

REPO = pathlib.Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_source_package_is_listed_for_the_wheel():
    tool = _pyproject()["tool"]["setuptools"]
    listed = set(tool["packages"])
    mapped = tool["package-dir"]
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for root in ("mzs_jax", "torch_bridge")
        for p in (REPO / root).rglob("__init__.py")
    }
    assert found <= listed, f"packages missing from pyproject: {sorted(found - listed)}"
    assert mapped == {"mzs_jax.configs": "configs", "mzs_jax.bench": "bench"}
    assert set(mapped) <= listed
    for folder in mapped.values():
        assert (REPO / folder / "__init__.py").is_file()


def test_packaged_folders_hold_the_demo_config_and_the_bench_scripts():
    from mzs_jax import bench_cli

    assert (resources.configs_dir() / "demo.py").is_file()
    for name in bench_cli.SCRIPTS:
        assert (resources.bench_dir() / f"{name}.py").is_file(), name


def test_missing_configs_path_reads_the_packaged_file_and_says_so(tmp_path, capsys):
    old = os.getcwd()
    os.chdir(tmp_path)  # no configs/ folder here
    try:
        config = cli.load_config(["--config=configs/weak_phantom.py"])
    finally:
        os.chdir(old)
    assert "reading the packaged" in capsys.readouterr().err
    assert config.model.name == "tiny" and config.num_epochs == 20


def test_missing_config_elsewhere_is_still_an_error(tmp_path):
    with pytest.raises(cli.ConfigError, match="config file not found"):
        cli.load_config([f"--config={tmp_path / 'configs' / 'nope.py'}"])
    with pytest.raises(cli.ConfigError, match="config file not found"):
        cli.load_config(["--config=configs/no_such_config.py"])
