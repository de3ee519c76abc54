"""The float and the int8 ONNX models side by side: top-1, ECE and agreement on the checkpoint's
held-out images, CPU speed in onnxruntime, file sizes; what the sidecars and the model card record."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from classifier.data.splits import targets_of
from classifier.evaluation.machine import hardware, median_speed
from classifier.evaluation.metrics import create_ece, create_top1

log = logging.getLogger(__name__)

EVAL_BATCH = 64


@dataclass
class HeldOut:
    """The images both models are evaluated on: `load(i)` gives the i-th as the model's input tensor."""

    split: str
    indices: list[int]
    labels: list[int]
    load: Callable[[int], torch.Tensor]

    def batches(self) -> Any:
        for start in range(0, len(self.indices), EVAL_BATCH):
            chosen = self.indices[start : start + EVAL_BATCH]
            yield torch.stack([self.load(i) for i in chosen]).numpy()


def held_out_images(datamodule: Any, transform: Callable, limit: int | None) -> HeldOut:
    """The checkpoint's test split when its data has one, else val; at most `limit` images, spread
    evenly over the split (so its class mix stays about the same)."""
    split = "test" if datamodule.has_test else "val"
    dataset = datamodule.dataset(split)
    labels = targets_of(dataset)
    count = len(labels) if limit is None else min(limit, len(labels))
    indices = sorted({int(i) for i in np.linspace(0, len(labels) - 1, num=count).round()})
    return HeldOut(split, indices, [labels[i] for i in indices], lambda i: transform(dataset[i][0]))


def cpu_session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # both models on the same threads: a fair comparison
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def model_figures(
    logits: np.ndarray, labels: Sequence[int], temperature: float, num_classes: int
) -> tuple[np.ndarray, dict[str, float]]:
    """softmax(logits / temperature), with top-1 and ECE as the project's metrics define them."""
    probs = torch.softmax(torch.from_numpy(logits).double() / temperature, dim=1).float()
    target = torch.as_tensor(list(labels))
    top1 = float(create_top1(num_classes)(probs, target))
    ece = float(create_ece(num_classes)(probs, target))
    return probs.numpy(), {"top1": round(top1, 6), "ece": round(ece, 6)}


def compare_on(
    held_out: HeldOut, paths: dict[str, Path], input_name: str, temperature: float, num_classes: int
) -> dict[str, Any]:
    """Both models' top-1 and ECE on `held_out`, their differences and how often they agree."""
    sessions = {name: cpu_session(path, torch.get_num_threads()) for name, path in paths.items()}
    logits: dict[str, list[np.ndarray]] = {name: [] for name in paths}
    for batch in held_out.batches():
        for name, session in sessions.items():
            logits[name].append(session.run(None, {input_name: batch})[0])
    probs, figures = {}, {}
    for name in paths:
        probs[name], figures[name] = model_figures(
            np.concatenate(logits[name]), held_out.labels, temperature, num_classes
        )
    agree = float((probs["float"].argmax(1) == probs["int8"].argmax(1)).mean())
    return {
        "split": held_out.split,
        "images": len(held_out.indices),
        **figures,
        "difference": {
            "top1_points": round(100 * (figures["int8"]["top1"] - figures["float"]["top1"]), 3),
            "ece": round(figures["int8"]["ece"] - figures["float"]["ece"], 6),
        },
        "top1_agreement": round(agree, 6),
        "max_abs_probability_difference": round(float(np.abs(probs["float"] - probs["int8"]).max()), 6),
    }


def onnx_speed(paths: dict[str, Path], input_name: str, img_size: int) -> dict[str, Any]:
    """ms/image at batch 1 and images/s at batch 64 of each model in onnxruntime on this CPU, on the
    same number of threads (torch's), as machine.cpu_inference_speed measures a network."""
    threads = torch.get_num_threads()
    speed: dict[str, Any] = {"threads": threads, "runtime": f"onnxruntime {onnxruntime.__version__}"}
    for name, path in paths.items():
        session = cpu_session(path, threads)
        speed[name] = median_speed(lambda x, s=session: s.run(None, {input_name: x.numpy()}), img_size)
    speed["int8_speedup_batch_64"] = round(
        speed["int8"]["batch_64_images_per_s"] / speed["float"]["batch_64_images_per_s"], 2
    )
    speed["hardware"] = hardware()
    return speed


def top1_drop_warning(comparison: dict[str, Any], max_drop: float) -> str | None:
    """One line when int8's top-1 is more than `max_drop` (a fraction) below float's."""
    float_top1, int8_top1 = comparison["float"]["top1"], comparison["int8"]["top1"]
    if not float_top1 - int8_top1 > max_drop:
        return None
    return (
        f"int8 top-1 {int8_top1:.3f} is {100 * (float_top1 - int8_top1):.1f} points below float"
        f" {float_top1:.3f} on the {comparison['images']:,} {comparison['split']} images"
        f" (max_top1_drop={max_drop:g})"
    )
