"""What a run ran on and how fast its model predicts: the hardware and software versions, CPU
inference latency and throughput, and the process's peak memory (model_card.yaml and the benchmarks)."""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

SOFTWARE = ("torch", "torchvision", "lightning", "timm", "torchmetrics", "classifier")

# Batch sizes of the CPU inference figures: latency of one image, throughput of a batch.
LATENCY_BATCH, THROUGHPUT_BATCH = 1, 64


def cpu_inference_speed(
    net: nn.Module, img_size: int, batch_sizes: Sequence[int] = (LATENCY_BATCH, THROUGHPUT_BATCH)
) -> dict[str, Any]:
    """Median seconds per forward pass of a CPU copy of `net` in eval mode (no gradients) on
    random inputs, per batch size (median_speed). Returns ms per image at the smallest batch and
    images/s at each."""
    model = copy.deepcopy(net).cpu().eval()
    if getattr(model, "_compiled_call_impl", None) is not None:  # module.compile=true: time it plain
        model._compiled_call_impl = None
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "input": [3, img_size, img_size]}
    with torch.inference_mode():
        result.update(median_speed(model, img_size, batch_sizes))
    return result


def median_speed(
    predict: Callable[[torch.Tensor], object],
    img_size: int,
    batch_sizes: Sequence[int] = (LATENCY_BATCH, THROUGHPUT_BATCH),
) -> dict[str, float]:
    """Median seconds of `predict` on a batch of random images, per batch size: at least 3 timed
    calls after one warm-up, more while they take under a quarter of a second in all. Returns ms per
    image at the first batch size and images/s at each (the figures of cpu_inference_speed and of an
    exported model's)."""
    result: dict[str, float] = {}
    for batch in batch_sizes:
        inputs = torch.randn(batch, 3, img_size, img_size)
        predict(inputs)  # warm-up: first-call allocations and kernel selection
        times: list[float] = []
        while len(times) < 3 or (sum(times) < 0.25 and len(times) < 50):
            started = time.perf_counter()
            predict(inputs)
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        if batch == batch_sizes[0]:
            result[f"batch_{batch}_ms_per_image"] = round(1000 * seconds / batch, 3)
        result[f"batch_{batch}_images_per_s"] = round(batch / seconds, 1)
    return result


def peak_resident_mib() -> float | None:
    """This process's peak resident memory in MiB (Linux: VmHWM, which starts again at exec, unlike
    getrusage's maxrss, which keeps a forking parent's size); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def hardware() -> dict[str, Any]:
    """The machine: CPU model and cores, and the GPUs torch sees."""
    info: dict[str, Any] = {"cpu": _cpu_name(), "cpu_cores": os.cpu_count(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def software() -> dict[str, str | None]:
    # torch's own version string names its build (2.14.1+cu130, +cpu)
    versions = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
    }
    for name in SOFTWARE:
        if name in versions:
            continue
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
