"""train.py's default small-image model against the loop a user writes instead, whole command
against whole script, for the same numbers of epochs.

    python benchmarks/vs_tutorial.py --data /tmp/cifar10-jpg [--epochs 1 2 5] [--out bench-results]

The loop is benchmarks/tutorial_loop.py (the classic tutorial's three-conv CNN, RandomCrop 32 pad 4
+ flip, Adam 1e-3, batch 128, ImageFolder, 2 workers, trained on all of train/); train.py is
`python train.py data=cifar10 data.root=DIR trainer.max_epochs=E` as typed (scratch_cnn, trained on
90% of train/, validated every epoch, the best checkpoint tested, reports and model card written).
Both score all of test/. train.py's decoded cache is warm (decoded by an earlier run) except in
the `cold` row, which decodes the JPEGs first inside its measured time. Prints a markdown table
and writes OUT/vs_tutorial.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_throughput import run_train_py  # noqa: E402


def tutorial(data: Path, epochs: int) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "benchmarks/tutorial_loop.py", "--data", str(data), "--epochs", str(epochs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"test_top1": result["test_top1"], "seconds": time.perf_counter() - started}


def train_py(data: Path, epochs: int, cache_home: str) -> dict:
    """The command as typed (its default logger too), with its own decoded-image cache."""
    overrides = ["data=cifar10", f"data.root={data}", f"trainer.max_epochs={epochs}"]
    result = run_train_py(overrides, env=dict(os.environ, XDG_CACHE_HOME=cache_home), csv_log=False)
    return {"test_top1": result["test_top1"], "seconds": result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10-jpg"))
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache_home:  # empty: the first train.py run decodes
        first = train_py(args.data, args.epochs[0], cache_home)
        rows.append({"epochs": args.epochs[0], "cache": "cold", **first})
        print(f"train.py, {args.epochs[0]} epoch(s), cold cache: {first}", flush=True)
        for epochs in args.epochs:
            loop = tutorial(args.data, epochs)
            print(f"tutorial loop, {epochs} epoch(s): {loop}", flush=True)
            ours = train_py(args.data, epochs, cache_home)
            print(f"train.py, {epochs} epoch(s): {ours}", flush=True)
            rows.append({"epochs": epochs, "cache": "warm", "tutorial": loop, **ours})
    print("\n| epochs | tutorial loop top-1 | tutorial s | train.py top-1 | train.py s | time ratio |")
    print("|---|---|---|---|---|---|")
    for row in rows[1:]:
        loop = row["tutorial"]
        print(
            f"| {row['epochs']} | {loop['test_top1']:.4f} | {loop['seconds']:.0f} | {row['test_top1']:.4f}"
            f" | {row['seconds']:.0f} | {row['seconds'] / loop['seconds']:.2f} |"
        )
    cold = rows[0]
    print(f"cold cache (decoding inside the command), {cold['epochs']} epoch(s): {cold['seconds']:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs_tutorial.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
