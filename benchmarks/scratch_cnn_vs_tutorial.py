"""scratch_cnn against the plain three-conv CNN of the TensorFlow / Keras CIFAR-10 tutorial.

    python benchmarks/scratch_cnn_vs_tutorial.py --data /tmp/cifar10-jpg [--epochs 8] [--train-images 20000]

Both networks get the same recipe (the framework's defaults: AdamW lr 1e-3, weight decay 0.05,
one epoch of linear warmup then cosine, pad-and-crop + flip, batch 128) and the same images
(a seeded random --train-images of the stratified 90% train split of the CIFAR-10 JPEGs); the table is
test/ top-1 on all 10,000 test images, and seconds per epoch on this machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tutorial_loop import TutorialCNN  # noqa: E402  (the network of the loop a user writes)

from classifier.data import CIFAR10DataModule  # noqa: E402
from classifier.data.loaders import Transformed  # noqa: E402
from classifier.models import ScratchCNN  # noqa: E402
from classifier.optim.schedulers import warmup_cosine  # noqa: E402


def train_and_test(
    model: nn.Module, datamodule: CIFAR10DataModule, train_images: int, epochs: int
) -> tuple[float, float]:
    train = datamodule.dataset("train")
    # A seeded random subset: the folder is sorted by class, so its first images are few classes.
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:train_images]
    train = Subset(train, chosen.tolist())
    loader = DataLoader(
        Transformed(train, datamodule.train_transform), batch_size=128, shuffle=True, drop_last=True,
        num_workers=datamodule.num_workers, persistent_workers=datamodule.num_workers > 0,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    scheduler = warmup_cosine(optimizer, total_steps=epochs * len(loader), steps_per_epoch=len(loader))
    criterion = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    seconds_per_epoch = (time.perf_counter() - started) / epochs
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in datamodule.test_dataloader():
            correct += (model(images).argmax(dim=1) == labels).sum().item()
            total += len(labels)
    return correct / total, seconds_per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10-jpg"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    datamodule = CIFAR10DataModule(
        root=str(args.data), batch_size=256, train_crop="pad", crop_pct=1.0,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    )  # fmt: skip
    datamodule.prepare_data()
    datamodule.setup()
    print(f"{args.train_images} CIFAR-10 training images, {args.epochs} epochs, test on 10,000")
    print("| model | parameters | test top-1 | s / epoch |\n|---|---|---|---|")
    for name, create in (("tutorial 3-conv CNN", TutorialCNN), ("scratch_cnn", ScratchCNN)):
        torch.manual_seed(args.seed)
        model = create()
        accuracy, seconds = train_and_test(model, datamodule, args.train_images, args.epochs)
        parameters = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {parameters / 1e3:.0f} k | {accuracy:.4f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
