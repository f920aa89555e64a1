"""Fault trials: bad input files of every loader (COVID-QU-Ex, ACDC, Synapse, ROCO, MedPix,
tokenizer). Each trial copies the shared set-up into its own folder and damages one file."""

from __future__ import annotations

import json
import pathlib

import fault_trials_setup as S
import numpy as np
from fault_trials import Trial
from PIL import Image

# ----------------------------------------------------------------------------- helpers


def _garbage(path: pathlib.Path, data: bytes = b"\x00not a real file\xff" * 40) -> None:
    path.write_bytes(data)


def _truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _first(folder: pathlib.Path, pattern: str) -> pathlib.Path:
    return sorted(folder.rglob(pattern))[0]


def _segment(config: str, *extra: str):
    def argv(ctx, d):
        return [
            "segment",
            "--config",
            config,
            "--workdir",
            d / "seg",
            f"--config.clip_workdir={S.random_clip(ctx)}",
            f"--config.data.path={d / 'data'}",
            "--config.dpfem.enabled=False",
            "--config.figures=False",
            "--config.saliency.topk=8",
            "--config.data.n=2",
            *extra,
        ]

    return argv


def _with_tree(builder, damage):
    def setup(ctx, d):
        S.copy(builder(ctx), d / "data")
        damage(d / "data")

    return setup


def _loader(kind, name, config, builder, damage, names, *extra):
    return Trial(
        kind,
        name,
        "error",
        argv=_segment(config, *extra),
        setup=_with_tree(builder, damage),
        names=names,
    )


def _covid_image(root):
    return _first(root / "Lung Segmentation Data" / "Train", "images/*.png")


def _covid_mask(root):
    return _first(root / "Lung Segmentation Data" / "Train", "lung masks/*.png")


def _covid(name, damage, names, *extra):
    cfg = "configs/zeroshot_covidqu.py"
    return _loader(
        "loader",
        f"covidqu_{name}",
        cfg,
        S.xray_tree,
        damage,
        names,
        "--config.data.split=train",
        *extra,
    )


def covidqu_trials() -> list[Trial]:
    def mask_size(root):
        m = _covid_mask(root)
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(m)

    def mask_values(root):
        m = _covid_mask(root)
        a = np.asarray(Image.open(m)).copy()
        a[0, :3] = (7, 100, 3)
        Image.fromarray(a).save(m)

    return [
        _covid("corrupt_png", lambda r: _garbage(_covid_image(r)), (".png", "cannot decode")),
        _covid("truncated_png", lambda r: _truncate(_covid_image(r)), (".png",)),
        _covid("missing_mask", lambda r: _covid_mask(r).unlink(), ("lung masks", "not found")),
        _covid("mask_size", mask_size, ("lung masks", "mask size")),
        _covid("mask_values", mask_values, ("lung masks", "binary")),
        _covid(
            "no_split_folders",
            lambda r: [S.copy(r, r.parent / "x"), _rmtree(r), r.mkdir()],
            ("Train/Val/Test",),
        ),
        _covid("bad_task", lambda r: None, ("task",), "--config.data.task=tumour"),
        _covid("bad_split", lambda r: None, ("split",), "--config.data.split=holdout"),
    ]


def _rmtree(p):
    import shutil

    shutil.rmtree(p)


def acdc_trials() -> list[Trial]:
    cfg = "configs/zeroshot_acdc.py"

    def nii(root, gt=False):
        pattern = "patient001_frame??_gt.nii.gz" if gt else "patient001_frame??.nii.gz"
        return _first(root, pattern)

    def label_out(root):
        import nibabel as nib

        f = nii(root, gt=True)
        img = nib.load(str(f))
        a = np.asarray(img.dataobj).copy()
        a[0, 0, 0] = 9
        nib.save(nib.Nifti1Image(a, img.affine, img.header), str(f))

    def shape_mismatch(root):
        import nibabel as nib

        f = nii(root, gt=True)
        nib.save(nib.Nifti1Image(np.zeros((5, 5, 2), np.uint8), np.eye(4)), str(f))

    def bad_info(root):
        (root / "patient001" / "Info.cfg").write_text("ED: one\nES: two\n")

    t = [
        ("truncated_nifti", lambda r: _truncate(nii(r)), ("patient001_frame",)),
        ("garbage_nifti", lambda r: _garbage(nii(r)), ("patient001_frame",)),
        (
            "garbage_gzip_nifti",
            lambda r: _garbage(nii(r), b"\x1f\x8b" + b"junk" * 99),
            ("patient001_frame",),
        ),
        ("label_outside", label_out, ("_gt.nii.gz", "9")),
        ("label_shape", shape_mismatch, ("_gt.nii.gz",)),
        ("missing_gt", lambda r: nii(r, gt=True).unlink(), ("_gt.nii.gz",)),
        ("bad_info_cfg", bad_info, ("Info.cfg",)),
        ("no_patients", lambda r: [_rmtree(p) for p in list(r.iterdir())], ("patientXXX",)),
    ]
    return [_loader("loader", f"acdc_{n}", cfg, S.acdc_tree, f, names) for n, f, names in t]


def synapse_trials() -> list[Trial]:
    cfg = "configs/zeroshot_synapse.py"

    def h5(root):
        return _first(root / "test_vol_h5", "*.npy.h5")

    def no_image(root):
        import h5py

        f = h5(root)
        with h5py.File(f, "w") as h:
            h["label"] = np.zeros((2, 8, 8), np.uint8)

    def label_out(root):
        import h5py

        f = h5(root)
        with h5py.File(f, "r+") as h:
            lab = np.array(h["label"])
            lab[0, 0, 0] = 42
            del h["label"]
            h["label"] = lab

    t = [
        ("garbage_h5", lambda r: _garbage(h5(r)), (".npy.h5",)),
        ("truncated_h5", lambda r: _truncate(h5(r)), (".npy.h5",)),
        ("h5_without_image", no_image, (".npy.h5", "image")),
        ("label_outside", label_out, (".npy.h5", "42")),
        (
            "no_volumes",
            lambda r: [_rmtree(r / "test_vol_h5"), _rmtree(r / "train_npz")],
            ("test_vol_h5",),
        ),
    ]
    return [_loader("loader", f"synapse_{n}", cfg, S.synapse_tree, f, names) for n, f, names in t]


def _clip(*extra):
    def argv(ctx, d):
        return ["train-clip", *S.CLIP_TINY, "--workdir", d / "w", *extra]

    return argv


def _clip_data(name, damage, names, source="", path=""):
    def argv(ctx, d):
        src = [f"--config.data.source={source}"] if source else []
        tok = f"--config.data.tokenizer={S.random_clip(ctx) / 'tokenizer'}"  # offline vocabulary
        return _clip(f"--config.data.path={d / 'data' / path}", tok, *src)(ctx, d)

    return Trial(
        "loader", name, "error", argv=argv, setup=_with_tree(S.roco_tree, damage), names=names
    )


def _medpix(root: pathlib.Path, body: str, name: str = "index.json") -> None:
    (root / name).write_bytes(body.encode("latin-1") if isinstance(body, str) else body)


def caption_trials() -> list[Trial]:
    csv_path = "radiology/captions.csv"

    def empty_caption(root):
        lines = (root / csv_path).read_text().splitlines()
        cells = lines[3].split(",")
        cells[2] = '""'
        lines[3] = ",".join(cells)
        (root / csv_path).write_text("\n".join(lines) + "\n")

    def latin1(root):
        text = (root / csv_path).read_text()
        (root / csv_path).write_bytes(text.replace("showing", "sh\xe9wing", 1).encode("latin-1"))

    img = "radiology/images/ROCO_PH_00002.png"
    good_json = [
        {
            "image": f"radiology/images/ROCO_PH_{i:05d}.png",
            "caption": "axial chest computed tomography showing a nodule",
        }
        for i in range(40)
    ]
    medpix = [
        ("medpix_invalid_json", lambda r: _medpix(r, "[{'image': 1,"), ("index.json", "JSON")),
        (
            "medpix_bad_jsonl_line",
            lambda r: _medpix(r, json.dumps(good_json[0]) + "\n{oops\n", "index.jsonl"),
            ("index.jsonl", "line 2"),
        ),
        (
            "medpix_no_image_field",
            lambda r: _medpix(r, json.dumps([{"caption": "x" * 30}])),
            ("index.json", "image"),
        ),
        (
            "medpix_not_utf8",
            lambda r: _medpix(
                r,
                json.dumps(good_json).replace("axial", "\xe9"),
            ),
            ("index.json", "UTF-8"),
        ),
        (
            "medpix_not_a_list",
            lambda r: _medpix(r, json.dumps("just a string")),
            ("index.json", "list"),
        ),
    ]
    out = [
        _clip_data("roco_corrupt_image", lambda r: _garbage(r / img), ("ROCO_PH_00002.png",)),
        _clip_data("roco_missing_image", lambda r: (r / img).unlink(), ("ROCO_PH_00002.png",)),
        _clip_data("roco_empty_caption", empty_caption, ("captions.csv", "empty caption")),
        _clip_data("roco_not_utf8", latin1, ("captions.csv", "UTF-8")),
        _clip_data("roco_no_captions", lambda r: (r / csv_path).unlink(), ("captions.csv",)),
        _clip_data("roco_root_missing", lambda r: None, ("nowhere",), path="nowhere"),
    ]
    for name, damage, names in medpix:
        index = "index.jsonl" if "jsonl" in name else "index.json"
        out.append(_clip_data(name, damage, names, source="medpix", path=index))
    return out


def tokenizer_trials() -> list[Trial]:
    def empty_dir(ctx, d):
        (d / "tok").mkdir(exist_ok=True)

    def corrupt(ctx, d):
        S.copy(S.random_clip(ctx) / "tokenizer", d / "tok")
        (d / "tok" / "tokenizer.json").write_text("{ not json")
        (d / "tok" / "vocab.txt").unlink()

    return [
        Trial(
            "loader",
            "tokenizer_dir_without_vocab",
            "error",
            setup=empty_dir,
            argv=lambda c, d: _clip(f"--config.data.tokenizer={d / 'tok'}")(c, d),
            names=("tok", "vocab"),
        ),
        Trial(
            "loader",
            "tokenizer_corrupt_json",
            "error",
            setup=corrupt,
            argv=lambda c, d: _clip(f"--config.data.tokenizer={d / 'tok'}")(c, d),
            names=("tok",),
        ),
        Trial(
            "loader",
            "tokenizer_missing_dir",
            "error",
            argv=lambda c, d: _clip(f"--config.data.tokenizer={d / 'absent'}")(c, d),
            names=("absent",),
        ),
    ]


# ----------------------------------------------------------------------------- stage 3 inputs


def trials() -> list[Trial]:
    return [
        *covidqu_trials(),
        *acdc_trials(),
        *synapse_trials(),
        *caption_trials(),
        *tokenizer_trials(),
    ]
