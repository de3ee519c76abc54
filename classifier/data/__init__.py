"""Data modules: the embedded digits, CIFAR-10/100, any ImageFolder tree, a CSV of paths and labels,
and LitData chunks streamed from a folder or object storage."""

from classifier.data.base import ClassificationDataModule
from classifier.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from classifier.data.folder import ImageFolderDataModule
from classifier.data.memory import DigitsDataModule, TensorImageDataset
from classifier.data.splits import Splits
from classifier.data.streaming import StreamingDataModule
from classifier.data.tabular import CSVDataModule
from classifier.data.transforms import InputSpec

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CSVDataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "InputSpec",
    "Splits",
    "StreamingDataModule",
    "TensorImageDataset",
]
