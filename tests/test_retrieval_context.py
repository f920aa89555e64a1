"""`mzs eval-retrieval` and `mzs export` say whether the metadata context is used; with a context
model and metadata, eval-retrieval reports the rows without and with context."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mzs_jax import cli
from mzs_jax.data import phantom
from mzs_jax.data.tokenizer import build_wordpiece_tokenizer
from mzs_jax.models import clip
from mzs_jax.pipeline import retrieval
from mzs_jax.train.checkpoint import restore_model, save_model
from mzs_jax.train.clip_task import eval_examples


def _workdir(tmp_path, context: bool):
    cfg = clip.model_config("tiny")
    cfg.context.enabled = context
    wd = tmp_path / ("ctx" if context else "plain")
    model = clip.CLIP(cfg, rngs=nnx.Rngs(0))
    if context:
        model.context.gate_txt[...] = jnp.float32(0.8)  # an open gate: context changes the text
    save_model(wd, model, cfg)
    build_wordpiece_tokenizer(
        [s["caption"] for s in phantom.generate("xray", 40)], wd / "tokenizer", vocab_size=512
    )
    return wd


def test_eval_retrieval_reports_both_rows_for_a_context_model(tmp_path, capsys):
    wd = _workdir(tmp_path, context=True)
    argv = ["eval-retrieval", "--workdir", str(wd), "--data", "phantom:60", "--split", "all"]
    assert cli.main([*argv, "--seeds", "2"]) == 0
    text = (wd / "retrieval.md").read_text()
    rows = [r for r in text.splitlines() if r.startswith(f"| {wd}")]
    assert [r.split("|")[1].strip() for r in rows] == [
        f"{wd} (without context)",
        f"{wd} (with context)",
    ]
    assert "fuses the metadata into the text side" in text
    # The with-context row is the retrieval of the fused text embeddings, computed here.
    model, mc = restore_model(wd)
    ex = eval_examples("phantom:60", None, "all", mc, workdir=wd, context=True)
    img, txt, txt_ctx = retrieval.embed(model, ex, with_context=True)
    assert np.abs(txt_ctx - txt).max() > 1e-3 and retrieval.has_metadata(ex)
    want = retrieval.summarize(img, txt_ctx, batch=50, seeds=2)["i2t_top1"][0]
    assert rows[1].split("|")[2].strip().startswith(f"{100 * want:.2f}")

    assert cli.main(["export", "--workdir", str(wd), "--out", str(tmp_path / "m.safetensors")]) == 0
    assert "context: not exported" in capsys.readouterr().out


def test_eval_retrieval_of_a_plain_model_says_no_context(tmp_path, capsys):
    wd = _workdir(tmp_path, context=False)
    argv = ["eval-retrieval", "--workdir", str(wd), "--data", "phantom:60", "--split", "all"]
    assert cli.main([*argv, "--seeds", "1"]) == 0
    text = (wd / "retrieval.md").read_text()
    assert "no context encoder" in text and "(with context)" not in text
    assert cli.main(["export", "--workdir", str(wd), "--out", str(tmp_path / "p.safetensors")]) == 0
    assert "context: none" in capsys.readouterr().out
