"""Config parsing: every bad config file or override is one line naming the file or the full
dotted key (exit code 2, no traceback)."""

import pytest

from mzs_jax import cli

CONFIG = "configs/phantom.py"


@pytest.fixture(autouse=True)
def _repo(monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)


@pytest.mark.parametrize(
    "override,match",
    [
        ("--config.optimizer.nope=1", r"unknown config key 'optimizer.nope'.*keys under optimizer"),
        ("--config.checkpoint.evry_steps=5", r"'checkpoint.evry_steps'.*did you mean "
         r"checkpoint.every_steps\?"),
        ("--config.optimzer.lr=1", r"unknown config key 'optimzer'.*did you mean optimizer\?"),
        ("--config.batch_size.x=1", r"batch_size is a value, not a group of keys"),
        ("--config.batch_size=abc", r"--config.batch_size=abc: invalid literal"),
    ],
)  # fmt: skip
def test_bad_override_names_the_full_key(override, match):
    with pytest.raises(cli.ConfigError, match=match):
        cli.load_config([f"--config={CONFIG}", override])


@pytest.mark.parametrize(
    "text,match",
    [
        ("def get_config(:\n", r"c.py:1: syntax error"),
        ("x = 1\n", r"c.py: defines no get_config"),
        ("def get_config(arg=None):\n    raise ValueError('boom')\n", r"get_config failed: "
         r"ValueError: boom"),
    ],
)  # fmt: skip
def test_broken_config_file_is_one_line_naming_it(tmp_path, capsys, text, match):
    f = tmp_path / "c.py"
    f.write_text(text)
    with pytest.raises(cli.ConfigError, match=match):
        cli.load_config([f"--config={f}"])
    assert cli.main(["train-clip", "--config", str(f), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()
