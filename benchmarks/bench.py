"""`make bench`: how fast the framework trains, loads and predicts on this machine; a table and JSON.

    python benchmarks/bench.py --data /tmp/cifar10-jpg [--out bench-results] [--only train pipeline ...]

Sections (each can be run alone with --only):
  train     train.py against a plain PyTorch loop on one epoch of the CIFAR-10 JPEGs, same model
            (scratch_cnn), data, batch size and epochs: images/s, their ratio, test top-1, for
            two seeds; train.py with the per-image loader, with the decoded cache alone (float32,
            NCHW) and with its defaults (benchmarks/train_throughput.py).
  pipeline  the input pipeline alone (no model): train batches/s of the per-image loader with 0, 1
            and 2 workers, of the decoded cache, and the cache's one-time decoding speed.
  inference ms/image and images/s at batch 1 and 64 for scratch_cnn (32 px), resnet18, resnet50 and
            vit_small (224 px), float32 NCHW and as training computes them here (NHWC, bf16 on CPUs
            with bf16 arithmetic).
  startup   seconds from process start to the first training step of the default run (digits).
  memory    peak resident memory of each train.py run (from the train section).
  scaling   seconds per 50,000-image training epoch at 32, 64, 128 and 224 px and batch 32 and 128
            for resnet18 and vit_tiny: scaling.png and the figures.
Writes OUT/bench.json (every figure, the machine, the date) and OUT/scaling.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_throughput  # noqa: E402

from classifier.data import CIFAR10DataModule  # noqa: E402
from classifier.data.loaders import default_num_workers  # noqa: E402
from classifier.engine.precision import cpu_computes_bf16  # noqa: E402
from classifier.evaluation.machine import cpu_inference_speed, hardware, software  # noqa: E402
from classifier.models import create_model  # noqa: E402

SECTIONS = ("train", "pipeline", "inference", "startup", "scaling")
INFERENCE_MODELS = {"scratch_cnn": 32, "resnet18": 224, "resnet50": 224, "vit_small_patch16_224": 224}
SCALING_MODELS = ("resnet18", "vit_tiny_patch16_224")
SCALING_SIDES = (32, 64, 128, 224)
SCALING_BATCHES = (32, 128)
EPOCH_IMAGES = 50_000


def pipeline(data: Path, batch_size: int, batches: int = 60) -> list[dict]:
    """Training batches per second out of each loader, nothing else running."""
    rows = []

    def timed(module: CIFAR10DataModule) -> float:
        loader = iter(module.train_dataloader())
        for _ in range(3):  # workers starting, first batches
            next(loader)
        started = time.perf_counter()
        for _ in range(batches):
            next(loader)
        return batches * batch_size / (time.perf_counter() - started)

    def module(**options) -> CIFAR10DataModule:
        dm = CIFAR10DataModule(root=str(data), batch_size=batch_size, download=False, **options)
        dm.setup("fit")
        return dm

    for workers in (0, 1, 2):
        rate = timed(module(num_workers=workers, decoded_cache=False))
        rows.append({"loader": f"per-image, {workers} workers", "images_per_s": rate})
        print(f"  per-image loader, {workers} workers: {rate:8.0f} images/s", flush=True)
    with (
        tempfile.TemporaryDirectory() as cache,  # a cold cache: the decoding itself, timed
        mock.patch.dict(os.environ, XDG_CACHE_HOME=cache),
    ):
        cold = module(decoded_cache=True)
        started = time.perf_counter()
        cold.decoded_arrays("train")
        decode = len(cold.dataset("train")) / (time.perf_counter() - started)
        rate = timed(cold)
    rows.append({"loader": "decoded cache", "images_per_s": rate})
    rows.append({"loader": "decoded cache: decoding once", "images_per_s": decode})
    print(f"  decoded cache:                 {rate:8.0f} images/s (decoded once at {decode:.0f} images/s)")
    return rows


def inference() -> list[dict]:
    rows = []
    fast = torch.bfloat16 if cpu_computes_bf16() else None
    for name, side in INFERENCE_MODELS.items():
        net = create_model(name, num_classes=10 if name == "scratch_cnn" else 1000, img_size=side)
        plain = cpu_inference_speed(net, side)
        rows.append({"model": name, "img_size": side, "mode": "fp32 NCHW", **plain})
        net = net.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=fast or torch.float32, enabled=fast is not None):
            tuned = cpu_inference_speed(net, side)
        mode = "bf16 NHWC" if fast else "fp32 NHWC"
        rows.append({"model": name, "img_size": side, "mode": mode, **tuned})
        for row in rows[-2:]:
            print(
                f"  {name:<22} {side:>3} px {row['mode']:<10}"
                f" batch 1: {row['batch_1_ms_per_image']:7.2f} ms/image"
                f"  batch 64: {row['batch_64_images_per_s']:8.1f} images/s",
                flush=True,
            )
    return rows


def startup() -> dict:
    result = train_throughput.run_train_py(["trainer.max_epochs=1", "trainer.limit_val_batches=1"])
    print(f"  default run (digits): first training step after {result['startup_s']:.1f} s", flush=True)
    return result


def training_step_seconds(name: str, side: int, batch: int) -> float:
    """Median seconds of a training step (forward, backward, AdamW) with train.py's CPU defaults."""
    net = create_model(name, num_classes=10, img_size=side)
    convolutional = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) > 1
    layout = torch.channels_last if convolutional else torch.contiguous_format
    net = net.to(memory_format=layout).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, side, side).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (batch,))
    times = []
    for step in range(3):  # one warm-up, two timed
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_computes_bf16()):
            loss = torch.nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def scaling(out: Path) -> list[dict]:
    rows = []
    for name in SCALING_MODELS:
        for batch in SCALING_BATCHES:
            for side in SCALING_SIDES:
                step = training_step_seconds(name, side, batch)
                epoch = step * EPOCH_IMAGES / batch
                rows.append({"model": name, "batch": batch, "img_size": side, "epoch_s": epoch})
                print(f"  {name:<22} batch {batch:>3} {side:>3} px: {epoch:8.0f} s per epoch", flush=True)
    plot_scaling(rows, out / "scaling.png")
    return rows


def plot_scaling(rows: list[dict], path: Path) -> None:
    """Epoch seconds against image side, one line per model and batch size, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    figure, axis = plt.subplots(figsize=(6, 4))
    for name in SCALING_MODELS:
        for batch in SCALING_BATCHES:
            points = [
                (r["img_size"], r["epoch_s"]) for r in rows if r["model"] == name and r["batch"] == batch
            ]
            axis.plot(*zip(*points, strict=True), marker="o", label=f"{name}, batch {batch}")
    axis.set(xscale="log", yscale="log", xlabel="image side (px)")
    axis.xaxis.set_minor_locator(NullLocator())  # only the measured sides are labelled
    axis.set_xticks(SCALING_SIDES, [str(s) for s in SCALING_SIDES])
    axis.set_ylabel(f"seconds per {EPOCH_IMAGES:,}-image training epoch")
    axis.set_title(f"Training cost on {torch.get_num_threads()} CPU threads (train.py's CPU defaults)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10-jpg"), help="ImageFolder with train/")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=default_num_workers())
    args = parser.parse_args()
    needs_data = {"train", "pipeline"} & set(args.only)
    if needs_data and not (args.data / "train").is_dir():
        sys.exit(
            f"error: --data {args.data} has no train/ folder (extract ../shared/data/cifar10-jpg.tar.gz)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "date": datetime.date.today().isoformat(),
        "hardware": hardware(),
        "software": software(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_computes_bf16(),
    }
    print(
        f"{results['hardware']}, {torch.get_num_threads()} torch threads,"
        f" bf16 arithmetic: {results['cpu_bf16']}"
    )

    def save() -> None:
        (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")

    if "train" in args.only:
        print(
            f"(1) one epoch of CIFAR-10 JPEGs, scratch_cnn, batch {args.batch_size}, {args.workers} workers"
        )
        results["train"] = train_throughput.compare(args.data, args.batch_size, args.workers, args.seeds)
        save()
    if "pipeline" in args.only:
        print("(2) input pipeline alone, training batches")
        results["pipeline"] = pipeline(args.data, args.batch_size)
        save()
    if "inference" in args.only:
        print("(3) inference on the CPU")
        results["inference"] = inference()
        save()
    if "startup" in args.only:
        print("(4) start-up")
        results["startup"] = startup()
        save()
    if "scaling" in args.only:
        print("(6) scaling: training epoch time by image size and batch size")
        results["scaling"] = scaling(args.out)
        save()
    print_summary(results)
    print(f"written: {args.out / 'bench.json'}" + (", scaling.png" if "scaling" in results else ""))


def print_summary(results: dict) -> None:
    if "train" in results:
        print("\ntrain.py vs the plain loop (one epoch, images/s steady state)")
        print(f"| {'runner':<28} | seed | images/s | ratio | test top-1 | command s | peak RSS MiB |")
        print(f"|{'-' * 30}|------|----------|-------|------------|-----------|--------------|")
        for r in results["train"]:
            seconds = f"{r['seconds']:9.0f}" if "seconds" in r else " " * 9
            rss = f"{r['peak_rss_mib']:12.0f}" if "peak_rss_mib" in r else " " * 12
            print(
                f"| {r['runner']:<28} | {r['seed']:>4} | {r['images_per_s']:8.1f} | {r['ratio']:5.2f} |"
                f" {r['test_top1']:10.4f} | {seconds} | {rss} |"
            )
        startups = [r["startup_s"] for r in results["train"] if r.get("startup_s")]
        if startups:
            print(
                "(4) start-up to the first training step, CIFAR-10 runs:"
                f" {min(startups):.1f}-{max(startups):.1f} s"
            )
    if "startup" in results:
        s = results["startup"]
        print(f"(4) start-up to the first training step, default run: {s['startup_s']:.1f} s")
        print(f"(5) peak resident memory, default run: {s['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
