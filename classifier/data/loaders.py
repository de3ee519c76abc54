"""How batches are drawn: per image through the transforms in loader workers, or whole batches from
the decoded cache (classifier/data/decoded.py) when it can serve the run; the samplers of both."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from classifier.config_values import to_number
from classifier.data.decoded import DecodedBatches, decoded_split, whole_batch
from classifier.data.transforms import InputSpec
from classifier.errors import UserError

log = logging.getLogger(__name__)

DECODED_CACHE_MODES = ("auto", True, False)


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


def check_batch_size(value: object) -> int:
    """data.batch_size: images per step on each device.

    Raises:
        UserError: it is not an integer of at least 1.
    """
    batch_size = to_number(value, "data.batch_size", int)
    if batch_size < 1:
        raise UserError(f"data.batch_size={value} must be at least 1")
    return batch_size


def check_num_workers(value: object) -> int | None:
    """data.num_workers: loader processes, or None to pick them (default_num_workers, or 0 for data
    in memory).

    Raises:
        UserError: it is not an integer of at least 0.
    """
    if value is None:
        return None
    workers = to_number(value, "data.num_workers", int)
    if workers < 0:
        raise UserError(f"data.num_workers={value} must be 0 or more (null: one per core)")
    return workers


def default_num_workers() -> int:
    """One loader process per CPU core this process may use, up to 8."""
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def is_distributed() -> bool:
    """Whether this process is one of several (DDP)."""
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    return initialized and torch.distributed.get_world_size() > 1


def eval_sampler(dataset: Dataset) -> UnrepeatedDistributedSampler | None:
    """Under DDP, each process evaluates every world_size-th image and no image twice. Lightning's
    own DistributedSampler pads the split to a multiple of world_size by repeating images, which
    every metric would count again; one that is already a DistributedSampler it leaves alone."""
    if not is_distributed():
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False)


def per_image_loader(
    dataset: Dataset,
    transform: Callable,
    batch_size: int,
    num_workers: int,
    train: bool,
    sampler: Sampler | None = None,
) -> DataLoader:
    """`dataset` through `transform` image by image in `num_workers` processes: shuffled (or drawn by
    `sampler`) to train, in order to evaluate."""
    return DataLoader(
        Transformed(dataset, transform),
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        # A last batch of one image breaks BatchNorm in training; it is kept when evaluating.
        drop_last=train and len(dataset) > batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def why_not_decoded(sampler: str | None, datasets: Mapping[str, Dataset]) -> str | None:
    """Why the decoded cache cannot serve these splits, apart from their transforms
    (Preprocessing.why_per_image); None: it can."""
    if sampler is not None:
        return f"data.sampler={sampler} draws per image"
    if is_distributed():
        return "DDP: each process reads its own share through the per-image loader"
    if not all(hasattr(dataset, "__getitem__") for dataset in datasets.values()):
        return "the data is streamed, not indexable"
    return None


class DecodedCache:
    """Whether the decoded arrays serve the loaders (decided once, when the first loader is made),
    and those arrays per split.

    Args:
        mode: data.decoded_cache: 'auto' (on for small images with the basic augmentation on one
            process), True (on, or an error saying why it cannot be) or False: each split decoded
            once into a uint8 array (on disk for files), served in whole batches augmented
            batch-wise in this process (classifier/data/decoded.py). Same augmentation distributions.
        device_resident: data.device_resident: keep the decoded arrays on the training device (a
            GPU): no transfers.

    Raises:
        UserError: either value is not one of its choices.
    """

    def __init__(self, mode: str | bool = "auto", device_resident: bool = False):
        if mode not in DECODED_CACHE_MODES:
            raise UserError(f"data.decoded_cache={mode!r} is not one of auto, true, false")
        if not isinstance(device_resident, bool):
            raise UserError(f"data.device_resident={device_resident!r} must be true or false")
        self.mode, self.device_resident = mode, device_resident
        self._arrays: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._decision: bool | None = None

    def serves(self, why_not: Callable[[], str | None]) -> bool:
        """Whether the cache serves the run; `why_not()` says why it cannot (None: it can), asked
        only when the cache is not off.

        Raises:
            UserError: data.decoded_cache=true and `why_not()` gives a reason.
        """
        if self._decision is None:
            reason = None if self.mode is False else why_not()
            if self.mode is True and reason:
                raise UserError(f"data.decoded_cache=true cannot be used here: {reason}")
            self._decision = self.mode is not False and reason is None
            if self._decision:
                log.info("decoded cache: on (whole batches augmented in this process, no loader workers)")
            elif self.mode == "auto":
                log.info("decoded cache: off (%s)", reason)
        return self._decision

    def arrays(
        self, split: str, dataset: Dataset, spec: InputSpec, workers: int, device: torch.device | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`split`'s decoded (images, labels), decoded once by `workers` processes and, with
        device_resident, moved to `device` (the training device; None: left on the CPU)."""
        if split not in self._arrays:
            images, labels = decoded_split(dataset, spec, workers, split)
            if self.device_resident and device is not None:
                images, labels = images.to(device), labels.to(device)
            self._arrays[split] = (images, labels)
        return self._arrays[split]

    def loader(
        self,
        arrays: tuple[torch.Tensor, torch.Tensor],
        transform: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int,
        train: bool,
    ) -> DataLoader:
        """Whole batches of `arrays` through `transform` (uint8 batch -> model-ready float batch),
        augmented where the arrays are: in this process on the CPU, or on the GPU with device_resident."""
        dataset = DecodedBatches(*arrays, transform)
        return DataLoader(
            dataset,
            batch_size=batch_size,  # DataLoader hands each batch's indices to __getitems__
            shuffle=train,
            drop_last=train and len(dataset) > batch_size,
            collate_fn=whole_batch,
            num_workers=0,
            pin_memory=torch.cuda.is_available() and not self.device_resident,
        )
