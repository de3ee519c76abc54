"""Training throughput: train.py against a plain PyTorch loop, same model, data and batch size.

    python benchmarks/train_throughput.py --data /tmp/cifar10-jpg [--repeats 2]

Both train scratch_cnn for one epoch on the CIFAR-10 JPEGs (ImageFolder train/, the same 90%
split train.py trains on), with the same transforms, batch size, loader workers, optimizer and
loss. The plain loop is torchvision's ImageFolder + DataLoader + a hand-written step; train.py
runs as a user would run it, in a subprocess, and reports `train/images_per_sec` in its CSV log
(steady state: from the end of the first training batch to the end of the last, validation
excluded); the plain loop is timed the same way. Prints images/s for both and their ratio.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifier.data.base import default_num_workers, split_off_val  # noqa: E402
from classifier.models import ScratchCNN  # noqa: E402

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # as in conf/data/cifar10.yaml
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def plain_loop_images_per_sec(data: Path, batch_size: int, workers: int, seed: int) -> float:
    torch.manual_seed(seed)
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomCrop(32, padding=4, padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    folder = datasets.ImageFolder(data / "train", transform=transform)
    train_subset, _ = split_off_val(folder, 0.1, seed=0)  # the images train.py trains on
    loader = DataLoader(
        Subset(folder, train_subset.indices),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    model = ScratchCNN(num_classes=len(folder.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    criterion = nn.CrossEntropyLoss()
    model.train()
    images, started = 0, None
    for inputs, targets in loader:
        loss = criterion(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if started is None:  # timed from the end of the first batch, like train.py's TrainSpeed
            started = time.perf_counter()
        else:
            images += len(targets)
    return images / (time.perf_counter() - started)


def framework_images_per_sec(data: Path, batch_size: int, workers: int, seed: int) -> tuple[float, float]:
    """(train/images_per_sec that train.py logged, wall seconds of the whole command)."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable,
            "train.py",
            "data=cifar10",
            f"data.root={data}",
            f"data.batch_size={batch_size}",
            f"data.num_workers={workers}",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "logger=csv",
            f"seed={seed}",
            f"hydra.run.dir={run_dir}",
        ]
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        with open(Path(run_dir) / "csv" / "metrics.csv") as f:
            rates = [
                float(row["train/images_per_sec"])
                for row in csv.DictReader(f)
                if row.get("train/images_per_sec")
            ]
    return rates[-1], wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10-jpg"), help="ImageFolder with train/")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=default_num_workers())
    parser.add_argument("--repeats", type=int, default=2, help="rounds; the order alternates; best of each")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        sys.exit(
            f"error: --data {args.data} has no train/ folder (extract ../shared/data/cifar10-jpg.tar.gz)"
        )

    print(
        f"scratch_cnn, one epoch of CIFAR-10 JPEGs, batch {args.batch_size}, {args.workers} workers,"
        f" {torch.get_num_threads()} torch threads",
        flush=True,
    )
    plain: list[float] = []
    framework: list[float] = []

    def run_plain(round_: int) -> None:
        plain.append(plain_loop_images_per_sec(args.data, args.batch_size, args.workers, args.seed))
        print(f"  [{round_}] plain PyTorch loop: {plain[-1]:8.1f} images/s", flush=True)

    def run_framework(round_: int) -> None:
        rate, wall = framework_images_per_sec(args.data, args.batch_size, args.workers, args.seed)
        framework.append(rate)
        print(
            f"  [{round_}] train.py:           {rate:8.1f} images/s  (whole command {wall:.0f} s)", flush=True
        )

    for round_ in range(1, args.repeats + 1):
        # Alternate which goes first, so neither always gets the cooler CPU or the warmer page cache.
        for run in (run_plain, run_framework) if round_ % 2 else (run_framework, run_plain):
            run(round_)
    best_plain, best_framework = max(plain), max(framework)
    print(
        f"plain loop {best_plain:.1f} images/s, train.py {best_framework:.1f} images/s"
        f" (best of {args.repeats})"
    )
    print(f"ratio train.py / plain loop: {best_framework / best_plain:.3f}")


if __name__ == "__main__":
    main()
