"""`mzs_jax` (models, conversion, tokenizer, weights CLI) imports and runs with torch blocked."""

import subprocess
import sys
import textwrap

BLOCKED_SCRIPT = textwrap.dedent(
    """
    import sys

    class BlockTorch:
        BLOCKED = ("torch", "torchvision", "open_clip", "timm", "torch_bridge")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ModuleNotFoundError(f"blocked for this test: {name}", name=name)
            return None

    sys.meta_path.insert(0, BlockTorch())
    import numpy as np
    import mzs_jax, mzs_jax.convert, mzs_jax.data.tokenizer, mzs_jax.weights_cli
    from mzs_jax import convert
    from mzs_jax.models import clip

    cfg = clip.model_config("tiny")
    sd = convert.random_state_dict(cfg)
    back = convert.to_open_clip(convert.from_open_clip(sd, cfg))
    assert all(np.array_equal(back[k], v) for k, v in sd.items())
    try:
        import torch
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("the blocker did not block torch")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BlockTorch.BLOCKED)
    assert not leaked, leaked
    print("OK without torch")
    """
)


def test_mzs_jax_models_and_conversion_work_with_torch_blocked():
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK without torch" in proc.stdout
