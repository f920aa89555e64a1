"""Run a stage-2 config again from the `config.json` a `mzs segment` (or `mzs demo`) run wrote.

    mzs segment --config configs/replay.py:runs/segment/config.json --workdir runs/again
Same config and seed, same masks (`tests/test_demo_quick.py` checks the demo's).
"""

import json
import pathlib

import ml_collections

from mzs_jax.pipeline.zeroshot import default_config


def get_config(arg=None):
    if not arg:
        raise ValueError("configs/replay.py needs the config.json path: configs/replay.py:PATH")
    path = pathlib.Path(arg)
    if not path.is_file():
        raise FileNotFoundError(f"configs/replay.py: no such config.json: {path}")
    c = default_config()
    saved = json.loads(path.read_text())
    for free_keys in ("prompts", "labels"):  # user-named keys: replaced, not merged
        c[free_keys] = ml_collections.ConfigDict(saved.pop(free_keys, {}))
    c.update(ml_collections.ConfigDict(saved))
    return c
