"""`mzs demo --quick` end to end: the report exists and every section holds real, finite numbers."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from demo_run import quick_demo, run_mzs
from PIL import Image

from mzs_jax import demo, demo_report


def _sections(md: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", md, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _table(text: str) -> list[list[str]]:
    rows = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]  # skip header + rule


def _number(cell: str) -> float:
    """'12.34 ± 1.20**' -> 12.34; '0.5' -> 0.5; anything else raises."""
    m = re.fullmatch(r"(-?[0-9.]+(?:e[-+]?\d+)?)(?: ± [0-9.]+(?:e[-+]?\d+)?)?\**", cell)
    if not m:
        raise AssertionError(f"not a number: {cell!r}")
    return float(m.group(1))


@pytest.mark.slow
def test_quick_demo_report_has_every_section_filled_with_finite_numbers():
    work, out = quick_demo()
    assert "[demo] stage 1/7 data" in out and "ETA" in out
    md = (work / "report" / "report.md").read_text()
    assert (work / "report" / "report.html").is_file()
    secs = _sections(md)
    assert list(secs) == list(demo_report.SECTIONS)
    for word in ("n/a", "TODO", "placeholder"):
        assert word not in md

    ret = _table(secs["Stage 1: retrieval per loss"])
    assert [r[0] for r in ret] == [
        "pre-trained (no fine-tuning)",
        "infonce",
        "dcl",
        "hn_nce",
        "dhn_nce",
        "cehnc",
    ]
    vals = [_number(c) for r in ret for c in r[1:5]]
    assert len(vals) == 24 and all(0 <= v <= 100 for v in vals)
    # Whether fine-tuning changed retrieval: McNemar vs the pre-trained model, per loss.
    assert ret[0][5:] == ["reference", "—"]
    for r in ret[1:]:
        assert "p=" in r[5] and (r[6] == "no" or r[6].startswith("yes ("))

    hard = secs["Stage 1: hard-negative loss benchmark"]
    mean_ci, tests = (_table(t) for t in hard.split("\n\n") if t.startswith("|"))
    assert [r[0] for r in mean_ci] == ["pre-trained (no fine-tuning)"] + [
        f"{k} (2 seeds)" for k in ("infonce", "dcl", "hn_nce", "dhn_nce", "cehnc")
    ]
    assert all(0 <= _number(c) <= 100 for r in mean_ci for c in r[1:])
    assert len(tests) == 5 * 4 and all(r[5] in ("yes", "no") for r in tests)
    for r in tests:  # p-values: numbers, or a t-test undefined because Δ is equal on every seed
        assert r[3].startswith("undefined") or 0 <= float(r[3]) <= 1
        assert 0 <= float(r[4]) <= 1
    assert "beats the pre-trained model's" in hard and "loss_quality.png" in hard

    (export,) = _table(secs["Export to PyTorch"])
    assert int(export[1]) > 0 and _number(export[3]) < 1e-4  # torch reproduces the JAX model

    for _, hit in _table(secs["Stage 2: pointing game"]):
        assert 0.0 <= _number(hit) <= 1.0

    seg = _table(secs["Segmentation: zero-shot vs baselines vs weakly supervised"])
    methods = {r[1] for r in seg}
    assert {"zero-shot chain", "weak ResUNet", "whole-body box", "random point"} <= methods
    for r in seg:
        assert all(math.isfinite(_number(c)) for c in r[2:5]), r

    pvals = [float(r[5]) for r in _table(secs["Paired t-tests"])]
    assert pvals and any(math.isfinite(p) for p in pvals)

    goals = _table(secs["Goals, as measured"])
    assert goals and all(r[2] == "yes" or r[2].startswith("no") for r in goals)
    # The demo's stated zero-shot goals must be met: the chain beats each baseline on Dice at
    # p < 0.05. (The ResUNet-vs-pseudo-masks goal is measured and reported, met or not.)
    chain_goals = [r for r in goals if r[0].startswith("chain beats")]
    assert {r[0] for r in chain_goals} == {
        "chain beats `random point` on Dice",
        "chain beats `whole-body box` on Dice",
    }
    for r in chain_goals:
        assert r[2] == "yes", r

    for png in ("overlays.png", "box_dice.png", "loss_quality.png"):
        with Image.open(work / "report" / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100
            assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas

    times = [_number(r[1]) for r in _table(secs["Timings"])]
    assert all(t >= 0 for t in times)


def test_prepare_workdir_refuses_a_folder_not_made_by_the_demo(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not made by `mzs demo`"):
        demo.prepare_workdir(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_prepare_workdir_replaces_only_a_previous_demo_run(tmp_path):
    demo.prepare_workdir(tmp_path)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "old.md").write_text("old")
    (tmp_path / "notes.txt").write_text("user file")
    demo.prepare_workdir(tmp_path)
    assert not (tmp_path / "report").exists() and (tmp_path / "notes.txt").exists()


@pytest.mark.slow
def test_segment_replaying_the_demo_config_gives_the_demo_masks(tmp_path):
    """`mzs demo` runs stage 2 through `segment_dataset`: `mzs segment` with the demo's saved
    config (configs/replay.py) retrains DPFEM and writes the same masks, case by case."""
    work, _ = quick_demo()
    demo_run = work / "zeroshot" / "test"
    proc = run_mzs(
        "segment",
        "--config",
        f"configs/replay.py:{demo_run / 'config.json'}",
        "--workdir",
        str(tmp_path / "seg"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    demo_masks = sorted((demo_run / "masks").glob("*.png"))
    assert len(demo_masks) == 12  # configs/demo.py quick: n_test
    for path in demo_masks:
        a = np.asarray(Image.open(path))
        b = np.asarray(Image.open(tmp_path / "seg" / "masks" / path.name))
        assert np.array_equal(a, b), path.name
    trained = (demo_run / "dpfem" / "train_cases.json").read_text()
    assert (tmp_path / "seg" / "dpfem" / "train_cases.json").read_text() == trained
