"""The report files of a run directory: metrics.json, confusion_matrix.png, report.txt."""

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


def classification_report_text(confusion: np.ndarray, class_names: Sequence[str]) -> str:
    """Per-class precision, recall, F1 and support (scikit-learn's report), from a confusion matrix."""
    y_true, y_pred = labels_from_confusion(confusion)
    return classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        digits=4,
        zero_division=0,
    )


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
) -> Figure:
    """Write metrics.json, confusion_matrix.png and report.txt for `split`; returns the figure."""
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
    return fig
