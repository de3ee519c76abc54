"""CIFAR-10 / CIFAR-100: torchvision's pickled batches (downloaded when missing), or an ImageFolder copy."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import download_and_extract_archive

from classifier.data.base import ClassificationDataModule
from classifier.data.folder import find_class_names, is_image_folder_tree, read_image_folder
from classifier.data.memory import TensorImageDataset
from classifier.data.splits import Splits
from classifier.errors import UserError
from classifier.files import expand_path


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


class _CIFARDataModule(ClassificationDataModule):
    """Reads `root`/<base_folder>/ as torchvision lays it out (file names and URL come from
    torchvision's own dataset class), or `root` as an ImageFolder tree with train/ and test/."""

    NATIVE_IMG_SIZE = 32
    torchvision_dataset: type[CIFAR10] = CIFAR10
    title = "CIFAR"

    def __init__(self, root: str, download: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.root = expand_path(root)
        self.download = download

    @property
    def in_memory(self) -> bool:
        return not is_image_folder_tree(self.root)

    def image_root(self) -> Path:
        return self.root

    @property
    def batches_dir(self) -> Path:
        return self.root / self.torchvision_dataset.base_folder

    def _batch_files(self) -> list[Path]:
        dataset = self.torchvision_dataset
        names = [name for name, _ in dataset.train_list + dataset.test_list] + [dataset.meta["filename"]]
        return [self.batches_dir / name for name in names]

    def _has_files(self) -> bool:
        return is_image_folder_tree(self.root) or all(path.is_file() for path in self._batch_files())

    def _missing(self) -> str:
        return (
            f"{self.title} is not in data.root={self.root} (expected {self.batches_dir}/ or an ImageFolder"
            f" with train/ and test/)"
        )

    def prepare_data(self) -> None:
        """Download and extract the archive when its files are not under data.root."""
        if self._has_files():
            return
        dataset = self.torchvision_dataset
        where = self._missing()
        if not self.download:
            raise UserError(f"{where} and data.download=false: put {dataset.filename} extracted there")
        try:
            download_and_extract_archive(
                dataset.url, str(self.root), filename=dataset.filename, md5=dataset.tgz_md5
            )
        except Exception as exc:  # URLError, timeouts, bad archives: all end the same way for the user
            raise UserError(
                f"{where} and the download failed ({type(exc).__name__}); offline? fetch {dataset.url} and"
                f" extract it into {self.root}"
            ) from exc

    def read_class_names(self) -> list[str]:
        if not self._has_files():
            raise UserError(f"{self._missing()}: prepare_data() fetches them")
        if is_image_folder_tree(self.root):
            return find_class_names(self.root / "train")
        meta = self.torchvision_dataset.meta
        return list(_unpickle(self.batches_dir / meta["filename"])[meta["key"]])

    def _read_batches(self, files: list[list[str]]) -> TensorImageDataset:
        images, labels = [], []
        for name, _ in files:
            entry = _unpickle(self.batches_dir / name)
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        return TensorImageDataset(torch.from_numpy(np.concatenate(images)), labels)

    def load_splits(self, class_names: list[str]) -> Splits:
        if is_image_folder_tree(self.root):
            return read_image_folder(self.root, self.root / "train", class_names, self.on_bad_image)
        dataset = self.torchvision_dataset
        return Splits(
            train=self._read_batches(dataset.train_list), test=self._read_batches(dataset.test_list)
        )


class CIFAR10DataModule(_CIFARDataModule):
    torchvision_dataset = CIFAR10
    title = "CIFAR-10"


class CIFAR100DataModule(_CIFARDataModule):
    torchvision_dataset = CIFAR100
    title = "CIFAR-100"
