"""Evaluating a model on its val and test splits and writing the run's report files."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from classifier.data import ClassificationDataModule
from classifier.metrics import ECE_BINS, summary_of
from classifier.module import ClassifierModule
from classifier.reports import format_metrics, reliability_bins, write_reports

log = logging.getLogger(__name__)


def evaluate_and_report(
    trainer: L.Trainer,
    module: ClassifierModule,
    datamodule: ClassificationDataModule,
    output_dir: Path,
    source: str | None,
) -> dict[str, float]:
    """Validate (and test, when the data has a test split) the module's weights; write
    metrics.json, confusion_matrix.png, report.txt, report.json and reliability_diagram.png for the
    test split (else val) into
    `output_dir`. `source` names the weights' checkpoint in report.txt (None: final weights).
    Returns the metrics written to metrics.json."""
    logged = trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics, split = summary_of(logged[0], "val"), "val"
    if datamodule.has_test:
        logged = trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update(summary_of(logged[0], "test"))
        split = "test"
    confidences, correct = module.calibration_data(split)  # collective: every process gathers
    if trainer.is_global_zero:
        confusion = module.epoch_results(split)["confusion"].cpu().numpy()
        bins = reliability_bins(confidences, correct, ECE_BINS)
        figure = write_reports(output_dir, metrics, confusion, module.class_names, split, source, bins)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(
                    f"{split}/confusion_matrix", figure, global_step=trainer.global_step
                )
                # The writer flushes on a timer: without this the figure can die with the process.
                logger.finalize("success")
        log.info("%s", format_metrics(metrics))
        log.info("reports written to %s", output_dir)
    return metrics
