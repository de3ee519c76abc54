"""Command-line entry points: the error handling shared by train.py / eval.py, and the installed
`classifier-train` / `classifier-eval` commands, which read the configs shipped in the package."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from classifier.errors import describe_user_error

log = logging.getLogger("classifier")

_QUIET_WARNINGS = (
    r".*does not have many workers.*",  # in-memory data: workers would only slow it down
    r".*is smaller than the logging interval.*",  # small data sets: epoch-level logs are what we use
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # inside Lightning, nothing to act on
    # Epoch metrics come from torchmetrics, which already reduces them across processes.
    r".*sync_dist=True\)` when logging on epoch level in distributed setting.*",
)


def _send_lightning_logs_to_hydra() -> None:
    # Lightning gives its loggers their own console handler when imported before logging is set
    # up (as here, before Hydra's); let them propagate instead, so its lines reach <run>/train.log.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def run_task(task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> float | None:
    """Run `task`; a user mistake ends the process with one log line and exit status 1 instead of a
    traceback. Returns the `optimized_metric` for Hydra sweepers."""
    _send_lightning_logs_to_hydra()
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            metrics = task(cfg)
        except Exception as exc:
            message = describe_user_error(exc)
            if message is None:
                raise
            log.error("%s", message)
            sys.exit(1)
    return metrics.get(cfg.get("optimized_metric"))


@hydra.main(version_base="1.3", config_path="pkg://classifier.conf", config_name="train")
def train(cfg: DictConfig) -> float | None:
    from classifier.training import train as train_task

    return run_task(train_task, cfg)


@hydra.main(version_base="1.3", config_path="pkg://classifier.conf", config_name="eval")
def evaluate(cfg: DictConfig) -> float | None:
    from classifier.training import evaluate as evaluate_task

    return run_task(evaluate_task, cfg)
