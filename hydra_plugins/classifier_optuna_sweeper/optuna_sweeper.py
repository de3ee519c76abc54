"""OptunaSweeper: each trial is a Hydra job whose task function returns the value to optimise
(train.py returns metrics.json's `optimized_metric`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
STORAGE_KEY = "hydra.sweeper.storage"


class StorageError(CompactHydraException):
    """A study's storage that cannot be opened: Hydra prints this one line, no traceback."""


def prepare_storage(storage: str | None) -> None:
    """Create the folder of a SQLite storage's file (sqlite:///runs/optuna.db makes runs/), as Optuna
    users expect: SQLite creates the file but not its folder, and SQLAlchemy's error names neither.

    Raises:
        StorageError: the folder cannot be created, naming it and the key.
    """
    if not storage or not str(storage).startswith("sqlite:"):
        return
    from sqlalchemy.engine import make_url

    database = make_url(str(storage)).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    folder = Path(database).parent  # as SQLite opens it: relative to the working folder, no ~
    if folder.is_dir():
        return
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise StorageError(
            f"{STORAGE_KEY}={storage}: cannot create the folder {folder}: {exc.strerror}"
        ) from exc
    log.info("created %s for the study's database (%s=%s)", folder, STORAGE_KEY, storage)


def distribution_of(override: Override) -> Any:
    """The Optuna distribution a sweep override describes (choice, range, interval, tag(log, ...)),
    or None for a plain value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return None
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):  # range(start, stop, step): stop excluded, as Python's
        numbers = (value.start, value.stop, value.step)
        if any(isinstance(n, float) for n in numbers):
            steps = math.floor((value.stop - value.start) / value.step - 1e-9)
            return FloatDistribution(value.start, value.start + steps * value.step, step=value.step)
        return IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"hydra.sweeper: {override.input_line} is not a sweep Optuna can sample")


def search_space(arguments: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(key -> distribution for the sweeps, key -> value for the fixed overrides)."""
    distributions, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        distribution = distribution_of(override)
        if distribution is None:
            fixed[key] = override.get_value_element_as_str()
        else:
            distributions[key] = distribution
            fixed.pop(key, None)  # a command-line sweep replaces the config's value
    return distributions, fixed


class OptunaSweeper(Sweeper):
    """Asks Optuna for `n_jobs` trials at a time, runs them as Hydra jobs, tells it their values.

    Args:
        sampler: an Optuna sampler (None: TPE).
        direction: 'maximize' or 'minimize' (or a list of them for several objectives).
        storage: None (in memory) or a database URL, e.g. sqlite:///optuna.db: the study is kept
            there, and re-running the same command continues it.
        study_name: the study's name in the storage.
        n_trials: the study's size: trials run until it has this many finished (completed or
            failed) ones, those of earlier runs on the same storage included.
        n_jobs: trials launched together (what the launcher runs in parallel).
        params: the search space, key: sweep (choice(...), range(...), interval(...), tag(log, ...)),
            or a fixed value; command-line overrides come after them and win.
    """

    def __init__(
        self,
        sampler: Any = None,
        direction: str | list[str] = "maximize",
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        params: DictConfig | dict | None = None,
    ) -> None:
        self.sampler = sampler
        self.directions = (
            [str(d) for d in direction] if isinstance(direction, list | tuple) else [str(direction)]
        )
        self.storage = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = max(1, int(n_jobs))
        self.params = (
            OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        )
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from optuna.trial import TrialState

        configured = [f"{key}={value}" for key, value in (self.params or {}).items()]
        distributions, fixed = search_space([*configured, *arguments])
        study = self._open_study(optuna)
        # The sweep's config in its folder, as Hydra's basic sweeper saves it: a record of the
        # command, and what a job's run name leaves out as shared by every trial.
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        finished = sum(t.state.is_finished() for t in study.trials)
        if finished:
            log.info(
                "study %s: %d of %d trials already finished; running the rest",
                study.study_name,
                finished,
                self.n_trials,
            )
        job = len(study.trials)  # job folders numbered as the study's trials
        while finished < self.n_trials:
            trials = [study.ask(distributions) for _ in range(min(self.n_jobs, self.n_trials - finished))]
            overrides = [
                tuple(f"{key}={value}" for key, value in {**fixed, **trial.params}.items())
                for trial in trials
            ]
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=job)
            except BaseException:
                # Ctrl-C (a job's SystemExit) or a launcher error: as Optuna's own optimize() does,
                # the trials are failed rather than left running forever in a stored study.
                for trial in trials:
                    study.tell(trial, state=TrialState.FAIL)
                raise
            for trial, result in zip(trials, returns, strict=True):
                self._tell(study, trial, result, TrialState)
            job += len(trials)
            finished += len(trials)
        self._report(study)

    def _open_study(self, optuna):
        """The study, new or continued from the storage.

        Raises:
            StorageError: a storage URL SQLAlchemy cannot open, naming the key.
        """
        from sqlalchemy.exc import SQLAlchemyError

        try:
            prepare_storage(self.storage)
            return optuna.create_study(
                study_name=self.study_name,
                storage=self.storage,
                sampler=self.sampler,
                directions=self.directions,
                load_if_exists=True,
            )
        except SQLAlchemyError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StorageError(
                f"{STORAGE_KEY}={self.storage}: cannot open the study's database: {reason}"
            ) from exc

    @staticmethod
    def _tell(study, trial, result, TrialState) -> None:
        try:
            value = result.return_value
        except Exception as exc:  # the job failed: its error is in its log and the sweep's summary
            log.warning(
                "trial %d failed: %s",
                trial.number,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            study.tell(trial, state=TrialState.FAIL)
            return
        values = list(value) if isinstance(value, list | tuple) else [value]
        if any(v is None or not math.isfinite(float(v)) for v in values):
            log.warning("trial %d returned %r: counted as failed", trial.number, value)
            study.tell(trial, state=TrialState.FAIL)
            return
        study.tell(trial, [float(v) for v in values] if len(values) > 1 else float(values[0]))

    def _report(self, study) -> None:
        assert self.config is not None
        completed = [t for t in study.trials if t.state.name == "COMPLETE"]
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "storage": self.storage}
        results["trials"] = {
            "finished": sum(t.state.is_finished() for t in study.trials),
            "completed": len(completed),
        }
        if completed and len(self.directions) == 1:
            best = study.best_trial
            results.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params))
            objective = OmegaConf.select(self.config, "optimized_metric") or self.directions[0]
            params = ", ".join(f"{key}={_rounded(value)}" for key, value in best.params.items())
            log.info("best trial %d: %s = %s with %s", best.number, objective, _rounded(best.value), params)
        elif completed:
            results["best_trials"] = [
                {"number": t.number, "values": t.values, "params": t.params} for t in study.best_trials
            ]
        else:
            log.warning("no trial of study %s completed", study.study_name)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)


def _rounded(value: Any) -> Any:
    """A float to 4 significant digits for the log (optimization_results.yaml keeps every digit)."""
    return f"{value:.4g}" if isinstance(value, float) else value
