"""The `mzs` command: subcommand listing and config override parsing."""

import subprocess
import sys

import pytest

from mzs_jax import cli


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "mzs_jax.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in [
        "demo",
        "make-phantoms",
        "train-clip",
        "eval-retrieval",
        "export",
        "import",
        "segment",
        "train-weak",
        "evaluate",
        "bench",
    ]:
        assert name in out


def test_config_overrides_are_applied(tmp_path):
    f = tmp_path / "c.py"
    f.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.lr = 1e-3\n    c.model = ml_collections.ConfigDict({'name': 'tiny'})\n"
        "    return c\n"
    )
    config_args, rest = cli.split_config_args(
        ["--config", str(f), "--config.lr=0.5", "--config.model.name", "biomedclip", "--x", "1"]
    )
    cfg = cli.load_config(config_args)
    assert rest == ["--x", "1"]
    assert cfg.lr == 0.5 and cfg.model.name == "biomedclip"


def test_unknown_config_key_is_one_clear_error(tmp_path):
    f = tmp_path / "c.py"
    f.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n    return ml_collections.ConfigDict({'lr': 1.0})\n"
    )
    with pytest.raises(cli.ConfigError, match="nope"):
        cli.load_config([f"--config={f}", "--config.nope=3"])


def test_missing_config_file_names_the_file(tmp_path):
    with pytest.raises(cli.ConfigError, match="missing.py"):
        cli.load_config([f"--config={tmp_path / 'missing.py'}"])
