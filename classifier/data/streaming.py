"""Data beyond RAM: an ImageFolder converted once into LitData's optimized chunks, then streamed
(`data=litdata data.root=DIR_OR_URI`), from a local folder or from object storage (s3://, gs://...).

    python -m classifier.data.convert SRC_IMAGE_FOLDER OUT_DIR_OR_URI [--val-split 0.1] [--workers N]

The converter reads SRC as data=imagefolder does (class folders, val/ or a stratified val_split of
train, optional test/, unreadable images skipped with a warning) and writes OUT/<split>/ chunks of
(encoded image bytes, label), kept as the files were (no re-encoding: the same pixels, the same
size), and OUT/classes.json: class names, images per class per split, the typical image side.
Streaming decodes each image as the folder module does (EXIF rotation, any mode to RGB).
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from classifier.data.base import ClassificationDataModule
from classifier.data.images import load_rgb
from classifier.data.splits import Splits
from classifier.data.transforms import native_side
from classifier.errors import UserError
from classifier.extras import import_for

log = logging.getLogger(__name__)

CLASSES_FILE = "classes.json"
SPLITS = ("train", "val", "test")
REMOTE_PREFIXES = ("s3://", "gs://", "gcs://", "azure://", "hf://", "r2://")


def _is_remote(location: str) -> bool:
    return str(location).startswith(REMOTE_PREFIXES)


def _join(location: str, *parts: str) -> str:
    if _is_remote(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return str(Path(location, *parts))


def _require_litdata():
    return import_for("data=litdata", "streaming", "litdata")


# -- converting ---------------------------------------------------------------------------------------
def encode_sample(sample: tuple[str, int]) -> dict[str, Any]:
    """What a chunk holds per image: the file's bytes as they are, and the label."""
    path, label = sample
    return {"image": Path(path).read_bytes(), "label": int(label)}


def _samples(dataset) -> list[tuple[str, int]]:
    if isinstance(dataset, Subset):
        parent = _samples(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    return [(str(path), int(label)) for path, label in dataset.samples]


def _write_text(location: str, text: str) -> None:
    if not _is_remote(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_text(text)
        return
    if not location.startswith("s3://"):
        raise UserError(f"{location}: classes.json is written to local folders and s3:// only")
    import boto3

    bucket, _, key = location[len("s3://") :].partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=text.encode())


def _read_text(location: str) -> str:
    if not _is_remote(location):
        path = Path(location).expanduser()
        if not path.is_file():
            raise UserError(
                f"data.root: {path} not found: convert the images first"
                " (python -m classifier.data.convert SRC_IMAGE_FOLDER OUT_DIR)"
            )
        return path.read_text()
    if not location.startswith("s3://"):
        raise UserError(f"{location}: classes.json is read from local folders and s3:// only")
    import boto3

    bucket, _, key = location[len("s3://") :].partition("/")
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def convert_image_folder(
    source: str | Path,
    output: str,
    val_split: float = 0.1,
    split_seed: int = 0,
    num_workers: int | None = None,
    chunk_bytes: str = "64MB",
) -> dict[str, Any]:
    """Write `source`'s splits as LitData chunks under `output`/<split>/ and `output`/classes.json
    (returned). Unreadable images are skipped with a warning naming each file."""
    from classifier.data.folder import ImageFolderDataModule

    litdata = _require_litdata()
    folder = ImageFolderDataModule(
        root=str(source), val_split=val_split, split_seed=split_seed, num_workers=0
    )
    folder.prepare_data()
    folder.setup()
    info: dict[str, Any] = {
        "class_names": folder.class_names,
        "typical_side": folder.input_spec.img_size,
        "source": str(Path(str(source)).expanduser().resolve()),
        "splits": {},
    }
    for split in SPLITS:
        if split == "test" and not folder.has_test:
            continue
        samples = _samples(folder.dataset(split))
        counts = np.bincount([label for _, label in samples], minlength=len(folder.class_names))
        options = {"verbose": False} if "verbose" in inspect.signature(litdata.optimize).parameters else {}
        litdata.optimize(
            fn=encode_sample,
            inputs=samples,
            output_dir=_join(output, split),
            chunk_bytes=chunk_bytes,
            num_workers=num_workers or 1,
            mode="overwrite",
            # Its workers only read files: forking them takes 0.1 s where spawning (a fresh Python
            # importing torch) took 6 s per split.
            start_method="fork" if "fork" in multiprocessing.get_all_start_methods() else None,
            **options,  # quiet (litdata 0.2.5x has no verbose)
        )
        info["splits"][split] = {"images": len(samples), "counts": counts.tolist()}
        log.info("%s: %d images -> %s", split, len(samples), _join(output, split))
    _write_text(_join(output, CLASSES_FILE), json.dumps(info, indent=2) + "\n")
    return info


# -- streaming ----------------------------------------------------------------------------------------
def decode_sample(item: dict[str, Any], transform: Callable) -> tuple[torch.Tensor, int]:
    return transform(load_rgb(io.BytesIO(item["image"]))), int(item["label"])


@dataclass
class StreamedSplit:
    """A converted split: where its chunks are, how many images, how many of each class."""

    location: str
    images: int
    counts: list[int]

    def __len__(self) -> int:
        return self.images

    @property
    def targets(self) -> list[int]:
        """Labels in class order (what class_counts and class weights need; not the stream's order)."""
        return [label for label, count in enumerate(self.counts) for _ in range(count)]


class StreamingDataModule(ClassificationDataModule):
    """Images converted by `python -m classifier.data.convert`, streamed with LitData.

    Args:
        root: the converted folder, or its object-storage URI (s3://bucket/prefix; classes.json is
            read from local folders and s3://).
        cache_dir: where remote chunks are kept while streaming (None: LitData's default).
        max_cache_size: the most disk that cache may take, e.g. '50GB'.
        **kwargs: as every data module; sampler=balanced, folds and shots_per_class need every label in order,
            which a stream has not: they are refused.
    """

    def __init__(self, root: str, cache_dir: str | None = None, max_cache_size: str = "50GB", **kwargs):
        super().__init__(**kwargs)
        policy = self.split_policy
        if self.sampler is not None or policy.folds is not None or policy.shots_per_class is not None:
            raise UserError(
                "data=litdata streams its images: no data.sampler, data.folds or data.shots_per_class"
            )
        if root is None or str(root) in ("", "???"):
            raise UserError(
                "data.root is not set: point it at a converted folder or URI, e.g. data.root=/data/c10"
            )
        self.root = str(root) if _is_remote(str(root)) else str(Path(str(root)).expanduser())
        self.cache_dir, self.max_cache_size = cache_dir, max_cache_size
        self._info: dict[str, Any] | None = None

    @property
    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = json.loads(_read_text(_join(self.root, CLASSES_FILE)))
        return self._info

    def read_class_names(self) -> list[str]:
        return [str(name) for name in self.info["class_names"]]

    def native_img_size(self) -> int:
        return native_side(int(self.info["typical_side"]))

    def load_splits(self, class_names: list[str]) -> Splits:
        splits = {
            name: StreamedSplit(_join(self.root, name), int(split["images"]), list(split["counts"]))
            for name, split in self.info["splits"].items()
        }
        if "val" not in splits:
            raise UserError(
                f"{self.root} has no val split: convert again (the converter carves one out of train)"
            )
        return Splits(**splits)

    def class_counts(self, split: str = "train") -> np.ndarray:
        return np.asarray(self.dataset(split).counts)

    def _loader(self, split: str, train: bool) -> DataLoader:
        litdata = _require_litdata()
        transform = self.train_transform if train else self.eval_transform
        options = {}
        if _is_remote(self.root):
            options = {"cache_dir": self.cache_dir, "max_cache_size": self.max_cache_size}
        dataset = litdata.StreamingDataset(
            self.dataset(split).location,
            shuffle=train,
            drop_last=train,
            seed=torch.initial_seed() % 2**31,  # the run's seed (seed_everything), for its shuffle
            transform=partial(decode_sample, transform=transform),
            **options,
        )
        return litdata.StreamingDataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            drop_last=train and len(dataset) > self.batch_size,
            pin_memory=torch.cuda.is_available(),
        )
