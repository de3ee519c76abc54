"""model_card.yaml: what a run's model is, what it was trained on and how, how well it does
(accuracy and calibration on val and test), how fast it predicts on a CPU, and on what hardware
and software it was made."""

from __future__ import annotations

import copy
import datetime
import os
import platform
import statistics
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from classifier.atomic import write_atomically
from classifier.data.transforms import InputSpec
from classifier.reports import EvaluationReport

MODEL_CARD_FILE = "model_card.yaml"
# Batch sizes of the CPU inference figures: latency of one image, throughput of a batch.
LATENCY_BATCH, THROUGHPUT_BATCH = 1, 64
SOFTWARE = ("torch", "torchvision", "lightning", "timm", "torchmetrics", "classifier")


def cpu_inference_speed(
    net: nn.Module, img_size: int, batch_sizes: Sequence[int] = (LATENCY_BATCH, THROUGHPUT_BATCH)
) -> dict[str, Any]:
    """Median seconds per forward pass of a CPU copy of `net` in eval mode (no gradients) on
    random inputs, per batch size: at least 3 timed passes after one warm-up, more while they take
    under a quarter of a second in all. Returns ms per image at the smallest batch and images/s at each."""
    model = copy.deepcopy(net).cpu().eval()
    if getattr(model, "_compiled_call_impl", None) is not None:  # module.compile=true: time it plain
        model._compiled_call_impl = None
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "input": [3, img_size, img_size]}
    with torch.inference_mode():
        for batch in batch_sizes:
            inputs = torch.randn(batch, 3, img_size, img_size)
            model(inputs)  # warm-up: first-call allocations and kernel selection
            times: list[float] = []
            while len(times) < 3 or (sum(times) < 0.25 and len(times) < 50):
                started = time.perf_counter()
                model(inputs)
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


def count_parameters(net: nn.Module) -> dict[str, int]:
    return {
        "parameters": sum(p.numel() for p in net.parameters()),
        "trainable_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
    }


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


def _split_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """{'val/top1': x, 'test/ece': y} as {'val': {'top1': x}, 'test': {'ece': y}}."""
    nested: dict[str, dict[str, float]] = {}
    for key, value in sorted(metrics.items()):
        split, _, name = key.partition("/")
        nested.setdefault(split, {})[name] = round(float(value), 6)
    return nested


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    trainer = config.get("trainer") or {}
    data = config.get("data") or {}
    return {
        "optimizer": config.get("optimizer"),
        "scheduler": config.get("scheduler"),
        "augment": config.get("augment"),
        "label_smoothing": (config.get("module") or {}).get("label_smoothing"),
        "batch_size": data.get("batch_size"),
        "max_epochs": trainer.get("max_epochs"),
        "precision": trainer.get("precision"),
        "seed": config.get("seed"),
        "callbacks": sorted(config.get("callbacks") or {}),
    }


def model_card(
    *,
    net: nn.Module,
    class_names: Sequence[str],
    input_spec: InputSpec,
    config: dict[str, Any],
    report: EvaluationReport,
    split_sizes: dict[str, int],
    checkpoint: str | None,
    temperature: float,
    training: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card's content (see the module docstring); `training` holds the run's seconds,
    epochs, steps and speed when known, `inference` cpu_inference_speed's figures."""
    model_cfg = dict(config.get("model") or {})
    data_cfg = dict(config.get("data") or {})
    card: dict[str, Any] = {
        "model": {
            "name": model_cfg.get("name"),
            "architecture": f"{type(net).__module__}.{type(net).__qualname__}",
            **count_parameters(net),
            "pretrained": bool(model_cfg.get("pretrained")),
            "weights": model_cfg.get("weights"),
            "checkpoint": checkpoint,
            "temperature": temperature,
        },
        "input": input_spec.to_dict(),
        "data": {
            "module": str(data_cfg.get("_target_", "")).rsplit(".", 1)[-1],
            "root": data_cfg.get("root"),
            "csv": data_cfg.get("csv"),
            "num_classes": len(class_names),
            "class_names": list(class_names),
            "images": split_sizes,
        },
        "recipe": _recipe(config),
        "metrics": _split_metrics(report.metrics),
        "report_split": report.split,
    }
    if report.calibration:
        card["calibration"] = report.calibration
    if report.tta:
        card["tta"] = {key: value for key, value in report.tta.items() if key != "metrics"}
    if inference:
        card["inference_cpu"] = inference
    if training:
        card["training"] = training
    card["hardware"] = hardware()
    card["software"] = software()
    card["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return card


def _plain(value: Any) -> Any:
    """Only the types YAML's safe dumper writes: str/int/float/bool/None, lists and dicts of them."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):  # subclasses too: torch.__version__ is a str subclass
        if isinstance(value, kind):
            return kind(value)
    if hasattr(value, "item"):  # numpy and torch scalars
        return _plain(value.item())
    return str(value)


def write_model_card(output_dir: Path, card: dict[str, Any]) -> Path:
    card = _plain(card)
    path = Path(output_dir) / MODEL_CARD_FILE
    # safe_dump: plain YAML whatever the strings hold (class names are folder names, may read `${x}`)
    text = yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=110)
    write_atomically(text.encode(), path)
    return path
