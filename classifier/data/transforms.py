"""Train and eval transforms, built from the input spec a model expects."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from timm.data import DEFAULT_CROP_MODE, DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import InterpolationMode, v2

from classifier.errors import UserError

TRAIN_CROPS = ("auto", "pad", "resized")
# Up to this side, images train at their own size with pad-and-crop (digits, CIFAR, MNIST-like
# folders); larger ones at PHOTO_SIDE with random-resized crops.
SMALL_IMAGE_MAX_SIDE = 64
PHOTO_SIDE = 224
MIN_SIDE = 8  # below this, a few conv strides leave nothing to classify
# timm's eval crop modes: 'center' resizes the short side to img_size / crop_pct and crops the
# centre; 'squash' resizes both sides to that (no aspect ratio kept); 'border' fits the long side
# and pads with the mean colour.
CROP_MODES = ("center", "squash", "border")
# Area range of random-resized crops: milder than ImageNet-from-scratch's 0.08, for short fine-tunes.
DEFAULT_CROP_SCALE = (0.25, 1.0)


def is_small(side: int) -> bool:
    """Whether images of this side train at their own size (pad-and-crop, no eval crop)."""
    return side <= SMALL_IMAGE_MAX_SIDE


def native_side(typical: int | None) -> int:
    """The input side for images whose longest side is typically `typical` (None: unknown)."""
    return typical if typical and is_small(typical) else PHOTO_SIDE


@dataclass(frozen=True)
class InputSpec:
    """What the network is fed: square side in pixels, normalisation, eval crop and resize filter.
    The defaults are timm's (ImageNet mean and std, its crop): the one place they are set."""

    img_size: int
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    crop_pct: float = DEFAULT_CROP_PCT  # eval: scale to img_size / crop_pct, then crop img_size
    crop_mode: str = DEFAULT_CROP_MODE
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if int(self.img_size) < MIN_SIDE:
            raise UserError(f"data.img_size={self.img_size} is too small: use {MIN_SIDE} pixels or more")
        if not 0 < self.crop_pct <= 1:
            raise UserError(f"data.crop_pct={self.crop_pct} must be in (0, 1]")
        if self.crop_mode not in CROP_MODES:
            raise UserError(f"data.crop_mode={self.crop_mode!r} is not one of {', '.join(CROP_MODES)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UserError("data.mean and data.std need 3 values each (R, G, B)")
        object.__setattr__(self, "img_size", int(self.img_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


def _interpolation(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name)
    except ValueError:
        valid = ", ".join(mode.value for mode in InterpolationMode)
        raise UserError(f"data.interpolation={name!r} is not one of {valid}") from None


def _to_normalized_float(spec: InputSpec) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]


def create_train_transform(
    spec: InputSpec,
    crop: str = "auto",
    crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
    hflip: bool = True,
) -> v2.Compose:
    """Random crop (pad-and-crop for small images, random-resized crop for photos; 'auto' picks by
    the input side) and flip.

    Raises:
        UserError: `crop` is not one of TRAIN_CROPS.
    """
    size, interpolation = spec.img_size, _interpolation(spec.interpolation)
    if crop == "auto":
        crop = "pad" if is_small(size) else "resized"
    if crop == "pad":
        # Resize is a no-op when images already have the side length (CIFAR at 32 px).
        steps = [
            v2.Resize(size, interpolation=interpolation, antialias=True),
            v2.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"),
        ]
    elif crop == "resized":
        steps = [
            v2.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=interpolation, antialias=True)
        ]
    else:
        raise UserError(f"data.train_crop={crop!r} is not one of {', '.join(TRAIN_CROPS)}")
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([v2.ToImage(), *steps, *_to_normalized_float(spec)])


def create_eval_transform(spec: InputSpec) -> v2.Compose:
    """Scale to img_size / crop_pct and crop img_size from the centre, as timm's eval transform does
    for each crop mode (same scale size, same fill)."""
    scale = math.floor(spec.img_size / spec.crop_pct)
    interpolation = _interpolation(spec.interpolation)
    if spec.crop_mode == "squash":
        resize = v2.Resize((scale, scale), interpolation=interpolation, antialias=True)
    elif spec.crop_mode == "border":
        resize = v2.Resize(None, max_size=scale, interpolation=interpolation, antialias=True)
    else:
        resize = v2.Resize(scale, interpolation=interpolation, antialias=True)
    # Cropped after normalising: the padding a 'border' crop adds is 0 there, i.e. the mean colour.
    return v2.Compose([v2.ToImage(), resize, *_to_normalized_float(spec), v2.CenterCrop(spec.img_size)])
