"""Train and eval transforms, built from the input spec a model expects."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import torch
from PIL import Image
from timm.data import DEFAULT_CROP_MODE, DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.auto_augment import posterize as timm_posterize
from timm.data.auto_augment import rand_augment_transform
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


POLICIES = ("randaugment", "trivialaugment", "autoaugment")


@dataclass(frozen=True)
class Augment:
    """Training augmentation on top of the base crop and flip: the `augment` config group.

    crop, hflip: the base random crop and horizontal flip (false: resize only / no flip).
    policy: None, 'randaugment' (timm's RandAugment, `num_ops` ops at `magnitude` on timm's
        0..10 scale, 10 being each op's maximum, with std 0.5: DeiT's rand-m9-n2-mstd0.5),
        'trivialaugment' (torchvision's TrivialAugmentWide) or 'autoaugment' (torchvision's
        AutoAugment: the CIFAR-10 policy for small images, ImageNet's for photos).
    color_jitter: brightness, contrast and saturation strength (0: off).
    erasing: probability of random erasing (a box set to the mean colour) per image.
    padding: reflect padding of the pad-and-crop of small images, in pixels (None: a side/8, 4 at
        32 px as torchvision's CIFAR recipes; airbench shifts by 2).
    """

    crop: bool = True
    hflip: bool = True
    policy: str | None = None
    num_ops: int = 2
    magnitude: int = 9
    color_jitter: float = 0.0
    erasing: float = 0.0
    padding: int | None = None

    def __post_init__(self) -> None:
        if self.policy is not None and self.policy not in POLICIES:
            raise UserError(f"augment.policy={self.policy!r} is not one of null, {', '.join(POLICIES)}")
        # timm clips RandAugment magnitudes to its 0..10 scale: a larger one would silently be 10.
        if not 0 <= self.magnitude <= 10:
            raise UserError(f"augment.magnitude={self.magnitude} must be in 0..10 (timm's RandAugment scale)")
        if self.num_ops < 0:
            raise UserError(f"augment.num_ops={self.num_ops} must be 0 or more")
        if self.padding is not None and (not isinstance(self.padding, int) or self.padding < 1):
            raise UserError(f"augment.padding={self.padding!r} must be a whole number of pixels, 1 or more")
        for key in ("color_jitter", "erasing"):
            if not 0 <= getattr(self, key) <= 1:
                raise UserError(f"augment.{key}={getattr(self, key)} must be in [0, 1]")

    def crop_padding(self, size: int) -> int:
        """The pad-and-crop's padding for images of side `size` (0: no crop)."""
        if not self.crop:
            return 0
        return self.padding if self.padding is not None else max(1, size // 8)

    @classmethod
    def from_config(cls, config: Mapping | None) -> Augment:
        """From the `augment` config (None: the basic crop and flip); unknown keys are an error."""
        config = dict(config or {})
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise UserError(f"augment.{unknown[0]} is not an augmentation key ({', '.join(sorted(known))})")
        return cls(**config)


def posterize_keeping_a_bit(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's Posterize at low magnitudes asks for 0 bits (its level is magnitude / 10 * 4, so
    magnitudes under 2.5 give 0), which Pillow refuses (13.0: 'bits must be between or equal to 1
    and 8'), so one image in ~12 raised; keep at least one bit, the strongest posterize there is."""
    return timm_posterize(img, max(1, int(bits_to_keep)), **kwargs)


def _policy(augment: Augment, spec: InputSpec) -> list[Callable]:
    """The augmentation policy and colour jitter, on PIL images: for small images before the crop
    and flip (measured on 32 px: timm's PIL RandAugment there costs a third of torchvision's on
    tensors after the crop, and before or after it they draw the same distortions), for photos
    after it, on img_size pixels."""
    interpolation = _interpolation(spec.interpolation)
    steps: list[Callable] = []
    if augment.policy == "randaugment":
        mean = tuple(round(255 * m) for m in spec.mean)
        hparams = {"translate_const": int(spec.img_size * 0.45), "img_mean": mean}
        # timm's ops take PIL images: tensors from in-memory data sets (digits, CIFAR) become one
        # (a PIL image passes ToPILImage unchanged).
        policy = rand_augment_transform(f"rand-m{augment.magnitude}-n{augment.num_ops}-mstd0.5", hparams)
        for op in policy.ops:
            if op.aug_fn is timm_posterize:
                op.aug_fn = posterize_keeping_a_bit
        steps += [v2.ToPILImage(), policy]
    elif augment.policy == "trivialaugment":
        steps.append(v2.TrivialAugmentWide(interpolation=interpolation))
    elif augment.policy == "autoaugment":
        policy = v2.AutoAugmentPolicy.CIFAR10 if is_small(spec.img_size) else v2.AutoAugmentPolicy.IMAGENET
        steps.append(v2.AutoAugment(policy, interpolation=interpolation))
    if augment.color_jitter:
        strength = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength))
    return steps


def create_train_transform(
    spec: InputSpec,
    crop: str = "auto",
    crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
    hflip: bool = True,
    augment: Augment | None = None,
) -> v2.Compose:
    """Random crop (pad-and-crop for small images, random-resized crop for photos; 'auto' picks by
    the input side) and flip, with `augment`'s policy, colour jitter and random erasing.

    Raises:
        UserError: `crop` is not one of TRAIN_CROPS.
    """
    augment = augment or Augment()
    size, interpolation = spec.img_size, _interpolation(spec.interpolation)
    if crop not in TRAIN_CROPS:
        raise UserError(f"data.train_crop={crop!r} is not one of {', '.join(TRAIN_CROPS)}")
    if not augment.crop:
        crop = "none"
    elif crop == "auto":
        crop = "pad" if is_small(size) else "resized"
    if crop == "pad":
        # Resize is a no-op when images already have the side length (CIFAR at 32 px).
        steps = [
            v2.Resize(size, interpolation=interpolation, antialias=True),
            v2.RandomCrop(size, padding=augment.crop_padding(size), padding_mode="reflect"),
        ]
    elif crop == "resized":
        steps = [
            v2.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=interpolation, antialias=True)
        ]
    else:  # augment.crop=false: the whole image at the input size, as evaluation sees it uncropped
        steps = [v2.Resize(size, interpolation=interpolation, antialias=True), v2.CenterCrop(size)]
    if hflip and augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    # Erased after normalising: value 0 is then the mean colour.
    erasing = [v2.RandomErasing(augment.erasing, value=0)] if augment.erasing else []
    policy = _policy(augment, spec)
    if policy and not is_small(size):
        # Photos: crop first, so the policy works on img_size pixels, not on the whole photo.
        return v2.Compose([*steps, *policy, v2.ToImage(), *_to_normalized_float(spec), *erasing])
    return v2.Compose([*policy, v2.ToImage(), *steps, *_to_normalized_float(spec), *erasing])


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
