"""The loop a user writes instead of using the framework: the classic CIFAR-10 tutorial, on a folder.

    python benchmarks/tutorial_loop.py --data /tmp/cifar10-jpg --epochs 1

Deliberately only torch and torchvision, as a user would copy it: the three-conv CNN of the
TensorFlow / Keras CIFAR-10 tutorial (conv32-pool-conv64-pool-conv64, dense 64) in PyTorch,
RandomCrop(32, padding=4) + RandomHorizontalFlip, ToTensor + Normalize, Adam lr 1e-3, batch 128,
torchvision ImageFolder, a DataLoader with 2 workers; it trains on train/ and reports the test
top-1 on test/. Prints one JSON line: epochs, test_top1, seconds (the whole script, imports included,
is what benchmarks/vs_tutorial.py times from outside).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class TutorialCNN(nn.Module):
    """tensorflow.org/tutorials/images/cnn: conv32-pool-conv64-pool-conv64, dense 64, dense 10."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="/tmp/cifar10-jpg")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    normalize = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    train_set = datasets.ImageFolder(
        f"{args.data}/train",
        transforms.Compose(
            [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), *normalize]
        ),
    )
    test_set = datasets.ImageFolder(f"{args.data}/test", transforms.Compose(normalize))
    train_loader = DataLoader(train_set, batch_size=128, shuffle=True, num_workers=args.workers)
    test_loader = DataLoader(test_set, batch_size=128, num_workers=args.workers)
    model = TutorialCNN(len(train_set.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}", flush=True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in test_loader:
            correct += (model(images).argmax(1) == labels).sum().item()
    top1 = correct / len(test_set)
    print(json.dumps({"epochs": args.epochs, "test_top1": top1, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
