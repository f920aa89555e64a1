"""Fault trials, part 1: bad input files of every loader, bad config values and keys, stage 3
inputs and evaluation gaps. Each trial copies the shared set-up into its own folder first."""

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


def _weak(*extra):
    def argv(ctx, d):
        return [
            "train-weak",
            "--config",
            "configs/weak_phantom.py",
            "--workdir",
            d / "w",
            f"--config.data.images={d / 'images'}",
            f"--config.data.pseudo_masks={d / 'pseudo'}",
            "--config.data.image_size=32",
            "--config.batch_size=8",
            "--config.total_steps=2",
            "--config.data.val_fraction=0.0",
            "--config.data.augment.max_rotation_deg=0",
            *extra,
        ]

    return argv


def _weak_setup(damage):
    def setup(ctx, d):
        for k in ("images", "pseudo"):
            S.copy(S.weak_dirs(ctx)[k], d / k)
        damage(d)

    return setup


def weak_trials() -> list[Trial]:
    def label(value, suffix=".png"):
        def damage(d):
            m = d / "pseudo" / "xr000.png"
            a = np.asarray(Image.open(m)).astype(np.int16)
            a[0, 0] = value
            m.unlink()
            if suffix == ".png":
                Image.fromarray(a.astype(np.uint8)).save(m)
            else:
                np.save(m.with_suffix(".npy"), a)

        return damage

    def shape(d):
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(d / "pseudo" / "xr001.png")

    t = [
        ("label_5", label(5), ("xr000.png", "labels [5]")),
        ("label_minus_1", label(-1, ".npy"), ("xr000.npy", "labels [-1]")),
        (
            "image_without_mask",
            lambda d: (d / "pseudo" / "xr004.png").unlink(),
            ("no pseudo-mask", "xr004"),
        ),
        (
            "mask_without_image",
            lambda d: (d / "images" / "xr004.png").unlink(),
            ("no image", "xr004"),
        ),
        ("mask_shape", shape, ("xr001.png", "mask")),
        ("corrupt_image", lambda d: _garbage(d / "images" / "xr002.png"), ("xr002.png",)),
    ]
    out = [
        Trial("inputs", f"weak_{n}", "error", argv=_weak(), setup=_weak_setup(f), names=names)
        for n, f, names in t
    ]
    out += [
        Trial(
            "config",
            "weak_num_classes_1",
            "error",
            argv=_weak("--config.data.num_classes=1"),
            setup=_weak_setup(lambda d: None),
            names=("num_classes",),
        ),
        Trial(
            "config",
            "weak_missing_masks_mode",
            "error",
            argv=_weak("--config.data.missing_masks=maybe"),
            setup=_weak_setup(lambda d: None),
            names=("missing_masks",),
        ),
        Trial(
            "config",
            "weak_val_fraction_1",
            "error",
            argv=_weak("--config.data.val_fraction=1.0"),
            setup=_weak_setup(lambda d: None),
            names=("val_fraction",),
        ),
        Trial(
            "config",
            "weak_images_missing",
            "error",
            argv=_weak(),
            setup=_weak_setup(lambda d: _rmtree(d / "images")),
            names=("images",),
        ),
        Trial(
            "inputs",
            "weak_skip_missing_masks",
            "recover",
            argv=_weak("--config.data.missing_masks=skip"),
            setup=_weak_setup(lambda d: (d / "pseudo" / "xr004.png").unlink()),
            check=lambda c, d, r: "1 image(s) without a pseudo-mask left out" in r.out,
        ),
    ]
    return out


def phantom_cli_trials() -> list[Trial]:
    def mk(*extra):
        return lambda c, d: ["make-phantoms", "--out", d / "out", *extra]

    def under_file(c, d):
        (d / "file").write_text("x")
        return ["make-phantoms", "--out", d / "file" / "out", "--kind", "xray", "--n", "2"]

    return [
        Trial(
            "config",
            "phantoms_slices_0",
            "error",
            argv=mk("--kind", "ct", "--slices", "0", "--n", "2"),
            names=("--slices",),
        ),
        Trial(
            "config", "phantoms_n_0", "error", argv=mk("--kind", "xray", "--n", "0"), names=("--n",)
        ),
        Trial(
            "config",
            "phantoms_size_8",
            "error",
            argv=mk("--kind", "xray", "--size", "8"),
            names=("--size",),
        ),
        Trial("config", "phantoms_kind", "error", argv=mk("--kind", "pet"), names=("--kind",)),
        Trial("inputs", "phantoms_out_under_a_file", "error", argv=under_file, names=("file",)),
    ]


# ----------------------------------------------------------------------------- config values


def config_trials() -> list[Trial]:
    bad = [
        ("batch_size_0", "batch_size=0", ("batch_size",)),
        ("batch_size_negative", "batch_size=-8", ("batch_size",)),
        ("batch_size_text", "batch_size=abc", ("batch_size",)),
        ("batch_larger_than_data", "batch_size=4096", ("batch_size",)),
        ("every_steps_0", "checkpoint.every_steps=0", ("every_steps",)),
        ("keep_0", "checkpoint.keep=0", ("keep",)),
        ("compute_dtype_float8", "compute_dtype=float8", ("compute_dtype",)),
        ("grad_accum_3", "grad_accum=3", ("grad_accum",)),
        ("grad_accum_0", "grad_accum=0", ("grad_accum",)),
        ("optimizer_name", "optimizer.name=lamb", ("optimizer.name",)),
        ("lr_nan", "optimizer.lr=nan", ("optimizer.lr",)),
        ("lr_negative", "optimizer.lr=-1.0", ("optimizer.lr",)),
        ("loss_name", "loss.name=triplet", ("loss",)),
        ("temperature_0", "temperature_init=0.0", ("temperature_init",)),
        ("model_name", "model=giant", ("giant",)),
        ("phantom_count", "data.path=phantom:abc", ("data.path",)),
        ("data_source", "data.source=pubmed", ("data.source",)),
        ("val_fraction", "data.val_fraction=1.5", ("val_fraction",)),
        ("num_epochs_0", "num_epochs=0 total_steps=-1", ("num_epochs",)),
        ("best_mode", "checkpoint.best_mode=median", ("best_mode",)),
        ("unknown_key", "nope=1", ("nope",)),
        ("nested_unknown_key", "optimizer.nope=1", ("optimizer.nope",)),
        ("typo_key", "checkpoint.evry_steps=5", ("checkpoint.evry_steps", "every_steps")),
        ("value_not_group", "batch_size.x=1", ("batch_size",)),
        ("mesh_too_big", "mesh.data=3", ("mesh",)),
        ("freeze_everything", "freeze=('.*',)", ("freeze",)),
        ("best_metric_unknown", "checkpoint.best_metric=val/nope", ("best_metric", "val/nope")),
        ("eval_batch_0", "eval.batch=0", ("eval.batch",)),
        ("image_size_mismatch", "data.image_size=100", ("image_size",)),
    ]
    out = [
        Trial(
            "config",
            f"clip_{n}",
            "error",
            argv=_clip(*(f"--config.{x}" for x in o.split())),
            names=names,
        )
        for n, o, names in bad
    ]

    def config_file(text):
        def argv(ctx, d):
            (d / "c.py").write_text(text)
            return ["train-clip", "--config", d / "c.py", "--workdir", d / "w"]

        return argv

    files = [
        (
            "file_missing",
            lambda c, d: ["train-clip", "--config", d / "no.py", "--workdir", d / "w"],
            ("no.py",),
        ),
        ("file_syntax_error", config_file("def get_config(:\n"), ("c.py:1",)),
        ("file_without_get_config", config_file("x = 1\n"), ("c.py", "get_config")),
        (
            "file_get_config_raises",
            config_file("def get_config(a=None):\n    return 1 / 0\n"),
            ("c.py", "ZeroDivisionError"),
        ),
        (
            "file_bad_argument",
            lambda c, d: [
                "segment",
                "--config",
                "configs/zeroshot_phantom.py:nope",
                "--workdir",
                d / "w",
            ],
            ("zeroshot_phantom.py", "nope"),
        ),
        (
            "override_without_file",
            lambda c, d: ["train-clip", "--config.batch_size=8", "--workdir", d / "w"],
            ("--config",),
        ),
    ]
    out += [Trial("config", n, "error", argv=a, names=names) for n, a, names in files]
    return out


def segment_config_trials() -> list[Trial]:
    cfg = "configs/zeroshot_phantom.py"

    def seg(*extra):
        def argv(ctx, d):
            return [
                "segment",
                "--config",
                cfg,
                "--workdir",
                d / "seg",
                f"--config.clip_workdir={S.random_clip(ctx)}",
                "--config.data.n=2",
                "--config.dpfem.enabled=False",
                "--config.figures=False",
                "--config.saliency.topk=8",
                *extra,
            ]

        return argv

    def workdir_of(get, key):
        def argv(ctx, d):
            return [
                "segment",
                "--config",
                cfg,
                "--workdir",
                d / "seg",
                "--config.data.n=2",
                f"--config.clip_workdir={get(ctx, d)}",
            ]

        return argv

    t = [
        ("saliency_method", seg("--config.saliency.method=magic"), ("saliency", "magic")),
        ("saliency_backend", seg("--config.saliency.backend=tpu"), ("saliency.backend",)),
        ("empty_prompt", seg("--config.prompts.lungs= "), ("prompts.lungs",)),
        ("data_source", seg("--config.data.source=mri"), ("data.source",)),
        ("segmenter_name", seg("--config.segmenter.name=unet"), ("segmenter", "unet")),
        (
            "dpfem_batch_0",
            seg("--config.dpfem.enabled=True", "--config.dpfem.batch_size=0"),
            ("config.dpfem.batch_size",),
        ),
        ("clip_workdir_missing", workdir_of(lambda c, d: d / "nowhere", "x"), ("nowhere",)),
        (
            "clip_workdir_is_resunet",
            workdir_of(lambda c, d: S.resunet_workdir(c), "x"),
            ("resunet", "not a clip"),
        ),
    ]
    return [Trial("config", f"segment_{n}", "error", argv=a, names=names) for n, a, names in t]


# ----------------------------------------------------------------------------- evaluation


def _eval_setup(damage=None):
    def setup(ctx, d):
        for k in ("gt", "pred"):
            S.copy(S.eval_dirs(ctx)[k], d / k)
        if damage:
            damage(d)

    return setup


def _eval(*extra):
    return lambda c, d: [
        "evaluate",
        "--pred",
        d / "pred",
        "--gt",
        d / "gt",
        "--out",
        d / "m.csv",
        "--method",
        "m",
        "--dataset",
        "ph",
        *extra,
    ]


def _summary(d, cls="1", metric="dice"):
    import csv

    with (d / "m_summary.csv").open() as f:
        return next(r for r in csv.DictReader(f) if r["class"] == cls and r["metric"] == metric)


def evaluation_trials() -> list[Trial]:
    def pred_label(d):
        a = np.zeros((16, 16), np.uint8)
        a[0, 0] = 5
        Image.fromarray(a).save(d / "pred" / "case03.png")

    def colour(d):
        rgb = np.zeros((16, 16, 3), np.uint8)
        rgb[..., 0] = 255
        Image.fromarray(rgb).save(d / "pred" / "case03.png")

    def header(d):
        (d / "m.csv").write_text("a,b,c\n1,2,3\n")

    t = [
        (
            "missing_prediction",
            lambda d: (d / "pred" / "case23.png").unlink(),
            (),
            ("case23", "--missing"),
        ),
        ("prediction_without_gt", lambda d: (d / "gt" / "case05.png").unlink(), (), ("case05",)),
        ("prediction_label_outside", pred_label, (), ("case03.png", "[5]")),
        ("gt_label_outside_classes", None, ("--classes", "2"), ("case00.png", "[1]")),
        (
            "shape_mismatch",
            lambda d: Image.fromarray(np.zeros((5, 5), np.uint8)).save(d / "pred" / "case07.png"),
            (),
            ("case07",),
        ),
        ("colour_png", colour, (), ("case03.png", "colour")),
        (
            "non_integer_npy",
            lambda d: [
                (d / "pred" / "case03.png").unlink(),
                np.save(d / "pred" / "case03.npy", np.full((16, 16), 0.5)),
            ],
            (),
            ("case03.npy", "integers"),
        ),
        (
            "soft_map_shape",
            lambda d: np.save(d / "pred" / "case02_prob.npy", np.zeros((3, 3))),
            (),
            ("case02",),
        ),
        (
            "garbage_nifti",
            lambda d: [
                (d / "pred" / "case09.png").unlink(),
                _garbage(d / "pred" / "case09.nii.gz", b"\x1f\x8b" + b"x" * 90),
            ],
            (),
            ("case09",),
        ),
        ("empty_pred_dir", lambda d: [p.unlink() for p in (d / "pred").iterdir()], (), ("pred",)),
        ("pred_dir_missing", lambda d: _rmtree(d / "pred"), (), ("pred",)),
        ("bad_classes", None, ("--classes", "1,x"), ("--classes",)),
        ("missing_mode", None, ("--missing", "drop"), ("--missing",)),
        ("append_other_header", header, ("--append",), ("m.csv", "header")),
    ]
    out = [
        Trial(
            "evaluate",
            n,
            "error",
            argv=_eval(*extra),
            setup=_eval_setup(f),
            names=names,
            preserve=(lambda c, d: [d / "m.csv"]) if n == "append_other_header" else None,
        )
        for n, f, extra, names in t
    ]
    drop = _eval_setup(lambda d: (d / "pred" / "case23.png").unlink())
    out += [
        Trial(
            "evaluate",
            "missing_zero",
            "recover",
            argv=_eval("--missing=zero"),
            setup=drop,
            check=lambda c, d, r: (
                _summary(d)["n_cases"] == "24"
                and abs(float(_summary(d)["case_mean"]) - 23 / 24) < 1e-6
            ),
        ),
        Trial(
            "evaluate",
            "missing_skip",
            "recover",
            argv=_eval("--missing=skip"),
            setup=drop,
            check=lambda c, d, r: (
                _summary(d)["n_cases"] == "23"
                and _summary(d)["n_skipped"] == "1"
                and "skipped 1" in r.out
            ),
        ),
        Trial(
            "evaluate",
            "compare_unknown_method",
            "error",
            setup=_eval_setup(),
            argv=lambda c, d: (
                _eval_done(c, d),
                ["evaluate", "--out", d / "m.csv", "--compare", "m", "nope"],
            )[1],
            names=("nope",),
        ),
        Trial(
            "evaluate",
            "compare_same_method",
            "error",
            setup=_eval_setup(),
            argv=lambda c, d: (
                _eval_done(c, d),
                ["evaluate", "--out", d / "m.csv", "--compare", "m", "m"],
            )[1],
            names=("--compare",),
        ),
    ]
    return out


def _eval_done(ctx, d):
    from fault_trials import in_process

    res = in_process(_eval()(ctx, d))
    if res.rc != 0:
        raise RuntimeError(res.err)


def trials() -> list[Trial]:
    return [
        *covidqu_trials(),
        *acdc_trials(),
        *synapse_trials(),
        *caption_trials(),
        *tokenizer_trials(),
        *weak_trials(),
        *phantom_cli_trials(),
        *config_trials(),
        *segment_config_trials(),
        *evaluation_trials(),
    ]
