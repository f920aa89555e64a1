"""The one loss table: every loss reachable by name from config, with its keys, in every form."""

import importlib.util
import inspect

import numpy as np
import pytest

from mzs_jax import losses
from mzs_jax.losses import registry


def test_every_entry_names_its_function_and_builds_its_spec_from_the_signature():
    assert losses.LOSS_NAMES == tuple(losses.LOSSES)
    assert set(losses.PAPER_LOSSES) <= set(losses.LOSS_NAMES)
    for name, e in losses.LOSSES.items():
        assert e.name == name and getattr(losses, name) is e.fn
        assert tuple(inspect.signature(e.spec_builder).parameters) == e.hparams, name
        spec = e.spec(**{k: 0.5 for k in e.required})
        assert spec.name == name
        assert spec.learned_bias == e.learned_bias == (e.logit_bias_init is not None), name


def test_default_config_binds_every_loss_and_the_bound_dense_form_is_the_function():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(6, 4))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = np.roll(img, 1, axis=1)
    for name in losses.LOSS_NAMES:
        cfg = losses.default_config()
        cfg.name = name
        hp = losses.hparams_from_config(cfg)
        assert set(hp) == set(losses.LOSSES[name].hparams), name
        extra = (-2.0,) if losses.LOSSES[name].learned_bias else ()
        got = losses.loss_from_config(cfg)(img, txt, 0.2, *extra)
        want = losses.get_loss(name)(img, txt, 0.2, *extra, **hp)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6, err_msg=name)


def test_bad_names_keys_and_values_are_errors_naming_them():
    with pytest.raises(ValueError, match="loss.name='nope'"):
        losses.make_spec("nope")
    with pytest.raises(ValueError, match=r"takes no hyperparameter\(s\) \['beta'\]"):
        losses.make_spec("infonce", beta=0.5)
    with pytest.raises(ValueError, match=r"needs hyperparameter\(s\) \['beta2'\]"):
        losses.make_spec("dhn_nce", beta1=0.5)
    cfg = losses.default_config()
    cfg.beta_max = 0.0
    with pytest.raises(ValueError, match="loss.beta_max"):
        losses.hparams_from_config(cfg)
    cfg = losses.default_config()
    cfg.global_form = "allgather"
    with pytest.raises(ValueError, match="loss.global_form"):
        losses.hparams_from_config(cfg)
    cfg = losses.default_config()
    del cfg["beta1"]
    with pytest.raises(ValueError, match="loss.beta1 is required by loss cehnc"):
        losses.hparams_from_config(cfg)


def test_the_bound_loss_asks_for_the_bias_exactly_when_the_loss_learns_one():
    img = np.eye(4)
    cfg = losses.default_config()
    cfg.name = "siglip"
    with pytest.raises(ValueError, match="model.logit_bias_init"):
        losses.loss_from_config(cfg)(img, img, 0.1)
    cfg.name = "infonce"
    with pytest.raises(ValueError, match="takes no logit bias"):
        losses.loss_from_config(cfg)(img, img, 0.1, -10.0)


def test_the_demo_and_the_siglip_config_read_the_registry(repo_root):
    def load(path):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    demo = load(repo_root / "configs" / "demo.py")
    assert demo.LOSSES is registry.PAPER_LOSSES
    c = load(repo_root / "configs" / "clip_siglip.py").get_config()
    assert c.loss.name == "siglip"
    assert c.temperature_init == 0.1 and c.model_overrides.logit_bias_init == -10.0
