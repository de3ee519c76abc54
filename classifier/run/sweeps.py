"""Multirun summaries: after `python train.py -m ...` the sweep directory holds summary.csv and
summary.md, one row per job (its overrides, status, best epoch, final metrics, wall time), sorted by
`optimized_metric`, with mean ± std per setting when the sweep repeats settings over seeds or folds
(seed=..., data.fold=...); the end of a sweep prints a view of it that fits a terminal.

summary.csv is for programs: every column, metrics at full precision. summary.md and the console are
for people: numbers to 4 significant digits, the columns that differ between jobs first (the
overrides, then the metrics), and what is the same in every job in one line above the table.

Each job writes job.json into its own directory as it ends (status, the error's first line, wall
time), and the summary is rebuilt from the job directories after every job, so it is there and
complete however the sweep ends: when it stops early (a failed job makes Hydra stop with an error
after the batch; Ctrl-C) the job that was running is recorded as interrupted and the summary is
written and printed as the process exits. To rebuild it from an existing sweep directory:
`python -m classifier.run.sweeps SWEEP_DIR`.

This module is imported by Hydra at start-up (the SweepSummary callback): nothing heavy at import.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import math
import os
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass
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
# Override keys that repeat a setting: a summary gives each setting's mean ± std over them.
REPEATED = {"seed": "seeds", "data.fold": "folds"}
SIGNIFICANT_DIGITS = 4  # of the numbers people read (summary.md, the console); the CSV keeps all
CONSOLE_WIDTH = 100  # characters of the view printed at the end of a sweep
MAX_CELL_CHARS = 30  # of an override's value in a table (a long path, a list)
INTERRUPTED = "stopped by Ctrl-C or a signal while it ran; its log says where it stopped"


def first_line(error: BaseException) -> str:
    from classifier.errors import describe_user_error

    message = describe_user_error(error) or str(error).strip() or type(error).__name__
    return message.splitlines()[0][:500]


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): job.json per job, summary.csv / summary.md per sweep,
    and the summary on the console when the sweep ends, however it ends.

    Hydra calls on_multirun_end only when every job has returned: a job's Ctrl-C (a SystemExit from
    run_task) or a failed job (raised by Hydra after the batch) ends the process without it, and
    without the running job's on_job_end. So the summary is also written at exit, with the job that
    was running marked interrupted."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._running: DictConfig | None = None  # the config of the job that has started, not ended

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.register(self.sweep_ended_early, Path(config.hydra.sweep.dir))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.time()
        if config.hydra.mode == RunMode.MULTIRUN:
            self._running = config
            # A job.json of an earlier sweep in this folder would tell this job's story otherwise.
            (Path(config.hydra.runtime.output_dir) / JOB_FILE).unlink(missing_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        self._running = None
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        error = None
        if job_return.status != JobStatus.COMPLETED:
            try:
                job_return.return_value  # noqa: B018  (re-raises what the job raised)
            except Exception as exc:
                error = first_line(exc)
        self._write_job(config, "completed" if error is None else "failed", error)
        write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self.sweep_ended_early)
        print(write_summary(Path(config.hydra.sweep.dir)), end="", flush=True)

    def sweep_ended_early(self, sweep_dir: Path) -> None:
        """At exit of a sweep that did not reach on_multirun_end: the running job's job.json (as
        interrupted), then the summary, written and printed."""
        if self._running is not None:
            self._write_job(self._running, "interrupted", INTERRUPTED)
            self._running = None
        if sweep_dir.is_dir() and job_dirs(sweep_dir):
            print("\n" + write_summary(sweep_dir), end="", flush=True)

    def _write_job(self, config: DictConfig, status: str, error: str | None) -> None:
        record = {
            "job": str(config.hydra.job.num),
            "status": status,
            "error": error,
            "seconds": round(time.time() - self._started, 1) if self._started else None,
            "pid": os.getpid(),
            "overrides": list(config.hydra.overrides.task),
            "optimized_metric": OmegaConf.select(config, "optimized_metric"),
        }
        job_file = Path(config.hydra.runtime.output_dir) / JOB_FILE
        write_atomically((json.dumps(record, indent=2) + "\n").encode(), job_file)


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


# -- the columns ------------------------------------------------------------------------------------
def significant(value: float | None, digits: int = SIGNIFICANT_DIGITS) -> str:
    """`value` to `digits` significant digits for people, trailing zeros kept so that a column's
    decimals line up (0.9500, 0.004623); whole numbers of more digits as they are (12345), tiny
    ones as 1.234e-05."""
    if value is None:
        return ""
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    exponent = math.floor(math.log10(abs(value)))
    if exponent >= digits - 1:
        return f"{value:.0f}"
    if exponent < -4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits - 1 - exponent}f}"


def shown_override(value: str) -> str:
    """An override's value for people: a float with more than SIGNIFICANT_DIGITS digits (Optuna's
    0.004622589001020831) rounded to them, anything else as typed (0.001, 1e-4, resnet18)."""
    try:
        number = float(value)
    except ValueError:
        return value
    short = f"{number:.{SIGNIFICANT_DIGITS}g}"
    return short if len(short) < len(value) else value


def mean_and_std(values: list[float]) -> str:
    """'mean ± std' (sample std; 0 for one value), the std to as many decimals as the mean."""
    mean = significant(statistics.mean(values))
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    decimals = len(mean.partition(".")[2]) if "e" not in mean else None
    return f"{mean} ± {significant(spread) if decimals is None else f'{spread:.{decimals}f}'}"


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


def _compact_rank(metric: str, optimized: str | None) -> tuple:
    """Which metrics a narrow view keeps first: the optimised one, then top-1, loss, ECE, top-5 and
    NLL (which equals the loss until a temperature or TTA changes it), val before test."""
    split, _, name = metric.partition("/")
    order = ("top1", "loss", "ece", "top5", "nll")
    base = name.removesuffix("_tta")
    return (
        metric != optimized,
        order.index(base) if base in order else len(order),
        name.endswith("_tta"),
        {"val": 0, "test": 1}.get(split, 2),
        metric,
    )


def common_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """The overrides every job has with the same value."""
    keys = list(dict.fromkeys(key for row in rows for key in row["overrides"]))
    values = {key: {row["overrides"].get(key) for row in rows} for key in keys}
    return [f"{key}={next(iter(v))}" for key, v in values.items() if len(v) == 1 and None not in v]


@dataclass
class Table:
    """A table for people: its columns' names, the rows' cells as text, which columns are numbers
    (right-aligned), and in which order a narrow view keeps columns (lowest first)."""

    headers: list[str]
    cells: list[list[str]]
    numeric: list[bool]
    keep_order: list[tuple]

    def markdown(self) -> list[str]:
        lines = ["| " + " | ".join(self.headers) + " |"]
        lines.append("|" + "".join("---:|" if number else "---|" for number in self.numeric))
        lines += ["| " + " | ".join(_cell(text) for text in row) + " |" for row in self.cells]
        return lines

    def console(self, width: int) -> tuple[list[str], int]:
        """The table aligned in columns two spaces apart, with as many columns as fit in `width`
        (in keep_order); returns its lines and how many columns were left out."""
        widths = [max(len(text) for text in [header, *texts]) for header, texts in self._column_texts()]
        kept: set[int] = set()
        for index in sorted(range(len(self.headers)), key=lambda i: self.keep_order[i]):
            if kept and sum(widths[i] + 2 for i in kept) + widths[index] > width:
                break
            kept.add(index)
        shown = sorted(kept)

        def line(texts: list[str]) -> str:
            cells = [
                texts[i].rjust(widths[i]) if self.numeric[i] else texts[i].ljust(widths[i]) for i in shown
            ]
            return "  ".join(cells).rstrip()

        return [line(self.headers), *(line(row) for row in self.cells)], len(self.headers) - len(shown)

    def _column_texts(self) -> list[tuple[str, list[str]]]:
        return [(header, [row[i] for row in self.cells]) for i, header in enumerate(self.headers)]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def _job_columns(rows: list[dict[str, Any]], metric: str | None) -> list[tuple[str, bool, tuple, list[str]]]:
    """Every column a person may read about the jobs: (name, is a number, keep order, cells)."""
    override_keys, metric_keys = _columns(rows)
    columns = [
        ("job", True, (0,), [str(row["job"]) for row in rows]),
        ("status", False, (1,), [row["status"] for row in rows]),
    ]
    columns += [
        (key, False, (2, i), [_clipped(shown_override(row["overrides"].get(key, ""))) for row in rows])
        for i, key in enumerate(override_keys)
    ]
    columns += [
        (key, True, (3, *_compact_rank(key, metric)), [significant(row["metrics"].get(key)) for row in rows])
        for key in metric_keys
    ]
    return columns + [
        ("best epoch", True, (4, 1), [_whole(row["best_epoch"]) for row in rows]),
        ("params (M)", True, (4, 3), [significant(_millions(row["parameters"])) for row in rows]),
        ("images/s", True, (4, 2), [_whole(row["images_per_sec"]) for row in rows]),
        ("seconds", True, (4, 0), [_whole(row["seconds"]) for row in rows]),
    ]


def _millions(count: float | None) -> float | None:
    return None if count is None else count / 1e6


def _whole(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def jobs_table(rows: list[dict[str, Any]], metric: str | None) -> tuple[Table, list[str]]:
    """One row per job, with the columns whose values differ between jobs, and 'name value' of those
    that are the same in every job (of a sweep of one job, every column is in the table)."""
    table = Table([], [[] for _ in rows], [], [])
    same = []
    for name, numeric, keep, cells in _job_columns(rows, metric):
        if name != "job" and len(rows) > 1 and len(set(cells)) == 1:
            if cells[0]:
                same.append(f"{name} {cells[0]}")
            continue
        table.headers.append(name)
        table.numeric.append(numeric)
        table.keep_order.append(keep)
        for row_cells, text in zip(table.cells, cells, strict=True):
            row_cells.append(text)
    return table, same


def _repeat_keys(rows: list[dict[str, Any]]) -> list[str]:
    varied, _ = _columns(rows)
    return [key for key in REPEATED if key in varied]


def repeats_table(rows: list[dict[str, Any]], metric: str | None) -> tuple[str, Table] | None:
    """Mean ± std of every metric that differs between jobs, over the completed jobs of each setting
    (the varied overrides but the seed and the fold), best first; None when the sweep repeats no
    setting over seeds or folds. Returns a title ('seeds', 'folds', 'seeds and folds') and the table."""
    repeated = _repeat_keys(rows)
    if not repeated:
        return None
    varied, metric_keys = _columns(rows)
    setting_keys = [key for key in varied if key not in repeated]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=_job_number):
        if row["status"] == "completed":
            setting = tuple((key, row["overrides"].get(key, "")) for key in setting_keys)
            groups.setdefault(setting, []).append(row)
    if not any(len(members) > 1 for members in groups.values()):
        return None
    # as in the jobs' table: a metric the same in every job (to the digits shown) is left out
    metric_keys = [key for key in metric_keys if len({significant(r["metrics"].get(key)) for r in rows}) > 1]
    runs = " and ".join(REPEATED[key] for key in repeated)
    ordered = sorted(groups.items(), key=lambda item: _group_sort_key(item[1], metric))
    table = Table(
        ["setting", "runs" if len(repeated) > 1 else REPEATED[repeated[0]], *metric_keys],
        [],
        [False, True, *[False] * len(metric_keys)],
        [(0,), (1,), *[(2, *_compact_rank(key, metric)) for key in metric_keys]],
    )
    for setting, members in ordered:
        name = " ".join(f"{key}={shown_override(value)}" for key, value in setting) or "(all)"
        cells = []
        for key in metric_keys:
            values = [m["metrics"][key] for m in members if key in m["metrics"]]
            cells.append(mean_and_std(values) if values else "")
        table.cells.append([_clipped(name), str(len(members)), *cells])
    return runs, table


def _group_sort_key(members: list[dict[str, Any]], metric: str | None):
    values = [m["metrics"][metric] for m in members if metric and metric in m["metrics"]]
    mean = statistics.mean(values) if values else math.nan
    return _sort_key(metric)({"metrics": {metric: mean}, "job": members[0]["job"]})


# -- writing ----------------------------------------------------------------------------------------
def summary_csv(rows: list[dict[str, Any]]) -> str:
    """One row per job, for programs: the varied overrides, then the metrics at full precision, the
    other measurements, and every override in the last column."""
    override_keys, metric_keys = _columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    measured = ["best_epoch", "parameters", "train_images_per_sec", "seconds"]
    writer.writerow(["job", "status", *override_keys, *metric_keys, *measured, "error", "overrides"])
    for row in rows:
        writer.writerow(
            [
                row["job"],
                row["status"],
                *[row["overrides"].get(key, "") for key in override_keys],
                *[_full(row["metrics"].get(key)) for key in metric_keys],
                "" if row["best_epoch"] is None else row["best_epoch"],
                "" if row["parameters"] is None else row["parameters"],
                "" if row["images_per_sec"] is None else row["images_per_sec"],
                "" if row["seconds"] is None else row["seconds"],
                row["error"] or "",
                " ".join(f"{key}={value}" for key, value in row["overrides"].items()),
            ]
        )
    return buffer.getvalue()


def _full(value: float | None) -> str:
    return "" if value is None else repr(value)


def _headline(rows: list[dict[str, Any]], metric: str | None) -> str:
    failed = sum(row["status"] != "completed" for row in rows)
    lower = metric is not None and metric.rsplit("/", 1)[-1].startswith(LOWER_IS_BETTER)
    return f"{len(rows)} jobs, {failed} not completed; sorted by {metric or 'job'}" + (
        " (lower is better)" if lower else ""
    )


def summary_markdown(rows: list[dict[str, Any]], metric: str | None, sweep_dir: Path) -> str:
    table, same = jobs_table(rows, metric)
    common = common_overrides(rows)
    lines = [f"# Sweep {sweep_dir}", "", _headline(rows, metric), ""]
    if common:
        lines += [f"Every job: `{' '.join(common)}`", ""]
    if same:
        lines += [f"Same in every job: {', '.join(same)}", ""]
    lines += table.markdown()
    errors = [row for row in rows if row["error"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- job {row['job']}: {_cell(row['error'])}" for row in errors]
    repeats = repeats_table(rows, metric)
    if repeats:
        runs, table = repeats
        lines += ["", f"## Mean ± std over {runs}", "", *table.markdown()]
    return "\n".join(lines) + "\n"


def summary_console(rows: list[dict[str, Any]], metric: str | None, sweep_dir: Path, width: int) -> str:
    """The summary as a terminal shows it at the end of a sweep: the columns that differ between
    jobs, as many as fit in `width` characters, and where the whole summary is."""
    table, same = jobs_table(rows, metric)
    wrap = textwrap.TextWrapper(width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    sweep_dir = _shown_dir(sweep_dir)
    headline = f"Sweep {sweep_dir}: {_headline(rows, metric)}"
    # a long path on a line of its own rather than wrapped after "Sweep"
    lines = [headline] if len(headline) <= width else [f"Sweep {sweep_dir}:", f"  {_headline(rows, metric)}"]
    common = common_overrides(rows)
    if common:
        lines += wrap.wrap(f"Every job: {' '.join(common)}")
    if same:
        lines += wrap.wrap(f"Same in every job: {', '.join(same)}")
    shown, left_out = table.console(width)
    lines += ["", *shown]
    lines += [_clipped_line(f"job {row['job']}: {row['error']}", width) for row in rows if row["error"]]
    repeats = repeats_table(rows, metric)
    if repeats:
        runs, table = repeats
        more, left = table.console(width)
        lines += ["", f"Mean ± std over {runs}:", *more]
        left_out += left
    where = f"{sweep_dir / SUMMARY_MD} (all columns), {SUMMARY_CSV} (full precision)"
    lines += [""] + wrap.wrap((f"{left_out} more columns in " if left_out else "Summary: ") + where)
    return "\n".join(lines) + "\n"


def _shown_dir(folder: Path) -> Path:
    """`folder` relative to the working folder when it is inside it (outputs/multirun/...), as typed."""
    try:
        return folder.relative_to(Path.cwd())
    except ValueError:
        return folder


def _clipped_line(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def console_width() -> int:
    """CONSOLE_WIDTH, or a narrower terminal's width."""
    try:
        return min(CONSOLE_WIDTH, os.get_terminal_size(sys.stdout.fileno()).columns)
    except (OSError, ValueError):  # not a terminal
        return CONSOLE_WIDTH


def write_summary(sweep_dir: Path) -> str:
    """Write summary.csv and summary.md of `sweep_dir` (atomically); returns the console view."""
    sweep_dir = Path(sweep_dir).resolve()
    rows, metric = summarize(sweep_dir)
    write_atomically(summary_csv(rows).encode(), sweep_dir / SUMMARY_CSV)
    write_atomically(summary_markdown(rows, metric, sweep_dir).encode(), sweep_dir / SUMMARY_MD)
    return summary_console(rows, metric, sweep_dir, console_width())


def main(argv: list[str] | None = None) -> int:
    """python -m classifier.run.sweeps SWEEP_DIR: rebuild the summary files and print their console view."""
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
