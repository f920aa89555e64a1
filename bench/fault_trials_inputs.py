"""Fault trials: stage 3 inputs, bad config values and keys (train-clip, segment, train-weak,
make-phantoms, config files) and evaluation gaps."""

from __future__ import annotations

import fault_trials_setup as S
import numpy as np
from fault_trials import Trial
from fault_trials_loaders import _clip, _garbage, _rmtree
from PIL import Image


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


def _weak_label(value, suffix=".png"):
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


def _weak_small_mask(d):
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(d / "pseudo" / "xr001.png")


WEAK_INPUTS = [
    ("label_5", _weak_label(5), ("xr000.png", "labels [5]")),
    ("label_minus_1", _weak_label(-1, ".npy"), ("xr000.npy", "labels [-1]")),
    ("image_without_mask", lambda d: (d / "pseudo" / "xr004.png").unlink(),
     ("no pseudo-mask", "xr004")),
    ("mask_without_image", lambda d: (d / "images" / "xr004.png").unlink(), ("no image", "xr004")),
    ("mask_shape", _weak_small_mask, ("xr001.png", "mask")),
    ("corrupt_image", lambda d: _garbage(d / "images" / "xr002.png"), ("xr002.png",)),
]  # fmt: skip
# (name, override, damage, what the error must name)
WEAK_CONFIGS = [
    ("num_classes_1", "--config.data.num_classes=1", None, ("num_classes",)),
    ("missing_masks_mode", "--config.data.missing_masks=maybe", None, ("missing_masks",)),
    ("val_fraction_1", "--config.data.val_fraction=1.0", None, ("val_fraction",)),
    ("images_missing", "--config.seed=0", lambda d: _rmtree(d / "images"), ("images",)),
]


def weak_trials() -> list[Trial]:
    out = [
        Trial("inputs", f"weak_{n}", "error", argv=_weak(), setup=_weak_setup(f), names=names)
        for n, f, names in WEAK_INPUTS
    ]
    out += [
        Trial("config", f"weak_{n}", "error", argv=_weak(o), setup=_weak_setup(f or _nothing),
              names=names)
        for n, o, f, names in WEAK_CONFIGS
    ]  # fmt: skip
    skip = _weak_setup(lambda d: (d / "pseudo" / "xr004.png").unlink())
    return out + [
        Trial("inputs", "weak_skip_missing_masks", "recover", setup=skip,
              argv=_weak("--config.data.missing_masks=skip"),
              check=lambda c, d, r: "1 image(s) without a pseudo-mask left out" in r.out),
    ]  # fmt: skip


def _nothing(d):
    return None


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


# (name, train-clip overrides, what the error must name)
CLIP_CONFIGS = [
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


def _config_file(text):
    def argv(ctx, d):
        (d / "c.py").write_text(text)
        return ["train-clip", "--config", d / "c.py", "--workdir", d / "w"]

    return argv


CONFIG_FILES = [
    ("file_missing", lambda c, d: ["train-clip", "--config", d / "no.py", "--workdir", d / "w"],
     ("no.py",)),
    ("file_syntax_error", _config_file("def get_config(:\n"), ("c.py:1",)),
    ("file_without_get_config", _config_file("x = 1\n"), ("c.py", "get_config")),
    ("file_get_config_raises", _config_file("def get_config(a=None):\n    return 1 / 0\n"),
     ("c.py", "ZeroDivisionError")),
    ("file_bad_argument", lambda c, d: ["segment", "--config", "configs/zeroshot_phantom.py:nope",
                                        "--workdir", d / "w"], ("zeroshot_phantom.py", "nope")),
    ("override_without_file",
     lambda c, d: ["train-clip", "--config.batch_size=8", "--workdir", d / "w"], ("--config",)),
]  # fmt: skip


def config_trials() -> list[Trial]:
    out = [
        Trial("config", f"clip_{n}", "error", names=names,
              argv=_clip(*(f"--config.{x}" for x in o.split())))
        for n, o, names in CLIP_CONFIGS
    ]  # fmt: skip
    return out + [Trial("config", n, "error", argv=a, names=names) for n, a, names in CONFIG_FILES]


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


def _pred_label_5(d):
    a = np.zeros((16, 16), np.uint8)
    a[0, 0] = 5
    Image.fromarray(a).save(d / "pred" / "case03.png")


def _colour_png(d):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(d / "pred" / "case03.png")


def _non_integer_npy(d):
    (d / "pred" / "case03.png").unlink()
    np.save(d / "pred" / "case03.npy", np.full((16, 16), 0.5))


def _garbage_nifti(d):
    (d / "pred" / "case09.png").unlink()
    _garbage(d / "pred" / "case09.nii.gz", b"\x1f\x8b" + b"x" * 90)


def _small_pred(d):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(d / "pred" / "case07.png")


# (name, damage, extra arguments, what the error must name)
EVAL_ERRORS = [
    ("missing_prediction", lambda d: (d / "pred" / "case23.png").unlink(), (),
     ("case23", "--missing")),
    ("prediction_without_gt", lambda d: (d / "gt" / "case05.png").unlink(), (), ("case05",)),
    ("prediction_label_outside", _pred_label_5, (), ("case03.png", "[5]")),
    ("gt_label_outside_classes", None, ("--classes", "2"), ("case00.png", "[1]")),
    ("shape_mismatch", _small_pred, (), ("case07",)),
    ("colour_png", _colour_png, (), ("case03.png", "colour")),
    ("non_integer_npy", _non_integer_npy, (), ("case03.npy", "integers")),
    ("soft_map_shape", lambda d: np.save(d / "pred" / "case02_prob.npy", np.zeros((3, 3))), (),
     ("case02",)),
    ("garbage_nifti", _garbage_nifti, (), ("case09",)),
    ("empty_pred_dir", lambda d: [p.unlink() for p in (d / "pred").iterdir()], (), ("pred",)),
    ("pred_dir_missing", lambda d: _rmtree(d / "pred"), (), ("pred",)),
    ("bad_classes", None, ("--classes", "1,x"), ("--classes",)),
    ("missing_mode", None, ("--missing", "drop"), ("--missing",)),
    ("append_other_header", lambda d: (d / "m.csv").write_text("a,b,c\n1,2,3\n"), ("--append",),
     ("m.csv", "header")),
]  # fmt: skip


def _missing_zero_ok(ctx, d, res) -> bool:
    s = _summary(d)
    return s["n_cases"] == "24" and abs(float(s["case_mean"]) - 23 / 24) < 1e-6


def _missing_skip_ok(ctx, d, res) -> bool:
    s = _summary(d)
    return s["n_cases"] == "23" and s["n_skipped"] == "1" and "skipped 1" in res.out


def _compare(a, b):
    def argv(ctx, d):
        _eval_done(ctx, d)
        return ["evaluate", "--out", d / "m.csv", "--compare", a, b]

    return argv


def evaluation_trials() -> list[Trial]:
    def keep_csv(n):
        return (lambda c, d: [d / "m.csv"]) if n == "append_other_header" else None

    out = [
        Trial("evaluate", n, "error", argv=_eval(*extra), setup=_eval_setup(f), names=names,
              preserve=keep_csv(n))
        for n, f, extra, names in EVAL_ERRORS
    ]  # fmt: skip
    drop = _eval_setup(lambda d: (d / "pred" / "case23.png").unlink())
    return out + [
        Trial("evaluate", "missing_zero", "recover", argv=_eval("--missing=zero"), setup=drop,
              check=_missing_zero_ok),
        Trial("evaluate", "missing_skip", "recover", argv=_eval("--missing=skip"), setup=drop,
              check=_missing_skip_ok),
        Trial("evaluate", "compare_unknown_method", "error", setup=_eval_setup(),
              argv=_compare("m", "nope"), names=("nope",)),
        Trial("evaluate", "compare_same_method", "error", setup=_eval_setup(),
              argv=_compare("m", "m"), names=("--compare",)),
    ]  # fmt: skip


def _eval_done(ctx, d):
    from fault_trials import in_process

    res = in_process(_eval()(ctx, d))
    if res.rc != 0:
        raise RuntimeError(res.err)


def trials() -> list[Trial]:
    return [
        *weak_trials(),
        *phantom_cli_trials(),
        *config_trials(),
        *segment_config_trials(),
        *evaluation_trials(),
    ]
