"""tune.lr_find and tune.batch_size: Lightning's learning-rate finder and batch-size scaler, run before
the run's objects are built, on a throwaway data module, module and Trainer (one device, no loggers or
checkpoints); what they find goes into the config the run is then built from (so checkpoints and the
model card record what ran)."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig, OmegaConf, open_dict

from classifier.config_values import to_flag, to_number
from classifier.engine.build import build_module, build_run_datamodule
from classifier.engine.precision import precision_arguments
from classifier.errors import UserError
from classifier.evaluation.reports import save_figure
from classifier.run.checkpoints import LAST, load_checkpoint, saved_run

log = logging.getLogger(__name__)

LR_FIND_FILE = "lr_find.png"


def _resumed_from(cfg: DictConfig, output_dir: Path) -> Path | None:
    """The checkpoint this run will resume from, if any (as checkpoints.resume_checkpoint decides)."""
    if cfg.get("ckpt_path"):
        return Path(str(cfg.ckpt_path)).expanduser()
    last = output_dir / LAST
    return last if cfg.get("resume", "auto") in ("auto", True) and last.is_file() else None


def _single_device(cfg: DictConfig) -> bool:
    trainer = cfg.trainer
    strategy = str(trainer.get("strategy", "auto"))
    return (
        str(trainer.get("devices")) == "1"
        and int(trainer.get("num_nodes") or 1) == 1
        and "ddp" not in strategy
    )


def _set(cfg: DictConfig, key: str, value: float | int) -> None:
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value)


def _tuning_trainer(cfg: DictConfig, folder: Path) -> L.Trainer:
    accelerator = cfg.trainer.get("accelerator", "auto")
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        **precision_arguments(cfg.trainer.get("precision"), accelerator),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1000,  # the tuners stop it after their steps, however many epochs those take
        default_root_dir=str(folder),
    )


def tuned_config(cfg: DictConfig, output_dir: Path) -> DictConfig:
    """`cfg` with the learning rate and batch size cfg.tune asks to find (a copy; `cfg` itself when
    nothing is tuned), decided before the run's own objects are built from it: the tuners run on a
    throwaway data module and module. A resumed run takes the values its first run found, from the
    checkpoint it resumes.

    Raises:
        UserError: bad tune.* values, or tuning asked of a multi-device run.
    """
    tune = cfg.get("tune") or {}
    find_lr, scale_batch = (
        to_flag(tune.get("lr_find"), "tune.lr_find"),
        to_flag(tune.get("batch_size"), "tune.batch_size"),
    )
    if not (find_lr or scale_batch):
        return cfg
    cfg = cfg.copy()
    resumed = _resumed_from(cfg, output_dir)
    if resumed is not None and resumed.is_file():
        saved = saved_run(load_checkpoint(resumed), str(resumed))["config"]
        lr, size = saved["optimizer"]["lr"], saved["data"]["batch_size"]
        log.info("resuming: lr %s and batch size %s as tuned by the first run (%s)", lr, size, resumed)
        if find_lr:
            _set(cfg, "optimizer.lr", float(lr))
        if scale_batch:
            _set(cfg, "data.batch_size", int(size))
        return cfg
    if not _single_device(cfg):
        raise UserError(
            "tune.lr_find / tune.batch_size run on one device: tune with trainer.devices=1, then train"
            " on several with the values they found (optimizer.lr=..., data.batch_size=...)"
        )
    L.seed_everything(cfg.seed, workers=True)  # the same weights as the run's own module will start from
    datamodule = build_run_datamodule(cfg)
    module = build_module(cfg, datamodule)
    folder = output_dir / ".tune"
    try:
        tuner = Tuner(_tuning_trainer(cfg, folder))
        if scale_batch:
            trials = to_number(tune.get("max_batch_trials", 8), "tune.max_batch_trials", int)
            start = datamodule.batch_size
            size = tuner.scale_batch_size(
                module,
                datamodule=datamodule,
                mode="power",
                steps_per_trial=3,
                init_val=start,
                max_trials=trials,
            )
            log.info(
                "tune.batch_size: data.batch_size=%d (doubling from %d, %d tries at most)",
                size,
                start,
                trials,
            )
            _set(cfg, "data.batch_size", int(size))
        if find_lr:
            # Its bar (which Lightning always shows) only on a terminal, not in a batch job's log.
            bar = (
                contextlib.nullcontext() if sys.stderr.isatty() else contextlib.redirect_stderr(io.StringIO())
            )
            with bar:
                result = tuner.lr_find(
                    module,
                    datamodule=datamodule,
                    min_lr=to_number(tune.get("min_lr", 1e-6), "tune.min_lr"),
                    max_lr=to_number(tune.get("max_lr", 1.0), "tune.max_lr"),
                    num_training=to_number(tune.get("lr_find_steps", 100), "tune.lr_find_steps", int),
                    update_attr=False,
                )
            _use_suggestion(result, cfg, output_dir)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return cfg


def _use_suggestion(result, cfg: DictConfig, output_dir: Path) -> None:
    import matplotlib.pyplot as plt

    suggestion = result.suggestion()
    figure = result.plot(suggest=suggestion is not None, show=False)
    figure.axes[0].set_title(
        f"learning-rate finder: suggested {suggestion:.3g}" if suggestion else "learning-rate finder"
    )
    save_figure(figure, output_dir / LR_FIND_FILE)
    plt.close(figure)
    if suggestion is None:
        log.warning(
            "tune.lr_find found no learning rate (the loss never fell): keeping optimizer.lr=%s",
            cfg.optimizer.lr,
        )
        return
    log.info(
        "tune.lr_find: optimizer.lr=%.3g (was %s); the loss curve is in %s",
        suggestion,
        cfg.optimizer.lr,
        output_dir / LR_FIND_FILE,
    )
    _set(cfg, "optimizer.lr", float(suggestion))
