"""fewshot.py: one command for the table zero-shot vs K-shot linear probe (and k-NN) vs K-shot
fine-tuning, with one model config and one data config. Each cell is a run of zeroshot.py, probe.py or
train.py composed from the same config tree (the model and data overrides given to fewshot.py, plus
`data.shots_per_class=K` and each method's own overrides), in a folder of this run; the probes of
every K reuse one feature cache. `fewshot.md` / `fewshot.csv` hold the table."""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from classifier.config_values import as_list, to_number
from classifier.errors import UserError, first_line_of
from classifier.files import write_atomically
from classifier.tasks import load_task

log = logging.getLogger(__name__)

# method -> (the script whose config a cell composes, fewshot.py's key with that cell's own overrides)
METHODS = {
    "zeroshot": ("zeroshot", "zeroshot"),
    "linear": ("probe", "probe"),
    "knn": ("probe", "probe"),
    "finetune": ("train", "finetune"),
}
TABLE_FILE, CSV_FILE = "fewshot.md", "fewshot.csv"
# fewshot.py's own keys; every other override given to it goes to the runs it makes.
OWN_KEYS = ("shots", "methods", "finetune", "probe", "zeroshot", "metric")


def _shots(value: Any) -> list[int | None]:
    values = as_list(value)
    shots = [None if v is None else to_number(v, "shots", int) for v in values]
    if not shots or any(k is not None and k < 1 for k in shots):
        raise UserError(f"shots={values} needs one or more K >= 1 (null: every training image)")
    return shots


def _methods(value: Any) -> list[str]:
    methods = as_list(value)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UserError(f"methods={methods}: each must be one of {', '.join(METHODS)}")
    return methods


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def shared_overrides() -> list[str]:
    """The overrides this command was given, but its own keys and Hydra's: the model, data, seed..."""
    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if _key(o).split(".")[0] not in (*OWN_KEYS, "hydra")]


def _for_task(overrides: list[str], task: str) -> list[str]:
    # zeroshot.py and probe.py have no trainer, optimizer...: they take the model, data, seed and device;
    # train.py takes every shared override but device (its trainer picks one).
    if task == "train":
        return [o for o in overrides if _key(o) != "device"]
    return [o for o in overrides if _key(o).split(".")[0] in ("model", "clip", "data", "seed", "device")]


def cell_config(task: str, overrides: list[str], output_dir: Path, caller: str = "fewshot") -> DictConfig:
    """conf/<task>.yaml composed with `overrides`, writing into `output_dir`; a mistake in them is one
    line naming `caller` (the command that composed them)."""
    try:
        cfg = compose(config_name=task, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(f"{caller}: {task}.py {' '.join(overrides)}: {first_line_of(exc)}") from exc
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def _cells(methods: list[str], shots: list[int | None], has_text_tower: bool) -> list[tuple[str, int | None]]:
    cells: list[tuple[str, int | None]] = []
    for method in methods:
        if method == "zeroshot":
            if has_text_tower:
                cells.append((method, 0))
            else:
                log.info("fewshot: no zero-shot row: the model config has no CLIP text tower (clip)")
            continue
        cells += [(method, k) for k in shots]
    return cells


def _extra(cfg: DictConfig, key: str) -> list[str]:
    value = cfg.get(key) or []
    return [str(v) for v in as_list(value)]


def fewshot(cfg: DictConfig) -> dict[str, float]:
    """Every (method, K) cell run in <output_dir>/<method>_k<K>/, then fewshot.md and fewshot.csv;
    returns {'<method>_k<K>/<metric>': value}."""
    shots, methods = _shots(cfg.shots), _methods(cfg.methods)
    metric = str(cfg.get("metric") or "top1")
    output_dir = Path(cfg.paths.output_dir)
    shared = shared_overrides()
    rows = []
    for method, k in _cells(methods, shots, bool(cfg.get("clip"))):
        task, own_key = METHODS[method]
        name = f"{method}_k{k}" if k else (method if k == 0 else f"{method}_all")
        overrides = _for_task(shared, task) + _extra(cfg, own_key)
        if task == "probe":
            overrides.append(f"method={method}")
        if k:
            overrides.append(f"data.shots_per_class={k}")
        log.info("fewshot: %s (%s.py %s)", name, task, " ".join(overrides))
        start = time.perf_counter()
        metrics = load_task(task)(cell_config(task, overrides, output_dir / name))
        rows.append(
            {
                "method": method,
                "shots": k,
                "seconds": round(time.perf_counter() - start, 1),
                "dir": name,
                **metrics,
            }
        )
    table = fewshot_markdown(rows, metric, shots)
    write_atomically(table.encode(), output_dir / TABLE_FILE)
    write_atomically(fewshot_csv(rows).encode(), output_dir / CSV_FILE)
    log.info("few-shot table (%s):\n%s", output_dir / TABLE_FILE, table)
    return {f"{row['dir']}/{key}": value for row in rows for key, value in row.items() if "/" in key}


def _split(rows: list[dict[str, Any]], metric: str) -> str:
    return "test" if any(f"test/{metric}" in row for row in rows) else "val"


def fewshot_markdown(rows: list[dict[str, Any]], metric: str, shots: list[int | None]) -> str:
    """Methods down, K across: each cell the test (else val) `metric`; zero-shot in its own column."""
    split = _split(rows, metric)
    columns = (["0 (zero-shot)"] if any(r["shots"] == 0 for r in rows) else []) + [
        f"K={k}" if k else "all" for k in shots
    ]
    lines = [
        f"{split}/{metric} by training images per class (K)",
        "",
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = {r["shots"]: r.get(f"{split}/{metric}") for r in rows if r["method"] == method}
        keys = ([0] if columns[0].startswith("0") else []) + shots
        text = ["" if cells.get(k) is None else f"{cells[k]:.4f}" for k in keys]
        lines.append(f"| {method} | " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def fewshot_csv(rows: list[dict[str, Any]]) -> str:
    metrics = sorted({key for row in rows for key in row if "/" in key})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["method", "shots", *metrics, "seconds", "dir"], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()
