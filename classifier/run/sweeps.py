"""Multirun summaries: after `python train.py -m ...` the sweep directory holds summary.csv and
summary.md, one row per job (its overrides, status, best epoch, final metrics, wall time), sorted by
`optimized_metric`, with mean ± std over folds for cross-validation sweeps (data.fold=...).

Each job writes job.json into its own directory as it ends (status, the error's first line, wall
time), and the summary is rebuilt from the job directories after every job, so it is there and
complete however the sweep ends (a failed job makes Hydra stop with an error after the batch). To
rebuild it from an existing sweep directory: `python -m classifier.run.sweeps SWEEP_DIR`.

This module is imported by Hydra at start-up (the SweepSummary callback): nothing heavy at import.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from classifier.files import write_atomically

JOB_FILE = "job.json"
SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"
# Metrics where lower is better; every other metric sorts highest first.
LOWER_IS_BETTER = ("loss", "nll", "ece")
# Override keys that do not tell jobs apart (Hydra's own, paths).
HIDDEN_OVERRIDES = ("hydra.", "hydra/")
FOLD_KEY = "data.fold"


def first_line(error: BaseException) -> str:
    from classifier.errors import describe_user_error

    message = describe_user_error(error) or str(error).strip() or type(error).__name__
    return message.splitlines()[0][:500]


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): job.json per job, summary.csv / summary.md per sweep."""

    def __init__(self) -> None:
        self._started: float | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        error = None
        if job_return.status != JobStatus.COMPLETED:
            try:
                job_return.return_value  # noqa: B018  (re-raises what the job raised)
            except Exception as exc:
                error = first_line(exc)
        record = {
            "job": str(config.hydra.job.num),
            "status": "completed" if error is None else "failed",
            "error": error,
            "seconds": round(time.time() - self._started, 1) if self._started else None,
            "pid": os.getpid(),
            "overrides": list(config.hydra.overrides.task),
            "optimized_metric": OmegaConf.select(config, "optimized_metric"),
        }
        write_atomically((json.dumps(record, indent=2) + "\n").encode(), job_dir / JOB_FILE)
        write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # The table, on the console where the sweep ran (a failed job ends a sweep before this).
        print(write_summary(Path(config.hydra.sweep.dir)), end="", flush=True)


# -- reading a sweep directory ----------------------------------------------------------------------
def _overrides(job_dir: Path, record: dict[str, Any]) -> dict[str, str]:
    listed = record.get("overrides")
    if listed is None:
        saved = job_dir / ".hydra" / "overrides.yaml"
        listed = list(OmegaConf.load(saved)) if saved.is_file() else []
    pairs = {}
    for override in listed:
        key, _, value = str(override).partition("=")
        if not key.startswith(HIDDEN_OVERRIDES):
            pairs[key.lstrip("+~")] = value
    return pairs


def _best_epoch(job_dir: Path) -> int | None:
    """The 1-based epoch of checkpoints/best.ckpt (saved at the end of that epoch)."""
    best = job_dir / "checkpoints" / "best.ckpt"
    if not best.is_file():
        return None
    import torch

    try:
        epoch = torch.load(best, map_location="cpu", weights_only=True, mmap=True).get("epoch")
    except Exception:  # a damaged file: the summary still lists the job
        return None
    return int(epoch) + 1 if isinstance(epoch, int) else None


def _from_model_card(job_dir: Path) -> dict[str, Any]:
    """The network's parameters and its training speed, from the job's model_card.yaml."""
    path = job_dir / "model_card.yaml"
    try:
        card = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except yaml.YAMLError:
        card = {}
    return {
        "parameters": (card.get("model") or {}).get("parameters"),
        "images_per_sec": (card.get("training") or {}).get("images_per_sec"),
    }


def read_job(job_dir: Path) -> dict[str, Any]:
    """One summary row from a job directory: its job.json (a job killed before it ended has none:
    'unfinished'), overrides, metrics.json and best epoch."""
    job_file = job_dir / JOB_FILE
    record = json.loads(job_file.read_text()) if job_file.is_file() else {}
    metrics_file = job_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return {
        "job": record.get("job", job_dir.name),
        "status": record.get("status", "unfinished"),
        "overrides": _overrides(job_dir, record),
        "best_epoch": _best_epoch(job_dir),
        **_from_model_card(job_dir),
        "metrics": {key: float(value) for key, value in metrics.items()},
        "seconds": record.get("seconds"),
        "error": record.get("error"),
        "optimized_metric": record.get("optimized_metric"),
    }


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep: its subfolders with a .hydra/ folder, in job order."""
    found = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(found, key=lambda p: (int(p.name) if p.name.isdigit() else math.inf, p.name))


def _sort_key(metric: str | None):
    lower = metric is not None and metric.rsplit("/", 1)[-1].startswith(LOWER_IS_BETTER)

    def key(row: dict[str, Any]):
        value = row["metrics"].get(metric) if metric else None
        missing = value is None or math.isnan(value)
        return (missing, 0.0 if missing else (value if lower else -value), _job_number(row))

    return key


def _job_number(row: dict[str, Any]) -> int:
    return int(row["job"]) if str(row["job"]).isdigit() else 0


def summarize(sweep_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of a sweep, best first by its optimized_metric (failed and unfinished jobs last)."""
    rows = [read_job(job_dir) for job_dir in job_dirs(sweep_dir)]
    metric = next((row["optimized_metric"] for row in rows if row["optimized_metric"]), None)
    return sorted(rows, key=_sort_key(metric)), metric


# -- writing ----------------------------------------------------------------------------------------
def _columns(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The override keys whose values differ between jobs (what the sweep varies), and the metrics:
    val before test, each in the order runs report them (top1, top5, ece, nll, loss), then others."""
    keys = list(dict.fromkeys(key for row in rows for key in row["overrides"]))
    varied = [key for key in keys if len({row["overrides"].get(key) for row in rows}) > 1]
    metrics = {key for row in rows for key in row["metrics"]}
    order = ("top1", "top5", "ece", "nll", "loss")

    def rank(key: str):
        split, _, name = key.partition("/")
        base = name.removesuffix("_tta")
        return ({"val": 0, "test": 1}.get(split, 2), order.index(base) if base in order else len(order), key)

    return varied, sorted(metrics, key=rank)


def common_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """The overrides every job has with the same value."""
    keys = list(dict.fromkeys(key for row in rows for key in row["overrides"]))
    values = {key: {row["overrides"].get(key) for row in rows} for key in keys}
    return [f"{key}={next(iter(v))}" for key, v in values.items() if len(v) == 1 and None not in v]


def summary_csv(rows: list[dict[str, Any]]) -> str:
    """One row per job: the varied overrides as columns, and all of them in the last column."""
    override_keys, metric_keys = _columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["job", "status", *override_keys, "best_epoch", "parameters", "train_images_per_sec"]
    header += [*metric_keys, "seconds", "error", "overrides"]
    writer.writerow(header)
    for row in rows:
        writer.writerow(
            [
                row["job"],
                row["status"],
                *[row["overrides"].get(key, "") for key in override_keys],
                "" if row["best_epoch"] is None else row["best_epoch"],
                "" if row["parameters"] is None else row["parameters"],
                "" if row["images_per_sec"] is None else row["images_per_sec"],
                *[_plain(row["metrics"].get(key)) for key in metric_keys],
                "" if row["seconds"] is None else row["seconds"],
                row["error"] or "",
                " ".join(f"{key}={value}" for key, value in row["overrides"].items()),
            ]
        )
    return buffer.getvalue()


def _plain(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def folds_table(rows: list[dict[str, Any]], varied: list[str], metric_keys: list[str]) -> list[str]:
    """Mean ± std over the completed folds of each setting (the varied overrides but data.fold)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=_job_number):
        if FOLD_KEY in row["overrides"] and row["status"] == "completed":
            setting = tuple((k, row["overrides"].get(k, "")) for k in varied if k != FOLD_KEY)
            groups.setdefault(setting, []).append(row)
    if not groups:
        return []
    lines = ["", "## Cross-validation: mean ± std over folds", ""]
    lines.append("| setting | folds | " + " | ".join(metric_keys) + " |")
    lines.append("|---" * (len(metric_keys) + 2) + "|")
    for setting, members in groups.items():
        cells = []
        for key in metric_keys:
            values = [m["metrics"][key] for m in members if key in m["metrics"]]
            if not values:
                cells.append("")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
        name = " ".join(f"{k}={v}" for k, v in setting) or "(all)"
        lines.append(f"| {_cell(name)} | {len(members)} | " + " | ".join(cells) + " |")
    return lines


def summary_markdown(rows: list[dict[str, Any]], metric: str | None, sweep_dir: Path) -> str:
    override_keys, metric_keys = _columns(rows)
    failed = sum(row["status"] != "completed" for row in rows)
    lower = metric is not None and metric.rsplit("/", 1)[-1].startswith(LOWER_IS_BETTER)
    common = common_overrides(rows)
    lines = [
        f"# Sweep {sweep_dir}",
        "",
        f"{len(rows)} jobs, {failed} not completed; sorted by {metric or 'job'}"
        + (" (lower is better)" if lower else ""),
        "",
        *([f"Every job: `{' '.join(common)}`", ""] if common else []),
        "| job | status | "
        + " | ".join([*override_keys, "best epoch", "params (M)", "images/s", *metric_keys, "seconds"])
        + " |",
        "|---" * (len(override_keys) + len(metric_keys) + 6) + "|",
    ]
    for row in rows:
        values = [
            row["job"],
            row["status"],
            *[row["overrides"].get(key, "") for key in override_keys],
            "" if row["best_epoch"] is None else row["best_epoch"],
            "" if row["parameters"] is None else f"{row['parameters'] / 1e6:.2f}",
            "" if row["images_per_sec"] is None else f"{row['images_per_sec']:.0f}",
            *["" if row["metrics"].get(key) is None else f"{row['metrics'][key]:.4f}" for key in metric_keys],
            "" if row["seconds"] is None else f"{row['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(_cell(v) for v in values) + " |")
    errors = [row for row in rows if row["error"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- job {row['job']}: {_cell(row['error'])}" for row in errors]
    lines += folds_table(rows, override_keys, metric_keys)
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> str:
    """Write summary.csv and summary.md of `sweep_dir` (atomically); returns the markdown."""
    sweep_dir = Path(sweep_dir).resolve()
    rows, metric = summarize(sweep_dir)
    markdown = summary_markdown(rows, metric, sweep_dir)
    write_atomically(summary_csv(rows).encode(), sweep_dir / SUMMARY_CSV)
    write_atomically(markdown.encode(), sweep_dir / SUMMARY_MD)
    return markdown


def main(argv: list[str] | None = None) -> int:
    """python -m classifier.run.sweeps SWEEP_DIR: rebuild the summary files and print summary.md."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m classifier.run.sweeps SWEEP_DIR  (e.g. outputs/multirun/2026-12-01/10-00-00)")
        return 2
    sweep_dir = Path(argv[0]).expanduser()
    if not sweep_dir.is_dir() or not job_dirs(sweep_dir):
        print(f"ERROR: {sweep_dir} is not a sweep directory (no job folders with a .hydra/ inside)")
        return 1
    print(write_summary(sweep_dir), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
