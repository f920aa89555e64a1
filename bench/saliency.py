"""Images/s of batched JAX gScoreCAM vs torch gScoreCAM (pytorch-grad-cam) on the same weights.

    python bench/saliency.py [--model tiny|biomedclip] [--images 8] [--topk 60] [--batch 8]
Random-initialised weights exported from the Flax model to open_clip; both backends get the same
images and text embeddings; the agreement (Pearson r per map) is printed next to the speed ratio.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def _pearson(a, b):
    import numpy as np

    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def main(argv: list[str]) -> str:
    p = argparse.ArgumentParser(prog="bench/saliency.py")
    p.add_argument("--model", default="tiny", choices=["tiny", "biomedclip"])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--topk", type=int, default=60)
    p.add_argument("--batch", type=int, default=8, help="images per JAX call")
    p.add_argument("--chunk", type=int, default=32, help="masked inputs per forward")
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--point", default="norm1")
    a = p.parse_args(argv)

    import jax
    import numpy as np
    import torch

    from mzs_jax.models import clip
    from mzs_jax.pipeline import saliency
    from torch_bridge import cam

    cfg = clip.model_config(a.model)
    topk = min(a.topk, cfg.vision.width)
    jmodel, tmodel = _model_pair(cfg)
    rng = np.random.default_rng(0)
    s = cfg.vision.image_size
    images = rng.standard_normal((a.images, s, s, 3)).astype(np.float32)
    text = rng.standard_normal((a.images, cfg.embed_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    kw = dict(topk=topk, layer=a.layer, point=a.point)

    def run_jax():
        out = [
            saliency.saliency(jmodel, images[i : i + a.batch], text[i : i + a.batch],
                              "gscorecam", chunk=a.chunk, **kw)
            for i in range(0, a.images, a.batch)
        ]  # fmt: skip
        return np.concatenate([np.asarray(jax.block_until_ready(o)) for o in out])

    t = time.perf_counter()
    run_jax()  # compile
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    maps_j = run_jax()
    jax_s = time.perf_counter() - t

    cam.gscorecam(tmodel, images[:1], text[:1], batch_size=a.chunk, **kw)  # warm-up
    t = time.perf_counter()
    maps_t = cam.gscorecam(tmodel, images, text, batch_size=a.chunk, **kw)
    torch_s = time.perf_counter() - t

    r = [_pearson(x, y) for x, y in zip(maps_j, maps_t, strict=True)]
    setting = (
        f"{a.images} images {s}×{s}, top-k {topk} of {cfg.vision.width} channels at "
        f"block {a.layer} {a.point}, {a.chunk} masked inputs per forward, JAX batch {a.batch}; "
        f"torch threads {torch.get_num_threads()}, JAX devices {jax.device_count()} "
        f"({jax.default_backend()}), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}."
    )
    return _section(a.model, setting, a.images / jax_s, a.images / torch_s, compile_s, r)


def _model_pair(cfg):
    """A random-init Flax CLIP and the same weights in open_clip (through safetensors)."""
    from flax import nnx

    from mzs_jax import convert
    from mzs_jax.models import clip
    from torch_bridge.clip import build_open_clip

    jmodel = clip.CLIP(cfg, rngs=nnx.Rngs(0))
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "w.safetensors"
        convert.save_safetensors(convert.to_open_clip(jmodel), path)
        return jmodel, build_open_clip(cfg, weights=path)


def _section(model: str, setting: str, jax_ips: float, torch_ips: float, compile_s, r) -> str:
    return "\n".join(
        [
            f"### gScoreCAM: JAX (batched, jit) vs torch (pytorch-grad-cam), {model} model",
            "",
            setting,
            "",
            "| backend | images/s | s/image |",
            "|---|---|---|",
            f"| JAX | {jax_ips:.3f} | {1 / jax_ips:.3f} |",
            f"| torch | {torch_ips:.3f} | {1 / torch_ips:.3f} |",
            "",
            f"**JAX / torch speed ratio: {jax_ips / torch_ips:.2f}×** "
            f"(JAX compile {compile_s:.1f} s, not counted). Agreement per map: Pearson r min "
            f"{min(r):.5f}, mean {sum(r) / len(r):.5f}.",
        ]
    )


if __name__ == "__main__":
    print(main(sys.argv[1:]))
