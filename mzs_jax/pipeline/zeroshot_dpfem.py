"""DPFEM in `mzs segment`: trained without labels on its own split, never on the scored cases.

`dpfem.train_data` overrides keys of `data` to name that split (phantoms: another `start`;
ACDC/COVID-QU-Ex/Synapse: `split="train"`). The case keys DPFEM was trained on are written to
`WORKDIR/dpfem/train_cases.json`, and a run refuses to score any of them. `dpfem.reuse` names a
finished `mzs segment` workdir whose DPFEM is used as is (its `train_cases.json` is checked the
same way), so several runs can share one DPFEM. Training signal: docs/zeroshot.md §DPFEM.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable

import ml_collections
import numpy as np

from mzs_jax.pipeline import dpfem_train, postprocess

TRAIN_CASES = "train_cases.json"


def case_key(data: ml_collections.ConfigDict, case_id: str) -> str:
    """What identifies a case across runs: phantoms by generator (kind, seed, size) and index id;
    files by source, folder and split (the split picks different files under the same folder)."""
    if data.source == "phantom":
        return f"phantom:{data.kind}:{int(data.seed)}:{int(data.size)}:{case_id}"
    return f"{data.source}:{os.path.abspath(str(data.path))}:{data.split}:{case_id}"


def train_data_overrides(cfg: ml_collections.ConfigDict) -> dict:
    """The keys `dpfem.train_data` sets (a key left None keeps `data`'s value)."""
    return {k: v for k, v in cfg.dpfem.train_data.items() if v is not None}


def train_split_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`cfg` with `data` overridden by `dpfem.train_data` (the split DPFEM trains on)."""
    out = ml_collections.ConfigDict(cfg.to_dict())
    for key, value in train_data_overrides(cfg).items():
        out.data[key] = value
    return out


def _check_disjoint(trained: list[str], scored: list[str], where: pathlib.Path) -> None:
    both = sorted(set(trained) & set(scored))
    if both:
        raise ValueError(
            f"dpfem: {len(both)} scored case(s) are among the cases DPFEM was trained on "
            f"({where}), e.g. {both[:3]}; set dpfem.train_data to another split"
        )


def _record(path: pathlib.Path, data: dict, keys: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"data": data, "cases": keys}, indent=1))
    tmp.replace(path)


def _restore(folder: pathlib.Path):
    from mzs_jax.train.checkpoint import restore_model

    model, _ = restore_model(folder, kind="dpfem")
    return model


def trained_model(
    cfg: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    scored_keys: list[str],
    train_examples: Callable[[ml_collections.ConfigDict], tuple[list[str], list[dict]]],
):
    """The DPFEM for this run: reused from `dpfem.reuse`, restored from `WORKDIR/dpfem` when
    trained there before on the same split, or trained on `dpfem.train_data`'s cases;
    `train_examples(split_cfg) -> (case keys, examples)` builds the training set."""
    if cfg.dpfem.reuse:
        folder = pathlib.Path(cfg.dpfem.reuse)
        folder = folder / "dpfem" if (folder / "dpfem" / TRAIN_CASES).is_file() else folder
        if not (folder / TRAIN_CASES).is_file():
            raise FileNotFoundError(
                f"dpfem.reuse={cfg.dpfem.reuse}: no {TRAIN_CASES} (not a finished DPFEM run)"
            )
        _check_disjoint(
            json.loads((folder / TRAIN_CASES).read_text())["cases"], scored_keys, folder
        )
        return _restore(folder)
    if not train_data_overrides(cfg):
        raise ValueError(
            "dpfem.train_data is empty: name the split DPFEM trains on (e.g. "
            "--config.dpfem.train_data.split=train), set dpfem.reuse, or dpfem.enabled=False"
        )
    split = train_split_config(cfg)
    folder = workdir / "dpfem"
    record = folder / TRAIN_CASES
    if record.is_file():
        done = json.loads(record.read_text())
        if done["data"] != split.data.to_dict():
            raise ValueError(
                f"{folder} holds a DPFEM trained on data {done['data']}, not on "
                f"{split.data.to_dict()}: use a new workdir"
            )
        _check_disjoint(done["cases"], scored_keys, folder)
        return _restore(folder)
    keys, examples = train_examples(split)
    _check_disjoint(keys, scored_keys, folder)
    dpfem_train.train_dpfem(examples, cfg.dpfem, folder)
    _record(record, split.data.to_dict(), keys)
    return _restore(folder)


def examples(rgb: dict, sal: dict, crf_cfg) -> list[dict]:
    """DPFEM training examples `{image, saliency, target}` per `(case, class)` of `sal`."""
    return [
        {
            "image": rgb[cid],
            "saliency": postprocess.minmax(m),
            "target": dpfem_train.crf_target(rgb[cid], m, crf_cfg).astype(np.float32),
        }
        for (cid, _), m in sal.items()
    ]


def refine(model, rgb: dict, sal: dict) -> dict:
    """DPFEM-refined saliency per `(case, class)` key of `sal`."""
    keys = list(sal)
    images = np.stack([rgb[cid] for cid, _ in keys])
    maps = np.stack([postprocess.minmax(sal[k]) for k in keys])
    return dict(zip(keys, dpfem_train.refine_saliency(model, images, maps), strict=True))
