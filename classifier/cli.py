"""Command-line entry points: what the root scripts (train.py, eval.py, predict.py, export.py, probe.py,
zeroshot.py, fewshot.py, audit.py) share (the command line as typed in bash, one-line errors, exit statuses),
and the installed `classifier-train`, `-eval`, `-predict`, `-export`, `-probe`, `-zeroshot`,
`-fewshot` and `-audit` commands, which read the configs shipped in the package.

Nothing heavy is imported here: Hydra answers `--help` and config mistakes before torch, Lightning
and timm load (seconds), and the task's module is imported once the config is composed.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from classifier.errors import CTRL_C_EXIT, SIGTERM_EXIT, RunInterrupted, describe_user_error
from classifier.extras import refuse_overrides_needing_missing_extras
from classifier.overrides import PACKAGE_CONFIGS, command_line_problem
from classifier.preflight import check_before_loading
from classifier.tasks import load_task

log = logging.getLogger("classifier")


_QUIET_WARNINGS = (
    r".*does not have many workers.*",  # in-memory data: workers would only slow it down
    r".*is smaller than the logging interval.*",  # small data sets: epoch-level logs are what we use
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # inside Lightning, nothing to act on
    # Epoch metrics come from torchmetrics, which already reduces them across processes.
    r".*sync_dist=True\)` when logging on epoch level in distributed setting.*",
    # After a stop mid-epoch the resumed epoch runs its remaining batches on a new shuffle; the
    # resume line says so (classifier.callbacks.checkpointing.RunMetadata).
    r".*resuming from a checkpoint that ended before the epoch ended.*",
    r".*Checkpoint directory .* exists and is not empty.*",  # a resumed run's, or resume=false's
    # bf16 training steps on the CPU (engine/precision.py): the summary's size is of float32 weights
    r".*Precision bf16-mixed is not supported by the model summary.*",
    # data=litdata: LitData's streaming dataset shards itself over loader workers and processes.
    r".*Your `IterableDataset` has `__len__` defined.*",
    # A frozen backbone's batch norms are in eval mode on purpose (model.freeze_backbone, unfreeze).
    r".*module\(s\) in eval mode at the start of training.*",
)
# `~` or `~/...` at the start of an override's value, or of one of its comma-separated sweep values.
_HOME_IN_VALUE = re.compile(r"(^|,)~(?=/|,|$)")


def expand_home_in_argv(argv: list[str] | None = None) -> None:
    """Expand a leading `~` in override values (`data.root=~/photos`), in place in `argv` (default
    sys.argv). bash expands `~` only at the start of a word, and Hydra's override parser rejects it,
    so as typed the README's own examples would fail."""
    argv = sys.argv if argv is None else argv
    home = os.path.expanduser("~")
    for i, arg in enumerate(argv[1:], start=1):
        key, sep, value = arg.partition("=")
        if not sep or key.startswith(("-", "~")) or "~" not in value:
            continue
        argv[i] = key + sep + _HOME_IN_VALUE.sub(lambda m: m.group(1) + home, value)


BUG_LINE = (
    "this is a bug in classifier, not a mistake in your command or files:"
    " please report it with the traceback below"
)


def prepare_argv(config_name: str, config_source: str | Path, argv: list[str] | None = None) -> None:
    """What every root script does to its command line (default sys.argv) before Hydra reads it: `~`
    expanded, and a mistake in the overrides of <config_name>.yaml (in `config_source`: the conf
    folder, or pkg://classifier.conf) refused in one `[ERROR]` line with exit status 1
    (classifier.overrides): an old key name, a misspelt key or group option with the closest valid
    names, a word for a number, a run directory that cannot be written or is in use."""
    argv = sys.argv if argv is None else argv
    refuse_overrides_needing_missing_extras(argv)  # before composing: Hydra needs the plugin's configs
    expand_home_in_argv(argv)
    problem = command_line_problem(argv, config_name, str(config_source))
    if problem:
        sys.exit(f"[ERROR] {problem}")


def _send_lightning_logs_to_hydra() -> None:
    # Importing Lightning gives its loggers their own console handler (always for "lightning", and
    # for its subpackages when logging is not set up yet); let them propagate instead, so their
    # lines reach <run>/train.log through Hydra's handlers, once.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class JobFailed(CompactHydraException):
    """A user mistake in one job of a multirun: the job is recorded as failed (job.json, the sweep's
    summary) and the sweep goes on with its other jobs; Hydra ends the sweep with this one line."""


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _fail(message: str) -> None:
    """Exit with status 1 after the ERROR line; in a multirun, fail only this job."""
    if _in_multirun():
        sweep = HydraConfig.get().sweep.dir
        raise JobFailed(f"job {HydraConfig.get().job.num} failed: {message} (summary: {sweep}/summary.md)")
    sys.exit(1)


def _is_sigterm(exc: SystemExit) -> bool:
    # Lightning ends a run on SIGTERM by raising SIGTERMException, a SystemExit with no code
    # (exit status 0); imported here only when Lightning is already loaded.
    lightning_exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return lightning_exceptions is not None and isinstance(exc, lightning_exceptions.SIGTERMException)


def run_task(name: str, cfg: DictConfig) -> float | None:
    """Run the task `name` (classifier.tasks.TASKS) on `cfg`. A user mistake (a UserError, a missing or
    mistyped config key) ends the process with one ERROR line and exit status 1 instead of a traceback
    (with HYDRA_FULL_ERROR=1 the traceback too); anything else is a bug: the ERROR line says so and
    the exception goes on with its traceback. Ctrl-C exits with status 130 and SIGTERM with 143, after
    a WARNING line (the run's own says how to resume). Returns the `optimized_metric` for Hydra sweepers."""
    _refuse_before_loading(name, cfg)
    task = load_task(name)
    _send_lightning_logs_to_hydra()  # after the import: importing Lightning adds its own handler
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        # A stop the user (or a scheduler) asked for is no error: a WARNING, still a non-zero status.
        try:
            metrics = task(cfg)
        except RunInterrupted as exc:
            log.warning("%s", exc)
            sys.exit(exc.exit_status)
        except KeyboardInterrupt:
            log.warning("interrupted (Ctrl-C)")
            sys.exit(CTRL_C_EXIT)
        except SystemExit as exc:
            if _is_sigterm(exc):
                log.warning("stopped by SIGTERM")
                sys.exit(SIGTERM_EXIT)
            raise
        except Exception as exc:
            _fail_on_user_mistake(exc)
            raise
    return _optimized_metric(metrics, cfg.get("optimized_metric"))


def _fail_on_user_mistake(exc: Exception) -> None:
    """For a user mistake: its ERROR line, then exit status 1 (or the traceback too, with
    HYDRA_FULL_ERROR=1); for a bug: the line that says so, and back to the caller, which re-raises."""
    message = describe_user_error(exc)
    if message is None:
        log.error("%s", BUG_LINE)
        return
    log.error("%s", message)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":  # Hydra's switch: the traceback of any error
        return
    _fail(message)


def _refuse_before_loading(name: str, cfg: DictConfig) -> None:
    """Refuse a missing input or checkpoint, or an output that cannot be written, before the task's
    module imports torch and Lightning (preflight.check_before_loading)."""
    try:
        check_before_loading(name, cfg)
    except Exception as exc:
        _fail_on_user_mistake(exc)
        raise


def _optimized_metric(metrics: dict[str, float], key: str | None) -> float | None:
    """metrics[key], what a sweeper optimises; None without a key or metrics (fast_dev_run writes none).
    A key the run has no metric for ends in one ERROR line: a sweeper would get None from every job."""
    if not key or not metrics:
        return None
    if key not in metrics:
        message = (
            f"optimized_metric={key} is not one of this run's metrics ({', '.join(sorted(metrics))});"
            " the run's files are written"
        )
        log.error("%s", message)
        _fail(message)
    return metrics[key]


def installed_command(task: str) -> Callable[[], None]:
    """The `classifier-<task>` command of an installed package: <task>.py reading the configs shipped
    inside it (pkg://classifier.conf)."""

    @hydra.main(version_base="1.3", config_path=PACKAGE_CONFIGS, config_name=task)
    def main(cfg: DictConfig) -> float | None:
        return run_task(task, cfg)

    def command() -> None:
        prepare_argv(task, PACKAGE_CONFIGS)
        main()

    command.__doc__ = f"`classifier-{task}`: {task}.py from an installed package."
    return command


# pyproject.toml's [project.scripts] point at these (named apart from the task functions they run).
train_command = installed_command("train")
eval_command = installed_command("eval")
predict_command = installed_command("predict")
export_command = installed_command("export")
probe_command = installed_command("probe")
zeroshot_command = installed_command("zeroshot")
fewshot_command = installed_command("fewshot")
audit_command = installed_command("audit")
