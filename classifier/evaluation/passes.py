"""Evaluating a model on its val and test splits and writing the run's report files: plain metrics,
then optionally temperature scaling (fitted on val) and test-time augmentation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from classifier.config_values import to_flag
from classifier.data import ClassificationDataModule
from classifier.engine.module import ClassifierModule
from classifier.evaluation.calibration import fit_temperature, temperature_effect
from classifier.evaluation.metrics import ECE_BINS, SUMMARY_METRICS
from classifier.evaluation.reports import EvaluationReport, format_metrics, reliability_bins, write_reports
from classifier.evaluation.tta import TestTimeAugmentation

log = logging.getLogger(__name__)


def evaluate_and_report(
    trainer: L.Trainer,
    module: ClassifierModule,
    datamodule: ClassificationDataModule,
    output_dir: Path,
    source: str | None,
    calibrate: bool = False,
    tta: bool = False,
) -> tuple[dict[str, float], EvaluationReport]:
    """Validate (and test, when the data has a test split) the module's weights; write
    metrics.json, confusion_matrix.png, report.txt, report.json and reliability_diagram.png for the
    test split (else val) into `output_dir`.

    Args:
        source: the weights' checkpoint, named in the reports (None: final weights).
        calibrate: fit a temperature on the val split and report ECE and NLL before and after;
            the metrics are then those of the calibrated model (`module.temperature` keeps it).
        tta: evaluate again with test-time augmentation; its metrics are added as `<split>/<name>_tta`.

    Returns the metrics written to metrics.json, and the report (every process gets both).
    """
    splits = ["val", "test"] if datamodule.has_test else ["val"]
    with module.scoring(keep_outputs=calibrate):
        _run_splits(trainer, module, datamodule, splits)
        calibration = _calibrate(module, splits) if calibrate else None
    metrics = {key: value for split in splits for key, value in _summary(module, split).items()}
    split = splits[-1]
    confidences, correct = module.calibration_data(split)  # collective: every process gathers
    confusion = module.epoch_results(split)["confusion"].cpu().numpy()
    tta_summary = _evaluate_with_tta(trainer, module, datamodule, splits, metrics) if tta else None
    if tta_summary:
        metrics.update({f"{key}_tta": value for key, value in tta_summary.pop("metrics").items()})
    report = EvaluationReport(
        split=split,
        metrics=metrics,
        confusion=confusion,
        class_names=module.class_names,
        checkpoint=source,
        bins=reliability_bins(confidences, correct, ECE_BINS),
        calibration=calibration,
        tta=tta_summary,
        distillation=_distillation_summary(module, metrics, splits),
    )
    if trainer.is_global_zero:
        figure = write_reports(output_dir, report)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(
                    f"{split}/confusion_matrix", figure, global_step=trainer.global_step
                )
                # The writer flushes on a timer: without this the figure can die with the process.
                logger.finalize("success")
        log.info("%s", format_metrics(metrics))
        log.info("reports written to %s", output_dir)
    return metrics, report


def _run_splits(
    trainer: L.Trainer, module: ClassifierModule, datamodule: ClassificationDataModule, splits: list[str]
) -> None:
    trainer.validate(module, datamodule=datamodule, verbose=False)
    if "test" in splits:
        trainer.test(module, datamodule=datamodule, verbose=False)


def _summary(module: ClassifierModule, split: str) -> dict[str, float]:
    """The SUMMARY_METRICS of the last `split` epoch as `<split>/<name>` floats (collective)."""
    values = module.epoch_results(split)
    return {f"{split}/{name}": float(values[name]) for name in SUMMARY_METRICS if name in values}


def _distillation_summary(
    module: ClassifierModule, metrics: dict[str, float], splits: list[str]
) -> dict[str, Any] | None:
    """What the reports and the model card say of a distilled run: the teacher (spec, file hashes,
    description), the loss settings, and per split the teacher's top-1 and the agreement."""
    if module.distillation is None:
        return None
    distillation = module.distillation
    summary = {
        **distillation.identity(),
        "description": distillation.teacher.description if distillation.teacher else None,
        **distillation.settings(),
    }
    for split in splits:
        summary[split] = {
            name: metrics[f"{split}/{name}"]
            for name in ("teacher_top1", "agreement")
            if f"{split}/{name}" in metrics
        }
    return summary


def _calibrate(module: ClassifierModule, splits: list[str]) -> dict[str, Any]:
    """Fit a temperature on the val split's kept logits, rescore every split with it, and return
    the temperature with each split's ECE and NLL before and after (collective)."""
    logits, labels = module.kept_outputs("val")
    temperature = fit_temperature(logits, labels)
    effect = {split: temperature_effect(*module.kept_outputs(split), temperature) for split in splits}
    module.temperature = temperature
    for split in splits:
        module.rescore(split)
    val = effect["val"]
    log.info(
        "temperature scaling: T=%.4f (fitted on %d val images): val ECE %.4f -> %.4f, NLL %.4f -> %.4f",
        temperature,
        len(labels),
        val["ece_before"],
        val["ece_after"],
        val["nll_before"],
        val["nll_after"],
    )
    return {"temperature": temperature, "fitted_on": "val", "images": len(labels), **effect}


def _evaluate_with_tta(
    trainer: L.Trainer,
    module: ClassifierModule,
    datamodule: ClassificationDataModule,
    splits: list[str],
    plain: dict[str, float],
) -> dict[str, Any]:
    """Every split again with test-time augmentation: its metrics, and top-1 with and without it."""
    tta = TestTimeAugmentation(datamodule.input_spec.img_size, flip=datamodule.trains_with_flips)
    with module.scoring(tta=tta):
        _run_splits(trainer, module, datamodule, splits)
        metrics = {
            key: value
            for split in splits
            for key, value in _summary(module, split).items()
            if not key.endswith("/loss")  # the plain network's, as without TTA
        }
    summary: dict[str, Any] = {"views": tta.view_names, "metrics": metrics}
    for split in splits:
        summary[split] = {"top1": metrics[f"{split}/top1"], "top1_without": plain[f"{split}/top1"]}
        log.info(
            "test-time augmentation (%s): %s top-1 %.4f, without %.4f",
            ", ".join(tta.view_names),
            split,
            summary[split]["top1"],
            summary[split]["top1_without"],
        )
    return summary


def evaluation_flags(cfg: DictConfig) -> tuple[bool, bool, bool]:
    """(calibrate, tta, measure_cpu_speed) of a train.py or eval.py config, each checked to be true or
    false: read before the run starts, so a mistyped value is not found after training."""
    return (
        to_flag(cfg.get("calibrate"), "calibrate"),
        to_flag(cfg.get("tta"), "tta"),
        to_flag(cfg.get("measure_cpu_speed", True), "measure_cpu_speed"),
    )
