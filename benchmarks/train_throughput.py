"""Training throughput: train.py against a plain PyTorch loop, same model, data, batch size, epochs.

    python benchmarks/train_throughput.py --data /tmp/cifar10-jpg [--seeds 0 1]

Both train scratch_cnn on the CIFAR-10 JPEGs (ImageFolder train/, the same 90% split train.py
trains on) with the same transforms, batch size, optimizer and loss, then score test/. The plain loop
is torchvision's ImageFolder + DataLoader (per-image decoding and augmentation in loader workers) +
a hand-written float32 step. train.py runs as a user runs it, in a subprocess, and reports
`train/images_per_sec` in its CSV log (steady state: from the end of the first training batch to the
end of the last, validation excluded); the plain loop is timed the same way. `make bench` runs this
as its first section (benchmarks/bench.py); run alone it prints the same rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifier.data.loaders import default_num_workers  # noqa: E402
from classifier.data.splits import split_off_val  # noqa: E402
from classifier.models import ScratchCNN  # noqa: E402

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # as in conf/data/cifar10.yaml
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# The train.py variants measured: the per-image loader, the decoded cache alone (float32, NCHW, as
# the plain loop computes), and the defaults (cache, NHWC, bf16 training steps where the CPU has bf16).
VARIANTS = {
    "train.py per-image loader": ["data.decoded_cache=false"],
    "train.py cache, fp32 NCHW": ["trainer.precision=32-true", "module.channels_last=false"],
    "train.py defaults": [],
}


def plain_loop(data: Path, batch_size: int, workers: int, seed: int, epochs: int = 1) -> dict[str, float]:
    """images/s (steady state) and test top-1 of the plain loop."""
    torch.manual_seed(seed)
    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    augment = [v2.RandomCrop(32, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip()]
    folder = datasets.ImageFolder(
        data / "train", transform=v2.Compose([normalize[0], *augment, *normalize[1:]])
    )
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
    images, started, finished = 0, None, 0.0
    for _ in range(epochs):
        model.train()
        for inputs, targets in loader:
            loss = criterion(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if started is None:  # timed from the end of the first batch, like train.py's TrainSpeed
                started = time.perf_counter()
            else:
                images += len(targets)
        finished = time.perf_counter()
    test = datasets.ImageFolder(data / "test", transform=v2.Compose(normalize))
    correct = 0
    model.eval()
    with torch.no_grad():
        for inputs, targets in DataLoader(test, batch_size=256, num_workers=workers):
            correct += (model(inputs).argmax(1) == targets).sum().item()
    return {"images_per_s": images / (finished - started), "test_top1": correct / len(test)}


def run_train_py(overrides: list[str], env: dict[str, str] | None = None, csv_log: bool = True) -> dict:
    """Runs train.py with `overrides` in a fresh run dir; the whole command's seconds, test top-1
    (plain and with TTA when the run had it), training seconds and peak resident memory (MiB, the
    training process, from model_card.yaml: this process's own maxrss would count the parent it was
    forked from), and with `csv_log` (logger=csv) the logged speed and start-up time."""
    with tempfile.TemporaryDirectory() as run_dir:
        logger = ["logger=csv"] if csv_log else []
        command = [sys.executable, "train.py", *overrides, *logger, f"hydra.run.dir={run_dir}"]
        started = time.perf_counter()
        done = subprocess.run(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        rows = []
        if csv_log:
            with open(Path(run_dir) / "csv" / "metrics.csv") as f:
                rows = list(csv.DictReader(f))
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        card = yaml.safe_load((Path(run_dir) / "model_card.yaml").read_text())

    def last(key: str) -> float | None:
        values = [float(row[key]) for row in rows if row.get(key)]
        return values[-1] if values else None

    return {
        "images_per_s": last("train/images_per_sec"),
        "startup_s": last("train/startup_s"),
        "test_top1": metrics.get("test/top1"),
        "test_top1_tta": metrics.get("test/top1_tta"),
        "seconds": seconds,
        "training_s": card["training"]["seconds"],
        "peak_rss_mib": card["training"].get("peak_resident_mib"),
    }


def cifar_overrides(data: Path, batch_size: int, workers: int, seed: int, epochs: int) -> list[str]:
    return [
        "data=cifar10",
        f"data.root={data}",
        f"data.batch_size={batch_size}",
        f"data.num_workers={workers}",
        f"trainer.max_epochs={epochs}",
        "trainer.accelerator=cpu",
        f"seed={seed}",
    ]


def compare(data: Path, batch_size: int, workers: int, seeds: list[int], epochs: int = 1) -> list[dict]:
    """One row per (seed, runner): the plain loop and each of VARIANTS."""
    rows = []
    for seed in seeds:
        row = {
            "seed": seed,
            "runner": "plain PyTorch loop",
            **plain_loop(data, batch_size, workers, seed, epochs),
        }
        rows.append(row)
        print(_line(row), flush=True)
        for name, extra in VARIANTS.items():
            result = run_train_py([*cifar_overrides(data, batch_size, workers, seed, epochs), *extra])
            rows.append({"seed": seed, "runner": name, **result})
            print(_line(rows[-1]), flush=True)
    plain = {r["seed"]: r["images_per_s"] for r in rows if r["runner"] == "plain PyTorch loop"}
    for row in rows:
        row["ratio"] = row["images_per_s"] / plain[row["seed"]]
    return rows


def _line(row: dict) -> str:
    extra = f"  whole command {row['seconds']:.0f} s" if "seconds" in row else ""
    return (
        f"  seed {row['seed']}  {row['runner']:<28} {row['images_per_s']:8.1f} images/s"
        f"  test top-1 {row['test_top1']:.4f}{extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10-jpg"), help="ImageFolder with train/")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=default_num_workers())
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    rows = compare(args.data, args.batch_size, args.workers, args.seeds)
    for row in rows:
        print(f"{row['runner']:<28} seed {row['seed']}: ratio to the plain loop {row['ratio']:.2f}")


if __name__ == "__main__":
    main()
