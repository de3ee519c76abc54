"""How an image becomes the model's input: the data keys of its side, normalisation and eval crop
(an InputSpec, settled once the images' side is known) and of the training augmentation, turned
into the per-image transforms or, for the decoded cache, their batch form."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from classifier.config_values import to_number, to_numbers
from classifier.data.batched import BatchAugment
from classifier.data.transforms import (
    DEFAULT_CROP_MODE,
    DEFAULT_CROP_SCALE,
    PHOTO_SIDE,
    Augment,
    InputSpec,
    create_eval_transform,
    create_train_transform,
    is_small,
)


class Preprocessing:
    """The input and augmentation keys of the data config, checked at construction.

    Args:
        img_size: square side fed to the model; None is the data set's native side (see input_spec).
        mean, std: normalisation; None is ImageNet's.
        crop_pct: eval crop: scale to img_size / crop_pct, then crop img_size; None is 1.0 (no crop)
            up to 64 px and timm's default (0.875) above.
        crop_mode: how the eval crop scales: timm's 'center' (short side), 'squash' or 'border'.
        interpolation: resize filter (a torchvision InterpolationMode name).
        train_crop: 'pad' (pad-and-crop), 'resized' (random-resized crop) or 'auto' (pad up to 64 px).
        crop_scale: area range of the random-resized crop.
        hflip: random horizontal flips while training.
        augment: the `augment` config (policy, colour jitter, erasing on top of the crop and flip);
            None is the basic crop and flip.

    Raises:
        UserError: a value is not a number or not one of its choices (one line naming the key).
    """

    def __init__(
        self,
        *,
        img_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_pct: float | None = None,
        crop_mode: str = DEFAULT_CROP_MODE,
        interpolation: str = "bilinear",
        train_crop: str = "auto",
        crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
        hflip: bool = True,
        augment: Mapping | None = None,
    ):
        # InputSpec fields that were given; the side and crop that depend on the images come later.
        self._given = {
            "img_size": None if img_size is None else to_number(img_size, "data.img_size", int),
            "mean": None if mean is None else to_numbers(mean, "data.mean", 3),
            "std": None if std is None else to_numbers(std, "data.std", 3),
            "crop_pct": None if crop_pct is None else to_number(crop_pct, "data.crop_pct"),
            "crop_mode": crop_mode,
            "interpolation": interpolation,
        }
        self.train_crop, self.hflip = train_crop, hflip
        self.crop_scale = to_numbers(crop_scale, "data.crop_scale", 2)
        self.augment = Augment.from_config(augment)

    def check_transforms(self) -> None:
        """Builds the transforms for a stand-in side, so that every value is checked before any file
        is read (a bad crop mode, filter or train crop fails now, not after minutes of scanning)."""
        create_train_transform(
            self.input_spec(lambda: PHOTO_SIDE), self.train_crop, self.crop_scale, self.hflip, self.augment
        )

    def input_spec(self, native_side: Callable[[], int]) -> InputSpec:
        """The InputSpec of the given values; `native_side()` (which may read images) is asked only
        when data.img_size is null."""
        given = {key: value for key, value in self._given.items() if value is not None}
        if "img_size" not in given:
            given["img_size"] = native_side()
        if "crop_pct" not in given and is_small(given["img_size"]):
            given["crop_pct"] = 1.0  # small images train uncropped (pad-and-crop), so they evaluate so
        return InputSpec(**given)

    def train_transform(self, spec: InputSpec) -> Callable:
        return create_train_transform(spec, self.train_crop, self.crop_scale, self.hflip, self.augment)

    def eval_transform(self, spec: InputSpec) -> Callable:
        return create_eval_transform(spec)

    @property
    def trains_with_flips(self) -> bool:
        """Whether training mirrors images (data.hflip and augment.hflip): then a model has learnt
        that a mirrored image is the same class, and test-time augmentation may flip."""
        return bool(self.hflip and self.augment.hflip)

    def batch_augment(self, spec: InputSpec) -> BatchAugment:
        """The train transform as whole-batch operations (the decoded cache's training path)."""
        return BatchAugment(
            padding=self.augment.crop_padding(spec.img_size),
            flip=self.trains_with_flips,
            erasing=float(self.augment.erasing),
            mean=spec.mean,
            std=spec.std,
        )

    def why_per_image(self, spec: InputSpec) -> str | None:
        """Why these transforms need the per-image path, that batch_augment cannot do (None: it can)."""
        if not is_small(spec.img_size):
            return f"{spec.img_size} px images: the cache is for images up to 64 px"
        if spec.crop_pct != 1 or spec.crop_mode != "center":
            # the arrays hold each image at the input size, centre-cropped: what training crops
            # from and evaluation sees only without an eval crop
            return (
                f"data.crop_pct={spec.crop_pct} and crop_mode={spec.crop_mode}: an eval crop runs per image"
            )
        per_image = [
            f"augment.{key}={value}"
            for key in ("policy", "color_jitter")
            if (value := getattr(self.augment, key))
        ]
        if per_image:
            return f"{' and '.join(per_image)}: per-image augmentation"
        if self.augment.crop and self.train_crop not in ("auto", "pad"):
            return f"data.train_crop={self.train_crop}: the cache does pad-and-crop only"
        return None
