"""`--config.init` keeps the imported towers but starts τ at `temperature_init` (0.07), unless
`keep_imported_temperature`; the run prints the starting τ."""

import math
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mzs_jax import convert
from mzs_jax.models import clip
from mzs_jax.train import checkpoint as ckpt
from mzs_jax.train.clip_task import ClipTask


@pytest.fixture
def imported_at_tau_001(tmp_path):
    """A workdir as `mzs import` writes it, whose logit scale is open_clip's final ln(100)."""
    plain = clip.model_config("tiny")
    model = convert.from_open_clip(convert.random_state_dict(plain, seed=5), plain)
    model.logit_scale[...] = jnp.asarray(math.log(100.0), jnp.float32)
    ckpt.save_model(tmp_path / "imported", model, plain, step=0)
    return tmp_path / "imported", model


def _task(tmp_path, repo_root, init, **overrides):
    cfg = runpy.run_path(str(repo_root / "configs" / "clip_infonce.py"))["get_config"]()
    cfg.model, cfg.data.path, cfg.init = "tiny", "phantom:12", str(init)
    for key, value in overrides.items():
        cfg[key] = value
    return ClipTask(cfg, tmp_path / "run")


@pytest.mark.parametrize("keep", [False, True])
def test_imported_towers_with_temperature_init_or_the_imported_one(
    tmp_path, repo_root, imported_at_tau_001, capsys, keep
):
    init, imported = imported_at_tau_001
    task = _task(tmp_path, repo_root, init, keep_imported_temperature=keep)
    model = task.build_model(nnx.Rngs(1))
    task.init_from(model)
    got, want_towers = (jax.tree.leaves(nnx.state(m.visual)) for m in (model, imported))
    assert len(got) > 10
    for a, b in zip(got, want_towers, strict=True):
        np.testing.assert_array_equal(a, b)
    tau = math.exp(-float(model.logit_scale[...]))
    want = 0.01 if keep else 0.07
    assert tau == pytest.approx(want, rel=1e-6)
    out = capsys.readouterr().out
    assert "imported τ = 0.01" in out
    assert f"starting temperature τ = {want:.4g}" in out


def test_a_fresh_run_prints_its_starting_temperature(tmp_path, repo_root, capsys):
    task = _task(tmp_path, repo_root, "", temperature_init=0.05)
    model = task.build_model(nnx.Rngs(1))
    task.init_from(model)
    assert "starting temperature τ = 0.05" in capsys.readouterr().out
