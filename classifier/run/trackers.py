"""Experiment trackers beside TensorBoard: MLflow and Weights & Biases through Lightning's own loggers.

What a run gives each of them, the same for both: the run named by its overrides (a sweep's jobs side
by side, as in TensorBoard); the resolved config as parameters, keyed as overrides are (`data.batch_size`);
one point per epoch for every metric while training; metrics.json's values, those of the best
checkpoint, as `final/<key>` once the run has been evaluated (so the final evaluation adds no second
point to the per-epoch histories); the run's reports as files; tags naming the task, run directory,
overrides and sweep. A multirun is one MLflow experiment (one W&B group). A resumed run continues the
tracker run it began (`tracking.json` in the run directory remembers it), and checkpoints carry the
MLflow run, so eval.py and predict.py add their results to the run that trained the checkpoint.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger

from classifier.errors import UserError, first_line_of
from classifier.extras import import_for
from classifier.run.changed_config import flat_settings
from classifier.run.loggers import run_name_of

log = logging.getLogger(__name__)

# In the run directory: the tracker runs this run logs to, so a resumed run continues them.
TRACKING_FILE = "tracking.json"
# The local MLflow store when no tracking URI is given: a SQLite file and an artifact folder in the
# folder that holds the runs (outputs/), so it works offline with nothing running.
LOCAL_STORE, LOCAL_ARTIFACTS = "mlflow.db", "mlartifacts"
FINAL_PREFIX = "final/"
# The run's files each tracker gets once the run is evaluated (those that exist).
RUN_FILES = (
    "metrics.json",
    "report.json",
    "report.txt",
    "model_card.yaml",
    "confusion_matrix.png",
    "reliability_diagram.png",
    "curves.png",
    "lr_find.png",
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
)
BEST_CHECKPOINT = "checkpoints/best.ckpt"
EXPERIMENT_KIND = "mlflow.experimentKind"
SERVER_TIMEOUT_S = 10


# --- what both trackers are told about a run ---------------------------------------------------------


def run_context(run_dir: str | Path, task: str = "train") -> dict[str, str]:
    """Tags of a run: its task, run directory, overrides and, in a multirun, the sweep and job number."""
    tags = {"task": task, "run_dir": str(Path(run_dir).resolve())}
    if not HydraConfig.initialized():
        return tags
    hydra = HydraConfig.get()
    tags["overrides"] = " ".join(hydra.overrides.task)
    if hydra.mode == RunMode.MULTIRUN:
        tags["sweep_dir"] = str(Path(hydra.sweep.dir).resolve())
        tags["job"] = str(hydra.job.num)
    return tags


def sweep_name() -> str | None:
    """A multirun's name: its sweep folder below the runs' folder (`multirun/2026-12-02/15-30-00`)."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return None
    sweep = Path(HydraConfig.get().sweep.dir)
    parts = sweep.parts
    return "/".join(parts[parts.index("multirun") :]) if "multirun" in parts else str(sweep)


def readable_value(value: Any) -> str:
    """A config value as a person reads it in a tracker's table: YAML's spelling of true, false and
    null, a list of plain values as `a, b, c`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        if all(not isinstance(v, dict | list | tuple) for v in value):
            return "[" + ", ".join(readable_value(v) for v in value) + "]"
        return json.dumps(value, default=str)
    return str(value)


def flat_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The config flattened to override keys (`optimizer.lr`) with readable values (MLflow's are text)."""
    return {key: readable_value(value) for key, value in flat_settings(dict(config)).items()}


def shortened(value: str, limit: int) -> str:
    """`value` within a tracker's length limit, saying how long it was when cut."""
    if len(value) <= limit:
        return value
    note = f" ... ({len(value)} characters)"
    return value[: limit - len(note)] + note


def read_tracking(run_dir: str | Path) -> dict[str, Any]:
    """The tracker runs a run directory logged to (TRACKING_FILE), {} when none."""
    path = Path(run_dir) / TRACKING_FILE
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def remember_tracking(run_dir: str | Path, tracker: str, reference: dict[str, Any]) -> None:
    """Record in TRACKING_FILE which run of `tracker` this run directory logs to."""
    content = read_tracking(run_dir)
    content[tracker] = reference
    path = Path(run_dir) / TRACKING_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def existing_run_files(run_dir: Path, with_checkpoint: bool) -> list[Path]:
    names = [*RUN_FILES, BEST_CHECKPOINT] if with_checkpoint else RUN_FILES
    return [run_dir / name for name in names if (run_dir / name).is_file()]


class RunTracker:
    """What train.py asks of a tracker logger besides Lightning's logger interface."""

    history_open = True
    last_step = 0  # of the per-epoch history: where the final values are drawn

    def close_history(self) -> None:
        """Training has ended: the final evaluation's metrics reach the tracker as final/<key> only."""
        self.history_open = False

    def record_results(self, metrics: Mapping[str, float]) -> None:
        """Log metrics.json's values as final/<key>, the run's files, and end the tracker run."""
        raise NotImplementedError

    def reference(self) -> dict[str, Any] | None:
        """Where the tracker run is, for checkpoints (eval.py and predict.py attach to it)."""
        return None

    def interrupted(self) -> None:
        """Ctrl-C, SIGTERM or SIGUSR1 stopped the run: it is marked so, not left running."""


def trackers_of(loggers: Iterable[Logger]) -> list[RunTracker]:
    """The loggers that are trackers (MLflow, W&B) among a Trainer's loggers."""
    return [logger for logger in loggers if isinstance(logger, RunTracker)]


def tracker_references(loggers: Iterable[Logger]) -> dict[str, Any]:
    """{tracker name: reference} of the loggers that track this run elsewhere (MLflow)."""
    references = [tracker.reference() for tracker in trackers_of(loggers)]
    return {reference["tracker"]: reference for reference in references if reference}


# --- MLflow ------------------------------------------------------------------------------------------


def local_store_uri(store_dir: str | Path) -> str:
    return f"sqlite:///{(Path(store_dir) / LOCAL_STORE).resolve()}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a sqlite:/// tracking URI."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///") :])


def check_server_answers(tracking_uri: str, key: str) -> None:
    """Raises UserError when no MLflow server answers at an http(s) tracking URI: MLflow's client would
    otherwise retry for minutes before its traceback."""
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return
    import requests

    try:
        requests.get(tracking_uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S).raise_for_status()
    except requests.RequestException as exc:
        if isinstance(exc, requests.Timeout):
            reason = f"no answer in {SERVER_TIMEOUT_S} s"
        elif isinstance(exc, requests.ConnectionError):
            reason = "cannot connect"
        else:
            reason = first_line_of(exc)
        raise UserError(
            f"{key}={tracking_uri}: no MLflow server answers there ({reason});"
            " start one (mlflow server --host 127.0.0.1 --port 5000) or correct the address"
        ) from None


@contextmanager
def store_lock(tracking_uri: str):
    """Serialise the first use of a local SQLite store: the jobs of a parallel sweep would otherwise
    create its tables, or the sweep's experiment, at the same moment."""
    database = sqlite_path(tracking_uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(database) + ".lock"):
        yield


class RunMLFlowLogger(RunTracker, MLFlowLogger):
    """Lightning's MLFlowLogger for a run directory (see the module's docstring for what it logs).

    Args:
        run_dir: the run directory.
        store_dir: where the local store goes when no tracking URI is given (`outputs/`).
        tracking_uri: a tracking server (`http://host:5000`) or store (`sqlite:///path.db`); None:
            $MLFLOW_TRACKING_URI when set, else `<store_dir>/mlflow.db` with artifacts in
            `<store_dir>/mlartifacts`.
        experiment_name: None: `train`, or for a multirun its sweep folder (`multirun/<date>/<time>`).
        run_name: what the runs table calls the run; None: its overrides (loggers.run_name_of).
        log_checkpoint: also upload checkpoints/best.ckpt.
    """

    def __init__(
        self,
        run_dir: str | Path,
        store_dir: str | Path = "outputs",
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        log_checkpoint: bool = False,
        task: str = "train",
        **kwargs: Any,
    ):
        import_for("logger=mlflow", "mlflow", "mlflow")
        self.run_dir = Path(run_dir)
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri(store_dir)
        check_server_answers(uri, "logger.mlflow.tracking_uri")
        earlier = read_tracking(self.run_dir).get("mlflow") or {}
        resumed = earlier.get("run_id") if earlier.get("tracking_uri") == uri else None
        local = sqlite_path(uri)
        if local is not None and "artifact_location" not in kwargs:
            kwargs["artifact_location"] = str(local.parent / LOCAL_ARTIFACTS)
        with store_lock(uri):  # MLflow 3.0 opens (and creates) the store as the client is made
            super().__init__(
                experiment_name=experiment_name or sweep_name() or task,
                run_name=run_name or run_name_of(self.run_dir),
                tracking_uri=uri,
                tags=run_context(self.run_dir, task),
                run_id=resumed,
                **kwargs,
            )
        self.log_checkpoint = log_checkpoint
        self._resumed = resumed is not None

    @property
    def experiment(self):  # noqa: ANN201  (MlflowClient, imported lazily by Lightning)
        if self._initialized or rank_zero_only.rank != 0:  # DDP's other ranks get Lightning's stand-in
            return super().experiment
        with store_lock(self._tracking_uri):
            if self._run_id is None and self._experiment_id is None:
                self._experiment_id = self._find_or_create_experiment()
            client = super().experiment
        reference = {"tracking_uri": self._tracking_uri, "run_id": self._run_id}
        remember_tracking(self.run_dir, "mlflow", {**reference, "experiment_id": self._experiment_id})
        if self._resumed:
            client.update_run(self._run_id, status="RUNNING")
            log.info("MLflow: continuing run %s of %s", self._run_id, self._tracking_uri)
        else:
            where = f"experiment '{self._experiment_name}' of {self._tracking_uri}"
            log.info("MLflow: run %s in %s", self._run_id, where)
        return client

    def _find_or_create_experiment(self) -> str:
        # Lightning creates a missing experiment too, but says so in a WARNING on every first run.
        found = self._mlflow_client.get_experiment_by_name(self._experiment_name)
        if found is not None and found.lifecycle_stage != "deleted":
            return found.experiment_id
        # MLflow 3's UI opens an experiment of no kind on its GenAI pages (traces, judges).
        kind = {EXPERIMENT_KIND: "custom_model_development"}
        return self._mlflow_client.create_experiment(self._experiment_name, self._artifact_location, kind)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        params = params if isinstance(params, Mapping) else vars(params)
        logged = self.experiment.get_run(self.run_id).data.params if self._resumed else {}
        entries = [
            Param(key, shortened(value, MAX_PARAM_VAL_LENGTH))
            for key, value in flat_params(params).items()
            # MLflow refuses to change a logged parameter: a resumed run keeps the values it began with
            # (changed_config.py has said which changed).
            if key not in logged
        ]
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            self.experiment.log_batch(self.run_id, params=entries[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.history_open:
            self.last_step = max(self.last_step, step or 0)
            # Lightning adds the epoch to every call; MLflow would draw it as a chart of its own.
            super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

    @rank_zero_only
    def record_results(self, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        client, timestamp = self.experiment, _now_ms()
        entries = [Metric(FINAL_PREFIX + k, float(v), timestamp, self.last_step) for k, v in metrics.items()]
        client.log_batch(self.run_id, metrics=entries)
        for path in existing_run_files(self.run_dir, self.log_checkpoint):
            folder = path.parent.relative_to(self.run_dir).as_posix()
            client.log_artifact(self.run_id, str(path), None if folder == "." else folder)
        client.set_terminated(self.run_id, "FINISHED")

    def reference(self) -> dict[str, Any] | None:
        if self._run_id is None:
            return None
        return {"tracker": "mlflow", "tracking_uri": self._tracking_uri, "run_id": self._run_id}

    @rank_zero_only
    def interrupted(self) -> None:
        if self._initialized:
            self.experiment.set_terminated(self.run_id, "KILLED")  # a resume sets it running again

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        # Lightning finalizes after fit and after each evaluation; the run ends once, in record_results
        # (with a server, MLflow prints the run's address each time it ends one).
        if status == "failed" and self._initialized:
            self.experiment.set_terminated(self.run_id, "FAILED")


def _now_ms() -> int:
    return int(time.time() * 1000)


def may_receive_results(tracking_uri: str) -> bool:
    """Whether eval.py and predict.py may send results to the tracking URI a checkpoint names: a local
    SQLite store that exists, or the server this machine tracks to ($MLFLOW_TRACKING_URI). A checkpoint
    is data from anywhere: one naming another server must not make a command upload to it."""
    database = sqlite_path(tracking_uri)
    if database is not None:
        return database.is_file()
    return tracking_uri == os.environ.get("MLFLOW_TRACKING_URI")


def attach_results(
    reference: Mapping[str, str] | None,
    output_dir: Path,
    task: str,
    metrics: Mapping[str, float] | None = None,
    files: Iterable[Path] = (),
) -> None:
    """Add an eval.py or predict.py run's metrics (`<task>/<key>`) and files (artifacts under
    `<task>/<run dir name>/`) to the MLflow run that trained its checkpoint (`reference`, from the
    checkpoint). A tracker that cannot be reached costs a WARNING line, not the results written."""
    if not reference or not reference.get("run_id") or not reference.get("tracking_uri"):
        return
    uri, run_id = reference["tracking_uri"], reference["run_id"]
    if not may_receive_results(uri):
        log.info(
            "the checkpoint was trained in MLflow run %s of %s: results not added there (only to a local"
            " store or the server in $MLFLOW_TRACKING_URI)",
            run_id,
            uri,
        )
        return
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
    except ImportError:
        log.info("the checkpoint was trained in MLflow run %s; mlflow is not installed here", run_id)
        return
    try:
        check_server_answers(uri, "the checkpoint's MLflow tracking URI")
        client = MlflowClient(uri)
        client.get_run(run_id)
        if metrics:
            timestamp = _now_ms()
            entries = [Metric(f"{task}/{k}", float(v), timestamp, 0) for k, v in metrics.items()]
            client.log_batch(run_id, metrics=entries)
        for path in files:
            if path.is_file():
                client.log_artifact(run_id, str(path), f"{task}/{output_dir.name}")
    except Exception as exc:  # noqa: BLE001  (the results are written; the tracker only gets a copy)
        log.warning("MLflow run %s at %s: results not added (%s)", run_id, uri, first_line_of(exc))
        return
    log.info("%s results added to MLflow run %s (%s)", task, run_id, uri)


# --- Weights & Biases --------------------------------------------------------------------------------


def wandb_key_available() -> bool:
    """Whether W&B has an API key: $WANDB_API_KEY, or a login saved in ~/.netrc by `wandb login`."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class RunWandbLogger(RunTracker, WandbLogger):
    """Lightning's WandbLogger for a run directory (see the module's docstring for what it logs): its
    files in `<run dir>/wandb/`, offline when W&B has no API key (`wandb sync <run dir>/wandb/offline-run-*`
    uploads the run later), the runs of a multirun in one group named by the sweep.

    Args:
        run_dir: the run directory.
        run_name: the run's name; None: its overrides (loggers.run_name_of).
        offline: None: offline when no API key is set ($WANDB_MODE, when set, decides instead).
        log_checkpoint: also save checkpoints/best.ckpt with the run's files.
    """

    def __init__(
        self,
        run_dir: str | Path,
        project: str = "classifier",
        run_name: str | None = None,
        group: str | None = None,
        offline: bool | None = None,
        log_checkpoint: bool = False,
        task: str = "train",
        **kwargs: Any,
    ):
        import_for("logger=wandb", "wandb", "wandb")
        self.run_dir = Path(run_dir)
        if offline is None:
            offline = not os.environ.get("WANDB_MODE") and not wandb_key_available()
        earlier = (read_tracking(self.run_dir).get("wandb") or {}).get("id")
        context = run_context(self.run_dir, task)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            name=run_name or run_name_of(self.run_dir),
            save_dir=str(self.run_dir),
            project=project,
            group=group or sweep_name(),
            job_type=task,
            offline=offline,
            id=earlier,
            resume="allow" if earlier else None,
            tags=[task],
            notes=context.get("overrides") or None,
            log_model=False,
            **kwargs,
        )
        self._wandb_init.pop("anonymous", None)  # Lightning passes None, which wandb warns is ignored
        self._context = context
        self.log_checkpoint = log_checkpoint
        self.offline_mode = offline

    @property
    def experiment(self):  # noqa: ANN201  (a wandb Run)
        started = self._experiment is not None
        run = super().experiment
        if not started and rank_zero_only.rank == 0 and getattr(run, "id", None):
            run.config.update({"run": self._context}, allow_val_change=True)
            folder = Path(run.dir).parent  # <run dir>/wandb/<offline-run-...>
            reference = {"id": run.id, "dir": str(folder), "offline": self.offline_mode}
            remember_tracking(self.run_dir, "wandb", reference)
            if self.offline_mode:
                log.info("W&B: offline run %s in %s; upload it with: wandb sync %s", run.id, folder, folder)
            else:
                log.info("W&B: run %s, %s", run.id, run.url)
        return run

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        params = params if isinstance(params, Mapping) else vars(params)
        # W&B keeps values' types: its runs table filters and sorts numbers as numbers.
        self.experiment.config.update(flat_settings(dict(params)), allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.history_open:
            super().log_metrics(dict(metrics), step)

    @rank_zero_only
    def record_results(self, metrics: Mapping[str, float]) -> None:
        import wandb

        run = self.experiment
        run.summary.update({FINAL_PREFIX + k: float(v) for k, v in metrics.items()})
        files = existing_run_files(self.run_dir, self.log_checkpoint)
        images = {p.stem: wandb.Image(str(p)) for p in files if p.suffix == ".png"}
        if images:
            run.log(images)
        # Copied into the run's own folder rather than saved where they are: wandb symlinks outside
        # files with a warning per file. What lies in the run's folder at finish goes with the run.
        for path in files:
            copy = Path(run.dir) / path.relative_to(self.run_dir)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
        run.finish()

    @rank_zero_only
    def interrupted(self) -> None:
        if self._experiment is not None:
            self._experiment.finish(exit_code=1)  # resumed with the same id when the run resumes

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        super().finalize(status)
        if status == "failed" and self._experiment is not None:
            self._experiment.finish(exit_code=1)
