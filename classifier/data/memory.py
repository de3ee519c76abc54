"""Data sets held in memory as uint8 tensors, and the embedded default: scikit-learn's digits."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from classifier.data.base import ClassificationDataModule
from classifier.data.splits import Splits


class TensorImageDataset(Dataset):
    """(uint8 CHW tensor, label) pairs from one [N, 3, H, W] tensor."""

    def __init__(self, images: torch.Tensor, targets: np.ndarray | list[int]):
        self.images = images
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


def load_digit_images(side: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    """The 1,797 8x8 UCI digits bundled with scikit-learn, upscaled to side x side RGB uint8."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # pixel values are 0..16
    images = F.interpolate(images, size=side, mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, digits.target


class DigitsDataModule(ClassificationDataModule):
    """Offline default: a fixed, stratified 64/16/20 train/val/test split of the digits."""

    NATIVE_IMG_SIZE = 32
    in_memory = True

    def read_class_names(self) -> list[str]:
        return [str(d) for d in range(10)]

    def load_splits(self, class_names: list[str]) -> Splits:
        images, targets = load_digit_images()
        indices = np.arange(len(targets))
        rest, test = train_test_split(indices, test_size=0.2, random_state=0, stratify=targets)
        train, val = train_test_split(rest, test_size=0.2, random_state=0, stratify=targets[rest])

        def subset(idx: np.ndarray) -> TensorImageDataset:
            idx = np.sort(idx)
            return TensorImageDataset(images[idx], targets[idx])

        return Splits(train=subset(train), val=subset(val), test=subset(test))
