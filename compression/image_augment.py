"""Seeded augmented views of camera crops, through the device's own image front-end.

A view is drawn in the uint8 image domain (what a camera delivers) and then passed
through ``agent.features.image.preprocess``, so training sees the resize and
normalisation the device applies. View ``v`` of image ``i`` is the same whenever it is
drawn (seeded by (seed, i, v)): a teacher's logits can be cached per view, and teacher
and student see the very same view ("patient and consistent" distillation, Beyer et al.
2022), each through its own front-end when they differ.

Augmentations, for fixed roadside cameras of varying quality:
- random resized crop: framing and scale differ between detectors and cameras;
- horizontal flip: a vehicle seen from the other side of the road keeps its class
  (vertical flips do not occur: the cameras look down at the road);
- brightness / contrast / saturation: daylight, shade, camera white balance;
- blur, down-and-up scaling, JPEG re-encoding, sensor noise: cheap, distant or
  compressed cameras;
- mixup or cutmix between two views, targets mixed alike.
"""

from __future__ import annotations

import io
import logging
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from pydantic import Field, ValidationInfo, field_validator

from agent.features.image import ImageDecodeError, ImageParams, decode_image, preprocess
from agent.schema import StrictModel

log = logging.getLogger(__name__)


class ImageAugmentSection(StrictModel):
    crop_scale: tuple[float, float] = Field((0.6, 1.0), description="random resized crop: area fraction range")
    crop_ratio: tuple[float, float] = Field((0.75, 1.333), description="random resized crop: aspect ratio range")
    hflip: bool = Field(True, description="mirror left-right with probability 0.5")
    brightness: float = Field(0.3, ge=0, lt=1, description="brightness factor in 1 +- this")
    contrast: float = Field(0.3, ge=0, lt=1, description="contrast factor in 1 +- this")
    saturation: float = Field(0.3, ge=0, lt=1, description="saturation factor in 1 +- this")
    blur_p: float = Field(0.2, ge=0, le=1, description="probability of a Gaussian blur")
    blur_sigma: float = Field(1.2, gt=0, description="largest blur radius, pixels of the source image")
    downscale_p: float = Field(0.2, ge=0, le=1, description="probability of scaling down and back up (low resolution)")
    downscale_min: float = Field(0.35, gt=0, le=1, description="smallest down-scaling factor")
    jpeg_p: float = Field(0.3, ge=0, le=1, description="probability of re-encoding as JPEG")
    jpeg_quality: tuple[int, int] = Field((20, 90), description="JPEG quality range")
    noise_p: float = Field(0.2, ge=0, le=1, description="probability of Gaussian sensor noise")
    noise_std: float = Field(8.0, ge=0, description="largest noise standard deviation, in 0..255 levels")
    mix_p: float = Field(0.5, ge=0, le=1, description="probability that a view is mixed with another image")
    mixup_alpha: float = Field(0.4, gt=0, description="Beta(a, a) for the mixing weight")
    cutmix_p: float = Field(0.5, ge=0, le=1, description="of the mixed views, the share that use cutmix "
                                                         "(a pasted box) instead of mixup (a blend)")

    @field_validator("crop_scale", "crop_ratio", "jpeg_quality")
    @classmethod
    def _range(cls, v: tuple, info: ValidationInfo) -> tuple:
        lo, hi = v
        top = {"crop_scale": 1.0, "crop_ratio": 10.0, "jpeg_quality": 100}[info.field_name]
        if not 0 < lo <= hi <= top:
            raise ValueError(f"must be [low, high] with 0 < low <= high <= {top}")
        return v


def decode_all(paths: Sequence, labels: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray, list[int], int]:
    """(uint8 RGB images, labels, indices kept, how many were unreadable); unreadable files are logged."""
    images, kept, skipped = [], [], 0
    for k, path in enumerate(paths):
        try:
            images.append(decode_image(path))
        except ImageDecodeError as e:
            log.warning("skipping: %s", e)
            skipped += 1
            continue
        kept.append(k)
    return images, np.asarray([labels[k] for k in kept], dtype=np.int64), kept, skipped


def augment(img: np.ndarray, rng: np.random.Generator, cfg: ImageAugmentSection) -> np.ndarray:
    """One augmented copy of a uint8 RGB image (its size may change: the front-end resizes)."""
    im = Image.fromarray(img)
    w, h = im.size
    area = w * h * rng.uniform(*cfg.crop_scale)
    ratio = np.exp(rng.uniform(np.log(cfg.crop_ratio[0]), np.log(cfg.crop_ratio[1])))
    cw = int(round(min(w, np.sqrt(area * ratio))))
    ch = int(round(min(h, np.sqrt(area / ratio))))
    x0, y0 = int(rng.integers(w - cw + 1)), int(rng.integers(h - ch + 1))
    im = im.crop((x0, y0, x0 + cw, y0 + ch))
    if cfg.hflip and rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance, amount in ((ImageEnhance.Brightness, cfg.brightness), (ImageEnhance.Contrast, cfg.contrast),
                            (ImageEnhance.Color, cfg.saturation)):
        if amount:
            im = enhance(im).enhance(rng.uniform(1 - amount, 1 + amount))
    if rng.random() < cfg.blur_p:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, cfg.blur_sigma)))
    if rng.random() < cfg.downscale_p:
        f = rng.uniform(cfg.downscale_min, 1.0)
        small = im.resize((max(1, int(cw * f)), max(1, int(ch * f))), Image.Resampling.BILINEAR)
        im = small.resize((cw, ch), Image.Resampling.BILINEAR)
    if rng.random() < cfg.jpeg_p:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
        im = Image.open(buf).convert("RGB")
    out = np.asarray(im)
    if cfg.noise_std and rng.random() < cfg.noise_p:
        noise = rng.normal(0, rng.uniform(0, cfg.noise_std), out.shape)
        out = np.clip(out + noise, 0, 255).astype(np.uint8)
    return out


class Views:
    """View ``v`` of image ``i``: the inputs of each front-end in ``params`` and the (mixed) target."""

    def __init__(self, images: list[np.ndarray], labels: np.ndarray, n_classes: int,
                 params: Sequence[ImageParams], cfg: ImageAugmentSection, seed: int):
        if len(images) != len(labels) or not images:
            raise ValueError(f"need as many labels as images (and at least one), got {len(images)} and {len(labels)}")
        self.images, self.labels, self.n_classes = images, labels, n_classes
        self.params, self.cfg, self.seed = list(params), cfg, seed

    def __len__(self) -> int:
        return len(self.images)

    def __call__(self, i: int, v: int) -> tuple[list[np.ndarray], np.ndarray]:
        cfg = self.cfg
        rng = np.random.default_rng((self.seed, i, v))
        xs = [preprocess(img, p) for img in [augment(self.images[i], rng, cfg)] for p in self.params]
        y = np.eye(self.n_classes, dtype=np.float32)[self.labels[i]]
        if rng.random() < cfg.mix_p:
            j = int(rng.integers(len(self.images)))
            other = augment(self.images[j], rng, cfg)
            lam = float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
            lam = max(lam, 1 - lam)  # the image itself stays dominant
            if rng.random() < cfg.cutmix_p:
                # a box of area (1 - lam), in relative coordinates so it is the same box at any resolution
                side = np.sqrt(1 - lam)
                cy, cx = rng.uniform(0, 1, 2)
                box = (max(cy - side / 2, 0), min(cy + side / 2, 1), max(cx - side / 2, 0), min(cx + side / 2, 1))
                lam = 1 - (box[1] - box[0]) * (box[3] - box[2])
                xs = [_paste(x, preprocess(other, p), box) for x, p in zip(xs, self.params)]
            else:
                xs = [lam * x + (1 - lam) * preprocess(other, p) for x, p in zip(xs, self.params)]
            y = lam * y + (1 - lam) * np.eye(self.n_classes, dtype=np.float32)[self.labels[j]]
        return xs, y

    def batch(self, keys: Sequence[tuple[int, int]]) -> tuple[list[np.ndarray], np.ndarray]:
        """(one (B, C, H, W) float32 array per front-end, (B, n_classes) targets)."""
        views = [self(i, v) for i, v in keys]
        xs = [np.stack([vw[0][k] for vw in views]).astype(np.float32) for k in range(len(self.params))]
        return xs, np.stack([vw[1] for vw in views])


def _paste(x: np.ndarray, other: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """``x`` (C, H, W) with the relative ``box`` (y0, y1, x0, x1) taken from ``other``."""
    _, h, w = x.shape
    y0, y1, x0, x1 = (int(round(box[0] * h)), int(round(box[1] * h)), int(round(box[2] * w)), int(round(box[3] * w)))
    out = x.copy()
    out[:, y0:y1, x0:x1] = other[:, y0:y1, x0:x1]
    return out
