"""The report files of a run directory: metrics.json, confusion_matrix.png, report.txt, report.json,
reliability_diagram.png."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import classification_report

from classifier.evaluation.fonts import use_fonts_for
from classifier.files import write_atomically

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
REPORT_FILE = "report.txt"
REPORT_JSON_FILE = "report.json"
RELIABILITY_FILE = "reliability_diagram.png"
CURVES_FILE = "curves.png"
# What curves.png draws, per epoch: loss and top-1, train against val.
CURVE_METRICS = ("train/loss", "val/loss", "train/top1", "val/top1")


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


MIN_BAR_ALPHA = 0.15  # the shade of a reliability bar of one image among many


def reliability_figure(bins: dict[str, np.ndarray], title: str) -> Figure:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, and how
    many images fall in each bin. A bar's shade and the number above it are its bin's image count:
    a bin of one image is right or wrong entirely, and must not look as solid as a full one."""
    fig = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    width = bins["upper"] - bins["lower"]
    used = bins["count"] > 0
    counts = bins["count"][used]
    colours = np.tile(to_rgba("tab:blue"), (len(counts), 1))
    colours[:, 3] = MIN_BAR_ALPHA + (1 - MIN_BAR_ALPHA) * counts / max(counts.max(initial=0), 1)
    top.bar(
        bins["lower"][used],
        bins["accuracy"][used],
        width=width[used],
        align="edge",
        edgecolor="black",
        color=colours,
        label="accuracy (shade: images in the bin)",
    )
    centres = bins["lower"][used] + width[used] / 2
    for x, accuracy, count in zip(centres, bins["accuracy"][used], counts, strict=True):
        top.text(x, accuracy + 0.01, f"{count:.0f}", ha="center", va="bottom", fontsize=7)
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    fig.suptitle(f"{title}, ECE {expected_calibration_error(bins):.4f}")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.08), yticks=np.linspace(0, 1, 6))  # room for counts
    # Above the axes: inside, the legend would hide the bars (and counts) of low confidences.
    top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, fontsize=8, frameon=False)
    bottom.bar(bins["lower"], bins["count"], width=width, align="edge", color="tab:gray")
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="images")
    return fig


# Above this many classes the matrix has no room for class names on its axes, or numbers in its cells.
MAX_NAMED_CLASSES = 100
MAX_NUMBERED_CLASSES = 30
CELL_FILL = 0.8  # the widest number in a cell takes this share of the cell's width, at most
MAX_CELL_FONT = 16  # points: numbers in the cells of a 2-class matrix get no larger


def confusion_panel_side(n: int) -> float:
    """Inches of one panel's matrix: 0.35 a class, between 3.5 and 28."""
    return min(28.0, max(3.5, 0.35 * n))


def cell_font_size(n: int, widest: int) -> float:
    """Points for numbers of `widest` characters in the cells of an n-class matrix: as large as fits."""
    cell = 72 * confusion_panel_side(n) / n  # points
    return float(np.clip(CELL_FILL * cell / (0.6 * max(widest, 1)), 5, MAX_CELL_FONT))


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Two panels: the counts, and each row normalised to the fraction of its true class (the
    per-class recall on the diagonal); numbers written, sized to the cells, when there is room."""
    confusion = np.asarray(confusion, dtype=np.int64)
    n = len(class_names)
    named = n <= MAX_NAMED_CLASSES
    if named:
        use_fonts_for(class_names)
    side = confusion_panel_side(n)
    # Room beside and below each matrix for the class names (about 0.08 inch a character at 10 pt).
    margin = 0.08 * max((len(str(name)) for name in class_names), default=0) + 0.9 if named else 0.6
    fig = Figure(figsize=(2 * (side + margin + 1.2), side + margin + 0.9), layout="constrained")
    fig.suptitle(title)
    row_fraction = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    panels = (
        ("counts", "images", confusion, max(1, int(confusion.max())), "{:d}"),
        ("row-normalised", "fraction of the true class", row_fraction, 1, "{:.2f}"),
    )
    for ax, (name, label, values, vmax, number) in zip(fig.subplots(1, 2), panels, strict=True):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
        fig.colorbar(image, ax=ax, shrink=0.8, label=label)
        ax.set(xlabel="predicted", ylabel="true", title=name)
        if named:
            ax.set(xticks=range(n), yticks=range(n), xticklabels=class_names, yticklabels=class_names)
            ax.tick_params(axis="x", labelrotation=90)
        if n <= MAX_NUMBERED_CLASSES:
            texts = [number.format(value) for value in values.ravel()]
            size = cell_font_size(n, max(map(len, texts)))
            for (i, j), text in zip(np.ndindex(values.shape), texts, strict=True):
                color = "white" if row_fraction[i, j] > 0.5 else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=size)
    return fig


MAX_EPOCH_TICKS = 15  # up to this many epochs, curves.png has a tick at each


def epoch_ticks(ax: Axes, epochs: Sequence[float]) -> None:
    """Whole epochs on the x axis: each one when there are few (matplotlib's own ticks go to 0.945,
    0.960... around a single epoch), else as many as matplotlib places, at whole numbers."""
    if not epochs:
        return
    first, last = int(min(epochs)), int(max(epochs))
    if last - first < MAX_EPOCH_TICKS:
        ax.set_xticks(range(first, last + 1))
        ax.set_xlim(first - 0.5, last + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curves_figure(history: Sequence[dict[str, float]]) -> Figure:
    """Loss and top-1 per epoch, train against val, from one {epoch, metric: value} dict per epoch."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    labels = {"train": "train (augmented, averaged over the epoch)", "val": "val (at the epoch's end)"}
    for ax, (name, title) in zip(fig.subplots(1, 2), (("loss", "loss"), ("top1", "top-1")), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = [(e["epoch"], e[f"{split}/{name}"]) for e in history if f"{split}/{name}" in e]
            if points:
                epochs, values = zip(*points, strict=True)
                ax.plot(epochs, values, style, markersize=3, label=labels[split])
        ax.set(xlabel="epoch", ylabel=name, title=title)
        epoch_ticks(ax, [e["epoch"] for e in history])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomically(buffer.getvalue(), path)


@dataclass
class EvaluationReport:
    """What the report files of one evaluation say.

    split: the split the per-class report, confusion matrix and reliability diagram are of (test
        when the data has one, else val).
    metrics: metrics.json's content (every split).
    confusion: counts, rows the true class, columns the predicted one.
    checkpoint: the weights' checkpoint (None: a run's final weights).
    bins: the reliability bins of `split` (reliability_bins).
    calibration: temperature scaling's result (temperature, fitted_on, images, and per split
        ece/nll before and after), when it ran.
    tta: test-time augmentation's views and per-split top-1 with and without it, when it ran.
    distillation: a distilled run's teacher (kind, teacher, teacher_weights, sha256, description),
        loss settings and per split the teacher's top-1 and the student's agreement with it.
    """

    split: str
    metrics: dict[str, float]
    confusion: np.ndarray
    class_names: Sequence[str]
    checkpoint: str | None
    bins: dict[str, np.ndarray] | None = None
    calibration: dict[str, Any] | None = None
    tta: dict[str, Any] | None = field(default=None)
    distillation: dict[str, Any] | None = None

    @property
    def images(self) -> int:
        return int(np.sum(self.confusion))


def report_text(report: EvaluationReport) -> str:
    """report.txt: the split, the weights, the metrics, calibration and TTA lines, then the per-class
    precision / recall / F1 / support."""
    lines = [
        f"split: {report.split} ({report.images} images)",
        f"checkpoint: {report.checkpoint or 'final weights (no best checkpoint)'}",
        format_metrics(report.metrics),
    ]
    if report.calibration:
        cal = report.calibration
        lines.append(
            f"temperature scaling: T={cal['temperature']:.4f}, fitted on val ({cal['images']} images)"
        )
        for split in ("val", "test"):
            if split in cal:
                c = cal[split]
                lines.append(
                    f"  {split}: ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f},"
                    f" NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}"
                )
    if report.distillation:
        lines += distillation_lines(report.distillation)
    if report.tta:
        lines.append(f"test-time augmentation: {', '.join(report.tta['views'])}")
        for split in ("val", "test"):
            if split in report.tta:
                t = report.tta[split]
                lines.append(f"  {split}: top-1 {t['top1']:.4f} with, {t['top1_without']:.4f} without")
    return "\n".join([*lines, ""]) + "\n" + classification_report_text(report.confusion, report.class_names)


def distillation_lines(summary: dict[str, Any]) -> list[str]:
    """report.txt's lines on a distilled run: the teacher, then its top-1 and the agreement per split."""
    settings = ", ".join(
        f"{key}={summary[key]}" for key in ("alpha", "temperature", "weight") if key in summary
    )
    lines = [f"teacher ({summary['kind']} distillation, {settings}): {summary.get('description')}"]
    for split in ("val", "test"):
        if summary.get(split):
            s = summary[split]
            lines.append(
                f"  {split}: teacher top-1 {s.get('teacher_top1', float('nan')):.4f},"
                f" student/teacher agreement {s.get('agreement', float('nan')):.4f}"
            )
    return lines


def _plain(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def report_dict(report: EvaluationReport) -> dict[str, Any]:
    """report.json: everything report.txt says, the confusion matrix and the reliability bins."""
    content: dict[str, Any] = {
        "split": report.split,
        "images": report.images,
        "checkpoint": report.checkpoint,
        "metrics": report.metrics,
        "classes": classification_report_dict(report.confusion, report.class_names),
        "class_names": list(report.class_names),
        "confusion": np.asarray(report.confusion, dtype=np.int64).tolist(),
    }
    if report.bins is not None:
        content["reliability"] = {key: _plain(values) for key, values in report.bins.items()} | {
            "ece": expected_calibration_error(report.bins)
        }
    if report.calibration is not None:
        content["calibration"] = report.calibration
    if report.tta is not None:
        content["tta"] = report.tta
    if report.distillation is not None:
        content["distillation"] = report.distillation
    return content


def write_reports(output_dir: Path, report: EvaluationReport) -> Figure:
    """Write metrics.json, confusion_matrix.png, report.txt, report.json and (with bins)
    reliability_diagram.png; returns the confusion figure."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(output_dir / METRICS_FILE, report.metrics)
    title = f"{report.split} confusion matrix ({report.images} images)"
    fig = confusion_figure(report.confusion, report.class_names, title)
    save_figure(fig, output_dir / CONFUSION_FILE)
    write_atomically(report_text(report).encode(), output_dir / REPORT_FILE)
    content = json.dumps(report_dict(report), indent=2) + "\n"
    write_atomically(content.encode(), output_dir / REPORT_JSON_FILE)
    if report.bins is not None:
        title = f"{report.split} reliability ({report.images} images)"
        save_figure(reliability_figure(report.bins, title), output_dir / RELIABILITY_FILE)
    return fig
