"""train.py and eval.py as functions of their composed config."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from classifier.builders import (
    build_datamodule,
    build_module,
    build_trainer,
    load_run,
    pretrained_input_overrides,
    run_config,
)
from classifier.callbacks import RunMetadata
from classifier.checkpoints import load_checkpoint, resume_checkpoint
from classifier.errors import UserError
from classifier.evaluation import evaluate_and_report

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then evaluate the best checkpoint and write the run's reports; returns metrics.json's content."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg.data, pretrained_input_overrides(cfg.data, cfg.model))
    module = build_module(cfg, datamodule)
    config = run_config(cfg)
    metadata = RunMetadata(config, datamodule.class_names, datamodule.input_spec.to_dict())
    trainer = build_trainer(cfg, extra_callbacks=[metadata])
    for logger in trainer.loggers:
        logger.log_hyperparams(config)
    ckpt_path = resume_checkpoint(output_dir, cfg.get("resume", "auto"), cfg.get("ckpt_path"))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if trainer.interrupted:
        raise UserError(
            f"training interrupted; run the same command with hydra.run.dir={output_dir} to resume"
        )
    best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor), "")
    if best and Path(best).is_file():
        module.load_state_dict(load_checkpoint(best)["state_dict"])
    else:
        log.warning("no best checkpoint (checkpointing off or no validation): evaluating the final weights")
        best = None
    return evaluate_and_report(trainer, module, datamodule, output_dir, source=best)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild a checkpoint's model and data (with cfg.data's non-null keys replacing the saved ones),
    evaluate it and write the reports into this run's directory."""
    L.seed_everything(cfg.seed, workers=True)
    data_overrides = OmegaConf.to_container(cfg.get("data") or {}, resolve=True)
    module, datamodule = load_run(cfg.ckpt_path, data_overrides)
    trainer = build_trainer(cfg, with_loggers=False)
    return evaluate_and_report(trainer, module, datamodule, Path(cfg.paths.output_dir), source=cfg.ckpt_path)
