"""The report files of a run directory: metrics.json, confusion_matrix.png, report.txt, report.json,
reliability_diagram.png."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import classification_report

from classifier.atomic import write_atomically

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
REPORT_FILE = "report.txt"
REPORT_JSON_FILE = "report.json"
RELIABILITY_FILE = "reliability_diagram.png"


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{key}={value:.4f}" for key, value in sorted(metrics.items()))


def write_metrics(path: Path, metrics: dict[str, float]) -> None:
    write_atomically((json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode(), path)


def labels_from_confusion(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) with exactly the counts of `confusion` (rows: true class, columns: predicted)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    true, pred = np.nonzero(confusion)
    counts = confusion[true, pred]
    return np.repeat(true, counts), np.repeat(pred, counts)


def _classification_report(confusion: np.ndarray, class_names: Sequence[str], **options):
    y_true, y_pred = labels_from_confusion(confusion)
    labels = list(range(len(class_names)))
    return classification_report(
        y_true, y_pred, labels=labels, target_names=list(class_names), zero_division=0, **options
    )


def classification_report_text(confusion: np.ndarray, class_names: Sequence[str]) -> str:
    """Per-class precision, recall, F1 and support (scikit-learn's report), from a confusion matrix."""
    return _classification_report(confusion, class_names, digits=4)


def classification_report_dict(confusion: np.ndarray, class_names: Sequence[str]) -> dict:
    """The same report as a dict: {class name: {precision, recall, f1-score, support}, 'accuracy',
    'macro avg', 'weighted avg'}."""
    return _classification_report(confusion, class_names, output_dict=True)


def reliability_bins(confidences: np.ndarray, correct: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Per confidence bin (n_bins equal widths over [0, 1], binned as torchmetrics bins for its ECE):
    image count, mean confidence and accuracy (NaN for empty bins). ECE is
    sum(count / N * |accuracy - confidence|) over the bins."""
    confidences, correct = np.asarray(confidences, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    boundaries = np.linspace(0, 1, n_bins + 1)
    index = np.clip(np.digitize(confidences, boundaries) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, confidences, minlength=n_bins) / count
        accuracy = np.bincount(index, correct, minlength=n_bins) / count
    return {
        "lower": boundaries[:-1],
        "upper": boundaries[1:],
        "count": count,
        "confidence": confidence,
        "accuracy": accuracy,
    }


def expected_calibration_error(bins: dict[str, np.ndarray]) -> float:
    used = bins["count"] > 0
    weights = bins["count"][used] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"][used] - bins["confidence"][used])))


def reliability_figure(bins: dict[str, np.ndarray], title: str) -> Figure:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, and how
    many images fall in each bin."""
    fig = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    width = bins["upper"] - bins["lower"]
    used = bins["count"] > 0
    top.bar(
        bins["lower"][used],
        bins["accuracy"][used],
        width=width[used],
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set(
        title=f"{title}, ECE {expected_calibration_error(bins):.4f}",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    top.legend(loc="upper left")
    bottom.bar(bins["lower"], bins["count"], width=width, align="edge", color="tab:gray")
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="images")
    return fig


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Counts, coloured by the fraction of each true class; numbers written when there is room."""
    confusion = np.asarray(confusion, dtype=np.int64)
    n = len(class_names)
    side = min(40.0, max(5.0, 0.45 * n + 2))
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    row_fraction = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(row_fraction, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    ax.set(
        title=title,
        xlabel="predicted",
        ylabel="true",
        xticks=range(n),
        yticks=range(n),
        xticklabels=class_names,
        yticklabels=class_names,
    )
    ax.tick_params(axis="x", labelrotation=90)
    if n <= 30:
        for (i, j), count in np.ndenumerate(confusion):
            color = "white" if row_fraction[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomically(buffer.getvalue(), path)


def write_reports(
    output_dir: Path,
    metrics: dict[str, float],
    confusion: np.ndarray,
    class_names: Sequence[str],
    split: str,
    checkpoint: str | None,
    bins: dict[str, np.ndarray] | None = None,
) -> Figure:
    """Write metrics.json, confusion_matrix.png, report.txt and report.json for `split`, and
    reliability_diagram.png from the confidence `bins`; returns the confusion figure."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(output_dir / METRICS_FILE, metrics)
    fig = confusion_figure(
        confusion, class_names, f"{split} confusion matrix ({int(np.sum(confusion))} images)"
    )
    save_figure(fig, output_dir / CONFUSION_FILE)
    header = [
        f"split: {split} ({int(np.sum(confusion))} images)",
        f"checkpoint: {checkpoint or 'final weights (no best checkpoint)'}",
        format_metrics(metrics),
        "",
    ]
    text = "\n".join(header) + classification_report_text(confusion, class_names)
    write_atomically(text.encode(), output_dir / REPORT_FILE)
    report = {
        "split": split,
        "images": int(np.sum(confusion)),
        "checkpoint": checkpoint,
        "metrics": metrics,
        "classes": classification_report_dict(confusion, class_names),
    }
    if bins is not None:
        report["reliability"] = {
            key: [None if np.isnan(v) else float(v) for v in values] for key, values in bins.items()
        } | {"ece": expected_calibration_error(bins)}
    write_atomically((json.dumps(report, indent=2) + "\n").encode(), output_dir / REPORT_JSON_FILE)
    if bins is not None:
        title = f"{split} reliability ({int(np.sum(confusion))} images)"
        save_figure(reliability_figure(bins, title), output_dir / RELIABILITY_FILE)
    return fig
