"""Joint transforms keep image, label and maps aligned; normalisation and tensors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segdistill.data.transforms import (
    IMAGENET_MEAN_COLOR,
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    build_eval_transform,
    build_train_transform,
    to_tensors,
    unnormalize,
    worker_rng,
)

IGNORE = 255


def pattern_sample(height: int, width: int, block: int) -> dict:
    """Image, label and a 2-channel map all encoding one field of class blocks.

    Neighbouring blocks always differ in class (steps of 7 down, 3 across, mod 19).
    label = c, maps["field"] = [c + 1, 2 (c + 1)] (never 0), image = (10 c, 250 - 10 c, 5 c).
    """
    rows, cols = np.mgrid[0:height, 0:width]
    classes = ((rows // block) * 7 + (cols // block) * 3) % 19
    field = (classes + 1).astype(np.float32)
    image = np.stack([10 * classes, 250 - 10 * classes, 5 * classes], axis=-1).astype(np.uint8)
    return {
        "image": image,
        "label": classes.astype(np.uint8),
        "maps": {"field": np.stack([field, 2 * field])},
        "name": "pattern",
        "index": 0,
    }


def interior(label: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels whose 3x3 neighbourhood has one (non-ignore) label value.

    There the bilinear taps of image and maps fall inside the block the nearest-neighbour
    label came from, so all three must agree exactly. The outermost pixels never count: their
    neighbours may have been cropped away.
    """
    padded = np.pad(label.astype(np.int64), 1, constant_values=-1)
    height, width = label.shape
    same = label != IGNORE
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= padded[dy : dy + height, dx : dx + width] == label
    return same


def check_aligned(sample: dict, source_labels: set[int]) -> int:
    """Assert image, label and maps agree; returns how many interior pixels were compared."""
    label = sample["label"].astype(np.int64)
    field = sample["maps"]["field"]
    padding = field[0] == 0
    # Padding is exactly where the (always positive) field is 0, and only there ignore.
    assert np.array_equal(padding, label == IGNORE)
    assert np.all(field[1][padding] == 0)
    assert np.all(sample["image"][padding] == IMAGENET_MEAN_COLOR)
    # Nearest-neighbour resizing never invents a label value.
    assert set(np.unique(label).tolist()) <= source_labels | {IGNORE}
    inner = interior(label)
    np.testing.assert_allclose(field[0][inner], label[inner] + 1, atol=1e-4)
    np.testing.assert_allclose(field[1][inner], 2 * (label[inner] + 1), atol=1e-4)
    image = sample["image"].astype(np.int64)
    np.testing.assert_allclose(image[..., 0][inner], 10 * label[inner], atol=1)
    np.testing.assert_allclose(image[..., 1][inner], 250 - 10 * label[inner], atol=1)
    return int(inner.sum())


def geometric(crop: tuple[int, int]) -> Compose:
    return Compose([RandomScale(0.5, 2.0), RandomCrop(*crop), RandomHorizontalFlip()])


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(6, 40),
    width=st.integers(6, 40),
    block=st.integers(3, 9),
    crop_h=st.integers(4, 48),
    crop_w=st.integers(4, 48),
    seed=st.integers(0, 2**32 - 1),
)
def test_geometric_transforms_keep_image_label_and_maps_aligned(
    height, width, block, crop_h, crop_w, seed
):
    sample = pattern_sample(height, width, block)
    out = geometric((crop_h, crop_w))(sample, np.random.default_rng(seed))
    assert out["label"].shape == (crop_h, crop_w)
    assert out["image"].shape == (crop_h, crop_w, 3)
    assert out["maps"]["field"].shape == (2, crop_h, crop_w)
    check_aligned(out, set(np.unique(sample["label"]).tolist()))


@pytest.mark.parametrize("seed", range(4))
def test_alignment_is_checked_on_many_pixels(seed):
    # Guards the property test against a vacuous `interior`.
    sample = pattern_sample(48, 64, 8)
    out = geometric((40, 40))(sample, np.random.default_rng(seed))
    assert check_aligned(out, set(range(19))) > 400


def test_crop_pads_small_samples_with_ignore_zero_and_mean_colour():
    sample = pattern_sample(5, 6, 2)
    out = RandomCrop(8, 10)(sample, np.random.default_rng(0))
    assert np.array_equal(out["label"][:5, :6], sample["label"])
    assert np.all(out["label"][5:] == IGNORE) and np.all(out["label"][:, 6:] == IGNORE)
    assert np.all(out["maps"]["field"][:, 5:] == 0)
    assert np.all(out["image"][:, 6:] == IMAGENET_MEAN_COLOR)


def test_flip_mirrors_everything():
    sample = pattern_sample(6, 9, 2)
    out = RandomHorizontalFlip(p=1.0)(sample, np.random.default_rng(0))
    assert np.array_equal(out["image"], sample["image"][:, ::-1])
    assert np.array_equal(out["label"], sample["label"][:, ::-1])
    assert np.array_equal(out["maps"]["field"], sample["maps"]["field"][:, :, ::-1])
    assert RandomHorizontalFlip(p=0.0)(sample, np.random.default_rng(0)) is sample


def test_transforms_do_not_modify_their_input():
    sample = pattern_sample(12, 12, 3)
    before = {k: sample[k].copy() for k in ("image", "label")}
    build_train_transform((8, 8), color_jitter=0.5)(sample, np.random.default_rng(1))
    assert np.array_equal(sample["image"], before["image"])
    assert np.array_equal(sample["label"], before["label"])


def test_same_generator_seed_gives_same_sample():
    sample = pattern_sample(20, 24, 4)
    transform = build_train_transform((16, 16), color_jitter=0.3)
    first = transform(sample, np.random.default_rng(7))
    second = transform(sample, np.random.default_rng(7))
    assert np.array_equal(first["image"], second["image"])
    assert np.array_equal(first["label"], second["label"])
    assert np.array_equal(first["maps"]["field"], second["maps"]["field"])


def test_worker_rng_follows_torch_seed():
    torch.manual_seed(3)
    first = worker_rng().integers(0, 2**31, 4)
    torch.manual_seed(3)
    assert np.array_equal(worker_rng().integers(0, 2**31, 4), first)
    assert not np.array_equal(worker_rng().integers(0, 2**31, 4), first)


def test_color_jitter_changes_only_the_image():
    sample = pattern_sample(8, 8, 2)
    out = ColorJitter(0.5, 0.5, 0.5)(sample, np.random.default_rng(0))
    assert out["image"].dtype == np.uint8 and not np.array_equal(out["image"], sample["image"])
    assert out["label"] is sample["label"] and out["maps"] is sample["maps"]
    same = ColorJitter(0.0, 0.0, 0.0)(sample, np.random.default_rng(0))
    assert np.array_equal(same["image"], sample["image"])


def test_color_jitter_brightness_scales_colours():
    sample = {**pattern_sample(4, 4, 2), "image": np.full((4, 4, 3), 100, np.uint8)}
    rng = np.random.default_rng(5)
    factor = rng.uniform(0.5, 1.5)
    out = ColorJitter(brightness=0.5)(sample, np.random.default_rng(5))
    assert np.all(out["image"] == round(100 * factor))


def test_normalize_to_tensors_and_unnormalize_round_trip():
    sample = build_eval_transform()(pattern_sample(6, 7, 2))
    tensors = to_tensors(sample)
    assert tensors["image"].shape == (3, 6, 7) and tensors["image"].dtype == torch.float32
    assert tensors["label"].dtype == torch.int64 and tensors["label"].shape == (6, 7)
    assert tensors["maps"]["field"].shape == (2, 6, 7)
    assert tensors["name"] == "pattern" and tensors["index"] == 0
    restored = unnormalize(tensors["image"])
    assert restored.dtype == np.uint8
    assert np.array_equal(restored, pattern_sample(6, 7, 2)["image"])
    assert unnormalize(tensors["image"][None]).shape == (1, 6, 7, 3)


def test_mean_colour_padding_normalises_to_about_zero():
    image = np.broadcast_to(np.array(IMAGENET_MEAN_COLOR, np.uint8), (2, 2, 3))
    out = Normalize()({"image": image})
    assert np.abs(out["image"]).max() < 0.01


def test_to_tensors_and_jitter_refuse_the_wrong_image_type():
    sample = pattern_sample(4, 4, 2)
    with pytest.raises(ValueError, match="Normalize"):
        to_tensors(sample)
    with pytest.raises(ValueError, match="before Normalize"):
        ColorJitter(0.1)(Normalize()(sample), np.random.default_rng(0))


def test_train_transform_output_contract():
    out = to_tensors(build_train_transform((16, 24))(pattern_sample(10, 30, 3)))
    assert out["image"].shape == (3, 16, 24) and out["label"].shape == (16, 24)
    assert out["maps"]["field"].shape == (2, 16, 24)


def test_scale_rounds_the_size_to_the_nearest_pixel():
    """round(H * s) x round(W * s): 3 x 6 at 1.3 -> 3.9 x 7.8 -> 4 x 8 (not 3 x 7)."""
    sample = pattern_sample(3, 6, 2)
    out = RandomScale(1.3, 1.3)(sample, np.random.default_rng(0))
    expected = tuple(int(np.floor(n * 1.3 + 0.5)) for n in (3, 6))
    assert expected == (4, 8) and out["label"].shape == expected
    assert out["image"].shape == (*expected, 3) and out["maps"]["field"].shape == (2, *expected)
    # A fixed scale of 1 (scale_range [1, 1], as the tiny demo uses) is allowed.
    same = RandomScale(1.0, 1.0)(sample, np.random.default_rng(0))
    assert np.array_equal(same["label"], sample["label"])


def test_scale_is_bilinear_for_image_and_maps_and_nearest_for_the_label():
    """A 1 x 2 sample doubled: bilinear (half-pixel centres) samples the source at
    x = -0.25, 0.25, 0.75, 1.25 -> weights of the right pixel 0, 1/4, 3/4, 1; the label
    takes the nearest source pixel. The uint8 image is rounded, not truncated."""
    image = np.zeros((1, 2, 3), np.uint8)
    image[0, :, 0] = [0, 3]
    image[0, :, 1] = [0, 200]
    sample = {
        "image": image,
        "label": np.array([[1, 2]], np.uint8),
        "maps": {"m": np.array([[[0.0, 4.0]]], np.float32)},
    }
    out = RandomScale(2.0, 2.0)(sample, np.random.default_rng(0))
    right = np.array([0.0, 0.25, 0.75, 1.0])  # weight of the right source pixel
    assert out["label"].tolist() == [[1, 1, 2, 2]] * 2
    np.testing.assert_allclose(out["maps"]["m"][0], np.tile(4.0 * right, (2, 1)), atol=1e-6)
    assert out["image"][0, :, 0].tolist() == np.rint(3 * right).tolist() == [0, 1, 2, 3]
    assert out["image"][0, :, 1].tolist() == (200 * right).tolist()


def _jitter_factors(seed: int, brightness: float, contrast: float, saturation: float):
    """The factors ColorJitter draws, in its order, each from [max(0, 1 - x), 1 + x]."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(max(0.0, 1.0 - x), 1.0 + x) for x in (brightness, contrast, saturation)]


# Saturated colours: their mean luma (121) is far from their mean RGB value (108).
COLOURS = np.array([[[250, 10, 10], [10, 10, 250]], [[10, 250, 10], [240, 240, 10]]], np.uint8)


def test_color_jitter_contrast_blends_with_the_mean_luma():
    """Contrast: f * image + (1 - f) * the mean of the image's luma (ITU-R 601 weights)."""
    _, factor, _ = _jitter_factors(3, 0.0, 0.8, 0.0)
    pixels = COLOURS.astype(np.float64)
    grey = (pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114).mean()
    expected = np.clip(np.rint(factor * pixels + (1 - factor) * grey), 0, 255)
    out = ColorJitter(contrast=0.8)({"image": COLOURS}, np.random.default_rng(3))
    np.testing.assert_allclose(out["image"], expected, atol=1)
    assert factor < 0.7  # lower contrast: no channel clips


def test_color_jitter_saturation_blends_each_pixel_with_its_own_grey():
    _, _, factor = _jitter_factors(0, 0.0, 0.0, 0.9)
    pixels = COLOURS.astype(np.float64)
    grey = pixels @ np.array([0.299, 0.587, 0.114])
    expected = np.clip(np.rint(factor * pixels + (1 - factor) * grey[..., None]), 0, 255)
    out = ColorJitter(saturation=0.9)({"image": COLOURS}, np.random.default_rng(0))
    np.testing.assert_allclose(out["image"], expected, atol=1)
    assert factor < 0.7  # desaturated: no channel clips


def test_strong_brightness_never_goes_negative_and_saturates_at_255():
    """strength 1.5: factors from [0, 2.5] (never negative); bright pixels clip at 255."""
    image = np.array([[[100, 200, 20]]], np.uint8)
    clipped = False
    for seed in range(20):
        factor, _, _ = _jitter_factors(seed, 1.5, 0.0, 0.0)
        expected = np.clip(np.rint(factor * image.astype(np.float64)), 0, 255)
        out = ColorJitter(brightness=1.5)({"image": image}, np.random.default_rng(seed))
        np.testing.assert_allclose(out["image"], expected, atol=1)
        clipped |= bool(expected.max() == 255)
    assert clipped


def test_train_transform_passes_its_settings_on():
    """color_jitter is the strength of all three jitters; ignore_index pads the label."""
    transform = build_train_transform((4, 4), color_jitter=0.5)
    assert "ColorJitter(0.5, 0.5, 0.5)" in repr(transform)
    padded = build_train_transform((4, 4), scale_range=(1.0, 1.0), hflip=False, ignore_index=7)
    out = padded(pattern_sample(2, 2, 1), np.random.default_rng(0))
    assert (
        out["label"][2:].tolist() == [[7] * 4] * 2 and out["label"][:, 2:].tolist() == [[7] * 2] * 4
    )


def test_crop_reaches_every_window_position_and_no_other():
    """A 7 x 9 label that encodes each pixel's own (row, col), cropped to 5 x 6: the window's
    top-left corner is read from its first pixel; it must take every value in 0..2 x 0..3
    (the last window included) and never leave the sample."""
    rows, cols = np.mgrid[0:7, 0:9]
    label = (rows * 9 + cols).astype(np.uint8)
    sample = {"image": np.zeros((7, 9, 3), np.uint8), "label": label, "maps": {}}
    corners = set()
    for seed in range(200):
        out = RandomCrop(5, 6)(sample, np.random.default_rng(seed))
        top, left = divmod(int(out["label"][0, 0]), 9)
        assert np.array_equal(out["label"], label[top : top + 5, left : left + 6])
        corners.add((top, left))
    assert corners == {(t, c) for t in range(3) for c in range(4)}


def test_normalize_uses_the_imagenet_statistics_of_the_pretrained_encoders():
    """(x / 255 - mean) / std per channel, with torchvision's ImageNet mean and std in RGB
    order (a swapped channel order would feed every encoder shifted colours)."""
    image = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 128]]], np.uint8)
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    expected = (image / 255.0 - mean) / std
    out = Normalize()({"image": image})["image"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert IMAGENET_MEAN_COLOR == (124, 116, 104)  # round(255 * mean), R, G, B


@pytest.mark.parametrize(("low", "high"), [(2.0, 1.0), (0.0, 1.0), (-0.5, 2.0)])
def test_scale_range_must_be_positive_and_ordered(low, high):
    with pytest.raises(ValueError, match="min_scale"):
        RandomScale(low, high)


def test_train_transform_without_flip_or_jitter_still_ends_normalised():
    transform = build_train_transform((4, 4), scale_range=(1.0, 1.0), hflip=False)
    sample = pattern_sample(6, 6, 2)
    out = transform(sample, np.random.default_rng(0))
    assert out["image"].dtype == np.float32
    assert "RandomHorizontalFlip" not in repr(transform)
    assert to_tensors(out)["image"].shape == (3, 4, 4)
