"""The decoded-image cache for small images: each split decoded once into one uint8 array at the input
size (kept in a memory-mapped file under $XDG_CACHE_HOME/classifier/decoded for files, so later runs
skip the decoding; rebuilt when any file, the side or the resize filter changes), served in whole
batches without loader workers and augmented batch-wise (classifier/data/batched.py) where the arrays
are: this process's CPU, or the GPU with data.device_resident=true. On 2 CPU cores the per-image path
spends most of its time decoding and augmenting one image at a time in workers that take the cores
from the model."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision.transforms import v2

from classifier.console import ProgressLog
from classifier.data.images import ImageFileDataset
from classifier.data.transforms import InputSpec, _interpolation
from classifier.errors import UserError
from classifier.files import cache_home, current_umask

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DECODE_BATCH = 256  # images per loader batch while decoding


def file_samples(dataset: Dataset) -> list[tuple[str, int]] | None:
    """The (path, label) pairs of a file-backed split (an ImageFileDataset, or Subsets and
    ConcatDatasets of them), in dataset order; None for data that is not read from files."""
    if isinstance(dataset, Subset):
        parent = file_samples(dataset.dataset)
        return None if parent is None else [parent[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        parts = [file_samples(part) for part in dataset.datasets]
        return None if any(part is None for part in parts) else [item for part in parts for item in part]
    if isinstance(dataset, ImageFileDataset):
        return list(dataset.samples)
    return None


def cache_key(samples: list[tuple[str, int]], spec: InputSpec) -> str:
    """Names the decoded array: every file with its size and modification time, the side, the filter."""
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, spec.img_size, spec.interpolation]).encode())
    digest_files(digest, samples)
    return digest.hexdigest()[:32]


def digest_files(digest: Any, samples: list[tuple[str, int]]) -> None:
    """Adds each (path, label) with the file's size and modification time to `digest` (a hashlib
    object): a cache keyed by it is rebuilt when any file changes."""
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())


def geometry(spec: InputSpec) -> v2.Compose:
    """What both paths do first to a small image: scale the short side to img_size, crop the centre."""
    interpolation = _interpolation(spec.interpolation)
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(spec.img_size, interpolation=interpolation, antialias=True),
            v2.CenterCrop(spec.img_size),
        ]
    )


class _Decoding(Dataset):
    """One image of `dataset` as uint8 (3, S, S) at the input size, with its label and, instead of
    raising in a loader worker (which would turn a one-line error into a traceback), the error."""

    def __init__(self, dataset: Dataset, spec: InputSpec):
        self.dataset, self.side, self.transform = dataset, spec.img_size, geometry(spec)
        self.empty = torch.zeros(3, spec.img_size, spec.img_size, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            image, label = self.dataset[index]
        except UserError as exc:
            return self.empty, -1, str(exc)
        if isinstance(image, Image.Image) and image.size == (self.side, self.side) and image.mode == "RGB":
            # Already the input size (CIFAR): the resize and crop would copy it unchanged, at 1.5x
            # the cost of decoding it.
            return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy()), int(label), ""
        return self.transform(image).as_subclass(torch.Tensor), int(label), ""


def _decode_into(
    target: np.ndarray, dataset: Dataset, spec: InputSpec, workers: int, what: str = "images"
) -> np.ndarray:
    """Decodes every image of `dataset` into target[i]; returns the labels. Loader worker processes
    decode in parallel (threads would hold the GIL for most of PIL's per-image Python work)."""
    loader = DataLoader(
        _Decoding(dataset, spec),
        batch_size=DECODE_BATCH,
        num_workers=workers,
        collate_fn=_stacked,
        # its workers' seed from a generator of its own: decoding, whether it happens in this run
        # or was done by an earlier one, leaves the run's random stream (shuffles, crops) alone
        generator=torch.Generator(),
    )
    labels = np.empty(len(dataset), dtype=np.int64)
    done = 0
    progress = ProgressLog(log, "decoded", what, len(dataset))
    for images, batch_labels, errors in loader:
        failed = next((e for e in errors if e), None)
        if failed:
            raise UserError(failed)
        target[done : done + len(images)] = images.numpy()
        labels[done : done + len(images)] = batch_labels
        done += len(images)
        progress.advance(len(images))
    progress.finish()
    return labels


def _stacked(items: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, list[int], list[str]]:
    images, labels, errors = zip(*items, strict=True)
    return torch.stack(images), list(labels), list(errors)


def decoded_split(
    dataset: Dataset, spec: InputSpec, workers: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [N, 3, S, S] images, int64 [N] labels) of a split, decoded once; file-backed splits
    are kept on disk (memory-mapped) and reused while their files are unchanged."""
    side = spec.img_size
    samples = file_samples(dataset)
    if samples is None:  # in memory already (digits): decode into RAM, here; workers would cost more
        images = np.empty((len(dataset), 3, side, side), dtype=np.uint8)
        labels = _decode_into(images, dataset, spec, 0, f"images of {what}")
        return torch.from_numpy(images), torch.from_numpy(labels)
    folder = cache_home() / "decoded"
    key = cache_key(samples, spec)
    array_file, labels_file = folder / f"{key}.u8", folder / f"{key}.labels.npy"
    shape = (len(samples), 3, side, side)
    if array_file.is_file() and labels_file.is_file() and array_file.stat().st_size == np.prod(shape):
        log.info("decoded cache: %s images of %s from %s", len(samples), what, array_file)
    else:
        log.info("decoded cache: decoding %d images of %s once into %s", len(samples), what, array_file)
        folder.mkdir(parents=True, exist_ok=True)
        partial = array_file.with_suffix(f".{os.getpid()}.partial")
        images = np.memmap(partial, dtype=np.uint8, mode="w+", shape=shape)
        labels = _decode_into(images, dataset, spec, workers, f"images of {what}")
        images.flush()
        del images
        np.save(labels_file.with_suffix(".partial.npy"), labels)
        os.replace(labels_file.with_suffix(".partial.npy"), labels_file)
        os.chmod(partial, 0o666 & ~current_umask())
        os.replace(partial, array_file)  # last: its presence means the cache is whole
    images = np.memmap(
        array_file, dtype=np.uint8, mode="c", shape=shape
    )  # "c": writable view, file untouched
    return torch.from_numpy(np.asarray(images)), torch.from_numpy(np.load(labels_file))


class DecodedBatches(Dataset):
    """Whole batches by index list from the decoded arrays, one gather instead of B item calls
    (DataLoader calls __getitems__ with a batch sampler's indices), passed through `transform`
    (uint8 batch -> model-ready float batch) where the arrays are."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]
    ):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        index = torch.as_tensor(indices, device=self.images.device)
        # a list, as default_collate makes: callbacks replace its items in place (callbacks/mixing.py)
        return [self.transform(self.images[index]), self.labels[index]]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]


def whole_batch(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """The collate function of DecodedBatches: __getitems__ returns the batch already made."""
    return batch
