"""Text length bucketing (`config.data.text_buckets`): a phantom batch cut to its bucket gives the
same CEHNC loss and gradients as the padded batch; lengths, validation and the loop guard."""

import runpy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from mzs_jax import losses
from mzs_jax.train import text_buckets
from mzs_jax.train.clip_task import ClipTask, clip_loss
from mzs_jax.train.loop import fit


def _config(repo_root, buckets=(8, 16, 24, 32)):
    cfg = runpy.run_path(str(repo_root / "configs" / "clip_cehnc.py"))["get_config"]()
    cfg.model = "tiny"
    cfg.model_overrides.text = ml_collections.ConfigDict({"context_length": 64})
    cfg.data.path = "phantom:24"
    cfg.data.val_fraction = 0.0
    cfg.data.text_buckets = buckets
    return cfg


def test_bucketed_phantom_batch_has_the_padded_batch_loss_and_gradients(tmp_path, repo_root):
    cfg = _config(repo_root)
    task = ClipTask(cfg, tmp_path)
    padded = task.train_dataset(cfg).batch(12)[0]
    cut = task.prepare_batch(padded)
    need = text_buckets.needed_length(padded["attention_mask"])
    assert padded["input_ids"].shape[1] == 64
    assert cut["input_ids"].shape[1] in (16, 24, 32) and cut["input_ids"].shape[1] >= need
    assert not padded["attention_mask"][:, cut["input_ids"].shape[1] :].any()
    np.testing.assert_array_equal(cut["image"], padded["image"])

    model = task.build_model(nnx.Rngs(0))
    g, params, rest = nnx.split(model, nnx.Param, ...)
    loss = losses.loss_from_config(cfg.loss)

    @jax.jit
    def value_and_grad(p, batch):
        return jax.value_and_grad(lambda p: clip_loss(nnx.merge(g, p, rest), batch, loss)[0])(p)

    l_pad, g_pad = value_and_grad(params, jax.tree.map(jnp.asarray, padded))
    l_cut, g_cut = value_and_grad(params, jax.tree.map(jnp.asarray, cut))
    np.testing.assert_allclose(l_cut, l_pad, rtol=1e-6, atol=1e-6)
    # Equal up to float32 summation order (the matmuls run over fewer, all-masked-out keys).
    for a, b in zip(jax.tree.leaves(g_cut), jax.tree.leaves(g_pad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_loss_refuses_unbucketed_batches_when_buckets_are_set(tmp_path, repo_root):
    task = ClipTask(_config(repo_root), tmp_path)
    with pytest.raises(RuntimeError, match="prepare_batch"):
        task.loss_fn(None, {}, None)


def test_no_buckets_leaves_the_batch_alone(tmp_path, repo_root):
    cfg = _config(repo_root, buckets=())
    task = ClipTask(cfg, tmp_path)
    batch = task.train_dataset(cfg).batch(4)[0]
    assert task.prepare_batch(batch) is batch


def test_bucket_outside_the_context_is_rejected_naming_the_key():
    with pytest.raises(ValueError, match=r"config\.data\.text_buckets"):
        text_buckets.check_buckets((16, 300), 256)
    assert text_buckets.check_buckets((128, 32, 64), 256) == (32, 64, 128)


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    buckets=st.lists(st.integers(1, 40), min_size=1, max_size=4),
)
def test_bucket_holds_every_attended_token_and_is_the_smallest_that_does(lengths, buckets):
    mask = (np.arange(40)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    batch = {"input_ids": mask * 7, "attention_mask": mask, "image": np.zeros((len(lengths), 2))}
    cut = text_buckets.bucket_batch(batch, buckets)
    n = cut["input_ids"].shape[1]
    assert n >= max(1, max(lengths)) and not mask[:, n:].any()
    assert n == 40 or n in buckets
    assert all(b < max(1, max(lengths)) for b in buckets if b < n)
    assert cut["image"] is batch["image"]


def test_training_loop_buckets_each_batch_and_compiles_once_per_bucket(tmp_path, repo_root, capsys):
    cfg = _config(repo_root, buckets=(8, 64))
    cfg.mesh.data, cfg.mesh.fsdp = 2, 1
    cfg.batch_size, cfg.total_steps = 8, 3
    cfg.checkpoint.every_steps, cfg.checkpoint.best_metric = 1000, ""
    last = fit(ClipTask(cfg, tmp_path), cfg, tmp_path / "run")
    assert np.isfinite(last["loss"])
    out = capsys.readouterr().out
    # Phantom captions need more than 8 tokens, so every batch runs cut to the 64 bucket: the
    # step is compiled once, not once per batch.
    assert out.count("compiled") == 1, out


def test_no_validation_split_with_a_validation_best_metric_is_refused(tmp_path, repo_root):
    cfg = _config(repo_root)
    cfg.checkpoint.best_metric = "val/i2t_top1"
    with pytest.raises(ValueError, match=r"config\.data\.val_fraction=0\.0.*best_metric"):
        fit(ClipTask(cfg, tmp_path), cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
