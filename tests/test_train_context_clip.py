"""Context encoder in stage 1 CLIP training: phantom metadata reaches the loss through grain, a
CEHNC run with context trains and its gate gets gradient; with context disabled nothing changes."""

import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mzs_jax import losses
from mzs_jax.train import checkpoint as ckpt
from mzs_jax.train import clip_context
from mzs_jax.train.clip_task import ClipTask, clip_loss
from mzs_jax.train.loop import fit


def _config(repo_root, enabled: bool = True):
    cfg = runpy.run_path(str(repo_root / "configs" / "clip_cehnc.py"))["get_config"]()
    cfg.model = "tiny"
    cfg.model_overrides.context.enabled = enabled
    cfg.data.path = "phantom:24"
    cfg.data.val_fraction = 0.0
    cfg.mesh.data, cfg.mesh.fsdp = 2, 1
    cfg.batch_size, cfg.total_steps = 8, 2
    cfg.optimizer.lr = 1e-2
    cfg.checkpoint.every_steps, cfg.checkpoint.best_metric = 1000, ""
    return cfg


def _first_batch(task, cfg, n=8):
    return jax.tree.map(jnp.asarray, task.train_dataset(cfg).batch(n)[0])


def test_phantom_metadata_becomes_context_arrays(tmp_path, repo_root):
    cfg = _config(repo_root)
    task = ClipTask(cfg, tmp_path)
    vocab = task.model_config.context.vocab
    ex = task.train_dataset(cfg)[0]
    md = task.train_src[0]["metadata"]
    ctx = ex["context"]
    want = list(vocab.modality).index(clip_context.normalise(md["modality"])) + 1
    assert int(ctx["modality"]) == want > 0
    assert int(ctx["body_region"]) > 0 and int(ctx["sex"]) > 0
    assert float(ctx["age"]) == md["age"] and bool(ctx["age_present"])
    assert bool(ctx["history_present"]) and ctx["history_ids"].shape == ex["input_ids"].shape
    # Missing metadata: every field missing, history mask still valid for the text tower.
    empty = clip_context.MetadataArrays(task.model_config.context, task.tokenizer)({})
    assert all(int(empty[k]) == 0 for k in ("modality", "body_region", "sex"))
    assert not empty["age_present"] and not empty["history_present"]
    assert empty["history_mask"].sum() > 0
    # A value outside the vocabulary is missing; a too-small table is refused, naming the key.
    assert int(clip_context.MetadataArrays(task.model_config.context, None)(
        {"modality": "thermography"})["modality"]) == 0  # fmt: skip
    bad = task.model_config.context.copy_and_resolve_references()
    bad.categorical.sex = 2
    with pytest.raises(ValueError, match="model.context.vocab.sex"):
        clip_context.with_default_vocab(bad)


def test_cehnc_run_with_context_trains_and_the_gate_gets_gradient(tmp_path, repo_root):
    cfg = _config(repo_root)
    cfg.total_steps = 1
    task = ClipTask(cfg, tmp_path)
    task.evaluate = None
    assert task.model_config.context.enabled
    last = fit(task, cfg, tmp_path / "run")  # CEHNC global-batch form over 2 devices
    assert np.isfinite(last["loss"]) and np.isfinite(last["grad_norm"])
    trained, mc = ckpt.restore_model(tmp_path / "run")
    assert mc.context.enabled and trained.context is not None
    # The gate starts at 0; AdamW's first update is -lr·g/(|g| + eps) for a scalar, so the gate
    # moves by about lr exactly when its gradient is non-zero (|g| >> eps = 1e-6).
    lr = cfg.optimizer.lr
    gate = float(trained.context.gate_txt[...])
    assert 0.5 * lr < abs(gate) <= lr * (1 + 1e-5), gate


def test_context_disabled_changes_nothing(tmp_path, repo_root):
    off = ClipTask(_config(repo_root, enabled=False), tmp_path)
    cfg_off = off.config
    ex = off.train_dataset(cfg_off)[0]
    assert set(ex) == {"image", "input_ids", "attention_mask"}
    model_off = off.build_model(nnx.Rngs(0))
    assert model_off.context is None
    batch = _first_batch(off, cfg_off)
    dense = losses.loss_from_config(cfg_off.loss)
    got, _ = clip_loss(model_off, batch, dense)
    img = model_off.encode_image(batch["image"])
    txt = model_off.encode_text(batch["input_ids"], batch["attention_mask"])
    want = dense(img, txt, jnp.exp(-model_off.logit_scale[...]))
    assert float(got) == float(want)

    # Enabled but untrained (gates at 0): same towers → the same loss as without context.
    on = ClipTask(_config(repo_root, enabled=True), tmp_path)  # same WORKDIR/tokenizer
    model_on = on.build_model(nnx.Rngs(0))
    nnx.update(model_on, nnx.state(model_off))
    batch_on = _first_batch(on, on.config)
    got_on, _ = clip_loss(model_on, batch_on, dense)
    np.testing.assert_allclose(float(got_on), float(got), rtol=1e-6, atol=1e-6)


def test_init_from_an_imported_clip_without_context_keeps_the_new_encoder(tmp_path, repo_root):
    """`config.init` = a workdir holding only the towers (as `mzs import` writes): the towers and
    logit scale are copied, the context encoder keeps its identity start, and training runs."""
    from mzs_jax import convert
    from mzs_jax.models import clip

    plain = clip.model_config("tiny")
    imported = convert.from_open_clip(convert.random_state_dict(plain, seed=5), plain)
    ckpt.save_model(tmp_path / "imported", imported, plain, step=0)
    cfg = _config(repo_root)
    cfg.init, cfg.total_steps = str(tmp_path / "imported"), 1
    task = ClipTask(cfg, tmp_path)
    task.evaluate = None
    model = task.build_model(nnx.Rngs(1))
    task.init_from(model)
    got, want = (jax.tree.leaves(nnx.state(m.visual)) for m in (model, imported))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    # τ restarts at config.temperature_init (test_train_temperature_init.py).
    np.testing.assert_allclose(float(model.logit_scale[...]), np.log(1 / cfg.temperature_init))
    assert float(model.context.gate_txt[...]) == 0.0
    last = fit(task, cfg, tmp_path / "run")
    assert np.isfinite(last["loss"])
    trained, mc = ckpt.restore_model(tmp_path / "run")
    assert mc.context.enabled and trained.context is not None
