"""The image front-end shared by training and the device: decode, resize, normalise."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.features.image import (IMAGENET_MEAN, IMAGENET_STD, ImageDecodeError, ImageParams, ImageParamsError,
                                  decode_image, load_image, preprocess)

REPO = Path(__file__).resolve().parents[1]


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_decode_jpeg_bytes_and_file_to_uint8_rgb(tmp_path):
    data = _encode(Image.new("RGB", (100, 80), (200, 30, 10)), "JPEG")
    img = decode_image(data)
    assert img.dtype == np.uint8 and img.shape == (80, 100, 3)
    assert np.abs(img.astype(int) - (200, 30, 10)).max() <= 3  # JPEG is lossy
    (tmp_path / "a.jpg").write_bytes(data)
    np.testing.assert_array_equal(decode_image(tmp_path / "a.jpg"), img)


def test_grey_and_alpha_images_become_rgb():
    grey = decode_image(_encode(Image.new("L", (4, 4), 77), "PNG"))
    assert grey.shape == (4, 4, 3) and (grey == 77).all()
    rgba = decode_image(_encode(Image.new("RGBA", (4, 4), (1, 2, 3, 0)), "PNG"))
    assert rgba.shape == (4, 4, 3) and rgba[0, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is not an image at all", "not a recognised image format"),
])
def test_undecodable_bytes_raise_with_a_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_truncated_jpeg_and_missing_file_raise_image_decode_error(tmp_path):
    data = _encode(Image.new("RGB", (100, 100), (0, 255, 0)), "JPEG")
    with pytest.raises(ImageDecodeError, match=f"cannot decode {len(data) // 2} bytes"):
        decode_image(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"cannot read image .*missing\.jpg"):
        decode_image(tmp_path / "missing.jpg")


def test_preprocess_resizes_scales_and_normalises():
    img = np.full((100, 100, 3), (255, 128, 0), dtype=np.uint8)
    x = preprocess(img, ImageParams())
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    expected = (np.array([255, 128, 0]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[:, 10, 20], expected, rtol=1e-6)
    hwc = preprocess(img, ImageParams(size=(32, 48), channels_first=False))
    assert hwc.shape == (32, 48, 3)
    np.testing.assert_allclose(hwc[5, 5], expected, rtol=1e-6)


def test_downscaling_is_antialiased():
    """A one-pixel checkerboard shrinks to grey, not to an aliased pattern."""
    board = (np.indices((100, 100)).sum(axis=0) % 2 * 255).astype(np.uint8)
    img = np.repeat(board[:, :, None], 3, axis=2)
    x = preprocess(img, ImageParams(mean=(0, 0, 0), std=(1, 1, 1)))
    assert np.abs(x[:, 2:-2, 2:-2] - 0.5).max() < 0.1
    nearest = preprocess(img, ImageParams(mean=(0, 0, 0), std=(1, 1, 1), resize="nearest"))
    assert np.abs(nearest - 0.5).max() > 0.4  # the alternative keeps pure black/white pixels


@pytest.mark.parametrize("bad", [
    np.zeros((10, 10, 3), np.float32),
    np.zeros((10, 10), np.uint8),
    np.zeros((10, 10, 4), np.uint8),
])
def test_preprocess_names_a_wrong_array(bad):
    with pytest.raises(ValueError, match=rf"expected a uint8 RGB image \(H, W, 3\), got {bad.dtype}"):
        preprocess(bad)


def test_params_round_trip_through_json():
    p = ImageParams(size=(96, 80), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), channels_first=False, resize="area")
    d = p.to_dict()
    assert d["kind"] == "image" and d["size"] == [96, 80]
    assert ImageParams.from_dict(json.loads(json.dumps(d))) == p
    assert ImageParams.from_dict(ImageParams().to_dict()) == ImageParams()


def test_params_from_dict_names_unknown_missing_and_foreign_keys():
    d = ImageParams().to_dict()
    with pytest.raises(ImageParamsError, match=r"unknown image parameter\(s\) \['colour'\]"):
        ImageParams.from_dict({**d, "colour": "rgb"})
    with pytest.raises(ImageParamsError, match=r"missing image parameter\(s\) \['std'\]"):
        ImageParams.from_dict({k: v for k, v in d.items() if k != "std"})
    with pytest.raises(ImageParamsError, match="kind is 'logmel', expected 'image'"):
        ImageParams.from_dict({**d, "kind": "logmel"})


@pytest.mark.parametrize("kwargs, match", [
    ({"size": (0, 64)}, "size must be two positive ints"),
    ({"std": (0.2, 0.0, 0.2)}, "std must be positive"),
    ({"mean": (0.5, 0.5)}, "mean and std need 3 values"),
    ({"resize": "lanczos"}, "resize 'lanczos' unknown"),
])
def test_invalid_params_are_refused(kwargs, match):
    with pytest.raises(ImageParamsError, match=match):
        ImageParams(**kwargs)


def test_device_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import agent.features.image, agent.features.detector\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_real_vehicle_crop_decodes_to_100x100(data_dir):
    path = sorted((data_dir / "vehicles" / "truck").glob("*.jpg"))[0]
    assert decode_image(path).shape == (100, 100, 3)
    x = load_image(path)
    assert x.shape == (3, 64, 64) and np.isfinite(x).all()
