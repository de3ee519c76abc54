"""eval.py as a function of its composed config: a checkpoint's model and data rebuilt, evaluated, and
the same reports as training written into this run's directory."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from classifier.engine.build import build_trainer
from classifier.engine.from_checkpoint import load_model, saved_datamodule
from classifier.evaluation.model_card import write_run_model_card
from classifier.evaluation.passes import evaluate_and_report, evaluation_flags
from classifier.run.checkpoints import save_with_temperature
from classifier.run.trackers import attach_results, existing_run_files

log = logging.getLogger(__name__)


# eval.py calibrate=true leaves the checkpoint it was given as it is, and writes this copy with the
# fitted temperature into its own run directory.
CALIBRATED_CHECKPOINT = "calibrated.ckpt"


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild a checkpoint's model and data (with cfg.data's non-null keys replacing the saved ones),
    evaluate it and write the reports into this run's directory."""
    L.seed_everything(cfg.seed, workers=True)
    data_overrides = OmegaConf.to_container(cfg.get("data") or {}, resolve=True)
    calibrate, tta, measure_cpu_speed = evaluation_flags(cfg)
    saved = load_model(cfg.ckpt_path)
    module, datamodule = saved.module, saved_datamodule(saved, data_overrides)
    trainer = build_trainer(cfg, with_loggers=False)
    output_dir = Path(cfg.paths.output_dir)
    metrics, report = evaluate_and_report(
        trainer,
        module,
        datamodule,
        output_dir,
        source=cfg.ckpt_path,
        calibrate=calibrate,
        tta=tta,
    )
    if trainer.is_global_zero:
        if report.calibration:
            calibrated = output_dir / CALIBRATED_CHECKPOINT
            save_with_temperature(cfg.ckpt_path, module.temperature, calibrated)
            log.info("the checkpoint with its temperature: %s (use it with predict.py)", calibrated)
        write_run_model_card(
            output_dir,
            module,
            datamodule,
            saved.config,
            report,
            cfg.ckpt_path,
            saved.training,
            measure_cpu_speed,
        )
        if cfg.get("attach_to_training_run", True):
            files = existing_run_files(output_dir, with_checkpoint=False)
            attach_results(saved.trackers.get("mlflow"), output_dir, "eval", metrics, files)
    return metrics
