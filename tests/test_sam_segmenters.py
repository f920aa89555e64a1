"""Box segmenters: SAM/MedSAM plumbing on random weights, checkpoint safety, weight-free GrabCut."""

import numpy as np
import pytest

from mzs_jax.pipeline import segmenters

torch = pytest.importorskip("torch")
sam_mod = pytest.importorskip("torch_bridge.sam")


def _image(h=96, w=128):
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - 40) ** 2 + (xx - 70) ** 2 <= 20**2
    rng = np.random.default_rng(0)
    img = np.where(disk[..., None], [0.85, 0.8, 0.75], [0.15, 0.2, 0.25])
    img = img + 0.03 * rng.standard_normal((h, w, 3))
    return np.clip(img, 0, 1).astype(np.float32), disk


@pytest.fixture(scope="module")
def small_sam_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    sam = sam_mod.build_sam("vit_b", image_size=256)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_256.pth"
    torch.save(sam.state_dict(), path)
    return path


def test_random_init_sam_vit_b_runs_end_to_end_plumbing_only(small_sam_ckpt):
    """Random weights: checks shapes, dtypes and the embedding cache, not mask quality."""
    seg = sam_mod.BoxSegmenter(small_sam_ckpt, "vit_b", image_size=256)
    img, _ = _image()
    m1 = seg.segment(img, np.array([40, 15, 100, 70]))
    m2 = seg.segment(img, np.array([[10, 10, 50, 50], [60, 20, 120, 90]]))
    assert m1.shape == (96, 128) and m1.dtype == bool and m2.shape == (96, 128)
    assert seg.encoder_calls == 1  # two prompts on one image, one encoder pass
    seg.segment(img[::-1].copy(), np.array([0, 0, 20, 20]))
    assert seg.encoder_calls == 2
    assert seg.name == "sam_vit_b(sam_vit_b_256.pth)"


def test_medsam_preprocessing_path_runs_with_multimask(small_sam_ckpt):
    seg = sam_mod.BoxSegmenter(
        small_sam_ckpt, "vit_b", image_size=256, medsam=True, multimask_output=True
    )
    img, _ = _image(64, 80)
    m = seg.segment(img, np.array([10, 10, 50, 40]))
    assert m.shape == (64, 80) and m.dtype == bool and seg.name.startswith("medsam_vit_b")


def test_checkpoint_round_trip_restores_identical_weights(small_sam_ckpt):
    a = sam_mod.build_sam("vit_b", image_size=256)
    sam_mod.load_sam_checkpoint(a, small_sam_ckpt)
    ref = torch.load(small_sam_ckpt, weights_only=True)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"fn": print}, path)  # a callable cannot be read with weights_only=True
    with pytest.raises(ValueError, match="weights_only"):
        sam_mod.load_sam_checkpoint(sam_mod.build_sam("vit_b", 256), path)


def test_wrong_architecture_checkpoint_names_the_file(small_sam_ckpt):
    with pytest.raises(ValueError, match="sam_vit_b_256.pth"):
        sam_mod.load_sam_checkpoint(sam_mod.build_sam("vit_b", 512), small_sam_ckpt)


def test_sam_without_checkpoint_is_a_clear_error():
    cfg = segmenters.default_config()
    cfg.name = "sam"
    with pytest.raises(ValueError, match="segmenter.checkpoint is required"):
        segmenters.make_segmenter(cfg)
    with pytest.raises(ValueError, match="checkpoint is required"):
        sam_mod.BoxSegmenter(None)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        sam_mod.BoxSegmenter("/nonexistent/nope.pth")


def test_grabcut_recovers_a_disk_from_a_loose_box_and_rough_seed():
    img, disk = _image()
    seed = np.zeros_like(disk)
    seed[25:60, 55:90] = True  # a rough square inside the disk
    seg = segmenters.make_segmenter(segmenters.default_config())
    mask = seg.segment(img, np.array([35, 10, 110, 75]), init_mask=seed)
    iou = (mask & disk).sum() / (mask | disk).sum()
    assert seg.name.startswith("grabcut") and mask.dtype == bool and iou > 0.9, iou


def test_grabcut_keeps_a_bright_structure_on_a_small_image():
    """A 64-px X-ray phantom's heart from its own tight box and a perfect seed: at native size
    GrabCut's fixed boundary weight empties the cut; at `min_side` 256 it keeps the heart."""
    from mzs_jax.data import phantom

    s = phantom.generate_findings("xray", 1, ["cardiomegaly"], seed=1000)[0]
    heart = phantom.structure_mask(s, "heart")
    ys, xs = np.nonzero(heart)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    native = segmenters.GrabCutSegmenter(min_side=1, on_empty="empty")
    assert not native.segment(s["image"], box, init_mask=heart).any()  # what min_side is for
    seeded = segmenters.GrabCutSegmenter(min_side=1)  # on_empty="seed": the seed, with a note
    assert (seeded.segment(s["image"], box, init_mask=heart) == heart).all()
    assert "cut was empty: seed mask used" in seeded.last_note
    mask = segmenters.GrabCutSegmenter().segment(s["image"], box, init_mask=heart)
    iou = (mask & heart).sum() / (mask | heart).sum()
    assert mask.shape == heart.shape and iou > 0.9, iou
    with pytest.raises(ValueError, match="grabcut_min_side"):
        segmenters.GrabCutSegmenter(min_side=0)
    with pytest.raises(ValueError, match="grabcut_on_empty"):
        segmenters.GrabCutSegmenter(on_empty="sam")


def test_grabcut_full_image_box_is_reported_not_silent():
    img, disk = _image(32, 40)
    seg = segmenters.GrabCutSegmenter()
    out = seg.segment(img, np.array([0, 0, 40, 32]), init_mask=np.ones((32, 40), bool))
    assert out.all() and "undefined" in seg.last_note
    assert not seg.segment(img, np.zeros((0, 4), np.int64)).any()


@pytest.mark.slow
def test_standard_registry_sam_vit_b_loads_through_box_segmenter(tmp_path):
    """The released 1024-px architecture: a registry-built random state dict loads and runs."""
    from segment_anything import sam_model_registry

    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    seg = sam_mod.BoxSegmenter(path, "vit_b")
    img, _ = _image(64, 64)
    m = seg.segment(img, np.array([8, 8, 40, 40]))
    assert m.shape == (64, 64) and m.dtype == bool


def test_embeddings_of_recent_images_are_reused_and_give_the_same_masks(small_sam_ckpt):
    """Image A, then B, then A again: A is encoded once (LRU of `cache_images` embeddings), and
    its mask from the cached embedding equals a fresh segmenter's mask."""
    img, _ = _image()
    other = img[::-1].copy()
    box = np.array([40, 15, 100, 70])
    seg = sam_mod.BoxSegmenter(small_sam_ckpt, "vit_b", image_size=256)
    first = seg.segment(img, box)
    seg.segment(other, box)
    again = seg.segment(img, box)
    assert seg.encoder_calls == 2
    np.testing.assert_array_equal(first, again)
    tiny = sam_mod.BoxSegmenter(small_sam_ckpt, "vit_b", image_size=256, cache_images=1)
    for x in (img, other, img):
        tiny.segment(x, box)
    assert tiny.encoder_calls == 3


def test_make_segmenter_shares_one_sam_per_checkpoint_file(tmp_path):
    """The chain and the baselines build their segmenters separately; for the same file and
    settings they get one model (one embedding cache); a rewritten file is loaded again."""
    from mzs_jax.pipeline.zeroshot import default_config

    ckpt = tmp_path / "sam.pth"
    torch.save(sam_mod.build_sam("vit_b").state_dict(), ckpt)
    cfg = default_config().segmenter
    cfg.name, cfg.checkpoint = "sam", str(ckpt)
    a, b = segmenters.make_segmenter(cfg), segmenters.make_segmenter(cfg)
    assert a is b and a.name == "sam_vit_b(sam.pth)"
    cfg.multimask_output = not cfg.multimask_output
    assert segmenters.make_segmenter(cfg) is not a
