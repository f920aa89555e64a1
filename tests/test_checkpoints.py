"""Checkpoint integrity: keep-N plus the best step, checksums verified on restore, a failing step
moved aside (never deleted) with a bit-identical resume from the previous one, no NaN saved."""

import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from faults import CORRUPTIONS, replace_values, tree_digest
from flax import nnx
from train_toy import ToyNet, ToyTask, toy_config

from mzs_jax import cli
from mzs_jax.train import checkpoint as ckpt
from mzs_jax.train import integrity
from mzs_jax.train.loop import NonFiniteLossError, final_params, fit


class ScoredToyTask(ToyTask):
    """ToyTask with an evaluation whose score peaks at epoch 2."""

    def evaluate(self, model, epoch):
        return {"val/score": -abs(epoch - 2.0)}


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "ckpt").iterdir() if p.name.isdigit())


def _cfg(**kw):
    return toy_config(**{"checkpoint.async_save": False, **kw})


def test_keep_two_with_a_best_metric_over_ten_saves_leaves_at_most_three_steps(tmp_path):
    # 64 examples / batch 16 = 4 steps per epoch, 5 epochs, a save every 2 steps: 10 saves,
    # evaluations at steps 4, 8, ... (score best at epoch 2 = step 8).
    cfg = _cfg(
        num_epochs=5,
        **{
            "checkpoint.every_steps": 2,
            "checkpoint.keep": 2,
            "checkpoint.best_metric": "val/score",
        },
    )
    fit(ScoredToyTask(), cfg, tmp_path)
    steps = _steps(tmp_path)
    assert len(steps) <= 3
    assert steps == [8, 18, 20]


# Wide enough that the largest stored file is array data (flipped bytes there decode silently).
HIDDEN = 256


def _reference(tmp_path, **kw):
    cfg = _cfg(num_epochs=1, batch_size=8, **{"checkpoint.every_steps": 3, **kw})
    fit(ToyTask(hidden=HIDDEN), cfg, tmp_path / "ref")  # 8 steps: checkpoints 3, 6, 8
    return cfg, final_params(tmp_path / "ref")


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_newest_step_is_moved_aside_and_training_resumes_bit_identically(
    tmp_path, capsys, corruption
):
    cfg, good = _reference(tmp_path)
    run = tmp_path / "run"
    fit(ToyTask(hidden=HIDDEN), cfg, run)
    CORRUPTIONS[corruption](run / "ckpt" / "8")
    before = tree_digest(run / "ckpt" / "8")
    capsys.readouterr()
    fit(ToyTask(hidden=HIDDEN), cfg, run)  # resumes from 6, redoes 7-8
    out = capsys.readouterr()
    redone = final_params(run)
    if corruption == "flipped_bytes" and "resumed from" in out.out and "ckpt/8\n" in out.out:
        # The flipped bytes fell where the compressed stream does not use them: step 8 still
        # decodes to exactly what was saved (its checksums verified), so resuming there is right.
        assert not (run / integrity.REJECTED_DIR).exists()
    else:
        assert "ckpt/8 is unreadable or corrupt" in out.out + out.err
        assert "moved it to" in out.out + out.err and "/6" in out.out
        rejected = run / integrity.REJECTED_DIR / "8"
        assert tree_digest(rejected) == before  # renamed, byte for byte, not deleted
    for k in good:
        np.testing.assert_array_equal(redone[k], good[k], err_msg=k)


def test_consumer_restore_verifies_and_falls_back_past_silently_changed_values(tmp_path, capsys):
    cfg, good = _reference(tmp_path)
    replace_values(tmp_path / "ref" / "ckpt" / "8")
    capsys.readouterr()
    model, _ = ckpt.restore_model(tmp_path / "ref")
    err = capsys.readouterr().err
    assert "differ from the checksums" in err and "ckpt_rejected" in err
    assert not np.array_equal(np.asarray(model.l1.kernel[...]), good["l1.kernel"])
    assert _steps(tmp_path / "ref") == [3, 6]


class ExplodingToyTask(ToyTask):
    """ToyTask with one bad example whose gradient overflows to inf while its loss stays finite
    (the loss is computed before the update, so it cannot see the parameters it produces)."""

    BAD_EXAMPLE = 58  # lands in step 5 of epoch 1 with seed 0 and batch 8

    def train_dataset(self, config):
        return grain.MapDataset.range(len(self.x)).map(self._example)

    def _example(self, i):
        return {"x": self.x[i], "y": self.y[i], "bad": np.float32(i == self.BAD_EXAMPLE)}

    def loss_fn(self, model, batch, rng):
        loss, metrics = super().loss_fn(model, batch, rng)
        s = jnp.sum(model.l1.kernel[...])
        zero = s - jax.lax.stop_gradient(s)  # value 0; gradient 1 per element
        boom = jnp.sum(batch["bad"]) * 2e38
        return loss + boom * zero + boom * zero, metrics  # gradient 2e38 + 2e38 = inf


def test_nan_parameters_never_reach_a_checkpoint(tmp_path):
    cfg = _cfg(num_epochs=1, batch_size=8, **{"checkpoint.every_steps": 1})
    cfg.optimizer.name = "sgd"
    with pytest.raises(NonFiniteLossError, match="parameters .* after step 5") as info:
        fit(ExplodingToyTask(), cfg, tmp_path)
    assert _steps(tmp_path) == [2, 3, 4]  # keep=3; step 5 (inf parameters) was not saved
    for step in _steps(tmp_path):
        model, _ = ckpt.restore_model(tmp_path, step=step)
        assert integrity.all_finite(nnx.state(model)), f"step {step} holds NaN/inf"
    assert "ckpt/4, holds the finite weights of step 4" in str(info.value)


def _save_raw(workdir, model, model_config):
    """A checkpoint written without the checks (as an older version or another tool would)."""
    ckpt.write_model_config(workdir, model_config)
    with ckpt.make_manager(workdir, async_save=False) as manager:
        flat = ckpt.flatten(nnx.state(model))
        manager.save(0, args=ocp.args.Composite(model=ocp.args.StandardSave(flat)))


def test_consumers_and_export_refuse_non_finite_weights(tmp_path, capsys):
    task = ToyTask()
    model = ToyNet(task.model_config, rngs=nnx.Rngs(0))
    model.l1.kernel[...] = model.l1.kernel[...].at[0, 0].set(np.nan)
    with pytest.raises(integrity.NonFiniteWeightsError, match="l1.kernel"):
        ckpt.save_model(tmp_path / "checked", model, task.model_config)
    assert not (tmp_path / "checked" / "ckpt").exists()
    _save_raw(tmp_path / "raw", model, task.model_config)
    with pytest.raises(integrity.NonFiniteWeightsError, match="l1.kernel"):
        ckpt.restore_model(tmp_path / "raw")

    from mzs_jax.models import clip

    cfg = clip.model_config("tiny")
    net = clip.CLIP(cfg, rngs=nnx.Rngs(0))
    net.logit_scale[...] = np.float32(np.inf)
    _save_raw(tmp_path / "clip", net, cfg)
    out = tmp_path / "out.safetensors"
    assert cli.main(["export", "--workdir", str(tmp_path / "clip"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "NaN/inf" in err and "logit_scale" in err and "Traceback" not in err
    assert not out.exists()


def test_checksums_are_saved_beside_each_step(tmp_path):
    _reference(tmp_path)
    sums = json.loads((tmp_path / "ref/ckpt/8/checksums/metadata").read_text())
    assert sums["fingerprint"] == integrity.FINGERPRINT
    assert set(sums["items"]) == {"model", "train"} and "l1.kernel" in sums["items"]["model"]


def test_fingerprint_changes_with_any_single_element():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    base, _ = integrity.digest({"x": x})
    for idx in [(0, 0), (3, 2), (6, 4)]:
        y = x.copy()
        y.view(np.uint32)[idx] ^= 1  # one bit of one element
        assert integrity.digest({"x": y})[0] != base
    swapped = x.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # same values, other places
    assert integrity.digest({"x": swapped})[0] != base
