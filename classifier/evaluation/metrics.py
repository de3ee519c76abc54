"""Epoch-level classification metrics (torchmetrics accumulates over the whole split, across devices)."""

from __future__ import annotations

import re

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
)

# The metrics every run reports in metrics.json, as <split>/<name>.
# teacher_top1 and agreement: with a teacher (distill=...), its top-1 and the student's agreement with it.
SUMMARY_METRICS = ("top1", "top5", "ece", "nll", "loss", "teacher_top1", "agreement")
ECE_BINS = 15


def create_top1(num_classes: int) -> MulticlassAccuracy:
    """Top-1 accuracy as every split reports it: micro-averaged, the fraction of images whose top
    class is right (torchmetrics' default, macro, would average the per-class accuracies)."""
    return MulticlassAccuracy(num_classes, top_k=1, average="micro")


def create_ece(num_classes: int) -> MulticlassCalibrationError:
    """Expected calibration error as every split reports it: 15 equal-width confidence bins, the
    bins' |accuracy - confidence| weighted by their share of the images. Update with probabilities."""
    return MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1")


def create_eval_metrics(num_classes: int) -> MetricCollection:
    """top1, top5 (only with 5 or more classes), 15-bin ECE, per-class accuracy and the confusion
    matrix. Update with class probabilities (ECE needs them; the rest are indifferent)."""
    metrics = {
        "top1": create_top1(num_classes),
        "ece": create_ece(num_classes),
        "class_acc": MulticlassAccuracy(num_classes, average=None),
        "confusion": MulticlassConfusionMatrix(num_classes),
    }
    if num_classes >= 5:
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, compute_groups=False)


def metric_key_part(class_name: str) -> str:
    """A class name usable inside a metric key (TensorBoard tags split on '/')."""
    return re.sub(r"[\s/]+", "_", class_name.strip()) or "_"
