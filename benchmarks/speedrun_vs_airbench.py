"""experiment=cifar10_speedrun against airbench94 (PyPI `airbench`), side by side on one GPU.

    pip install airbench
    python benchmarks/speedrun_vs_airbench.py --data /tmp/cifar10-jpg [--runs 5] [--out bench-results]

Offline: airbench's loader reads `cifar10/train.pt` and `test.pt` (uint8 NHWC images, labels,
classes) and downloads CIFAR-10 only when they are missing, so they are written first from the
same JPEG folder train.py reads. Each of --runs rounds runs airbench94 (one call of train94 in a
fresh process, its own warm-up included, as its README runs it) and then train.py with the
experiment and seed=round, each timed as a whole command and by its own clock (airbench: the
train94 call; train.py: model_card.yaml's training seconds plus the final evaluation), and scored
on the 10,000 test images (train.py: test/top1_tta, TTA inside the timed command). Prints the table
and writes OUT/speedrun.json. The target: mean test top-1 >= 0.94 within 1.5x airbench's seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_throughput import run_train_py  # noqa: E402

AIRBENCH_RUN = r"""
import json, sys, time, torch, airbench
started = time.perf_counter()
result = airbench.train94()
seconds = time.perf_counter() - started
accuracy = None
if isinstance(result, (float, int)):
    accuracy = float(result)
elif isinstance(result, torch.nn.Module):
    test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    accuracy = float(airbench.evaluate(result, test_loader, tta_level=2))
elif isinstance(result, (tuple, list)):
    accuracy = next(float(x) for x in result if isinstance(x, (float, int)))
print(json.dumps({"seconds": seconds, "test_top1": accuracy}))
"""


def write_airbench_tensors(data: Path, folder: Path) -> None:
    """cifar10/train.pt and test.pt as airbench's CifarLoader saves them, from the JPEG folders."""
    import numpy as np
    import torch
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        target = folder / f"{split}.pt"
        if target.exists():
            continue
        classes = sorted(p.name for p in (data / split).iterdir() if p.is_dir())
        images, labels = [], []
        for label, name in enumerate(classes):
            for path in sorted((data / split / name).iterdir()):
                images.append(np.asarray(Image.open(path).convert("RGB")))
                labels.append(label)
        torch.save(
            {"images": torch.tensor(np.stack(images)), "labels": torch.tensor(labels), "classes": classes},
            target,
        )


def run_airbench(workdir: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", AIRBENCH_RUN], cwd=workdir, capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "command_s": time.perf_counter() - started}


def run_speedrun(data: Path, seed: int, extra: list[str]) -> dict:
    overrides = ["experiment=cifar10_speedrun", f"data.root={data}", f"seed={seed}", "logger=none", *extra]
    result = run_train_py(overrides, csv_log=False)
    return {
        "seconds": result["training_s"],
        "command_s": result["seconds"],
        "test_top1": result["test_top1"] if result["test_top1_tta"] is None else result["test_top1_tta"],
        "test_top1_plain": result["test_top1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10-jpg"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides, e.g. trainer.max_epochs=12")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("error: no GPU: the speed run is measured on a GPU (the experiment's CPU test is make test)")
    workdir = args.out / "airbench"
    write_airbench_tensors(args.data, workdir / "cifar10")
    rows = []
    for run in range(args.runs):
        rows.append({"runner": "airbench94", "run": run, **run_airbench(workdir)})
        rows.append(
            {"runner": "cifar10_speedrun", "run": run, **run_speedrun(args.data, run, args.overrides)}
        )
        for row in rows[-2:]:
            print(
                f"[{run}] {row['runner']:<17} test top-1 {row['test_top1']:.4f}"
                f"  own clock {row['seconds']:6.1f} s"
                f"  whole command {row['command_s']:6.1f} s",
                flush=True,
            )
    summary = {}
    for runner in ("airbench94", "cifar10_speedrun"):
        mine = [r for r in rows if r["runner"] == runner]
        summary[runner] = {
            key: statistics.mean(r[key] for r in mine) for key in ("test_top1", "seconds", "command_s")
        }
    ratio = summary["cifar10_speedrun"]["seconds"] / summary["airbench94"]["seconds"]
    print(f"\n{torch.cuda.get_device_name()}, {args.runs} runs each (means)")
    print("| runner | test top-1 | own clock s | whole command s |")
    print("|---|---|---|---|")
    for runner, s in summary.items():
        print(f"| {runner} | {s['test_top1']:.4f} | {s['seconds']:.1f} | {s['command_s']:.1f} |")
    print(f"time ratio (own clocks) {ratio:.2f}: target <= 1.5 at >= 0.94 test top-1")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speedrun.json").write_text(
        json.dumps(
            {"device": torch.cuda.get_device_name(), "rows": rows, "summary": summary, "ratio": ratio},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
