"""`mzs train-clip` keeps the tokenizer it trained with inside the workdir."""

import numpy as np

from mzs_jax.data import tokenizer as tk
from mzs_jax.train.clip_task import resolve_tokenizer

CAPTIONS = [
    "frontal chest radiograph showing both lungs and a small opacity",
    "axial abdominal ct slice showing the liver and the right kidney",
    "short axis cardiac mri showing the left ventricle and myocardium",
] * 4


def test_explicit_tokenizer_is_saved_into_the_workdir_and_reloads_identically(tmp_path):
    tk.build_wordpiece_tokenizer(CAPTIONS, tmp_path / "vocab")
    workdir = tmp_path / "run"
    workdir.mkdir()
    tok = resolve_tokenizer(str(tmp_path / "vocab"), workdir, 24)
    assert (workdir / "tokenizer").is_dir()
    again = resolve_tokenizer(None, workdir, 24)  # what later stages do
    a, b = tok(CAPTIONS[:3]), again(CAPTIONS[:3])
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    np.testing.assert_array_equal(a["attention_mask"], b["attention_mask"])
