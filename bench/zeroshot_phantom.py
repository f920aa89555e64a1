"""Phantom localisation of stage 2: pointing game vs a random point, box IoU raw vs CRF + box.

    python bench/zeroshot_phantom.py [--clip-workdir W] [--steps 100] [--n 48]
Without `--clip-workdir` it fine-tunes the tiny CLIP on phantom captions (`configs/phantom.py`,
`--steps` steps), then runs `mzs segment` (no DPFEM, CRF-mask segmenter) for each saliency method
and reports, for the focal-opacity prompt, the hit rate of the saliency argmax next to the chance
of a uniform random point, and the box IoU of raw thresholding vs the CRF + closing + box path.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> str:
    p = argparse.ArgumentParser(prog="bench/zeroshot_phantom.py")
    p.add_argument("--clip-workdir", default=None)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--captions", type=int, default=1500)
    p.add_argument("--n", type=int, default=48, help="X-ray phantoms to segment")
    p.add_argument("--methods", default="dense,gscorecam,gradcam")
    a = p.parse_args(argv)

    import numpy as np

    from mzs_jax import cli

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mzs_bench_zeroshot_"))
    clip_wd = a.clip_workdir
    if clip_wd is None:
        clip_wd = str(tmp / "clip")
        rc = cli.main(
            [
                "train-clip",
                "--config",
                str(REPO / "configs/phantom.py"),
                "--workdir",
                clip_wd,
                f"--config.data.path=phantom:{a.captions}",
                "--config.batch_size=64",
                f"--config.total_steps={a.steps}",
                f"--config.checkpoint.every_steps={a.steps}",
            ]
        )
        if rc:
            raise RuntimeError("train-clip failed")
    lines = [
        f"### Stage 2 on X-ray phantoms (tiny CLIP: {clip_wd}; {a.n} images)",
        "",
        "| method | prompt | n | hit | random point | box IoU raw thr | box IoU CRF+box | Dice |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in a.methods.split(","):
        out = tmp / method
        rc = cli.main(
            [
                "segment",
                "--config",
                str(REPO / f"configs/zeroshot_phantom.py:{method}"),
                "--workdir",
                str(out),
                f"--config.clip_workdir={clip_wd}",
                f"--config.data.n={a.n}",
                "--config.dpfem.enabled=False",
                "--config.figures=False",
                "--config.segmenter.name=crf",
            ]
        )
        if rc:
            raise RuntimeError(f"segment failed for {method}")
        rows = [json.loads(x) for x in (out / "cases.jsonl").read_text().splitlines()]
        for prompt in sorted({r["class"] for r in rows}):
            sel = [r for r in rows if r["class"] == prompt and "hit" in r]
            m = {
                k: float(np.mean([r[k] for r in sel]))
                for k in ("hit", "random_hit", "box_iou_raw", "box_iou", "dice")
            }
            lines.append(
                f"| {method} | {prompt} | {len(sel)} | {m['hit']:.3f} | "
                f"{m['random_hit']:.3f} | {m['box_iou_raw']:.3f} | {m['box_iou']:.3f} | "
                f"{m['dice']:.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
