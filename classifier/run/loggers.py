"""Experiment loggers: TensorBoard with a usable HPARAMS tab, and a CSV log that survives a resumed run."""

from __future__ import annotations

import csv
from argparse import Namespace
from collections.abc import Sequence
from typing import Any

from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from torch.utils.tensorboard.summary import hparams


class _AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; this one continues it,
    taking its header as the known columns (new columns still rewrite the file with all rows)."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            self.metrics_keys = next(csv.reader(file), [])


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv keeps the rows of earlier runs in the same directory, so a
    resumed run's log holds its whole history."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


DEFAULT_HPARAMS_METRICS = ("val/top1", "val/ece", "test/top1")


class RunTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger whose hyperparameters reach TensorBoard's HPARAMS tab, each run
    beside the metrics that compare runs (`hparams_metrics`).

    Lightning writes the hparams entry only together with metric values it logs as scalars at
    that moment (or a placeholder `hp_metric`); at the start of a run there are none, so nothing
    was written. Here the entry names the metrics and TensorBoard shows, per run, the last value
    of each of those scalars as training and testing log them.
    """

    def __init__(
        self, *args: Any, hparams_metrics: Sequence[str] = ("val/top1", "val/ece", "test/top1"), **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.hparams_metrics = list(hparams_metrics)

    @rank_zero_only
    def log_hyperparams(
        self,
        params: dict[str, Any] | Namespace,
        metrics: dict[str, Any] | None = None,
        step: int | None = None,
    ) -> None:
        super().log_hyperparams(params, metrics, step)  # hparams.yaml, and the entry when given metrics
        if metrics is not None or not self.hparams_metrics:
            return
        flat = self._sanitize_params(_flatten_dict(_convert_params(params)))
        # The values only declare the metrics; TensorBoard reads them from the scalars of those tags.
        experiment, session_start, session_end = hparams(flat, dict.fromkeys(self.hparams_metrics, 0.0))
        writer = self.experiment._get_file_writer()
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary)
