"""Every command in README.md runs: each README line is run as written (from a temp folder), with
small sizes appended and user files replaced by generated stand-ins (a random tiny open_clip
checkpoint, a random-init SAM state dict, phantoms in the ROCO layout, a WordPiece vocabulary).
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys

import numpy as np
import pytest
from demo_run import REPO, mzs_env, quick_demo

README = (REPO / "README.md").read_text()

TINY_CLIP = ["--config.model=tiny", "--config.total_steps=2", "--config.batch_size=8",
             "--config.eval.max_examples=20", "--config.eval.batch=10"]  # fmt: skip
# README command -> arguments appended to it (small sizes); every README command must be here.
SMALL = {
    "mzs demo": None,  # run by tests/test_demo_quick.py (`mzs demo --quick`)
    "mzs import --open-clip open_clip_pytorch_model.bin --workdir runs/biomedclip": [
        "--model", "tiny"],
    "mzs train-clip --config configs/clip_cehnc.py --workdir runs/cehnc "
    "--config.init=runs/biomedclip --config.data.path=/data/roco "
    "--config.data.tokenizer=/models/BiomedCLIP": TINY_CLIP,
    "mzs eval-retrieval --workdir runs/cehnc --data /data/roco --tokenizer /models/BiomedCLIP": [
        "--seeds", "2", "--batch", "5"],
    "mzs demo --sam-checkpoint sam_vit_b_01ec64.pth": [
        "--workdir", "demo_sam", "--config", "configs/demo.py:quick",
        "--config.clip.losses=('cehnc',)", "--config.clip.n_captions=120",
        "--config.clip.finetune_steps=1",
        "--config.zeroshot.n_train=2",
        "--config.zeroshot.n_test=2", "--config.zeroshot.n_dpfem=8",
        "--config.zeroshot.dpfem_epochs=1",
        "--config.zeroshot.n_overlays=2", "--config.weak.seeds=(0,)", "--config.weak.epochs=1",
        "--config.weak.batch_size=2"],
    "mzs segment --config configs/zeroshot_phantom.py --workdir runs/segment "
    "--config.clip_workdir=runs/cehnc --config.tokenizer=/models/BiomedCLIP "
    "--config.segmenter.name=medsam --config.segmenter.checkpoint=medsam_vit_b.pth": [
        "--config.data.n=2", "--config.dpfem.num_epochs=1", "--config.dpfem.batch_size=2"],
    "mzs make-phantoms --kind mri --out data/acdc_phantom --n 4": [],
    "mzs train-weak --config configs/weak_phantom.py --workdir runs/weak "
    "--config.data.images=workdir/demo/data/xray_train/images "
    "--config.data.pseudo_masks=workdir/demo/zeroshot/train/masks "
    "--config.data.pseudo_classes=\"('heart',)\"": ["--config.num_epochs=1"],
    "mzs train-weak --workdir runs/weak --predict workdir/demo/data/xray_test/images "
    "--out runs/weak/pred": [],
    "mzs evaluate --pred runs/weak/pred --gt workdir/demo/data/xray_test/gt --method weak "
    "--workdir runs/eval --report runs/eval/report": [],
    "JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 mzs train-clip "
    "--config configs/clip_cehnc.py --workdir runs/cehnc --config.mesh.fsdp=4 "
    "--config.batch_size=1024": None,  # test_readme_pod_command_runs_on_two_processes
    "mzs export --workdir runs/cehnc --out cehnc_open_clip.safetensors": [],
    "mzs bench --out bench.md": ["--quick", "--only", "input_pipeline"],
}  # fmt: skip


def readme_commands(lang: str = "bash") -> list[str]:
    blocks = re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip()]


def _command(line: str, tmp, extra=(), env_over=None) -> tuple[list[str], dict]:
    """README line -> argv and env: `mzs` → this Python's CLI, repo paths made absolute."""
    line = line.replace("configs/", f"{REPO}/configs/")
    line = line.replace("/data/roco", str(tmp / "roco"))
    line = line.replace("/models/BiomedCLIP", str(tmp / "tokenizer"))
    line = line.replace("workdir/demo", str(quick_demo()[0]))
    env, argv = mzs_env(), shlex.split(line)
    while "=" in argv[0]:
        k, v = argv.pop(0).split("=", 1)
        env[k] = v
    env.update(env_over or {})
    assert argv[0] == "mzs"
    extra = [e.replace("configs/", f"{REPO}/configs/") for e in extra]
    return [sys.executable, "-m", "mzs_jax.cli", *argv[1:], *extra], env


def run_readme(line: str, tmp, timeout: int = 900) -> str:
    argv, env = _command(line, tmp, SMALL[line])
    proc = subprocess.run(argv, cwd=tmp, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    """Stand-ins for the user's files: random tiny open_clip .bin, random-init SAM .pth (used for
    SAM and MedSAM), ROCO-layout phantom captions, a WordPiece vocabulary."""
    import torch

    from mzs_jax import convert
    from mzs_jax.data import phantom, phantom_formats
    from mzs_jax.data.tokenizer import build_wordpiece_tokenizer
    from mzs_jax.models import clip
    from torch_bridge.sam import build_sam

    t = tmp_path_factory.mktemp("readme")
    sd = convert.random_state_dict(clip.model_config("tiny"), seed=0)
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()},
               t / "open_clip_pytorch_model.bin")  # fmt: skip
    sam = build_sam("vit_b").state_dict()
    torch.save(sam, t / "sam_vit_b_01ec64.pth")
    (t / "medsam_vit_b.pth").symlink_to(t / "sam_vit_b_01ec64.pth")
    samples = phantom.generate_captions(90, seed=3)
    phantom_formats.write_roco(t / "roco", samples)
    build_wordpiece_tokenizer([s["caption"] for s in samples], t / "tokenizer")
    return t


def test_every_readme_command_has_a_small_run_here():
    assert set(readme_commands()) == set(SMALL)
    assert readme_commands()[0] == "mzs demo"  # the main job, first after the set-up block


def test_readme_setup_block_is_the_two_ci_commands():
    block = README.split("<!-- setup -->\n", 1)[1].split("<!-- /setup -->", 1)[0]
    assert block.split("\n")[:2] == ['pip install -e ".[dev]"', "python -m pytest -q"]


@pytest.mark.slow
def test_readme_stage1_commands_import_train_evaluate_export_and_load_in_torch(tmp):
    for line in list(SMALL)[1:4]:
        run_readme(line, tmp)
    out = run_readme("mzs export --workdir runs/cehnc --out cehnc_open_clip.safetensors", tmp)
    assert "exported tiny" in out and (tmp / "cehnc_open_clip.safetensors").stat().st_size > 0
    assert (tmp / "runs" / "cehnc" / "retrieval.md").is_file()
    (snippet,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    check = snippet + "\nprint('logit_scale', float(model.logit_scale))\n"
    proc = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp, env=mzs_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and "logit_scale" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow
def test_readme_sam_commands_run_with_a_random_init_sam_checkpoint(tmp):
    seg = [k for k in SMALL if k.startswith("mzs segment")][0]
    if not (tmp / "runs" / "cehnc").is_dir():
        for line in list(SMALL)[1:3]:
            run_readme(line, tmp)
    run_readme(seg, tmp)
    assert any((tmp / "runs" / "segment" / "masks").iterdir())
    assert "medsam" in (tmp / "runs" / "segment" / "cases.jsonl").read_text()
    run_readme("mzs demo --sam-checkpoint sam_vit_b_01ec64.pth", tmp)
    report = (tmp / "demo_sam" / "report" / "report.md").read_text()
    assert "sam_vit_b(sam_vit_b_01ec64.pth) (SAM checkpoint given)" in report


@pytest.mark.slow
def test_readme_dataset_and_stage3_commands(tmp):
    for line in [k for k in SMALL if k.startswith(("mzs make-phantoms", "mzs train-weak",
                                                     "mzs evaluate"))]:  # fmt: skip
        run_readme(line, tmp)
    assert (tmp / "data" / "acdc_phantom" / "patient001").is_dir()
    assert (tmp / "runs" / "eval" / "report" / "report.md").is_file()


@pytest.mark.slow
def test_readme_bench_command(tmp):
    run_readme("mzs bench --out bench.md", tmp)
    assert "input/step ratio" in (tmp / "bench.md").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_readme_pod_command_runs_on_two_processes(tmp):
    (line,) = [k for k in SMALL if k.startswith("JAX_COORDINATOR_ADDRESS")]
    line = line.replace("runs/cehnc", "runs/cehnc_pod").replace("fsdp=4", "fsdp=2")
    line = line.replace("batch_size=1024", "batch_size=8")
    extra = [*TINY_CLIP[:2], *TINY_CLIP[3:], "--config.data.path=phantom:64"]
    procs = []
    port = _free_port()
    for pid in range(2):
        ln = line.replace("10.0.0.1:1234", f"127.0.0.1:{port}")
        argv, env = _command(ln, tmp, extra, {"JAX_PROCESS_ID": str(pid)})
        procs.append(subprocess.Popen(argv, cwd=tmp, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    assert "mesh {'data': 1, 'fsdp': 2}" in outs[0]
