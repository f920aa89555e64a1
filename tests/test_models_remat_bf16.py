"""`model.dtype="bfloat16"` gives bf16 matmul operands in both towers (lowered HLO), and
`model.remat` gives the same gradients with less compiled temp memory (tiny CLIP)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mzs_jax import convert, losses
from mzs_jax.models import clip

_MATMUL = re.compile(
    r"stablehlo\.(dot_general|convolution)\b.*: \((tensor<[^>]*>), (tensor<[^>]*>)"
)


def _model(dtype="float32", remat="none", layers=2):
    cfg = clip.model_config("tiny")
    cfg.dtype, cfg.remat = dtype, remat
    cfg.vision.layers = cfg.text.layers = layers
    return cfg, convert.from_open_clip(convert.random_state_dict(cfg, seed=3), cfg)


def _inputs(cfg, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    s, length = cfg.vision.image_size, cfg.text.context_length
    lengths = rng.integers(2, length + 1, batch)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, cfg.text.vocab_size, (batch, length)).astype(np.int32) * mask
    return rng.standard_normal((batch, s, s, 3)).astype(np.float32), ids, mask


def _matmul_operand_types(lowered_text: str) -> list[tuple[str, str, str]]:
    return [m.groups() for line in lowered_text.splitlines() if (m := _MATMUL.search(line))]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_tower_matmul_takes_operands_in_the_compute_dtype(dtype):
    cfg, model = _model(dtype)
    images, ids, mask = _inputs(cfg)
    g, state = nnx.split(model)
    image_hlo = jax.jit(lambda s, x: nnx.merge(g, s).encode_image(x)).lower(state, images)
    text_hlo = jax.jit(lambda s, i, a: nnx.merge(g, s).encode_text(i, a)).lower(state, ids, mask)
    short = "bf16" if dtype == "bfloat16" else "f32"
    for tower, lowered in (("image", image_hlo), ("text", text_hlo)):
        ops = _matmul_operand_types(lowered.as_text())
        # image: patch conv + 2 blocks × (qkv, 2 attention, proj, fc1, fc2) + head, the last
        # block's qkv as 2 products (the class token's q; every token's k, v); text: 2 ×
        # (q, k, v, 2 attention, out, intermediate, output) + the 2-layer projection.
        assert len(ops) == {"image": 1 + 2 * 6 + 1 + 1, "text": 2 * 8 + 2}[tower], (tower, ops)
        for op, lhs, rhs in ops:
            assert lhs.endswith(f"x{short}>") and rhs.endswith(f"x{short}>"), (tower, op, lhs, rhs)
        # Params stay fp32 masters; the embeddings come out fp32 and unit-norm.
        text = lowered.as_text()
        assert "bf16" not in text if dtype == "float32" else "bf16" in text
    assert model.visual.blocks[0].attn.qkv.kernel[...].dtype == jnp.float32
    assert model.text.layers[0].query.kernel[...].dtype == jnp.float32


def test_bfloat16_keeps_softmax_layernorm_and_l2_norm_in_float32():
    cfg, model = _model("bfloat16")
    images, ids, mask = _inputs(cfg)
    g, state = nnx.split(model)
    text = jax.jit(lambda s, i, a: nnx.merge(g, s).encode_text(i, a)).lower(state, ids, mask)
    text = text.as_text()
    # Every reduction (softmax max/sum, LayerNorm mean/var, the L2 norm) runs in float32.
    reduces = re.findall(
        r"stablehlo\.reduce\(.*?\) applies stablehlo\.(\w+) .*?: \((tensor<[^>]*>)", text
    )
    floats = [t for _, t in reduces if re.search(r"x(f32|bf16|f16)>$", t)]
    assert floats and all(t.endswith("xf32>") for t in floats), floats
    exps = re.findall(r"stablehlo\.exponential %\S+ : (tensor<[^>]*>)", text)
    assert exps and all(t.endswith("xf32>") for t in exps), exps
    out = nnx.jit(lambda m, i, a: m.encode_text(i, a))(model, ids, mask)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


def _loss_and_grads(remat: str, layers: int = 4, batch: int = 16):
    cfg, model = _model(remat=remat, layers=layers)
    images, ids, mask = _inputs(cfg, batch)
    g, params = nnx.split(model, nnx.Param)

    def loss(p):
        m = nnx.merge(g, p)
        return losses.infonce(m.encode_image(images), m.encode_text(ids, mask), 0.07)

    fn = jax.jit(jax.value_and_grad(loss), compiler_options=clip.compiler_options(cfg))
    compiled = fn.lower(params).compile()
    return compiled(params), compiled.memory_analysis().temp_size_in_bytes


def test_remat_gives_the_same_gradients_with_less_temp_memory():
    (loss0, grads0), temp0 = _loss_and_grads("none")
    temps = {}
    for remat in ("full", "dots_saveable"):
        (loss, grads), temps[remat] = _loss_and_grads(remat)
        np.testing.assert_allclose(loss, loss0, atol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads0), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
    print(f"temp MiB: none {temp0 / 2**20:.1f}, " + ", ".join(
        f"{k} {v / 2**20:.1f}" for k, v in temps.items()))  # fmt: skip
    # "full" keeps only each block's input; "dots_saveable" also its matmul outputs.
    assert temps["full"] < temps["dots_saveable"] < temp0


def test_unknown_remat_mode_is_rejected_naming_the_key():
    cfg = clip.model_config("tiny")
    cfg.remat = "everything"
    with pytest.raises(ValueError, match=r"model\.remat.*'everything'"):
        clip.CLIP(cfg, rngs=nnx.Rngs(0))


def test_remat_compiler_options_only_where_remat_is_on():
    cfg = clip.model_config("tiny")
    assert clip.compiler_options(cfg) == {}
    cfg.remat = "full"
    assert clip.compiler_options(cfg) == {"xla_disable_hlo_passes": "cse_barrier_expander"}
