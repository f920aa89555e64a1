"""`model.remat` through `mzs train-clip`'s loop: the step is compiled with the model's compiler
options (on XLA:CPU the checkpoint barriers must survive), and it trains like the plain step."""

import runpy

import jax
import ml_collections
import numpy as np

from mzs_jax.train.clip_task import ClipTask
from mzs_jax.train.loop import fit


def _run(repo_root, tmp_path, remat):
    cfg = runpy.run_path(str(repo_root / "configs" / "clip_cehnc.py"))["get_config"]()
    cfg.model = "tiny"
    cfg.model_overrides.remat = remat
    cfg.model_overrides.vision = ml_collections.ConfigDict({"layers": 1})
    cfg.model_overrides.text = ml_collections.ConfigDict({"layers": 1})
    cfg.data.path, cfg.data.val_fraction = "phantom:24", 0.0
    cfg.mesh.data, cfg.mesh.fsdp = 2, 1
    cfg.batch_size, cfg.total_steps = 8, 2
    cfg.checkpoint.every_steps, cfg.checkpoint.best_metric = 1000, ""
    task = ClipTask(cfg, tmp_path / remat)
    assert bool(task.compiler_options) == (remat != "none" and jax.default_backend() == "cpu")
    return fit(task, cfg, tmp_path / remat / "run")["loss"]


def test_remat_run_trains_with_the_plain_runs_losses(tmp_path, repo_root):
    plain = _run(repo_root, tmp_path, "none")
    np.testing.assert_allclose(_run(repo_root, tmp_path, "full"), plain, rtol=1e-5)
