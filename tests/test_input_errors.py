"""Loader error paths found by the fault trials: each bad file is one error naming it."""

import json

import pytest

from mzs_jax import cli
from mzs_jax.data import phantom, phantom_formats
from mzs_jax.data.acdc import AcdcSlices
from mzs_jax.data.captions import MedPixCaptions, RocoCaptions
from mzs_jax.data.sources import BadFileError, split_indices


@pytest.fixture
def roco(tmp_path):
    phantom_formats.write_roco(tmp_path / "roco", phantom.generate_captions(6, 0, 32))
    return tmp_path / "roco"


def test_non_utf8_captions_csv_names_the_file(roco):
    csv_path = roco / "radiology" / "captions.csv"
    text = csv_path.read_text()
    csv_path.write_bytes(text.replace("showing", "sh\xe9wing", 1).encode("latin-1"))
    with pytest.raises(BadFileError, match=r"captions.csv: not UTF-8 text \(byte 0xe9"):
        RocoCaptions(roco, "all")


@pytest.mark.parametrize(
    "name,body,match",
    [
        ("index.json", "\xe9".encode("latin-1"), "index.json: not UTF-8"),
        ("index.jsonl", b'{"image": "a.png"}\n{oops\n', "index.jsonl: line 2: invalid JSON"),
        ("index.json", json.dumps("text").encode(), "index.json: expected a JSON list"),
        ("index.json", json.dumps([3]).encode(), "index.json: entry 1 is a int"),
    ],
)
def test_bad_medpix_index_names_the_file(tmp_path, name, body, match):
    (tmp_path / name).write_bytes(body)
    with pytest.raises(BadFileError, match=match):
        MedPixCaptions(tmp_path / name, "all")


@pytest.mark.parametrize("garbage", [b"not a nifti at all" * 30, b"\x1f\x8b" + b"junk" * 99])
def test_garbage_nifti_in_acdc_names_the_file(tmp_path, garbage):
    phantom_formats.write_acdc(tmp_path, 2, seed=0, size=32, n_slices=2)
    victim = tmp_path / "patient001" / "patient001_frame01.nii.gz"
    victim.write_bytes(garbage)
    with pytest.raises(ValueError, match="patient001_frame01.nii.gz"):
        src = AcdcSlices(tmp_path, "all", target_spacing=None)
        [src[i] for i in range(len(src))]


def test_val_fraction_outside_zero_one_is_an_error():
    with pytest.raises(ValueError, match=r"val_fraction=1.5: must be in \[0, 1\)"):
        split_indices(10, 1.5, 0, "train")


def test_make_phantoms_slices_zero_is_an_error(tmp_path, capsys):
    argv = ["make-phantoms", "--out", str(tmp_path / "ct"), "--kind", "ct", "--n", "2"]
    assert cli.main([*argv, "--slices", "0"]) == 1
    assert "--slices must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "ct").exists()
