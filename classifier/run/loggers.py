"""Experiment loggers: TensorBoard that opens on what matters, with a usable HPARAMS tab, and a CSV log
that survives a resumed run."""

from __future__ import annotations

import csv
import hashlib
from argparse import Namespace
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import custom_scalars, hparams


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
EVENT_FILES = "events.out.tfevents.*"
MAX_RUN_NAME = 120  # characters of a run's folder name; a longer one ends in a hash of the whole
# What TensorBoard shows per-class accuracy as: after the split's top1 (and top1_best), not before its
# loss and top1, which a split's ten or a hundred class_acc charts would push onto a later page.
PER_CLASS_KEY, PER_CLASS_TAG = "/class_acc/", "/top1_per_class/"
# TensorBoard's CUSTOM SCALARS page: train, val and test on one chart each for loss and top-1 (tag
# regular expressions), and the learning rate.
WHAT_MATTERS = {
    "loss and top-1": {
        "loss": ["Multiline", [r"^(train|val|test)/loss$"]],
        "top-1": ["Multiline", [r"^(train|val|test)/top1$"]],
        "learning rate": ["Multiline", [r"^train/lr"]],
    }
}


def run_name_of(run_dir: str | Path) -> str:
    """What TensorBoard, MLflow and W&B call a run: the overrides that set it apart, sorted and joined
    as Hydra's `job.override_dirname` joins them. In a multirun, only a job's own: those every job
    of the sweep shares (its `multirun.yaml`) are left out, so a sweep's runs read `seed=1`, `seed=2`.
    Which loggers a run uses, and their settings, are left out too. The run directory's name when
    no override is left."""
    if not HydraConfig.initialized():
        return Path(run_dir).name
    hydra = HydraConfig.get()
    overrides = _parsed(list(hydra.overrides.task))
    if hydra.mode == RunMode.MULTIRUN:
        shared = _parsed(_sweep_overrides(Path(hydra.sweep.dir)))
        shared_values = {(o.key_or_group, _comparable(o)) for o in shared}
        overrides = [o for o in overrides if (o.key_or_group, _comparable(o)) not in shared_values]
    kept = [o.input_line for o in overrides if o.key_or_group.split(".")[0] != "logger"]
    return ",".join(sorted(kept)) or Path(run_dir).name


def _parsed(overrides: list[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(overrides)


def _comparable(override: Override) -> str:
    # The basic sweeper hands each job its value again as Python writes it (false as False): compare
    # the values parsed, not the text.
    return repr(override.value())


def _sweep_overrides(sweep_dir: Path) -> list[str]:
    """The command line's overrides of a sweep, as Hydra saved them in its multirun.yaml."""
    try:
        saved = OmegaConf.load(sweep_dir / "multirun.yaml")
        return list(saved.hydra.overrides.task)
    except (OSError, AttributeError, ValueError):
        return []


def run_folder_name(run_name: str) -> str:
    """`run_name` as one folder name: no path separators, at most MAX_RUN_NAME characters."""
    name = run_name.replace("/", "_").replace("\\", "_").strip() or "run"
    if name.startswith("."):  # TensorBoard skips hidden folders
        name = "_" + name[1:]
    if len(name) > MAX_RUN_NAME:
        digest = hashlib.sha1(run_name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_RUN_NAME - 9]}~{digest}"
    return name


def tensorboard_version(root: Path, run_name: str) -> str:
    """The folder under `root` (<run dir>/tensorboard) a run writes its events to: the one it wrote
    to before when it resumes, else one named after the run. TensorBoard names a run by its folder,
    so `tensorboard --logdir` over a sweep lists runs by their overrides rather than as N x
    'tensorboard'. "" (the events directly in `root`) for a run begun before runs had a folder."""
    if not root.is_dir():
        return run_folder_name(run_name)
    if any(root.glob(EVENT_FILES)):
        return ""
    earlier = sorted(f.name for f in root.iterdir() if f.is_dir() and any(f.glob(EVENT_FILES)))
    return earlier[0] if earlier else run_folder_name(run_name)


def tensorboard_tag(key: str) -> str:
    """The TensorBoard tag of a logged metric key: the key itself but for per-class accuracies."""
    split, per_class, name = key.partition(PER_CLASS_KEY)
    return f"{split}{PER_CLASS_TAG}{name}" if per_class else key


def name_session(session_start: Summary, name: str) -> None:
    """Name the HPARAMS table's row of a run (its "Trial ID", else the run's folder path, which the
    table's narrow column cuts to "0/tensorboard/..."): torch's hparams() leaves it unnamed. The
    run directory in it keeps rows of equal overrides apart (TensorBoard merges rows of one name)."""
    metadata = session_start.value[0].metadata.plugin_data
    content = HParamsPluginData.FromString(metadata.content)
    content.session_start_info.group_name = name
    metadata.content = content.SerializeToString()


class RunTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger whose SCALARS page opens on loss and top-1, and whose hyperparameters
    reach TensorBoard's HPARAMS tab, each run named and beside the metrics that compare runs
    (`hparams_metrics`).

    Args:
        save_dir: the run directory.
        name: the folder in it for TensorBoard (`tensorboard`).
        run_name: what TensorBoard calls the run (its folder inside `name`); None: its overrides
            (run_name_of). A resumed run keeps the folder it wrote to.
        hparams_metrics: the scalars the HPARAMS tab shows beside each run's hyperparameters.

    Lightning adds an `epoch` scalar to every logged step, which TensorBoard sorts first as a chart of
    its own; it is not written here (the x axis is the step). Per-class accuracies are shown as
    `<split>/top1_per_class/<class>` (see PER_CLASS_TAG); every other tag is the metric's key. The
    CUSTOM SCALARS page shows loss and top-1 of train, val and test on one chart each (WHAT_MATTERS).

    Lightning writes the hparams entry only together with metric values it logs as scalars at
    that moment (or a placeholder `hp_metric`); at the start of a run there are none, so nothing
    was written. Here the entry names the metrics and TensorBoard shows, per run, the last value
    of each of those scalars as training and testing log them.
    """

    def __init__(
        self,
        save_dir: str | Path,
        name: str = "tensorboard",
        run_name: str | None = None,
        hparams_metrics: Sequence[str] = DEFAULT_HPARAMS_METRICS,
        **kwargs: Any,
    ):
        if "version" not in kwargs:
            kwargs["version"] = tensorboard_version(Path(save_dir) / name, run_name or run_name_of(save_dir))
        super().__init__(save_dir, name=name, **kwargs)
        self.hparams_metrics = list(hparams_metrics)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        shown = {tensorboard_tag(key): value for key, value in metrics.items() if key != "epoch"}
        if shown:
            super().log_metrics(shown, step)

    @rank_zero_only
    def log_hyperparams(
        self,
        params: dict[str, Any] | Namespace,
        metrics: dict[str, Any] | None = None,
        step: int | None = None,
    ) -> None:
        super().log_hyperparams(params, metrics, step)  # hparams.yaml, and the entry when given metrics
        writer = self.experiment._get_file_writer()
        writer.add_summary(custom_scalars(WHAT_MATTERS))
        if metrics is not None or not self.hparams_metrics:
            return
        flat = self._sanitize_params(_flatten_dict(_convert_params(params)))
        # The values only declare the metrics; TensorBoard reads them from the scalars of those tags.
        experiment, session_start, session_end = hparams(flat, dict.fromkeys(self.hparams_metrics, 0.0))
        name_session(session_start, f"{self.version or Path(self.save_dir).name}  ({self.save_dir})")
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary)
