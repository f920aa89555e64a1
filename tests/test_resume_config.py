"""Resume safety and engine config checks: a changed model or data order is one clear error
before anything is written; `allow_config_change=True` is the explicit way forward."""

import json

import pytest
from faults import tree_digest
from flax import nnx
from train_toy import ToyNet, ToyTask, toy_config

from mzs_jax.train import checkpoint as ckpt
from mzs_jax.train import integrity, resume
from mzs_jax.train.loop import final_params, fit


def _cfg(**kw):
    return toy_config(**{"num_epochs": 1, "checkpoint.async_save": False, **kw})


@pytest.fixture
def trained(tmp_path):
    fit(ToyTask(), _cfg(), tmp_path)
    return tmp_path, tree_digest(tmp_path / "ckpt"), (tmp_path / "model_config.json").read_bytes()


def _unchanged(workdir, digest, model_config):
    assert tree_digest(workdir / "ckpt") == digest
    assert (workdir / "model_config.json").read_bytes() == model_config
    assert not (workdir / integrity.REJECTED_DIR).exists()


def test_changed_architecture_is_one_error_listing_the_keys_and_nothing_is_written(trained):
    workdir, digest, model_config = trained
    with pytest.raises(resume.ResumeConfigError, match=r"model hidden: 16 -> 32") as info:
        fit(ToyTask(hidden=32), _cfg(num_epochs=2), workdir)
    assert "allow_config_change=True" in str(info.value) and "new --workdir" in str(info.value)
    _unchanged(workdir, digest, model_config)


def test_changed_batch_size_and_seed_are_errors_unless_allowed(trained, capsys):
    workdir, digest, model_config = trained
    with pytest.raises(resume.ResumeConfigError, match=r"batch_size: 16 -> 8.*seed: 0 -> 1"):
        fit(ToyTask(), _cfg(batch_size=8, seed=1), workdir)
    _unchanged(workdir, digest, model_config)
    capsys.readouterr()
    fit(ToyTask(), _cfg(num_epochs=2, batch_size=8, allow_config_change=True), workdir)
    out = capsys.readouterr().out
    assert "allow_config_change=True: resuming" in out and "batch_size: 16 -> 8" in out
    saved = json.loads((workdir / resume.RUN_CONFIG_FILE).read_text())
    assert saved["batch_size"] == 8  # the next resume compares against this run


def test_allowed_architecture_change_that_cannot_load_is_clear_and_moves_nothing(trained):
    workdir, digest, model_config = trained
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"l1.kernel: stored \(8, 16\)"):
        fit(ToyTask(hidden=32), _cfg(num_epochs=2, allow_config_change=True), workdir)
    _unchanged(workdir, digest, model_config)


def test_other_changed_keys_resume_and_are_logged(trained, capsys):
    workdir, _, _ = trained
    cfg = _cfg(num_epochs=2)
    cfg.optimizer.lr = 1e-3
    capsys.readouterr()
    fit(ToyTask(), cfg, workdir)
    out = capsys.readouterr().out
    assert "resuming" in out and "optimizer.lr: 0.01 -> 0.001" in out
    assert "resumed from" in out


def test_training_into_a_model_only_workdir_points_to_init(tmp_path):
    task = ToyTask()
    ckpt.save_model(tmp_path, ToyNet(task.model_config, rngs=nnx.Rngs(0)), task.model_config)
    before = tree_digest(tmp_path / "ckpt")
    with pytest.raises(ckpt.CheckpointMismatchError, match="model weights only.*config.init"):
        fit(task, _cfg(), tmp_path)
    assert tree_digest(tmp_path / "ckpt") == before


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("batch_size", 0, "batch_size=0: must be an integer >= 1"),
        ("checkpoint.every_steps", 0, "every_steps=0: must be an integer >= 1"),
        ("checkpoint.keep", 0, "keep=0"),
        ("compute_dtype", "float8", "compute_dtype='float8'"),
        ("grad_accum", 3, "grad_accum=3: must divide batch_size"),
        ("num_epochs", 0, "num_epochs=0"),
        ("checkpoint.best_metric", "val/none", "best_metric='val/none' is not among"),
    ],
)
def test_bad_engine_config_values_are_one_clear_error(tmp_path, key, value, match):
    class Evaluated(ToyTask):
        def evaluate(self, model, epoch):
            return {"val/score": 1.0}

    with pytest.raises(ValueError, match=match):
        fit(Evaluated(), _cfg(**{key: value}), tmp_path / "w")
    if key != "checkpoint.best_metric":  # found only once an evaluation ran
        assert not (tmp_path / "w").exists()


def test_resumed_run_equals_uninterrupted_one_when_nothing_changed(tmp_path):
    fit(ToyTask(), _cfg(num_epochs=2), tmp_path / "ref")
    fit(ToyTask(), _cfg(num_epochs=1), tmp_path / "two")  # num_epochs may grow on resume
    fit(ToyTask(), _cfg(num_epochs=2), tmp_path / "two")
    a, b = final_params(tmp_path / "ref"), final_params(tmp_path / "two")
    assert all((a[k] == b[k]).all() for k in a)
