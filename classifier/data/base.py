"""The LightningDataModule every data set shares: splits, transforms, loaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, WeightedRandomSampler

from classifier.config_values import to_number, to_numbers
from classifier.data.batched import BatchAugment, normalize
from classifier.data.decoded import DecodedBatches, decoded_split, whole_batch
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
    if isinstance(dataset, ConcatDataset):
        return [target for part in dataset.datasets for target in targets_of(part)]
    return list(dataset.targets)


def split_off_val(train: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """A stratified, seeded split, so every run (and eval.py) sees the same validation images."""
    labels = np.asarray(targets_of(train))
    indices = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and len(labels) * fraction >= len(counts) else None
    train_idx, val_idx = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    return Subset(train, sorted(train_idx.tolist())), Subset(train, sorted(val_idx.tolist()))


def split_fold(pool: Dataset, folds: int, fold: int, seed: int) -> tuple[Subset, Subset]:
    """(train, val) of cross-validation fold `fold` of `folds`: val is that fold of a seeded shuffle,
    stratified by class when every class has at least `folds` images (else plain k-fold)."""
    labels = np.asarray(targets_of(pool))
    stratified = np.bincount(labels)[np.bincount(labels) > 0].min() >= folds
    if not stratified:
        log.warning("data.folds=%d: a class has fewer images than folds; the folds are not stratified", folds)
    splitter = (StratifiedKFold if stratified else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, val_idx = list(splitter.split(np.zeros(len(labels)), labels))[fold]
    return Subset(pool, sorted(train_idx.tolist())), Subset(pool, sorted(val_idx.tolist()))


def few_shot_subset(train: Dataset, shots: int, seed: int, class_names: Sequence[str]) -> Subset:
    """`shots` training images of every class, drawn by a permutation seeded by `seed`: the same
    images for the same seed, and the K-shot subset holds the (K-1)-shot one (each class takes the
    first K of its images in that order), so results for growing K differ by the added images only."""
    labels = np.asarray(targets_of(train))
    order = np.random.default_rng(seed).permutation(len(labels))
    counts = np.bincount(labels, minlength=len(class_names))
    short = [f"{class_names[c]} ({counts[c]})" for c in range(len(class_names)) if counts[c] < shots]
    if short:
        raise UserError(
            f"data.shots_per_class={shots}: the training split has fewer images of"
            f" {', '.join(short[:5])}{' ...' if len(short) > 5 else ''}"
        )
    taken = np.zeros(len(class_names), dtype=np.int64)
    chosen = []
    for index in order:
        label = labels[index]
        if taken[label] < shots:
            taken[label] += 1
            chosen.append(int(index))
    return Subset(train, sorted(chosen))


def _check_shots(shots: object) -> int | None:
    if shots is None:
        return None
    shots = to_number(shots, "data.shots_per_class", int)
    if shots < 1:
        raise UserError(f"data.shots_per_class={shots} must be 1 or more (null: every training image)")
    return shots


def _check_folds(folds: object, fold: object) -> tuple[int | None, int | None]:
    if folds is None:
        if fold is not None:
            raise UserError(f"data.fold={fold} needs data.folds=K (the number of cross-validation folds)")
        return None, None
    folds = to_number(folds, "data.folds", int)
    if folds < 2:
        raise UserError(f"data.folds={folds} must be 2 or more")
    if fold is None:
        every = f"-m 'data.fold=range({folds})'"
        raise UserError(f"data.folds={folds} needs data.fold=i (0..{folds - 1}); every fold: {every}")
    fold = to_number(fold, "data.fold", int)
    if not 0 <= fold < folds:
        raise UserError(f"data.fold={fold} must be in 0..{folds - 1} (data.folds={folds})")
    return folds, fold


SAMPLERS = (None, "balanced")
DECODED_CACHE_MODES = ("auto", True, False)


def _check_class_weights(value: str | Sequence[float] | None) -> str | list[float] | None:
    if value is None or value == "auto":
        return value
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise UserError(f"data.class_weights={value!r}: use auto, null or a list of numbers (one per class)")
    weights = [to_number(w, f"data.class_weights[{i}]") for i, w in enumerate(value)]
    if any(w < 0 for w in weights):
        raise UserError(f"data.class_weights={weights} must not be negative")
    return weights


def default_num_workers() -> int:
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


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
        img_size: square side fed to the model; None is the data set's `native_img_size()`.
        mean, std: normalisation; None is ImageNet's.
        crop_pct: eval crop: scale to img_size / crop_pct, then crop img_size; None is 1.0 (no crop)
            up to 64 px and timm's default (0.875) above.
        crop_mode: how the eval crop scales: timm's 'center' (short side), 'squash' or 'border'.
        interpolation: resize filter (a torchvision InterpolationMode name).
        train_crop: 'pad' (pad-and-crop), 'resized' (random-resized crop) or 'auto' (pad up to 64 px).
        crop_scale: area range of the random-resized crop.
        hflip: random horizontal flips while training.
        val_split: fraction of train held out for validation when the data has no val split.
        split_seed: seed of that split; fixed apart from the run seed so eval.py sees the same split.
        on_bad_image: 'skip' (warn and drop each undecodable file) or 'error' (fail, listing them all).
        augment: the `augment` config (policy, colour jitter, erasing on top of the crop and flip);
            None is the basic crop and flip.
        class_weights: weights of the training loss per class: None, 'auto' (inverse frequency in
            the training split, N / (K * n_c)) or one number per class.
        sampler: None (shuffle) or 'balanced' (each training image drawn with probability 1/n_c of
            its class, with replacement: every class about equally often per epoch).
        folds, fold: k-fold cross-validation: train and val become fold `fold`'s split of the
            training images (with the data's own val images, when it has them), stratified and
            seeded by split_seed; the test split stays as it is.
        decoded_cache: 'auto' (on for small images with the basic augmentation on one process),
            True (on, or an error saying why it cannot be) or False: each split decoded once into a
            uint8 array (on disk for files), served in whole batches augmented batch-wise in this
            process (classifier/data/decoded.py). Same augmentation distributions.
        device_resident: keep the decoded arrays on the training device (a GPU): no transfers.
        shots_per_class: few-shot training: K training images per class (after val is split off;
            val and test stay whole), drawn with split_seed (few_shot_subset); None: all of them.
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
        # InputSpec fields that were given; the side and crop that depend on the images come in setup.
        self._input_args = {
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
        self.class_weights = _check_class_weights(class_weights)
        if sampler not in SAMPLERS:
            raise UserError(
                f"data.sampler={sampler!r} is not one of null, {', '.join(s for s in SAMPLERS if s)}"
            )
        self.sampler = sampler
        self.folds, self.fold = _check_folds(folds, fold)
        self.shots_per_class = _check_shots(shots_per_class)
        if decoded_cache not in DECODED_CACHE_MODES:
            raise UserError(f"data.decoded_cache={decoded_cache!r} is not one of auto, true, false")
        if not isinstance(device_resident, bool):
            raise UserError(f"data.device_resident={device_resident!r} must be true or false")
        self.decoded_cache, self.device_resident = decoded_cache, device_resident
        self._decoded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cache_decision: tuple[bool, str] | None = None
        # Every value checked now, before any file is read: a spec and transforms of a stand-in side.
        stand_in = self._resolve_input_spec(lambda: PHOTO_SIDE)
        create_train_transform(stand_in, train_crop, self.crop_scale, hflip, self.augment)
        self.on_bad_image = on_bad_image
        self._setup: _SetUp | None = None

    def _resolve_input_spec(self, native_side: Callable[[], int]) -> InputSpec:
        given = {key: value for key, value in self._input_args.items() if value is not None}
        if "img_size" not in given:
            given["img_size"] = native_side()
        side = given["img_size"]
        if "crop_pct" not in given and is_small(side):
            given["crop_pct"] = 1.0  # small images train uncropped (pad-and-crop), so they evaluate so
        return InputSpec(**given)

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
    def trains_with_flips(self) -> bool:
        """Whether training mirrors images (data.hflip and augment.hflip): then a model has learnt
        that a mirrored image is the same class, and test-time augmentation may flip."""
        return bool(self.hflip and self.augment.hflip)

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
        spec = self._resolve_input_spec(self.native_img_size)
        splits = self.load_splits(class_names)
        train, val = splits.train, splits.val
        if self.folds:
            pool = train if val is None else ConcatDataset([train, val])
            train, val = split_fold(pool, self.folds, self.fold, self.split_seed)
            log.info("data.folds=%d: fold %d of %d images is val", self.folds, self.fold, len(pool))
        elif val is None:
            if self.val_split <= 0:
                raise UserError("no validation data: provide a val split or set data.val_split > 0")
            train, val = split_off_val(train, self.val_split, self.split_seed)
        if self.shots_per_class:
            train = few_shot_subset(train, self.shots_per_class, self.split_seed, class_names)
            log.info("data.shots_per_class=%d: %d training images", self.shots_per_class, len(train))
        datasets = {"train": train, "val": val}
        if splits.test is not None:
            datasets["test"] = splits.test
        for name, dataset in datasets.items():
            if len(dataset) == 0:
                raise UserError(f"the {name} split is empty ({type(self).__name__})")
        self._setup = _SetUp(
            class_names=class_names,
            input_spec=spec,
            train_transform=create_train_transform(
                spec, self.train_crop, self.crop_scale, self.hflip, self.augment
            ),
            eval_transform=create_eval_transform(spec),
            datasets=datasets,
        )
        sizes = ", ".join(f"{name} {len(dataset)}" for name, dataset in datasets.items())
        log.info("data: %d classes; %s images", self.num_classes, sizes)

    def dataset(self, split: str) -> Dataset:
        """The untransformed images of `split` ('train', 'val' or 'test')."""
        return self.ready.datasets[split]

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
        if self.class_weights != "auto":
            if len(self.class_weights) != self.num_classes:
                raise UserError(
                    f"data.class_weights has {len(self.class_weights)} values; the data has"
                    f" {self.num_classes} classes ({', '.join(self.class_names[:10])})"
                )
            return list(self.class_weights)
        counts = self.class_counts()
        missing = [name for name, count in zip(self.class_names, counts, strict=True) if count == 0]
        if missing:
            log.warning("data.class_weights=auto: no training images of %s; weight 0", ", ".join(missing))
        # N / (K n_c): the average weight over the training images is 1, so the loss keeps its scale.
        return [float(counts.sum() / (len(counts) * c)) if c else 0.0 for c in counts]

    def _train_sampler(self) -> WeightedRandomSampler | None:
        if self.sampler != "balanced":
            return None
        labels = np.asarray(targets_of(self.dataset("train")))
        per_image = 1.0 / self.class_counts()[labels]
        # Under DDP with trainer.use_distributed_sampler=true (the default), Lightning wraps any
        # sampler but Random/Sequential in fabric's DistributedSamplerWrapper (2.6: data_connector.py,
        # _get_distributed_sampler): each process draws the N indices (the same ones: every rank has
        # the run's seed) and keeps every world_size-th, so all ranks together still draw N, balanced.
        return WeightedRandomSampler(
            torch.as_tensor(per_image, dtype=torch.double), len(labels), replacement=True
        )

    @staticmethod
    def _eval_sampler(dataset: Dataset) -> UnrepeatedDistributedSampler | None:
        """Under DDP, each process evaluates every world_size-th image and no image twice. Lightning's
        own DistributedSampler pads the split to a multiple of world_size by repeating images, which
        every metric would count again; one that is already a DistributedSampler it leaves alone."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        if torch.distributed.get_world_size() < 2:
            return None
        return UnrepeatedDistributedSampler(dataset, shuffle=False)

    # -- the decoded-image cache ------------------------------------------------------------------
    def _why_not_decoded(self) -> str | None:
        """Why the decoded cache cannot serve this data (None: it can)."""
        spec = self.input_spec
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
        if self.sampler is not None:
            return f"data.sampler={self.sampler} draws per image"
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            return "DDP: each process reads its own share through the per-image loader"
        if not all(hasattr(self.dataset(split), "__getitem__") for split in self.ready.datasets):
            return "the data is streamed, not indexable"
        return None

    @property
    def uses_decoded_cache(self) -> bool:
        """Whether the loaders serve decoded batches (decided once, when the first loader is made)."""
        if self._cache_decision is None:
            reason = None if self.decoded_cache is False else self._why_not_decoded()
            if self.decoded_cache is True and reason:
                raise UserError(f"data.decoded_cache=true cannot be used here: {reason}")
            use = self.decoded_cache is not False and reason is None
            self._cache_decision = (use, reason or "")
            if use:
                log.info("decoded cache: on (whole batches augmented in this process, no loader workers)")
            elif self.decoded_cache == "auto":
                log.info("decoded cache: off (%s)", reason)
        return self._cache_decision[0]

    def _decoded_arrays(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self._decoded:
            images, labels = decoded_split(self.dataset(split), self.input_spec, self.num_workers, split)
            trainer = getattr(self, "trainer", None)
            if self.device_resident and trainer is not None:
                device = trainer.strategy.root_device
                images, labels = images.to(device), labels.to(device)
            self._decoded[split] = (images, labels)
        return self._decoded[split]

    def batch_augment(self) -> BatchAugment:
        spec = self.input_spec
        return BatchAugment(
            padding=self.augment.crop_padding(spec.img_size),
            flip=bool(self.hflip and self.augment.hflip),
            erasing=float(self.augment.erasing),
            mean=spec.mean,
            std=spec.std,
        )

    def _decoded_loader(self, split: str, train: bool) -> DataLoader:
        images, labels = self._decoded_arrays(split)
        spec = self.input_spec
        # Augmented (or, to evaluate, normalised) as whole batches where they are: in this process on
        # the CPU, or on the GPU with device_resident.
        transform = self.batch_augment() if train else partial(normalize, mean=spec.mean, std=spec.std)
        dataset = DecodedBatches(images, labels, transform)
        drop_last = train and len(dataset) > self.batch_size
        return DataLoader(
            dataset,
            batch_size=self.batch_size,  # DataLoader hands each batch's indices to __getitems__
            shuffle=train,
            drop_last=drop_last,
            collate_fn=whole_batch,
            num_workers=0,
            pin_memory=torch.cuda.is_available() and not self.device_resident,
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        if self.uses_decoded_cache:
            return self._decoded_loader(split, train)
        dataset = self.dataset(split)
        transform = self.train_transform if train else self.eval_transform
        sampler = self._train_sampler() if train else self._eval_sampler(dataset)
        return DataLoader(
            Transformed(dataset, transform),
            batch_size=self.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            # A last batch of one image breaks BatchNorm in training; it is kept when evaluating.
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

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
