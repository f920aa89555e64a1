"""The step-decay schedule: 50 % steps as configured, and no int32 overflow for "never decay"."""

import jax
import jax.numpy as jnp
import numpy as np

from mzs_jax.train import defaults
from mzs_jax.train.step import make_schedule


def _opt(**kw):
    opt = defaults.train_config().optimizer
    opt.update(kw)
    return opt


def test_lr_halves_every_decay_period_after_warmup():
    sched = make_schedule(_opt(lr=1e-3, decay_factor=0.5, decay_every_epochs=1, warmup_steps=0), 10)
    np.testing.assert_allclose([sched(s) for s in (0, 9, 10, 25)], [1e-3, 1e-3, 5e-4, 2.5e-4])


def test_huge_decay_period_with_warmup_stays_finite_and_constant():
    opt = _opt(lr=1e-3, decay_factor=0.5, decay_every_epochs=1e9, warmup_steps=5)
    sched = jax.jit(make_schedule(opt, 100))  # as in the train step: int32 step counts
    values = np.array([sched(jnp.int32(s)) for s in (0, 5, 1_000, 100_000)])
    assert np.all(np.isfinite(values))
    np.testing.assert_allclose(values[1:], 1e-3)
