"""Image front-end for the vehicle classifier (numpy + Pillow), shared by training and device.

Defaults, for the 100 x 100 roadside crops:
- size 64 x 64: the crops are tiny and low quality already, so 64 keeps most of what is
  there while costing 0.44x the pixels (and convolution FLOPs) of 96 x 96 on the device.
  Raise it in the recipe if accuracy needs it; the value travels with the model.
- bilinear resize through Pillow, which widens its filter when shrinking (antialiased).
- ImageNet mean/std: data-independent (no leak from a validation split, nothing to redo
  when the split changes) and right for an ImageNet-pretrained backbone. The vehicle crops
  measure mean (0.52, 0.54, 0.54), std (0.19, 0.19, 0.18), so inputs come out near zero
  mean with std about 0.8: close enough for batch norm.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import params_from_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESIZE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
}


class ImageDecodeError(ValueError):
    """Bytes or a file that is not a decodable image; the message says which and why."""


class ImageParamsError(ValueError):
    """Image front-end parameters that are invalid or come from another front-end."""


@dataclass(frozen=True)
class ImageParams:
    size: tuple[int, int] = (64, 64)  # (height, width) after resizing
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channels_first: bool = True  # (3, H, W) as torch/ONNX expect; False gives (H, W, 3)
    resize: str = "bilinear"

    def __post_init__(self):
        size, mean, std = tuple(self.size), tuple(self.mean), tuple(self.std)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ImageParamsError(f"size must be two positive ints (height, width), got {self.size!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ImageParamsError(f"mean and std need 3 values (R, G, B), got mean={self.mean!r} std={self.std!r}")
        if not all(s > 0 for s in std):
            raise ImageParamsError(f"std must be positive, got {self.std!r}")
        if self.resize not in _RESIZE:
            raise ImageParamsError(f"resize {self.resize!r} unknown; use one of {sorted(_RESIZE)}")
        # Lists from JSON become tuples so that params stay hashable and compare equal.
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in mean))
        object.__setattr__(self, "std", tuple(float(s) for s in std))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"kind": "image", **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageParams:
        """Exact inverse of to_dict: every field must be present, no unknown keys."""
        return params_from_dict(cls, d, "image", ImageParamsError)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        h, w = self.size
        return (3, h, w) if self.channels_first else (h, w, 3)


# The camera path (agent.payloads) takes only what docs/mqtt.md allows, and bounds the work before decoding:
# a few hundred bytes of header can declare an image that costs gigabytes to decode (a decompression bomb).
CAMERA_FORMATS = ("JPEG", "PNG")
MAX_SIDE = 8192  # declared width or height above this is refused from the header alone
MAX_DECODED_PIXELS = 4096 * 1024  # pixels actually decoded (after JPEG reduction): about 12 MB as RGB


class ImageTooLarge(ImageDecodeError):
    """An image whose header declares more pixels than the limits allow; nothing was decoded."""


def decode_image(data: bytes | str | Path, formats: tuple[str, ...] | None = None, *,
                 need: tuple[int, int] | None = None, max_side: int | None = None,
                 max_pixels: int | None = None) -> np.ndarray:
    """Decode JPEG/PNG/... bytes (or a file) to uint8 RGB (H, W, 3); grey and alpha are converted.

    ``formats``: the Pillow formats allowed (others are refused unread). ``need``: the (height, width)
    the model needs; a JPEG is then decoded at the smallest 1/2, 1/4 or 1/8 scale that still covers it
    (libjpeg's DCT scaling: a big JPEG costs what the model needs, not what it declares). ``max_side`` and
    ``max_pixels`` are checked on the header's size (after that reduction) before any pixel is decoded.
    """
    if isinstance(data, (str, Path)):
        what = str(data)
        try:
            data = Path(data).read_bytes()
        except OSError as e:
            raise ImageDecodeError(f"cannot read image {what}: {e.strerror or e}") from e
    else:
        what = f"{len(data)} bytes of image data"
    if len(data) == 0:
        raise ImageDecodeError(f"cannot decode {what}: empty")
    try:
        with warnings.catch_warnings():  # our own limits apply; Pillow's warning would only flood the log
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=formats)
        with im:
            _check_size(im, what, need, max_side, max_pixels)
            im.load()  # decode now: a truncated JPEG only fails here
            rgb = im.convert("RGB")
    except Image.DecompressionBombError as e:  # over twice Pillow's own limit: refused at open
        raise ImageTooLarge(f"{what}: {e}") from e
    except UnidentifiedImageError as e:
        allowed = " or ".join(formats) if formats else "a recognised image format"
        raise ImageDecodeError(f"cannot decode {what}: not {allowed}") from e
    except ImageDecodeError:
        raise
    except Exception as e:  # a plug-in may raise anything on hostile bytes (DecompressionBombError included)
        raise ImageDecodeError(f"cannot decode {what}: {type(e).__name__}: {str(e)[:200]}") from e
    return np.asarray(rgb, dtype=np.uint8)


def _check_size(im: Image.Image, what: str, need: tuple[int, int] | None, max_side: int | None,
                max_pixels: int | None) -> None:
    w, h = im.size
    if max_side is not None and max(w, h) > max_side:
        raise ImageTooLarge(f"{what}: declares {w} x {h} pixels (at most {max_side} per side)")
    if need is not None and im.format == "JPEG":
        im.draft("RGB", (need[1], need[0]))  # scale chosen so that the result still covers (width, height)
        w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLarge(f"{what}: {w} x {h} pixels to decode (at most {max_pixels})")


def preprocess(img: np.ndarray, params: ImageParams = ImageParams()) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 resized to ``params.size``, scaled to [0, 1], normalised."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {img.dtype} {img.shape}")
    h, w = params.size
    if img.shape[:2] != (h, w):
        img = np.asarray(Image.fromarray(img).resize((w, h), _RESIZE[params.resize]))
    x = img.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(params.mean, np.float32)) / np.asarray(params.std, np.float32)
    if params.channels_first:
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_image(path: str | Path, params: ImageParams = ImageParams()) -> np.ndarray:
    """decode_image then preprocess: the one path from a file to a model input."""
    return preprocess(decode_image(path), params)
