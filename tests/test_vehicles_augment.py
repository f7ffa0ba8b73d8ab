"""Augmented views of camera crops: seeded, through the device's front-end, the same view for every front-end."""

from __future__ import annotations

import numpy as np
import pytest

from agent.features.image import ImageParams, preprocess
from compression.image_augment import ImageAugmentSection, Views, augment, decode_all

OFF = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False, brightness=0, contrast=0, saturation=0,
           blur_p=0, downscale_p=0, jpeg_p=0, noise_p=0, mix_p=0)


def _halves() -> np.ndarray:
    """100 x 100: left half red, right half blue."""
    img = np.zeros((100, 100, 3), np.uint8)
    img[:, :50, 0] = 255
    img[:, 50:, 2] = 255
    return img


def _images(n: int = 6) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (100, 100, 3), dtype=np.uint8) for _ in range(n)], np.arange(n) % 3


def test_with_everything_off_a_view_is_the_device_input():
    img = _halves()
    views = Views([img], np.array([1]), 3, [ImageParams()], ImageAugmentSection(**OFF), seed=0)
    (x,), y = views(0, 5)
    np.testing.assert_array_equal(x, preprocess(img, ImageParams()))
    np.testing.assert_array_equal(y, [0, 1, 0])


def test_views_are_seeded_by_image_and_view_number():
    images, labels = _images()
    views = Views(images, labels, 3, [ImageParams()], ImageAugmentSection(), seed=0)
    a, b = views(2, 7), views(2, 7)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    assert not np.array_equal(views(2, 7)[0][0], views(2, 8)[0][0])
    other_seed = Views(images, labels, 3, [ImageParams()], ImageAugmentSection(), seed=1)
    assert not np.array_equal(a[0][0], other_seed(2, 7)[0][0])


def test_mixed_targets_stay_distributions_led_by_the_image_itself():
    images, labels = _images()
    views = Views(images, labels, 3, [ImageParams()], ImageAugmentSection(mix_p=1.0), seed=0)
    for i in range(len(images)):
        for v in range(4):
            _, y = views(i, v)
            assert y.sum() == pytest.approx(1.0) and y[labels[i]] >= 0.5 - 1e-6


@pytest.mark.parametrize("cutmix_p", [0.0, 1.0])
def test_teacher_and_student_front_ends_see_the_same_view(cutmix_p):
    """Flip, crop and the mixing partner/box are drawn once per view, whatever the resolution."""
    cfg = ImageAugmentSection(**{**OFF, "hflip": True, "crop_scale": (0.5, 1.0), "mix_p": 1.0, "cutmix_p": cutmix_p})
    big, small = ImageParams(size=(64, 64)), ImageParams(size=(32, 32))
    images = [_halves(), np.full((100, 100, 3), 128, np.uint8)]
    views = Views(images, np.array([0, 1]), 2, [big, small], cfg, seed=3)
    for v in range(8):
        (xb, xs), _ = views(0, v)
        pooled = xb.reshape(3, 32, 2, 32, 2).mean((2, 4))  # the 64 x 64 view brought down to 32 x 32
        assert np.abs(pooled - xs).mean() < 0.1, v


def test_augment_keeps_a_valid_image_under_every_degradation():
    cfg = ImageAugmentSection(blur_p=1, downscale_p=1, downscale_min=0.05, jpeg_p=1, noise_p=1, crop_scale=(0.01, 0.02))
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = augment(_halves(), rng, cfg)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and min(out.shape[:2]) >= 1
        assert preprocess(out, ImageParams()).shape == (3, 64, 64)


def test_unreadable_crops_are_skipped_and_counted(tmp_path):
    from PIL import Image

    good = tmp_path / "good.jpg"
    Image.fromarray(_halves()).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    images, labels, kept, skipped = decode_all([bad, good], [4, 2])
    assert len(images) == 1 and labels.tolist() == [2] and kept == [1] and skipped == 1


def test_augment_ranges_are_checked_and_named():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="crop_scale"):
        ImageAugmentSection(crop_scale=(0.9, 0.5))
    with pytest.raises(ValidationError, match="jpeg_quality"):
        ImageAugmentSection(jpeg_quality=(20, 120))
