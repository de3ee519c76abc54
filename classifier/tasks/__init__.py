"""The tasks: one module per root script (train.py runs tasks/train.py, eval.py tasks/evaluate.py, ...),
each a function of its composed config that returns the run's metrics. Importing this package loads
none of them: the command line answers --help and config mistakes before torch and Lightning load."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from omegaconf import DictConfig

# task name (the config's and root script's name) -> "module:function", imported only when it runs.
TASKS = {
    "train": "classifier.tasks.train:train",
    "eval": "classifier.tasks.evaluate:evaluate",
    "predict": "classifier.tasks.predict:predict",
    "export": "classifier.tasks.export:export",
    "probe": "classifier.tasks.probe:probe",
    "zeroshot": "classifier.tasks.zeroshot:zeroshot",
    "fewshot": "classifier.tasks.fewshot:fewshot",
    "audit": "classifier.tasks.audit:audit",
}


def load_task(name: str) -> Callable[[DictConfig], dict[str, float]]:
    """The function of task `name` (TASKS), its module imported now."""
    module, function = TASKS[name].split(":")
    return getattr(importlib.import_module(module), function)
