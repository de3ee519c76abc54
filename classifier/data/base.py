"""The LightningDataModule every data set shares. It composes the pieces with one job each: the split
policy (classifier/data/splits.py), the input and augmentation settings (preprocessing.py), class
imbalance (imbalance.py) and the loaders, per image or from the decoded cache (loaders.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from classifier.data.batched import BatchAugment, normalize
from classifier.data.imbalance import check_class_weights, check_sampler, loss_weights, train_sampler
from classifier.data.issues import IssueEdits
from classifier.data.loaders import (
    DecodedCache,
    check_batch_size,
    check_num_workers,
    default_num_workers,
    eval_sampler,
    per_image_loader,
    why_not_decoded,
)
from classifier.data.preprocessing import Preprocessing
from classifier.data.splits import SplitPolicy, Splits, targets_of
from classifier.data.transforms import DEFAULT_CROP_MODE, DEFAULT_CROP_SCALE, PHOTO_SIDE, InputSpec
from classifier.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class _SetUp:
    """What ClassificationDataModule.setup() read."""

    class_names: list[str]
    input_spec: InputSpec
    train_transform: Callable
    eval_transform: Callable
    datasets: dict[str, Dataset]


class ClassificationDataModule(L.LightningDataModule):
    """Shared data logic; a subclass provides `read_class_names()` and `load_splits()`, and
    `prepare_data()` when it downloads.

    Nothing is read at construction, only the arguments checked. The steps are explicit, as
    Lightning names them: `prepare_data()` fetches missing files (a download), `setup()` reads the
    class names, judges the input size and reads the splits; `class_names`, `input_spec`,
    `has_test`, the transforms and `dataset()` are what setup read (asking earlier is an error).

    Args:
        batch_size: images per step on each device.
        num_workers: loader processes; None picks one per CPU core (up to 8), or 0 for data held in memory.
        img_size, mean, std, crop_pct, crop_mode, interpolation, train_crop, crop_scale, hflip, augment:
            how images become the model's input (Preprocessing).
        val_split, split_seed, folds, fold, shots_per_class: which images train and which validate
            (SplitPolicy).
        on_bad_image: 'skip' (warn and drop each undecodable file) or 'error' (fail, listing them all).
        class_weights, sampler: for imbalanced classes: the loss's weight per class and how training
            images are drawn (classifier/data/imbalance.py).
        decoded_cache, device_resident: whole batches from decoded arrays instead of per image in
            loader workers (DecodedCache).
        exclude, relabel: an audit's issues.csv: its files dropped from every split, its label rows'
            suggested labels applied to train (classifier/data/issues.py); data read from files only.
    """

    NATIVE_IMG_SIZE: int = PHOTO_SIDE  # the input side when data.img_size is null, unless read from files
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
        crop_mode: str = DEFAULT_CROP_MODE,
        interpolation: str = "bilinear",
        train_crop: str = "auto",
        crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
        hflip: bool = True,
        val_split: float = 0.1,
        split_seed: int = 0,
        on_bad_image: str = "skip",
        augment: Mapping | None = None,
        class_weights: str | Sequence[float] | None = None,
        sampler: str | None = None,
        folds: int | None = None,
        fold: int | None = None,
        decoded_cache: str | bool = "auto",
        device_resident: bool = False,
        shots_per_class: int | None = None,
        exclude: str | None = None,
        relabel: str | None = None,
    ):
        super().__init__()
        # a plain attribute: Lightning's batch-size finder sets it (tune.batch_size)
        self.batch_size = check_batch_size(batch_size)
        self._num_workers = check_num_workers(num_workers)
        self.split_policy = SplitPolicy.from_config(val_split, split_seed, folds, fold, shots_per_class)
        self.preprocessing = Preprocessing(
            img_size=img_size,
            mean=mean,
            std=std,
            crop_pct=crop_pct,
            crop_mode=crop_mode,
            interpolation=interpolation,
            train_crop=train_crop,
            crop_scale=crop_scale,
            hflip=hflip,
            augment=augment,
        )
        self.class_weights = check_class_weights(class_weights)
        self.sampler = check_sampler(sampler)
        self.decoded = DecodedCache(decoded_cache, device_resident)
        self.preprocessing.check_transforms()
        self.on_bad_image = on_bad_image
        self.issue_edits = IssueEdits.from_config(exclude, relabel)
        self._setup: _SetUp | None = None

    # -- to implement ---------------------------------------------------------------------------
    def read_class_names(self) -> list[str]:
        """The class names, in label order (called once, by setup)."""
        raise NotImplementedError

    def native_img_size(self) -> int:
        """The input side when data.img_size is null (called once, by setup; may read images)."""
        return self.NATIVE_IMG_SIZE

    def load_splits(self, class_names: list[str]) -> Splits:
        """The untransformed splits, labelled by index in `class_names` (called once, by setup)."""
        raise NotImplementedError

    def image_root(self) -> Path | None:
        """The folder that relative paths of an issues file start from (data.root); None: the
        working directory."""
        return None

    # -- what setup read ------------------------------------------------------------------------
    @property
    def ready(self) -> _SetUp:
        if self._setup is None:
            raise RuntimeError(
                f"{type(self).__name__}.setup() has not run: call prepare_data() and setup() first"
            )
        return self._setup

    @property
    def class_names(self) -> list[str]:
        return self.ready.class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_spec(self) -> InputSpec:
        return self.ready.input_spec

    @property
    def train_transform(self) -> Callable:
        return self.ready.train_transform

    @property
    def eval_transform(self) -> Callable:
        return self.ready.eval_transform

    @property
    def has_test(self) -> bool:
        return "test" in self.ready.datasets

    @property
    def val_split(self) -> float:
        return self.split_policy.val_split

    @property
    def trains_with_flips(self) -> bool:
        return self.preprocessing.trains_with_flips

    @property
    def num_workers(self) -> int:
        # Data in memory needs no decoding, so worker processes would only add start-up and copies.
        if self._num_workers is None:
            return 0 if self.in_memory else default_num_workers()
        return self._num_workers

    def setup(self, stage: str | None = None) -> None:
        """Read the class names, the input side and the splits (once; later calls return)."""
        if self._setup is not None:
            return
        class_names = self.read_class_names()
        spec = self.preprocessing.input_spec(self.native_img_size)
        datasets = self.split_policy.apply(self.load_splits(class_names), class_names)
        datasets = self.issue_edits.apply(datasets, class_names, self.image_root(), type(self).__name__)
        for name, dataset in datasets.items():
            if len(dataset) == 0:
                raise UserError(f"the {name} split is empty ({type(self).__name__})")
        self._setup = _SetUp(
            class_names=class_names,
            input_spec=spec,
            train_transform=self.preprocessing.train_transform(spec),
            eval_transform=self.preprocessing.eval_transform(spec),
            datasets=datasets,
        )
        sizes = ", ".join(f"{name} {len(dataset)}" for name, dataset in datasets.items())
        log.info("data: %d classes; %s images", self.num_classes, sizes)

    def dataset(self, split: str) -> Dataset:
        """The untransformed images of `split` ('train', 'val' or 'test')."""
        return self.ready.datasets[split]

    @property
    def issues_applied(self) -> dict[str, dict]:
        """What data.exclude and data.relabel did: per key the issues file, its sha256 and the images
        changed per split (the model card's data.excluded and data.relabelled); empty without them."""
        return dict(self.issue_edits.applied)

    def split_sizes(self) -> dict[str, int]:
        """Images per split: train, val and (when there is one) test."""
        return {name: len(dataset) for name, dataset in self.ready.datasets.items()}

    def class_counts(self, split: str = "train") -> np.ndarray:
        """Images per class in `split`, in label order."""
        return np.bincount(targets_of(self.dataset(split)), minlength=self.num_classes)

    @property
    def loss_class_weights(self) -> list[float] | None:
        """The training loss's class weights (data.class_weights), resolved against the training split."""
        if self.class_weights is None:
            return None
        return loss_weights(self.class_weights, self.class_counts(), self.class_names)

    # -- the loaders ----------------------------------------------------------------------------
    @property
    def uses_decoded_cache(self) -> bool:
        """Whether the loaders serve decoded batches (decided once, when the first loader is made)."""
        return self.decoded.serves(
            lambda: (
                self.preprocessing.why_per_image(self.input_spec)
                or why_not_decoded(self.sampler, self.ready.datasets)
            )
        )

    def decoded_arrays(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`split` decoded once into (uint8 images, labels), on the training device with device_resident."""
        trainer = getattr(self, "trainer", None)
        resident = self.decoded.device_resident and trainer is not None
        device = trainer.strategy.root_device if resident else None
        return self.decoded.arrays(split, self.dataset(split), self.input_spec, self.num_workers, device)

    def batch_augment(self) -> BatchAugment:
        return self.preprocessing.batch_augment(self.input_spec)

    def _loader(self, split: str, train: bool) -> DataLoader:
        if self.uses_decoded_cache:
            spec = self.input_spec
            transform = self.batch_augment() if train else partial(normalize, mean=spec.mean, std=spec.std)
            return self.decoded.loader(self.decoded_arrays(split), transform, self.batch_size, train)
        dataset = self.dataset(split)
        transform = self.train_transform if train else self.eval_transform
        sampler = train_sampler(self.sampler, dataset, self.class_counts) if train else eval_sampler(dataset)
        return per_image_loader(dataset, transform, self.batch_size, self.num_workers, train, sampler)

    def eval_loader(self, split: str) -> DataLoader:
        """The images of `split` (train too) through the eval transform, in order, in batches: the
        decoded cache's batched path when it serves this data, else per image in loader workers."""
        return self._loader(split, train=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
