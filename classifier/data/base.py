"""The LightningDataModule every data set shares: splits, transforms, loaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import lightning as L
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, Subset

from classifier.data.numeric import to_number, to_numbers
from classifier.data.transforms import (
    DEFAULT_CROP_PCT,
    DEFAULT_CROP_SCALE,
    PHOTO_SIDE,
    InputSpec,
    create_eval_transform,
    create_train_transform,
    is_small,
)
from classifier.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Untransformed data sets; `val` None means: carve it out of `train` with `val_split`."""

    train: Dataset
    val: Dataset | None = None
    test: Dataset | None = None


class Transformed(Dataset):
    """Applies `transform` to the image of each (image, label) pair of `base`."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return self.transform(image), label


def targets_of(dataset: Dataset) -> list[int]:
    if isinstance(dataset, Subset):
        parent = targets_of(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    return list(dataset.targets)


def split_off_val(train: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """A stratified, seeded split, so every run (and eval.py) sees the same validation images."""
    labels = np.asarray(targets_of(train))
    indices = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and len(labels) * fraction >= len(counts) else None
    train_idx, val_idx = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    return Subset(train, sorted(train_idx.tolist())), Subset(train, sorted(val_idx.tolist()))


def default_num_workers() -> int:
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class ClassificationDataModule(L.LightningDataModule):
    """Shared data logic; a subclass provides `class_names` and `load_splits()`.

    Args:
        batch_size: images per step on each device.
        num_workers: loader processes; None picks one per CPU core (up to 8), or 0 for data held in memory.
        img_size: square side fed to the model; None is the data set's `native_img_size`.
        mean, std: normalisation; None is ImageNet's.
        crop_pct: eval crop: resize the short side to img_size / crop_pct, then center-crop; None
            is 1.0 (no crop) up to 64 px and 0.875 above.
        interpolation: resize filter (a torchvision InterpolationMode name).
        train_crop: 'pad' (pad-and-crop), 'resized' (random-resized crop) or 'auto' (pad up to 64 px).
        crop_scale: area range of the random-resized crop.
        hflip: random horizontal flips while training.
        val_split: fraction of train held out for validation when the data has no val split.
        split_seed: seed of that split; fixed apart from the run seed so eval.py sees the same split.
        on_bad_image: 'skip' (warn and drop each undecodable file) or 'error' (fail, listing them all).
    """

    native_img_size: int = PHOTO_SIDE  # subclasses that read files set it before this __init__ runs
    in_memory: bool = False

    def __init__(
        self,
        *,
        batch_size: int = 64,
        num_workers: int | None = None,
        img_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_pct: float | None = None,
        interpolation: str = "bilinear",
        train_crop: str = "auto",
        crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
        hflip: bool = True,
        val_split: float = 0.1,
        split_seed: int = 0,
        on_bad_image: str = "skip",
    ):
        super().__init__()
        self.batch_size = to_number(batch_size, "data.batch_size", int)
        if self.batch_size < 1:
            raise UserError(f"data.batch_size={batch_size} must be at least 1")
        self._num_workers = None if num_workers is None else to_number(num_workers, "data.num_workers", int)
        if self._num_workers is not None and self._num_workers < 0:
            raise UserError(f"data.num_workers={num_workers} must be 0 or more (null: one per core)")
        self.val_split = to_number(val_split, "data.val_split")
        if not 0 <= self.val_split < 1:
            raise UserError(f"data.val_split={val_split} must be in [0, 1)")
        self.split_seed = to_number(split_seed, "data.split_seed", int)
        self.input_spec = self._input_spec(img_size, mean, std, crop_pct, interpolation)
        crop_scale = to_numbers(crop_scale, "data.crop_scale", 2)
        self.train_transform = create_train_transform(self.input_spec, train_crop, crop_scale, hflip)
        self.eval_transform = create_eval_transform(self.input_spec)
        self.on_bad_image = on_bad_image
        self._datasets: dict[str, Dataset] | None = None

    def _input_spec(
        self,
        img_size: object,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        crop_pct: object,
        interpolation: str,
    ) -> InputSpec:
        side = self.native_img_size if img_size is None else to_number(img_size, "data.img_size", int)
        if crop_pct is None:
            crop_pct = 1.0 if is_small(side) else DEFAULT_CROP_PCT
        return InputSpec(
            img_size=side,
            mean=IMAGENET_DEFAULT_MEAN if mean is None else to_numbers(mean, "data.mean", 3),
            std=IMAGENET_DEFAULT_STD if std is None else to_numbers(std, "data.std", 3),
            crop_pct=to_number(crop_pct, "data.crop_pct"),
            interpolation=interpolation,
        )

    # -- to implement ---------------------------------------------------------------------------
    @cached_property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    def load_splits(self) -> Splits:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_workers(self) -> int:
        # Data in memory needs no decoding, so worker processes would only add start-up and copies.
        if self._num_workers is None:
            return 0 if self.in_memory else default_num_workers()
        return self._num_workers

    @property
    def has_test(self) -> bool:
        self.setup()
        return "test" in self._datasets

    def setup(self, stage: str | None = None) -> None:
        if self._datasets is not None:
            return
        splits = self.load_splits()
        train, val = splits.train, splits.val
        if val is None:
            if self.val_split <= 0:
                raise UserError("no validation data: provide a val split or set data.val_split > 0")
            train, val = split_off_val(train, self.val_split, self.split_seed)
        datasets = {"train": train, "val": val}
        if splits.test is not None:
            datasets["test"] = splits.test
        for name, dataset in datasets.items():
            if len(dataset) == 0:
                raise UserError(f"the {name} split is empty ({type(self).__name__})")
        self._datasets = datasets
        sizes = ", ".join(f"{name} {len(dataset)}" for name, dataset in datasets.items())
        log.info("data: %d classes; %s images", self.num_classes, sizes)

    def dataset(self, split: str) -> Dataset:
        """The untransformed images of `split` ('train', 'val' or 'test')."""
        self.setup()
        return self._datasets[split]

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.dataset(split)
        transform = self.train_transform if train else self.eval_transform
        return DataLoader(
            Transformed(dataset, transform),
            batch_size=self.batch_size,
            shuffle=train,
            # A last batch of one image breaks BatchNorm in training; it is kept when evaluating.
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
