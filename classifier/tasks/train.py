"""train.py as a function of its composed config: fit, evaluate the best checkpoint, write the run's
reports and model card; Ctrl-C, SIGTERM and the preemption signals (SIGUSR1, submitit's SIGUSR2) save
last.ckpt and say how to resume."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from classifier.callbacks.checkpointing import CheckpointOnInterrupt, RunMetadata
from classifier.callbacks.progress import JOB_CLOCK
from classifier.data import ClassificationDataModule
from classifier.engine.build import (
    build_module,
    build_run_datamodule,
    build_trainer,
    run_config,
)
from classifier.engine.devices import sweep_job_device
from classifier.engine.module import ClassifierModule
from classifier.engine.tuning import tuned_config
from classifier.errors import CTRL_C_EXIT, SIGTERM_EXIT, RunInterrupted
from classifier.evaluation.machine import peak_resident_mib
from classifier.evaluation.model_card import write_run_model_card
from classifier.evaluation.passes import evaluate_and_report, evaluation_flags
from classifier.evaluation.reports import EvaluationReport
from classifier.run.checkpoints import (
    LAST,
    check_resumable,
    load_checkpoint,
    resume_checkpoint,
    save_with_temperature,
)
from classifier.run.directory import check_writable, run_dir_lock
from classifier.run.preemption import Preemption, preemption_stops_training
from classifier.run.trackers import trackers_of

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then evaluate the best checkpoint and write the run's reports; returns metrics.json's content
    (empty under trainer.fast_dev_run, which writes no reports). The run directory is held for the
    whole run: a second run there is refused."""
    JOB_CLOCK.start_job()
    output_dir = Path(cfg.paths.output_dir)
    # Only the first process holds it: DDP's other ranks run this same function in the same dir.
    holding = run_dir_lock(output_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext()
    with holding, sweep_job_device(cfg, _sweep_dir()):
        return _train(cfg, output_dir)


def _sweep_dir() -> str | None:
    """The sweep folder when this run is a job of a multirun."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(HydraConfig.get().sweep.dir)
    return None


def _train(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    calibrate, tta, measure_cpu_speed = evaluation_flags(cfg)
    cfg = tuned_config(cfg, output_dir)  # what the tuners find is decided before anything is built
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_run_datamodule(cfg)
    module = build_module(cfg, datamodule)
    config = run_config(cfg)
    teacher = module.distillation.identity() if module.distillation is not None else None
    metadata = RunMetadata(config, datamodule.class_names, datamodule.input_spec.to_dict(), teacher)
    on_interrupt = CheckpointOnInterrupt(output_dir / LAST)
    trainer = build_trainer(cfg, extra_callbacks=[metadata, on_interrupt])
    ckpt_path = _checkpoint_to_resume(cfg, trainer, output_dir, datamodule.class_names, module, config)
    for logger in trainer.loggers:
        logger.log_hyperparams(config)
    preemption = Preemption()
    try:
        with preemption_stops_training(preemption):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        training = {  # read now: evaluating replaces the trainer's train metrics
            "seconds": round(metadata.train_seconds, 1),
            "epochs": trainer.current_epoch,
            "global_steps": trainer.global_step,
            "images_per_sec": _float_or_none(trainer.callback_metrics.get("train/images_per_sec")),
            "accelerator": type(trainer.accelerator).__name__,
            "devices": trainer.num_devices,
            "precision": str(trainer.precision),
            "peak_resident_mib": peak_resident_mib(),  # of this process (rank), training included
        }
        for tracker in trackers_of(trainer.loggers):  # MLflow and W&B get the final evaluation as final/<key>
            tracker.close_history()
        metrics, best, report = _evaluate_best(trainer, module, datamodule, output_dir, calibrate, tta)
        if report is not None and trainer.is_global_zero:
            write_run_model_card(
                output_dir, module, datamodule, config, report, best, training, measure_cpu_speed
            )
            for tracker in trackers_of(trainer.loggers):
                tracker.record_results(metrics)
        return metrics
    except (KeyboardInterrupt, SystemExit) as exc:
        # Lightning turns Ctrl-C into sys.exit(1), raised while handling the KeyboardInterrupt, and
        # SIGTERM into SIGTERMException (exit status 0), after the callbacks' on_exception:
        # CheckpointOnInterrupt has saved what there was. Any other SystemExit goes on as it is.
        if not _is_interrupt(exc):
            raise
        for tracker in trackers_of(trainer.loggers):
            tracker.interrupted()
        raise _interrupted(exc, on_interrupt.saved, output_dir, preemption) from None


def _is_interrupt(exc: BaseException) -> bool:
    interrupts = (KeyboardInterrupt, SIGTERMException)
    return isinstance(exc, interrupts) or (
        isinstance(exc, SystemExit) and isinstance(exc.__context__, interrupts)
    )


def _checkpoint_to_resume(
    cfg: DictConfig,
    trainer: L.Trainer,
    output_dir: Path,
    class_names: list[str],
    module: ClassifierModule,
    config: dict[str, Any],
) -> str | None:
    """What fit resumes from, checked before any training: the checkpoint folders can be written, and
    the checkpoint is readable and of this configuration; settings changed since it are logged."""
    if not trainer.fast_dev_run:  # which writes no checkpoints
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "dirpath", None):
                check_writable(callback.dirpath, "checkpoints")
    ckpt_path = resume_checkpoint(output_dir, cfg.get("resume", "auto"), cfg.get("ckpt_path"))
    if ckpt_path:
        explicit = bool(cfg.get("ckpt_path"))
        teacher = module.distillation.identity() if module.distillation is not None else None
        check_resumable(ckpt_path, output_dir, explicit, class_names, module.state_dict(), config, teacher)
    return ckpt_path


def _evaluate_best(
    trainer: L.Trainer,
    module: ClassifierModule,
    datamodule: ClassificationDataModule,
    output_dir: Path,
    calibrate: bool = False,
    tta: bool = False,
) -> tuple[dict[str, float], str | None, EvaluationReport | None]:
    """Evaluate the best checkpoint (else the final weights) and write the reports, with temperature
    scaling (then stored in best.ckpt) and TTA when asked; under fast_dev_run only run one test
    batch: one batch's metrics would mislead. Returns the metrics, the best checkpoint's path and
    the report (None under fast_dev_run)."""
    if trainer.fast_dev_run:
        if datamodule.has_test:
            trainer.test(module, datamodule=datamodule, verbose=False)
        log.info("fast_dev_run: one batch of each split ran; no checkpoints or reports written")
        return {}, None, None
    best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor), "")
    if best and Path(best).is_file():
        module.load_state_dict(load_checkpoint(best)["state_dict"])
    else:
        log.warning("no best checkpoint (checkpointing off or no validation): evaluating the final weights")
        best = None
    metrics, report = evaluate_and_report(
        trainer, module, datamodule, output_dir, source=best, calibrate=calibrate, tta=tta
    )
    if report.calibration and best and trainer.is_global_zero:
        save_with_temperature(best, module.temperature, best)
        log.info("the temperature is stored in %s: eval.py and predict.py use it", best)
    return metrics, best, report


def _float_or_none(value) -> float | None:
    return None if value is None else round(float(value), 1)


def _interrupted(
    exc: BaseException, saved: str | None, output_dir: Path, preemption: Preemption
) -> RunInterrupted:
    sigterm = isinstance(exc, SIGTERMException)
    last = output_dir / LAST
    if saved:
        state = f"saved {last} ({saved})"
    elif last.is_file():
        state = f"{last} is kept"
    else:
        state = "no checkpoint yet"
    resume = f"resume with: {resume_command(output_dir)}"
    if preemption.received:  # SIGUSR1 or submitit's signal stopped it through Lightning's SIGTERM path
        if preemption.requeues:  # said first: submitit's handler requeues and exits the process
            log.info("%s: %s; requeueing the job", preemption.name, state)
        return RunInterrupted(
            f"stopped by {preemption.name}: {state}; {preemption.requeue()}; {resume}", preemption.exit_status
        )
    signal_name = "SIGTERM" if sigterm else "Ctrl-C"
    return RunInterrupted(
        f"stopped by {signal_name}: {state}; {resume}", SIGTERM_EXIT if sigterm else CTRL_C_EXIT
    )


def resume_command(output_dir: Path) -> str:
    """The command line that continues this run: its own overrides, in its own run directory."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [o for o in overrides if not o.startswith(("hydra.run.dir=", "resume=", "ckpt_path="))]
    script = sys.argv[0]
    program = ["python", script] if script.endswith(".py") else [os.path.basename(script)]
    return shlex.join([*program, *kept, f"hydra.run.dir={output_dir}"])
